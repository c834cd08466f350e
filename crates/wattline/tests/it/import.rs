//! `wattline import`: CSV and line protocol into a running server, idempotent, rollups right.

use std::process::Command;

use crate::support::*;

fn import(
    s: &TestServer,
    file: &std::path::Path,
    extra: &[&str],
) -> (i32, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wattline"))
        .arg("import")
        .arg(file)
        .args(["--url", &s.base, "--token", ADMIN])
        .args(extra)
        .output()
        .expect("run wattline import");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("summary ({e}): {stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), summary, stderr)
}

fn hourly_kwh(s: &TestServer, device: &str, from: i64, to: i64) -> Vec<f64> {
    let v = s
        .get(
            &format!("/api/v1/devices/{device}/energy?interval=hour&from={from}&to={to}"),
            Some(ADMIN),
        )
        .json();
    v["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["import_kwh"].as_f64().unwrap())
        .collect()
}

#[test]
fn csv_import_twice_stores_each_reading_once_and_late_history_repairs_rollups() {
    let s = TestServer::start();
    s.create_device("h1", None);
    let dir = tempfile::tempdir().unwrap();
    let t0 = secs("2026-03-02T00:00:00Z");
    // Live data first: hours 2..4 of the day (a 1 kWh-per-hour counter).
    let live: String = (120..=240)
        .map(|m| {
            format!(
                "meter,device=h1 power=1000,energy={} {}\n",
                100.0 + m as f64 / 60.0,
                t0 + m * 60
            )
        })
        .collect();
    s.write_lp(&live);
    // History arrives later: hours 0..2, every minute, as CSV with unix seconds.
    let mut csv = String::from("device_id,ts,power,energy,note\n");
    for m in 0..120 {
        csv.push_str(&format!(
            "h1,{},1000,{},x\n",
            t0 + m * 60,
            100.0 + m as f64 / 60.0
        ));
    }
    let path = dir.path().join("history.csv");
    std::fs::write(&path, &csv).unwrap();
    for round in 0..2 {
        let (code, summary, stderr) = import(&s, &path, &[]);
        assert_eq!(code, 0, "round {round}: {summary} {stderr}");
        assert_eq!(summary["accepted"], 120, "{summary}");
        assert_eq!(summary["rejected"], 0, "{summary}");
        assert!(
            stderr.contains("ignoring CSV columns that are no quantity: note"),
            "{stderr}"
        );
    }
    s.settle();
    let rows = s.export_rows("h1", t0 * 1000, (t0 + 4 * 3600) * 1000);
    // Minutes 0..240 of the four hours (the reading at 04:00 is the next hour's).
    assert_eq!(rows.len(), 240, "each reading stored once");
    let hours = hourly_kwh(&s, "h1", t0 * 1000, (t0 + 4 * 3600) * 1000);
    assert_eq!(hours.len(), 4, "{hours:?}");
    // Hour 0 starts with the first reading ever (no delta before it): 59 minutes. Hour 2's
    // first minute (01:59 -> 02:00) is known only since the history came: the repair counted it.
    let expected = [59.0 / 60.0, 1.0, 1.0, 1.0];
    for (h, (kwh, want)) in hours.iter().zip(expected).enumerate() {
        assert!(
            approx(*kwh, want),
            "hour {h}: {kwh}, want {want} (all {hours:?})"
        );
    }
}

#[test]
fn line_protocol_import_and_refused_rows_are_reported() {
    let s = TestServer::start();
    s.create_device("m1", None);
    let dir = tempfile::tempdir().unwrap();
    let t0 = secs("2026-03-02T00:00:00Z");
    let lp: String = (0..12_000)
        .map(|i| {
            format!(
                "m,device=m1,channel=L1 voltage=230,power={} {}\n",
                i % 500,
                t0 + i
            )
        })
        .collect();
    let path = dir.path().join("history.lp");
    std::fs::write(&path, lp).unwrap();
    let (code, summary, stderr) = import(&s, &path, &["--precision", "s"]);
    assert_eq!(code, 0, "{summary} {stderr}");
    assert_eq!(summary["accepted"], 12_000, "{summary}");
    assert!(
        summary["requests"].as_u64().unwrap() >= 3,
        "batched: {summary}"
    );
    assert_eq!(
        s.export_rows("m1", t0 * 1000, (t0 + 12_000) * 1000).len(),
        12_000
    );

    // A bad cell and an unknown device: counted, named, and exit status 2.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "device,ts,power\nm1,2026-03-03T00:00:00Z,n/a\nghost,2026-03-03T00:00:00Z,5\nm1,2026-03-03T00:00:01Z,7\n").unwrap();
    let (code, summary, stderr) = import(&s, &bad, &[]);
    assert_eq!(code, 2, "{summary} {stderr}");
    assert_eq!(summary["accepted"], 1, "{summary}");
    assert_eq!(summary["rejected"], 2, "{summary}");
    assert!(
        stderr.contains("row 2: power: \"n/a\" is not a number"),
        "{stderr}"
    );
    assert!(stderr.contains("ghost"), "{stderr}");
}
