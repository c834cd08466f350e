//! HTTPS: the API behind rustls, served by the same `axum::serve` as plain HTTP.
//!
//! [`TlsListener`] does the handshakes in tasks of their own and hands finished TLS streams to
//! `axum::serve`, so graceful shutdown, connection handling and `ConnectInfo` behave exactly
//! as on the plain listener. A slow, failed or plain-HTTP handshake touches only its own
//! connection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::{Listener, ListenerExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::AppState;

/// A client that has not finished its handshake by then is dropped; as for mqtts.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more wait in the kernel's accept queue, so a crowd of
/// half-open connections cannot take unbounded memory.
const MAX_HANDSHAKES: usize = 1024;
/// The first byte of every TLS connection (a handshake record); anything else is not TLS.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Serves the API over HTTPS on `listener` until `shutdown` completes, then finishes
/// in-flight requests, like [`crate::serve`].
pub async fn serve_tls(
    listener: TcpListener,
    tls: ServerConfig,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shutdown = crate::close_live_on(shutdown, &state);
    serve_router_tls(
        listener,
        tls,
        crate::security::apply(crate::router(state), true),
        shutdown,
    )
    .await
}

/// [`serve_tls`] for any router (tests use their own).
pub async fn serve_router_tls(
    listener: TcpListener,
    mut tls: ServerConfig,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Only HTTP/1.1 is built in; saying so lets a client that offers h2 settle at once.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener = TlsListener::new(listener, TlsAcceptor::from(Arc::new(tls)))?;
    // axum implements `Connected` for the peer address of wrapped (`tap_io`) listeners only;
    // the no-op tap is what gives handlers `ConnectInfo<SocketAddr>` here as on plain HTTP.
    let listener = listener.tap_io(|_| {});
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// A listener that yields connections whose TLS handshake is done.
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    /// Accepts and handshakes; aborted (closing the socket) when `axum::serve` drops us at
    /// shutdown, so a stopping server refuses new connections as a plain one does.
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_loop(listener, acceptor, tx));
        Ok(TlsListener {
            local_addr,
            ready,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop ends only when aborted, that is after we are dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    // Owning the handshake tasks here means aborting this task aborts them all.
    let mut handshakes = JoinSet::new();
    loop {
        while handshakes.len() >= MAX_HANDSHAKES {
            handshakes.join_next().await;
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let acceptor = acceptor.clone();
                    let ready = ready.clone();
                    handshakes.spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, &acceptor)).await {
                            Ok(Ok(Some(tls))) => {
                                let _ = ready.send((tls, peer)).await;
                            }
                            Ok(Ok(None)) => {
                                tracing::debug!(%peer, "plain HTTP on the HTTPS port; answered 400");
                            }
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: the error repeats at once, so
                    // wait a little rather than spin (what axum's own listener does).
                    if !is_connection_error(&e) {
                        tracing::error!(error = %e, "accepting an HTTPS connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            },
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
        }
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// The TLS handshake, or `None` when the client spoke plain HTTP and was told to use HTTPS.
async fn handshake(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
) -> std::io::Result<Option<TlsStream<TcpStream>>> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    if n == 1 && first[0] != TLS_HANDSHAKE_RECORD {
        refuse_plain_http(tcp).await?;
        return Ok(None);
    }
    acceptor.accept(tcp).await.map(Some)
}

/// Someone typed `http://` for an `https://` server: a readable answer beats a reset
/// connection. The error body has the API's usual shape.
async fn refuse_plain_http(mut tcp: TcpStream) -> std::io::Result<()> {
    let body = r#"{"error":{"code":"https_required","message":"this port speaks HTTPS only; use https://"}}"#;
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body.as_bytes()).await?;
    tcp.shutdown().await?;
    // Closing with the request still unread would make the kernel send a reset, which can
    // reach the client before our answer; read what it sent (bounded) first.
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        match tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ConnectInfo;
    use axum::routing::get;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    fn identity() -> (CertificateDer<'static>, ServerConfig) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        (der, config)
    }

    async fn https_get(
        addr: SocketAddr,
        root: &CertificateDer<'static>,
        path: &str,
    ) -> std::io::Result<(SocketAddr, String)> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await?;
        let local = tcp.local_addr()?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        Ok((local, String::from_utf8_lossy(&answer).into_owned()))
    }

    #[tokio::test]
    async fn shutdown_finishes_in_flight_requests_and_handlers_see_the_peer() {
        let (root, config) = identity();
        let router = axum::Router::new().route(
            "/slow",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                format!("peer={peer}")
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_router_tls(listener, config, router, async {
            let _ = stopped.await;
        }));

        // A connection that never says anything does not hold up the others.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let request = tokio::spawn({
            let root = root.clone();
            async move { https_get(addr, &root, "/slow").await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.send(()).unwrap();
        let (local, answer) = request.await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&format!("peer={local}")), "{answer}");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server stops once the request is answered")
            .unwrap()
            .unwrap();
        assert!(
            https_get(addr, &root, "/slow").await.is_err(),
            "no connections after shutdown"
        );
    }
}
