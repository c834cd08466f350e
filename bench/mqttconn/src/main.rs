//! mqttconn: many idle-ish MQTT connections against Wattline's built-in broker.
//!
//! Opens `--n` connections to `127.0.0.1:--port`, each from one of `--src-addrs` loopback
//! source addresses (127.0.0.2, 127.0.0.3, ...; default one per 1,000 connections: one address
//! has only about 28,000 ephemeral ports, and binding gets slow well before that). Each sends CONNECT (MQTT 3.1.1, clean session, `--username`, `--password`), waits
//! for a CONNACK, and then publishes one small JSON reading at QoS 0 on `wattline/readings`
//! every `--interval-s` seconds for device `<prefix><(i % devices) + 1, 4 digits>`. The
//! publishes of all connections are staggered evenly over the interval. Without publishing
//! (`--interval-s 0`) a connection sends PINGREQ every keep-alive / 2.
//!
//! Measures the server's VmRSS (`/proc/<--server-pid>/status`) before connecting, once all
//! connections are up and have run for `--idle-s` seconds, and after they are closed, and
//! reads `/metrics` from `127.0.0.1:--http-port` (connections gauge, readings stored). Prints
//! progress and one final JSON object (`"phase": "result"`) on stdout, one per line.
//!
//! Bounded: connecting stops at `--connect-deadline-s`; the whole run is
//! connect + idle + 15 s at most. Only 127.0.0.x addresses are used.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};

const TOPIC: &str = "wattline/readings";

#[derive(Clone, Debug)]
struct Cfg {
    port: u16,
    http_port: u16,
    server_pid: u32,
    n: u64,
    devices: u64,
    prefix: String,
    username: String,
    password: String,
    interval: Duration,
    idle: Duration,
    keepalive_s: u16,
    concurrency: usize,
    src_addrs: u64,
    connect_deadline: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: mqttconn --port P --http-port H --server-pid PID --password TOKEN [--n 10000] \
         [--devices 1000] [--prefix meter-] [--username bench] [--interval-s 10] [--idle-s 20] \
         [--keepalive-s 60] [--concurrency 256] [--src-addrs auto] [--connect-deadline-s 600]"
    );
    std::process::exit(2)
}

fn parse_args() -> Cfg {
    let mut c = Cfg {
        port: 0,
        http_port: 0,
        server_pid: 0,
        n: 10_000,
        devices: 1000,
        prefix: "meter-".into(),
        username: "bench".into(),
        password: String::new(),
        interval: Duration::from_secs(10),
        idle: Duration::from_secs(20),
        keepalive_s: 60,
        concurrency: 256,
        src_addrs: 0,
        connect_deadline: Duration::from_secs(600),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let key = args[i].as_str();
        let val = args.get(i + 1).cloned().unwrap_or_else(|| usage());
        let num = || val.parse::<u64>().unwrap_or_else(|_| usage());
        let secs = || Duration::from_secs_f64(val.parse::<f64>().unwrap_or_else(|_| usage()));
        match key {
            "--port" => c.port = num() as u16,
            "--http-port" => c.http_port = num() as u16,
            "--server-pid" => c.server_pid = num() as u32,
            "--n" => c.n = num(),
            "--devices" => c.devices = num().max(1),
            "--prefix" => c.prefix = val.clone(),
            "--username" => c.username = val.clone(),
            "--password" => c.password = val.clone(),
            "--interval-s" => c.interval = secs(),
            "--idle-s" => c.idle = secs(),
            "--keepalive-s" => c.keepalive_s = num() as u16,
            "--concurrency" => c.concurrency = num().max(1) as usize,
            "--src-addrs" => c.src_addrs = if val == "auto" { 0 } else { num() },
            "--connect-deadline-s" => c.connect_deadline = secs(),
            _ => usage(),
        }
        i += 2;
    }
    if c.port == 0 || c.http_port == 0 || c.server_pid == 0 || c.password.is_empty() {
        usage();
    }
    if c.src_addrs == 0 {
        // 1,000 connections per source address. One address has ~28,000 ephemeral ports, but
        // bind() to port 0 searches them (odd ports first) and gets slow long before they run
        // out: 19,000 connections over 2 addresses took 28 s, 23 s of it kernel time in
        // this tool, and 4 s over 20 addresses.
        c.src_addrs = c.n.div_ceil(1_000).max(1);
    }
    if c.src_addrs > 250 {
        eprintln!("at most 250 source addresses (127.0.0.2 ..= 127.0.0.251)");
        std::process::exit(2);
    }
    c
}

// ------------------------------------------------------------------------- MQTT encoding

fn put_remaining_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// CONNECT, MQTT 3.1.1, clean session, username and password.
fn connect_packet(client_id: &str, username: &str, password: &str, keepalive_s: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + password.len());
    put_str(&mut body, b"MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(0x80 | 0x40 | 0x02); // username, password, clean session
    body.extend_from_slice(&keepalive_s.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    put_str(&mut body, username.as_bytes());
    put_str(&mut body, password.as_bytes());
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(0x10);
    put_remaining_length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// PUBLISH at QoS 0 (no packet id).
fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let len = 2 + topic.len() + payload.len();
    let mut out = Vec::with_capacity(len + 5);
    out.push(0x30);
    put_remaining_length(&mut out, len);
    put_str(&mut out, topic.as_bytes());
    out.extend_from_slice(payload);
    out
}

const PINGREQ: [u8; 2] = [0xC0, 0x00];
const DISCONNECT: [u8; 2] = [0xE0, 0x00];

// ------------------------------------------------------------------------- measurement

fn proc_status(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, in seconds.
fn proc_cpu_s(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0) // USER_HZ is 100 on Linux
}

/// The server's /metrics as (name, value) pairs (unlabelled series only).
async fn metrics(http_port: u16) -> Vec<(String, f64)> {
    let fetch = async {
        let mut s = TcpStream::connect(("127.0.0.1", http_port)).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = match tokio::time::timeout(Duration::from_secs(20), fetch).await {
        Ok(Ok(b)) => b,
        _ => return Vec::new(),
    };
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with("wattline_") && !l.contains('{'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn metric(m: &[(String, f64)], name: &str) -> Option<f64> {
    m.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
}

#[derive(Default)]
struct Stats {
    connected: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    sent: AtomicU64,
    pings: AtomicU64,
    server_closed: AtomicU64,
    finished: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Stats {
    fn error(&self, e: String) {
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(e);
        }
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

// ------------------------------------------------------------------------- one connection

async fn open(i: u64, cfg: &Cfg) -> Result<TcpStream, String> {
    let src = Ipv4Addr::new(127, 0, 0, 2 + (i % cfg.src_addrs) as u8);
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    sock.bind(SocketAddr::V4(SocketAddrV4::new(src, 0)))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let server = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, cfg.port));
    let mut stream = sock
        .connect(server)
        .await
        .map_err(|e| format!("connect from {src}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let pkt = connect_packet(
        &format!("mqttconn-{i}"),
        &cfg.username,
        &cfg.password,
        cfg.keepalive_s,
    );
    stream
        .write_all(&pkt)
        .await
        .map_err(|e| format!("write CONNECT: {e}"))?;
    let mut ack = [0u8; 4];
    stream
        .read_exact(&mut ack)
        .await
        .map_err(|e| format!("read CONNACK: {e}"))?;
    if ack[0] != 0x20 || ack[1] != 2 {
        return Err(format!("not a CONNACK: {ack:02x?}"));
    }
    if ack[3] != 0 {
        return Err(format!("CONNACK return code {}", ack[3]));
    }
    Ok(stream)
}

async fn connection(
    i: u64,
    cfg: Arc<Cfg>,
    stats: Arc<Stats>,
    gate: Arc<Semaphore>,
    epoch: Instant,
    deadline: Instant,
    mut stop: watch::Receiver<bool>,
) {
    let mut stream = None;
    {
        let _permit = gate.acquire().await;
        for attempt in 0..2 {
            if Instant::now() >= deadline || *stop.borrow() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(30), open(i, &cfg)).await {
                Ok(Ok(s)) => {
                    stream = Some(s);
                    break;
                }
                Ok(Err(e)) => {
                    if e.starts_with("CONNACK") {
                        stats.refused.fetch_add(1, Relaxed);
                    }
                    stats.error(e);
                }
                Err(_) => stats.error("CONNECT/CONNACK took over 30 s".into()),
            }
            if attempt == 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let Some(mut stream) = stream else {
        stats.failed.fetch_add(1, Relaxed);
        stats.finished.fetch_add(1, Relaxed);
        return;
    };
    stats.connected.fetch_add(1, Relaxed);
    let publishing = !cfg.interval.is_zero();
    let period = if publishing {
        cfg.interval
    } else {
        Duration::from_secs(u64::from(cfg.keepalive_s.max(2) / 2))
    };
    // Connection i publishes at epoch + i/n of the period (+ whole periods): all
    // connections together spread their messages evenly over each period.
    let phase = period.mul_f64(i as f64 / cfg.n as f64);
    let first = epoch + phase;
    let since = Instant::now().saturating_duration_since(first);
    let periods = since.as_nanos().div_ceil(period.as_nanos());
    let mut next = first + period * periods as u32;
    let device = format!("{}{:04}", cfg.prefix, i % cfg.devices + 1);
    let (mut rd, mut wr) = stream.split();
    let mut buf = [0u8; 64];
    let mut power = 100.0 + (i % 997) as f64;
    let end = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {
                next += period;
                let now = Instant::now();
                if next < now {
                    next = now + period;
                }
                let res = if publishing {
                    power += 0.5;
                    let payload = format!(
                        "{{\"device\":\"{device}\",\"ts\":{},\"power\":{power:.1}}}",
                        now_ms()
                    );
                    let r = wr.write_all(&publish_packet(TOPIC, payload.as_bytes())).await;
                    if r.is_ok() {
                        stats.sent.fetch_add(1, Relaxed);
                    }
                    r
                } else {
                    let r = wr.write_all(&PINGREQ).await;
                    if r.is_ok() {
                        stats.pings.fetch_add(1, Relaxed);
                    }
                    r
                };
                if let Err(e) = res {
                    stats.error(format!("write: {e}"));
                    break false;
                }
            }
            r = rd.read(&mut buf) => match r {
                Ok(0) => break false,
                Ok(_) => {} // PINGRESP
                Err(e) => {
                    stats.error(format!("read: {e}"));
                    break false;
                }
            },
            _ = stop.changed() => break true,
        }
    };
    if end {
        let _ = tokio::time::timeout(Duration::from_secs(2), wr.write_all(&DISCONNECT)).await;
    } else {
        stats.server_closed.fetch_add(1, Relaxed);
    }
    stats.finished.fetch_add(1, Relaxed);
}

// ------------------------------------------------------------------------- main

fn kb(pid: u32, key: &str) -> String {
    proc_status(pid, key).map_or("null".into(), |v| v.to_string())
}

fn opt(v: Option<f64>) -> String {
    v.map_or("null".into(), |v| format!("{v}"))
}

fn main() {
    let cfg = Arc::new(parse_args());
    // 100,000 sockets: raise the soft open-file limit to the hard one.
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    if nofile < cfg.n + 100 {
        eprintln!(
            "open-file limit {nofile} is below {} connections; raise the hard limit (prlimit --nofile=N:N)",
            cfg.n
        );
        std::process::exit(3);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(cfg, nofile));
}

async fn run(cfg: Arc<Cfg>, nofile: u64) {
    let pid = cfg.server_pid;
    let t0 = Instant::now();
    let m0 = metrics(cfg.http_port).await;
    let rss0 = proc_status(pid, "VmRSS:");
    let cpu0 = proc_cpu_s(pid);
    println!(
        "{{\"phase\":\"before\",\"n\":{},\"src_addrs\":{},\"nofile\":{nofile},\"rss_kb\":{},\"connections\":{}}}",
        cfg.n,
        cfg.src_addrs,
        kb(pid, "VmRSS:"),
        opt(metric(&m0, "wattline_mqtt_connections"))
    );
    let stats = Arc::new(Stats::default());
    let gate = Arc::new(Semaphore::new(cfg.concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);
    let epoch = Instant::now();
    let deadline = epoch + cfg.connect_deadline;
    for i in 0..cfg.n {
        tokio::spawn(connection(
            i,
            cfg.clone(),
            stats.clone(),
            gate.clone(),
            epoch,
            deadline,
            stop_rx.clone(),
        ));
    }
    // Connecting, with a progress line every 2 s.
    let mut last_print = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let done = stats.connected.load(Relaxed) + stats.failed.load(Relaxed);
        if last_print.elapsed() >= Duration::from_secs(2) || done >= cfg.n {
            last_print = Instant::now();
            println!(
                "{{\"phase\":\"connecting\",\"t\":{:.1},\"connected\":{},\"failed\":{},\"rss_kb\":{}}}",
                epoch.elapsed().as_secs_f64(),
                stats.connected.load(Relaxed),
                stats.failed.load(Relaxed),
                kb(pid, "VmRSS:")
            );
        }
        if done >= cfg.n || Instant::now() >= deadline + Duration::from_secs(35) {
            break;
        }
    }
    let connect_s = epoch.elapsed().as_secs_f64();
    let connected = stats.connected.load(Relaxed);
    let rss_connected = proc_status(pid, "VmRSS:");
    // Idle (publishing every interval) for cfg.idle; the window's rates are measured.
    let m1 = metrics(cfg.http_port).await;
    let sent1 = stats.sent.load(Relaxed);
    let cpu1 = proc_cpu_s(pid);
    let w0 = Instant::now();
    tokio::time::sleep(cfg.idle).await;
    let window = w0.elapsed().as_secs_f64();
    let sent2 = stats.sent.load(Relaxed);
    let cpu2 = proc_cpu_s(pid);
    let rss1 = proc_status(pid, "VmRSS:");
    let anon1 = proc_status(pid, "RssAnon:");
    let m2 = metrics(cfg.http_port).await;
    let conns = metric(&m2, "wattline_mqtt_connections");
    let stored = |m: &[(String, f64)]| metric(m, "wattline_mqtt_readings_total");
    let stored_window = match (stored(&m1), stored(&m2)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let server_closed_idle = stats.server_closed.load(Relaxed);
    // Close everything (DISCONNECT), then see what memory the server gives back.
    let _ = stop_tx.send(true);
    let close_deadline = Instant::now() + Duration::from_secs(10);
    while stats.finished.load(Relaxed) < cfg.n && Instant::now() < close_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_closed = proc_status(pid, "VmRSS:");
    let m3 = metrics(cfg.http_port).await;
    let per_conn = match (rss0, rss1) {
        (Some(a), Some(b)) if connected > 0 => {
            Some((b as f64 - a as f64) * 1024.0 / connected as f64)
        }
        _ => None,
    };
    let pub_rate = (sent2 - sent1) as f64 / window;
    let first_error = stats
        .first_error
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_default();
    println!(
        "{{\"phase\":\"result\",\"n\":{},\"connected\":{connected},\"failed\":{},\"refused\":{},\
\"connect_s\":{connect_s:.2},\"connects_per_s\":{:.0},\"idle_s\":{window:.2},\
\"rss_before_kb\":{},\"rss_connected_kb\":{},\"rss_after_idle_kb\":{},\"rss_anon_after_idle_kb\":{},\
\"vm_hwm_kb\":{},\"rss_after_close_kb\":{},\"bytes_per_connection\":{},\
\"connections_gauge\":{},\"connections_gauge_after_close\":{},\"gauge_matches\":{},\
\"publishes_sent_in_window\":{},\"publish_rate_per_s\":{pub_rate:.1},\
\"target_publish_rate_per_s\":{:.1},\"readings_stored_in_window\":{},\"stored_rate_per_s\":{},\
\"server_cpu_s_in_window\":{},\"server_cpu_s_connecting\":{},\"server_closed_during_idle\":{server_closed_idle},\
\"pings\":{},\"first_error\":{:?},\"wall_s\":{:.1}}}",
        cfg.n,
        stats.failed.load(Relaxed),
        stats.refused.load(Relaxed),
        connected as f64 / connect_s.max(1e-9),
        opt(rss0.map(|v| v as f64)),
        opt(rss_connected.map(|v| v as f64)),
        opt(rss1.map(|v| v as f64)),
        opt(anon1.map(|v| v as f64)),
        kb(pid, "VmHWM:"),
        opt(rss_closed.map(|v| v as f64)),
        opt(per_conn.map(|v| v.round())),
        opt(conns),
        opt(metric(&m3, "wattline_mqtt_connections")),
        conns == Some(connected as f64),
        sent2 - sent1,
        if cfg.interval.is_zero() { 0.0 } else { connected as f64 / cfg.interval.as_secs_f64() },
        opt(stored_window),
        opt(stored_window.map(|s| ((s / window) * 10.0).round() / 10.0)),
        opt(match (cpu1, cpu2) {
            (Some(a), Some(b)) => Some(((b - a) * 100.0).round() / 100.0),
            _ => None,
        }),
        opt(match (cpu0, cpu1) {
            (Some(a), Some(b)) => Some(((b - a) * 100.0).round() / 100.0),
            _ => None,
        }),
        stats.pings.load(Relaxed),
        first_error,
        t0.elapsed().as_secs_f64(),
    );
}
