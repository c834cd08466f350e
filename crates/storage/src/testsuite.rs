//! The one behavioural suite every [`Store`] backend passes.
//!
//! Each check is a `pub async fn(&dyn Store)`, or, for the checks that restart the store, a
//! `pub async fn(Arc<dyn Store>, Reopen)`; [`store_suite!`] turns both lists into one
//! `#[tokio::test]` per check for a backend:
//!
//! ```ignore
//! mod pg {
//!     store_suite!(pg, crate::postgres::test_store().await,
//!         crate::postgres::reopenable_test_store().await);
//! }
//! ```
//!
//! The constructor expressions yield `Option<Arc<dyn Store>>` and `Option<Reopenable>`:
//! `None` skips the test (a backend whose server isn't there; the constructor itself panics
//! instead when `CI` is set). Every test gets a fresh, empty store.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use wattline_domain::energy::EnergyDelta;
use wattline_domain::{
    Agg, ApiToken, AuditEvent, BucketTier, Device, DeviceId, Email, Point, QStat, Quantity, Role,
    SeriesId, Session, Site, SiteId, TokenScope, TsMs, User, UserId, Values,
};

use crate::{
    AuditQuery, Binding, IngestToken, PendingDevice, Retention, RollupRow, RollupWrite,
    SeriesPoints, Store, StoreError,
};

/// Opens the data of a store again, as a restart does. The caller drops the first store
/// before, so that nothing can come from its memory.
pub type Reopen = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send>> + Send>;
/// A fresh, empty store and the way to open its data again.
pub type Reopenable = (Arc<dyn Store>, Reopen);

/// Expands to one `#[tokio::test]` per suite check, each on a fresh store from `$ctor`
/// (an expression of type `Option<Arc<dyn Store>>`, evaluated inside the async test), or,
/// for the restart checks, from `$reopenable` (`Option<Reopenable>`).
macro_rules! store_suite {
    ($backend:ident, $ctor:expr, $reopenable:expr) => {
        store_suite!(@reopen $backend, $reopenable;
            mqtt_state_survives_reopen,
            tcp_enrollment_survives_reopen,
            accounts_survive_reopen,
        );
        store_suite!(@tests $backend, $ctor;
            sites_crud,
            devices_crud_and_tokens,
            delete_site_with_devices_conflicts,
            delete_device_cascades,
            ingest_tokens,
            series_ids_are_stable_and_distinct,
            append_and_read_raw_bounds,
            read_raw_before_newest_first,
            duplicates_stored_once,
            upsert_out_of_order_keeps_order,
            latest_per_series,
            f64_round_trip_is_bit_exact,
            timestamps_round_trip_exactly,
            rollups_merge_replace_watermarks,
            read_rollups_bounds_per_tier,
            retention_by_tier,
            months_and_years,
            large_append_reads_back_exactly,
            disk_bytes_grows,
            maintain_is_idempotent,
            concurrent_writers,
            empty_writes_are_noops,
            append_out_of_order_overlays,
            mqtt_credentials,
            device_bindings,
            pending_devices_merge,
            rejected_identities,
            tcp_enrollment,
            users_crud,
            delete_user_cascades,
            delete_site_drops_user_assignment,
            sessions,
            sessions_purge_expired,
            api_tokens,
            audit_log,
        );
    };
    (@reopen $backend:ident, $ctor:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let opened: Option<$crate::testsuite::Reopenable> = $ctor;
                let Some((store, reopen)) = opened else {
                    eprintln!("{}::{} skipped: backend unavailable",
                        stringify!($backend), stringify!($check));
                    return;
                };
                $crate::testsuite::$check(store, reopen).await;
            }
        )*
    };
    (@tests $backend:ident, $ctor:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let store: Option<::std::sync::Arc<dyn $crate::Store>> = $ctor;
                let Some(store) = store else {
                    eprintln!("{}::{} skipped: backend unavailable",
                        stringify!($backend), stringify!($check));
                    return;
                };
                $crate::testsuite::$check(&*store).await;
            }
        )*
    };
}

// ---- fixtures

/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;
const SEC: i64 = 1_000;
const MIN: i64 = TsMs::MINUTE;
const HOUR: i64 = TsMs::HOUR;
const DAY: i64 = TsMs::DAY;

fn site(id: &str) -> Site {
    Site {
        id: SiteId::parse(id).unwrap(),
        name: format!("Site {id}"),
        timezone: "Europe/Zurich".into(),
        created_at: TsMs(T0 + 123),
    }
}

fn device(id: &str, site: &str) -> Device {
    Device {
        id: DeviceId::parse(id).unwrap(),
        name: format!("Device {id}"),
        site: SiteId::parse(site).unwrap(),
        kind: "meter".into(),
        labels: BTreeMap::from([
            ("room".to_owned(), "kitchen".to_owned()),
            ("phase".to_owned(), "L1 \"quoted\" ü".to_owned()),
        ]),
        created_at: TsMs(T0 + 456),
    }
}

fn did(id: &str) -> DeviceId {
    DeviceId::parse(id).unwrap()
}

fn sid(id: &str) -> SiteId {
    SiteId::parse(id).unwrap()
}

/// Creates site `home` (if needed) and device `dev`, returning the series of `channels`.
async fn series_of(store: &dyn Store, dev: &str, channels: &[&str]) -> Vec<SeriesId> {
    if store.get_site(&sid("home")).await.unwrap().is_none() {
        store.create_site(&site("home")).await.unwrap();
    }
    store
        .create_device(&device(dev, "home"), &format!("hash-{dev}"))
        .await
        .unwrap();
    let mut out = Vec::new();
    for ch in channels {
        out.push(store.series_id(&did(dev), ch).await.unwrap());
    }
    out
}

async fn one_series(store: &dyn Store) -> SeriesId {
    series_of(store, "meter1", &["main"]).await[0]
}

fn pt(ts: i64, values: &[(Quantity, f64)]) -> Point {
    let mut v = Values::new();
    for &(q, x) in values {
        v.set(q, x);
    }
    Point {
        ts: TsMs(ts),
        values: v,
    }
}

fn power(ts: i64, w: f64) -> Point {
    pt(ts, &[(Quantity::Power, w)])
}

/// A realistic 4-field reading.
fn reading(ts: i64, i: usize) -> Point {
    let x = i as f64;
    pt(
        ts,
        &[
            (Quantity::Voltage, 230.0 + (x * 0.37).sin()),
            (Quantity::Current, 1.5 + x / 1_000.0),
            (Quantity::Power, 345.25 + x * 0.125),
            (Quantity::Energy, 1_000.0 + x * 0.000_1),
        ],
    )
}

fn batch(series: SeriesId, points: Vec<Point>) -> Vec<SeriesPoints> {
    vec![SeriesPoints { series, points }]
}

fn ts_of(points: &[Point]) -> Vec<i64> {
    points.iter().map(|p| p.ts.0).collect()
}

/// Points equal value for value, bit for bit.
fn assert_points_eq(got: &[Point], want: &[Point], ctx: &str) {
    assert_eq!(ts_of(got), ts_of(want), "{ctx}: timestamps");
    for (g, w) in got.iter().zip(want) {
        for q in Quantity::ALL {
            assert_eq!(
                g.values.get(q).map(f64::to_bits),
                w.values.get(q).map(f64::to_bits),
                "{ctx}: {} at {} (got {:?}, want {:?})",
                q.field(),
                g.ts.0,
                g.values.get(q),
                w.values.get(q)
            );
        }
    }
}

fn approx(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Rollups equal up to the rounding of `sum` (stored as avg by some backends).
fn assert_agg_eq(got: &Agg, want: &Agg, ctx: &str) {
    assert_eq!(got.last_ts, want.last_ts, "{ctx}: last_ts");
    assert!(
        approx(got.energy_import_kwh, want.energy_import_kwh),
        "{ctx}: import {} vs {}",
        got.energy_import_kwh,
        want.energy_import_kwh
    );
    assert!(
        approx(got.energy_export_kwh, want.energy_export_kwh),
        "{ctx}: export {} vs {}",
        got.energy_export_kwh,
        want.energy_export_kwh
    );
    for q in Quantity::ALL {
        let (g, w) = (got.stat(q), want.stat(q));
        let ctx = format!("{ctx}: {}", q.field());
        assert_eq!(g.n, w.n, "{ctx}: n");
        if w.n > 0 {
            assert!(approx(g.sum, w.sum), "{ctx}: sum {} vs {}", g.sum, w.sum);
            // Rollup statistics compare as numbers: SQLite keeps a REAL -0.0 as the integer 0,
            // and the sign of a zero average or minimum carries no meaning.
            assert_eq!(g.min, w.min, "{ctx}: min {} vs {}", g.min, w.min);
            assert_eq!(g.max, w.max, "{ctx}: max {} vs {}", g.max, w.max);
            assert_eq!(g.last, w.last, "{ctx}: last {} vs {}", g.last, w.last);
        }
    }
}

/// A bucket part built the way the engine builds one.
fn agg_of(points: &[Point], import_kwh: f64) -> Agg {
    let mut a = Agg::default();
    for p in points {
        a.add(p.ts, &p.values, &EnergyDelta::default());
    }
    a.energy_import_kwh = import_kwh;
    a
}

fn row(series: SeriesId, bucket: i64, agg: Agg) -> RollupRow {
    RollupRow {
        series,
        bucket: TsMs(bucket),
        agg,
    }
}

fn is_conflict<T: std::fmt::Debug>(r: crate::Result<T>) -> bool {
    matches!(r, Err(StoreError::Conflict(_)))
}

// ---- catalog

pub async fn sites_crud(store: &dyn Store) {
    assert!(store.list_sites().await.unwrap().is_empty());
    let (a, b) = (site("a-site"), site("b-site"));
    store.create_site(&b).await.unwrap();
    store.create_site(&a).await.unwrap();
    assert_eq!(store.get_site(&a.id).await.unwrap(), Some(a.clone()));
    let mut listed = store.list_sites().await.unwrap();
    listed.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(listed, vec![a.clone(), b.clone()]);

    let mut dup = a.clone();
    dup.name = "another name".into();
    let r = store.create_site(&dup).await;
    assert!(is_conflict(r), "duplicate site id must conflict");
    assert_eq!(store.get_site(&a.id).await.unwrap().unwrap().name, a.name);

    let mut changed = a.clone();
    changed.name = "Holiday home".into();
    changed.timezone = "America/New_York".into();
    assert!(store.update_site(&changed).await.unwrap());
    assert_eq!(store.get_site(&a.id).await.unwrap(), Some(changed));

    let ghost = site("ghost");
    assert!(!store.update_site(&ghost).await.unwrap());
    assert_eq!(store.get_site(&ghost.id).await.unwrap(), None);
    assert!(!store.delete_site(&ghost.id).await.unwrap());

    assert!(store.delete_site(&b.id).await.unwrap());
    assert_eq!(store.get_site(&b.id).await.unwrap(), None);
    assert_eq!(store.list_sites().await.unwrap().len(), 1);
}

pub async fn devices_crud_and_tokens(store: &dyn Store) {
    store.create_site(&site("home")).await.unwrap();
    store.create_site(&site("cabin")).await.unwrap();
    let d1 = device("plug-1", "home");
    let mut d2 = device("plug-2", "home");
    d2.labels.clear();
    store.create_device(&d1, "hash-1").await.unwrap();
    store.create_device(&d2, "hash-2").await.unwrap();
    assert_eq!(store.get_device(&d1.id).await.unwrap(), Some(d1.clone()));
    assert_eq!(store.get_device(&d2.id).await.unwrap(), Some(d2.clone()));
    let mut listed = store.list_devices().await.unwrap();
    listed.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(listed, vec![d1.clone(), d2.clone()]);

    // Conflicts: the id, and the token hash (a token names exactly one device).
    assert!(is_conflict(store.create_device(&d1, "hash-other").await));
    let d3 = device("plug-3", "home");
    assert!(is_conflict(store.create_device(&d3, "hash-1").await));
    assert_eq!(store.get_device(&d3.id).await.unwrap(), None);

    // Token lookup by hash.
    assert_eq!(
        store.device_by_token("hash-1").await.unwrap(),
        Some(d1.id.clone())
    );
    assert_eq!(
        store.device_by_token("hash-2").await.unwrap(),
        Some(d2.id.clone())
    );
    assert_eq!(store.device_by_token("nope").await.unwrap(), None);

    // Update.
    let mut changed = d1.clone();
    changed.name = "Fridge plug".into();
    changed.kind = "plug".into();
    changed.site = sid("cabin");
    changed.labels.insert("circuit".into(), "7".into());
    changed.labels.remove("room");
    assert!(store.update_device(&changed).await.unwrap());
    assert_eq!(
        store.get_device(&d1.id).await.unwrap(),
        Some(changed.clone())
    );
    assert!(!store.update_device(&device("ghost", "home")).await.unwrap());
    assert_eq!(store.get_device(&did("ghost")).await.unwrap(), None);

    // Token rotation.
    assert!(store.set_device_token(&d1.id, "hash-1b").await.unwrap());
    assert_eq!(store.device_by_token("hash-1").await.unwrap(), None);
    assert_eq!(
        store.device_by_token("hash-1b").await.unwrap(),
        Some(d1.id.clone())
    );
    assert!(!store
        .set_device_token(&did("ghost"), "hash-x")
        .await
        .unwrap());
    assert!(is_conflict(store.set_device_token(&d1.id, "hash-2").await));
    assert_eq!(
        store.device_by_token("hash-2").await.unwrap(),
        Some(d2.id.clone())
    );

    assert!(store.delete_device(&d2.id).await.unwrap());
    assert!(!store.delete_device(&d2.id).await.unwrap());
    assert_eq!(store.get_device(&d2.id).await.unwrap(), None);
    assert_eq!(store.device_by_token("hash-2").await.unwrap(), None);
    assert_eq!(store.list_devices().await.unwrap(), vec![changed]);
}

pub async fn delete_site_with_devices_conflicts(store: &dyn Store) {
    store.create_site(&site("home")).await.unwrap();
    store
        .create_device(&device("m1", "home"), "h1")
        .await
        .unwrap();
    let r = store.delete_site(&sid("home")).await;
    assert!(
        matches!(r, Err(StoreError::InUse(_))),
        "deleting a site with devices must be refused: {r:?}"
    );
    assert!(store.get_site(&sid("home")).await.unwrap().is_some());
    assert!(store.get_device(&did("m1")).await.unwrap().is_some());

    assert!(store.delete_device(&did("m1")).await.unwrap());
    assert!(store.delete_site(&sid("home")).await.unwrap());
    assert_eq!(store.get_site(&sid("home")).await.unwrap(), None);
    assert!(!store.delete_site(&sid("home")).await.unwrap());
}

pub async fn delete_device_cascades(store: &dyn Store) {
    let a = series_of(store, "doomed", &["main", "L1"]).await;
    let b = series_of(store, "keeper", &["main"]).await;
    let all = [a[0], a[1], b[0]];
    for (k, s) in all.iter().enumerate() {
        let pts: Vec<Point> = (0..10)
            .map(|i| reading(T0 + i * SEC, i as usize + k))
            .collect();
        store.append(&batch(*s, pts)).await.unwrap();
    }
    let mut w = RollupWrite::default();
    for s in all {
        let agg = agg_of(&[reading(T0, 1)], 0.5);
        for tier in BucketTier::ROLLUPS {
            w.merge.push((tier, row(s, T0, agg)));
        }
        w.watermarks.push((s, TsMs(T0 + 9 * SEC)));
    }
    store.write_rollups(&w).await.unwrap();

    assert!(store.delete_device(&did("doomed")).await.unwrap());
    assert!(!store.delete_device(&did("doomed")).await.unwrap());
    assert_eq!(store.get_device(&did("doomed")).await.unwrap(), None);
    let series = store.list_series().await.unwrap();
    assert_eq!(series.iter().map(|s| s.id).collect::<Vec<_>>(), vec![b[0]]);
    for s in &a {
        let raw = store
            .read_raw(*s, TsMs(0), TsMs(T0 + DAY), 1000)
            .await
            .unwrap();
        assert!(raw.is_empty(), "readings of a deleted device must go");
        for tier in BucketTier::ROLLUPS {
            let r = store
                .read_rollups(tier, *s, TsMs(0), TsMs(T0 + DAY))
                .await
                .unwrap();
            assert!(r.is_empty(), "{tier:?} rollups of a deleted device must go");
        }
    }
    let latest = store.latest().await.unwrap();
    assert_eq!(latest.iter().map(|l| l.0).collect::<Vec<_>>(), vec![b[0]]);

    // The other device is untouched.
    let raw = store
        .read_raw(b[0], TsMs(0), TsMs(T0 + DAY), 1000)
        .await
        .unwrap();
    assert_eq!(raw.len(), 10);
    for tier in BucketTier::ROLLUPS {
        let r = store
            .read_rollups(tier, b[0], TsMs(0), TsMs(T0 + DAY))
            .await
            .unwrap();
        assert_eq!(r.len(), 1, "{tier:?}");
    }

    // A device re-created under the same id starts empty.
    store
        .create_device(&device("doomed", "home"), "hash-new")
        .await
        .unwrap();
    let s = store.series_id(&did("doomed"), "main").await.unwrap();
    assert!(store
        .read_raw(s, TsMs(0), TsMs(T0 + DAY), 1000)
        .await
        .unwrap()
        .is_empty());
    for tier in BucketTier::ROLLUPS {
        assert!(store
            .read_rollups(tier, s, TsMs(0), TsMs(T0 + DAY))
            .await
            .unwrap()
            .is_empty());
    }
    let info = store.list_series().await.unwrap();
    assert_eq!(
        info.iter().find(|i| i.id == s).unwrap().rollup_watermark,
        None
    );
}

pub async fn ingest_tokens(store: &dyn Store) {
    store.create_site(&site("home")).await.unwrap();
    store.create_site(&site("cabin")).await.unwrap();
    let tok = |id: &str, site: &str, at: i64| IngestToken {
        id: id.into(),
        site: sid(site),
        name: format!("gateway {id}"),
        created_at: TsMs(T0 + at),
    };
    let (t1, t2, t3) = (
        tok("t1", "home", 1),
        tok("t2", "home", 2),
        tok("t3", "cabin", 3),
    );
    store.create_ingest_token(&t1, "ih1").await.unwrap();
    store.create_ingest_token(&t2, "ih2").await.unwrap();
    store.create_ingest_token(&t3, "ih3").await.unwrap();
    assert!(is_conflict(
        store.create_ingest_token(&t1, "ih-other").await
    ));

    let mut home = store.list_ingest_tokens(&sid("home")).await.unwrap();
    home.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(home, vec![t1.clone(), t2.clone()]);
    assert_eq!(
        store.list_ingest_tokens(&sid("cabin")).await.unwrap(),
        vec![t3.clone()]
    );
    assert!(store
        .list_ingest_tokens(&sid("nowhere"))
        .await
        .unwrap()
        .is_empty());

    assert_eq!(
        store.ingest_token_site("ih1").await.unwrap(),
        Some(sid("home"))
    );
    assert_eq!(
        store.ingest_token_site("ih3").await.unwrap(),
        Some(sid("cabin"))
    );
    assert_eq!(store.ingest_token_site("nope").await.unwrap(), None);

    assert!(store.delete_ingest_token("t1").await.unwrap());
    assert!(!store.delete_ingest_token("t1").await.unwrap());
    assert_eq!(store.ingest_token_site("ih1").await.unwrap(), None);
    assert_eq!(
        store.list_ingest_tokens(&sid("home")).await.unwrap(),
        vec![t2]
    );
}

pub async fn series_ids_are_stable_and_distinct(store: &dyn Store) {
    let first = series_of(store, "m1", &["main", "L1", "L2"]).await;
    let again = series_of(store, "m2", &["main"]).await;
    let (main, l1, l2, other) = (first[0], first[1], first[2], again[0]);
    assert_eq!(store.series_id(&did("m1"), "main").await.unwrap(), main);
    assert_eq!(store.series_id(&did("m1"), "L1").await.unwrap(), l1);
    let mut ids = vec![main, l1, l2, other];
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        4,
        "series must be distinct per (device, channel)"
    );

    let listed = store.list_series().await.unwrap();
    assert_eq!(listed.len(), 4);
    for (id, dev, ch) in [
        (main, "m1", "main"),
        (l1, "m1", "L1"),
        (l2, "m1", "L2"),
        (other, "m2", "main"),
    ] {
        let s = listed.iter().find(|s| s.id == id).expect("listed");
        assert_eq!((s.device.as_str(), s.channel.as_str()), (dev, ch));
        assert_eq!(s.rollup_watermark, None);
    }
}

// ---- raw readings

pub async fn append_and_read_raw_bounds(store: &dyn Store) {
    let s = series_of(store, "m1", &["main", "L1"]).await;
    let pts: Vec<Point> = (0..100).map(|i| power(T0 + i * SEC, i as f64)).collect();
    // Two batches, the second also carrying another series.
    store
        .append(&batch(s[0], pts[..40].to_vec()))
        .await
        .unwrap();
    store
        .append(&[
            SeriesPoints {
                series: s[0],
                points: pts[40..].to_vec(),
            },
            SeriesPoints {
                series: s[1],
                points: vec![power(T0 + 5 * SEC, -1.0)],
            },
        ])
        .await
        .unwrap();

    let all = store
        .read_raw(s[0], TsMs(T0), TsMs(T0 + 100 * SEC), 1_000)
        .await
        .unwrap();
    assert_points_eq(&all, &pts, "everything");
    // `from` inclusive, `to` exclusive.
    let mid = store
        .read_raw(s[0], TsMs(T0 + 10 * SEC), TsMs(T0 + 20 * SEC), 1_000)
        .await
        .unwrap();
    assert_points_eq(&mid, &pts[10..20], "[10 s, 20 s)");
    let off = store
        .read_raw(
            s[0],
            TsMs(T0 + 10 * SEC + 1),
            TsMs(T0 + 20 * SEC + 1),
            1_000,
        )
        .await
        .unwrap();
    assert_points_eq(&off, &pts[11..21], "(10 s, 20 s]");
    // Limit keeps the oldest.
    let lim = store
        .read_raw(s[0], TsMs(T0), TsMs(T0 + 100 * SEC), 7)
        .await
        .unwrap();
    assert_points_eq(&lim, &pts[..7], "limit 7");
    assert!(store
        .read_raw(s[0], TsMs(T0), TsMs(T0 + 100 * SEC), 0)
        .await
        .unwrap()
        .is_empty());
    // Empty and inverted ranges; other series are separate.
    assert!(store
        .read_raw(s[0], TsMs(T0 + 5), TsMs(T0 + 5), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .read_raw(s[0], TsMs(T0 + 50 * SEC), TsMs(T0), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .read_raw(s[0], TsMs(T0 - DAY), TsMs(T0), 10)
        .await
        .unwrap()
        .is_empty());
    let other = store
        .read_raw(s[1], TsMs(T0), TsMs(T0 + DAY), 10)
        .await
        .unwrap();
    assert_points_eq(&other, &[power(T0 + 5 * SEC, -1.0)], "other series");
    // Extreme bounds mean "everything".
    let wide = store
        .read_raw(s[0], TsMs(i64::MIN), TsMs(i64::MAX), 1_000)
        .await
        .unwrap();
    assert_eq!(wide.len(), 100);
    assert!(store
        .read_raw(SeriesId(987_654), TsMs(0), TsMs(i64::MAX), 10)
        .await
        .unwrap()
        .is_empty());
}

pub async fn read_raw_before_newest_first(store: &dyn Store) {
    let s = one_series(store).await;
    let pts: Vec<Point> = (0..50).map(|i| power(T0 + i * MIN, i as f64)).collect();
    store.append(&batch(s, pts.clone())).await.unwrap();

    let got = store
        .read_raw_before(s, TsMs(T0 + 20 * MIN), 5)
        .await
        .unwrap();
    let want: Vec<Point> = pts[15..20].iter().rev().copied().collect();
    assert_points_eq(&got, &want, "5 before 20 min");
    // `before` is exclusive.
    let got = store
        .read_raw_before(s, TsMs(T0 + 20 * MIN + 1), 1)
        .await
        .unwrap();
    assert_points_eq(&got, &pts[20..21], "1 before 20 min + 1 ms");
    let got = store
        .read_raw_before(s, TsMs(T0 + 3 * MIN), 100)
        .await
        .unwrap();
    let want: Vec<Point> = pts[..3].iter().rev().copied().collect();
    assert_points_eq(&got, &want, "fewer than the limit");
    assert!(store
        .read_raw_before(s, TsMs(T0), 100)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .read_raw_before(s, TsMs(T0 + DAY), 0)
        .await
        .unwrap()
        .is_empty());
    let all = store
        .read_raw_before(s, TsMs(i64::MAX), 1_000)
        .await
        .unwrap();
    assert_eq!(
        ts_of(&all),
        ts_of(&pts).into_iter().rev().collect::<Vec<_>>()
    );
}

pub async fn duplicates_stored_once(store: &dyn Store) {
    use Quantity::*;
    let s = one_series(store).await;
    let t1 = T0 + 10 * SEC;
    store
        .append(&batch(s, vec![power(T0, 1.0), power(t1, 100.0)]))
        .await
        .unwrap();

    // Power first, then voltage only: both present, one point.
    let merged = store
        .upsert(s, &[pt(t1, &[(Voltage, 230.5)])])
        .await
        .unwrap();
    let want = pt(t1, &[(Power, 100.0), (Voltage, 230.5)]);
    assert_points_eq(&merged, &[want], "upsert returns the merged point");
    let stored = store
        .read_raw(s, TsMs(T0), TsMs(T0 + DAY), 100)
        .await
        .unwrap();
    assert_points_eq(&stored, &[power(T0, 1.0), want], "stored once, overlaid");

    // A newer value of a present quantity wins; the others stay.
    let merged = store
        .upsert(s, &[pt(t1, &[(Power, 101.0), (Current, 0.5)])])
        .await
        .unwrap();
    let want = pt(t1, &[(Power, 101.0), (Voltage, 230.5), (Current, 0.5)]);
    assert_points_eq(&merged, &[want], "second overlay");

    // The same reading twice is one point.
    let t2 = T0 + 20 * SEC;
    let p2 = pt(t2, &[(Power, 7.0), (Energy, 12.25)]);
    store.upsert(s, &[p2]).await.unwrap();
    let again = store.upsert(s, &[p2]).await.unwrap();
    assert_points_eq(&again, &[p2], "idempotent upsert");
    let stored = store
        .read_raw(s, TsMs(T0), TsMs(T0 + DAY), 100)
        .await
        .unwrap();
    assert_points_eq(&stored, &[power(T0, 1.0), want, p2], "no duplicate rows");

    // An upsert of a point without values keeps what is stored.
    let kept = store.upsert(s, &[pt(t2, &[])]).await.unwrap();
    assert_points_eq(&kept, &[p2], "empty overlay");
    assert_eq!(store.latest().await.unwrap(), vec![(s, p2)]);
}

pub async fn upsert_out_of_order_keeps_order(store: &dyn Store) {
    let s = one_series(store).await;
    let on_time: Vec<Point> = [0, 10, 20, 30]
        .iter()
        .map(|&i| power(T0 + i * SEC, i as f64))
        .collect();
    store.append(&batch(s, on_time)).await.unwrap();
    // Late points into the middle, given out of order, one of them overlaying.
    let late = [
        power(T0 + 25 * SEC, 25.0),
        power(T0 + 5 * SEC, 5.0),
        pt(T0 + 10 * SEC, &[(Quantity::Voltage, 229.0)]),
    ];
    let got = store.upsert(s, &late).await.unwrap();
    let mut got_ts = ts_of(&got);
    got_ts.sort();
    assert_eq!(got_ts, vec![T0 + 5 * SEC, T0 + 10 * SEC, T0 + 25 * SEC]);
    let ten = got.iter().find(|p| p.ts.0 == T0 + 10 * SEC).unwrap();
    assert_eq!(ten.values.get(Quantity::Power), Some(10.0));
    assert_eq!(ten.values.get(Quantity::Voltage), Some(229.0));

    let all = store
        .read_raw(s, TsMs(T0), TsMs(T0 + DAY), 100)
        .await
        .unwrap();
    assert_eq!(
        ts_of(&all),
        [0, 5, 10, 20, 25, 30]
            .iter()
            .map(|i| T0 + i * SEC)
            .collect::<Vec<_>>()
    );
    let before = store
        .read_raw_before(s, TsMs(T0 + 20 * SEC), 10)
        .await
        .unwrap();
    assert_eq!(ts_of(&before), vec![T0 + 10 * SEC, T0 + 5 * SEC, T0]);

    // Late data from long ago (another month, another year) lands in place too.
    let old = [power(T0 - 40 * DAY, -40.0), power(T0 - 400 * DAY, -400.0)];
    store.upsert(s, &old).await.unwrap();
    let all = store
        .read_raw(s, TsMs(0), TsMs(T0 + DAY), 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 8);
    assert_eq!(&ts_of(&all)[..2], &[T0 - 400 * DAY, T0 - 40 * DAY]);
    assert_eq!(store.latest().await.unwrap()[0].1.ts, TsMs(T0 + 30 * SEC));
}

pub async fn latest_per_series(store: &dyn Store) {
    let s = series_of(store, "m1", &["a", "b", "empty"]).await;
    assert!(store.latest().await.unwrap().is_empty());
    let a: Vec<Point> = (0..20).map(|i| reading(T0 + i * SEC, i as usize)).collect();
    store.append(&batch(s[0], a.clone())).await.unwrap();
    store
        .append(&batch(s[1], vec![power(T0 + 100 * DAY, 9.0)]))
        .await
        .unwrap();
    // A late point does not move "latest"; a newer upsert does.
    store.upsert(s[1], &[power(T0, 1.0)]).await.unwrap();
    let mut latest = store.latest().await.unwrap();
    latest.sort_by_key(|l| l.0);
    assert_eq!(latest.len(), 2, "a series without points has no latest");
    assert_eq!(latest[0].0, s[0]);
    assert_points_eq(&[latest[0].1], &a[19..], "latest of a");
    assert_eq!(latest[1], (s[1], power(T0 + 100 * DAY, 9.0)));

    store
        .upsert(s[1], &[power(T0 + 101 * DAY, 10.0)])
        .await
        .unwrap();
    let latest = store.latest().await.unwrap();
    let b = latest.iter().find(|l| l.0 == s[1]).unwrap();
    assert_eq!(b.1, power(T0 + 101 * DAY, 10.0));
}

pub async fn f64_round_trip_is_bit_exact(store: &dyn Store) {
    let s = one_series(store).await;
    let awkward = [
        1e-300,
        -0.0,
        12_345_678.901_234_567,
        0.1 + 0.2,
        f64::MIN_POSITIVE,
        5e-324, // subnormal
        f64::MAX,
        f64::MIN,
        1.0 / 3.0,
        -273.150_000_000_000_03,
        299_792_458.000_001,
        0.0,
    ];
    let mut pts = Vec::new();
    for (i, v) in awkward.iter().enumerate() {
        let mut values = Values::new();
        for (k, q) in Quantity::ALL.iter().enumerate() {
            values.set(
                *q,
                awkward[(i + k) % awkward.len()] * if k % 2 == 0 { 1.0 } else { -1.0 },
            );
        }
        values.set(Quantity::Power, *v);
        pts.push(Point {
            ts: TsMs(T0 + i as i64 * SEC),
            values,
        });
    }
    store.append(&batch(s, pts.clone())).await.unwrap();
    let got = store
        .read_raw(s, TsMs(T0), TsMs(T0 + DAY), 100)
        .await
        .unwrap();
    assert_points_eq(&got, &pts, "append");
    let up = store.upsert(s, &pts[..3]).await.unwrap();
    assert_points_eq(&up, &pts[..3], "upsert");
    let latest = store.latest().await.unwrap();
    assert_points_eq(&[latest[0].1], &pts[pts.len() - 1..], "latest");

    // Rollup min/max/last keep their bits too.
    let mut agg = Agg::default();
    agg.stats[Quantity::Power.index()] = QStat {
        n: 3,
        sum: 1.0,
        min: 5e-324,
        max: f64::MAX,
        last: -0.0,
    };
    agg.stats[Quantity::Frequency.index()] = QStat {
        n: 1,
        sum: 0.1 + 0.2,
        min: 0.1 + 0.2,
        max: 0.1 + 0.2,
        last: 0.1 + 0.2,
    };
    agg.energy_import_kwh = 12_345_678.901_234_567;
    agg.last_ts = TsMs(T0 + 59 * SEC);
    let w = RollupWrite {
        replace: vec![(BucketTier::Minute, row(s, T0, agg))],
        ..Default::default()
    };
    store.write_rollups(&w).await.unwrap();
    let got = store
        .read_rollups(BucketTier::Minute, s, TsMs(T0), TsMs(T0 + MIN))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_agg_eq(&got[0].agg, &agg, "awkward rollup");
    assert_eq!(
        got[0].agg.energy_import_kwh.to_bits(),
        agg.energy_import_kwh.to_bits()
    );
}

pub async fn timestamps_round_trip_exactly(store: &dyn Store) {
    let s = one_series(store).await;
    let mut stamps = vec![
        946_684_800_001,   // 2000-01-01T00:00:00.001Z
        1_000_000_000_123, // 2001
        1_700_000_000_999,
        T0 - 1,
        T0,
        T0 + 1,
        T0 + 999,
        T0 + 1_001,
        T0 + 123_456_789,
        4_102_444_799_999, // 2099-12-31T23:59:59.999Z
    ];
    stamps.sort();
    let pts: Vec<Point> = stamps.iter().map(|&t| power(t, t as f64)).collect();
    store.append(&batch(s, pts.clone())).await.unwrap();
    let got = store
        .read_raw(s, TsMs(0), TsMs(i64::MAX), 100)
        .await
        .unwrap();
    assert_points_eq(&got, &pts, "millisecond timestamps");
    // Exact bounds around one millisecond.
    let one = store
        .read_raw(s, TsMs(T0 + 999), TsMs(T0 + 1_000), 10)
        .await
        .unwrap();
    assert_eq!(ts_of(&one), vec![T0 + 999]);
    let before = store.read_raw_before(s, TsMs(T0 + 1), 1).await.unwrap();
    assert_eq!(ts_of(&before), vec![T0]);

    // Rollup buckets and last_ts too, and the watermark.
    let agg = agg_of(&[power(T0 + 59_999, 1.0)], 0.0);
    let w = RollupWrite {
        merge: vec![(BucketTier::Minute, row(s, T0 + 7, agg))],
        watermarks: vec![(s, TsMs(T0 + 59_999))],
        ..Default::default()
    };
    store.write_rollups(&w).await.unwrap();
    let got = store
        .read_rollups(BucketTier::Minute, s, TsMs(T0 + 7), TsMs(T0 + 8))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].bucket, TsMs(T0 + 7));
    assert_eq!(got[0].agg.last_ts, TsMs(T0 + 59_999));
    let info = store.list_series().await.unwrap();
    assert_eq!(info[0].rollup_watermark, Some(TsMs(T0 + 59_999)));
}

// ---- rollups

pub async fn rollups_merge_replace_watermarks(store: &dyn Store) {
    use Quantity::*;
    let s = series_of(store, "m1", &["main", "L1"]).await;
    let (s1, s2) = (s[0], s[1]);
    let b = T0 + 5 * MIN;
    // Part A: power and voltage; part B (newer): power only; part C (older than B): current
    // and power.
    let a = agg_of(
        &[
            pt(b + SEC, &[(Power, 100.0), (Voltage, 230.0)]),
            pt(b + 2 * SEC, &[(Power, 300.0), (Voltage, 232.0)]),
        ],
        0.25,
    );
    let bb = agg_of(
        &[power(b + 30 * SEC, 50.0), power(b + 40 * SEC, 400.0)],
        0.5,
    );
    let c = agg_of(
        &[pt(b + 10 * SEC, &[(Current, 2.0), (Power, 500.0)])],
        0.125,
    );

    let w = RollupWrite {
        merge: vec![(BucketTier::Minute, row(s1, b, a))],
        watermarks: vec![(s1, TsMs(b + 2 * SEC))],
        ..Default::default()
    };
    store.write_rollups(&w).await.unwrap();
    let got = store
        .read_rollups(BucketTier::Minute, s1, TsMs(b), TsMs(b + MIN))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].series, got[0].bucket), (s1, TsMs(b)));
    assert_agg_eq(&got[0].agg, &a, "first merge is an insert");

    // Merging B then C (C in the same write as another merge of B's bucket on s2).
    let w = RollupWrite {
        merge: vec![
            (BucketTier::Minute, row(s1, b, bb)),
            (BucketTier::Minute, row(s2, b, c)),
        ],
        watermarks: vec![(s1, TsMs(b + 40 * SEC))],
        ..Default::default()
    };
    store.write_rollups(&w).await.unwrap();
    let w = RollupWrite {
        merge: vec![
            (BucketTier::Minute, row(s1, b, c)),
            (BucketTier::Minute, row(s2, b, a)),
        ],
        ..Default::default()
    };
    store.write_rollups(&w).await.unwrap();
    let mut want = a;
    want.merge(&bb);
    want.merge(&c);
    let got = store
        .read_rollups(BucketTier::Minute, s1, TsMs(b), TsMs(b + MIN))
        .await
        .unwrap();
    assert_agg_eq(&got[0].agg, &want, "A+B+C");
    // Spelled out, so that a wrong Agg::merge can't hide a wrong backend.
    let g = &got[0].agg;
    let p = g.stat(Power);
    assert_eq!((p.n, p.min, p.max, p.last), (5, 50.0, 500.0, 400.0));
    assert!(approx(p.sum, 1350.0), "power sum {}", p.sum);
    assert_eq!(g.stat(Voltage).n, 2);
    assert_eq!(g.stat(Voltage).last, 232.0, "B and C carry no voltage");
    let cur = g.stat(Current);
    assert_eq!((cur.n, cur.last), (1, 2.0), "current only from C");
    assert_eq!(g.stat(Frequency).n, 0);
    assert!(approx(g.energy_import_kwh, 0.875));
    assert_eq!(g.last_ts, TsMs(b + 40 * SEC));

    let mut want2 = c;
    want2.merge(&a);
    let got2 = store
        .read_rollups(BucketTier::Minute, s2, TsMs(b), TsMs(b + MIN))
        .await
        .unwrap();
    assert_agg_eq(&got2[0].agg, &want2, "s2: C+A");
    assert_eq!(
        got2[0].agg.stat(Power).last,
        500.0,
        "C is newer than A: its last stays"
    );
    assert_eq!(
        got2[0].agg.stat(Voltage).last,
        232.0,
        "C had no voltage: A's last fills in"
    );

    // Two merges of one bucket within one write combine too.
    let w = RollupWrite {
        merge: vec![
            (BucketTier::Hour, row(s1, T0, a)),
            (BucketTier::Hour, row(s1, T0, bb)),
        ],
        ..Default::default()
    };
    store.write_rollups(&w).await.unwrap();
    let mut ab = a;
    ab.merge(&bb);
    let got = store
        .read_rollups(BucketTier::Hour, s1, TsMs(T0), TsMs(T0 + HOUR))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_agg_eq(&got[0].agg, &ab, "two merges in one write");

    // Replace overwrites everything, including quantities the new row lacks.
    let w = RollupWrite {
        replace: vec![(BucketTier::Minute, row(s1, b, c))],
        ..Default::default()
    };
    store.write_rollups(&w).await.unwrap();
    let got = store
        .read_rollups(BucketTier::Minute, s1, TsMs(b), TsMs(b + MIN))
        .await
        .unwrap();
    assert_agg_eq(&got[0].agg, &c, "replaced");
    assert_eq!(got[0].agg.stat(Voltage).n, 0);
    // Replace into an empty bucket inserts.
    let w = RollupWrite {
        replace: vec![(BucketTier::Day, row(s2, T0, bb))],
        ..Default::default()
    };
    store.write_rollups(&w).await.unwrap();
    let got = store
        .read_rollups(BucketTier::Day, s2, TsMs(T0), TsMs(T0 + DAY))
        .await
        .unwrap();
    assert_agg_eq(&got[0].agg, &bb, "replace inserts");

    // Watermarks are persisted and never go backwards.
    let wm = |store_list: Vec<crate::SeriesInfo>, id: SeriesId| {
        store_list
            .iter()
            .find(|i| i.id == id)
            .unwrap()
            .rollup_watermark
    };
    let info = store.list_series().await.unwrap();
    assert_eq!(wm(info.clone(), s1), Some(TsMs(b + 40 * SEC)));
    assert_eq!(wm(info, s2), None);
    let w = RollupWrite {
        watermarks: vec![
            (s1, TsMs(b)),
            (s2, TsMs(T0 + HOUR)),
            (s2, TsMs(T0 + 2 * HOUR)),
        ],
        ..Default::default()
    };
    store.write_rollups(&w).await.unwrap();
    let info = store.list_series().await.unwrap();
    assert_eq!(
        wm(info.clone(), s1),
        Some(TsMs(b + 40 * SEC)),
        "no going back"
    );
    assert_eq!(wm(info, s2), Some(TsMs(T0 + 2 * HOUR)));
    let w = RollupWrite {
        watermarks: vec![(s1, TsMs(b + HOUR))],
        ..Default::default()
    };
    store.write_rollups(&w).await.unwrap();
    let info = store.list_series().await.unwrap();
    assert_eq!(wm(info, s1), Some(TsMs(b + HOUR)));
}

pub async fn read_rollups_bounds_per_tier(store: &dyn Store) {
    let s = series_of(store, "m1", &["main", "L1"]).await;
    let mut w = RollupWrite::default();
    for (tier, step, count) in [
        (BucketTier::Minute, MIN, 30),
        (BucketTier::Hour, HOUR, 30),
        (BucketTier::Day, DAY, 30),
    ] {
        for i in 0..count {
            for (k, series) in s.iter().enumerate() {
                let t = T0 + i * step;
                let agg = agg_of(&[power(t + 1, (i * 10 + k as i64) as f64)], i as f64);
                w.merge.push((tier, row(*series, t, agg)));
            }
        }
    }
    // Rows in any order in the write.
    w.merge.reverse();
    store.write_rollups(&w).await.unwrap();

    for (tier, step) in [
        (BucketTier::Minute, MIN),
        (BucketTier::Hour, HOUR),
        (BucketTier::Day, DAY),
    ] {
        let all = store
            .read_rollups(tier, s[0], TsMs(T0), TsMs(T0 + 30 * step))
            .await
            .unwrap();
        assert_eq!(all.len(), 30, "{tier:?}");
        let buckets: Vec<i64> = all.iter().map(|r| r.bucket.0).collect();
        assert_eq!(
            buckets,
            (0..30).map(|i| T0 + i * step).collect::<Vec<_>>(),
            "{tier:?} ascending"
        );
        assert!(all.iter().all(|r| r.series == s[0]));
        for (i, r) in all.iter().enumerate() {
            assert_eq!(
                r.agg.stat(Quantity::Power).last,
                (i * 10) as f64,
                "{tier:?} row {i}"
            );
            assert_eq!(r.agg.energy_import_kwh, i as f64);
        }
        // `from` inclusive, `to` exclusive.
        let mid = store
            .read_rollups(tier, s[0], TsMs(T0 + 3 * step), TsMs(T0 + 7 * step))
            .await
            .unwrap();
        assert_eq!(
            mid.iter().map(|r| r.bucket.0).collect::<Vec<_>>(),
            (3..7).map(|i| T0 + i * step).collect::<Vec<_>>()
        );
        let off = store
            .read_rollups(tier, s[0], TsMs(T0 + 3 * step + 1), TsMs(T0 + 7 * step + 1))
            .await
            .unwrap();
        assert_eq!(off.first().map(|r| r.bucket.0), Some(T0 + 4 * step));
        assert_eq!(off.len(), 4);
        assert!(store
            .read_rollups(tier, s[0], TsMs(T0 + step), TsMs(T0 + step))
            .await
            .unwrap()
            .is_empty());
        let other = store
            .read_rollups(tier, s[1], TsMs(T0), TsMs(T0 + 2 * step))
            .await
            .unwrap();
        assert_eq!(other.len(), 2);
        assert_eq!(other[1].agg.stat(Quantity::Power).last, 11.0);
        let wide = store
            .read_rollups(tier, s[0], TsMs(i64::MIN), TsMs(i64::MAX))
            .await
            .unwrap();
        assert_eq!(wide.len(), 30);
    }
    // Tiers are separate tables: hourly buckets 0..30 h are not visible as minutes.
    let minutes = store
        .read_rollups(BucketTier::Minute, s[0], TsMs(T0), TsMs(T0 + 30 * DAY))
        .await
        .unwrap();
    assert_eq!(minutes.len(), 30);
}

pub async fn retention_by_tier(store: &dyn Store) {
    let s = one_series(store).await;
    let now = T0 + 100 * DAY; // 2026-04-11
    let ages = [400, 90, 40, 31, 29, 1, 0]; // days
    let pts: Vec<Point> = ages
        .iter()
        .map(|&d| power(now - d * DAY - SEC, d as f64))
        .collect();
    store.append(&batch(s, pts.clone())).await.unwrap();
    let mut w = RollupWrite::default();
    for (tier, d) in [
        (BucketTier::Minute, 40),
        (BucketTier::Minute, 1),
        (BucketTier::Hour, 400),
        (BucketTier::Hour, 1),
        (BucketTier::Day, 800),
    ] {
        let t = now - d * DAY;
        w.merge
            .push((tier, row(s, t, agg_of(&[power(t, 1.0)], 1.0))));
    }
    store.write_rollups(&w).await.unwrap();

    let policy = Retention {
        raw_days: Some(30),
        minute_days: Some(30),
        hour_days: None,
        day_days: None,
    };
    let removed = store.apply_retention(&policy, TsMs(now)).await.unwrap();
    assert!(removed > 0, "something was removed");
    let left = store
        .read_raw(s, TsMs(0), TsMs(i64::MAX), 100)
        .await
        .unwrap();
    assert_eq!(
        ts_of(&left),
        ts_of(&pts[4..]),
        "raw older than 30 days is gone"
    );
    let minutes = store
        .read_rollups(BucketTier::Minute, s, TsMs(0), TsMs(i64::MAX))
        .await
        .unwrap();
    assert_eq!(
        minutes.iter().map(|r| r.bucket.0).collect::<Vec<_>>(),
        vec![now - DAY]
    );
    let hours = store
        .read_rollups(BucketTier::Hour, s, TsMs(0), TsMs(i64::MAX))
        .await
        .unwrap();
    assert_eq!(hours.len(), 2, "hours are kept forever");
    let days = store
        .read_rollups(BucketTier::Day, s, TsMs(0), TsMs(i64::MAX))
        .await
        .unwrap();
    assert_eq!(days.len(), 1, "days are kept forever");

    // Nothing left to remove; later writes into old and new months still work.
    assert_eq!(store.apply_retention(&policy, TsMs(now)).await.unwrap(), 0);
    store
        .upsert(s, &[power(now - 20 * DAY, 20.0)])
        .await
        .unwrap();
    store
        .append(&batch(s, vec![power(now + SEC, -1.0)]))
        .await
        .unwrap();
    let left = store
        .read_raw(s, TsMs(0), TsMs(i64::MAX), 100)
        .await
        .unwrap();
    assert_eq!(left.len(), 5);

    // A keep-everything policy removes nothing.
    let forever = Retention {
        raw_days: None,
        minute_days: None,
        hour_days: None,
        day_days: None,
    };
    assert_eq!(
        store
            .apply_retention(&forever, TsMs(now + 1_000 * DAY))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .read_raw(s, TsMs(0), TsMs(i64::MAX), 100)
            .await
            .unwrap()
            .len(),
        5
    );
}

// ---- shape and scale

pub async fn months_and_years(store: &dyn Store) {
    let s = one_series(store).await;
    let stamps: Vec<i64> = vec![
        1_735_689_599_999,                                     // 2024-12-31T23:59:59.999Z
        T0,                                                    // 2026-01-01T00:00:00.000Z
        T0 + 30 * DAY + 23 * HOUR + 59 * MIN + 59 * SEC + 999, // 2026-01-31T23:59:59.999Z
        T0 + 31 * DAY,                                         // 2026-02-01
        1_772_236_800_000,                                     // 2026-02-28
        1_835_395_200_000,                                     // 2028-02-29 (leap day)
        1_907_712_000_000,                                     // 2030-06-15
    ];
    let pts: Vec<Point> = stamps
        .iter()
        .enumerate()
        .map(|(i, &t)| reading(t, i))
        .collect();
    // One append spanning many months and years.
    store.append(&batch(s, pts.clone())).await.unwrap();
    let all = store
        .read_raw(s, TsMs(0), TsMs(i64::MAX), 100)
        .await
        .unwrap();
    assert_points_eq(&all, &pts, "all months");
    // Exactly January 2026, and reads across partition boundaries.
    let jan = store
        .read_raw(s, TsMs(T0), TsMs(T0 + 31 * DAY), 100)
        .await
        .unwrap();
    assert_eq!(ts_of(&jan), stamps[1..3].to_vec());
    let span = store
        .read_raw(s, TsMs(stamps[0]), TsMs(stamps[5] + 1), 100)
        .await
        .unwrap();
    assert_eq!(ts_of(&span), stamps[..6].to_vec());
    let limited = store.read_raw(s, TsMs(0), TsMs(i64::MAX), 3).await.unwrap();
    assert_eq!(ts_of(&limited), stamps[..3].to_vec());
    let back = store.read_raw_before(s, TsMs(stamps[5]), 3).await.unwrap();
    assert_eq!(ts_of(&back), vec![stamps[4], stamps[3], stamps[2]]);
    assert_eq!(store.latest().await.unwrap()[0].1.ts, TsMs(stamps[6]));
    // Overlay across a month boundary.
    let merged = store
        .upsert(
            s,
            &[
                pt(stamps[0], &[(Quantity::Frequency, 50.0)]),
                pt(stamps[1], &[(Quantity::Frequency, 49.9)]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(merged.len(), 2);
    assert!(merged
        .iter()
        .all(|p| p.values.get(Quantity::Voltage).is_some()));
    assert_eq!(merged[0].values.get(Quantity::Frequency), Some(50.0));
}

pub async fn large_append_reads_back_exactly(store: &dyn Store) {
    let channels: Vec<String> = (0..100).map(|i| format!("ch{i}")).collect();
    let names: Vec<&str> = channels.iter().map(String::as_str).collect();
    let series = series_of(store, "big", &names).await;
    let per = 500;
    let batch: Vec<SeriesPoints> = series
        .iter()
        .enumerate()
        .map(|(k, s)| SeriesPoints {
            series: *s,
            points: (0..per)
                .map(|i| {
                    let mut p = reading(T0 + i as i64 * 2 * SEC + k as i64, i * 100 + k);
                    if i % 7 == 0 {
                        p.values.set(Quantity::Frequency, 50.0 - k as f64 / 1e3);
                    }
                    p
                })
                .collect(),
        })
        .collect();
    store.append(&batch).await.unwrap();
    for sp in &batch {
        let got = store
            .read_raw(sp.series, TsMs(0), TsMs(i64::MAX), 10_000)
            .await
            .unwrap();
        assert_points_eq(&got, &sp.points, &format!("series {}", sp.series));
    }
    assert_eq!(store.latest().await.unwrap().len(), 100);
}

pub async fn disk_bytes_grows(store: &dyn Store) {
    let s = one_series(store).await;
    let before = store.disk_bytes().await.unwrap();
    let pts: Vec<Point> = (0..20_000)
        .map(|i| reading(T0 + i as i64 * SEC, i))
        .collect();
    store.append(&batch(s, pts)).await.unwrap();
    store.maintain(TsMs(T0 + DAY)).await.unwrap();
    let after = store.disk_bytes().await.unwrap();
    assert!(after > 0);
    assert!(
        after > before,
        "disk bytes {before} -> {after} after 20,000 readings"
    );
}

pub async fn maintain_is_idempotent(store: &dyn Store) {
    let s = one_series(store).await;
    let now = TsMs(T0 + 45 * DAY);
    store.maintain(now).await.unwrap();
    let again = store.maintain(now).await.unwrap();
    assert_eq!(again.partitions_created, 0, "nothing new to create");
    store
        .append(&batch(
            s,
            vec![power(now.0, 1.0), power(now.0 + 20 * DAY, 2.0)],
        ))
        .await
        .unwrap();
    store.maintain(now).await.unwrap();
    let got = store
        .read_raw(s, now, TsMs(now.0 + 60 * DAY), 10)
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
}

pub async fn concurrent_writers(store: &dyn Store) {
    let s = series_of(store, "m1", &["a", "b", "c", "shared"]).await;
    let shared = s[3];
    let writer = |series: SeriesId, k: i64| async move {
        for chunk in 0..4 {
            let pts: Vec<Point> = (0..500)
                .map(|i| {
                    power(
                        T0 + (chunk * 500 + i) * SEC,
                        (k * 10_000 + chunk * 500 + i) as f64,
                    )
                })
                .collect();
            store.append(&batch(series, pts)).await.unwrap();
            // Everyone also overlays its own quantity onto the same shared points.
            let q = Quantity::ALL[k as usize];
            let late: Vec<Point> = (0..50)
                .map(|i| pt(T0 + i * SEC, &[(q, k as f64)]))
                .collect();
            store.upsert(shared, &late).await.unwrap();
        }
    };
    tokio::join!(writer(s[0], 0), writer(s[1], 1), writer(s[2], 2));
    for (k, series) in s[..3].iter().enumerate() {
        let got = store
            .read_raw(*series, TsMs(0), TsMs(i64::MAX), 10_000)
            .await
            .unwrap();
        assert_eq!(got.len(), 2_000);
        assert_eq!(
            got[1_999].values.get(Quantity::Power),
            Some((k * 10_000 + 1_999) as f64)
        );
    }
    let got = store
        .read_raw(shared, TsMs(0), TsMs(i64::MAX), 10_000)
        .await
        .unwrap();
    assert_eq!(got.len(), 50);
    for p in got {
        for k in 0..3 {
            assert_eq!(
                p.values.get(Quantity::ALL[k]),
                Some(k as f64),
                "overlays don't clobber"
            );
        }
    }
}

pub async fn empty_writes_are_noops(store: &dyn Store) {
    let s = one_series(store).await;
    store.append(&[]).await.unwrap();
    store.append(&batch(s, vec![])).await.unwrap();
    assert!(store.upsert(s, &[]).await.unwrap().is_empty());
    store.write_rollups(&RollupWrite::default()).await.unwrap();
    assert!(store
        .read_raw(s, TsMs(0), TsMs(i64::MAX), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.latest().await.unwrap().is_empty());
    assert_eq!(store.list_series().await.unwrap()[0].rollup_watermark, None);
}

/// `append` is a general write: older points and duplicates are merged, before and after
/// the backend has moved recent points into its long-term layout.
pub async fn append_out_of_order_overlays(store: &dyn Store) {
    let s = one_series(store).await;
    let even: Vec<Point> = (0..20).map(|i| power(T0 + i * 2 * SEC, i as f64)).collect();
    store.append(&batch(s, even)).await.unwrap();
    // Odd seconds arrive later (another writer's batch), with one duplicate of an even second.
    let mut odd: Vec<Point> = (0..20)
        .map(|i| power(T0 + (i * 2 + 1) * SEC, 100.0 + i as f64))
        .collect();
    odd.push(Point {
        ts: TsMs(T0 + 4 * SEC),
        values: Values::new().with(Quantity::Voltage, 230.0),
    });
    odd.sort_by_key(|p| p.ts);
    store.append(&batch(s, odd)).await.unwrap();
    store.maintain(TsMs(i64::MAX / 2)).await.unwrap();
    // And once more after everything is in long-term storage.
    store
        .append(&batch(
            s,
            vec![power(T0 + 3 * SEC, -7.0), power(T0 + 40 * SEC, 1.0)],
        ))
        .await
        .unwrap();
    let got = store
        .read_raw(s, TsMs(T0), TsMs(T0 + DAY), 1_000)
        .await
        .unwrap();
    let ts: Vec<i64> = got.iter().map(|p| (p.ts.0 - T0) / SEC).collect();
    assert_eq!(
        ts,
        (0..=40).collect::<Vec<i64>>(),
        "sorted, each instant once"
    );
    assert_eq!(got[4].values.get(Quantity::Power), Some(2.0));
    assert_eq!(
        got[4].values.get(Quantity::Voltage),
        Some(230.0),
        "the duplicate was laid over"
    );
    assert_eq!(got[3].values.get(Quantity::Power), Some(-7.0));
    let latest = store.latest().await.unwrap();
    assert_eq!(latest[0].1.ts, TsMs(T0 + 40 * SEC));
}

// ---- MQTT: credentials, topic bindings, pending and rejected identities

/// Site `home` with devices `ids`.
async fn devices(store: &dyn Store, ids: &[&str]) {
    if store.get_site(&sid("home")).await.unwrap().is_none() {
        store.create_site(&site("home")).await.unwrap();
    }
    for id in ids {
        store
            .create_device(&device(id, "home"), &format!("hash-{id}"))
            .await
            .unwrap();
    }
}

fn binding(format: &str, vendor_id: &str, dev: &str, at: i64) -> Binding {
    Binding {
        format: format.into(),
        vendor_id: vendor_id.into(),
        device: did(dev),
        created_at: TsMs(T0 + at),
    }
}

fn pending(vendor_id: &str, first: i64, last: i64, messages: u64, topic: &str) -> PendingDevice {
    PendingDevice {
        format: "shelly".into(),
        vendor_id: vendor_id.into(),
        first_seen: TsMs(T0 + first),
        last_seen: TsMs(T0 + last),
        messages,
        last_topic: topic.into(),
        sample: format!("{{\"src\":\"{vendor_id}\",\"topic\":\"{topic}\"}}"),
    }
}

pub async fn mqtt_credentials(store: &dyn Store) {
    devices(store, &["d1", "d2"]).await;
    let (d1, d2) = (did("d1"), did("d2"));

    // An unknown device gets nothing.
    assert!(!store
        .set_mqtt_credential(&did("ghost"), "ghost", "h0")
        .await
        .unwrap());
    assert_eq!(store.mqtt_credential("ghost").await.unwrap(), None);
    assert_eq!(store.mqtt_username(&did("ghost")).await.unwrap(), None);

    assert_eq!(store.mqtt_username(&d1).await.unwrap(), None);
    assert!(store
        .set_mqtt_credential(&d1, "meter-a", "h1")
        .await
        .unwrap());
    assert_eq!(
        store.mqtt_credential("meter-a").await.unwrap(),
        Some((d1.clone(), "h1".to_owned()))
    );
    assert_eq!(
        store.mqtt_username(&d1).await.unwrap(),
        Some("meter-a".to_owned())
    );

    // Replacing: a new password under the same name, then a new name; the old name is free.
    assert!(store
        .set_mqtt_credential(&d1, "meter-a", "h2")
        .await
        .unwrap());
    assert_eq!(
        store.mqtt_credential("meter-a").await.unwrap(),
        Some((d1.clone(), "h2".to_owned()))
    );
    assert!(store
        .set_mqtt_credential(&d1, "meter-b", "h3")
        .await
        .unwrap());
    assert_eq!(store.mqtt_credential("meter-a").await.unwrap(), None);
    assert_eq!(
        store.mqtt_credential("meter-b").await.unwrap(),
        Some((d1.clone(), "h3".to_owned()))
    );
    assert_eq!(
        store.mqtt_username(&d1).await.unwrap(),
        Some("meter-b".to_owned())
    );

    // A username names one device; the failed attempt changes nothing.
    assert!(is_conflict(
        store.set_mqtt_credential(&d2, "meter-b", "h4").await
    ));
    assert_eq!(store.mqtt_username(&d2).await.unwrap(), None);
    assert_eq!(
        store.mqtt_credential("meter-b").await.unwrap(),
        Some((d1.clone(), "h3".to_owned()))
    );
    // The old name is free for another device now; names are case-sensitive.
    assert!(store
        .set_mqtt_credential(&d2, "meter-a", "h5")
        .await
        .unwrap());
    assert!(store
        .set_mqtt_credential(&d2, "Meter-B", "h6")
        .await
        .unwrap());
    assert_eq!(store.mqtt_credential("meter-a").await.unwrap(), None);
    assert_eq!(
        store.mqtt_credential("Meter-B").await.unwrap(),
        Some((d2.clone(), "h6".to_owned()))
    );
    assert_eq!(store.mqtt_credential("METER-B").await.unwrap(), None);

    assert!(store.delete_mqtt_credential(&d1).await.unwrap());
    assert!(!store.delete_mqtt_credential(&d1).await.unwrap());
    assert_eq!(store.mqtt_credential("meter-b").await.unwrap(), None);
    assert_eq!(store.mqtt_username(&d1).await.unwrap(), None);
    assert_eq!(
        store.mqtt_username(&d2).await.unwrap(),
        Some("Meter-B".into())
    );

    // Deleting the device deletes its credential: a device re-created under the same id has
    // none, and the name is free again.
    assert!(store.delete_device(&d2).await.unwrap());
    assert_eq!(store.mqtt_credential("Meter-B").await.unwrap(), None);
    devices(store, &["d2"]).await;
    assert_eq!(store.mqtt_username(&d2).await.unwrap(), None);
    assert!(store
        .set_mqtt_credential(&d1, "Meter-B", "h7")
        .await
        .unwrap());
    assert!(!store.delete_mqtt_credential(&d2).await.unwrap());
}

pub async fn device_bindings(store: &dyn Store) {
    devices(store, &["d1", "d2"]).await;
    let (d1, d2) = (did("d1"), did("d2"));

    assert!(!store
        .bind_device(&binding("shelly", "x", "ghost", 0))
        .await
        .unwrap());
    assert!(store.list_bindings().await.unwrap().is_empty());

    let first = binding("shelly", "shellyem-A1", "d1", 1);
    assert!(store.bind_device(&first).await.unwrap());
    // Again to the same device: fine, and the binding keeps its first created_at.
    assert!(store
        .bind_device(&binding("shelly", "shellyem-A1", "d1", 99))
        .await
        .unwrap());
    assert_eq!(store.list_bindings().await.unwrap(), vec![first.clone()]);
    // To another device: refused, and nothing changes. Even when that device doesn't exist,
    // the identity stays where it is.
    assert!(is_conflict(
        store
            .bind_device(&binding("shelly", "shellyem-A1", "d2", 2))
            .await
    ));
    assert!(!store
        .bind_device(&binding("shelly", "shellyem-A1", "ghost", 2))
        .await
        .unwrap());
    assert_eq!(store.list_bindings().await.unwrap(), vec![first.clone()]);
    assert!(store.device_bindings(&d2).await.unwrap().is_empty());

    // Vendor ids are case-sensitive, and the same vendor id in another format is another
    // identity.
    let lower = binding("shelly", "shellyem-a1", "d2", 3);
    let tasmota = binding("tasmota", "shellyem-A1", "d2", 4);
    let second = binding("json", "meter-7", "d1", 5);
    for b in [&lower, &tasmota, &second] {
        assert!(store.bind_device(b).await.unwrap());
    }
    assert_eq!(
        store.list_bindings().await.unwrap(),
        vec![
            second.clone(),
            first.clone(),
            lower.clone(),
            tasmota.clone()
        ],
        "ordered by (format, vendor id)"
    );
    assert_eq!(
        store.device_bindings(&d1).await.unwrap(),
        vec![second.clone(), first.clone()]
    );
    assert_eq!(
        store.device_bindings(&d2).await.unwrap(),
        vec![lower.clone(), tasmota.clone()]
    );

    assert!(store.unbind_device("shelly", "shellyem-A1").await.unwrap());
    assert!(!store.unbind_device("shelly", "shellyem-A1").await.unwrap());
    assert!(!store.unbind_device("shelly", "SHELLYEM-A1").await.unwrap());
    // Unbound, the identity can go to another device.
    let moved = binding("shelly", "shellyem-A1", "d2", 6);
    assert!(store.bind_device(&moved).await.unwrap());
    assert_eq!(
        store.device_bindings(&d1).await.unwrap(),
        vec![second.clone()]
    );

    // Deleting a device deletes its bindings, not the other device's.
    assert!(store.delete_device(&d2).await.unwrap());
    assert_eq!(store.list_bindings().await.unwrap(), vec![second.clone()]);
    devices(store, &["d2"]).await;
    assert!(store.device_bindings(&d2).await.unwrap().is_empty());
    assert!(store.bind_device(&lower).await.unwrap());
}

pub async fn pending_devices_merge(store: &dyn Store) {
    assert!(store.list_pending().await.unwrap().is_empty());
    let a = pending("A", 10 * SEC, 20 * SEC, 3, "shellies/A/emeter/0/power");
    store.upsert_pending(&a).await.unwrap();
    assert_eq!(
        store.get_pending("shelly", "A").await.unwrap(),
        Some(a.clone())
    );

    // An older report (from another node, or a batch flushed late) widens the window, adds
    // its count, and its topic and sample replace the stored ones.
    let older = pending("A", 5 * SEC, 15 * SEC, 2, "shellies/A/emeter/1/power");
    store.upsert_pending(&older).await.unwrap();
    let merged = PendingDevice {
        first_seen: TsMs(T0 + 5 * SEC),
        last_seen: TsMs(T0 + 20 * SEC),
        messages: 5,
        ..older.clone()
    };
    assert_eq!(
        store.get_pending("shelly", "A").await.unwrap(),
        Some(merged.clone())
    );
    let newer = pending("A", 30 * SEC, 40 * SEC, 1, "shellies/A/relay/0");
    store.upsert_pending(&newer).await.unwrap();
    let merged = PendingDevice {
        first_seen: TsMs(T0 + 5 * SEC),
        last_seen: TsMs(T0 + 40 * SEC),
        messages: 6,
        ..newer.clone()
    };
    assert_eq!(
        store.get_pending("shelly", "A").await.unwrap(),
        Some(merged.clone())
    );

    // Newest last_seen first; identities are case-sensitive and per format.
    let b = pending("B", 0, 50 * SEC, 1, "shellies/B/emeter/0/power");
    let lower_a = pending("a", 0, 30 * SEC, 1, "shellies/a/emeter/0/power");
    let other_format = PendingDevice {
        format: "tasmota".into(),
        ..pending("A", 0, 10 * SEC, 7, "tele/A/SENSOR")
    };
    for p in [&b, &lower_a, &other_format] {
        store.upsert_pending(p).await.unwrap();
    }
    assert_eq!(
        store.list_pending().await.unwrap(),
        vec![
            b.clone(),
            merged.clone(),
            lower_a.clone(),
            other_format.clone()
        ]
    );
    assert_eq!(store.get_pending("shelly", "b").await.unwrap(), None);
    assert_eq!(store.get_pending("json", "A").await.unwrap(), None);

    assert!(store.delete_pending("shelly", "A").await.unwrap());
    assert!(!store.delete_pending("shelly", "A").await.unwrap());
    assert_eq!(store.get_pending("shelly", "A").await.unwrap(), None);
    assert_eq!(
        store.list_pending().await.unwrap(),
        vec![b.clone(), lower_a.clone(), other_format.clone()]
    );
    // Deleted, an identity starts afresh.
    store.upsert_pending(&a).await.unwrap();
    assert_eq!(
        store.get_pending("shelly", "A").await.unwrap(),
        Some(a.clone())
    );

    // A payload sample may hold anything that is valid UTF-8, NUL included (stored as
    // U+FFFD); counts saturate rather than fail.
    let odd = PendingDevice {
        sample: "bin\0ary \u{1F50C} \"'\\".into(),
        messages: u64::MAX,
        ..pending("odd", 0, 0, 0, "x/odd")
    };
    store.upsert_pending(&odd).await.unwrap();
    store.upsert_pending(&odd).await.unwrap();
    let got = store.get_pending("shelly", "odd").await.unwrap().unwrap();
    assert_eq!(got.sample, "bin\u{FFFD}ary \u{1F50C} \"'\\");
    assert_eq!(got.messages, i64::MAX as u64);
}

pub async fn rejected_identities(store: &dyn Store) {
    assert!(store.list_rejected().await.unwrap().is_empty());
    store.set_rejected("shelly", "B", true).await.unwrap();
    store.set_rejected("shelly", "A", true).await.unwrap();
    store.set_rejected("shelly", "A", true).await.unwrap();
    store.set_rejected("shelly", "a", true).await.unwrap();
    store.set_rejected("json", "B", true).await.unwrap();
    let pair = |f: &str, v: &str| (f.to_owned(), v.to_owned());
    assert_eq!(
        store.list_rejected().await.unwrap(),
        vec![
            pair("json", "B"),
            pair("shelly", "A"),
            pair("shelly", "B"),
            pair("shelly", "a")
        ]
    );
    store.set_rejected("shelly", "A", false).await.unwrap();
    store.set_rejected("shelly", "A", false).await.unwrap();
    store.set_rejected("tasmota", "never", false).await.unwrap();
    assert_eq!(
        store.list_rejected().await.unwrap(),
        vec![pair("json", "B"), pair("shelly", "B"), pair("shelly", "a")]
    );
    // Rejection is independent of the pending list.
    store
        .upsert_pending(&pending("C", 0, SEC, 1, "shellies/C"))
        .await
        .unwrap();
    store.set_rejected("shelly", "C", true).await.unwrap();
    assert_eq!(store.list_pending().await.unwrap().len(), 1);
}

/// MQTT state is on disk when its calls return: all of it is there after a restart, and a
/// device deleted then still takes its credential and bindings along.
pub async fn mqtt_state_survives_reopen(store: Arc<dyn Store>, reopen: Reopen) {
    devices(&*store, &["d1", "d2"]).await;
    assert!(store
        .set_mqtt_credential(&did("d1"), "meter-1", "h1")
        .await
        .unwrap());
    assert!(store
        .set_mqtt_credential(&did("d2"), "meter-2", "h2")
        .await
        .unwrap());
    let bindings = vec![
        binding("shelly", "A", "d1", 1),
        binding("shelly", "B", "d2", 2),
    ];
    for b in &bindings {
        assert!(store.bind_device(b).await.unwrap());
    }
    let p = pending("C", SEC, 2 * SEC, 4, "shellies/C/emeter/0/power");
    store.upsert_pending(&p).await.unwrap();
    store.set_rejected("shelly", "D", true).await.unwrap();
    drop(store);

    let store = reopen().await;
    assert_eq!(
        store.mqtt_credential("meter-1").await.unwrap(),
        Some((did("d1"), "h1".to_owned()))
    );
    assert_eq!(
        store.mqtt_username(&did("d2")).await.unwrap(),
        Some("meter-2".to_owned())
    );
    assert_eq!(store.list_bindings().await.unwrap(), bindings);
    assert_eq!(store.list_pending().await.unwrap(), vec![p.clone()]);
    assert_eq!(
        store.list_rejected().await.unwrap(),
        vec![("shelly".to_owned(), "D".to_owned())]
    );
    // The merge continues from what was stored.
    store
        .upsert_pending(&pending("C", 3 * SEC, 3 * SEC, 1, "shellies/C/relay/0"))
        .await
        .unwrap();
    let got = store.get_pending("shelly", "C").await.unwrap().unwrap();
    assert_eq!(
        (got.first_seen, got.last_seen, got.messages),
        (TsMs(T0 + SEC), TsMs(T0 + 3 * SEC), 5)
    );
    // Cascades work on the reopened store too.
    assert!(store.delete_device(&did("d1")).await.unwrap());
    assert_eq!(store.mqtt_credential("meter-1").await.unwrap(), None);
    assert_eq!(store.list_bindings().await.unwrap(), bindings[1..].to_vec());
}

// ---- the backends

#[cfg(feature = "postgres")]
mod pg {
    store_suite!(
        pg,
        crate::postgres::test_store().await,
        crate::postgres::reopenable_test_store().await
    );
}

mod sqlite {
    store_suite!(
        sqlite,
        crate::sqlite::test_store().await,
        crate::sqlite::reopenable_test_store().await
    );
}

/// Enrollment of TCP socket meters is a per-site switch, off by default; a deleted site takes
/// its setting along.
pub async fn tcp_enrollment(store: &dyn Store) {
    assert!(store.tcp_enrollment_sites().await.unwrap().is_empty());
    assert!(!store
        .set_tcp_enrollment(&sid("nowhere"), true)
        .await
        .unwrap());
    assert!(!store
        .set_tcp_enrollment(&sid("nowhere"), false)
        .await
        .unwrap());
    for id in ["b-site", "a-site", "Z-site"] {
        store.create_site(&site(id)).await.unwrap();
    }
    assert!(store.tcp_enrollment_sites().await.unwrap().is_empty());
    assert!(store
        .set_tcp_enrollment(&sid("b-site"), true)
        .await
        .unwrap());
    assert!(store
        .set_tcp_enrollment(&sid("b-site"), true)
        .await
        .unwrap());
    assert!(store
        .set_tcp_enrollment(&sid("Z-site"), true)
        .await
        .unwrap());
    assert!(store
        .set_tcp_enrollment(&sid("a-site"), true)
        .await
        .unwrap());
    // Ordered by id, byte-wise (upper case first) on both backends.
    assert_eq!(
        store.tcp_enrollment_sites().await.unwrap(),
        vec![sid("Z-site"), sid("a-site"), sid("b-site")]
    );
    assert!(store
        .set_tcp_enrollment(&sid("a-site"), false)
        .await
        .unwrap());
    assert!(store
        .set_tcp_enrollment(&sid("a-site"), false)
        .await
        .unwrap());
    assert_eq!(
        store.tcp_enrollment_sites().await.unwrap(),
        vec![sid("Z-site"), sid("b-site")]
    );
    // An open site can still be deleted, and its setting goes with it.
    assert!(store.delete_site(&sid("b-site")).await.unwrap());
    assert_eq!(
        store.tcp_enrollment_sites().await.unwrap(),
        vec![sid("Z-site")]
    );
    store.create_site(&site("b-site")).await.unwrap();
    assert_eq!(
        store.tcp_enrollment_sites().await.unwrap(),
        vec![sid("Z-site")],
        "a new site of the same id starts closed"
    );
}

/// The enrollment switch is on disk when its call returns.
pub async fn tcp_enrollment_survives_reopen(store: Arc<dyn Store>, reopen: Reopen) {
    store.create_site(&site("open")).await.unwrap();
    store.create_site(&site("closed")).await.unwrap();
    assert!(store.set_tcp_enrollment(&sid("open"), true).await.unwrap());
    drop(store);
    let store = reopen().await;
    assert_eq!(
        store.tcp_enrollment_sites().await.unwrap(),
        vec![sid("open")]
    );
}

// ---- accounts

fn uid(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

fn user(id: &str, email: &str, role: Role, sites: &[&str]) -> User {
    User {
        id: uid(id),
        email: Email::parse(email).unwrap(),
        role,
        sites: sites.iter().map(|s| sid(s)).collect(),
        disabled: false,
        created_at: TsMs(T0 + 789),
    }
}

/// Sites `home` and `cabin`, owner `ann` (both sites) and admin `bob` (none).
async fn two_users(store: &dyn Store) -> (User, User) {
    for s in ["home", "cabin"] {
        store.create_site(&site(s)).await.unwrap();
    }
    let ann = user(
        "usr_ann",
        "ann@example.org",
        Role::Owner,
        &["home", "cabin"],
    );
    let bob = user("usr_bob", "bob@example.org", Role::Admin, &[]);
    store.create_user(&ann, "hash-ann").await.unwrap();
    store.create_user(&bob, "hash-bob").await.unwrap();
    (ann, bob)
}

fn session(id_hash: &str, user: &str, created: i64) -> Session {
    Session {
        id_hash: id_hash.into(),
        user: uid(user),
        created_at: TsMs(T0 + created),
        last_seen_at: TsMs(T0 + created),
        expires_at: TsMs(T0 + created + DAY),
        address: "192.0.2.7".into(),
        user_agent: format!("Mozilla/5.0 ({id_hash}) \"quoted\" ü"),
    }
}

fn api_token(id: &str, user: &str, created: i64, sites: Option<&[&str]>) -> ApiToken {
    ApiToken {
        id: id.into(),
        user: uid(user),
        name: format!("token {id}"),
        scope: TokenScope::Read,
        sites: sites.map(|s| s.iter().map(|x| sid(x)).collect()),
        created_at: TsMs(T0 + created),
        expires_at: None,
        last_used_at: None,
    }
}

fn audit(ts: i64, actor: &str, action: &str) -> AuditEvent {
    AuditEvent {
        id: 0,
        ts: TsMs(T0 + ts),
        actor: actor.into(),
        action: action.into(),
        target: format!("user:{actor}"),
        address: "198.51.100.1".into(),
        detail: format!("{{\"at\":{ts},\"note\":\"ü \\\"q\\\"\"}}"),
    }
}

fn conflict_message<T: std::fmt::Debug>(r: crate::Result<T>) -> String {
    match r {
        Err(e @ StoreError::Conflict(_)) => e.to_string(),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn invalid_message<T: std::fmt::Debug>(r: crate::Result<T>) -> String {
    match r {
        Err(StoreError::Invalid(m)) => m,
        other => panic!("expected invalid, got {other:?}"),
    }
}

pub async fn users_crud(store: &dyn Store) {
    assert_eq!(store.count_users().await.unwrap(), 0);
    assert!(store.list_users().await.unwrap().is_empty());
    assert_eq!(store.get_user(&uid("usr_ann")).await.unwrap(), None);
    let (ann, bob) = two_users(store).await;

    assert_eq!(
        store.get_user(&ann.id).await.unwrap(),
        Some((ann.clone(), "hash-ann".to_owned()))
    );
    assert_eq!(
        store.user_by_email(&bob.email).await.unwrap(),
        Some((bob.clone(), "hash-bob".to_owned()))
    );
    assert_eq!(
        store
            .user_by_email(&Email::parse("nobody@example.org").unwrap())
            .await
            .unwrap(),
        None
    );
    // Ordered by e-mail byte-wise on both backends ('-' before 'b'), not by id; a disabled
    // viewer round-trips too.
    let mut carl = user("usr_a", "ann-z@example.org", Role::Viewer, &["home"]);
    carl.disabled = true;
    let dora = user("usr_0", "annb@example.org", Role::Viewer, &[]);
    store.create_user(&carl, "hash-carl").await.unwrap();
    store.create_user(&dora, "hash-dora").await.unwrap();
    assert_eq!(
        store.list_users().await.unwrap(),
        vec![carl.clone(), ann.clone(), dora.clone(), bob.clone()]
    );
    assert_eq!(store.count_users().await.unwrap(), 4);

    // A taken id or e-mail: the message says which; nothing is written.
    let mut same_id = user("usr_ann", "other@example.org", Role::Viewer, &[]);
    assert_eq!(
        conflict_message(store.create_user(&same_id, "h").await),
        "user usr_ann already exists"
    );
    let same_email = user("usr_new", "ann@example.org", Role::Viewer, &[]);
    assert_eq!(
        conflict_message(store.create_user(&same_email, "h").await),
        "user with e-mail ann@example.org already exists"
    );
    // An unknown site is named, and the user is not half-created without it.
    same_id.id = uid("usr_new");
    same_id.sites = [sid("home"), sid("nowhere")].into();
    assert_eq!(
        invalid_message(store.create_user(&same_id, "h").await),
        "unknown site nowhere"
    );
    assert_eq!(store.get_user(&uid("usr_new")).await.unwrap(), None);
    assert_eq!(
        store.user_by_email(&same_id.email).await.unwrap(),
        None,
        "the failed create left nothing behind"
    );
    assert_eq!(store.count_users().await.unwrap(), 4);

    // Update replaces e-mail, role, sites and the flag; not the password nor created_at.
    let mut changed = ann.clone();
    changed.email = Email::parse("ann.new@example.org").unwrap();
    changed.role = Role::Viewer;
    changed.sites = [sid("cabin")].into();
    changed.disabled = true;
    changed.created_at = TsMs(1);
    assert!(store.update_user(&changed).await.unwrap());
    let expected = User {
        created_at: ann.created_at,
        ..changed.clone()
    };
    assert_eq!(
        store.get_user(&ann.id).await.unwrap(),
        Some((expected.clone(), "hash-ann".to_owned()))
    );
    assert_eq!(store.user_by_email(&ann.email).await.unwrap(), None);
    assert_eq!(
        store
            .user_by_email(&expected.email)
            .await
            .unwrap()
            .map(|u| u.0),
        Some(expected.clone())
    );
    // Updating to the same e-mail is fine; to another user's is a conflict.
    assert!(store.update_user(&expected).await.unwrap());
    let mut taken = expected.clone();
    taken.email = bob.email.clone();
    taken.sites = [sid("home")].into();
    assert_eq!(
        conflict_message(store.update_user(&taken).await),
        "user with e-mail bob@example.org already exists"
    );
    // An unknown site fails the whole update: the new e-mail and role are not kept either.
    let mut bad_site = expected.clone();
    bad_site.email = Email::parse("ann.third@example.org").unwrap();
    bad_site.role = Role::Admin;
    bad_site.sites = [sid("home"), sid("ghost-site")].into();
    assert_eq!(
        invalid_message(store.update_user(&bad_site).await),
        "unknown site ghost-site"
    );
    assert_eq!(
        store.get_user(&ann.id).await.unwrap().unwrap().0,
        expected.clone()
    );
    // Clearing the sites.
    let mut no_sites = expected.clone();
    no_sites.sites.clear();
    assert!(store.update_user(&no_sites).await.unwrap());
    assert_eq!(store.get_user(&ann.id).await.unwrap().unwrap().0, no_sites);
    assert!(!store
        .update_user(&user("usr_ghost", "ghost@example.org", Role::Owner, &[]))
        .await
        .unwrap());
    assert_eq!(store.get_user(&uid("usr_ghost")).await.unwrap(), None);

    assert!(store
        .set_user_password(&bob.id, "$argon2id$v=19$new")
        .await
        .unwrap());
    assert_eq!(
        store.get_user(&bob.id).await.unwrap(),
        Some((bob.clone(), "$argon2id$v=19$new".to_owned()))
    );
    assert!(!store
        .set_user_password(&uid("usr_ghost"), "h")
        .await
        .unwrap());

    assert!(store.delete_user(&dora.id).await.unwrap());
    assert!(!store.delete_user(&dora.id).await.unwrap());
    assert_eq!(store.get_user(&dora.id).await.unwrap(), None);
    assert_eq!(store.count_users().await.unwrap(), 3);
    // The e-mail is free again.
    store.create_user(&dora, "hash-dora-2").await.unwrap();
    assert_eq!(
        store.user_by_email(&dora.email).await.unwrap(),
        Some((dora, "hash-dora-2".to_owned()))
    );
}

/// Deleting a user ends their sessions and API tokens, not anyone else's.
pub async fn delete_user_cascades(store: &dyn Store) {
    let (ann, bob) = two_users(store).await;
    for s in [
        session("s-ann", "usr_ann", 1),
        session("s-bob", "usr_bob", 2),
    ] {
        store.create_session(&s).await.unwrap();
    }
    let t_ann = api_token("t-ann", "usr_ann", 1, Some(&["home"]));
    let t_bob = api_token("t-bob", "usr_bob", 2, None);
    store.create_api_token(&t_ann, "th-ann").await.unwrap();
    store.create_api_token(&t_bob, "th-bob").await.unwrap();

    assert!(store.delete_user(&ann.id).await.unwrap());
    assert_eq!(store.get_session("s-ann").await.unwrap(), None);
    assert!(store.list_user_sessions(&ann.id).await.unwrap().is_empty());
    assert_eq!(store.api_token_by_hash("th-ann").await.unwrap(), None);
    assert_eq!(store.get_api_token("t-ann").await.unwrap(), None);
    assert_eq!(
        store.list_api_tokens(None).await.unwrap(),
        vec![t_bob.clone()]
    );
    assert_eq!(
        store.get_session("s-bob").await.unwrap(),
        Some(session("s-bob", "usr_bob", 2))
    );
    assert_eq!(store.get_user(&bob.id).await.unwrap().unwrap().0, bob);

    // Re-created under the same id, the user starts with nothing; the old credentials'
    // ids and hashes are free again.
    store.create_user(&ann, "hash-ann").await.unwrap();
    assert!(store.list_user_sessions(&ann.id).await.unwrap().is_empty());
    assert!(store
        .list_api_tokens(Some(&ann.id))
        .await
        .unwrap()
        .is_empty());
    store
        .create_session(&session("s-ann", "usr_ann", 3))
        .await
        .unwrap();
    store.create_api_token(&t_ann, "th-ann").await.unwrap();
}

/// A site with users but no devices can be deleted; it leaves every user's list.
pub async fn delete_site_drops_user_assignment(store: &dyn Store) {
    let (ann, _) = two_users(store).await;
    let mut carl = user("usr_carl", "carl@example.org", Role::Viewer, &["cabin"]);
    store.create_user(&carl, "h").await.unwrap();

    assert!(store.delete_site(&sid("cabin")).await.unwrap());
    let ann_now = store.get_user(&ann.id).await.unwrap().unwrap().0;
    assert_eq!(ann_now.sites, [sid("home")].into());
    carl.sites.clear();
    assert_eq!(store.get_user(&carl.id).await.unwrap().unwrap().0, carl);

    // Devices still keep a site from deletion, and the refusal leaves the assignment alone.
    store
        .create_device(&device("m1", "home"), "hash-m1")
        .await
        .unwrap();
    assert!(matches!(
        store.delete_site(&sid("home")).await,
        Err(StoreError::InUse(_))
    ));
    assert_eq!(
        store.get_user(&ann.id).await.unwrap().unwrap().0.sites,
        [sid("home")].into()
    );

    // A new site under the old id is nobody's.
    store.create_site(&site("cabin")).await.unwrap();
    assert_eq!(
        store.get_user(&ann.id).await.unwrap().unwrap().0.sites,
        [sid("home")].into()
    );
    assert!(store
        .get_user(&carl.id)
        .await
        .unwrap()
        .unwrap()
        .0
        .sites
        .is_empty());
}

pub async fn sessions(store: &dyn Store) {
    let (ann, bob) = two_users(store).await;
    let (s1, s2, s3) = (
        session("h1", "usr_ann", 1),
        session("h2", "usr_ann", 2),
        session("h3", "usr_ann", 3),
    );
    let sb = session("hb", "usr_bob", 4);
    for s in [&s2, &s1, &sb, &s3] {
        store.create_session(s).await.unwrap();
    }
    assert_eq!(store.get_session("h1").await.unwrap(), Some(s1.clone()));
    assert_eq!(store.get_session("nope").await.unwrap(), None);
    assert_eq!(
        store.list_user_sessions(&ann.id).await.unwrap(),
        vec![s3.clone(), s2.clone(), s1.clone()],
        "newest first"
    );
    assert_eq!(
        store.list_user_sessions(&bob.id).await.unwrap(),
        vec![sb.clone()]
    );
    assert!(store
        .list_user_sessions(&uid("usr_ghost"))
        .await
        .unwrap()
        .is_empty());

    assert!(is_conflict(store.create_session(&s1).await));
    let orphan = session("h-orphan", "usr_ghost", 5);
    assert_eq!(
        invalid_message(store.create_session(&orphan).await),
        "unknown user usr_ghost"
    );
    assert_eq!(store.get_session("h-orphan").await.unwrap(), None);

    // A use moves last_seen and the expiry.
    let (seen, expires) = (TsMs(T0 + HOUR), TsMs(T0 + 2 * DAY));
    assert!(store.touch_session("h1", seen, expires).await.unwrap());
    let touched = Session {
        last_seen_at: seen,
        expires_at: expires,
        ..s1.clone()
    };
    assert_eq!(
        store.get_session("h1").await.unwrap(),
        Some(touched.clone())
    );
    assert!(!store.touch_session("nope", seen, expires).await.unwrap());

    assert!(store.delete_session("h2").await.unwrap());
    assert!(!store.delete_session("h2").await.unwrap());
    assert_eq!(store.get_session("h2").await.unwrap(), None);

    // Ending all of a user's sessions but the one in use, then all of them.
    assert_eq!(
        store
            .delete_user_sessions(&ann.id, Some("h1"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.list_user_sessions(&ann.id).await.unwrap(),
        vec![touched.clone()]
    );
    // `keep` naming another user's session protects nothing of this user's.
    store.create_session(&s3).await.unwrap();
    assert_eq!(
        store
            .delete_user_sessions(&ann.id, Some("hb"))
            .await
            .unwrap(),
        2
    );
    assert!(store.list_user_sessions(&ann.id).await.unwrap().is_empty());
    assert_eq!(store.delete_user_sessions(&ann.id, None).await.unwrap(), 0);
    assert_eq!(store.get_session("hb").await.unwrap(), Some(sb.clone()));
    assert_eq!(store.delete_user_sessions(&bob.id, None).await.unwrap(), 1);
    assert_eq!(store.get_session("hb").await.unwrap(), None);
}

pub async fn sessions_purge_expired(store: &dyn Store) {
    two_users(store).await;
    let expiring = |id: &str, user: &str, expires: i64| Session {
        expires_at: TsMs(T0 + expires),
        ..session(id, user, 0)
    };
    let sessions = [
        expiring("past", "usr_ann", 10),
        expiring("now", "usr_bob", 20),
        expiring("later", "usr_ann", 21),
        expiring("much-later", "usr_bob", DAY),
    ];
    for s in &sessions {
        store.create_session(s).await.unwrap();
    }
    // An expired session is still returned: the caller decides what expiry means.
    let now = TsMs(T0 + 20);
    assert_eq!(
        store.get_session("past").await.unwrap(),
        Some(sessions[0].clone())
    );
    assert_eq!(store.purge_sessions(now).await.unwrap(), 2, "<= now goes");
    assert_eq!(store.get_session("past").await.unwrap(), None);
    assert_eq!(store.get_session("now").await.unwrap(), None);
    assert_eq!(
        store.get_session("later").await.unwrap(),
        Some(sessions[2].clone())
    );
    assert_eq!(store.purge_sessions(now).await.unwrap(), 0);
    // A touched session lives on past its first expiry.
    assert!(store
        .touch_session("later", TsMs(T0 + 21), TsMs(T0 + 2 * DAY))
        .await
        .unwrap());
    assert_eq!(store.purge_sessions(TsMs(T0 + DAY)).await.unwrap(), 1);
    assert!(store.get_session("later").await.unwrap().is_some());
    assert_eq!(store.get_session("much-later").await.unwrap(), None);
}

pub async fn api_tokens(store: &dyn Store) {
    let (ann, bob) = two_users(store).await;
    // All of the user's sites (None), none of them (an empty set), and two of them.
    let t1 = api_token("t1", "usr_ann", 1, None);
    let t2 = ApiToken {
        scope: TokenScope::Write,
        expires_at: Some(TsMs(T0 + 30 * DAY)),
        ..api_token("t2", "usr_ann", 2, Some(&[]))
    };
    let t3 = ApiToken {
        last_used_at: Some(TsMs(T0 + 5)),
        ..api_token("t3", "usr_bob", 3, Some(&["home", "cabin"]))
    };
    for (t, h) in [(&t2, "th2"), (&t1, "th1"), (&t3, "th3")] {
        store.create_api_token(t, h).await.unwrap();
    }
    for (t, h) in [(&t1, "th1"), (&t2, "th2"), (&t3, "th3")] {
        assert_eq!(store.get_api_token(&t.id).await.unwrap().as_ref(), Some(t));
        assert_eq!(store.api_token_by_hash(h).await.unwrap().as_ref(), Some(t));
    }
    assert_eq!(
        store.get_api_token("t1").await.unwrap().unwrap().sites,
        None
    );
    assert_eq!(
        store.get_api_token("t2").await.unwrap().unwrap().sites,
        Some(Default::default()),
        "an empty site list is not the same as none"
    );
    assert_eq!(store.api_token_by_hash("nope").await.unwrap(), None);
    assert_eq!(store.get_api_token("nope").await.unwrap(), None);

    assert_eq!(
        store.list_api_tokens(None).await.unwrap(),
        vec![t3.clone(), t2.clone(), t1.clone()],
        "newest first"
    );
    assert_eq!(
        store.list_api_tokens(Some(&ann.id)).await.unwrap(),
        vec![t2.clone(), t1.clone()]
    );
    assert_eq!(
        store.list_api_tokens(Some(&bob.id)).await.unwrap(),
        vec![t3.clone()]
    );
    assert!(store
        .list_api_tokens(Some(&uid("usr_ghost")))
        .await
        .unwrap()
        .is_empty());

    // A taken id or hash conflicts; an unknown user is invalid. Nothing is written.
    assert_eq!(
        conflict_message(store.create_api_token(&t1, "th-other").await),
        "API token t1 already exists"
    );
    let t4 = api_token("t4", "usr_ann", 4, None);
    assert!(is_conflict(store.create_api_token(&t4, "th1").await));
    assert_eq!(
        invalid_message(
            store
                .create_api_token(&api_token("t5", "usr_ghost", 5, None), "th5")
                .await
        ),
        "unknown user usr_ghost"
    );
    assert_eq!(store.get_api_token("t4").await.unwrap(), None);
    assert_eq!(store.get_api_token("t5").await.unwrap(), None);
    assert_eq!(
        store.api_token_by_hash("th1").await.unwrap(),
        Some(t1.clone())
    );

    // Uses are recorded; one reported late does not move the mark back.
    store.touch_api_token("t1", TsMs(T0 + 100)).await.unwrap();
    let used = ApiToken {
        last_used_at: Some(TsMs(T0 + 100)),
        ..t1.clone()
    };
    assert_eq!(store.get_api_token("t1").await.unwrap(), Some(used.clone()));
    store.touch_api_token("t1", TsMs(T0 + 50)).await.unwrap();
    assert_eq!(store.get_api_token("t1").await.unwrap(), Some(used.clone()));
    store.touch_api_token("t3", TsMs(T0 + 200)).await.unwrap();
    assert_eq!(
        store
            .get_api_token("t3")
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(TsMs(T0 + 200))
    );
    store.touch_api_token("nope", TsMs(T0)).await.unwrap();

    assert!(store.delete_api_token("t1").await.unwrap());
    assert!(!store.delete_api_token("t1").await.unwrap());
    assert_eq!(store.api_token_by_hash("th1").await.unwrap(), None);
    assert_eq!(
        store.list_api_tokens(Some(&ann.id)).await.unwrap(),
        vec![t2.clone()]
    );
    // The hash is free again.
    store.create_api_token(&t4, "th1").await.unwrap();
    assert_eq!(store.api_token_by_hash("th1").await.unwrap(), Some(t4));
}

pub async fn audit_log(store: &dyn Store) {
    let q = |limit: usize| AuditQuery {
        limit,
        ..AuditQuery::default()
    };
    assert!(store.list_audit(&q(10)).await.unwrap().is_empty());
    // Timestamps need not follow insertion order (clocks of several nodes): listings follow
    // the ids.
    let events = [
        audit(10, "user:ann", "login"),
        audit(20, "user:bob", "login"),
        audit(30, "user:ann", "user_created"),
        audit(25, "anonymous", "login_failed"),
        audit(40, "user:ann", "login"),
        audit(50, "cli", "user_created"),
    ];
    let mut stored = Vec::new();
    for e in &events {
        let id = store.append_audit(e).await.unwrap();
        if let Some(prev) = stored.last().map(|s: &AuditEvent| s.id) {
            assert!(id > prev, "ids grow: {id} after {prev}");
        }
        stored.push(AuditEvent { id, ..e.clone() });
    }
    let newest_first: Vec<AuditEvent> = stored.iter().rev().cloned().collect();
    assert_eq!(store.list_audit(&q(100)).await.unwrap(), newest_first);
    assert_eq!(store.list_audit(&q(2)).await.unwrap(), newest_first[..2]);
    assert!(store.list_audit(&q(0)).await.unwrap().is_empty());

    let pick = |idx: &[usize]| -> Vec<AuditEvent> {
        idx.iter().rev().map(|&i| stored[i].clone()).collect()
    };
    let from_to = AuditQuery {
        from: Some(TsMs(T0 + 20)),
        to: Some(TsMs(T0 + 40)),
        ..q(100)
    };
    assert_eq!(store.list_audit(&from_to).await.unwrap(), pick(&[1, 2, 3]));
    let from = AuditQuery {
        from: Some(TsMs(T0 + 30)),
        ..q(100)
    };
    assert_eq!(store.list_audit(&from).await.unwrap(), pick(&[2, 4, 5]));
    let to = AuditQuery {
        to: Some(TsMs(T0 + 25)),
        ..q(100)
    };
    assert_eq!(store.list_audit(&to).await.unwrap(), pick(&[0, 1]));
    let actor = AuditQuery {
        actor: Some("user:ann".into()),
        ..q(100)
    };
    assert_eq!(store.list_audit(&actor).await.unwrap(), pick(&[0, 2, 4]));
    let action = AuditQuery {
        action: Some("user_created".into()),
        ..q(100)
    };
    assert_eq!(store.list_audit(&action).await.unwrap(), pick(&[2, 5]));
    let both = AuditQuery {
        actor: Some("user:ann".into()),
        action: Some("login".into()),
        ..q(100)
    };
    assert_eq!(store.list_audit(&both).await.unwrap(), pick(&[0, 4]));
    let prefix_is_not_a_match = AuditQuery {
        actor: Some("user:".into()),
        ..q(100)
    };
    assert!(store
        .list_audit(&prefix_is_not_a_match)
        .await
        .unwrap()
        .is_empty());

    // Paging newest first with before_id, alone and with a filter.
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list_audit(&AuditQuery {
                before_id: before,
                ..q(4)
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        before = page.last().map(|e| e.id);
        pages.push(page);
    }
    assert_eq!(pages.len(), 2);
    assert_eq!(pages[0], newest_first[..4]);
    assert_eq!(pages[1], newest_first[4..]);
    let logins_before = AuditQuery {
        action: Some("login".into()),
        before_id: Some(stored[4].id),
        ..q(1)
    };
    assert_eq!(store.list_audit(&logins_before).await.unwrap(), pick(&[1]));
    let none_before_first = AuditQuery {
        before_id: Some(stored[0].id),
        ..q(100)
    };
    assert!(store
        .list_audit(&none_before_first)
        .await
        .unwrap()
        .is_empty());
}

/// Accounts are on disk when their calls return, and audit ids keep growing after a restart.
pub async fn accounts_survive_reopen(store: Arc<dyn Store>, reopen: Reopen) {
    let (ann, bob) = two_users(&*store).await;
    let s = session("h1", "usr_ann", 1);
    store.create_session(&s).await.unwrap();
    let t = api_token("t1", "usr_bob", 2, Some(&[]));
    store.create_api_token(&t, "th1").await.unwrap();
    let e = audit(1, "user:ann", "login");
    let first = store.append_audit(&e).await.unwrap();
    drop(store);

    let store = reopen().await;
    assert_eq!(
        store.get_user(&ann.id).await.unwrap(),
        Some((ann.clone(), "hash-ann".to_owned()))
    );
    assert_eq!(
        store.list_users().await.unwrap(),
        vec![ann.clone(), bob.clone()]
    );
    assert_eq!(store.get_session("h1").await.unwrap(), Some(s));
    assert_eq!(store.api_token_by_hash("th1").await.unwrap(), Some(t));
    assert_eq!(
        store
            .list_audit(&AuditQuery {
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap(),
        vec![AuditEvent { id: first, ..e }]
    );
    let second = store
        .append_audit(&audit(2, "user:bob", "login"))
        .await
        .unwrap();
    assert!(second > first);
    // Cascades work on the reopened store too.
    assert!(store.delete_site(&sid("cabin")).await.unwrap());
    assert_eq!(
        store.get_user(&ann.id).await.unwrap().unwrap().0.sites,
        [sid("home")].into()
    );
    assert!(store.delete_user(&bob.id).await.unwrap());
    assert_eq!(store.get_api_token("t1").await.unwrap(), None);
}
