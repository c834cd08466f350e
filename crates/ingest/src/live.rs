//! One group commit as live dashboards receive it: the readings, and an index by device that
//! the first stream to need it builds and every other stream shares.

use std::collections::HashMap;
use std::sync::OnceLock;

use wattline_domain::{DeviceId, Reading};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub struct LiveCommit {
    readings: Vec<Reading>,
    /// Reading positions per device, in commit order. Without it, each of a hundred streams
    /// looked at every reading of every commit; with it, a stream looks at the devices it
    /// wants (a device page) or at each device of the commit once (an overview).
    by_device: OnceLock<FastMap<DeviceId, Vec<u32>>>,
}

impl LiveCommit {
    pub fn new(readings: Vec<Reading>) -> Self {
        LiveCommit {
            readings,
            by_device: OnceLock::new(),
        }
    }

    pub fn readings(&self) -> &[Reading] {
        &self.readings
    }

    fn index(&self) -> &FastMap<DeviceId, Vec<u32>> {
        self.by_device.get_or_init(|| {
            let mut index: FastMap<DeviceId, Vec<u32>> = FastMap::default();
            for (i, r) in self.readings.iter().enumerate() {
                match index.get_mut(&r.device) {
                    Some(list) => list.push(i as u32),
                    None => {
                        index.insert(r.device.clone(), vec![i as u32]);
                    }
                }
            }
            index
        })
    }

    /// Each device with readings in this commit, once.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceId> {
        self.index().keys()
    }

    /// One device's readings, in commit order.
    pub fn of_device<'a>(&'a self, device: &DeviceId) -> impl Iterator<Item = &'a Reading> {
        self.index()
            .get(device)
            .into_iter()
            .flatten()
            .map(|&i| &self.readings[i as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattline_domain::{ChannelName, TsMs, Values};

    fn reading(device: &str, ts: i64) -> Reading {
        Reading {
            device: DeviceId::parse(device).unwrap(),
            channel: ChannelName::default_channel(),
            ts: TsMs(ts),
            values: Values::default(),
        }
    }

    #[test]
    fn readings_by_device_keep_their_order() {
        let c = LiveCommit::new(vec![reading("a", 1), reading("b", 2), reading("a", 3)]);
        let a = DeviceId::parse("a").unwrap();
        let ts: Vec<i64> = c.of_device(&a).map(|r| r.ts.0).collect();
        assert_eq!(ts, [1, 3]);
        let mut devices: Vec<&str> = c.devices().map(|d| d.as_str()).collect();
        devices.sort();
        assert_eq!(devices, ["a", "b"]);
        assert_eq!(c.of_device(&DeviceId::parse("z").unwrap()).count(), 0);
        assert_eq!(c.readings().len(), 3);
    }
}
