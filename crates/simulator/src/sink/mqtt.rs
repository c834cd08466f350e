//! MQTT with rumqttc: QoS 1, and a batch counts as delivered only once every PUBACK is in
//! (Wattline sends PUBACK after the readings are durable).
//!
//! rumqttc reports the packet id it gave a publish as an `Outgoing::Publish(pkid)` event, in
//! the order the publishes were requested, so each connection keeps a queue of waiters in
//! request order, pairs the head with the next pkid, and completes it on its PUBACK. A
//! connection that fails is dropped with everything in flight (the forwarder resends what
//! was not acknowledged on a fresh connection), rather than letting rumqttc replay its own
//! copy: two retransmission mechanisms would resend twice.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Delivery, Sink, SinkError};
use crate::commlog::CommLog;
use crate::encode::{
    clemap_one_minute, json_readings, shelly_switch_status, tasmota_sensor, Protocol,
};
use crate::record::{device_name, Record};

/// Longest wait for the PUBACKs of one batch.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Readings per MQTT message on the native and gateway topics (the broker takes 1 MiB).
const MAX_PER_MESSAGE: usize = 1000;

type Waiter = oneshot::Sender<Result<(), String>>;

/// One MQTT connection and the task that drives it.
struct MqttConn {
    client: AsyncClient,
    waiters: Arc<Mutex<VecDeque<Waiter>>>,
    dead: Arc<AtomicBool>,
    /// Set by `close`: the end of the connection is ours, not an error.
    closing: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl MqttConn {
    fn open(
        broker: &(String, u16),
        client_id: String,
        credentials: (&str, &str),
        inflight: u16,
        comm: CommLog,
        who: String,
    ) -> MqttConn {
        let mut opts = MqttOptions::new(client_id, broker.0.clone(), broker.1);
        opts.set_credentials(credentials.0, credentials.1)
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_inflight(inflight);
        let (client, mut eventloop) = AsyncClient::new(opts, usize::from(inflight) * 2);
        let waiters: Arc<Mutex<VecDeque<Waiter>>> = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let closing = Arc::new(AtomicBool::new(false));
        let (w, d, c) = (waiters.clone(), dead.clone(), closing.clone());
        let addr = format!("{}:{}", broker.0, broker.1);
        let task = tokio::spawn(async move {
            let mut inflight: HashMap<u16, Waiter> = HashMap::new();
            let mut connected = false;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        comm.log(&who, format_args!("connected to mqtt://{addr}"));
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Some(waiter) = w.lock().expect("waiters").pop_front() {
                            inflight.insert(pkid, waiter);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(waiter) = inflight.remove(&ack.pkid) {
                            let _ = waiter.send(Ok(()));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        d.store(true, Ordering::SeqCst);
                        let why = format!("mqtt://{addr}: {e}");
                        for (_, waiter) in inflight.drain() {
                            let _ = waiter.send(Err(why.clone()));
                        }
                        for waiter in w.lock().expect("waiters").drain(..) {
                            let _ = waiter.send(Err(why.clone()));
                        }
                        // A connection that never came up is reported by the sender's error
                        // line; only the loss of an established one is worth its own.
                        if c.load(Ordering::SeqCst) {
                            comm.log(&who, "closed");
                        } else if connected {
                            comm.log(&who, format_args!("disconnected: {e}"));
                        }
                        break;
                    }
                }
            }
        });
        MqttConn {
            client,
            waiters,
            dead,
            closing,
            task,
        }
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Queues a QoS 1 publish; the receiver completes on its PUBACK or the connection's end.
    async fn publish(
        &self,
        topic: String,
        payload: Vec<u8>,
    ) -> Result<oneshot::Receiver<Result<(), String>>, SinkError> {
        if self.is_dead() {
            return Err(SinkError::Transport("connection closed".into()));
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().expect("waiters").push_back(tx);
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| SinkError::Transport(e.to_string()))?;
        Ok(rx)
    }

    /// Publishes `messages` and waits for all their PUBACKs: which ones were acknowledged,
    /// and the first error.
    async fn publish_all(
        &self,
        messages: Vec<(String, Vec<u8>)>,
    ) -> (Vec<bool>, Option<SinkError>) {
        let mut ok = vec![false; messages.len()];
        let mut receivers = Vec::with_capacity(messages.len());
        let mut error = None;
        for (topic, payload) in messages {
            match self.publish(topic, payload).await {
                Ok(rx) => receivers.push(Some(rx)),
                Err(e) => {
                    error.get_or_insert(e);
                    receivers.push(None);
                    break;
                }
            }
        }
        let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
        for (i, rx) in receivers.into_iter().enumerate() {
            let Some(rx) = rx else { continue };
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Ok(()))) => ok[i] = true,
                Ok(Ok(Err(e))) => {
                    error.get_or_insert(SinkError::Transport(e));
                }
                Ok(Err(_)) => {
                    error.get_or_insert(SinkError::Transport("connection closed".into()));
                }
                Err(_) => {
                    error.get_or_insert(SinkError::Timeout(ACK_TIMEOUT));
                }
            }
        }
        (ok, error)
    }

    async fn close(self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.disconnect()).await;
        // Give the event loop a moment to write DISCONNECT, then stop it.
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            while !self.task.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        self.task.abort();
    }
}

impl Drop for MqttConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `host:port` of a broker.
pub fn parse_broker(addr: &str) -> Result<(String, u16), SinkError> {
    let addr = addr.strip_prefix("mqtt://").unwrap_or(addr);
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
        .ok_or_else(|| SinkError::Protocol(format!("{addr:?} is not host:port")))?;
    Ok((host, port))
}

/// Messages (topic, payload, indices of the batch records they carry) for one device.
type Messages = Vec<(String, Vec<u8>, Vec<usize>)>;

/// The gateway topic `wattline/readings` on one connection per group, with a site token.
pub struct MqttGatewaySink {
    broker: (String, u16),
    password: String,
    prefix: String,
    group: usize,
    conn: Option<MqttConn>,
    comm: CommLog,
    who: String,
}

impl MqttGatewaySink {
    pub fn new(
        broker: &str,
        password: String,
        prefix: String,
        group: usize,
        comm: CommLog,
        who: String,
    ) -> Result<MqttGatewaySink, SinkError> {
        Ok(MqttGatewaySink {
            broker: parse_broker(broker)?,
            password,
            prefix,
            group,
            conn: None,
            comm,
            who,
        })
    }
}

impl Sink for MqttGatewaySink {
    #[allow(clippy::manual_async_fn)]
    fn send<'a>(
        &'a mut self,
        batch: &'a [Record],
        acked: &'a mut [bool],
    ) -> impl std::future::Future<Output = Result<Delivery, SinkError>> + Send + 'a {
        async move {
            let todo: Vec<usize> = (0..batch.len()).filter(|&i| !acked[i]).collect();
            let mut messages: Messages = Vec::new();
            for chunk in todo.chunks(MAX_PER_MESSAGE) {
                let records: Vec<&Record> = chunk.iter().map(|&i| &batch[i]).collect();
                let payload = json_readings(&records, &self.prefix, true).into_bytes();
                messages.push(("wattline/readings".into(), payload, chunk.to_vec()));
            }
            if self.conn.as_ref().is_none_or(MqttConn::is_dead) {
                self.conn = Some(MqttConn::open(
                    &self.broker,
                    format!("{}gateway-{:04}", self.prefix, self.group),
                    ("sim-gateway", &self.password),
                    200,
                    self.comm.clone(),
                    self.who.clone(),
                ));
            }
            let conn = self.conn.as_ref().expect("connection");
            let (payloads, indices): (Vec<_>, Vec<_>) =
                messages.into_iter().map(|(t, p, i)| ((t, p), i)).unzip();
            let (ok, error) = conn.publish_all(payloads).await;
            for (idx, ok) in indices.iter().zip(ok) {
                if ok {
                    for &i in idx {
                        acked[i] = true;
                    }
                }
            }
            match error {
                Some(e) => {
                    self.conn = None;
                    Err(e)
                }
                None => Ok(Delivery::default()),
            }
        }
    }

    #[allow(clippy::manual_async_fn)]
    fn close(&mut self) -> impl std::future::Future<Output = ()> + Send + '_ {
        async move {
            if let Some(c) = self.conn.take() {
                c.close().await;
            }
        }
    }
}

/// Protocols where each device has its own connection and credential: the native device
/// topic and the vendor topics bound to the device.
pub struct MqttDeviceSink {
    protocol: Protocol,
    broker: (String, u16),
    /// Device index -> (username, password).
    credentials: Arc<HashMap<u32, (String, String)>>,
    prefix: String,
    tz: jiff::tz::TimeZone,
    conns: HashMap<u32, MqttConn>,
    comm: CommLog,
    who: String,
}

impl MqttDeviceSink {
    pub fn new(
        protocol: Protocol,
        broker: &str,
        credentials: Arc<HashMap<u32, (String, String)>>,
        prefix: String,
        tz: jiff::tz::TimeZone,
        comm: CommLog,
        who: String,
    ) -> Result<MqttDeviceSink, SinkError> {
        Ok(MqttDeviceSink {
            protocol,
            broker: parse_broker(broker)?,
            credentials,
            prefix,
            tz,
            conns: HashMap::new(),
            comm,
            who,
        })
    }

    /// The messages of one device's records (indices into the batch, in order).
    fn messages(&self, batch: &[Record], device: u32, idx: &[usize]) -> Messages {
        let name = device_name(&self.prefix, device);
        match self.protocol {
            Protocol::MqttNative => idx
                .chunks(MAX_PER_MESSAGE)
                .map(|chunk| {
                    let records: Vec<&Record> = chunk.iter().map(|&i| &batch[i]).collect();
                    let payload = json_readings(&records, &self.prefix, false).into_bytes();
                    (format!("wattline/{name}/readings"), payload, chunk.to_vec())
                })
                .collect(),
            Protocol::Tasmota => idx
                .iter()
                .map(|&i| {
                    let p = tasmota_sensor(&batch[i], &self.tz).into_bytes();
                    (format!("tele/{name}/SENSOR"), p, vec![i])
                })
                .collect(),
            Protocol::Shelly => idx
                .iter()
                .map(|&i| {
                    let p = shelly_switch_status(&batch[i]).into_bytes();
                    (format!("{name}/status/switch:0"), p, vec![i])
                })
                .collect(),
            Protocol::Clemap => idx
                .chunk_by(|&a, &b| batch[a].ts == batch[b].ts)
                .map(|reading| {
                    let phases: Vec<&Record> = reading.iter().map(|&i| &batch[i]).collect();
                    let p = clemap_one_minute(&phases, device);
                    (format!("one-minute/{name}"), p, reading.to_vec())
                })
                .collect(),
            other => unreachable!("{other} is no per-device MQTT protocol"),
        }
    }
}

impl Sink for MqttDeviceSink {
    #[allow(clippy::manual_async_fn)]
    fn send<'a>(
        &'a mut self,
        batch: &'a [Record],
        acked: &'a mut [bool],
    ) -> impl std::future::Future<Output = Result<Delivery, SinkError>> + Send + 'a {
        async move {
            // Records to send, per device, in log order.
            let per_device = super::unacked_per_device(batch, acked);
            let mut jobs = Vec::with_capacity(per_device.len());
            for (device, idx) in per_device {
                let messages = self.messages(batch, device, &idx);
                let conn = match self.conns.remove(&device) {
                    Some(c) if !c.is_dead() => c,
                    _ => {
                        let Some((user, pass)) = self.credentials.get(&device) else {
                            return Err(SinkError::Protocol(format!(
                                "no MQTT credential for {}",
                                device_name(&self.prefix, device)
                            )));
                        };
                        MqttConn::open(
                            &self.broker,
                            device_name(&self.prefix, device),
                            (user, pass),
                            20,
                            self.comm.clone(),
                            format!("{} {}", self.who, device_name(&self.prefix, device)),
                        )
                    }
                };
                jobs.push(async move {
                    let (payloads, indices): (Vec<_>, Vec<_>) =
                        messages.into_iter().map(|(t, p, i)| ((t, p), i)).unzip();
                    let (ok, error) = conn.publish_all(payloads).await;
                    (device, conn, indices, ok, error)
                });
            }
            let mut first_error = None;
            let mut failed_devices = 0usize;
            for (device, conn, indices, ok, error) in futures::future::join_all(jobs).await {
                for (idx, ok) in indices.iter().zip(ok) {
                    if ok {
                        for &i in idx {
                            acked[i] = true;
                        }
                    }
                }
                match error {
                    Some(e) => {
                        failed_devices += 1;
                        first_error.get_or_insert(e);
                    }
                    None => {
                        self.conns.insert(device, conn);
                    }
                }
            }
            match first_error {
                Some(e) => Err(SinkError::Transport(format!(
                    "{failed_devices} device connection(s) failed, first: {e}"
                ))),
                None => Ok(Delivery::default()),
            }
        }
    }

    #[allow(clippy::manual_async_fn)]
    fn close(&mut self) -> impl std::future::Future<Output = ()> + Send + '_ {
        async move {
            let conns: Vec<MqttConn> = self.conns.drain().map(|(_, c)| c).collect();
            futures::future::join_all(conns.into_iter().map(MqttConn::close)).await;
        }
    }
}
