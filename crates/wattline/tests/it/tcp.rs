//! Raw TCP socket meters (`--tcp`): the recorded meter session byte for byte, framing,
//! refusals, enrollment, a thousand meters at once, and durability across `kill -9`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::both_backends;
use crate::support::*;

both_backends!(
    the_recorded_meter_session_replays_byte_for_byte_in_the_sites_zone,
    a_reading_answered_before_kill_9_survives_the_restart,
);

fn tcp_server() -> TestServer {
    tcp_server_with(Options::default())
}

fn tcp_server_with(mut opts: Options) -> TestServer {
    opts.args.extend(["--tcp".into(), "127.0.0.1:0".into()]);
    TestServer::start_with(opts)
}

fn open_enrollment(s: &TestServer, site: &str, open: bool) {
    let r = s.put_json(
        &format!("/api/v1/sites/{site}/tcp-enrollment"),
        Some(ADMIN),
        &json!({ "open": open }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"site": site, "open": open}));
}

fn connect(s: &TestServer) -> TcpStream {
    let c = TcpStream::connect(s.tcp.as_deref().expect("tcp listener")).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

/// One read: a meter takes whatever one `recv` returns as the answer.
fn read_answer(c: &mut TcpStream) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).unwrap_or(0);
    buf[..n].to_vec()
}

/// Reads until `n` newline-terminated answers are in.
fn read_lines(c: &mut TcpStream, n: usize) -> Vec<String> {
    let mut text = Vec::new();
    while text.iter().filter(|b| **b == b'\n').count() < n {
        let a = read_answer(c);
        assert!(
            !a.is_empty(),
            "closed after {:?}",
            String::from_utf8_lossy(&text)
        );
        text.extend_from_slice(&a);
    }
    String::from_utf8(text)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A Python bytes literal as the capture prints it: `b'…'` or `b"…"`, with `\\`, `\'`, `\"`,
/// `\n`, `\r`, `\t` and `\xNN` escapes.
fn python_bytes(lit: &str) -> Vec<u8> {
    let lit = lit.trim();
    let quote = lit.as_bytes()[1];
    assert!(
        lit.starts_with('b') && (quote == b'\'' || quote == b'"'),
        "{lit}"
    );
    let body = &lit.as_bytes()[2..lit.len() - 1];
    assert_eq!(lit.as_bytes()[lit.len() - 1], quote, "{lit}");
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\\' {
            let e = body[i + 1];
            match e {
                b'x' => {
                    let hex = std::str::from_utf8(&body[i + 2..i + 4]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 4;
                    continue;
                }
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                other => out.push(other),
            }
            i += 2;
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}

/// The recorded session: (RECV payloads, SENT payloads) in order.
fn transcript() -> Vec<(String, Vec<u8>)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/seed-tcp-meter/transcript.txt"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (dir, lit) = l.split_once(' ').expect("DIRECTION payload");
            (dir.to_owned(), python_bytes(lit))
        })
        .collect()
}

/// CSV export rows of a device as (UTC timestamp, energy kWh).
fn energy_rows(s: &TestServer, device: &str, from: i64, to: i64) -> Vec<(String, f64)> {
    let r = s.get(
        &format!("/api/v1/export?device={device}&from={from}&to={to}"),
        Some(ADMIN),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let mut lines = r.body.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "energy").unwrap();
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[2].to_owned(), f[col].parse().unwrap())
        })
        .collect()
}

fn metric(s: &TestServer, line_start: &str) -> Option<u64> {
    let m = s.get("/metrics", Some(ADMIN)).body;
    m.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

fn the_recorded_meter_session_replays_byte_for_byte_in_the_sites_zone(opts: Options) {
    let s = tcp_server_with(opts);
    // Zurich is UTC+1 in November: the meter's 07:01:16 is 06:01:16Z.
    s.create_site("city", "Europe/Zurich");
    open_enrollment(&s, "city", true);
    let mut c = connect(&s);
    let session = transcript();
    let sent: Vec<&Vec<u8>> = session
        .iter()
        .filter(|(d, _)| d == "RECV")
        .map(|(_, b)| b)
        .collect();
    assert_eq!(
        sent.len(),
        4,
        "the fixture has a handshake and three readings"
    );
    for (i, payload) in sent.iter().enumerate() {
        c.write_all(payload).unwrap();
        let answer = read_answer(&mut c);
        assert!(!answer.is_empty(), "message {i} got no answer");
        if i == 0 {
            // The meter takes these bytes verbatim as its id: digits only, no newline.
            assert!(
                answer.iter().all(u8::is_ascii_digit),
                "handshake answer {:?}",
                String::from_utf8_lossy(&answer)
            );
            assert_eq!(answer, b"1", "the id the recorded readings carry");
        } else {
            let a: serde_json::Value = serde_json::from_slice(&answer).unwrap();
            assert_eq!(a, json!({"ok": true, "id": "1"}));
        }
    }
    let device = s.get("/api/v1/devices/tcp-1", Some(ADMIN)).json();
    assert_eq!(device["site"], "city", "{device}");
    assert_eq!(device["labels"]["enrolled"], "tcp", "{device}");
    assert_eq!(device["name"], "Socket meter 1", "{device}");
    let rows = energy_rows(
        &s,
        "tcp-1",
        ms("2026-11-22T00:00:00Z"),
        ms("2026-11-23T00:00:00Z"),
    );
    assert_eq!(
        rows,
        vec![
            ("2026-11-22T06:01:16Z".to_owned(), 1.0),
            ("2026-11-22T06:01:17Z".to_owned(), 2.0),
            ("2026-11-22T06:01:18Z".to_owned(), 7.0),
        ]
    );
    assert_eq!(metric(&s, "wattline_tcp_readings_total "), Some(3));
    assert_eq!(metric(&s, "wattline_tcp_enrolled_total "), Some(1));
}

fn reading(id: &str, kwh: f64, utc_s: i64) -> String {
    // The site below is in UTC, so the wall time is the UTC time.
    let dt = jiff::Timestamp::from_second(utc_s)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .datetime()
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    format!(r#"{{"id": "{id}", "consumption": {kwh}, "datetime": "{dt}", "type": "/spent"}}"#)
}

fn enrolled_meter(s: &TestServer) -> (TcpStream, String) {
    let mut c = connect(s);
    c.write_all(br#"{"id": 0}"#).unwrap();
    let id = String::from_utf8(read_answer(&mut c)).unwrap();
    assert!(
        id.bytes().all(|b| b.is_ascii_digit()) && !id.is_empty(),
        "{id:?}"
    );
    (c, id)
}

#[test]
fn two_objects_in_one_write_and_one_object_split_across_writes() {
    let s = tcp_server();
    open_enrollment(&s, "default", true);
    let (mut c, id) = enrolled_meter(&s);
    let t0 = now_s() - 600;
    let two = format!("{}{}", reading(&id, 10.0, t0), reading(&id, 10.5, t0 + 60));
    c.write_all(two.as_bytes()).unwrap();
    let answers = read_lines(&mut c, 2);
    assert_eq!(answers.len(), 2, "{answers:?}");
    for a in &answers {
        assert_eq!(a, &format!(r#"{{"ok":true,"id":"{id}"}}"#));
    }
    let one = reading(&id, 11.0, t0 + 120);
    for part in one.as_bytes().chunks(9) {
        c.write_all(part).unwrap();
        c.flush().unwrap();
        std::thread::sleep(Duration::from_millis(15));
    }
    assert_eq!(read_lines(&mut c, 1).len(), 1);
    // Newline-delimited JSON works as well.
    let nd = format!(
        "{}\n{}\n",
        reading(&id, 11.5, t0 + 180),
        reading(&id, 12.0, t0 + 240)
    );
    c.write_all(nd.as_bytes()).unwrap();
    assert_eq!(read_lines(&mut c, 2).len(), 2);
    let rows = energy_rows(&s, &format!("tcp-{id}"), t0 * 1000, (t0 + 300) * 1000);
    let kwh: Vec<f64> = rows.iter().map(|r| r.1).collect();
    assert_eq!(kwh, vec![10.0, 10.5, 11.0, 11.5, 12.0]);
}

#[test]
fn a_malformed_message_gets_an_error_and_the_connection_stays_usable() {
    let s = tcp_server();
    open_enrollment(&s, "default", true);
    let (mut c, id) = enrolled_meter(&s);
    let t0 = now_s() - 60;
    for (bad, code) in [
        (
            format!(r#"{{"id": "{id}", "consumption": 1.0,}}"#),
            "bad_json",
        ),
        (
            format!(r#"{{"id": "{id}", "consumption": "lots"}}"#),
            "bad_field_type",
        ),
        (
            format!(r#"{{"id": "{id}", "consumption": -4}}"#),
            "out_of_range",
        ),
        (
            format!(r#"{{"id": "{id}", "consumption": 1, "datetime": "soon"}}"#),
            "bad_timestamp",
        ),
        (reading("424242", 1.0, t0), "unknown_meter"),
        ("hello?".to_owned(), "garbage"),
    ] {
        c.write_all(bad.as_bytes()).unwrap();
        let a: serde_json::Value = serde_json::from_str(&read_lines(&mut c, 1)[0]).unwrap();
        assert_eq!(a["error"]["code"], code, "{bad} -> {a}");
        assert!(!a["error"]["message"].as_str().unwrap().is_empty());
    }
    c.write_all(reading(&id, 3.25, t0).as_bytes()).unwrap();
    assert!(read_lines(&mut c, 1)[0].contains(r#""ok":true"#));
    let rows = energy_rows(&s, &format!("tcp-{id}"), (t0 - 1) * 1000, (t0 + 1) * 1000);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, 3.25);
    assert_eq!(
        metric(&s, "wattline_tcp_rejected_total{code=\"bad_json\"} "),
        Some(1)
    );
    // The dashboard's list of recent refusals shows them too, newest first.
    let list = s.get("/api/v1/rejected-readings", Some(ADMIN)).json();
    let tcp: Vec<&serde_json::Value> = list["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["transport"] == "tcp")
        .collect();
    let codes: Vec<&str> = tcp.iter().map(|e| e["code"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        [
            "garbage",
            "unknown_meter",
            "bad_timestamp",
            "out_of_range",
            "bad_field_type",
            "bad_json"
        ],
        "{list}"
    );
    assert!(
        tcp[1]["actor"].as_str().unwrap().contains("424242"),
        "names the meter: {list}"
    );
}

#[test]
fn enrollment_closed_refuses_clearly_and_logs_the_peer() {
    let s = tcp_server();
    let mut c = connect(&s);
    let local = c.local_addr().unwrap();
    c.write_all(br#"{"id": 0}"#).unwrap();
    let a: serde_json::Value = serde_json::from_slice(&read_answer(&mut c)).unwrap();
    assert_eq!(a["error"]["code"], "enrollment_closed", "{a}");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tcp-enrollment"),
        "{a}"
    );
    assert!(read_answer(&mut c).is_empty(), "the server closes");
    assert!(s.wait_for_log("no site has enrollment open"), "{}", s.log());
    let line = s
        .log()
        .lines()
        .find(|l| l.contains("no site has enrollment open"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("WARN") && line.contains(&local.to_string()),
        "{line}"
    );
    // Opening and closing again is what decides.
    open_enrollment(&s, "default", true);
    let (_c, id) = enrolled_meter(&s);
    assert_eq!(id, "1");
    open_enrollment(&s, "default", false);
    let r = s.get("/api/v1/sites/default/tcp-enrollment", Some(ADMIN));
    assert_eq!(r.json(), json!({"site": "default", "open": false}));
    let mut c = connect(&s);
    c.write_all(br#"{"id": 0}"#).unwrap();
    assert!(String::from_utf8_lossy(&read_answer(&mut c)).contains("enrollment_closed"));
    // The API refuses what it does not know.
    let r = s.put_json(
        "/api/v1/sites/nowhere/tcp-enrollment",
        Some(ADMIN),
        &json!({"open": true}),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = s.put_json(
        "/api/v1/sites/default/tcp-enrollment",
        Some(ADMIN),
        &json!({"open": "yes"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = s.put_json(
        "/api/v1/sites/default/tcp-enrollment",
        None,
        &json!({"open": true}),
    );
    assert_eq!(r.status, 401, "{}", r.body);
}

#[test]
fn a_thousand_meters_at_once_all_stored() {
    const METERS: usize = 1000;
    const READINGS: usize = 3;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let s = tcp_server();
    open_enrollment(&s, "default", true);
    let addr = s.tcp.clone().unwrap();
    let started = Instant::now();
    let t0 = now_s() - 3600;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ids: Vec<String> = rt.block_on(async move {
        use tokio::io::AsyncWriteExt;
        // Every meter connects first, then they all talk at once.
        let mut conns = Vec::new();
        for _ in 0..METERS {
            conns.push(
                tokio::net::TcpStream::connect(&addr)
                    .await
                    .expect("connect"),
            );
        }
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(METERS));
        let mut tasks = Vec::new();
        for mut c in conns {
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let mut buf = [0u8; 512];
                barrier.wait().await;
                c.write_all(br#"{"id": 0}"#).await.unwrap();
                let id = read_async(&mut c, &mut buf).await;
                assert!(id.bytes().all(|b| b.is_ascii_digit()), "{id:?}");
                for k in 0..READINGS {
                    let r = reading(&id, 100.0 + k as f64, t0 + k as i64 * 60);
                    c.write_all(r.as_bytes()).await.unwrap();
                    let a = read_async(&mut c, &mut buf).await;
                    assert!(a.contains(r#""ok":true"#), "{a}");
                }
                id
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.expect("meter task"));
        }
        ids
    });
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(180),
        "took {elapsed:?} for {METERS} meters"
    );
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), METERS, "every meter got its own id");
    assert_eq!(
        metric(&s, "wattline_tcp_readings_total "),
        Some((METERS * READINGS) as u64)
    );
    // Everything is in storage, not only counted.
    let r = s.get(
        &format!(
            "/api/v1/export?from={}&to={}",
            t0 * 1000,
            (t0 + 3600) * 1000
        ),
        Some(ADMIN),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body.lines().skip(1).count(), METERS * READINGS);
    eprintln!("{METERS} meters x {READINGS} readings in {elapsed:?}");
}

/// One answer, within a generous bound (a thousand meters share two cores with the server).
async fn read_async(c: &mut tokio::net::TcpStream, buf: &mut [u8]) -> String {
    use tokio::io::AsyncReadExt;
    let n = tokio::time::timeout(Duration::from_secs(120), c.read(buf))
        .await
        .expect("answer in time")
        .expect("read");
    assert!(n > 0, "closed");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

fn a_reading_answered_before_kill_9_survives_the_restart(opts: Options) {
    let mut s = tcp_server_with(opts);
    open_enrollment(&s, "default", true);
    let (mut c, id) = enrolled_meter(&s);
    let t = now_s() - 30;
    c.write_all(reading(&id, 77.5, t).as_bytes()).unwrap();
    assert!(read_lines(&mut c, 1)[0].contains(r#""ok":true"#));
    s.kill9();
    let s = s.restart();
    let rows = energy_rows(&s, &format!("tcp-{id}"), t * 1000, (t + 1) * 1000);
    assert_eq!(rows.len(), 1, "the answered reading is gone");
    assert_eq!(rows[0].1, 77.5);
    // The meter keeps its id across the restart, no handshake needed.
    let mut c = connect(&s);
    c.write_all(reading(&id, 78.0, t + 10).as_bytes()).unwrap();
    assert!(read_lines(&mut c, 1)[0].contains(r#""ok":true"#));
}

#[test]
fn sigterm_with_meters_connected_stops_cleanly() {
    let mut s = tcp_server();
    open_enrollment(&s, "default", true);
    let mut meters: Vec<(TcpStream, String)> = (0..5).map(|_| enrolled_meter(&s)).collect();
    // One has half a message in flight.
    meters[0].0.write_all(br#"{"id": "1", "consu"#).unwrap();
    let status = s.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(s.log().contains("stopped cleanly"), "{}", s.log());
    for (c, _) in &mut meters {
        assert!(
            read_answer(c).is_empty(),
            "connections are closed at shutdown"
        );
    }
}

#[test]
fn the_listener_is_off_by_default_and_a_taken_port_is_a_clear_error() {
    let s = TestServer::start();
    assert!(s.tcp.is_none(), "no --tcp, no listener");
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wattline"))
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--mqtt",
            "off",
            "--tcp",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("WATTLINE_ADMIN_TOKEN", ADMIN)
        .output()
        .expect("run wattline");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("port {port}")) && err.contains("--tcp"),
        "{err}"
    );
}
