//! Line-protocol parse throughput, in lines per second on one core.
//!
//! ```text
//! python3 /work/shared/bench/gen_readings.py --devices 1000 --duration 300s --format lp -o /tmp/r.lp
//! cargo run --release -p wattline-decode --example lp_throughput -- /tmp/r.lp
//! ```
//!
//! Without a file it synthesizes 300,000 lines shaped like the generator's (1000 devices, one
//! line per device and second, nanosecond timestamps). `--precision s|ms|us|ns` sets the unit of
//! the file's timestamps, `--runs N` how often the body is parsed (the best run is reported),
//! `--batch N` splits it into bodies of N lines parsed one after the other, as HTTP requests
//! would bring them (Telegraf sends 1000 lines per request by default).

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
/// The kernel updates it at scheduler ticks, so only long spans are meaningful.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn main() {
    let mut path = None;
    let mut precision = Precision::Ns;
    let mut runs = 5;
    let mut batch = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--precision" => {
                let p = args.next().unwrap_or_default();
                precision = Precision::parse(&p).unwrap_or_else(|| panic!("bad precision {p:?}"));
            }
            "--runs" => runs = args.next().and_then(|r| r.parse().ok()).expect("--runs N"),
            "--batch" => batch = args.next().and_then(|r| r.parse().ok()).expect("--batch N"),
            _ => path = Some(a),
        }
    }
    let body = match &path {
        Some(p) => std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}")),
        None => synthesize(1000, 300),
    };
    // Whole lines, `batch` at a time (or the whole body as one).
    let mut bodies: Vec<&[u8]> = Vec::new();
    if batch == 0 {
        bodies.push(&body);
    } else {
        let mut start = 0;
        let mut n = 0;
        for (i, &c) in body.iter().enumerate() {
            if c == b'\n' {
                n += 1;
                if n == batch {
                    bodies.push(&body[start..=i]);
                    start = i + 1;
                    n = 0;
                }
            }
        }
        if start < body.len() {
            bodies.push(&body[start..]);
        }
    }
    let limits = Limits::default();
    // A clock far ahead, so that no reading of an old data set is refused as too old or ahead.
    let now = TsMs(i64::MAX / 4);

    let mut best = f64::INFINITY;
    let cpu_start = cpu_ns();
    let mut summary = None;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let mut lines = 0;
        let mut readings = 0;
        let mut errors = 0;
        let mut first_error = None;
        for b in &bodies {
            let out = parse_line_protocol(b, precision, now, &limits);
            lines += out.lines;
            readings += out.readings.len();
            errors += out.errors.len();
            if first_error.is_none() {
                first_error = out.errors.first().cloned();
            }
        }
        let secs = t.elapsed().as_secs_f64();
        best = best.min(secs);
        summary = Some((lines, readings, errors, first_error));
    }
    let cpu = match (cpu_start, cpu_ns()) {
        (Some(a), Some(b)) if b - a > 100_000_000 => Some((b - a) as f64 / 1e9 / runs as f64),
        _ => None,
    };
    let (lines, readings, errors, first_error) = summary.expect("at least one run");
    println!(
        "{} lines ({:.1} MB) from {} in {} bodies: {readings} readings, {errors} errors",
        lines,
        body.len() as f64 / 1e6,
        path.as_deref().unwrap_or("synthesized data"),
        bodies.len(),
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
    if let Some(cpu) = cpu {
        println!(
            "mean in CPU time (what a busy machine skews least): {:.1} ms, {:.2} M lines/s",
            cpu * 1e3,
            lines as f64 / cpu / 1e6
        );
    }
}
