//! The socket meter: unframed JSON over TCP, strict request/response, one connection per
//! device.
//!
//! A meter asks for its id once (`{"id": 0}`, answered with bare digits) when it is enrolled
//! (see `register.rs`) and keeps it: Wattline accepts an enrolled id on any later connection
//! without a new handshake, so a reconnecting meter goes on as the same device instead of
//! being enrolled again. Then each reading is one object written with one write, and the meter
//! waits for its answer (`{"ok":true,…}` once durable, or an error object, each ending in a
//! newline) before sending the next, as the prototype does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{Delivery, Sink, SinkError};
use crate::commlog::CommLog;
use crate::encode::tcp_spent;
use crate::record::{device_name, Record};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for one answer (Wattline answers once the reading is durable).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Error codes worth retrying: the server could not store or find the meter *now*.
const RETRYABLE: [&str; 5] = [
    "storage_error",
    "overloaded",
    "unknown_meter",
    "too_many_connections",
    "incomplete",
];

#[derive(Debug, Clone)]
pub struct TcpConfig {
    pub addr: String,
    pub tz: jiff::tz::TimeZone,
    /// Device index -> the id Wattline assigned at enrollment.
    pub ids: Arc<HashMap<u32, String>>,
}

/// Asks for an id (`{"id": 0}`) and returns the digits Wattline answers.
pub async fn enroll(addr: &str) -> Result<String, SinkError> {
    let mut stream = connect(addr).await?;
    stream
        .write_all(br#"{"id": 0}"#)
        .await
        .map_err(|e| SinkError::Transport(e.to_string()))?;
    // The answer has no terminator: it is whatever one read brings (the server writes it
    // with one write).
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(ANSWER_TIMEOUT, stream.read(&mut buf))
        .await
        .map_err(|_| SinkError::Timeout(ANSWER_TIMEOUT))?
        .map_err(|e| SinkError::Transport(e.to_string()))?;
    let answer = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
    if !answer.is_empty() && answer.bytes().all(|b| b.is_ascii_digit()) {
        Ok(answer)
    } else {
        Err(SinkError::Protocol(format!(
            "enrollment refused: {}",
            if answer.is_empty() {
                "connection closed"
            } else {
                &answer
            }
        )))
    }
}

async fn connect(addr: &str) -> Result<TcpStream, SinkError> {
    let fail = |reason: String| SinkError::Connect {
        addr: addr.to_owned(),
        reason,
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| fail("timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

pub struct TcpSink {
    cfg: TcpConfig,
    prefix: String,
    conns: HashMap<u32, BufReader<TcpStream>>,
    comm: CommLog,
    who: String,
}

impl TcpSink {
    pub fn new(cfg: TcpConfig, prefix: String, comm: CommLog, who: String) -> TcpSink {
        TcpSink {
            cfg,
            prefix,
            conns: HashMap::new(),
            comm,
            who,
        }
    }
}

/// What one device's messages came to.
struct Outcome {
    /// Per message: acknowledged (stored or refused for good).
    done: Vec<bool>,
    rejected: u64,
    error: Option<SinkError>,
}

async fn send_device(conn: &mut BufReader<TcpStream>, messages: &[String]) -> Outcome {
    let mut out = Outcome {
        done: vec![false; messages.len()],
        rejected: 0,
        error: None,
    };
    let mut line = String::new();
    for (i, m) in messages.iter().enumerate() {
        if let Err(e) = conn.get_mut().write_all(m.as_bytes()).await {
            out.error = Some(SinkError::Transport(e.to_string()));
            return out;
        }
        line.clear();
        match tokio::time::timeout(ANSWER_TIMEOUT, conn.read_line(&mut line)).await {
            Err(_) => {
                out.error = Some(SinkError::Timeout(ANSWER_TIMEOUT));
                return out;
            }
            Ok(Err(e)) => {
                out.error = Some(SinkError::Transport(e.to_string()));
                return out;
            }
            Ok(Ok(0)) => {
                out.error = Some(SinkError::Transport("connection closed".into()));
                return out;
            }
            Ok(Ok(_)) => {}
        }
        let answer: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
        if answer["ok"] == true {
            out.done[i] = true;
            continue;
        }
        let code = answer["error"]["code"]
            .as_str()
            .unwrap_or("unreadable answer");
        if RETRYABLE.contains(&code) || answer.is_null() {
            out.error = Some(SinkError::Protocol(format!("answer {}", line.trim())));
            return out;
        }
        // Refused for what it says (out of range, bad time): sending it again cannot help.
        out.done[i] = true;
        out.rejected += 1;
    }
    out
}

impl Sink for TcpSink {
    #[allow(clippy::manual_async_fn)]
    fn send<'a>(
        &'a mut self,
        batch: &'a [Record],
        acked: &'a mut [bool],
    ) -> impl std::future::Future<Output = Result<Delivery, SinkError>> + Send + 'a {
        async move {
            let per_device = super::unacked_per_device(batch, acked);
            let mut jobs = Vec::with_capacity(per_device.len());
            for (device, idx) in per_device {
                let Some(id) = self.cfg.ids.get(&device) else {
                    return Err(SinkError::Protocol(format!(
                        "{} has no socket-meter id (not enrolled)",
                        device_name(&self.prefix, device)
                    )));
                };
                let messages: Vec<String> = idx
                    .iter()
                    .map(|&i| tcp_spent(id, &batch[i], &self.cfg.tz))
                    .collect();
                let conn = self.conns.remove(&device);
                let addr = self.cfg.addr.clone();
                let comm = self.comm.clone();
                let who = format!("{} {}", self.who, device_name(&self.prefix, device));
                jobs.push(async move {
                    let mut conn = match conn {
                        Some(c) => c,
                        None => match connect(&addr).await {
                            Ok(s) => {
                                comm.log(&who, format_args!("connected to tcp://{addr}"));
                                BufReader::new(s)
                            }
                            Err(e) => {
                                let out = Outcome {
                                    done: vec![false; idx.len()],
                                    rejected: 0,
                                    error: Some(e),
                                };
                                return (device, None, idx, out);
                            }
                        },
                    };
                    let out = send_device(&mut conn, &messages).await;
                    let conn = out.error.is_none().then_some(conn);
                    (device, conn, idx, out)
                });
            }
            let mut delivery = Delivery::default();
            let mut first_error = None;
            for (device, conn, idx, out) in futures::future::join_all(jobs).await {
                for (&i, done) in idx.iter().zip(&out.done) {
                    acked[i] |= *done;
                }
                delivery.rejected += out.rejected;
                if let Some(c) = conn {
                    self.conns.insert(device, c);
                }
                if let Some(e) = out.error {
                    first_error.get_or_insert(e);
                }
            }
            match first_error {
                Some(e) => Err(e),
                None => Ok(delivery),
            }
        }
    }

    #[allow(clippy::manual_async_fn)]
    fn close(&mut self) -> impl std::future::Future<Output = ()> + Send + '_ {
        async move {
            // The meter closes its socket when its user quits.
            for (_, mut c) in self.conns.drain() {
                let _ = c.get_mut().shutdown().await;
            }
        }
    }
}
