//! HTTPS (given and self-signed certificates), security headers, and the ingest rate limit.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wattline_mqtt::tls::rustls;

use crate::support::{Options, Reply, TestServer, ADMIN};

/// A self-signed certificate for localhost and 127.0.0.1, written as PEM files in `dir`.
fn make_cert(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn tls_server(cert: &Path, key: &Path, env: &[(&str, &str)]) -> TestServer {
    TestServer::start_with(Options {
        args: vec![
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
}

fn addr(s: &TestServer) -> String {
    s.base
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("not an HTTPS server: {}", s.base))
        .to_owned()
}

/// One HTTPS request on a new connection, trusting only `root_pem`; `Err` when the TLS
/// handshake or the connection fails.
fn https(
    addr: &str,
    server_name: &str,
    root_pem: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Reply, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(root_pem) {
        roots.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {server_name}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    tls.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    if let Err(e) = tls.read_to_end(&mut raw) {
        // A peer closing without close_notify after a complete answer is fine here.
        if raw.is_empty() {
            return Err(e.to_string());
        }
    }
    Ok(parse_response(&raw))
}

fn pem_certs(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(|c| c.unwrap())
        .collect()
}

/// An HTTP/1.1 answer (with `connection: close`, so the body runs to the end).
fn parse_response(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Reply {
        status,
        body,
        headers,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// A plain HTTP/1.1 request on a raw socket; the raw answer, or what went wrong.
fn plain_http(addr: &str, request: &str) -> Result<Vec<u8>, String> {
    let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    tcp.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    match tcp.read_to_end(&mut raw) {
        Ok(_) => Ok(raw),
        Err(_) if !raw.is_empty() => Ok(raw),
        Err(e) => Err(e.to_string()),
    }
}

fn assert_security_headers(r: &Reply, tls: bool) {
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(
        r.header("strict-transport-security"),
        tls.then_some("max-age=31536000"),
        "HSTS over TLS only"
    );
}

/// Fingerprints the server logged (`sha256=…` of the HTTPS certificate line).
fn logged_fingerprints(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split("SHA-256 fingerprint ").nth(1))
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_hexdigit() || *c == ':')
                .collect()
        })
        .collect()
}

#[test]
fn https_with_a_given_certificate_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    // A low limit over TLS shows that handlers see the client address there too.
    let mut s = tls_server(&cert, &key, &[("WATTLINE_INGEST_RATE_LIMIT", "2")]);
    let a = addr(&s);

    let r = https(&a, "localhost", &cert, "GET", "/healthz", &[], "").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "ok");
    assert_security_headers(&r, true);
    let r = https(&a, "127.0.0.1", &cert, "GET", "/nowhere", &[], "").unwrap();
    assert_eq!(r.status, 404);
    assert_security_headers(&r, true);

    // A client that trusts another certificate refuses this server.
    let other = tempfile::tempdir().unwrap();
    let (other_cert, _) = make_cert(other.path());
    let err = https(&a, "localhost", &other_cert, "GET", "/healthz", &[], "").unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // Plain HTTP on the HTTPS port is told so, and hurts nobody.
    let raw = plain_http(&a, "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let plain = parse_response(&raw);
    assert_eq!(plain.status, 400);
    assert_eq!(plain.code(), "https_required");
    // Neither does a client that connects and never finishes its handshake, nor one that
    // sends garbage dressed as a TLS record.
    let stalled = TcpStream::connect(&a).unwrap();
    let mut garbage = TcpStream::connect(&a).unwrap();
    garbage
        .write_all(&[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5])
        .unwrap();
    let started = Instant::now();
    let r = https(&a, "localhost", &cert, "GET", "/healthz", &[], "").unwrap();
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(stalled);

    // The ingest limit keys on the client address over TLS as well: 2/s, bursts of 4.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = https(
            &a,
            "localhost",
            &cert,
            "POST",
            "/write",
            &[("authorization", &format!("Token {ADMIN}"))],
            "meter,device=nobody power=1",
        )
        .unwrap();
        statuses.push(r.status);
        if r.status == 429 {
            assert_eq!(r.code(), "rate_limited");
            assert!(r.header("retry-after").is_some());
            assert_security_headers(&r, true);
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");

    let fingerprints = logged_fingerprints(&s.log());
    assert_eq!(fingerprints.len(), 1, "{}", s.log());
    let der = &wattline_mqtt::tls::load_identity(&cert, &key)
        .unwrap()
        .certs[0];
    assert_eq!(fingerprints[0], sha256_colon_hex(der));

    // Graceful shutdown works on the TLS listener.
    assert!(s.terminate().success());
    assert!(s.log().contains("stopped cleanly"), "{}", s.log());
}

fn sha256_colon_hex(der: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn https_start_up_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wattline"))
            .arg("serve")
            .args(["--http", "127.0.0.1:0", "--mqtt", "off"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(args)
            .env("WATTLINE_ADMIN_TOKEN", ADMIN)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = dir.path().join("missing.pem");
    let err = run(&[
        "--tls-cert",
        &missing.display().to_string(),
        "--tls-key",
        &key.display().to_string(),
    ]);
    assert!(err.contains(&missing.display().to_string()), "{err}");
    let err = run(&["--tls-cert", &cert.display().to_string()]);
    assert!(err.contains("tls_key"), "{err}");
    // A key file that holds a certificate, not a key.
    let err = run(&[
        "--tls-cert",
        &cert.display().to_string(),
        "--tls-key",
        &cert.display().to_string(),
    ]);
    assert!(
        err.contains(&cert.display().to_string()) && err.contains("private key"),
        "{err}"
    );
}

#[test]
fn a_self_signed_certificate_is_made_once_and_reused() {
    let s = TestServer::start_with(Options {
        args: vec!["--tls-self-signed".into()],
        ..Default::default()
    });
    let cert = s.data_dir().join("tls/cert.pem");
    let key = s.data_dir().join("tls/key.pem");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
    }
    let der = wattline_mqtt::tls::load_identity(&cert, &key)
        .unwrap()
        .certs[0]
        .clone();
    let fingerprint = sha256_colon_hex(&der);
    assert_eq!(logged_fingerprints(&s.log()), vec![fingerprint.clone()]);
    // It verifies for every name it was made for.
    let a = addr(&s);
    for name in ["localhost", "127.0.0.1"] {
        let r = https(&a, name, &cert, "GET", "/healthz", &[], "").unwrap();
        assert_eq!(r.status, 200, "{name}");
    }
    // (::1 and the host name are checked by the unit test beside the generator.)
    let pem = std::fs::read_to_string(&cert).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

    let before = std::fs::read(&cert).unwrap();
    let s = s.restart();
    assert!(
        s.log()
            .contains("reusing the self-signed HTTPS certificate"),
        "{}",
        s.log()
    );
    assert_eq!(std::fs::read(&cert).unwrap(), before);
    assert_eq!(logged_fingerprints(&s.log()), vec![fingerprint]);
    let r = https(&addr(&s), "localhost", &cert, "GET", "/healthz", &[], "").unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn plain_http_carries_the_security_headers_without_hsts() {
    let s = TestServer::start();
    assert!(s.base.starts_with("http://"));
    let r = s.get("/healthz", None);
    assert_eq!(r.status, 200);
    assert_security_headers(&r, false);
    let r = s.get("/api/v1/devices", None);
    assert_eq!(r.status, 401);
    assert_security_headers(&r, false);
}

#[test]
fn the_ingest_rate_limit_answers_429_and_lets_the_address_back_in() {
    let s = TestServer::start_with(Options {
        env: vec![("WATTLINE_INGEST_RATE_LIMIT".into(), "5".into())],
        ..Default::default()
    });
    s.create_device("m1", None);
    let line = |i: i64| format!("meter,device=m1 power={i} {}", 1_700_000_000 + i);
    // 5/s with bursts of 10: a quick run of 30 writes gets refused part of the way.
    let mut refused = Vec::new();
    for i in 0..30 {
        let r = s.post_raw("/write?precision=s", Some(ADMIN), line(i));
        match r.status {
            204 => {}
            429 => refused.push(r),
            other => panic!("{other}: {}", r.body),
        }
    }
    assert!(refused.len() >= 10, "only {} refused", refused.len());
    let r = &refused[0];
    assert_eq!(r.code(), "rate_limited");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_security_headers(r, false);
    // The JSON and InfluxDB v2 routes share the address's bucket; other routes are not limited.
    let r = s.post_json(
        "/api/v1/readings",
        Some(ADMIN),
        &serde_json::json!({"device": "m1", "power": 1}),
    );
    assert_eq!(r.status, 429);
    assert_eq!(
        s.post_raw("/api/v2/write", Some(ADMIN), line(99)).status,
        429
    );
    for _ in 0..20 {
        assert_eq!(s.get("/healthz", None).status, 200);
    }

    let metrics = s.get("/metrics", Some(ADMIN)).body;
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wattline_http_rate_limited_total "))
        .expect("metric")
        .parse()
        .unwrap();
    assert_eq!(count, refused.len() as u64 + 2);
    assert!(s.wait_for_log("ingest rate limit exceeded"));
    assert_eq!(
        s.log().matches("ingest rate limit exceeded").count(),
        1,
        "logged once per address per 10 s"
    );

    // After the Retry-After wait the address may write again.
    std::thread::sleep(Duration::from_secs(retry) + Duration::from_millis(100));
    assert_eq!(
        s.post_raw("/write?precision=s", Some(ADMIN), line(100))
            .status,
        204
    );
}
