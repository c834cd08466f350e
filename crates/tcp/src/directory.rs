//! Which meter ids exist: devices `tcp-<n>` that a TCP handshake created, and allocating the
//! next one.

use std::collections::{BTreeMap, HashSet};
use std::sync::RwLock;

use sha2::{Digest, Sha256};
use wattline_decode::tcp_meter::MeterId;
use wattline_domain::{Device, DeviceId, TsMs};
use wattline_ingest::Engine;
use wattline_storage::{DynStore, StoreError};

use crate::TcpError;

/// The label that marks a device enrolled by a TCP handshake; only such devices take readings
/// by id over TCP, so a guessed number cannot write into a device registered otherwise.
pub const ENROLLED_LABEL: &str = "enrolled";
pub const ENROLLED_VALUE: &str = "tcp";

const PREFIX: &str = "tcp-";
/// Tries at allocating an id before giving up; a conflict means another node (or an admin)
/// took the number just now.
const ATTEMPTS: u32 = 16;

/// The Wattline device of a meter id.
pub fn device_id(meter: MeterId) -> DeviceId {
    DeviceId::parse(format!("{PREFIX}{meter}")).expect("tcp-<digits> is a valid id")
}

fn meter_number(device: &DeviceId) -> Option<u64> {
    let digits = device.as_str().strip_prefix(PREFIX)?;
    // Only the canonical form: `tcp-007` is no id the handshake hands out.
    (!digits.starts_with('0') || digits == "0")
        .then(|| digits.parse().ok())
        .flatten()
}

fn is_enrolled(device: &Device) -> bool {
    device.labels.get(ENROLLED_LABEL).map(String::as_str) == Some(ENROLLED_VALUE)
        && meter_number(&device.id).is_some()
}

pub(crate) struct Directory {
    /// Meter numbers whose device was enrolled over TCP (as far as this node knows).
    known: RwLock<HashSet<u64>>,
    /// The next number to try. Allocation holds this lock across the store call, so two
    /// handshakes on this node never race for one number.
    next: tokio::sync::Mutex<u64>,
}

impl Directory {
    pub async fn load(store: &DynStore) -> Result<Directory, StoreError> {
        let devices = store.list_devices().await?;
        Ok(Directory {
            known: RwLock::new(
                devices
                    .iter()
                    .filter(|d| is_enrolled(d))
                    .filter_map(|d| meter_number(&d.id))
                    .collect(),
            ),
            next: tokio::sync::Mutex::new(next_free(&devices)),
        })
    }

    /// The device of a meter id, if that meter was enrolled over TCP. Asks storage only when
    /// this node has not seen the meter (enrolled on another node, or since deleted).
    pub async fn resolve(
        &self,
        engine: &Engine,
        meter: MeterId,
    ) -> Result<Option<DeviceId>, StoreError> {
        let id = device_id(meter);
        if engine.registry().device_exists(&id) && self.known.read().unwrap().contains(&meter.0) {
            return Ok(Some(id));
        }
        match engine.store().get_device(&id).await? {
            Some(device) if is_enrolled(&device) => {
                if !engine.registry().device_exists(&id) {
                    engine.registry().put_device(&device);
                }
                self.known.write().unwrap().insert(meter.0);
                Ok(Some(id))
            }
            _ => Ok(None),
        }
    }

    /// Creates the device of a new meter in the first site with enrollment open.
    pub async fn enroll(&self, engine: &Engine) -> Result<Device, TcpError> {
        let store = engine.store();
        let sites = store.tcp_enrollment_sites().await?;
        let Some(site) = sites.into_iter().next() else {
            return Err(TcpError::EnrollmentClosed);
        };
        let mut next = self.next.lock().await;
        let mut refreshed = false;
        for _ in 0..ATTEMPTS {
            let n = *next;
            let device = Device {
                id: device_id(MeterId(n)),
                name: format!("Socket meter {n}"),
                site: site.clone(),
                kind: "meter".into(),
                labels: BTreeMap::from([(ENROLLED_LABEL.into(), ENROLLED_VALUE.into())]),
                created_at: TsMs::now(),
            };
            match store.create_device(&device, &unusable_token_hash()).await {
                Ok(()) => {
                    *next = n + 1;
                    engine.registry().put_device(&device);
                    self.known.write().unwrap().insert(n);
                    return Ok(device);
                }
                Err(StoreError::Conflict(_)) if !refreshed => {
                    // Another node enrolled meanwhile: continue after the highest number now
                    // stored.
                    refreshed = true;
                    *next = next_free(&store.list_devices().await?).max(n + 1);
                }
                Err(StoreError::Conflict(_)) => *next = n + 1,
                Err(e) => return Err(e.into()),
            }
        }
        Err(TcpError::NoFreeId(ATTEMPTS))
    }
}

/// One past the highest `tcp-<n>` of any device (enrolled or not), never 0: 0 is the handshake.
fn next_free(devices: &[Device]) -> u64 {
    devices
        .iter()
        .filter_map(|d| meter_number(&d.id))
        .max()
        .map_or(1, |n| n.saturating_add(1))
        .max(1)
}

/// Every device has an HTTP token. A socket meter never uses one, so it gets the hash of
/// random bytes nobody keeps: no token matches it until an admin rotates it.
fn unusable_token_hash() -> String {
    hex::encode(Sha256::digest(rand::random::<[u8; 32]>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, tcp: bool) -> Device {
        Device {
            id: DeviceId::parse(id).unwrap(),
            name: id.into(),
            site: wattline_domain::SiteId::parse("s").unwrap(),
            kind: "meter".into(),
            labels: if tcp {
                BTreeMap::from([(ENROLLED_LABEL.into(), ENROLLED_VALUE.into())])
            } else {
                BTreeMap::new()
            },
            created_at: TsMs(0),
        }
    }

    #[test]
    fn numbers_follow_the_highest_tcp_device() {
        assert_eq!(next_free(&[]), 1);
        assert_eq!(next_free(&[dev("main", false)]), 1);
        assert_eq!(
            next_free(&[
                dev("tcp-3", true),
                dev("tcp-12", false),
                dev("tcp-x", false)
            ]),
            13
        );
        assert_eq!(meter_number(&DeviceId::parse("tcp-007").unwrap()), None);
        assert!(is_enrolled(&dev("tcp-4", true)));
        assert!(!is_enrolled(&dev("tcp-4", false)));
        assert!(!is_enrolled(&dev("meter-4", true)));
        assert_eq!(device_id(MeterId(42)).as_str(), "tcp-42");
    }
}
