//! Live fan-out: each durable commit reaches subscribers as one shared batch; a subscriber
//! that does not read never holds ingest back, it lags and skips.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use wattline_domain::*;
use wattline_ingest::{Engine, EngineConfig};
use wattline_storage::sqlite::SqliteStore;
use wattline_storage::*;

fn readings(n: usize, start: i64) -> Vec<Reading> {
    (0..n)
        .map(|i| Reading {
            device: DeviceId::parse("d").unwrap(),
            channel: ChannelName::default(),
            ts: TsMs(start + i as i64 * 1000),
            values: Values::new().with(Quantity::Power, i as f64),
        })
        .collect()
}

async fn engine(dir: &std::path::Path) -> (Engine, wattline_ingest::EngineTasks) {
    let store = SqliteStore::open(dir.join("w.db")).unwrap();
    let site = Site {
        id: SiteId::parse("s").unwrap(),
        name: "s".into(),
        timezone: "UTC".into(),
        created_at: TsMs(0),
    };
    store.create_site(&site).await.unwrap();
    let device = Device {
        id: DeviceId::parse("d").unwrap(),
        name: "d".into(),
        site: site.id.clone(),
        kind: "meter".into(),
        labels: Default::default(),
        created_at: TsMs(0),
    };
    store.create_device(&device, "h").await.unwrap();
    Engine::start(Arc::new(store), EngineConfig::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_reach_subscribers_once_per_batch_and_slow_ones_skip() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, tasks) = engine(dir.path()).await;
    let start = TsMs::now().0 - 3_600_000;

    // Nobody listens: writes work as before.
    engine.write(readings(3, start)).await.unwrap();

    let mut rx = engine.subscribe_live().expect("live is open");
    let mut idle = engine.subscribe_live().expect("live is open");
    engine.write(readings(5, start + 10_000)).await.unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("a batch within 2 s")
        .unwrap();
    assert_eq!(batch.readings().len(), 5, "one message for the whole write");
    assert_eq!(batch.readings()[4].values.get(Quantity::Power), Some(4.0));

    // A subscriber that never reads does not slow writes down: far more commits than the
    // channel holds all complete, and it is told how many it missed.
    let t = std::time::Instant::now();
    for i in 0..400 {
        engine
            .write(readings(1, start + 100_000 + i * 1000))
            .await
            .unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(60));
    assert!(matches!(idle.recv().await, Err(RecvError::Lagged(_))));

    // Closing ends every stream, and later subscriptions are refused.
    engine.close_live();
    let mut closed = false;
    for _ in 0..1000 {
        if let Err(RecvError::Closed) = rx.recv().await {
            closed = true;
            break;
        }
    }
    assert!(closed);
    assert!(engine.subscribe_live().is_none());
    engine.write(readings(1, start + 900_000)).await.unwrap();
    drop(engine);
    tasks.shutdown().await;
}
