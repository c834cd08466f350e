//! JSON readings parse throughput, in readings per second on one core.
//!
//! ```text
//! python3 /work/shared/bench/gen_readings.py --devices 1000 --duration 100s --format json -o /tmp/r.jsonl
//! cargo run --release -p wattline-decode --example json_throughput -- /tmp/r.jsonl
//! ```
//!
//! The file holds one JSON object per line (the generator's MQTT payloads). They are parsed
//! twice: as one array (a `POST /api/v1/readings` batch) and one object at a time (as MQTT
//! messages arrive). Without a file, 100,000 synthesized payloads are used.

use std::fmt::Write as _;
use std::time::Instant;

use wattline_decode::parse_json_readings;
use wattline_domain::{Limits, TsMs};

fn synthesize(n: usize) -> String {
    let mut s = String::new();
    for k in 0..n {
        let _ = writeln!(
            s,
            r#"{{"device_id":"meter-{:04}","ts":{},"voltage":{:.2},"current":{:.3},"power":{:.1},"energy":{:.3}}}"#,
            k % 1000 + 1,
            1_767_632_400_000u64 + (k / 1000) as u64 * 1000,
            225.0 + (k % 97) as f64 * 0.1,
            1.0 + (k % 89) as f64 * 0.01,
            200.0 + (k % 83) as f64 * 3.3,
            1e6 + k as f64 * 0.07
        );
    }
    s
}

/// Nanoseconds this thread has been on a CPU (Linux), so a busy machine skews the rate less.
/// The kernel updates it at scheduler ticks, so only long spans are meaningful.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn measure(what: &str, items: usize, runs: usize, mut f: impl FnMut() -> (usize, usize)) {
    let mut best = f64::INFINITY;
    let mut counts = (0, 0);
    let c0 = cpu_ns();
    for _ in 0..runs {
        let t = Instant::now();
        counts = f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    let cpu = match (c0, cpu_ns()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9 / runs as f64,
        _ => f64::NAN,
    };
    println!(
        "{what}: {} readings, {} errors; best of {runs}: {:.0} k readings/s (mean in CPU time: {:.0} k/s)",
        counts.0,
        counts.1,
        items as f64 / best / 1e3,
        items as f64 / cpu / 1e3
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let text = match args.next() {
        Some(p) => std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}")),
        None => synthesize(100_000),
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let batch = format!("[{}]", lines.join(","));
    let limits = Limits::default();
    // A clock far ahead, so that no reading of an old data set is refused as too old or ahead.
    let now = TsMs(i64::MAX / 4);
    let runs = 5;
    measure("one array", lines.len(), runs, || {
        let out = parse_json_readings(batch.as_bytes(), now, &limits);
        (out.readings.len(), out.errors.len())
    });
    measure("one object per call", lines.len(), runs, || {
        let (mut ok, mut bad) = (0, 0);
        for l in &lines {
            let out = parse_json_readings(l.as_bytes(), now, &limits);
            ok += out.readings.len();
            bad += out.errors.len();
        }
        (ok, bad)
    });
}
