//! `GET /api/v1/live`: a reading written while a stream is open arrives on it within 2 s,
//! filtered to what the stream asked for and what its caller may read.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::authz::{create_user, login, PASSWORD};
use crate::support::{now_s, TestServer, ADMIN};

#[test]
fn a_written_reading_reaches_open_streams_within_two_seconds() {
    let s = TestServer::start();
    s.create_site("site-a", "Europe/Zurich");
    s.create_site("site-b", "UTC");
    s.create_device("dev-a", Some("site-a"));
    s.create_device("dev-b", Some("site-b"));
    let auth = format!("Token {ADMIN}");
    let mut by_device = s.open_stream("/api/v1/live?device=dev-a", &[("Authorization", &auth)]);
    assert_eq!(by_device.status, 200);
    let mut by_site = s.open_stream("/api/v1/live?site=site-a", &[("Authorization", &auth)]);
    assert_eq!(by_site.status, 200);

    let now = now_s();
    // dev-b's reading is on neither stream; dev-a's arrives on both, with its values.
    s.write_lp(&format!("m,device=dev-b power=7 {now}"));
    let t = Instant::now();
    s.write_lp(&format!(
        "m,device=dev-a,channel=L1 power=912.5,voltage=231 {now}"
    ));
    for stream in [&mut by_device, &mut by_site] {
        let (name, data) = stream
            .next_event(Duration::from_secs(2))
            .expect("an event within 2 s");
        assert!(t.elapsed() < Duration::from_secs(3));
        assert_eq!(name, "reading");
        let v: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["device"], "dev-a", "{v}");
        assert_eq!(v["channel"], "L1");
        assert_eq!(v["ts"], now * 1000);
        assert_eq!(v["values"]["power"], 912.5);
        assert_eq!(v["values"]["voltage"], 231.0);
    }

    // Another site's owner cannot open dev-a's stream, nor site A's: 404 as for reads.
    create_user(&s, "owner-b@x.test", "owner", &["site-b"]);
    let b = login(&s, "owner-b@x.test", PASSWORD);
    let headers = [("Cookie", b.cookie.as_str())];
    assert_eq!(
        s.open_stream("/api/v1/live?device=dev-a", &headers).status,
        404
    );
    assert_eq!(
        s.open_stream("/api/v1/live?site=site-a", &headers).status,
        404
    );
    assert_eq!(s.open_stream("/api/v1/live?device=dev-a", &[]).status, 401);
    // Unfiltered, owner B sees only site B's devices.
    let mut mine = s.open_stream("/api/v1/live", &headers);
    assert_eq!(mine.status, 200);
    s.write_lp(&format!("m,device=dev-a power=1 {}", now + 1));
    s.write_lp(&format!("m,device=dev-b power=2 {}", now + 1));
    let (_, data) = mine.next_event(Duration::from_secs(2)).expect("an event");
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap()["device"],
        "dev-b"
    );
}

#[test]
fn open_streams_do_not_hold_shutdown() {
    let mut s = TestServer::start();
    s.create_device("d", None);
    let auth = format!("Token {ADMIN}");
    let mut stream = s.open_stream("/api/v1/live?device=d", &[("Authorization", &auth)]);
    assert_eq!(stream.status, 200);
    let t = Instant::now();
    assert!(s.terminate().success());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "shutdown waited {:?} for the stream",
        t.elapsed()
    );
    assert!(stream.next_event(Duration::from_secs(1)).is_none());
}

#[test]
fn a_stream_ends_once_its_session_does() {
    let s = TestServer::start();
    s.create_site("site-a", "UTC");
    s.create_device("dev-a", Some("site-a"));
    create_user(&s, "owner-a@x.test", "owner", &["site-a"]);
    let a = login(&s, "owner-a@x.test", PASSWORD);
    let cookie = [("Cookie", a.cookie.as_str())];
    let mut stream = s.open_stream("/api/v1/live?device=dev-a", &cookie);
    assert_eq!(stream.status, 200);
    let r = s.request(
        "POST",
        "/api/v1/auth/logout",
        &[("Cookie", &a.cookie), ("X-CSRF-Token", &a.csrf)],
        None,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    // The stream notices at its next check (every 10 s) and closes; readings written
    // meanwhile never reach a logged-out browser after that.
    let t = Instant::now();
    while !stream.ended() {
        assert!(
            t.elapsed() < Duration::from_secs(25),
            "the stream outlived its session"
        );
        std::thread::sleep(Duration::from_millis(500));
        s.write_lp(&format!("m,device=dev-a power=1 {}", now_s()));
    }
}

/// `latest=1` (the overview's stream): many readings in a second become one event with each
/// changed device's power now, phases added up, other sites' devices left out.
#[test]
fn a_latest_stream_sends_each_devices_power_once_a_second() {
    let s = TestServer::start();
    s.create_site("site-a", "UTC");
    s.create_site("site-b", "UTC");
    s.create_device("p3", Some("site-a"));
    s.create_device("m1", Some("site-a"));
    s.create_device("quiet", Some("site-a"));
    s.create_device("dev-b", Some("site-b"));
    let auth = format!("Token {ADMIN}");
    let mut stream = s.open_stream(
        "/api/v1/live?site=site-a&latest=1",
        &[("Authorization", &auth)],
    );
    assert_eq!(stream.status, 200);
    let now = now_s();
    let mut lines = String::new();
    for k in 0..20 {
        for (phase, w) in [("L1", 100 + k), ("L2", 200), ("L3", 300)] {
            lines.push_str(&format!(
                "m,device=p3,channel={phase} power={w} {}\n",
                now - 20 + k
            ));
        }
        lines.push_str(&format!("m,device=m1 power={} {}\n", 10 + k, now - 20 + k));
        lines.push_str(&format!("m,device=dev-b power=5 {}\n", now - 20 + k));
    }
    let t = Instant::now();
    s.write_lp(&lines);
    let (name, data) = stream
        .next_event(Duration::from_secs(3))
        .expect("an event within a second or two");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(name, "latest");
    let v: Value = serde_json::from_str(&data).unwrap();
    let mut rows: Vec<(String, f64, i64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["device"].as_str().unwrap().to_owned(),
                r["power_w"].as_f64().unwrap(),
                r["ts"].as_i64().unwrap(),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let last = (now - 1) * 1000;
    assert_eq!(
        rows,
        [("m1".into(), 29.0, last), ("p3".into(), 619.0, last)],
        "{v}"
    );
    // Nothing more comes while nothing is written.
    assert!(stream.next_event(Duration::from_millis(1500)).is_none());
    let r = s.request(
        "GET",
        "/api/v1/live?site=site-a&latest=maybe",
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!((r.status, r.code().as_str()), (400, "bad_query"));
}

/// `batch=1` (the device page's stream): one event per commit, holding that commit's readings
/// of the stream's devices in order.
#[test]
fn a_batch_stream_sends_one_event_per_commit() {
    let s = TestServer::start();
    s.create_device("dev-a", None);
    s.create_device("dev-b", None);
    let auth = format!("Token {ADMIN}");
    let mut stream = s.open_stream(
        "/api/v1/live?device=dev-a&batch=1",
        &[("Authorization", &auth)],
    );
    assert_eq!(stream.status, 200);
    let now = now_s();
    let lines: String = (0..50)
        .map(|k| {
            format!(
                "m,device=dev-a power={k} {}\nm,device=dev-b power=1 {}\n",
                now - 50 + k,
                now - 50 + k
            )
        })
        .collect();
    s.write_lp(&lines);
    let (name, data) = stream
        .next_event(Duration::from_secs(2))
        .expect("an event within 2 s");
    assert_eq!(name, "readings");
    let v: Value = serde_json::from_str(&data).unwrap();
    let powers: Vec<f64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["device"], "dev-a", "{r}");
            r["values"]["power"].as_f64().unwrap()
        })
        .collect();
    assert_eq!(powers, (0..50).map(f64::from).collect::<Vec<_>>());
    // A commit with nothing for this stream sends nothing.
    s.write_lp(&format!("m,device=dev-b power=2 {now}"));
    assert!(stream.next_event(Duration::from_millis(800)).is_none());
}
