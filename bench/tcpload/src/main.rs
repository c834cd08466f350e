//! Many socket meters against `wattline serve --tcp`, as the city prototype's meter behaves:
//! one connection each, `{"id": 0}` for an id, then readings with a cumulative `consumption`
//! and a local `datetime`, each written with one send and followed by a blocking read of the
//! answer.
//!
//! ```text
//! tcpload --addr 127.0.0.1:4005 --meters 1000 --seconds 20 [--interval-ms 0] [--workers 1]
//! ```
//!
//! Phases, each announced on stdout so that a runner can time the server around them:
//! `PHASE connect`, `PHASE enroll`, `PHASE load` (readings for `--seconds`), `PHASE done`,
//! then one JSON line of results. `--interval-ms 0` sends the next reading as soon as the
//! answer is in (closed loop: the server's capacity); `1000` is a meter's real pace. Each
//! meter's k-th reading is stamped `start + k` seconds, starting a day ago in UTC, so
//! every reading is a distinct, plausible point (the site's zone must be UTC).
//!
//! Only 127.0.0.1 is meant; every phase has a deadline.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

struct Args {
    addr: String,
    meters: usize,
    seconds: u64,
    interval_ms: u64,
    workers: usize,
}

fn args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:4005".into(),
        meters: 1000,
        seconds: 20,
        interval_ms: 0,
        workers: 1,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--addr" => a.addr = v,
            "--meters" => a.meters = v.parse().expect("--meters N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds S"),
            "--interval-ms" => a.interval_ms = v.parse().expect("--interval-ms MS"),
            "--workers" => a.workers = v.parse().expect("--workers N"),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

/// `YYYY-MM-DD HH:MM:SS` of unix seconds, UTC (days-from-civil, inverted).
fn wall(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Reads one answer: a meter takes whatever one read returns.
async fn answer(c: &mut TcpStream, buf: &mut [u8]) -> Result<usize, String> {
    match tokio::time::timeout(Duration::from_secs(60), c.read(buf)).await {
        Ok(Ok(0)) => Err("closed".into()),
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 60 s".into()),
    }
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

fn main() {
    let a = args();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.workers.max(1))
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(a));
}

async fn run(a: Args) {
    println!("PHASE connect");
    let t = Instant::now();
    // At most 256 handshakes in flight, so that the listen backlog never overflows.
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::new();
    for _ in 0..a.meters {
        let (gate, addr) = (gate.clone(), a.addr.clone());
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await.unwrap();
            for attempt in 0..20 {
                match tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(&addr))
                    .await
                {
                    Ok(Ok(c)) => {
                        let _ = c.set_nodelay(true);
                        return c;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await,
                }
            }
            panic!("cannot connect to {addr}");
        }));
    }
    let mut conns = Vec::with_capacity(a.meters);
    for t in tasks {
        conns.push(t.await.expect("connect task"));
    }
    let connect_s = t.elapsed().as_secs_f64();

    println!("PHASE enroll");
    let t = Instant::now();
    let mut tasks = Vec::new();
    for mut c in conns {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await.unwrap();
            let mut buf = [0u8; 256];
            c.write_all(br#"{"id": 0}"#).await.expect("send handshake");
            let n = answer(&mut c, &mut buf).await.expect("handshake answer");
            let id = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
                "handshake answered {id:?} (is enrollment open?)"
            );
            (c, id)
        }));
    }
    let mut meters = Vec::with_capacity(a.meters);
    for t in tasks {
        meters.push(t.await.expect("enroll task"));
    }
    let enroll_s = t.elapsed().as_secs_f64();

    println!("PHASE load");
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let start = now - 86_400;
    let t = Instant::now();
    let deadline = t + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for (i, (mut c, id)) in meters.into_iter().enumerate() {
        let (counters, stop) = (counters.clone(), stop.clone());
        let interval = Duration::from_millis(a.interval_ms);
        // Spread paced meters over the interval, as real meters started at random times.
        let offset = if a.interval_ms > 0 {
            interval.mul_f64(i as f64 / a.meters as f64)
        } else {
            Duration::ZERO
        };
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut lat_us: Vec<u32> = Vec::new();
            tokio::time::sleep(offset).await;
            let mut next = Instant::now();
            let mut kwh = 1000.0 + i as f64;
            for k in 0.. {
                if stop.load(Relaxed) || Instant::now() >= deadline {
                    break;
                }
                kwh += 0.001;
                let msg = format!(
                    r#"{{"id": "{id}", "consumption": {kwh:.3}, "datetime": "{}", "type": "/spent"}}"#,
                    wall(start + k)
                );
                let sent = Instant::now();
                if c.write_all(msg.as_bytes()).await.is_err() {
                    counters.failed.fetch_add(1, Relaxed);
                    break;
                }
                match answer(&mut c, &mut buf).await {
                    Ok(n) if buf[..n].starts_with(br#"{"ok":true"#) => {
                        counters.ok.fetch_add(1, Relaxed);
                        lat_us.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Ok(_) => {
                        counters.refused.fetch_add(1, Relaxed);
                    }
                    Err(_) => {
                        counters.failed.fetch_add(1, Relaxed);
                        break;
                    }
                }
                if !interval.is_zero() {
                    next += interval;
                    tokio::time::sleep_until(next.into()).await;
                }
            }
            (c, lat_us)
        }));
    }
    let mut lat = Vec::new();
    let mut keep = Vec::new();
    for t in tasks {
        let (c, l) = t.await.expect("meter task");
        lat.extend(l);
        keep.push(c);
    }
    stop.store(true, Relaxed);
    let load_s = t.elapsed().as_secs_f64();
    println!("PHASE done");
    drop(keep);
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            0.0
        } else {
            lat[((lat.len() - 1) as f64 * p) as usize] as f64 / 1000.0
        }
    };
    let ok = counters.ok.load(Relaxed);
    println!(
        "{{\"meters\": {}, \"interval_ms\": {}, \"connect_s\": {connect_s:.3}, \"enroll_s\": {enroll_s:.3}, \"load_s\": {load_s:.3}, \"answered_ok\": {ok}, \"refused\": {}, \"failed\": {}, \"client_rate\": {:.1}, \"latency_ms\": {{\"p50\": {:.3}, \"p90\": {:.3}, \"p99\": {:.3}, \"max\": {:.3}}}}}",
        a.meters,
        a.interval_ms,
        counters.refused.load(Relaxed),
        counters.failed.load(Relaxed),
        ok as f64 / load_s,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0),
    );
}
