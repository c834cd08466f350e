//! A real `wattline serve` process on a free port with its own data directory, and a small
//! HTTP client for it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ADMIN: &str = "test-admin-token-0123456789";

/// The PostgreSQL server tests use: `WATTLINE_TEST_PG` or the local one.
pub fn pg_base_url() -> String {
    std::env::var("WATTLINE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh PostgreSQL database for one test, or `None` (with a loud message) when no server
/// answers outside CI. In CI a missing server fails the test.
pub fn fresh_pg_database(tag: &str) -> Option<String> {
    let base = pg_base_url();
    let name = format!(
        "wl_it_{tag}_{}_{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() % 1_000_000
    );
    let out = Command::new("psql")
        .args([
            &format!("{base}/postgres"),
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            &format!("CREATE DATABASE {name}"),
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => Some(format!("{base}/{name}")),
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            if std::env::var("CI").is_ok() {
                panic!("PostgreSQL at {base} is needed in CI and could not be used: {why}");
            }
            eprintln!("\n!!! SKIPPING PostgreSQL test: {base} unavailable ({why}) !!!\n");
            None
        }
    }
}

pub fn drop_pg_database(url: &str) {
    let (base, name) = url.rsplit_once('/').expect("url with database");
    let _ = Command::new("psql")
        .args([
            &format!("{base}/postgres"),
            "-qc",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        ])
        .output();
}

#[derive(Default, Clone)]
pub struct Options {
    pub database: Option<String>,
    pub env: Vec<(String, String)>,
    /// Extra `serve` arguments (e.g. `--mqtt-broker URL`); the built-in broker listens on a
    /// free loopback port unless these say otherwise.
    pub args: Vec<String>,
}

pub struct TestServer {
    child: Option<Child>,
    /// `http://127.0.0.1:port`, or `https://…` when TLS is on (the request helpers below speak
    /// plain HTTP only; tls.rs has an HTTPS client).
    pub base: String,
    /// `127.0.0.1:port` of the built-in MQTT broker, when it runs.
    pub mqtt: Option<String>,
    /// `127.0.0.1:port` of the TCP socket-meter listener, when `--tcp` started it.
    pub tcp: Option<String>,
    pub data_dir: PathBuf,
    pub options: Options,
    log: Arc<Mutex<String>>,
    /// Reads the server's stderr into `log`; joined once the process is gone.
    log_reader: Option<std::thread::JoinHandle<()>>,
    _tmp: Arc<tempfile::TempDir>,
    agent: ureq::Agent,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> TestServer {
        let tmp = Arc::new(tempfile::tempdir().expect("temp dir"));
        let data_dir = tmp.path().join("data");
        Self::launch(options, data_dir, tmp)
    }

    fn launch(options: Options, data_dir: PathBuf, tmp: Arc<tempfile::TempDir>) -> TestServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wattline"));
        cmd.arg("serve");
        // Fixed ports (`--http` in the options) let a restarted server be found where clients
        // (the simulator) keep reconnecting.
        if !options.args.iter().any(|a| a == "--http") {
            cmd.args(["--http", "127.0.0.1:0"]);
        }
        cmd.arg("--data-dir")
            .arg(&data_dir)
            .env("WATTLINE_ADMIN_TOKEN", ADMIN)
            .env("WATTLINE_ROLLUP_FLUSH_MS", "300")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(db) = &options.database {
            cmd.args(["--database", db]);
        }
        if !options
            .args
            .iter()
            .any(|a| a == "--mqtt" || a == "--mqtt-broker")
        {
            cmd.args(["--mqtt", "127.0.0.1:0"]);
        }
        cmd.args(&options.args);
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start wattline");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        let log_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for scheme in ["mqtt", "tcp", "http", "https"] {
                    if let Some(rest) = line.split(&format!("listening on {scheme}://")).nth(1) {
                        // Text or JSON logs: the address ends where host:port characters end.
                        let addr: String = rest
                            .chars()
                            .take_while(|c| {
                                c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']')
                            })
                            .collect();
                        let _ = tx.send((scheme, addr));
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        // The broker is announced before the HTTP API, which comes last.
        let mut mqtt = None;
        let mut tcp = None;
        let base = loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok((scheme @ ("http" | "https"), a)) => break format!("{scheme}://{a}"),
                Ok(("tcp", a)) => tcp = Some(a),
                Ok((_, a)) => mqtt = Some(a),
                Err(_) => {
                    let _ = child.kill();
                    panic!("wattline did not start; log:\n{}", log.lock().unwrap());
                }
            }
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        TestServer {
            child: Some(child),
            base,
            mqtt,
            tcp,
            data_dir,
            options,
            log,
            log_reader: Some(log_reader),
            _tmp: tmp,
            agent,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits up to 5 s for a log line containing `needle` (stderr is read by another thread).
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn join_log_reader(&mut self) {
        if let Some(h) = self.log_reader.take() {
            let _ = h.join();
        }
    }

    /// `kill -9`: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            let _ = c.wait();
        }
        self.join_log_reader();
    }

    /// SIGTERM and wait for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running server");
        let status = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                self.join_log_reader();
                return s;
            }
            if Instant::now() > deadline {
                // Do not leave it running for the rest of the suite.
                let _ = c.kill();
                let _ = c.wait();
                panic!("server did not stop after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a new process on the same data directory (and database).
    pub fn restart(self) -> TestServer {
        let mut me = self;
        if me.child.is_some() {
            me.terminate();
        }
        let (options, data_dir, tmp) = (me.options.clone(), me.data_dir.clone(), me._tmp.clone());
        drop(me);
        Self::launch(options, data_dir, tmp)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Reply {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Token {t}"));
        let result = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            ("DELETE", _) => {
                let mut r = self.agent.delete(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            (m, body) => {
                let mut r = match m {
                    "POST" => self.agent.post(&url),
                    "PATCH" => self.agent.patch(&url),
                    "PUT" => self.agent.put(&url),
                    other => panic!("method {other}"),
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                match body {
                    Some((ctype, bytes)) => r.header("Content-Type", ctype).send(&bytes[..]),
                    None => r.send_empty(),
                }
            }
        };
        let mut resp = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let headers = header_list(resp.headers());
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .unwrap_or_default();
        Reply {
            status,
            body,
            headers,
        }
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send("GET", path, token, None)
    }

    pub fn delete(&self, path: &str, token: Option<&str>) -> Reply {
        self.send("DELETE", path, token, None)
    }

    pub fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        self.send(
            "POST",
            path,
            token,
            Some(("application/json", body.to_string().into_bytes())),
        )
    }

    pub fn patch_json(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        self.send(
            "PATCH",
            path,
            token,
            Some(("application/json", body.to_string().into_bytes())),
        )
    }

    pub fn put_json(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        self.send(
            "PUT",
            path,
            token,
            Some(("application/json", body.to_string().into_bytes())),
        )
    }

    pub fn post_raw(&self, path: &str, token: Option<&str>, body: impl Into<Vec<u8>>) -> Reply {
        self.send("POST", path, token, Some(("text/plain", body.into())))
    }

    /// Any method with any headers; the answer keeps its headers.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Reply {
        let builder = request_builder(method, format!("{}{path}", self.base));
        let mut builder = builder;
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        if let Some((ctype, _)) = &body {
            builder = builder.header("Content-Type", *ctype);
        }
        let request = builder
            .body(body.map(|(_, b)| b).unwrap_or_default())
            .expect("request");
        let mut resp = self
            .agent
            .run(request)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let headers = header_list(resp.headers());
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        Reply {
            status,
            body,
            headers,
        }
    }

    pub fn post_with_headers(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
        let mut r = self.agent.post(format!("{}{path}", self.base));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let mut resp = r.send(&body[..]).expect("post");
        let status = resp.status().as_u16();
        let headers = header_list(resp.headers());
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        Reply {
            status,
            body,
            headers,
        }
    }

    // ---- conveniences

    pub fn create_site(&self, id: &str, tz: &str) {
        let r = self.post_json(
            "/api/v1/sites",
            Some(ADMIN),
            &serde_json::json!({"id": id, "name": id, "timezone": tz}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }

    /// Creates a device and returns its token.
    pub fn create_device(&self, id: &str, site: Option<&str>) -> String {
        let mut body = serde_json::json!({"id": id, "name": format!("device {id}")});
        if let Some(s) = site {
            body["site"] = s.into();
        }
        let r = self.post_json("/api/v1/devices", Some(ADMIN), &body);
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["token"].as_str().expect("token").to_owned()
    }

    /// Writes line protocol (seconds precision) with the admin token; asserts 204.
    pub fn write_lp(&self, lines: &str) {
        let r = self.post_raw("/write?precision=s", Some(ADMIN), lines);
        assert_eq!(r.status, 204, "{}", r.body);
    }

    pub fn stats(&self, device: &str, from: i64, to: i64) -> Value {
        let r = self.get(
            &format!("/api/v1/devices/{device}/stats?from={from}&to={to}"),
            Some(ADMIN),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// Raw readings of a device's main channel as CSV rows (header dropped).
    pub fn export_rows(&self, device: &str, from: i64, to: i64) -> Vec<String> {
        let r = self.get(
            &format!("/api/v1/export?device={device}&from={from}&to={to}"),
            Some(ADMIN),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.body.lines().skip(1).map(str::to_owned).collect()
    }

    /// Waits for pending rollups to reach storage (the flush interval is 300 ms in tests).
    pub fn settle(&self) {
        std::thread::sleep(Duration::from_millis(800));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- wattline log ----\n{}", self.log());
        }
    }
}

fn header_list(headers: &ureq::http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// A loopback port free right now (bind to port 0, read it, release it), for servers that must
/// come back on the same port after a restart.
fn request_builder(method: &str, url: String) -> ureq::http::request::Builder {
    ureq::http::Request::builder().method(method).uri(url)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Unix seconds of an RFC 3339 instant.
pub fn secs(rfc3339: &str) -> i64 {
    rfc3339
        .parse::<jiff::Timestamp>()
        .expect("timestamp")
        .as_second()
}

/// Unix milliseconds of an RFC 3339 instant.
pub fn ms(rfc3339: &str) -> i64 {
    secs(rfc3339) * 1000
}

pub fn now_s() -> i64 {
    jiff::Timestamp::now().as_second()
}

pub fn approx(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

/// A streaming answer (Server-Sent Events) read over a raw connection, line by line, each
/// read bounded by a deadline: an HTTP client that reads whole bodies would wait forever.
pub struct EventStream {
    pub status: u16,
    reader: BufReader<std::net::TcpStream>,
    closed: bool,
}

impl TestServer {
    /// Sends a GET and reads the status line and headers; the body is left to `next_event`.
    pub fn open_stream(&self, path: &str, headers: &[(&str, &str)]) -> EventStream {
        use std::io::Write as _;
        let addr = self.base.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        conn.write_all(req.as_bytes()).expect("send");
        let mut reader = BufReader::new(conn);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut head = Vec::new();
        while !head.ends_with(&[String::new()]) {
            assert!(Instant::now() < deadline, "no answer head for {path}");
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => head.push(line.trim_end().to_owned()),
                Err(_) => continue,
            }
        }
        let status = head
            .first()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {head:?}"));
        EventStream {
            status,
            reader,
            closed: false,
        }
    }
}

impl EventStream {
    /// Whether the server has closed the stream (the body ended or the connection closed).
    pub fn ended(&mut self) -> bool {
        let _ = self.next_event(Duration::from_millis(300));
        self.closed
    }

    /// The next event's (name, data) within `within`; `None` if none came or the stream ended.
    /// Keep-alive comments and chunk framing lines are skipped.
    pub fn next_event(&mut self, within: Duration) -> Option<(String, String)> {
        let deadline = Instant::now() + within;
        let (mut name, mut data) = (None, None);
        while Instant::now() < deadline {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => {
                    self.closed = true;
                    return None;
                }
                Ok(_) => {}
                Err(_) => continue,
            }
            let line = line.trim_end();
            // A chunked body ends with a zero-length chunk; the connection may stay open.
            if line == "0" {
                self.closed = true;
                return None;
            }
            if let Some(n) = line.strip_prefix("event:") {
                name = Some(n.trim().to_owned());
            } else if let Some(d) = line.strip_prefix("data:") {
                data = Some(d.trim().to_owned());
            }
            if let (Some(n), Some(d)) = (&name, &data) {
                return Some((n.clone(), d.clone()));
            }
        }
        None
    }
}
