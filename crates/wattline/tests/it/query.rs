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

/// The overview's numbers are added up on the server, in the site's zone: phases count once,
/// offline meters do not count towards "now", and energy splits at local midnight.
#[test]
fn site_summary_adds_up_the_site_in_its_zone() {
    let s = TestServer::start();
    let now = now_s();
    // A zone where it is about noon now, so "today" has room on both sides of the readings.
    let utc_hour = (now % 86_400) / 3600;
    let offset = 12 - utc_hour; // -11..=12
                                // Etc/GMT names count the other way round: Etc/GMT-5 is UTC+5.
    let zone = match offset {
        0 => "Etc/GMT".to_owned(),
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    };
    s.create_site("sum", &zone);
    s.create_site("elsewhere", "UTC");
    for d in ["p3", "m1", "m2"] {
        s.create_device(d, Some("sum"));
    }
    s.create_device("other", Some("elsewhere"));
    let local_midnight = (now + offset * 3600) / 86_400 * 86_400 - offset * 3600;
    let yesterday = local_midnight - 86_400;
    let mut lines = String::new();
    for t in [now - 1800, now - 10] {
        for (phase, w) in [("L1", 100), ("L2", 200), ("L3", 300)] {
            lines.push_str(&format!("e,device=p3,channel={phase} power={w} {t}\n"));
        }
    }
    for (t, kwh) in [
        (yesterday + 10 * 3600, 100.0),
        (yesterday + 11 * 3600, 103.0),
        (local_midnight + 3600, 103.0),
        (local_midnight + 2 * 3600, 106.0),
    ] {
        lines.push_str(&format!("e,device=m1 energy={kwh} {t}\n"));
    }
    lines.push_str(&format!("e,device=m1 power=50,energy=106.5 {}\n", now - 30));
    lines.push_str(&format!("e,device=m2 power=999 {}\n", now - 2 * 86_400));
    lines.push_str(&format!("e,device=other power=7777 {}\n", now - 5));
    s.write_lp(&lines);

    let r = s.get("/api/v1/sites/sum/summary", Some(ADMIN));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["timezone"], zone.as_str());
    assert_eq!(
        (v["devices"].as_u64(), v["online"].as_u64()),
        (Some(3), Some(2)),
        "{v}"
    );
    assert!(approx(v["power_w"].as_f64().unwrap(), 650.0), "{v}");
    let top: Vec<(&str, f64)> = v["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["id"].as_str().unwrap(), d["power_w"].as_f64().unwrap()))
        .collect();
    assert_eq!(top, [("p3", 600.0), ("m1", 50.0)], "{v}");
    assert!(
        approx(v["top"][1]["energy_today_kwh"].as_f64().unwrap(), 3.5),
        "{v}"
    );
    assert_eq!(v["offline_count"], 1);
    assert_eq!(v["offline"][0]["id"], "m2");
    assert!(v["offline"][0]["last_seen"].is_string());
    assert!(approx(v["energy_today_kwh"].as_f64().unwrap(), 3.5), "{v}");
    // Yesterday's 3 kWh fall in this month unless today is the 1st, locally.
    let local_day_of_month = {
        let days = (now + offset * 3600).div_euclid(86_400);
        jiff::civil::date(1970, 1, 1)
            .checked_add(jiff::Span::new().days(days))
            .unwrap()
            .day()
    };
    let month = if local_day_of_month == 1 { 3.5 } else { 6.5 };
    assert!(
        approx(v["energy_month_kwh"].as_f64().unwrap(), month),
        "{v}"
    );
    // The last hour per minute: the three phases add up in the minute they were read.
    let minute = (now - 1800) / 60 * 60 * 1000;
    let t = v["history"]["t"].as_array().unwrap();
    let i = t
        .iter()
        .position(|x| x.as_i64() == Some(minute))
        .expect("minute present");
    assert!(
        approx(v["history"]["power_w"][i].as_f64().unwrap(), 600.0),
        "{v}"
    );
    assert!(
        !v.to_string().contains("7777") && !v.to_string().contains("other"),
        "another site's device leaks in: {v}"
    );

    let v = s.get("/api/v1/sites/sum/summary?top=1", Some(ADMIN)).json();
    assert_eq!(v["top"].as_array().unwrap().len(), 1);
    let r = s.get("/api/v1/sites/sum/summary?top=50000", Some(ADMIN));
    assert_eq!((r.status, r.code().as_str()), (400, "bad_top"));
    let r = s.get("/api/v1/sites/nowhere/summary", Some(ADMIN));
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
}

/// The devices table's figures in one request: exact for one channel; for phases, the sum of
/// their averages and the extremes of their per-minute sums. Only what the caller may read.
#[test]
fn device_stats_cover_every_readable_device_in_one_request() {
    use crate::authz::{create_user, login, PASSWORD};
    let s = TestServer::start();
    s.create_site("x", "UTC");
    s.create_site("y", "UTC");
    s.create_device("p3", Some("x"));
    s.create_device("m1", Some("x"));
    s.create_device("silent", Some("x"));
    s.create_device("other", Some("y"));
    let t0 = (now_s() - 3600) / 60 * 60;
    let mut lines = String::new();
    for (t, [l1, l2, l3]) in [(t0, [100, 200, 300]), (t0 + 60, [110, 190, 330])] {
        for (phase, w) in [("L1", l1), ("L2", l2), ("L3", l3)] {
            lines.push_str(&format!("e,device=p3,channel={phase} power={w} {t}\n"));
        }
    }
    for (k, w) in [10, 30, 20].into_iter().enumerate() {
        lines.push_str(&format!(
            "e,device=m1 power={w},energy={} {}\n",
            k as f64,
            t0 + 10 * k as i64
        ));
    }
    lines.push_str(&format!("e,device=other power=5 {t0}\n"));
    s.write_lp(&lines);

    let range = format!("from={}&to={}", (t0 - 60) * 1000, (t0 + 600) * 1000);
    let r = s.get(&format!("/api/v1/device-stats?{range}&site=x"), Some(ADMIN));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["tier"], "1m");
    let by_id = |id: &str| {
        v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == id)
            .unwrap_or_else(|| panic!("{id} missing: {v}"))
            .clone()
    };
    let m1 = by_id("m1");
    assert_eq!(
        (
            m1["power"]["avg"].as_f64(),
            m1["power"]["min"].as_f64(),
            m1["power"]["max"].as_f64()
        ),
        (Some(20.0), Some(10.0), Some(30.0)),
        "{m1}"
    );
    assert!(
        approx(m1["energy_import_kwh"].as_f64().unwrap(), 2.0),
        "{m1}"
    );
    let p3 = by_id("p3");
    assert!(approx(p3["power"]["avg"].as_f64().unwrap(), 615.0), "{p3}");
    assert!(approx(p3["power"]["min"].as_f64().unwrap(), 600.0), "{p3}");
    assert!(approx(p3["power"]["max"].as_f64().unwrap(), 630.0), "{p3}");
    assert!(by_id("silent")["power"].is_null());
    assert_eq!(
        v["devices"].as_array().unwrap().len(),
        3,
        "site x only: {v}"
    );

    // An owner of site y sees only y's device, with or without naming a site.
    create_user(&s, "owner-y@x.test", "owner", &["y"]);
    let y = login(&s, "owner-y@x.test", PASSWORD);
    let cookie = [("Cookie", y.cookie.as_str())];
    let mine = s
        .request(
            "GET",
            &format!("/api/v1/device-stats?{range}"),
            &cookie,
            None,
        )
        .json();
    let ids: Vec<&str> = mine["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["other"], "{mine}");
    let r = s.request("GET", "/api/v1/device-stats?site=x", &cookie, None);
    assert_eq!(r.status, 404, "another owner's site: {}", r.body);
    let r = s.get("/api/v1/device-stats?from=2026-13-01", Some(ADMIN));
    assert_eq!((r.status, r.code().as_str()), (400, "bad_time"));
}
