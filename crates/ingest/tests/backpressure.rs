//! When storage falls behind, writers wait for queue space and then get `Overloaded`; memory
//! does not grow with the backlog. Storage is a real SQLite store whose appends are slowed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use wattline_domain::*;
use wattline_ingest::{Engine, EngineConfig, EngineError};
use wattline_storage::sqlite::SqliteStore;
use wattline_storage::*;

/// Delegates to a real store, taking `delay` longer for every append.
struct SlowAppends {
    inner: SqliteStore,
    delay: Duration,
}

#[async_trait]
impl Store for SlowAppends {
    fn backend(&self) -> &'static str {
        "slow-sqlite"
    }
    async fn create_user(&self, user: &User, password_hash: &str) -> Result<()> {
        self.inner.create_user(user, password_hash).await
    }
    async fn get_user(&self, id: &UserId) -> Result<Option<(User, String)>> {
        self.inner.get_user(id).await
    }
    async fn user_by_email(&self, email: &Email) -> Result<Option<(User, String)>> {
        self.inner.user_by_email(email).await
    }
    async fn list_users(&self) -> Result<Vec<User>> {
        self.inner.list_users().await
    }
    async fn update_user(&self, user: &User) -> Result<bool> {
        self.inner.update_user(user).await
    }
    async fn set_user_password(&self, id: &UserId, password_hash: &str) -> Result<bool> {
        self.inner.set_user_password(id, password_hash).await
    }
    async fn delete_user(&self, id: &UserId) -> Result<bool> {
        self.inner.delete_user(id).await
    }
    async fn count_users(&self) -> Result<u64> {
        self.inner.count_users().await
    }
    async fn create_session(&self, session: &Session) -> Result<()> {
        self.inner.create_session(session).await
    }
    async fn get_session(&self, id_hash: &str) -> Result<Option<Session>> {
        self.inner.get_session(id_hash).await
    }
    async fn touch_session(
        &self,
        id_hash: &str,
        last_seen_at: TsMs,
        expires_at: TsMs,
    ) -> Result<bool> {
        self.inner
            .touch_session(id_hash, last_seen_at, expires_at)
            .await
    }
    async fn delete_session(&self, id_hash: &str) -> Result<bool> {
        self.inner.delete_session(id_hash).await
    }
    async fn delete_user_sessions(&self, user: &UserId, keep: Option<&str>) -> Result<u64> {
        self.inner.delete_user_sessions(user, keep).await
    }
    async fn list_user_sessions(&self, user: &UserId) -> Result<Vec<Session>> {
        self.inner.list_user_sessions(user).await
    }
    async fn purge_sessions(&self, now: TsMs) -> Result<u64> {
        self.inner.purge_sessions(now).await
    }
    async fn create_api_token(&self, token: &ApiToken, token_hash: &str) -> Result<()> {
        self.inner.create_api_token(token, token_hash).await
    }
    async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>> {
        self.inner.api_token_by_hash(token_hash).await
    }
    async fn list_api_tokens(&self, user: Option<&UserId>) -> Result<Vec<ApiToken>> {
        self.inner.list_api_tokens(user).await
    }
    async fn get_api_token(&self, id: &str) -> Result<Option<ApiToken>> {
        self.inner.get_api_token(id).await
    }
    async fn delete_api_token(&self, id: &str) -> Result<bool> {
        self.inner.delete_api_token(id).await
    }
    async fn touch_api_token(&self, id: &str, used_at: TsMs) -> Result<()> {
        self.inner.touch_api_token(id, used_at).await
    }
    async fn append_audit(&self, event: &AuditEvent) -> Result<i64> {
        self.inner.append_audit(event).await
    }
    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        self.inner.list_audit(query).await
    }
    async fn create_site(&self, site: &Site) -> Result<()> {
        self.inner.create_site(site).await
    }
    async fn get_site(&self, id: &SiteId) -> Result<Option<Site>> {
        self.inner.get_site(id).await
    }
    async fn list_sites(&self) -> Result<Vec<Site>> {
        self.inner.list_sites().await
    }
    async fn update_site(&self, site: &Site) -> Result<bool> {
        self.inner.update_site(site).await
    }
    async fn delete_site(&self, id: &SiteId) -> Result<bool> {
        self.inner.delete_site(id).await
    }
    async fn create_device(&self, device: &Device, token_hash: &str) -> Result<()> {
        self.inner.create_device(device, token_hash).await
    }
    async fn get_device(&self, id: &DeviceId) -> Result<Option<Device>> {
        self.inner.get_device(id).await
    }
    async fn list_devices(&self) -> Result<Vec<Device>> {
        self.inner.list_devices().await
    }
    async fn update_device(&self, device: &Device) -> Result<bool> {
        self.inner.update_device(device).await
    }
    async fn set_device_token(&self, id: &DeviceId, token_hash: &str) -> Result<bool> {
        self.inner.set_device_token(id, token_hash).await
    }
    async fn delete_device(&self, id: &DeviceId) -> Result<bool> {
        self.inner.delete_device(id).await
    }
    async fn device_by_token(&self, token_hash: &str) -> Result<Option<DeviceId>> {
        self.inner.device_by_token(token_hash).await
    }
    async fn create_ingest_token(&self, token: &IngestToken, token_hash: &str) -> Result<()> {
        self.inner.create_ingest_token(token, token_hash).await
    }
    async fn list_ingest_tokens(&self, site: &SiteId) -> Result<Vec<IngestToken>> {
        self.inner.list_ingest_tokens(site).await
    }
    async fn delete_ingest_token(&self, id: &str) -> Result<bool> {
        self.inner.delete_ingest_token(id).await
    }
    async fn ingest_token_site(&self, token_hash: &str) -> Result<Option<SiteId>> {
        self.inner.ingest_token_site(token_hash).await
    }
    async fn set_mqtt_credential(
        &self,
        device: &DeviceId,
        username: &str,
        hash: &str,
    ) -> Result<bool> {
        self.inner.set_mqtt_credential(device, username, hash).await
    }
    async fn delete_mqtt_credential(&self, device: &DeviceId) -> Result<bool> {
        self.inner.delete_mqtt_credential(device).await
    }
    async fn mqtt_credential(&self, username: &str) -> Result<Option<(DeviceId, String)>> {
        self.inner.mqtt_credential(username).await
    }
    async fn mqtt_username(&self, device: &DeviceId) -> Result<Option<String>> {
        self.inner.mqtt_username(device).await
    }
    async fn bind_device(&self, binding: &Binding) -> Result<bool> {
        self.inner.bind_device(binding).await
    }
    async fn unbind_device(&self, format: &str, vendor_id: &str) -> Result<bool> {
        self.inner.unbind_device(format, vendor_id).await
    }
    async fn list_bindings(&self) -> Result<Vec<Binding>> {
        self.inner.list_bindings().await
    }
    async fn device_bindings(&self, device: &DeviceId) -> Result<Vec<Binding>> {
        self.inner.device_bindings(device).await
    }
    async fn upsert_pending(&self, p: &PendingDevice) -> Result<()> {
        self.inner.upsert_pending(p).await
    }
    async fn list_pending(&self) -> Result<Vec<PendingDevice>> {
        self.inner.list_pending().await
    }
    async fn get_pending(&self, format: &str, vendor_id: &str) -> Result<Option<PendingDevice>> {
        self.inner.get_pending(format, vendor_id).await
    }
    async fn delete_pending(&self, format: &str, vendor_id: &str) -> Result<bool> {
        self.inner.delete_pending(format, vendor_id).await
    }
    async fn set_rejected(&self, format: &str, vendor_id: &str, rejected: bool) -> Result<()> {
        self.inner.set_rejected(format, vendor_id, rejected).await
    }
    async fn list_rejected(&self) -> Result<Vec<(String, String)>> {
        self.inner.list_rejected().await
    }
    async fn set_tcp_enrollment(&self, site: &SiteId, open: bool) -> Result<bool> {
        self.inner.set_tcp_enrollment(site, open).await
    }
    async fn tcp_enrollment_sites(&self) -> Result<Vec<SiteId>> {
        self.inner.tcp_enrollment_sites().await
    }
    async fn series_id(&self, device: &DeviceId, channel: &str) -> Result<SeriesId> {
        self.inner.series_id(device, channel).await
    }
    async fn list_series(&self) -> Result<Vec<SeriesInfo>> {
        self.inner.list_series().await
    }
    async fn append(&self, batch: &[SeriesPoints]) -> Result<()> {
        tokio::time::sleep(self.delay).await;
        self.inner.append(batch).await
    }
    async fn upsert(&self, series: SeriesId, points: &[Point]) -> Result<Vec<Point>> {
        self.inner.upsert(series, points).await
    }
    async fn read_raw(
        &self,
        series: SeriesId,
        from: TsMs,
        to: TsMs,
        limit: usize,
    ) -> Result<Vec<Point>> {
        self.inner.read_raw(series, from, to, limit).await
    }
    async fn read_raw_before(
        &self,
        series: SeriesId,
        before: TsMs,
        limit: usize,
    ) -> Result<Vec<Point>> {
        self.inner.read_raw_before(series, before, limit).await
    }
    async fn latest(&self) -> Result<Vec<(SeriesId, Point)>> {
        self.inner.latest().await
    }
    async fn write_rollups(&self, write: &RollupWrite) -> Result<()> {
        self.inner.write_rollups(write).await
    }
    async fn read_rollups(
        &self,
        tier: BucketTier,
        series: SeriesId,
        from: TsMs,
        to: TsMs,
    ) -> Result<Vec<RollupRow>> {
        self.inner.read_rollups(tier, series, from, to).await
    }
    async fn maintain(&self, now: TsMs) -> Result<MaintenanceReport> {
        self.inner.maintain(now).await
    }
    async fn apply_retention(&self, policy: &Retention, now: TsMs) -> Result<u64> {
        self.inner.apply_retention(policy, now).await
    }
    async fn disk_bytes(&self) -> Result<u64> {
        self.inner.disk_bytes().await
    }
}

fn readings(n: usize, start: i64) -> Vec<Reading> {
    (0..n)
        .map(|i| Reading {
            device: DeviceId::parse("d").unwrap(),
            channel: ChannelName::default(),
            ts: TsMs(start + i as i64 * 1000),
            values: Values::new().with(Quantity::Power, 1.0),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_holds_writers_back_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let store = SlowAppends {
        inner: SqliteStore::open(dir.path().join("w.db")).unwrap(),
        delay: Duration::from_millis(1500),
    };
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
    let config = EngineConfig {
        max_queued_readings: 100,
        queue_timeout: Duration::from_millis(300),
        ..EngineConfig::default()
    };
    let (engine, tasks) = Engine::start(Arc::new(store), config).await.unwrap();
    engine.registry().put_device(&device);
    let now = TsMs::now().0 - 3_600_000;

    // The first writer fills the queue and waits for the slow store.
    let first = {
        let e = engine.clone();
        tokio::spawn(async move { e.write(readings(100, now)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        engine
            .metrics()
            .queue_depth
            .load(std::sync::atomic::Ordering::Relaxed),
        100
    );

    // The second finds no room: it waits out the queue timeout, then is told to retry.
    let t = Instant::now();
    let second = engine.write(readings(10, now + 200_000)).await;
    assert!(
        matches!(second, Err(EngineError::Overloaded(_))),
        "{second:?}"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "it waited for room first"
    );
    assert_eq!(second.unwrap_err().code(), "overloaded");

    // Nothing is lost: the first write completes, and room frees up again.
    assert_eq!(first.await.unwrap().unwrap(), 100);
    assert_eq!(engine.write(readings(10, now + 300_000)).await.unwrap(), 10);
    assert_eq!(
        engine
            .metrics()
            .queue_depth
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    drop(engine);
    tasks.shutdown().await;
}
