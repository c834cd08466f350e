//! Wattline's storage layer: the [`Store`] trait and its two backends.
//!
//! The ingest engine above decides *what* to write (deduplicated, ordered points; merged
//! rollups); a backend decides *how* it lies on disk. The embedded SQLite backend keeps raw
//! readings as compressed column chunks (a few bytes per reading); PostgreSQL keeps them as
//! plain rows in monthly partitions. Both keep rollups in plain tables with the same columns
//! (see [`schema`]), so SQL users see one model.
//!
//! Every backend passes the same suite (`testsuite.rs`), run once per backend.

pub mod codec;
pub mod error;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod schema;
pub mod sqlite;
mod staging;
#[cfg(test)]
mod testsuite;
pub mod types;

use std::sync::Arc;

use async_trait::async_trait;
use wattline_domain::{
    ApiToken, AuditEvent, BucketTier, Device, DeviceId, Email, Point, SeriesId, Session, Site,
    SiteId, TsMs, User, UserId,
};

pub use error::StoreError;
pub use types::*;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What every storage backend offers. All methods are safe to call concurrently; a method
/// that writes returns only once its effect is durable.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`, for logs and metrics.
    fn backend(&self) -> &'static str;

    // ---- sites
    /// Fails with [`StoreError::Conflict`] when the id is taken.
    async fn create_site(&self, site: &Site) -> Result<()>;
    async fn get_site(&self, id: &SiteId) -> Result<Option<Site>>;
    async fn list_sites(&self) -> Result<Vec<Site>>;
    /// Returns false when no such site exists.
    async fn update_site(&self, site: &Site) -> Result<bool>;
    /// Fails with [`StoreError::Conflict`] while devices still belong to the site.
    async fn delete_site(&self, id: &SiteId) -> Result<bool>;

    // ---- devices
    /// `token_hash` is the hash of the device's ingest token; the token itself is never stored.
    async fn create_device(&self, device: &Device, token_hash: &str) -> Result<()>;
    async fn get_device(&self, id: &DeviceId) -> Result<Option<Device>>;
    async fn list_devices(&self) -> Result<Vec<Device>>;
    async fn update_device(&self, device: &Device) -> Result<bool>;
    async fn set_device_token(&self, id: &DeviceId, token_hash: &str) -> Result<bool>;
    /// Deletes the device with all its series, readings and rollups.
    async fn delete_device(&self, id: &DeviceId) -> Result<bool>;
    async fn device_by_token(&self, token_hash: &str) -> Result<Option<DeviceId>>;

    // ---- site ingest tokens (gateways, Telegraf)
    async fn create_ingest_token(&self, token: &IngestToken, token_hash: &str) -> Result<()>;
    async fn list_ingest_tokens(&self, site: &SiteId) -> Result<Vec<IngestToken>>;
    async fn delete_ingest_token(&self, id: &str) -> Result<bool>;
    async fn ingest_token_site(&self, token_hash: &str) -> Result<Option<SiteId>>;

    // ---- MQTT credentials: at most one per device. The password is kept only as a hash
    // (hex SHA-256, computed by the caller).
    /// Sets or replaces the device's credential. Returns false when no such device exists;
    /// fails with [`StoreError::Conflict`] when `username` belongs to another device.
    async fn set_mqtt_credential(
        &self,
        device: &DeviceId,
        username: &str,
        password_hash: &str,
    ) -> Result<bool>;
    /// Returns false when the device had no credential.
    async fn delete_mqtt_credential(&self, device: &DeviceId) -> Result<bool>;
    /// The device and password hash of a username (case-sensitive).
    async fn mqtt_credential(&self, username: &str) -> Result<Option<(DeviceId, String)>>;
    /// The device's MQTT username, if it has a credential.
    async fn mqtt_username(&self, device: &DeviceId) -> Result<Option<String>>;

    // ---- topic bindings: a vendor identity (format, vendor id) -> a registered device
    /// Returns false when no such device exists. Binding an identity again to the same device
    /// succeeds and keeps the first `created_at`; fails with [`StoreError::Conflict`] when the
    /// identity is bound to another device.
    async fn bind_device(&self, binding: &Binding) -> Result<bool>;
    async fn unbind_device(&self, format: &str, vendor_id: &str) -> Result<bool>;
    /// Ordered by (format, vendor id).
    async fn list_bindings(&self) -> Result<Vec<Binding>>;
    /// Ordered by (format, vendor id).
    async fn device_bindings(&self, device: &DeviceId) -> Result<Vec<Binding>>;

    // ---- pending devices: vendor identities seen on MQTT that no binding knows, awaiting an
    // admin's accept or reject
    /// Inserts, or merges into what is stored: `first_seen` = min, `last_seen` = max,
    /// `messages` += `p.messages` (saturating), `last_topic` and `sample` replaced by `p`'s.
    async fn upsert_pending(&self, p: &PendingDevice) -> Result<()>;
    /// Newest `last_seen` first.
    async fn list_pending(&self) -> Result<Vec<PendingDevice>>;
    async fn get_pending(&self, format: &str, vendor_id: &str) -> Result<Option<PendingDevice>>;
    async fn delete_pending(&self, format: &str, vendor_id: &str) -> Result<bool>;
    /// Rejected identities stay rejected (their messages are dropped without listing them as
    /// pending) until un-rejected. Setting either state twice is harmless.
    async fn set_rejected(&self, format: &str, vendor_id: &str, rejected: bool) -> Result<()>;
    /// (format, vendor id) pairs, ordered.
    async fn list_rejected(&self) -> Result<Vec<(String, String)>>;

    // ---- TCP socket meters: whether a site enrolls meters that ask for an id (off unless
    // an admin opens it; a deleted site takes its setting along)
    /// Opens or closes enrollment for the site; setting a state twice is harmless. Returns
    /// false when no such site exists.
    async fn set_tcp_enrollment(&self, site: &SiteId, open: bool) -> Result<bool>;
    /// The sites with enrollment open, ordered by id.
    async fn tcp_enrollment_sites(&self) -> Result<Vec<SiteId>>;

    // ---- users: people who log in. Passwords are kept only as argon2 PHC strings, hashed
    // by the caller; a user's sites are a set (deleting a site removes it from every user).
    /// Fails with [`StoreError::Conflict`] when the id or the e-mail is taken, and with
    /// [`StoreError::Invalid`] when one of `user.sites` does not exist.
    async fn create_user(&self, user: &User, password_hash: &str) -> Result<()>;
    /// The user and their password hash.
    async fn get_user(&self, id: &UserId) -> Result<Option<(User, String)>>;
    async fn user_by_email(&self, email: &Email) -> Result<Option<(User, String)>>;
    /// Every user, ordered by e-mail.
    async fn list_users(&self) -> Result<Vec<User>>;
    /// Replaces e-mail, role, sites and the disabled flag. Returns false when no such user
    /// exists; fails like `create_user` on a taken e-mail or an unknown site.
    async fn update_user(&self, user: &User) -> Result<bool>;
    async fn set_user_password(&self, id: &UserId, password_hash: &str) -> Result<bool>;
    /// Deletes the user with their sessions and API tokens.
    async fn delete_user(&self, id: &UserId) -> Result<bool>;
    async fn count_users(&self) -> Result<u64>;

    // ---- browser sessions, keyed by the hash of the cookie value
    async fn create_session(&self, session: &Session) -> Result<()>;
    async fn get_session(&self, id_hash: &str) -> Result<Option<Session>>;
    /// Records a use: moves `last_seen_at` and `expires_at`. False when the session is gone.
    async fn touch_session(
        &self,
        id_hash: &str,
        last_seen_at: TsMs,
        expires_at: TsMs,
    ) -> Result<bool>;
    async fn delete_session(&self, id_hash: &str) -> Result<bool>;
    /// Ends every session of the user but `keep` (the one changing its password); returns how
    /// many ended.
    async fn delete_user_sessions(&self, user: &UserId, keep: Option<&str>) -> Result<u64>;
    /// The user's sessions, newest first.
    async fn list_user_sessions(&self, user: &UserId) -> Result<Vec<Session>>;
    /// Drops sessions whose `expires_at <= now`; returns how many.
    async fn purge_sessions(&self, now: TsMs) -> Result<u64>;

    // ---- API tokens of users, stored as the hash of the token
    /// Fails with [`StoreError::Conflict`] on a taken id, [`StoreError::Invalid`] for an
    /// unknown user.
    async fn create_api_token(&self, token: &ApiToken, token_hash: &str) -> Result<()>;
    async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>>;
    /// The tokens of one user, or of everyone with `None`; newest first.
    async fn list_api_tokens(&self, user: Option<&UserId>) -> Result<Vec<ApiToken>>;
    async fn get_api_token(&self, id: &str) -> Result<Option<ApiToken>>;
    async fn delete_api_token(&self, id: &str) -> Result<bool>;
    /// Records a use (coarsely: callers touch at most every few minutes).
    async fn touch_api_token(&self, id: &str, used_at: TsMs) -> Result<()>;

    // ---- audit log: append-only
    /// Stores the event and returns the id it got (ids grow with insertion order).
    async fn append_audit(&self, event: &AuditEvent) -> Result<i64>;
    /// Matching events, newest first, at most `query.limit`.
    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>>;

    // ---- series
    /// The series of (device, channel), created on first use.
    async fn series_id(&self, device: &DeviceId, channel: &str) -> Result<SeriesId>;
    async fn list_series(&self) -> Result<Vec<SeriesInfo>>;

    // ---- raw readings
    /// Writes a batch in one durable step. Each `SeriesPoints` is sorted by ascending, unique
    /// timestamps. Points are usually newer than anything stored (the fast path backends
    /// optimise for), but need not be: a point with the timestamp of a stored one is laid over
    /// it (per quantity, newer wins), exactly as `upsert` does.
    async fn append(&self, batch: &[SeriesPoints]) -> Result<()>;
    /// Merges points that may overlap stored ones: a stored point with the same timestamp has
    /// the new values laid over it (per quantity, newer wins). Returns the merged points at
    /// the given timestamps, as now stored.
    async fn upsert(&self, series: SeriesId, points: &[Point]) -> Result<Vec<Point>>;
    /// Points with `from <= ts < to`, ascending, at most `limit`.
    async fn read_raw(
        &self,
        series: SeriesId,
        from: TsMs,
        to: TsMs,
        limit: usize,
    ) -> Result<Vec<Point>>;
    /// Points with `ts < before`, newest first, at most `limit`.
    async fn read_raw_before(
        &self,
        series: SeriesId,
        before: TsMs,
        limit: usize,
    ) -> Result<Vec<Point>>;
    /// The newest point of every series that has one.
    async fn latest(&self) -> Result<Vec<(SeriesId, Point)>>;

    // ---- rollups
    /// Applies rollup changes and watermarks in one transaction.
    async fn write_rollups(&self, write: &RollupWrite) -> Result<()>;
    /// Rollup rows of one series with `from <= bucket < to`, ascending.
    async fn read_rollups(
        &self,
        tier: BucketTier,
        series: SeriesId,
        from: TsMs,
        to: TsMs,
    ) -> Result<Vec<RollupRow>>;

    // ---- upkeep
    /// Backend housekeeping that keeps storage compact and fast (chunk compaction, partition
    /// creation). Safe to call at any time; cheap when there is nothing to do.
    async fn maintain(&self, now: TsMs) -> Result<MaintenanceReport>;
    /// Deletes data older than the policy keeps; returns the number of rows or chunks removed.
    async fn apply_retention(&self, policy: &Retention, now: TsMs) -> Result<u64>;
    /// Bytes the backend occupies on disk (database files, or the relations' total size).
    async fn disk_bytes(&self) -> Result<u64>;
    /// Makes everything written so far self-contained and compact on disk (e.g. compacts
    /// chunks and folds a write-ahead log back into the database file). Called on shutdown;
    /// the store stays usable.
    async fn checkpoint(&self) -> Result<()> {
        Ok(())
    }
}

pub type DynStore = Arc<dyn Store>;
