use serde_json::Value;

use crate::support::*;

#[test]
fn series_picks_the_finest_tier_that_fits_and_export_streams_everything() {
    let s = TestServer::start();
    s.create_device("q1", None);
    let t0 = (now_s() - 3 * 3600) / 3600 * 3600;
    // Two hours at 1 Hz.
    let mut body = String::new();
    for i in 0..7200 {
        body.push_str(&format!(
            "e,device=q1 power={},voltage=230 {}\n",
            100 + i % 50,
            t0 + i
        ));
        if i % 2000 == 1999 {
            s.write_lp(&body);
            body.clear();
        }
    }
    s.write_lp(&body);
    let series = |from: i64, to: i64, max: usize| -> Value {
        let r = s.get(
            &format!(
                "/api/v1/devices/q1/series?from={}&to={}&max_points={max}",
                from * 1000,
                to * 1000
            ),
            Some(ADMIN),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    };
    let v = series(t0, t0 + 600, 1000);
    assert_eq!(
        (v["tier"].as_str(), v["t"].as_array().unwrap().len()),
        (Some("raw"), 600)
    );
    let v = series(t0, t0 + 7200, 1000);
    assert_eq!(
        (v["tier"].as_str(), v["t"].as_array().unwrap().len()),
        (Some("1m"), 120)
    );
    assert_eq!(v["min"][0], 100.0);
    assert_eq!(v["max"][0], 149.0);
    let v = series(t0 - 86400 * 10, t0 + 7200, 1000);
    assert_eq!(v["tier"], "1h");
    assert_eq!(v["t"].as_array().unwrap().len(), 2);
    let v = series(t0 - 86400 * 365, t0 + 7200, 1000);
    assert_eq!(v["tier"], "1d");
    let v = series(t0, t0 + 7200, 10_000);
    assert_eq!(
        (v["tier"].as_str(), v["t"].as_array().unwrap().len()),
        (Some("raw"), 7200)
    );
    let r = s.get("/api/v1/devices/q1/series?quantity=watts", Some(ADMIN));
    assert_eq!((r.status, r.code().as_str()), (400, "bad_quantity"));
    let r = s.get("/api/v1/devices/q1/series?from=2026-13-01", Some(ADMIN));
    assert_eq!((r.status, r.code().as_str()), (400, "bad_time"));

    let stats = s.stats("q1", t0 * 1000, (t0 + 7200) * 1000);
    assert_eq!(stats["channels"]["main"]["power"]["n"], 7200);
    assert_eq!(stats["channels"]["main"]["power"]["max"], 149.0);
    // Integrated from power: 7199 s of ~124.5 W.
    let e = stats["energy_import_kwh"].as_f64().unwrap();
    assert!((e - 0.2489).abs() < 0.001, "{e}");

    let rows = s.export_rows("q1", t0 * 1000, (t0 + 7200) * 1000);
    assert_eq!(rows.len(), 7200);
    assert!(rows[0].starts_with("q1,main,"), "{}", rows[0]);
    let r = s.get("/api/v1/export?format=xlsx", Some(ADMIN));
    assert_eq!(r.status, 400);
}

#[test]
fn health_metrics_and_openapi() {
    let s = TestServer::start();
    let h = s.get("/healthz", None).json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["storage"], "sqlite");
    let m = s.get("/metrics", Some(ADMIN)).body;
    assert!(m.contains("# TYPE wattline_write_latency_seconds histogram"));
    assert!(m.contains("wattline_ingest_queue_depth 0"));
    let doc = s.get("/api/v1/openapi.json", None).json();
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/api/v1/devices/{id}/series"]["get"].is_object());
    let r = s.get("/nope", None);
    assert_eq!((r.status, r.code().as_str()), (404, "no_route"));
    assert_eq!(s.get("/api/v1/devices", None).status, 401);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let opts = Options {
        env: vec![("WATTLINE_LOG_FORMAT".into(), "json".into())],
        ..Default::default()
    };
    let s = TestServer::start_with(opts);
    s.create_device("j1", None);
    let r = s.post_raw(
        "/write?precision=s",
        Some(ADMIN),
        format!("e,device=j1 voltage=-3 {}", now_s()),
    );
    assert_eq!(r.status, 400);
    assert!(s.wait_for_log("rejected readings"));
    let log = s.log();
    let mut saw_rejection = false;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        if v["fields"]["message"] == "rejected readings" {
            assert_eq!(v["fields"]["first_code"], "out_of_range", "{line}");
            saw_rejection = true;
        }
    }
    assert!(
        saw_rejection,
        "the rejection was logged with its fields:\n{log}"
    );
}

#[test]
fn admins_see_the_most_recent_rejected_readings() {
    let s = TestServer::start();
    s.create_device("meter", None);
    let now = crate::support::now_s();
    let r = s.post_raw(
        "/write?precision=s",
        Some(ADMIN),
        format!("m,device=meter power=1 {now}\nm,device=ghost power=2 {now}\n"),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = s.post_json(
        "/api/v1/readings",
        Some(ADMIN),
        &serde_json::json!({"device": "meter", "power": "lots"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let list = s.get("/api/v1/rejected-readings", Some(ADMIN)).json();
    let list = list["rejected"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    // Newest first: the JSON write, then the line naming an unknown device.
    assert_eq!(list[0]["transport"], "http-json");
    assert_eq!(list[1]["transport"], "http-lp");
    assert_eq!(list[1]["code"], "unknown_device");
    assert!(list[1]["message"].as_str().unwrap().contains("ghost"));
    assert_eq!(list[1]["actor"], "admin-token");
}
