//! One socket meter's connection: read, frame, decode, store, answer.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use wattline_decode::tcp_meter::{parse_message, Frame, Framer, Message, MeterId, TcpMeterError};
use wattline_domain::{ChannelName, DeviceId, Reading, TsMs};

use crate::{Shared, TcpError};

/// Bytes read at a time. Meter messages are about 100 bytes; a larger read only means more
/// loop turns, and 10,000 idle connections should not hold megabytes each.
const READ_CHUNK: usize = 2048;

/// Why a connection ended, for the log.
#[derive(Debug)]
enum End {
    Closed,
    Idle,
    Shutdown,
    Refused,
    Error(String),
}

/// What one message will be answered, once the batch it came in is stored.
enum Answer {
    Ready(Vec<u8>),
    /// The reading at this index of the batch: answered by how the write went.
    Stored {
        id: MeterId,
    },
}

pub(crate) async fn run(
    shared: &Shared,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    tracing::debug!(%peer, "tcp: meter connected");
    let mut state = ConnState {
        framer: Framer::new(shared.config.max_object_bytes),
        warned: HashSet::new(),
        peer,
    };
    let end = serve(shared, &mut stream, &mut state, &mut shutdown).await;
    let _ = tokio::time::timeout(shared.config.write_timeout, stream.shutdown()).await;
    match end {
        End::Error(e) => tracing::info!(%peer, error = %e, "tcp: meter connection failed"),
        End::Idle => tracing::info!(
            %peer,
            idle_s = shared.config.idle_timeout.as_secs(),
            "tcp: meter connection closed after silence"
        ),
        other => tracing::debug!(%peer, end = ?other, "tcp: meter disconnected"),
    }
}

struct ConnState {
    framer: Framer,
    /// Unknown ids already logged on this connection: a meter repeats its id every second.
    warned: HashSet<u64>,
    peer: SocketAddr,
}

async fn serve(
    shared: &Shared,
    stream: &mut TcpStream,
    state: &mut ConnState,
    shutdown: &mut watch::Receiver<bool>,
) -> End {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut frames: Vec<Frame> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        // Half an object waits only briefly for the rest; a quiet meter waits for the idle limit.
        let partial = state.framer.in_object();
        let wait = if partial {
            shared
                .config
                .partial_timeout
                .min(shared.config.idle_timeout)
        } else {
            shared.config.idle_timeout
        };
        let read = tokio::select! {
            r = tokio::time::timeout(wait, stream.read(&mut buf)) => r,
            _ = shutdown.wait_for(|stop| *stop) => return End::Shutdown,
        };
        frames.clear();
        match read {
            Err(_) if partial => match state.framer.abandon() {
                Some(e) => frames.push(Err(e)),
                None => continue,
            },
            Err(_) => return End::Idle,
            Ok(Ok(0)) => return End::Closed,
            Ok(Ok(n)) => state.framer.push(&buf[..n], &mut frames),
            Ok(Err(e)) => return End::Error(e.to_string()),
        }
        if frames.is_empty() {
            continue;
        }
        out.clear();
        let close = handle(shared, state, &mut frames, &mut out).await;
        if !out.is_empty() {
            match tokio::time::timeout(shared.config.write_timeout, stream.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return End::Error(e.to_string()),
                Err(_) => return End::Error("the meter does not read its answers".into()),
            }
        }
        if close {
            return End::Refused;
        }
        // A burst can leave a large answer buffer behind; idle connections should not keep it.
        if out.capacity() > 64 * 1024 {
            out = Vec::new();
        }
    }
}

/// Decodes the frames of one read, stores their readings with one write, and appends the
/// answers in order to `out`. Returns true when the connection must close (a handshake
/// with enrollment closed).
async fn handle(
    shared: &Shared,
    state: &mut ConnState,
    frames: &mut Vec<Frame>,
    out: &mut Vec<u8>,
) -> bool {
    let stats = &shared.stats;
    let engine = &shared.engine;
    let now = TsMs::now();
    let mut answers: Vec<Answer> = Vec::with_capacity(frames.len());
    let mut batch: Vec<Reading> = Vec::new();
    let mut close = false;
    for frame in frames.drain(..) {
        stats.messages.fetch_add(1, Relaxed);
        let message = frame.and_then(|bytes| parse_message(&bytes, &shared.limits));
        let answer = match message {
            Err(e) => refuse(shared, state, &e),
            Ok(Message::Hello) => match shared.directory.enroll(engine).await {
                Ok(device) => {
                    stats.enrolled.fetch_add(1, Relaxed);
                    tracing::info!(peer = %state.peer, device = %device.id, site = %device.site, "tcp: meter enrolled");
                    let n = device.id.as_str().trim_start_matches("tcp-");
                    Answer::Ready(n.as_bytes().to_vec())
                }
                Err(e) => {
                    stats.reject(e.code());
                    match &e {
                        TcpError::EnrollmentClosed => {
                            tracing::warn!(peer = %state.peer, "tcp: a meter asked for an id but no site has enrollment open; closing");
                        }
                        other => {
                            tracing::error!(peer = %state.peer, error = %other, "tcp: enrollment failed; closing")
                        }
                    }
                    // The meter takes any answer to its handshake as its id; closing makes it
                    // reconnect and ask again instead of sending readings under that "id".
                    close = true;
                    Answer::Ready(error_answer(e.code(), &e.to_string(), None))
                }
            },
            Ok(Message::Reading(r)) => match resolve(shared, state, r.meter).await {
                Err(answer) => answer,
                Ok(device) => {
                    let tz = engine.registry().device_zone(&device);
                    // The meter's previous reading (in this batch, else stored) places a wall
                    // time inside a DST fold.
                    let previous = batch
                        .iter()
                        .rev()
                        .find(|b| b.device == device)
                        .map(|b| b.ts)
                        .or_else(|| latest(shared, &device));
                    match r.resolve(&tz, previous, &shared.limits, now) {
                        Ok((ts, values)) => {
                            batch.push(Reading {
                                device,
                                channel: ChannelName::default_channel(),
                                ts,
                                values,
                            });
                            Answer::Stored { id: r.meter }
                        }
                        Err(e) => refuse(shared, state, &e),
                    }
                }
            },
        };
        answers.push(answer);
        if close {
            break;
        }
    }
    frames.clear();
    let stored = if batch.is_empty() {
        Ok(())
    } else {
        let n = batch.len() as u64;
        match engine.write(batch).await {
            Ok(_) => {
                stats.readings.fetch_add(n, Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::error!(peer = %state.peer, error = %e, readings = n, "tcp: readings not stored");
                Err(e)
            }
        }
    };
    for answer in answers {
        match answer {
            Answer::Ready(bytes) => out.extend_from_slice(&bytes),
            Answer::Stored { id } => match &stored {
                Ok(()) => {
                    out.extend_from_slice(b"{\"ok\":true,\"id\":\"");
                    out.extend_from_slice(id.to_string().as_bytes());
                    out.extend_from_slice(b"\"}\n");
                }
                Err(e) => {
                    stats.reject(e.code());
                    out.extend_from_slice(&error_answer(
                        e.code(),
                        &format!("not stored: {e}"),
                        Some(&id.to_string()),
                    ));
                }
            },
        }
    }
    close
}

/// The meter's device, or the answer refusing the reading.
async fn resolve(
    shared: &Shared,
    state: &mut ConnState,
    meter: MeterId,
) -> Result<DeviceId, Answer> {
    match shared.directory.resolve(&shared.engine, meter).await {
        Ok(Some(device)) => Ok(device),
        Ok(None) => {
            let e = TcpMeterError {
                code: "unknown_meter",
                message: format!(
                    "no meter has id {meter}: send {{\"id\": 0}} to get an id while a site's enrollment is open"
                ),
                id: Some(meter.to_string()),
            };
            Err(refuse(shared, state, &e))
        }
        Err(e) => {
            tracing::error!(peer = %state.peer, error = %e, "tcp: meter lookup failed");
            shared.stats.reject("storage_error");
            Err(Answer::Ready(error_answer(
                "storage_error",
                &format!("meter lookup failed: {e}"),
                Some(&meter.to_string()),
            )))
        }
    }
}

fn latest(shared: &Shared, device: &DeviceId) -> Option<TsMs> {
    let engine = &shared.engine;
    let series = engine
        .registry()
        .series(device, &ChannelName::default_channel())?;
    engine.latest_of(series).map(|p| p.ts)
}

/// Counts and logs a refusal and makes its answer. Unknown ids are logged once per connection:
/// a meter repeats its message every second.
fn refuse(shared: &Shared, state: &mut ConnState, e: &TcpMeterError) -> Answer {
    shared.stats.reject(e.code);
    shared.engine.metrics().reject(e.code, 1);
    let first = match (e.code, e.id.as_deref().and_then(|i| i.parse().ok())) {
        ("unknown_meter", Some(n)) => state.warned.len() < 64 && state.warned.insert(n),
        _ => true,
    };
    if first {
        tracing::warn!(peer = %state.peer, code = e.code, id = e.id.as_deref().unwrap_or(""), reason = %e.message, "tcp: message refused");
        // The same throttle as the log: a meter repeating an unknown id every second would
        // otherwise push every other rejection out of the dashboard's list.
        let actor = match e.id.as_deref() {
            Some(id) => format!("meter {id} at {}", state.peer),
            None => state.peer.to_string(),
        };
        shared
            .engine
            .rejections()
            .note("tcp", &actor, [(e.code, e.message.as_str())]);
    }
    Answer::Ready(error_answer(e.code, &e.message, e.id.as_deref()))
}

/// `{"error":{"code":…,"message":…},"id":…}` and a newline, as every Wattline error reads.
pub(crate) fn error_answer(code: &str, message: &str, id: Option<&str>) -> Vec<u8> {
    let mut v = serde_json::json!({"error": {"code": code, "message": message}});
    if let Some(id) = id {
        v["id"] = id.into();
    }
    let mut bytes = serde_json::to_vec(&v).expect("JSON of strings");
    bytes.push(b'\n');
    bytes
}
