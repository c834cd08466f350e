//! The built-in MQTT broker: connections, sessions, subscriptions and retained messages.
//!
//! What the broker does not decide is behind [`BrokerHooks`]: who may connect, what a client
//! may publish and subscribe to, and what a published message means. Wattline's hooks
//! ([`crate::hub::Hub`]) decode messages into readings and return only once they are durable,
//! which is what lets a QoS 1 PUBACK mean "stored".
//!
//! Every connection is one task that owns its socket. It reads whatever the socket has,
//! decodes every complete packet in it, hands all the PUBLISHes of that read to the hooks in
//! one call (so a fast publisher costs one durable commit per read, not per message), and then
//! writes the acknowledgements in order. Messages for the client (subscriptions, retained
//! messages) are queued on its session and the task is woken to write them.
//!
//! Sessions live in memory: a client that connects with clean session off (3.1.1) or a
//! session expiry (5) gets its subscriptions and undelivered QoS 1 messages back when it
//! reconnects to the same node, but not after a restart.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use wattline_domain::Principal;

use crate::codec::{
    self, AckRefusal, ConnectPacket, ConnectRefusal, DisconnectReason, Inbound, Outbound,
    PublishPacket, Version, Will,
};
use crate::topic;

/// The application's side of the broker.
#[async_trait]
pub trait BrokerHooks: Send + Sync + 'static {
    /// Per-connection state of the application (payload decoder memory, for Wattline).
    type Conn: Send + 'static;

    /// Who is connecting; a refusal is sent in the CONNACK.
    async fn authenticate(&self, connect: &ConnectPacket) -> Result<Principal, ConnectRefusal>;

    fn open(&self, who: &Principal, client_id: &str) -> Self::Conn;

    /// The client went away; `graceful` when it sent DISCONNECT.
    fn closed(&self, who: &Principal, client_id: &str, graceful: bool);

    fn may_publish(&self, who: &Principal, topic: &str) -> bool;

    fn may_subscribe(&self, who: &Principal, filter: &str) -> bool;

    /// Takes the messages a client published in one read, in order. Returns one verdict per
    /// message, and only once every accepted message is durable.
    async fn ingest(
        &self,
        conn: &mut Self::Conn,
        who: &Principal,
        messages: &[PublishPacket],
    ) -> Vec<Result<(), AckRefusal>>;
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Largest packet accepted, in bytes.
    pub max_packet_bytes: usize,
    /// QoS 1 messages kept for an offline persistent session; older ones are dropped.
    pub max_queued_per_session: usize,
    /// How long a client may take to send CONNECT after the TCP connection opens.
    pub connect_timeout: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_packet_bytes: 1 << 20,
            max_queued_per_session: 1000,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct BrokerStats {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connects_refused: AtomicU64,
    pub messages_in: AtomicU64,
    pub publishes_denied: AtomicU64,
    pub subscribes_denied: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub queued_dropped: AtomicU64,
}

impl BrokerStats {
    /// Prometheus lines for `/metrics`.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for (name, kind, help, v) in [
            (
                "wattline_mqtt_connections",
                "gauge",
                "Open MQTT connections.",
                &self.connections_open,
            ),
            (
                "wattline_mqtt_connections_total",
                "counter",
                "MQTT connections accepted.",
                &self.connections_total,
            ),
            (
                "wattline_mqtt_connects_refused_total",
                "counter",
                "CONNECTs refused (bad credentials, anonymous).",
                &self.connects_refused,
            ),
            (
                "wattline_mqtt_publishes_received_total",
                "counter",
                "PUBLISH packets received.",
                &self.messages_in,
            ),
            (
                "wattline_mqtt_publishes_denied_total",
                "counter",
                "PUBLISHes refused by the ACL.",
                &self.publishes_denied,
            ),
            (
                "wattline_mqtt_subscribes_denied_total",
                "counter",
                "Subscriptions refused by the ACL.",
                &self.subscribes_denied,
            ),
            (
                "wattline_mqtt_protocol_errors_total",
                "counter",
                "Connections closed on a protocol error.",
                &self.protocol_errors,
            ),
            (
                "wattline_mqtt_queued_dropped_total",
                "counter",
                "Messages dropped from a full session queue.",
                &self.queued_dropped,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// A handle on a running broker: stats, and kicking clients out (revoked credentials).
pub struct Broker<H: BrokerHooks> {
    shared: Arc<Shared<H>>,
}

impl<H: BrokerHooks> Clone for Broker<H> {
    fn clone(&self) -> Self {
        Broker {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<H: BrokerHooks> {
    hooks: Arc<H>,
    config: BrokerConfig,
    stats: BrokerStats,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    subscriptions: Mutex<topic::SubscriptionIndex>,
    retained: Mutex<BTreeMap<String, PublishPacket>>,
}

/// One client id's session: what outlives a connection when the session is persistent.
struct Session {
    client_id: String,
    /// Wakes the connection task: messages queued, or told to leave.
    wake: Notify,
    state: Mutex<SessionState>,
}

#[derive(Default)]
struct SessionState {
    principal: Option<Principal>,
    /// Bumped by every new connection of this client id; a task whose number is old has been
    /// taken over (or kicked) and must leave.
    connection: u64,
    connected: bool,
    persistent: bool,
    kick: Option<DisconnectReason>,
    subscriptions: Vec<(String, u8)>,
    queue: VecDeque<PublishPacket>,
    /// QoS 1 messages sent and not yet acknowledged, by packet id, for resending after a
    /// reconnect.
    inflight: BTreeMap<u16, PublishPacket>,
    next_pkid: u16,
}

impl SessionState {
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }
}

impl<H: BrokerHooks> Broker<H> {
    pub fn new(hooks: Arc<H>, config: BrokerConfig) -> Self {
        Broker {
            shared: Arc::new(Shared {
                hooks,
                config,
                stats: BrokerStats::default(),
                sessions: Mutex::new(HashMap::new()),
                subscriptions: Mutex::new(topic::SubscriptionIndex::default()),
                retained: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    pub fn stats(&self) -> &BrokerStats {
        &self.shared.stats
    }

    /// Accepts connections on `listener` until `shutdown` turns true; `wrap` turns a TCP
    /// stream into the stream to speak MQTT over (identity for plain TCP, a TLS handshake for
    /// mqtts).
    pub async fn serve<S, F, Fut>(
        &self,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
        wrap: F,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
    {
        let wrap = Arc::new(wrap);
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and friends: wait instead of spinning.
                    tracing::warn!(error = %e, "mqtt accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let shared = self.shared.clone();
            let wrap = wrap.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                match wrap(tcp).await {
                    Ok(stream) => run_connection(shared, stream, peer, shutdown).await,
                    Err(e) => tracing::info!(%peer, error = %e, "mqtt: TLS handshake failed"),
                }
            });
        }
    }

    /// `kick` as a closure that does not keep the broker alive: the hooks hold it, and the
    /// broker holds the hooks, so a strong reference would be a cycle that outlives shutdown.
    pub fn kicker(&self) -> impl Fn(&Principal) -> usize + Send + Sync + 'static {
        let weak = Arc::downgrade(&self.shared);
        move |who| {
            weak.upgrade()
                .map_or(0, |shared| Broker { shared }.kick(who))
        }
    }

    /// Disconnects every connection authenticated as `who` (a revoked or rotated credential).
    pub fn kick(&self, who: &Principal) -> usize {
        let sessions = self.shared.sessions.lock().unwrap();
        let mut kicked = 0;
        for session in sessions.values() {
            let mut st = session.state.lock().unwrap();
            if st.connected && st.principal.as_ref() == Some(who) {
                st.kick = Some(DisconnectReason::NotAuthorized);
                st.persistent = false;
                kicked += 1;
                drop(st);
                session.wake.notify_one();
            }
        }
        kicked
    }

    /// Publishes a message from the server itself (device commands): retained if asked,
    /// delivered to matching subscribers.
    pub fn publish(&self, message: PublishPacket) {
        self.shared.route(&message);
    }
}

impl<H: BrokerHooks> Shared<H> {
    /// Delivers a message to the matching subscriptions and keeps it if retained.
    fn route(&self, message: &PublishPacket) {
        if message.retain {
            let mut retained = self.retained.lock().unwrap();
            if message.payload.is_empty() {
                retained.remove(&message.topic);
            } else {
                retained.insert(message.topic.clone(), message.clone());
            }
        }
        let targets = self.subscriptions.lock().unwrap().matches(&message.topic);
        if targets.is_empty() {
            return;
        }
        let sessions = self.sessions.lock().unwrap();
        for (client_id, qos) in targets {
            if let Some(session) = sessions.get(&client_id) {
                self.enqueue(session, message, qos, false);
            }
        }
    }

    fn enqueue(&self, session: &Session, message: &PublishPacket, qos: u8, retained: bool) {
        let mut st = session.state.lock().unwrap();
        let qos = qos.min(message.qos);
        if !st.connected && (qos == 0 || !st.persistent) {
            return;
        }
        if st.queue.len() >= self.config.max_queued_per_session {
            st.queue.pop_front();
            self.stats.queued_dropped.fetch_add(1, Ordering::Relaxed);
        }
        st.queue.push_back(PublishPacket {
            qos,
            // A live message is delivered without the retain flag (MQTT 3.3.1.9); one sent
            // because of a new subscription keeps it.
            retain: retained,
            dup: false,
            pkid: 0,
            topic_alias: None,
            ..message.clone()
        });
        let connected = st.connected;
        drop(st);
        if connected {
            session.wake.notify_one();
        }
    }
}

/// Why a connection ended, for the log and for deciding about the will.
enum End {
    Graceful { with_will: bool },
    Closed,
    Error(String),
    Kicked(DisconnectReason),
    KeepAlive,
    Shutdown,
}

async fn run_connection<H: BrokerHooks, S>(
    shared: Arc<Shared<H>>,
    mut stream: S,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let max = shared.config.max_packet_bytes;
    let mut rbuf = BytesMut::with_capacity(INITIAL_READ_BUFFER);
    // CONNECT first, within the timeout.
    let connect = tokio::time::timeout(shared.config.connect_timeout, async {
        loop {
            match codec::read(&mut rbuf, None, max) {
                Ok(Some(Inbound::Connect(c))) => return Ok(c),
                Ok(Some(_)) => return Err("first packet is not CONNECT".to_string()),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            match stream.read_buf(&mut rbuf).await {
                Ok(0) => return Err("closed before CONNECT".to_string()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    let connect = match connect {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, error = %e, "mqtt: connection refused before CONNECT");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "mqtt: no CONNECT within the timeout");
            return;
        }
    };
    let version = connect.version;
    let mut wbuf = BytesMut::new();

    let principal = match shared.hooks.authenticate(&connect).await {
        Ok(p) => p,
        Err(refusal) => {
            shared
                .stats
                .connects_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %peer,
                client_id = %connect.client_id,
                username = connect.username.as_deref().unwrap_or(""),
                ?refusal,
                "mqtt: connection refused"
            );
            codec::write(
                &Outbound::ConnAck {
                    session_present: false,
                    refusal: Some(refusal),
                },
                version,
                &mut wbuf,
            );
            let _ = stream.write_all(&wbuf).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    // A client may leave its id to the server (3.1.1 only with a clean session).
    let client_id = if connect.client_id.is_empty() {
        if version == Version::V311 && !connect.clean_start {
            codec::write(
                &Outbound::ConnAck {
                    session_present: false,
                    refusal: Some(ConnectRefusal::BadClientId),
                },
                version,
                &mut wbuf,
            );
            let _ = stream.write_all(&wbuf).await;
            return;
        }
        format!("wattline-auto-{:016x}", rand::random::<u64>())
    } else {
        connect.client_id.clone()
    };
    let persistent = match version {
        Version::V311 => !connect.clean_start,
        Version::V5 => connect.session_expiry_s.unwrap_or(0) > 0,
    };

    // Take over the session of this client id (an old connection of it must leave).
    let (session, my_connection, session_present) = {
        let mut sessions = shared.sessions.lock().unwrap();
        let session = sessions
            .entry(client_id.clone())
            .or_insert_with(|| {
                Arc::new(Session {
                    client_id: client_id.clone(),
                    wake: Notify::new(),
                    state: Mutex::new(SessionState::default()),
                })
            })
            .clone();
        let mut st = session.state.lock().unwrap();
        if st.connected {
            st.kick = Some(DisconnectReason::SessionTakenOver);
        }
        // A session belongs to the identity that made it: another identity (or a clean
        // start) gets a fresh one.
        let keep =
            !connect.clean_start && st.persistent && st.principal.as_ref() == Some(&principal);
        if !keep {
            let old: Vec<String> = st.subscriptions.drain(..).map(|(f, _)| f).collect();
            st.queue.clear();
            st.inflight.clear();
            let mut index = shared.subscriptions.lock().unwrap();
            for filter in old {
                index.remove(&filter, &client_id);
            }
        }
        st.connection += 1;
        st.connected = true;
        st.persistent = persistent;
        st.principal = Some(principal.clone());
        // Unacknowledged QoS 1 messages go out again first, marked as duplicates.
        let resend: Vec<PublishPacket> = std::mem::take(&mut st.inflight).into_values().collect();
        for (i, mut p) in resend.into_iter().enumerate() {
            p.dup = true;
            st.queue.insert(i, p);
        }
        let my = st.connection;
        drop(st);
        (session, my, keep)
    };
    // Wake a taken-over connection so it leaves.
    session.wake.notify_waiters();

    shared
        .stats
        .connections_open
        .fetch_add(1, Ordering::Relaxed);
    shared
        .stats
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, %client_id, ?principal, ?version, "mqtt: connected");
    let conn = shared.hooks.open(&principal, &client_id);
    codec::write(
        &Outbound::ConnAck {
            session_present,
            refusal: None,
        },
        version,
        &mut wbuf,
    );

    let mut state = ConnState {
        version,
        principal,
        will: connect.will.clone(),
        aliases: HashMap::new(),
        awaiting_rel: HashSet::new(),
        my_connection,
    };
    let keep_alive = match connect.keep_alive_s {
        0 => None,
        // MQTT 3.1.2.10: one and a half times the keep alive.
        s => Some(Duration::from_millis(u64::from(s) * 1500)),
    };

    let (end, mut conn) = connection_loop(
        &shared,
        &session,
        &mut stream,
        &mut rbuf,
        &mut wbuf,
        &mut state,
        conn,
        keep_alive,
        &mut shutdown,
    )
    .await;

    // Tell the client why, where the protocol can.
    let reason = match &end {
        End::Kicked(r) => Some(*r),
        End::KeepAlive => Some(DisconnectReason::KeepAliveTimeout),
        End::Shutdown => Some(DisconnectReason::ServerShuttingDown),
        End::Error(_) => Some(DisconnectReason::ProtocolError),
        _ => None,
    };
    if let (Some(reason), Version::V5) = (reason, version) {
        wbuf.clear();
        codec::write(&Outbound::Disconnect { reason }, version, &mut wbuf);
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&wbuf)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;

    let graceful = matches!(end, End::Graceful { with_will: false });
    match &end {
        End::Error(e) => {
            shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, %client_id, error = %e, "mqtt: connection closed on error");
        }
        End::Kicked(r) => {
            tracing::info!(%peer, %client_id, reason = ?r, "mqtt: disconnected by the server")
        }
        _ => tracing::debug!(%peer, %client_id, "mqtt: disconnected"),
    }
    // The will is published when the connection ends other than by DISCONNECT (or by a
    // DISCONNECT that asks for it), and not when the session was taken over by the same
    // client (MQTT 5 leaves that to the server; a reconnecting plug is not offline).
    let taken_over = matches!(end, End::Kicked(DisconnectReason::SessionTakenOver));
    if let Some(will) = state.will.take() {
        if !graceful && !taken_over && !matches!(end, End::Shutdown) {
            publish_will(&shared, &mut conn, &state.principal, will).await;
        }
    }
    shared.hooks.closed(&state.principal, &client_id, graceful);
    shared
        .stats
        .connections_open
        .fetch_sub(1, Ordering::Relaxed);

    // Leave the session: drop it unless it is persistent (and still ours).
    let mut sessions = shared.sessions.lock().unwrap();
    let mut st = session.state.lock().unwrap();
    if st.connection == my_connection {
        st.connected = false;
        st.kick = None;
        if !st.persistent {
            let filters: Vec<String> = st.subscriptions.drain(..).map(|(f, _)| f).collect();
            drop(st);
            let mut index = shared.subscriptions.lock().unwrap();
            for f in filters {
                index.remove(&f, &session.client_id);
            }
            sessions.remove(&session.client_id);
        }
    }
}

/// What one connection keeps besides its session.
struct ConnState {
    version: Version,
    principal: Principal,
    will: Option<Will>,
    /// MQTT 5 topic aliases the client set up.
    aliases: HashMap<u16, String>,
    /// QoS 2 packet ids received (and stored) whose PUBREL has not come yet: a resend of one
    /// of them must not be stored twice.
    awaiting_rel: HashSet<u16>,
    my_connection: u64,
}

/// A read's publishes being made durable, with the answers that wait for them.
struct Batch<C> {
    conn: C,
    verdicts: Vec<Result<(), AckRefusal>>,
    publishes: Vec<PublishPacket>,
    replies: Vec<Reply>,
}

type InFlight<'a, C> = std::pin::Pin<Box<dyn std::future::Future<Output = Batch<C>> + Send + 'a>>;

/// Serves a connection until it ends; returns how, and the hooks' connection state.
///
/// One read's messages are stored while the next read is taken from the socket (at most one
/// batch in flight, so the engine's backpressure still reaches the client): a publisher is
/// not held up by a commit it does not wait for (QoS 0), and acknowledgements still go out
/// only once their batch is durable, in order.
#[allow(clippy::too_many_arguments)]
async fn connection_loop<H: BrokerHooks, S>(
    shared: &Shared<H>,
    session: &Session,
    stream: &mut S,
    rbuf: &mut BytesMut,
    wbuf: &mut BytesMut,
    state: &mut ConnState,
    conn: H::Conn,
    keep_alive: Option<Duration>,
    shutdown: &mut watch::Receiver<bool>,
) -> (End, H::Conn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let max = shared.config.max_packet_bytes;
    let mut read_hint = INITIAL_READ_BUFFER;
    let mut idle_conn = Some(conn);
    let mut in_flight: Option<InFlight<'_, H::Conn>> = None;
    let end = loop {
        // Messages queued for this client go out with whatever else is pending.
        if let Some(end) = drain_queue(session, state, wbuf) {
            break end;
        }
        if !wbuf.is_empty() {
            if let Err(e) = stream.write_all(wbuf).await {
                break End::Error(e.to_string());
            }
            shrink(wbuf, 16 * 1024);
        }
        // Idle devices dominate: they send a small message every few seconds, so reads start
        // small; a read that fills its space doubles the next one (a busy publisher reaches
        // 64 KiB reads after a few), one that uses less than a quarter halves it.
        let space = read_hint.max(rbuf.capacity() - rbuf.len());
        rbuf.reserve(space);
        let read = async {
            match keep_alive {
                Some(limit) => tokio::time::timeout(limit, stream.read_buf(rbuf))
                    .await
                    .ok(),
                None => Some(stream.read_buf(rbuf).await),
            }
        };
        let stored = async {
            match in_flight.as_mut() {
                Some(f) => f.await,
                None => std::future::pending().await,
            }
        };
        let n = tokio::select! {
            batch = stored => {
                in_flight = None;
                idle_conn = Some(finish(shared, session, state, wbuf, batch));
                continue;
            }
            r = read => r,
            _ = session.wake.notified() => continue,
            _ = shutdown.wait_for(|stop| *stop) => break End::Shutdown,
        };
        match n {
            None => break End::KeepAlive,
            Some(Ok(0)) => break End::Closed,
            Some(Ok(got)) if got >= space => read_hint = (read_hint * 2).min(MAX_READ_HINT),
            Some(Ok(got)) if got < read_hint / 4 => {
                read_hint = (read_hint / 2).max(INITIAL_READ_BUFFER)
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break End::Error(e.to_string()),
        }
        // Every complete packet of this read. The lists live only as long as the read, so an
        // idle connection holds no capacity for them.
        let mut publishes: Vec<PublishPacket> = Vec::new();
        let mut replies: Vec<Reply> = Vec::new();
        let mut ended = None;
        loop {
            let packet = match codec::read(rbuf, Some(state.version), max) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    ended = Some(End::Error(e.to_string()));
                    break;
                }
            };
            match packet {
                Inbound::Publish(mut p) => {
                    if let Err(e) = resolve_alias(state, &mut p) {
                        ended = Some(End::Error(e));
                        break;
                    }
                    if p.qos == 2 && !state.awaiting_rel.insert(p.pkid) {
                        // A resend of a QoS 2 message already stored: only acknowledge.
                        replies.push(Reply::Now(Outbound::PubRec {
                            pkid: p.pkid,
                            refusal: None,
                        }));
                        continue;
                    }
                    replies.push(Reply::Verdict(publishes.len()));
                    publishes.push(p);
                }
                Inbound::PubAck(pkid) => {
                    session.state.lock().unwrap().inflight.remove(&pkid);
                }
                Inbound::PubRec(pkid) => {
                    // We never send QoS 2, but answer correctly if a client insists.
                    replies.push(Reply::Now(Outbound::PubRel(pkid)));
                }
                Inbound::PubRel(pkid) => {
                    state.awaiting_rel.remove(&pkid);
                    replies.push(Reply::Now(Outbound::PubComp(pkid)));
                }
                Inbound::PubComp(_) => {}
                Inbound::Subscribe { pkid, filters } => {
                    let granted = subscribe(shared, session, state, &filters);
                    replies.push(Reply::Now(Outbound::SubAck { pkid, granted }));
                    replies.push(Reply::Retained(filters));
                }
                Inbound::Unsubscribe { pkid, filters } => {
                    let count = filters.len();
                    let mut st = session.state.lock().unwrap();
                    st.subscriptions.retain(|(f, _)| !filters.contains(f));
                    drop(st);
                    let mut index = shared.subscriptions.lock().unwrap();
                    for f in &filters {
                        index.remove(f, &session.client_id);
                    }
                    replies.push(Reply::Now(Outbound::UnsubAck { pkid, count }));
                }
                Inbound::PingReq => replies.push(Reply::Now(Outbound::PingResp)),
                Inbound::Disconnect { with_will } => {
                    ended = Some(End::Graceful { with_will });
                    break;
                }
                Inbound::Connect(_) => {
                    ended = Some(End::Error("second CONNECT".into()));
                    break;
                }
                Inbound::Unexpected(name) => {
                    ended = Some(End::Error(format!("a client may not send {name}")));
                    break;
                }
            }
        }
        if rbuf.is_empty() {
            shrink(rbuf, 2 * read_hint);
        }
        if !replies.is_empty() {
            // Answers go out in the order the packets came: after the batch in flight.
            if let Some(f) = in_flight.take() {
                idle_conn = Some(finish(shared, session, state, wbuf, f.await));
            }
            let mut conn = idle_conn.take().expect("no batch in flight");
            let principal = state.principal.clone();
            if publishes.is_empty() {
                idle_conn = Some(finish(
                    shared,
                    session,
                    state,
                    wbuf,
                    Batch {
                        conn,
                        verdicts: Vec::new(),
                        publishes,
                        replies,
                    },
                ));
            } else {
                in_flight = Some(Box::pin(async move {
                    let verdicts = ingest(shared, &mut conn, &principal, &publishes).await;
                    Batch {
                        conn,
                        verdicts,
                        publishes,
                        replies,
                    }
                }));
            }
        }
        if let Some(end) = ended {
            break end;
        }
    };
    // Whatever was received is stored (and acknowledged if the socket still takes it).
    if let Some(f) = in_flight.take() {
        idle_conn = Some(finish(shared, session, state, wbuf, f.await));
    }
    if !wbuf.is_empty() {
        let _ = stream.write_all(wbuf).await;
        wbuf.clear();
    }
    (end, idle_conn.expect("connection state returned"))
}

/// Writes a stored batch's answers, in the order its packets came.
fn finish<H: BrokerHooks>(
    shared: &Shared<H>,
    session: &Session,
    state: &mut ConnState,
    wbuf: &mut BytesMut,
    batch: Batch<H::Conn>,
) -> H::Conn {
    for reply in batch.replies {
        match reply {
            Reply::Now(packet) => codec::write(&packet, state.version, wbuf),
            Reply::Verdict(i) => {
                let p = &batch.publishes[i];
                let refusal = batch.verdicts[i].err();
                match p.qos {
                    0 => {}
                    1 => codec::write(
                        &Outbound::PubAck {
                            pkid: p.pkid,
                            refusal,
                        },
                        state.version,
                        wbuf,
                    ),
                    _ => {
                        if refusal.is_some() {
                            // Not stored: a resend may be taken.
                            state.awaiting_rel.remove(&p.pkid);
                        }
                        codec::write(
                            &Outbound::PubRec {
                                pkid: p.pkid,
                                refusal,
                            },
                            state.version,
                            wbuf,
                        )
                    }
                }
            }
            Reply::Retained(filters) => send_retained(shared, session, state, &filters),
        }
    }
    batch.conn
}

/// What to answer for one inbound packet, in the order the packets came.
enum Reply {
    Now(Outbound),
    /// The PUBACK/PUBREC of the i-th publish of this read, once its verdict is known.
    Verdict(usize),
    /// Retained messages for new subscriptions, after their SUBACK.
    Retained(Vec<(String, u8)>),
}

/// Read buffer of a new connection: a CONNECT and a reading or two.
const INITIAL_READ_BUFFER: usize = 512;
/// Largest read a busy publisher grows to.
const MAX_READ_HINT: usize = 256 * 1024;

/// Buffers that grew for a burst give their memory back when idle: 100,000 idle devices must
/// not each hold a burst-sized buffer.
fn shrink(buf: &mut BytesMut, keep: usize) {
    if buf.is_empty() && buf.capacity() > keep {
        *buf = BytesMut::new();
    } else {
        buf.clear();
    }
}

fn resolve_alias(state: &mut ConnState, p: &mut PublishPacket) -> Result<(), String> {
    let Some(alias) = p.topic_alias else {
        return Ok(());
    };
    if alias == 0 || alias > codec::TOPIC_ALIAS_MAX {
        return Err(format!(
            "topic alias {alias} is outside 1..={}",
            codec::TOPIC_ALIAS_MAX
        ));
    }
    if p.topic.is_empty() {
        p.topic = state
            .aliases
            .get(&alias)
            .cloned()
            .ok_or_else(|| format!("topic alias {alias} was never set"))?;
    } else {
        state.aliases.insert(alias, p.topic.clone());
    }
    p.topic_alias = None;
    Ok(())
}

async fn ingest<H: BrokerHooks>(
    shared: &Shared<H>,
    conn: &mut H::Conn,
    principal: &Principal,
    publishes: &[PublishPacket],
) -> Vec<Result<(), AckRefusal>> {
    shared
        .stats
        .messages_in
        .fetch_add(publishes.len() as u64, Ordering::Relaxed);
    // The ACL first: refused messages never reach the hooks' ingest.
    let allowed: Vec<bool> = publishes
        .iter()
        .map(|p| topic::valid_topic(&p.topic) && shared.hooks.may_publish(principal, &p.topic))
        .collect();
    let mut verdicts = if allowed.iter().all(|a| *a) {
        shared.hooks.ingest(conn, principal, publishes).await
    } else {
        let taken: Vec<PublishPacket> = publishes
            .iter()
            .zip(&allowed)
            .filter(|(_, a)| **a)
            .map(|(p, _)| p.clone())
            .collect();
        let mut taken_verdicts = shared
            .hooks
            .ingest(conn, principal, &taken)
            .await
            .into_iter();
        allowed
            .iter()
            .zip(publishes)
            .map(|(a, p)| {
                if *a {
                    taken_verdicts
                        .next()
                        .unwrap_or(Err(AckRefusal::Unspecified))
                } else {
                    shared
                        .stats
                        .publishes_denied
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        principal = ?principal,
                        topic = %p.topic,
                        "mqtt: publish refused by the ACL (not this client's topic)"
                    );
                    Err(AckRefusal::NotAuthorized)
                }
            })
            .collect()
    };
    verdicts.resize(publishes.len(), Err(AckRefusal::Unspecified));
    // Accepted messages also go to subscribers (an admin watching `tele/#`) and the
    // retained store.
    for (p, v) in publishes.iter().zip(&verdicts) {
        if v.is_ok() || *v == Err(AckRefusal::PayloadInvalid) {
            shared.route(p);
        }
    }
    verdicts
}

async fn publish_will<H: BrokerHooks>(
    shared: &Shared<H>,
    conn: &mut H::Conn,
    principal: &Principal,
    will: Will,
) {
    let message = PublishPacket {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos.min(1),
        retain: will.retain,
        dup: false,
        pkid: 0,
        topic_alias: None,
    };
    if !shared.hooks.may_publish(principal, &message.topic) {
        tracing::warn!(?principal, topic = %message.topic, "mqtt: will refused by the ACL");
        return;
    }
    let verdicts = shared
        .hooks
        .ingest(conn, principal, std::slice::from_ref(&message))
        .await;
    if verdicts
        .first()
        .is_some_and(|v| v.is_ok() || *v == Err(AckRefusal::PayloadInvalid))
    {
        shared.route(&message);
    }
}

fn subscribe<H: BrokerHooks>(
    shared: &Shared<H>,
    session: &Session,
    state: &ConnState,
    filters: &[(String, u8)],
) -> Vec<Option<u8>> {
    filters
        .iter()
        .map(|(filter, qos)| {
            if !topic::valid_filter(filter) || !shared.hooks.may_subscribe(&state.principal, filter) {
                shared.stats.subscribes_denied.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(principal = ?state.principal, %filter, "mqtt: subscription refused by the ACL");
                return None;
            }
            // QoS 2 is granted as 1: every message the broker sends is at most QoS 1.
            let granted = (*qos).min(1);
            let mut st = session.state.lock().unwrap();
            match st.subscriptions.iter_mut().find(|(f, _)| f == filter) {
                Some(existing) => existing.1 = granted,
                None => st.subscriptions.push((filter.clone(), granted)),
            }
            drop(st);
            shared
                .subscriptions
                .lock()
                .unwrap()
                .insert(filter, &session.client_id, granted);
            Some(granted)
        })
        .collect()
}

fn send_retained<H: BrokerHooks>(
    shared: &Shared<H>,
    session: &Session,
    state: &ConnState,
    filters: &[(String, u8)],
) {
    let retained = shared.retained.lock().unwrap();
    for (filter, qos) in filters {
        if !topic::valid_filter(filter) || !shared.hooks.may_subscribe(&state.principal, filter) {
            continue;
        }
        for (topic, message) in retained.iter() {
            if topic::matches(topic, filter) {
                shared.enqueue(session, message, (*qos).min(1), true);
            }
        }
    }
}

/// Moves queued messages into the write buffer (QoS 1 ones into the in-flight set).
/// `Some` when the connection must end (kicked, taken over).
fn drain_queue(session: &Session, state: &ConnState, wbuf: &mut BytesMut) -> Option<End> {
    let mut st = session.state.lock().unwrap();
    if st.connection != state.my_connection {
        return Some(End::Kicked(DisconnectReason::SessionTakenOver));
    }
    if let Some(reason) = st.kick.take() {
        return Some(End::Kicked(reason));
    }
    while let Some(mut p) = st.queue.pop_front() {
        if p.qos > 0 {
            if p.pkid == 0 {
                p.pkid = st.next_pkid();
            }
            st.inflight.insert(p.pkid, p.clone());
        }
        codec::write(&Outbound::Publish(p), state.version, wbuf);
    }
    None
}
