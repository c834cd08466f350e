use std::io::Write;

use serde_json::json;

use crate::support::*;

#[test]
fn line_protocol_and_json_readings_are_stored() {
    let s = TestServer::start();
    s.create_device("m1", None);
    let t = now_s() - 600;
    // Two channels, escapes in the measurement, a comment, a CRLF line and ms precision.
    let body = format!(
        "# Telegraf batch\nmy\\ meter,device=m1,channel=L1 voltage=230.5,current=2.1,power=480.2 {}\r\nmy\\ meter,device=m1,channel=L2 power=120i {}\n",
        t * 1000,
        t * 1000
    );
    let r = s.post_raw("/write?precision=ms", Some(ADMIN), body);
    assert_eq!(r.status, 204, "{}", r.body);
    // The InfluxDB 2 route with seconds precision.
    let r = s.post_raw(
        "/api/v2/write?org=x&bucket=y&precision=s",
        Some(ADMIN),
        format!("e,device=m1,channel=L1 power=490 {}", t + 1),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    // JSON: a batch with RFC 3339 and unix-ms timestamps.
    let r = s.post_json(
        "/api/v1/readings",
        Some(ADMIN),
        &json!([
            {"device": "m1", "channel": "L1", "ts": jiff::Timestamp::from_second(t + 2).unwrap().to_string(), "power": 500.0, "frequency": 50.01},
            {"device": "m1", "channel": "L1", "ts": (t + 3) * 1000, "power": 510.0, "note": "ignored"}
        ]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["accepted"], 2);
    assert_eq!(r.json()["unknown_fields"], json!(["note"]));

    let q = s.get(
        &format!(
            "/api/v1/devices/m1/series?channel=L1&from={}&to={}",
            t * 1000,
            (t + 10) * 1000
        ),
        Some(ADMIN),
    );
    assert_eq!(q.status, 200, "{}", q.body);
    let v = q.json();
    assert_eq!(v["tier"], "raw");
    assert_eq!(v["avg"], json!([480.2, 490.0, 500.0, 510.0]));
    assert_eq!(v["t"][0], t * 1000);
    // Two channels: the query must say which.
    let q = s.get("/api/v1/devices/m1/series", Some(ADMIN));
    assert_eq!(q.status, 400);
    assert_eq!(q.code(), "channel_required");
    let devices = s.get("/api/v1/devices", Some(ADMIN)).json();
    assert_eq!(devices[0]["latest"]["L1"]["power"], 510.0);
    assert_eq!(devices[0]["latest"]["L2"]["power"], 120.0);
}

#[test]
fn gzip_bodies_are_accepted() {
    let s = TestServer::start();
    s.create_device("g1", None);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    write!(enc, "e,device=g1 power=42 {}", now_s()).unwrap();
    let body = enc.finish().unwrap();
    let r = s.post_with_headers(
        "/api/v2/write?precision=s",
        &[
            ("Authorization", &format!("Token {ADMIN}")),
            ("Content-Encoding", "gzip"),
        ],
        body,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let d = s.get("/api/v1/devices/g1", Some(ADMIN)).json();
    assert_eq!(d["latest"]["main"]["power"], 42.0);
}

#[test]
fn tokens_write_only_what_they_own() {
    let s = TestServer::start();
    s.create_site("a", "UTC");
    s.create_site("b", "UTC");
    let a1 = s.create_device("a1", Some("a"));
    s.create_device("a2", Some("a"));
    s.create_device("b1", Some("b"));
    let site_token = {
        let r = s.post_json(
            "/api/v1/sites/a/tokens",
            Some(ADMIN),
            &json!({"name": "telegraf"}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["token"].as_str().unwrap().to_owned()
    };
    let t = now_s();
    let line = |d: &str| format!("e,device={d} power=1 {t}");

    // Anonymous and wrong tokens are refused.
    let r = s.post_raw("/write?precision=s", None, line("a1"));
    assert_eq!((r.status, r.code().as_str()), (401, "unauthorized"));
    let r = s.post_raw("/write?precision=s", Some("wld_not_a_token"), line("a1"));
    assert_eq!(r.status, 401);
    // A device token writes its own device only.
    assert_eq!(
        s.post_raw("/write?precision=s", Some(&a1), line("a1"))
            .status,
        204
    );
    let r = s.post_raw("/write?precision=s", Some(&a1), line("a2"));
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "forbidden_device"),
        "{}",
        r.body
    );
    // A site token writes any device of its site, none of another site.
    assert_eq!(
        s.post_raw("/write?precision=s", Some(&site_token), line("a2"))
            .status,
        204
    );
    let r = s.post_raw("/write?precision=s", Some(&site_token), line("b1"));
    assert_eq!(r.status, 403, "{}", r.body);
    // InfluxDB 1.x clients send the token as the password.
    let r = s.post_raw(
        &format!("/write?precision=s&u=x&p={site_token}"),
        None,
        format!("e,device=a2 power=2 {}", t + 1),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    // Device tokens cannot administer.
    let r = s.get("/api/v1/devices", Some(&a1));
    assert_eq!(r.status, 403);
    // A revoked site token stops working at once.
    let tokens = s.get("/api/v1/sites/a/tokens", Some(ADMIN)).json();
    let id = tokens[0]["id"].as_str().unwrap();
    assert!(
        tokens[0].get("token").is_none(),
        "secrets are shown only once"
    );
    assert_eq!(
        s.delete(&format!("/api/v1/sites/a/tokens/{id}"), Some(ADMIN))
            .status,
        204
    );
    assert_eq!(
        s.post_raw("/write?precision=s", Some(&site_token), line("a2"))
            .status,
        401
    );
}

#[test]
fn bad_input_is_refused_clearly_and_good_readings_survive() {
    let s = TestServer::start();
    s.create_device("m1", None);
    let t = now_s() - 60;
    let batch = format!(
        "e,device=m1 power=100 {t}\n\
         e,device=m1 voltage=-5 {}\n\
         e,device=m1 power_factor=1.5 {}\n\
         e,device=m1 power=NaN {}\n\
         e,device=m1 power=\"lots\" {}\n\
         e,device=m1 power=1 946684000\n\
         e,device=m1 power=1 {}\n\
         e,device=nobody power=1 {t}\n\
         e power=1 {t}\n\
         e,device=m1 power=200 {}\n",
        t + 1,
        t + 2,
        t + 3,
        t + 4,
        now_s() + 3 * 86400,
        t + 5
    );
    let r = s.post_raw("/write?precision=s", Some(ADMIN), batch);
    assert_eq!(r.status, 400, "{}", r.body);
    let e = r.json()["error"].clone();
    assert_eq!(e["code"], "partial_write");
    assert_eq!(e["accepted"], 2, "{e}");
    assert_eq!(e["rejected"], 8, "{e}");
    let lines = e["lines"].as_array().unwrap();
    let find = |code: &str| {
        lines
            .iter()
            .find(|l| l["code"] == code)
            .unwrap_or_else(|| panic!("no {code} in {e}"))
            .clone()
    };
    assert_eq!(find("out_of_range")["line"], 2);
    assert!(find("out_of_range")["message"]
        .as_str()
        .unwrap()
        .contains("voltage"));
    assert_eq!(find("syntax")["line"], 4, "NaN is not line protocol");
    assert_eq!(find("bad_field_type")["field"], "power");
    assert_eq!(find("timestamp_too_old")["line"], 6);
    assert_eq!(find("timestamp_in_future")["line"], 7);
    assert!(find("unknown_device")["message"]
        .as_str()
        .unwrap()
        .contains("nobody"));
    assert_eq!(find("missing_device")["line"], 9);
    // The two good readings were stored.
    assert_eq!(s.export_rows("m1", t * 1000, (t + 10) * 1000).len(), 2);

    // Malformed JSON, a wrong shape, an oversized body, an unknown precision.
    let r = s.post_raw(
        "/api/v1/readings",
        Some(ADMIN),
        "{\"device\": \"m1\", \"power\": ",
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "bad_json"),
        "{}",
        r.body
    );
    let r = s.post_json(
        "/api/v1/readings",
        Some(ADMIN),
        &json!({"device": "m1", "power": "high"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // Declared too large: refused before the body is sent (as curl or Telegraf would see it).
    let reply = raw_request(
        &s,
        &format!(
            "POST /write HTTP/1.1\r\nHost: x\r\nAuthorization: Token {ADMIN}\r\nContent-Length: {}\r\n\r\n",
            17 * 1024 * 1024
        ),
    );
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("body_too_large"), "{reply}");
    // Too large once gunzipped: refused after decompression.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&vec![b'x'; 17 * 1024 * 1024]).unwrap();
    let r = s.post_with_headers(
        "/write",
        &[
            ("Authorization", &format!("Token {ADMIN}")),
            ("Content-Encoding", "gzip"),
        ],
        enc.finish().unwrap(),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (413, "body_too_large"),
        "{}",
        r.body
    );
    let r = s.post_raw("/write?precision=h", Some(ADMIN), "e,device=m1 power=1");
    assert_eq!((r.status, r.code().as_str()), (400, "bad_precision"));
    // Only unknown devices: 404.
    let r = s.post_raw(
        "/write?precision=s",
        Some(ADMIN),
        format!("e,device=ghost power=1 {t}"),
    );
    assert_eq!((r.status, r.code().as_str()), (404, "unknown_device"));

    // Still healthy, and every refusal was counted by reason.
    assert_eq!(s.get("/healthz", None).status, 200);
    let m = s.get("/metrics", Some(ADMIN)).body;
    for reason in [
        "out_of_range",
        "syntax",
        "bad_field_type",
        "timestamp_too_old",
        "timestamp_in_future",
        "unknown_device",
        "missing_device",
        "bad_json",
    ] {
        assert!(
            m.contains(&format!(
                "wattline_readings_rejected_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted:\n{m}"
        );
    }
    assert!(m.contains("wattline_readings_accepted_total 2"), "{m}");
    assert!(s.wait_for_log("rejected readings"), "rejections are logged");
}

#[test]
fn large_bodies_report_true_line_numbers() {
    let s = TestServer::start();
    s.create_device("big", None);
    let t = now_s() - 20_000;
    let mut lines: Vec<String> = (0..8000)
        .map(|i| {
            format!(
                "energy,device=big voltage=230.{},power={}.5 {}",
                i % 10,
                100 + i % 70,
                t + i
            )
        })
        .collect();
    lines[9] = format!("energy,device=big voltage=-1 {}", t + 9);
    lines[7001] = format!("energy,device=big power_factor=2 {}", t + 7001);
    let body = lines.join("\n");
    assert!(
        body.len() > 256 * 1024,
        "large enough to be parsed in two halves"
    );
    let r = s.post_raw("/write?precision=s", Some(ADMIN), body);
    assert_eq!(r.status, 400, "{}", r.body);
    let e = r.json()["error"].clone();
    assert_eq!(e["accepted"], 7998);
    let listed: Vec<(u64, String)> = e["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["line"].as_u64().unwrap(),
                l["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(listed[0].0, 10);
    assert_eq!(listed[1].0, 7002);
    assert!(listed[1].1.starts_with("line 7002:"), "{}", listed[1].1);
    assert_eq!(
        s.export_rows("big", t * 1000, (t + 8000) * 1000).len(),
        7998
    );
}

/// Sends raw bytes (a request without its body, say) and returns the reply's head and body.
fn raw_request(s: &TestServer, request: &str) -> String {
    use std::io::Read;
    let addr = s.base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut buf = vec![0; 4096];
    let n = conn.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
