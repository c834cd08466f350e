//! The listener in-process: a real SQLite store and engine, meters on loopback sockets.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use wattline_domain::{ChannelName, DeviceId, Limits, Quantity, Site, SiteId, TsMs};
use wattline_ingest::{Engine, EngineConfig, EngineTasks};
use wattline_storage::sqlite::SqliteStore;
use wattline_tcp::{TcpConfig, TcpMeters};

struct Rig {
    engine: Engine,
    tasks: Option<EngineTasks>,
    meters: TcpMeters,
    addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    serve: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(config: TcpConfig) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("w.db")).unwrap();
        let site = Site {
            id: SiteId::parse("home").unwrap(),
            name: "Home".into(),
            timezone: "Europe/Zurich".into(),
            created_at: TsMs::now(),
        };
        wattline_storage::Store::create_site(&store, &site)
            .await
            .unwrap();
        let (engine, tasks) = Engine::start(Arc::new(store), EngineConfig::default())
            .await
            .unwrap();
        let meters = TcpMeters::new(engine.clone(), Limits::default(), config)
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = watch::channel(false);
        let serve = tokio::spawn(meters.clone().serve(listener, rx));
        Rig {
            engine,
            tasks: Some(tasks),
            meters,
            addr,
            stop,
            serve: Some(serve),
            _dir: dir,
        }
    }

    async fn open_enrollment(&self, open: bool) {
        assert!(self
            .engine
            .store()
            .set_tcp_enrollment(&SiteId::parse("home").unwrap(), open)
            .await
            .unwrap());
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    fn latest_energy(&self, device: &str) -> Option<(TsMs, f64)> {
        let d = DeviceId::parse(device).unwrap();
        let s = self
            .engine
            .registry()
            .series(&d, &ChannelName::default_channel())?;
        let p = self.engine.latest_of(s)?;
        Some((p.ts, p.values.get(Quantity::Energy)?))
    }

    /// Stops like the binary does: listener first, then the engine (which waits for every
    /// engine handle, so a handle kept by the listener would hang here).
    async fn stop(mut self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.serve.take().unwrap())
            .await
            .expect("listener stops")
            .unwrap();
        let tasks = self.tasks.take().unwrap();
        drop(self.meters);
        drop(self.engine);
        tokio::time::timeout(Duration::from_secs(10), tasks.shutdown())
            .await
            .expect("engine stops: no handle left behind");
    }
}

/// Reads one answer: whatever arrives within a short while after the first bytes.
async fn answer(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap_or(0); // a reset counts as closed
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// Reads until `lines` newline-terminated answers are in.
async fn answers(s: &mut TcpStream, lines: usize) -> Vec<String> {
    let mut text = String::new();
    while text.matches('\n').count() < lines {
        let a = answer(s).await;
        assert!(!a.is_empty(), "closed after {text:?}");
        text.push_str(&a);
    }
    text.lines().map(str::to_owned).collect()
}

fn reading(id: &str, kwh: f64, dt: &str) -> String {
    format!(r#"{{"id": "{id}", "consumption": {kwh}, "datetime": "{dt}", "type": "/spent"}}"#)
}

fn local_now(offset_s: i64) -> String {
    let tz = jiff::tz::TimeZone::get("Europe/Zurich").unwrap();
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(offset_s);
    t.to_zoned(tz)
        .datetime()
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_closed_refuses_and_closes() {
    let rig = Rig::start(TcpConfig::default()).await;
    let mut s = rig.connect().await;
    s.write_all(br#"{"id": 0}"#).await.unwrap();
    let a = answer(&mut s).await;
    assert!(a.contains("enrollment_closed"), "{a}");
    // Then the server closes.
    assert_eq!(answer(&mut s).await, "");
    assert!(rig
        .meters
        .stats()
        .render()
        .contains("wattline_tcp_rejected_total{code=\"enrollment_closed\"} 1"));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_readings_batches_errors_and_reconnects() {
    let rig = Rig::start(TcpConfig::default()).await;
    rig.open_enrollment(true).await;
    let mut s = rig.connect().await;
    s.write_all(br#"{"id": 0}"#).await.unwrap();
    assert_eq!(answer(&mut s).await, "1");
    let (t1, t2, t3) = (local_now(-30), local_now(-20), local_now(-10));
    s.write_all(reading("1", 1.0, &t1).as_bytes())
        .await
        .unwrap();
    assert_eq!(answer(&mut s).await, "{\"ok\":true,\"id\":\"1\"}\n");
    assert_eq!(rig.latest_energy("tcp-1").unwrap().1, 1.0);
    // Two in one write: two answers, in order.
    let two = format!("{}{}", reading("1", 2.0, &t2), reading("1", 3.0, &t3));
    s.write_all(two.as_bytes()).await.unwrap();
    let a = answers(&mut s, 2).await;
    assert!(a.iter().all(|l| l.contains("\"ok\":true")), "{a:?}");
    assert_eq!(rig.latest_energy("tcp-1").unwrap().1, 3.0);
    // One split across writes.
    let r = reading("1", 4.0, &local_now(-5));
    let (x, y) = r.as_bytes().split_at(17);
    s.write_all(x).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(y).await.unwrap();
    assert!(answer(&mut s).await.contains("\"ok\":true"));
    // A malformed one, an unknown id, then a good one: the connection stays usable.
    s.write_all(br#"{"id": "1", "consumption": 5.0,}"#)
        .await
        .unwrap();
    assert!(answer(&mut s).await.contains("bad_json"));
    s.write_all(reading("99", 1.0, &local_now(-4)).as_bytes())
        .await
        .unwrap();
    assert!(answer(&mut s).await.contains("unknown_meter"));
    s.write_all(reading("1", 5.0, &local_now(-3)).as_bytes())
        .await
        .unwrap();
    assert!(answer(&mut s).await.contains("\"ok\":true"));
    assert_eq!(rig.latest_energy("tcp-1").unwrap().1, 5.0);
    drop(s);
    // A reconnecting meter keeps its id, no handshake needed; a new handshake gets a new id.
    let mut s = rig.connect().await;
    s.write_all(reading("1", 6.0, &local_now(-2)).as_bytes())
        .await
        .unwrap();
    assert!(answer(&mut s).await.contains("\"ok\":true"));
    s.write_all(br#"{"id": "0"}"#).await.unwrap();
    assert_eq!(answer(&mut s).await, "2");
    let device = rig
        .engine
        .store()
        .get_device(&DeviceId::parse("tcp-2").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(device.name, "Socket meter 2");
    assert_eq!(device.labels.get("enrolled").unwrap(), "tcp");
    assert_eq!(device.site.as_str(), "home");
    let stats = rig.meters.stats().render();
    assert!(stats.contains("wattline_tcp_readings_total 6"), "{stats}");
    assert!(stats.contains("wattline_tcp_enrolled_total 2"), "{stats}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_not_enrolled_over_tcp_are_not_writable_by_number() {
    let rig = Rig::start(TcpConfig::default()).await;
    let device = wattline_domain::Device {
        id: DeviceId::parse("tcp-1").unwrap(),
        name: "made by hand".into(),
        site: SiteId::parse("home").unwrap(),
        kind: "meter".into(),
        labels: Default::default(),
        created_at: TsMs::now(),
    };
    rig.engine
        .store()
        .create_device(&device, "hash")
        .await
        .unwrap();
    rig.engine.registry().put_device(&device);
    let mut s = rig.connect().await;
    s.write_all(reading("1", 1.0, &local_now(-1)).as_bytes())
        .await
        .unwrap();
    assert!(answer(&mut s).await.contains("unknown_meter"));
    // Made after start, so the handshake's first pick (1) collides; it skips past it.
    rig.open_enrollment(true).await;
    s.write_all(br#"{"id": 0}"#).await.unwrap();
    assert_eq!(answer(&mut s).await, "2");
    s.write_all(reading("2", 1.0, &local_now(-1)).as_bytes())
        .await
        .unwrap();
    assert!(answer(&mut s).await.contains("\"ok\":true"));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_an_object_is_answered_incomplete_and_silence_closes() {
    let rig = Rig::start(TcpConfig {
        partial_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(2),
        ..TcpConfig::default()
    })
    .await;
    rig.open_enrollment(true).await;
    let mut s = rig.connect().await;
    s.write_all(br#"{"id": "#).await.unwrap();
    assert!(answer(&mut s).await.contains("incomplete"));
    s.write_all(br#"{"id": 0}"#).await.unwrap();
    assert_eq!(answer(&mut s).await, "1");
    let t = std::time::Instant::now();
    assert_eq!(answer(&mut s).await, "", "closed after the idle timeout");
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_maximum_are_told_and_closed() {
    let rig = Rig::start(TcpConfig {
        max_connections: 2,
        ..TcpConfig::default()
    })
    .await;
    rig.open_enrollment(true).await;
    let mut a = rig.connect().await;
    let mut b = rig.connect().await;
    // Both are served (the answers prove the server took them).
    a.write_all(br#"{"id": 0}"#).await.unwrap();
    assert_eq!(answer(&mut a).await, "1");
    b.write_all(br#"{"id": 0}"#).await.unwrap();
    assert_eq!(answer(&mut b).await, "2");
    let mut c = rig.connect().await;
    assert!(answer(&mut c).await.contains("too_many_connections"));
    drop(a);
    // A slot frees once the server sees the close.
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut d = rig.connect().await;
        let _ = d.write_all(br#"{"id": 0}"#).await;
        if answer(&mut d).await == "3" {
            ok = true;
            break;
        }
    }
    assert!(ok, "a slot came free");
    drop(b);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_open_connections_leaves_no_engine_handle() {
    let rig = Rig::start(TcpConfig::default()).await;
    rig.open_enrollment(true).await;
    let mut conns = Vec::new();
    for _ in 0..20 {
        let mut s = rig.connect().await;
        s.write_all(br#"{"id": 0}"#).await.unwrap();
        answer(&mut s).await;
        conns.push(s);
    }
    rig.stop().await;
    for mut s in conns {
        assert_eq!(answer(&mut s).await, "", "closed at shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_times_follow_the_site_zone_through_the_autumn_fold() {
    let rig = Rig::start(TcpConfig::default()).await;
    rig.open_enrollment(true).await;
    let mut s = rig.connect().await;
    s.write_all(br#"{"id": 0}"#).await.unwrap();
    assert_eq!(answer(&mut s).await, "1");
    // Zurich, 2026-10-25: 03:00 CEST falls back to 02:00 CET. A meter ticking every 20
    // minutes shows 02:20, 02:40, 02:00, 02:20 ... and each lands 20 minutes after the last.
    let mut got = Vec::new();
    for (k, wall) in [
        "01:40", "02:00", "02:20", "02:40", "02:00", "02:20", "02:40", "03:00",
    ]
    .iter()
    .enumerate()
    {
        let r = reading("1", 10.0 + k as f64, &format!("2026-10-25 {wall}:00"));
        s.write_all(r.as_bytes()).await.unwrap();
        assert!(answer(&mut s).await.contains("\"ok\":true"));
        got.push(rig.latest_energy("tcp-1").unwrap().0);
    }
    let first = TsMs::parse_api("2026-10-24T23:40:00Z").unwrap();
    for (k, t) in got.iter().enumerate() {
        assert_eq!(t.0 - first.0, k as i64 * 20 * 60_000, "{got:?}");
    }
    rig.stop().await;
}
