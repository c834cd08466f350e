use serde_json::{json, Value};

use crate::both_backends;
use crate::support::*;

both_backends!(
    counter_resets_rollovers_and_replacements,
    dst_days_last_23_and_25_hours,
    late_and_duplicate_readings_repair_rollups
);

fn import(v: &Value) -> f64 {
    v["energy_import_kwh"]
        .as_f64()
        .unwrap_or_else(|| panic!("no energy in {v}"))
}

/// A counter going back to zero, wrapping at 100000 and a replaced meter never make
/// negative consumption or a spike.
fn counter_resets_rollovers_and_replacements(opts: Options) {
    let s = TestServer::start_with(opts);
    s.create_device("reset", None);
    s.create_device("wrap", None);
    s.create_device("swap", None);
    let t = (now_s() - 3600) / 60 * 60;
    s.write_lp(&format!(
        "e,device=reset energy=100.0 {}\ne,device=reset energy=100.5 {}\ne,device=reset energy=101.0 {}\n\
         e,device=reset energy=0.2 {}\ne,device=reset energy=0.7 {}\n",
        t, t + 60, t + 120, t + 180, t + 240
    ));
    // The last reading lies beyond the reorder window, so the rollover before it is folded
    // (and counted) now.
    s.write_lp(&format!(
        "e,device=wrap energy=99999.5 {t}\ne,device=wrap energy=0.5 {}\ne,device=wrap energy=0.6 {}\n",
        t + 600,
        t + 700
    ));
    s.write_lp(&format!(
        "e,device=swap energy=5000,power=1200 {t}\ne,device=swap energy=812,power=1200 {}\ne,device=swap energy=812.02,power=1200 {}\n",
        t + 60, t + 120
    ));
    let range = |d: &str| s.stats(d, t * 1000, (t + 3600) * 1000);
    assert!(
        approx(import(&range("reset")), 0.5 + 0.5 + 0.2 + 0.5),
        "{}",
        range("reset")
    );
    assert!(approx(import(&range("wrap")), 1.1), "{}", range("wrap"));
    // The swap interval counts the integrated power (1.2 kW for a minute), then the new counter.
    assert!(
        approx(import(&range("swap")), 0.02 + 0.02),
        "{}",
        range("swap")
    );
    let m = s.get("/metrics", Some(ADMIN)).body;
    assert!(m.contains("wattline_counter_events_total 3"), "{m}");
}

/// A constant 1 kW for two nights of clock changes in Zurich: the spring day has 23 hourly
/// buckets and 23 kWh, the autumn day 25 and 25 kWh.
fn dst_days_last_23_and_25_hours(mut opts: Options) {
    opts.env
        .push(("WATTLINE_RETENTION_RAW_DAYS".into(), "0".into()));
    let s = TestServer::start_with(opts);
    s.create_site("zh", "Europe/Zurich");
    s.create_device("heater", Some("zh"));
    for (from, to, hours) in [
        ("2026-03-28T20:00:00Z", "2026-03-30T02:00:00Z", 23),
        ("2026-10-24T20:00:00Z", "2026-10-26T02:00:00Z", 25),
    ] {
        let (a, b) = (secs(from), secs(to));
        let mut body = String::new();
        let mut ts = a;
        while ts <= b {
            // One reading every 15 minutes; the counter grows 0.25 kWh each time.
            body.push_str(&format!(
                "e,device=heater energy={},power=1000 {ts}\n",
                (ts - a) as f64 / 3600.0
            ));
            ts += 900;
        }
        s.write_lp(&body);
        let day = if hours == 23 {
            "2026-03-29"
        } else {
            "2026-10-25"
        };
        let day_start = jiff::civil::date(
            day[..4].parse().unwrap(),
            day[5..7].parse().unwrap(),
            day[8..].parse().unwrap(),
        )
        .to_zoned(jiff::tz::TimeZone::get("Europe/Zurich").unwrap())
        .unwrap();
        let next = day_start.tomorrow().unwrap();
        let (f, t) = (
            day_start.timestamp().as_millisecond(),
            next.timestamp().as_millisecond(),
        );
        assert_eq!((t - f) / 3_600_000, hours);
        let days = s
            .get(
                &format!("/api/v1/devices/heater/energy?interval=day&from={f}&to={t}"),
                Some(ADMIN),
            )
            .json();
        let buckets = days["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), 1, "{days}");
        // Midnight is still winter time on the spring day and still summer time on the autumn day.
        let offset = if hours == 23 { "+01:00" } else { "+02:00" };
        assert!(
            buckets[0]["start"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{day}T00:00:00{offset}")),
            "{days}"
        );
        assert!(
            approx(buckets[0]["import_kwh"].as_f64().unwrap(), hours as f64),
            "{days}"
        );
        let hourly = s
            .get(
                &format!("/api/v1/devices/heater/energy?interval=hour&from={f}&to={t}"),
                Some(ADMIN),
            )
            .json();
        let hb = hourly["buckets"].as_array().unwrap();
        assert_eq!(hb.len() as i64, hours, "{hourly}");
        assert!(
            hb.iter()
                .all(|b| approx(b["import_kwh"].as_f64().unwrap(), 1.0)),
            "{hourly}"
        );
    }
    let months = s.get(
        &format!(
            "/api/v1/devices/heater/energy?interval=month&from={}&to={}",
            ms("2026-01-01T00:00:00Z"),
            ms("2026-12-01T00:00:00Z")
        ),
        Some(ADMIN),
    );
    let mb = months.json()["buckets"].as_array().unwrap().clone();
    assert_eq!(mb.len(), 2, "{}", months.body);
    assert!(
        mb[0]["start"]
            .as_str()
            .unwrap()
            .starts_with("2026-03-01T00:00:00+01:00"),
        "{}",
        months.body
    );
}

/// A reading that arrives late lands in the right minute, hour and day, and the minute after
/// it is corrected too; a resent batch changes nothing; a batch in reverse order is sorted.
fn late_and_duplicate_readings_repair_rollups(opts: Options) {
    let s = TestServer::start_with(opts);
    s.create_device("l1", None);
    s.create_device("o1", None);
    let t = (now_s() - 7200) / 3600 * 3600 + 600;
    let on_time = format!(
        "e,device=l1 energy=10.0,power=100 {t}\ne,device=l1 energy=11.0,power=100 {}\ne,device=l1 energy=12.0,power=100 {}\n",
        t + 60, t + 120
    );
    s.write_lp(&on_time);
    // Let the rollups reach storage so the repair has to correct stored rows.
    s.settle();
    let minute = |start: i64| s.stats("l1", start * 1000, (start + 60) * 1000);
    assert!(approx(import(&minute(t + 60)), 1.0));
    s.write_lp(&format!("e,device=l1 energy=11.5,power=5000 {}\n", t + 90));
    let m1 = minute(t + 60);
    assert!(approx(import(&m1), 1.5), "{m1}");
    assert_eq!(m1["channels"]["main"]["power"]["max"], 5000.0);
    assert_eq!(m1["channels"]["main"]["power"]["n"], 2);
    assert!(approx(import(&minute(t + 120)), 0.5), "{}", minute(t + 120));
    let whole = s.stats("l1", t * 1000, (t + 180) * 1000);
    assert!(approx(import(&whole), 2.0), "{whole}");
    // The hour tier saw the repair too (a three-day span is answered from hourly rollups).
    let hours = s
        .get(
            &format!(
                "/api/v1/devices/l1/series?from={}&to={}&max_points=1000",
                (t - 86400) * 1000,
                (t + 2 * 86400) * 1000
            ),
            Some(ADMIN),
        )
        .json();
    assert_eq!(hours["tier"], "1h", "{hours}");
    assert_eq!(hours["max"], json!([5000.0]), "{hours}");

    // Resending the original batch stores nothing twice.
    s.write_lp(&on_time);
    let again = s.stats("l1", t * 1000, (t + 180) * 1000);
    assert_eq!(again["channels"]["main"]["power"]["n"], 4, "{again}");
    assert!(approx(import(&again), 2.0), "{again}");
    assert_eq!(s.export_rows("l1", t * 1000, (t + 180) * 1000).len(), 4);

    // Out of order within one batch.
    s.write_lp(&format!(
        "e,device=o1 energy=3.0 {}\ne,device=o1 energy=2.0 {}\ne,device=o1 energy=1.0 {t}\n",
        t + 120,
        t + 60
    ));
    assert!(approx(
        import(&s.stats("o1", t * 1000, (t + 180) * 1000)),
        2.0
    ));

    // Batches of two writers crossing: the later slice arrives first. Within the reorder
    // window they slot in without any repair.
    s.create_device("x1", None);
    let slice = |from: i64| -> String {
        (from..from + 5)
            .map(|i| format!("e,device=x1 energy={}.0,power=100 {}\n", i - t, i))
            .collect()
    };
    s.write_lp(&slice(t + 5));
    s.write_lp(&slice(t));
    let late_before = late_count(&s);
    let x = s.stats("x1", t * 1000, (t + 60) * 1000);
    assert!(approx(import(&x), 9.0), "{x}");
    assert_eq!(x["channels"]["main"]["power"]["n"], 10, "{x}");

    // A reading older than the window repairs stored rollups: it splits l1's first minute.
    s.write_lp(&format!("e,device=l1 energy=10.5,power=7000 {}\n", t + 30));
    assert!(late_count(&s) > late_before, "the repair path ran");
    let m0 = minute(t);
    assert!(approx(import(&m0), 0.5), "{m0}");
    assert_eq!(m0["channels"]["main"]["power"]["max"], 7000.0);
    // t+60 now counts from t+30 (0.5), plus t+90 (0.5).
    assert!(approx(import(&minute(t + 60)), 1.0), "{}", minute(t + 60));
    assert!(approx(
        import(&s.stats("l1", t * 1000, (t + 180) * 1000)),
        2.0
    ));

    // And all of it holds after a restart.
    let s = s.restart();
    let after = s.stats("l1", t * 1000, (t + 180) * 1000);
    assert_eq!(after["channels"]["main"]["power"]["n"], 5, "{after}");
    assert!(approx(import(&after), 2.0), "{after}");
}

fn late_count(s: &TestServer) -> u64 {
    let m = s.get("/metrics", Some(ADMIN)).body;
    m.lines()
        .find_map(|l| l.strip_prefix("wattline_readings_late_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("late counter")
}
