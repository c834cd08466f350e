//! Line-protocol parse throughput, in lines per second on one core.
//!
//! ```text
//! python3 /work/shared/bench/gen_readings.py --devices 1000 --duration 300s --format lp -o /tmp/r.lp
//! cargo run --release -p wattline-decode --example lp_throughput -- /tmp/r.lp
//! ```
//!
//! Without a file it synthesizes 300,000 lines shaped like the generator's (1000 devices, one
//! line per device and second, nanosecond timestamps). `--precision s|ms|us|ns` sets the unit of
//! the file's timestamps, `--runs N` how often the body is parsed (the best run is reported).

use std::fmt::Write as _;
use std::time::Instant;

use wattline_decode::{parse_line_protocol, Precision};
use wattline_domain::{Limits, TsMs};

fn synthesize(devices: u64, seconds: u64) -> Vec<u8> {
    let mut s = String::with_capacity((devices * seconds * 100) as usize);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        // xorshift64*: deterministic, good enough for plausible digits.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    let t0 = 1_767_632_400u64;
    let mut energy: Vec<f64> = (0..devices).map(|_| 1e6 + next() * 4e7).collect();
    for t in 0..seconds {
        for d in 0..devices {
            let v = 225.0 + next() * 10.0;
            let p = 40.0 + next() * 3000.0;
            let i = p / (v * 0.95);
            energy[d as usize] += p / 3600.0;
            let _ = writeln!(
                s,
                "energy,device={} voltage={v:.2},current={i:.3},power={p:.1},energy={:.3} {}",
                d + 1,
                energy[d as usize],
                (t0 + t) * 1_000_000_000
            );
        }
    }
    s.into_bytes()
}

/// Nanoseconds this thread has been on a CPU (Linux), so a busy machine skews the rate less.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn main() {
    let mut path = None;
    let mut precision = Precision::Ns;
    let mut runs = 5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--precision" => {
                let p = args.next().unwrap_or_default();
                precision = Precision::parse(&p).unwrap_or_else(|| panic!("bad precision {p:?}"));
            }
            "--runs" => runs = args.next().and_then(|r| r.parse().ok()).expect("--runs N"),
            _ => path = Some(a),
        }
    }
    let body = match &path {
        Some(p) => std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}")),
        None => synthesize(1000, 300),
    };
    let limits = Limits::default();
    // A clock far ahead, so that no reading of an old data set is refused as too old or ahead.
    let now = TsMs(i64::MAX / 4);

    let mut best = f64::INFINITY;
    let mut best_cpu = f64::INFINITY;
    let mut summary = None;
    for _ in 0..runs.max(1) {
        let c = cpu_ns();
        let t = Instant::now();
        let out = parse_line_protocol(&body, precision, now, &limits);
        let secs = t.elapsed().as_secs_f64();
        if let (Some(c0), Some(c1)) = (c, cpu_ns()) {
            best_cpu = best_cpu.min((c1 - c0) as f64 / 1e9);
        }
        best = best.min(secs);
        summary = Some((
            out.lines,
            out.readings.len(),
            out.errors.len(),
            out.errors.first().cloned(),
        ));
    }
    let (lines, readings, errors, first_error) = summary.expect("at least one run");
    println!(
        "{} lines ({:.1} MB) from {}: {readings} readings, {errors} errors",
        lines,
        body.len() as f64 / 1e6,
        path.as_deref().unwrap_or("synthesized data"),
    );
    if let Some(e) = first_error {
        println!("first error: {e}");
    }
    println!(
        "best of {runs}: {:.1} ms, {:.2} M lines/s, {:.0} MB/s",
        best * 1e3,
        lines as f64 / best / 1e6,
        body.len() as f64 / best / 1e6
    );
    if best_cpu.is_finite() {
        println!(
            "best of {runs} in CPU time: {:.1} ms, {:.2} M lines/s",
            best_cpu * 1e3,
            lines as f64 / best_cpu / 1e6
        );
    }
}
