//! HTTP: one keep-alive HTTP/1.1 connection per group (hyper's client connection, no pool),
//! used for the readings and for the admin API when registering.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Method;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Delivery, Sink, SinkError};
use crate::commlog::CommLog;
use crate::encode::{json_readings, line_protocol, Protocol};
use crate::record::Record;

/// Longest wait for an answer: Wattline holds writers up to 30 s when storage is behind.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One HTTP/1.1 connection, reopened when it breaks.
pub struct HttpConn {
    addr: String,
    sender: Option<SendRequest<Full<Bytes>>>,
    comm: CommLog,
    who: String,
}

impl HttpConn {
    /// `base`: `http://host:port` (no TLS: the simulator talks to loopback servers).
    pub fn new(base: &str, comm: CommLog, who: String) -> Result<HttpConn, SinkError> {
        let rest = base.strip_prefix("http://").ok_or_else(|| {
            SinkError::Protocol(format!("{base:?}: only http:// URLs are supported"))
        })?;
        let host = rest.trim_end_matches('/');
        if host.contains('/') {
            return Err(SinkError::Protocol(format!("{base:?}: no path expected")));
        }
        let addr = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_owned()
        } else {
            format!("{host}:80")
        };
        Ok(HttpConn {
            addr,
            sender: None,
            comm,
            who,
        })
    }

    async fn connect(&mut self) -> Result<SendRequest<Full<Bytes>>, SinkError> {
        let fail = |reason: String| SinkError::Connect {
            addr: self.addr.clone(),
            reason,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| fail("timed out".into()))?
            .map_err(|e| fail(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(e.to_string()))?;
        // The connection future does the I/O; it ends when the connection closes.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.comm
            .log(&self.who, format_args!("connected to http://{}", self.addr));
        Ok(sender)
    }

    /// One request; a transport failure closes the connection (the next request reopens it).
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Bytes,
    ) -> Result<Reply, SinkError> {
        // A kept-alive connection the server closed while idle fails at once: then one fresh
        // connection is tried before reporting an error.
        let reused = self.sender.is_some();
        match self
            .try_request(method.clone(), path, token, content_type, body.clone())
            .await
        {
            Err(SinkError::Transport(_)) if reused => {
                self.try_request(method, path, token, content_type, body)
                    .await
            }
            other => other,
        }
    }

    async fn try_request(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Bytes,
    ) -> Result<Reply, SinkError> {
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.addr)
            .header(hyper::header::CONTENT_TYPE, content_type);
        if let Some(t) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Token {t}"));
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| SinkError::Protocol(e.to_string()))?;
        let exchange = async {
            sender
                .ready()
                .await
                .map_err(|e| SinkError::Transport(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| SinkError::Transport(e.to_string()))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| SinkError::Transport(e.to_string()))?
                .to_bytes();
            Ok::<_, SinkError>(Reply {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| SinkError::Timeout(REQUEST_TIMEOUT))??;
        self.sender = Some(sender);
        Ok(reply)
    }

    pub async fn get(&mut self, path: &str, token: Option<&str>) -> Result<Reply, SinkError> {
        self.request(Method::GET, path, token, "application/json", Bytes::new())
            .await
    }

    pub async fn post_json(
        &mut self,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<Reply, SinkError> {
        let body = Bytes::from(body.to_string());
        self.request(Method::POST, path, token, "application/json", body)
            .await
    }

    pub async fn put_json(
        &mut self,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<Reply, SinkError> {
        let body = Bytes::from(body.to_string());
        self.request(Method::PUT, path, token, "application/json", body)
            .await
    }
}

/// `POST /api/v1/readings` (JSON) or `POST /write?precision=ms` (line protocol).
pub struct HttpSink {
    conn: HttpConn,
    protocol: Protocol,
    token: String,
    prefix: String,
}

impl HttpSink {
    pub fn new(conn: HttpConn, protocol: Protocol, token: String, prefix: String) -> HttpSink {
        debug_assert!(matches!(protocol, Protocol::HttpJson | Protocol::HttpLp));
        HttpSink {
            conn,
            protocol,
            token,
            prefix,
        }
    }
}

impl Sink for HttpSink {
    #[allow(clippy::manual_async_fn)]
    fn send<'a>(
        &'a mut self,
        batch: &'a [Record],
        acked: &'a mut [bool],
    ) -> impl std::future::Future<Output = Result<Delivery, SinkError>> + Send + 'a {
        async move {
            let todo: Vec<&Record> = batch
                .iter()
                .zip(acked.iter())
                .filter(|(_, a)| !**a)
                .map(|(r, _)| r)
                .collect();
            if todo.is_empty() {
                return Ok(Delivery::default());
            }
            let (path, ctype, body) = match self.protocol {
                Protocol::HttpLp => (
                    "/write?precision=ms",
                    "text/plain; charset=utf-8",
                    line_protocol(&todo, &self.prefix),
                ),
                _ => (
                    "/api/v1/readings",
                    "application/json",
                    json_readings(&todo, &self.prefix, true),
                ),
            };
            let reply = self
                .conn
                .request(Method::POST, path, Some(&self.token), ctype, body.into())
                .await?;
            match reply.status {
                200..=299 => {
                    acked.fill(true);
                    Ok(Delivery::default())
                }
                // The batch was decoded and every good reading stored; the refused ones
                // (with `error.rejected`) would be refused again.
                400..=499 if reply.json()["error"]["rejected"].is_u64() => {
                    acked.fill(true);
                    Ok(Delivery {
                        rejected: reply.json()["error"]["rejected"].as_u64().unwrap_or(0),
                    })
                }
                status => Err(SinkError::Status {
                    status,
                    body: reply.body.chars().take(300).collect(),
                }),
            }
        }
    }
}
