//! A sink that acknowledges everything at once, to measure the simulator's own ceiling
//! (`bench/run_sim_bench.py`): HTTP (readings and the few admin calls registration makes),
//! MQTT 3.1.1 (CONNACK, PUBACK, PINGRESP) and the socket-meter protocol, each on its own
//! loopback port. It stores nothing and checks nothing beyond framing.
//!
//! ```sh
//! cargo run --release -p wattline-simulator --example instant_sink -- 18080 11883 14005
//! ```
//!
//! It prints `ready` once listening, and on SIGTERM or Ctrl-C one JSON line of counts.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Counts {
    http_requests: AtomicU64,
    http_readings: AtomicU64,
    mqtt_publishes: AtomicU64,
    tcp_messages: AtomicU64,
    tcp_ids: AtomicU64,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn http_conn(stream: TcpStream, counts: Arc<Counts>) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut stream = BufReader::with_capacity(1 << 16, stream);
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    loop {
        // Head.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 16384];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = vec![0u8; (head_end + len - buf.len()).min(1 << 20)];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = &buf[head_end..head_end + len];
        counts.http_requests.fetch_add(1, Relaxed);
        let (status, reply): (&str, &str) = if head.starts_with("post /api/v1/readings") {
            let n = body.windows(5).filter(|w| w == b"\"ts\":").count();
            counts.http_readings.fetch_add(n as u64, Relaxed);
            ("200 OK", "{}")
        } else if head.starts_with("post /write") {
            let n = body.iter().filter(|&&b| b == b'\n').count();
            counts.http_readings.fetch_add(n as u64, Relaxed);
            ("204 No Content", "")
        } else {
            // Registration: one answer with every field the simulator reads.
            let status = if head.starts_with("post ") {
                "201 Created"
            } else {
                "200 OK"
            };
            (
                status,
                r#"{"timezone":"UTC","token":"sink-token","mqtt":{"username":"u","password":"sink-password"}}"#,
            )
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        stream.get_mut().write_all(resp.as_bytes()).await?;
        buf.drain(..head_end + len);
    }
}

async fn mqtt_conn(stream: TcpStream, counts: Arc<Counts>) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(1 << 16, rd);
    let mut out = Vec::new();
    loop {
        let mut first = [0u8; 1];
        if rd.read(&mut first).await? == 0 {
            return Ok(());
        }
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let b = rd.read_u8().await?;
            len |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 || shift > 21 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        rd.read_exact(&mut body).await?;
        match first[0] >> 4 {
            1 => out.extend_from_slice(&[0x20, 0x02, 0x00, 0x00]), // CONNECT -> CONNACK
            3 => {
                counts.mqtt_publishes.fetch_add(1, Relaxed);
                let qos = (first[0] >> 1) & 3;
                if qos > 0 {
                    let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
                    let pkid = [body[2 + tlen], body[3 + tlen]];
                    out.extend_from_slice(&[0x40, 0x02, pkid[0], pkid[1]]);
                }
            }
            12 => out.extend_from_slice(&[0xd0, 0x00]), // PINGREQ -> PINGRESP
            14 => return Ok(()),                        // DISCONNECT
            _ => {}
        }
        // Answer what a read brought in one write, as a broker would.
        if rd.buffer().is_empty() && !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
        }
    }
}

async fn tcp_conn(mut stream: TcpStream, counts: Arc<Counts>) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        // Objects end where the brace depth returns to 0 (no braces inside the strings of
        // the meter's messages).
        let mut depth = 0;
        let mut start = 0;
        let mut consumed = 0;
        for (i, &b) in buf.iter().enumerate() {
            match b {
                b'{' => {
                    if depth == 0 {
                        start = i;
                    }
                    depth += 1;
                }
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        let obj = &buf[start..=i];
                        if find(obj, b"consumption").is_some() {
                            counts.tcp_messages.fetch_add(1, Relaxed);
                            out.extend_from_slice(b"{\"ok\":true}\n");
                        } else {
                            let id = counts.tcp_ids.fetch_add(1, Relaxed) + 1;
                            out.extend_from_slice(id.to_string().as_bytes());
                        }
                        consumed = i + 1;
                    }
                }
                _ => {}
            }
        }
        buf.drain(..consumed);
        stream.write_all(&out).await?;
    }
}

async fn serve<F, Fut>(port: u16, counts: Arc<Counts>, handler: F) -> std::io::Result<()>
where
    F: Fn(TcpStream, Arc<Counts>) -> Fut + Send + Copy + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let c = counts.clone();
            tokio::spawn(async move {
                let _ = handler(s, c).await;
            });
        }
    });
    Ok(())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let ports: Vec<u16> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("port"))
        .collect();
    let [http, mqtt, tcp] = ports[..] else {
        eprintln!("usage: instant_sink HTTP_PORT MQTT_PORT TCP_PORT");
        std::process::exit(2);
    };
    let counts = Arc::new(Counts::default());
    serve(http, counts.clone(), http_conn).await?;
    serve(mqtt, counts.clone(), mqtt_conn).await?;
    serve(tcp, counts.clone(), tcp_conn).await?;
    println!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!(
        "{{\"http_requests\":{},\"http_readings\":{},\"mqtt_publishes\":{},\"tcp_messages\":{}}}",
        counts.http_requests.load(Relaxed),
        counts.http_readings.load(Relaxed),
        counts.mqtt_publishes.load(Relaxed),
        counts.tcp_messages.load(Relaxed)
    );
    Ok(())
}
