use crate::both_backends;
use crate::support::*;

both_backends!(
    acknowledged_writes_survive_kill_9,
    sigterm_flushes_and_stops_cleanly
);

/// Every batch answered 204 is on disk: the process is killed right after the last answer.
fn acknowledged_writes_survive_kill_9(opts: Options) {
    let mut s = TestServer::start_with(opts);
    s.create_device("k1", None);
    let t0 = now_s() - 7200;
    let (batches, per_batch) = (120, 50);
    for b in 0..batches {
        let mut body = String::new();
        for i in 0..per_batch {
            let n = b * per_batch + i;
            // 1 Hz, counter +0.001 kWh per reading, power 3.6 kW.
            body.push_str(&format!(
                "e,device=k1 power=3600,energy={:.3} {}\n",
                1000.0 + n as f64 * 0.001,
                t0 + n
            ));
        }
        s.write_lp(&body);
    }
    s.kill9();
    let s = s.restart();
    let total = batches * per_batch;
    let rows = s.export_rows("k1", t0 * 1000, (t0 + total + 1) * 1000);
    assert_eq!(rows.len() as i64, total, "readings lost or doubled");
    // Rollups written after the last flush were rebuilt from raw readings at start-up.
    let st = s.stats("k1", t0 * 1000, (t0 + total) * 1000);
    assert_eq!(st["channels"]["main"]["power"]["n"], total, "{st}");
    let e = st["energy_import_kwh"].as_f64().unwrap();
    assert!(approx(e, (total - 1) as f64 * 0.001), "energy {e}");
}

fn sigterm_flushes_and_stops_cleanly(opts: Options) {
    let mut s = TestServer::start_with(opts);
    s.create_device("t1", None);
    let t = now_s() - 100;
    s.write_lp(&format!(
        "e,device=t1 power=10 {t}\ne,device=t1 power=30 {}",
        t + 1
    ));
    let status = s.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(s.log().contains("stopped cleanly"), "{}", s.log());
    let s = s.restart();
    let st = s.stats("t1", t * 1000, (t + 2) * 1000);
    assert_eq!(st["channels"]["main"]["power"]["avg"], 20.0, "{st}");
    assert!(
        !s.log().contains("re-aggregated"),
        "a clean stop leaves nothing to replay:\n{}",
        s.log()
    );
}
