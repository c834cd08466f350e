//! What MQTT messages mean to Wattline: credentials, the topic ACL, topic identities bound to
//! devices, pending devices, availability, and readings into the ingest engine.
//!
//! The built-in broker reaches this through [`BrokerHooks`]; the external-broker client calls
//! [`Hub::ingest_messages`] directly. Either way a message is decoded by the payload adapters
//! (`wattline_decode::mqtt`), its topic identity is resolved to a registered device, and its
//! readings are written with one `Engine::write` per batch, which returns once they are durable.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use wattline_decode::mqtt::{decode_gateway, Decoded, Format, MqttDecoder, TopicIdentity};
use wattline_domain::{DeviceId, Limits, Principal, Reading, TsMs};
use wattline_ingest::Engine;
use wattline_storage::{Binding, PendingDevice};

use crate::broker::BrokerHooks;
use crate::codec::{AckRefusal, ConnectPacket, ConnectRefusal, PublishPacket};

/// The gateway topic: a site or admin credential publishes readings that name their devices.
pub const GATEWAY_TOPIC: &str = "wattline/readings";

/// Hex SHA-256: how tokens and MQTT passwords are stored (they are long and random, so a
/// plain hash leaves nothing to guess).
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether a device is reachable, and since when.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Availability {
    pub online: bool,
    /// What said so: `connection` (its MQTT connection), `lwt` (its last will or online
    /// topic), `silence` (no reading for `offline_after`), or `never` (never heard of).
    pub source: &'static str,
    /// When the state last changed, as far as this node knows.
    pub since: Option<TsMs>,
    /// The newest reading stored for it.
    pub last_seen: Option<TsMs>,
}

#[derive(Debug, Clone, Copy)]
struct AvailabilityMark {
    online: bool,
    source: &'static str,
    since: TsMs,
}

#[derive(Debug, Default)]
pub struct HubStats {
    pub messages: AtomicU64,
    pub readings: AtomicU64,
    pub rejected_payloads: AtomicU64,
    pub pending_messages: AtomicU64,
    pub rejected_identity_messages: AtomicU64,
    pub forbidden_devices: AtomicU64,
    pub storage_failures: AtomicU64,
    /// QoS 0 messages taken: best effort, so counted apart.
    pub qos0_messages: AtomicU64,
}

/// Closes a principal's broker connections; returns how many.
pub type Kicker = Box<dyn Fn(&Principal) -> usize + Send + Sync>;

pub struct Hub {
    engine: Engine,
    admin_token_hash: String,
    limits: Limits,
    /// A device that sends nothing for this long is shown offline.
    offline_after: Duration,
    bindings: RwLock<HashMap<TopicIdentity, DeviceId>>,
    /// The families whose adapters remember (Shelly statuses, ESP32 cycles) decode here, so
    /// the memory follows the device across reconnections, not the connection.
    stateful: Mutex<MqttDecoder>,
    rejected: RwLock<HashSet<TopicIdentity>>,
    /// Pending identities seen since the last flush to storage.
    pending: Mutex<HashMap<TopicIdentity, PendingDevice>>,
    availability: Mutex<HashMap<DeviceId, AvailabilityMark>>,
    /// Rejections by adapter code.
    rejected_codes: Mutex<HashMap<&'static str, u64>>,
    pub stats: HubStats,
    /// Disconnects a principal's connections on the built-in broker, when there is one.
    kicker: OnceLock<Kicker>,
}

/// Per-connection decoder for the families that need no memory between messages: decoding
/// them needs no lock, so connections decode in parallel.
pub struct HubConn {
    decoder: MqttDecoder,
}

impl Hub {
    /// Loads bindings and rejected identities from storage.
    pub async fn new(
        engine: Engine,
        admin_token_hash: String,
        limits: Limits,
        offline_after: Duration,
    ) -> Result<Arc<Hub>, wattline_storage::StoreError> {
        let store = engine.store();
        let bindings = store
            .list_bindings()
            .await?
            .into_iter()
            .filter_map(|b| {
                Some((
                    TopicIdentity::new(Format::parse(&b.format)?, b.vendor_id),
                    b.device,
                ))
            })
            .collect();
        let rejected = store
            .list_rejected()
            .await?
            .into_iter()
            .filter_map(|(f, id)| Some(TopicIdentity::new(Format::parse(&f)?, id)))
            .collect();
        Ok(Arc::new(Hub {
            engine,
            admin_token_hash,
            stateful: Mutex::new(MqttDecoder::new(limits.clone())),
            limits,
            offline_after,
            bindings: RwLock::new(bindings),
            rejected: RwLock::new(rejected),
            pending: Mutex::new(HashMap::new()),
            availability: Mutex::new(HashMap::new()),
            rejected_codes: Mutex::new(HashMap::new()),
            stats: HubStats::default(),
            kicker: OnceLock::new(),
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn set_kicker(&self, kick: Kicker) {
        let _ = self.kicker.set(kick);
    }

    /// Ends every MQTT connection of a device (its credential was revoked or rotated).
    pub fn disconnect_device(&self, device: &DeviceId) -> usize {
        self.kicker
            .get()
            .map_or(0, |kick| kick(&Principal::Device(device.clone())))
    }

    pub fn new_conn(&self) -> HubConn {
        HubConn {
            decoder: MqttDecoder::new(self.limits.clone()),
        }
    }

    // --- directory ------------------------------------------------------------------------

    pub fn put_binding(&self, identity: TopicIdentity, device: DeviceId) {
        self.rejected.write().unwrap().remove(&identity);
        self.bindings.write().unwrap().insert(identity, device);
    }

    pub fn remove_binding(&self, identity: &TopicIdentity) {
        self.bindings.write().unwrap().remove(identity);
    }

    /// Forgets everything about a deleted device.
    pub fn forget_device(&self, device: &DeviceId) {
        let mut bindings = self.bindings.write().unwrap();
        let mut stateful = self.stateful.lock().unwrap();
        bindings.retain(|identity, d| {
            if d == device {
                stateful.forget(identity);
            }
            d != device
        });
        drop((bindings, stateful));
        self.availability.lock().unwrap().remove(device);
        self.disconnect_device(device);
    }

    pub fn set_rejected(&self, identity: TopicIdentity, rejected: bool) {
        let mut set = self.rejected.write().unwrap();
        if rejected {
            self.pending.lock().unwrap().remove(&identity);
            set.insert(identity);
        } else {
            set.remove(&identity);
        }
    }

    fn resolve(&self, identity: &TopicIdentity) -> Option<DeviceId> {
        match identity.format {
            Format::Native => DeviceId::parse(identity.id.as_str())
                .ok()
                .filter(|d| self.engine.registry().device_exists(d)),
            _ => self.bindings.read().unwrap().get(identity).cloned(),
        }
    }

    // --- availability ---------------------------------------------------------------------

    /// Records a change of state; a repeated state keeps the source and time of the change
    /// (an LWT "Offline" followed by the connection closing stays "offline since the LWT").
    fn mark(&self, device: &DeviceId, online: bool, source: &'static str) {
        let mut map = self.availability.lock().unwrap();
        let now = TsMs::now();
        match map.get_mut(device) {
            Some(m) if m.online == online => {}
            Some(m) => {
                *m = AvailabilityMark {
                    online,
                    source,
                    since: now,
                };
                tracing::info!(device = %device, online, source, "device availability changed");
            }
            None => {
                map.insert(
                    device.clone(),
                    AvailabilityMark {
                        online,
                        source,
                        since: now,
                    },
                );
            }
        }
    }

    /// Online/offline of a device as this node sees it at `now`.
    pub fn availability(&self, device: &DeviceId, now: TsMs) -> Availability {
        let last_seen = self
            .engine
            .registry()
            .device_series(device)
            .into_iter()
            .filter_map(|(_, s)| self.engine.latest_of(s).map(|p| p.ts))
            .max();
        let mark = self.availability.lock().unwrap().get(device).copied();
        let silent_since = last_seen
            .map(|t| TsMs(t.0 + self.offline_after.as_millis() as i64))
            .filter(|deadline| *deadline <= now);
        match (mark, last_seen) {
            // An explicit offline (LWT, closed connection) stands.
            (Some(m), _) if !m.online => Availability {
                online: false,
                source: m.source,
                since: Some(m.since),
                last_seen,
            },
            // Connected but silent: the meter is up but not measuring; say offline.
            (_, Some(_)) if silent_since.is_some() => Availability {
                online: false,
                source: "silence",
                since: silent_since,
                last_seen,
            },
            (Some(m), _) => Availability {
                online: true,
                source: m.source,
                since: Some(m.since),
                last_seen,
            },
            (None, Some(t)) => Availability {
                online: true,
                source: "silence",
                since: Some(t),
                last_seen,
            },
            (None, None) => Availability {
                online: false,
                source: "never",
                since: None,
                last_seen: None,
            },
        }
    }

    // --- pending devices ------------------------------------------------------------------

    fn note_pending(&self, identity: &TopicIdentity, topic: &str, payload: &[u8], now: TsMs) {
        if identity.format == Format::Native {
            return;
        }
        if self.rejected.read().unwrap().contains(identity) {
            self.stats.rejected_identity_messages.fetch_add(1, Relaxed);
            return;
        }
        self.stats.pending_messages.fetch_add(1, Relaxed);
        let mut sample: String = String::from_utf8_lossy(payload).chars().take(512).collect();
        sample.shrink_to_fit();
        let mut pending = self.pending.lock().unwrap();
        let entry = pending.entry(identity.clone()).or_insert_with(|| {
            tracing::info!(identity = %identity, %topic, "mqtt: unknown device seen; listed as pending");
            PendingDevice {
                format: identity.format.as_str().to_owned(),
                vendor_id: identity.id.clone(),
                first_seen: now,
                last_seen: now,
                messages: 0,
                last_topic: String::new(),
                sample: String::new(),
            }
        });
        entry.last_seen = now;
        entry.messages += 1;
        entry.last_topic = topic.to_owned();
        entry.sample = sample;
    }

    /// Writes the pending identities seen since the last call to storage.
    pub async fn flush_pending(&self) -> Result<(), wattline_storage::StoreError> {
        let batch: Vec<PendingDevice> = self
            .pending
            .lock()
            .unwrap()
            .drain()
            .map(|(_, p)| p)
            .collect();
        for p in &batch {
            self.engine.store().upsert_pending(p).await?;
        }
        Ok(())
    }

    /// Flushes pending devices every `every` until `shutdown` turns true.
    pub async fn run_pending_flusher(
        self: Arc<Self>,
        every: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            if let Err(e) = self.flush_pending().await {
                tracing::warn!(error = %e, "could not store pending devices");
            }
        }
        let _ = self.flush_pending().await;
    }

    // --- authentication and ACL -----------------------------------------------------------

    /// Resolves MQTT credentials: a device's own (username and password), a site ingest
    /// token, or the admin token (as the password, any username).
    pub async fn authenticate_credentials(
        &self,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<Principal, ConnectRefusal> {
        let Some(password) = password.filter(|p| !p.is_empty()) else {
            return Err(ConnectRefusal::NotAuthorized);
        };
        let hash = hash_secret(password);
        if bool::from(hash.as_bytes().ct_eq(self.admin_token_hash.as_bytes())) {
            return Ok(Principal::Admin);
        }
        let store = self.engine.store();
        let unavailable = |e: wattline_storage::StoreError| {
            tracing::error!(error = %e, "mqtt: credential lookup failed");
            ConnectRefusal::ServerUnavailable
        };
        if let Some(username) = username {
            if let Some((device, stored)) =
                store.mqtt_credential(username).await.map_err(unavailable)?
            {
                if bool::from(hash.as_bytes().ct_eq(stored.as_bytes())) {
                    return Ok(Principal::Device(device));
                }
                // Not this device's password; it may still be a site token sent by a gateway
                // whose username happens to be a device id.
            }
        }
        if let Some(site) = store.ingest_token_site(&hash).await.map_err(unavailable)? {
            return Ok(Principal::Site(site));
        }
        Err(ConnectRefusal::BadCredentials)
    }

    /// A device publishes only under its own topics: `wattline/<its id>/…` and the vendor
    /// topics of identities bound to it. Site and admin credentials publish anything (the
    /// readings are checked against their site when stored).
    pub fn may_publish(&self, who: &Principal, topic: &str) -> bool {
        match who {
            Principal::Admin | Principal::Site(_) => true,
            Principal::Device(device) => self.owns_topic(device, topic),
            // Users sign in to the web, not to the broker; `authenticate` never yields one.
            Principal::User(_) => false,
        }
    }

    fn owns_topic(&self, device: &DeviceId, topic: &str) -> bool {
        match MqttDecoder::classify(topic) {
            Some(identity) if identity.format == Format::Native => identity.id == device.as_str(),
            Some(identity) => self.bindings.read().unwrap().get(&identity) == Some(device),
            None => false,
        }
    }

    /// A device subscribes only to its own command topics; the admin to anything; a site
    /// credential (a gateway that only writes) to nothing.
    pub fn may_subscribe(&self, who: &Principal, filter: &str) -> bool {
        match who {
            Principal::Admin => true,
            Principal::Site(_) | Principal::User(_) => false,
            Principal::Device(device) => {
                is_command_filter(filter)
                    && !identity_has_wildcard(filter)
                    && self.owns_topic(device, filter)
            }
        }
    }

    // --- ingest ---------------------------------------------------------------------------

    /// Decodes and stores one batch of messages from `who`; returns one verdict per message,
    /// once every accepted reading is durable.
    pub async fn ingest_messages(
        &self,
        conn: &mut HubConn,
        who: &Principal,
        messages: &[PublishPacket],
    ) -> Vec<Result<(), AckRefusal>> {
        let now = TsMs::now();
        let mut verdicts: Vec<Result<(), AckRefusal>> = vec![Ok(()); messages.len()];
        let mut carries_readings = vec![false; messages.len()];
        let mut readings: Vec<Reading> = Vec::new();
        self.stats
            .messages
            .fetch_add(messages.len() as u64, Relaxed);
        for (i, m) in messages.iter().enumerate() {
            if m.qos == 0 {
                self.stats.qos0_messages.fetch_add(1, Relaxed);
            }
            if m.topic == GATEWAY_TOPIC {
                match decode_gateway(&m.topic, &m.payload, now, &conn.decoder.limits) {
                    Ok((rs, rejected)) => {
                        for e in &rejected {
                            self.reject(who, e.code, &e.message);
                        }
                        let before = readings.len();
                        for r in rs {
                            match self.engine.registry().device_site(&r.device) {
                                Some(site) if who.may_write(&r.device, &site) => readings.push(r),
                                Some(_) => self.forbidden(who, &m.topic, &r.device),
                                None => self.reject(
                                    who,
                                    "unknown_device",
                                    &format!(
                                        "{}: device {:?} is not registered",
                                        m.topic,
                                        r.device.as_str()
                                    ),
                                ),
                            }
                        }
                        carries_readings[i] = readings.len() > before;
                        if readings.len() == before && !rejected.is_empty() {
                            verdicts[i] = Err(AckRefusal::PayloadInvalid);
                        }
                    }
                    Err(e) => {
                        self.reject(who, e.code, &e.message);
                        verdicts[i] = Err(AckRefusal::PayloadInvalid);
                    }
                }
                continue;
            }
            let decoded = match MqttDecoder::classify(&m.topic).map(|i| i.format) {
                Some(Format::Shelly | Format::Esp32) => self
                    .stateful
                    .lock()
                    .unwrap()
                    .decode(&m.topic, &m.payload, now),
                _ => conn.decoder.decode(&m.topic, &m.payload, now),
            };
            match decoded {
                Err(e) => {
                    self.reject(who, e.code, &e.message);
                    verdicts[i] = Err(AckRefusal::PayloadInvalid);
                }
                Ok(Decoded::Readings {
                    identity,
                    readings: rs,
                    rejected,
                }) => {
                    for e in &rejected {
                        self.reject(who, e.code, &e.message);
                    }
                    let Some(device) = self.resolve(&identity) else {
                        if identity.format == Format::Native {
                            self.reject(
                                who,
                                "unknown_device",
                                &format!("{}: device {:?} is not registered", m.topic, identity.id),
                            );
                            verdicts[i] = Err(AckRefusal::PayloadInvalid);
                        } else {
                            self.note_pending(&identity, &m.topic, &m.payload, now);
                        }
                        continue;
                    };
                    let Some(site) = self.engine.registry().device_site(&device) else {
                        continue;
                    };
                    if !who.may_write(&device, &site) {
                        self.forbidden(who, &m.topic, &device);
                        verdicts[i] = Err(AckRefusal::NotAuthorized);
                        continue;
                    }
                    carries_readings[i] = !rs.is_empty();
                    readings.extend(rs.into_iter().map(|r| Reading {
                        device: device.clone(),
                        channel: r.channel,
                        ts: r.ts,
                        values: r.values,
                    }));
                }
                Ok(Decoded::Availability { identity, online }) => match self.resolve(&identity) {
                    Some(device) => self.mark(&device, online, "lwt"),
                    None => self.note_pending(&identity, &m.topic, &m.payload, now),
                },
                Ok(Decoded::Nothing { identity }) => {
                    if let Some(identity) = identity {
                        if self.resolve(&identity).is_none() {
                            self.note_pending(&identity, &m.topic, &m.payload, now);
                        }
                    }
                }
            }
        }
        if readings.is_empty() {
            return verdicts;
        }
        let n = readings.len() as u64;
        match self.engine.write(readings).await {
            Ok(_) => {
                self.stats.readings.fetch_add(n, Relaxed);
            }
            Err(e) => {
                self.stats.storage_failures.fetch_add(1, Relaxed);
                tracing::error!(error = %e, readings = n, "mqtt: readings not stored");
                for (v, carried) in verdicts.iter_mut().zip(&carries_readings) {
                    if *carried {
                        *v = Err(AckRefusal::Unspecified);
                    }
                }
            }
        }
        verdicts
    }

    fn reject(&self, who: &Principal, code: &'static str, message: &str) {
        self.stats.rejected_payloads.fetch_add(1, Relaxed);
        self.engine
            .rejections()
            .note("mqtt", &who.actor(), [(code, message)]);
        *self.rejected_codes.lock().unwrap().entry(code).or_default() += 1;
        self.engine.metrics().reject(code, 1);
        tracing::warn!(code, reason = message, "mqtt: message refused");
    }

    fn forbidden(&self, who: &Principal, topic: &str, device: &DeviceId) {
        self.stats.forbidden_devices.fetch_add(1, Relaxed);
        tracing::warn!(?who, %topic, device = %device, "mqtt: publish as another device refused");
    }

    /// Prometheus lines for `/metrics`.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        let s = &self.stats;
        for (name, help, v) in [
            (
                "wattline_mqtt_messages_total",
                "MQTT messages taken for decoding.",
                &s.messages,
            ),
            (
                "wattline_mqtt_qos0_messages_total",
                "MQTT messages taken at QoS 0 (best effort).",
                &s.qos0_messages,
            ),
            (
                "wattline_mqtt_readings_total",
                "Readings stored from MQTT messages.",
                &s.readings,
            ),
            (
                "wattline_mqtt_rejected_total",
                "MQTT messages (or batch items) refused by an adapter.",
                &s.rejected_payloads,
            ),
            (
                "wattline_mqtt_pending_messages_total",
                "Messages from identities no device is bound to.",
                &s.pending_messages,
            ),
            (
                "wattline_mqtt_rejected_identity_messages_total",
                "Messages from identities an admin rejected.",
                &s.rejected_identity_messages,
            ),
            (
                "wattline_mqtt_forbidden_total",
                "Readings for a device the publisher may not write.",
                &s.forbidden_devices,
            ),
            (
                "wattline_mqtt_storage_failures_total",
                "Batches of MQTT readings storage refused.",
                &s.storage_failures,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let codes = self.rejected_codes.lock().unwrap();
        let mut codes: Vec<_> = codes.iter().collect();
        codes.sort();
        let _ = writeln!(out, "# HELP wattline_mqtt_rejected_by_code_total MQTT refusals by reason.\n# TYPE wattline_mqtt_rejected_by_code_total counter");
        for (code, n) in codes {
            let _ = writeln!(
                out,
                "wattline_mqtt_rejected_by_code_total{{code=\"{code}\"}} {n}"
            );
        }
        out
    }
}

/// Command topics, the only ones devices may subscribe to.
fn is_command_filter(filter: &str) -> bool {
    filter.starts_with("cmnd/")
        || filter.ends_with("/rpc")
        || filter.ends_with("/command")
        || filter.contains("/commands")
}

/// `cmnd/+/POWER` would reach every plug's commands: the identity level must be literal.
fn identity_has_wildcard(filter: &str) -> bool {
    filter.split('/').take(2).any(|l| l == "+" || l == "#")
}

/// The hooks of the built-in broker.
pub struct BrokerSide(pub Arc<Hub>);

#[async_trait]
impl BrokerHooks for BrokerSide {
    type Conn = HubConn;

    async fn authenticate(&self, connect: &ConnectPacket) -> Result<Principal, ConnectRefusal> {
        self.0
            .authenticate_credentials(connect.username.as_deref(), connect.password.as_deref())
            .await
    }

    fn open(&self, who: &Principal, _client_id: &str) -> HubConn {
        if let Principal::Device(d) = who {
            self.0.mark(d, true, "connection");
        }
        self.0.new_conn()
    }

    fn closed(&self, who: &Principal, _client_id: &str, _graceful: bool) {
        if let Principal::Device(d) = who {
            self.0.mark(d, false, "connection");
        }
    }

    fn may_publish(&self, who: &Principal, topic: &str) -> bool {
        self.0.may_publish(who, topic)
    }

    fn may_subscribe(&self, who: &Principal, filter: &str) -> bool {
        self.0.may_subscribe(who, filter)
    }

    async fn ingest(
        &self,
        conn: &mut HubConn,
        who: &Principal,
        messages: &[PublishPacket],
    ) -> Vec<Result<(), AckRefusal>> {
        self.0.ingest_messages(conn, who, messages).await
    }
}

/// A binding as the API shows it.
pub fn binding_identity(b: &Binding) -> Option<TopicIdentity> {
    Some(TopicIdentity::new(
        Format::parse(&b.format)?,
        b.vendor_id.clone(),
    ))
}
