//! Raw TCP socket meters: the listener of `--tcp ADDR`.
//!
//! A socket meter opens one connection and speaks strict request/response with no framing:
//! one JSON object per message, and it blocks until it reads an answer. So every message gets
//! exactly one answer, the answer to a reading is written only once the reading is durable,
//! and a bad message gets an error answer on a connection that stays usable.
//!
//! * **Handshake.** `{"id": 0}` asks for an id. When a site has enrollment open (an admin
//!   setting, off by default; the first such site by id when several are), a device
//!   `tcp-<n>` is created in it (`n` the next free number, label `enrolled: tcp`, name
//!   `Socket meter <n>`) and the answer is `n` as bare ASCII digits: the meter takes the
//!   answer verbatim as its id. Otherwise the answer is an `enrollment_closed` error (or
//!   `storage_error`) and the connection closes, so that the meter does not send readings
//!   under that answer as its id but reconnects and asks again.
//! * **Readings** carry the id (`"id": "7"`). An id whose device `tcp-7` exists and was
//!   enrolled over TCP is accepted on any connection, without a handshake: the meter keeps its
//!   id across reconnects. Anything else is `unknown_meter`.
//! * **Batching.** Every object of one read is decoded, the readings among them are stored with
//!   one `Engine::write`, and the answers go out in order in one write.
//! * **Answers.** `7` (handshake), `{"ok":true,"id":"7"}` (stored), or
//!   `{"error":{"code":"…","message":"…"},"id":"7"}` (refused; `id` when known), each JSON
//!   answer ending in a newline so that line-oriented clients can read them too.
//! * **Limits.** An object is at most [`TcpConfig::max_object_bytes`]; a connection silent for
//!   [`TcpConfig::idle_timeout`] is closed; at most [`TcpConfig::max_connections`] are open (one
//!   more is told `too_many_connections` and closed).
//!
//! The protocol has no credentials: whoever reaches the port can send readings for an enrolled
//! id, and, while a site's enrollment is open, create devices. Expose it only to the meters'
//! network and keep enrollment closed when no meter is being installed.

mod conn;
mod directory;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use wattline_domain::Limits;
use wattline_ingest::Engine;
use wattline_storage::StoreError;

pub use directory::{device_id, ENROLLED_LABEL, ENROLLED_VALUE};

/// Why a meter could not be enrolled.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("no site has TCP enrollment open; an admin opens it with PUT /api/v1/sites/{{id}}/tcp-enrollment {{\"open\": true}}")]
    EnrollmentClosed,
    #[error("no free meter id found after {0} attempts (devices created concurrently?)")]
    NoFreeId(u32),
    #[error("storage failed: {0}")]
    Storage(#[from] StoreError),
}

impl TcpError {
    /// The stable code meters and metrics see.
    pub fn code(&self) -> &'static str {
        match self {
            TcpError::EnrollmentClosed => "enrollment_closed",
            TcpError::NoFreeId(_) => "no_free_id",
            TcpError::Storage(_) => "storage_error",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once; more are refused.
    pub max_connections: usize,
    /// Largest JSON object accepted.
    pub max_object_bytes: usize,
    /// How long the rest of a started object may take before it is answered `incomplete`: a
    /// meter sends a message with one send, so its parts arrive together.
    pub partial_timeout: Duration,
    /// How long writing an answer may take before the connection is given up.
    pub write_timeout: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            idle_timeout: Duration::from_secs(120),
            max_connections: 10_000,
            max_object_bytes: wattline_decode::tcp_meter::MAX_OBJECT_BYTES,
            partial_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct TcpStats {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub messages: AtomicU64,
    pub readings: AtomicU64,
    pub enrolled: AtomicU64,
    /// Refused messages by code.
    rejected: Mutex<HashMap<&'static str, u64>>,
}

impl TcpStats {
    pub fn reject(&self, code: &'static str) {
        *self.rejected.lock().unwrap().entry(code).or_default() += 1;
    }

    /// Refusals so far by code, sorted by code.
    pub fn rejected(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self
            .rejected
            .lock()
            .unwrap()
            .iter()
            .map(|(c, n)| (*c, *n))
            .collect();
        v.sort();
        v
    }

    /// Prometheus lines for `/metrics`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, kind, help, v) in [
            (
                "wattline_tcp_connections",
                "gauge",
                "Open TCP meter connections.",
                &self.connections_open,
            ),
            (
                "wattline_tcp_connections_total",
                "counter",
                "TCP meter connections accepted.",
                &self.connections_total,
            ),
            (
                "wattline_tcp_connections_refused_total",
                "counter",
                "TCP meter connections refused at tcp_max_connections.",
                &self.connections_refused,
            ),
            (
                "wattline_tcp_messages_total",
                "counter",
                "Messages (JSON objects, or refused bytes) received from TCP meters.",
                &self.messages,
            ),
            (
                "wattline_tcp_readings_total",
                "counter",
                "Readings from TCP meters stored.",
                &self.readings,
            ),
            (
                "wattline_tcp_enrolled_total",
                "counter",
                "TCP meters enrolled (devices created by a handshake).",
                &self.enrolled,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP wattline_tcp_rejected_total TCP meter messages refused, by code.\n# TYPE wattline_tcp_rejected_total counter"
        );
        for (code, n) in self.rejected() {
            let _ = writeln!(out, "wattline_tcp_rejected_total{{code=\"{code}\"}} {n}");
        }
        out
    }
}

struct Shared {
    engine: Engine,
    limits: Limits,
    config: TcpConfig,
    stats: Arc<TcpStats>,
    directory: directory::Directory,
    slots: Arc<Semaphore>,
}

/// The socket-meter service: cheap to clone.
#[derive(Clone)]
pub struct TcpMeters {
    shared: Arc<Shared>,
}

impl TcpMeters {
    /// Loads which devices were enrolled over TCP.
    pub async fn new(
        engine: Engine,
        limits: Limits,
        config: TcpConfig,
    ) -> Result<TcpMeters, StoreError> {
        let directory = directory::Directory::load(engine.store()).await?;
        Ok(TcpMeters {
            shared: Arc::new(Shared {
                slots: Arc::new(Semaphore::new(config.max_connections)),
                engine,
                limits,
                config,
                stats: Arc::new(TcpStats::default()),
                directory,
            }),
        })
    }

    /// The counters, without a handle on the engine (so `/metrics` keeps nothing alive).
    pub fn stats(&self) -> Arc<TcpStats> {
        self.shared.stats.clone()
    }

    /// Accepts connections on `listener` until `shutdown` turns true, one task per connection;
    /// returns once every connection has ended (each ends at shutdown, after answering what it
    /// has stored).
    pub async fn serve(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let mut tasks = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and friends: wait instead of spinning.
                    tracing::warn!(error = %e, "tcp: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = self.shared.slots.clone().try_acquire_owned() else {
                self.refuse(tcp, peer);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let shared = self.shared.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                shared.stats.connections_open.fetch_add(1, Relaxed);
                shared.stats.connections_total.fetch_add(1, Relaxed);
                conn::run(&shared, tcp, peer, shutdown).await;
                shared.stats.connections_open.fetch_sub(1, Relaxed);
                drop(slot);
            });
        }
        drop(listener);
        // Each connection ends at shutdown once its current batch is answered; one stuck
        // writing to a meter that does not read is cut off, so that no Engine handle outlives
        // the engine's shutdown.
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(3), drain)
            .await
            .is_err()
        {
            tasks.shutdown().await;
        }
    }

    /// Too many connections: say so without waiting on the peer, and close.
    fn refuse(&self, tcp: tokio::net::TcpStream, peer: SocketAddr) {
        let stats = &self.shared.stats;
        stats.connections_refused.fetch_add(1, Relaxed);
        stats.reject("too_many_connections");
        tracing::warn!(%peer, max = self.shared.config.max_connections, "tcp: connection refused: tcp_max_connections reached");
        let answer = conn::error_answer(
            "too_many_connections",
            &format!(
                "the server holds its maximum of {} meter connections; try again later",
                self.shared.config.max_connections
            ),
            None,
        );
        let _ = tcp.try_write(&answer);
    }
}
