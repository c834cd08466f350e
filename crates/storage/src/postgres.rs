//! The PostgreSQL backend: plain rows for SQL users, monthly partitions for raw readings.
//!
//! Layout (see [`MIGRATIONS`]):
//! - `sites`, `devices`, `ingest_tokens`, `series`: the catalog.
//! - `readings(series_id, ts, voltage, current, …, energy_export)`: one row per raw point, one
//!   `double precision` column per [`Quantity`] (named by [`Quantity::field`], NULL when the
//!   point has no value of it), `PARTITION BY RANGE (ts)` with one partition per UTC month
//!   (`readings_y2026m01`). Partitions are created on demand before a write touches a month,
//!   and ahead of time by [`Store::maintain`]; there is deliberately no DEFAULT partition (it
//!   would have to be scanned, and could block, every time a new month is attached).
//! - `rollup_1m`, `rollup_1h`, `rollup_1d`: the columns described in [`crate::schema`].
//! - `users`, `user_sites`, `sessions`, `api_tokens`, `audit_log`: accounts and their trail.
//!
//! Timestamps are `timestamptz` with microsecond resolution; Wattline's millisecond instants
//! round-trip exactly. Instants outside the years 1..=9999 are refused as
//! [`StoreError::Invalid`] when written, and query bounds are clamped to that range.
//!
//! Several Wattline nodes may share one database: schema migrations and partition changes
//! take transaction-scoped advisory locks, and every write is an idempotent
//! `INSERT … ON CONFLICT`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};
use wattline_domain::{
    Agg, ApiToken, AuditEvent, BucketTier, Device, DeviceId, Email, Point, QStat, Quantity, Role,
    SeriesId, Session, Site, SiteId, TokenScope, TsMs, User, UserId, Values,
};

use crate::schema::{rollup_table, stat_columns};
use crate::types::storable_sample;
use crate::{
    AuditQuery, Binding, IngestToken, MaintenanceReport, PendingDevice, Result, Retention,
    RollupRow, RollupWrite, SeriesInfo, SeriesPoints, Store, StoreError,
};

/// Schema migrations, applied in order; version = index + 1. Never edit an applied one: add a
/// new entry instead. The rollup columns must stay in [`stat_columns`] order (a test checks).
pub const MIGRATIONS: &[&str] = &[MIGRATION_1, MIGRATION_2, MIGRATION_3, MIGRATION_4];

macro_rules! rollup_table_ddl {
    ($name:literal) => {
        concat!(
            "CREATE TABLE ",
            $name,
            " (
    series_id bigint NOT NULL,
    bucket timestamptz NOT NULL,
    last_ts timestamptz,
    energy_import_kwh double precision NOT NULL DEFAULT 0,
    energy_export_kwh double precision NOT NULL DEFAULT 0,
    voltage_n int, voltage_avg double precision, voltage_min double precision,
    voltage_max double precision, voltage_last double precision,
    current_n int, current_avg double precision, current_min double precision,
    current_max double precision, current_last double precision,
    power_n int, power_avg double precision, power_min double precision,
    power_max double precision, power_last double precision,
    apparent_power_n int, apparent_power_avg double precision, apparent_power_min double precision,
    apparent_power_max double precision, apparent_power_last double precision,
    reactive_power_n int, reactive_power_avg double precision, reactive_power_min double precision,
    reactive_power_max double precision, reactive_power_last double precision,
    power_factor_n int, power_factor_avg double precision, power_factor_min double precision,
    power_factor_max double precision, power_factor_last double precision,
    frequency_n int, frequency_avg double precision, frequency_min double precision,
    frequency_max double precision, frequency_last double precision,
    energy_n int, energy_avg double precision, energy_min double precision,
    energy_max double precision, energy_last double precision,
    energy_export_n int, energy_export_avg double precision, energy_export_min double precision,
    energy_export_max double precision, energy_export_last double precision,
    PRIMARY KEY (series_id, bucket)
);
"
        )
    };
}

const MIGRATION_1: &str = concat!(
    "
CREATE TABLE sites (
    id text PRIMARY KEY,
    name text NOT NULL,
    timezone text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE devices (
    id text PRIMARY KEY,
    name text NOT NULL,
    site_id text NOT NULL REFERENCES sites (id),
    kind text NOT NULL,
    labels jsonb NOT NULL DEFAULT '{}',
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);
CREATE INDEX devices_site_id_idx ON devices (site_id);
CREATE TABLE ingest_tokens (
    id text PRIMARY KEY,
    site_id text NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    name text NOT NULL,
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);
CREATE INDEX ingest_tokens_site_id_idx ON ingest_tokens (site_id);
CREATE TABLE series (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id text NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    channel text NOT NULL,
    rollup_watermark timestamptz,
    UNIQUE (device_id, channel)
);
CREATE TABLE readings (
    series_id bigint NOT NULL,
    ts timestamptz NOT NULL,
    voltage double precision,
    current double precision,
    power double precision,
    apparent_power double precision,
    reactive_power double precision,
    power_factor double precision,
    frequency double precision,
    energy double precision,
    energy_export double precision,
    PRIMARY KEY (series_id, ts)
) PARTITION BY RANGE (ts);
",
    rollup_table_ddl!("rollup_1m"),
    rollup_table_ddl!("rollup_1h"),
    rollup_table_ddl!("rollup_1d"),
);

/// MQTT credentials, topic bindings, pending and rejected vendor identities. Credentials and
/// bindings go with their device (ON DELETE CASCADE).
const MIGRATION_2: &str = "
CREATE TABLE mqtt_credentials (
    device_id text PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    username text NOT NULL,
    password_hash text NOT NULL
);
CREATE UNIQUE INDEX mqtt_credentials_username_key ON mqtt_credentials (username);
CREATE TABLE device_bindings (
    format text NOT NULL,
    vendor_id text NOT NULL,
    device_id text NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (format, vendor_id)
);
CREATE INDEX device_bindings_device_id_idx ON device_bindings (device_id);
CREATE TABLE pending_devices (
    format text NOT NULL,
    vendor_id text NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    messages bigint NOT NULL,
    last_topic text NOT NULL,
    sample text NOT NULL,
    PRIMARY KEY (format, vendor_id)
);
CREATE TABLE rejected_devices (
    format text NOT NULL,
    vendor_id text NOT NULL,
    PRIMARY KEY (format, vendor_id)
);
";

/// Sites that enroll TCP socket meters asking for an id; a row means open. The setting goes
/// with its site.
const MIGRATION_3: &str = "
CREATE TABLE tcp_enrollment (
    site_id text PRIMARY KEY REFERENCES sites (id) ON DELETE CASCADE,
    opened_at timestamptz NOT NULL DEFAULT now()
);
";

/// Users, their sites, browser sessions, API tokens, the audit log. A user takes their site
/// assignments, sessions and tokens along; a deleted site leaves every user's list. An API
/// token's `sites` is NULL (all of the user's sites) or an array of site ids; they are not
/// foreign keys because the token only narrows the user's own list.
const MIGRATION_4: &str = "
CREATE TABLE users (
    id text PRIMARY KEY,
    email text NOT NULL UNIQUE,
    role text NOT NULL,
    password_hash text NOT NULL,
    disabled boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL
);
CREATE TABLE user_sites (
    user_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    site_id text NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, site_id)
);
CREATE INDEX user_sites_site_id_idx ON user_sites (site_id);
CREATE TABLE sessions (
    id_hash text PRIMARY KEY,
    user_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    address text NOT NULL,
    user_agent text NOT NULL
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);
CREATE TABLE api_tokens (
    id text PRIMARY KEY,
    user_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name text NOT NULL,
    scope text NOT NULL,
    sites text[],
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    last_used_at timestamptz
);
CREATE INDEX api_tokens_user_id_idx ON api_tokens (user_id);
CREATE TABLE audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts timestamptz NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    address text NOT NULL,
    detail text NOT NULL
);
CREATE INDEX audit_log_ts_idx ON audit_log (ts);
";

/// The tables this backend owns (partitions of `readings` are found through `pg_inherits`).
const TABLES: &[&str] = &[
    "schema_migrations",
    "sites",
    "devices",
    "ingest_tokens",
    "series",
    "readings",
    "rollup_1m",
    "rollup_1h",
    "rollup_1d",
    "mqtt_credentials",
    "device_bindings",
    "pending_devices",
    "rejected_devices",
    "tcp_enrollment",
    "users",
    "user_sites",
    "sessions",
    "api_tokens",
    "audit_log",
];

/// First keys of the two-key advisory locks; the second key is the schema's hash.
const LOCK_MIGRATIONS: i32 = 0x5761_7401;
const LOCK_PARTITIONS: i32 = 0x5761_7402;

/// Stored instants must lie in [0001-01-01, 10000-01-01) UTC.
const MIN_MS: i64 = -62_135_596_800_000;
const MAX_MS: i64 = 253_402_300_800_000;

const POOL_SIZE: usize = 16;

/// A month as `year * 12 + (month - 1)`, UTC.
type MonthKey = i32;

pub struct PgStore {
    pool: Pool,
    schema: Option<String>,
    /// Months whose `readings` partition is known to exist.
    months: Mutex<HashSet<MonthKey>>,
    sql: Sql,
    /// Test stores drop their schema when dropped: (url, schema).
    drop_on_drop: Option<(String, String)>,
}

/// Statements built once from the quantity list.
struct Sql {
    append: String,
    upsert: String,
    read_raw: String,
    read_raw_before: String,
    latest: String,
    rollup_merge: HashMap<BucketTier, String>,
    rollup_replace: HashMap<BucketTier, String>,
    read_rollups: HashMap<BucketTier, String>,
}

impl PgStore {
    /// Connects (URL like `postgres://user@127.0.0.1:5432/db`, no TLS) and brings the schema in
    /// the connection's `search_path` up to date.
    pub async fn connect(url: &str) -> Result<PgStore> {
        Self::open(url, None).await
    }

    /// Like [`PgStore::connect`], but keeps everything in the PostgreSQL schema `schema`
    /// (created if missing; lowercase letters, digits and `_`), set as `search_path` of every
    /// pooled connection.
    pub async fn connect_with_schema(url: &str, schema: &str) -> Result<PgStore> {
        Self::open(url, Some(schema)).await
    }

    async fn open(url: &str, schema: Option<&str>) -> Result<PgStore> {
        let mut cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("bad PostgreSQL URL: {e}")))?;
        if let Some(s) = schema {
            check_schema_name(s)?;
            let opts = match cfg.get_options() {
                Some(o) if !o.trim().is_empty() => format!("{o} -c search_path={s}"),
                _ => format!("-c search_path={s}"),
            };
            cfg.options(opts);
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name("wattline");
        }
        let manager = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(10)))
            .wait_timeout(Some(Duration::from_secs(60)))
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let store = PgStore {
            pool,
            schema: schema.map(str::to_owned),
            months: Mutex::new(HashSet::new()),
            sql: Sql::build(),
            drop_on_drop: None,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The dedicated schema this store lives in, if it was opened with one.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Drops the store's dedicated schema with everything in it (tests clean up with it).
    pub async fn drop_schema(&self) -> Result<()> {
        let Some(schema) = &self.schema else {
            return Err(StoreError::Invalid(
                "this store was opened without a dedicated schema; refusing to drop".into(),
            ));
        };
        let client = self.client().await?;
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await?;
        self.months.lock().unwrap().clear();
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_err)
    }

    async fn migrate(&self) -> Result<()> {
        let mut client = self.client().await?;
        if let Some(schema) = &self.schema {
            let tx = client.transaction().await?;
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&LOCK_MIGRATIONS, &schema.as_str()],
            )
            .await?;
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await?;
            tx.commit().await?;
        }
        let tx = client.transaction().await?;
        lock(&tx, LOCK_MIGRATIONS).await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version int PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
        tx.commit().await?;
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i as i32 + 1;
            let fail = |e: tokio_postgres::Error| StoreError::Migration {
                version: version as u32,
                reason: e.to_string(),
            };
            let tx = client.transaction().await?;
            lock(&tx, LOCK_MIGRATIONS).await?;
            let applied = tx
                .query_opt(
                    "SELECT 1 FROM schema_migrations WHERE version = $1",
                    &[&version],
                )
                .await?
                .is_some();
            if applied {
                continue; // the transaction rolls back on drop: nothing was written
            }
            tx.batch_execute(sql).await.map_err(fail)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now())",
                &[&version],
            )
            .await
            .map_err(fail)?;
            tx.commit().await.map_err(fail)?;
            tracing::info!(version, schema = ?self.schema, "applied PostgreSQL schema migration");
        }
        Ok(())
    }

    /// Creates the `readings` partitions of `months` that are not known to exist; returns how
    /// many were created (by this call; another node may have created the rest).
    async fn ensure_partitions(
        &self,
        client: &mut deadpool_postgres::Object,
        months: &BTreeSet<MonthKey>,
    ) -> Result<u64> {
        let missing: Vec<MonthKey> = {
            let known = self.months.lock().unwrap();
            months
                .iter()
                .copied()
                .filter(|m| !known.contains(m))
                .collect()
        };
        if missing.is_empty() {
            return Ok(0);
        }
        let tx = client.transaction().await?;
        lock(&tx, LOCK_PARTITIONS).await?;
        let mut created = 0;
        for &m in &missing {
            let name = partition_name(m);
            let exists: bool = tx
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
                .await?
                .get(0);
            if !exists {
                tx.batch_execute(&format!(
                    "CREATE TABLE {name} PARTITION OF readings FOR VALUES FROM ('{}') TO ('{}')",
                    month_literal(m),
                    month_literal(m + 1)
                ))
                .await?;
                created += 1;
            }
        }
        tx.commit().await?;
        if created > 0 {
            tracing::debug!(created, "created readings partitions");
        }
        self.months.lock().unwrap().extend(missing);
        Ok(created)
    }

    /// Inserts or overlays raw rows (`rows` sorted and unique by (series, ts)).
    async fn write_readings(&self, rows: &[(i64, Point)], returning: bool) -> Result<Vec<Row>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut months = BTreeSet::new();
        let mut cur: Option<(i64, i64)> = None;
        for (_, p) in rows {
            check_ts(p.ts)?;
            if !cur.is_some_and(|(s, e)| p.ts.0 >= s && p.ts.0 < e) {
                let m = month_of(p.ts.0);
                months.insert(m);
                cur = Some((month_start_ms(m), month_start_ms(m + 1)));
            }
        }
        let cols = RawCols::new(rows);
        let params = cols.params();
        let mut client = self.client().await?;
        let sql = if returning {
            &self.sql.upsert
        } else {
            &self.sql.append
        };
        let stmt = client.prepare_cached(sql).await?;
        for attempt in 0..2 {
            self.ensure_partitions(&mut client, &months).await?;
            match client.query(&stmt, &params).await {
                Ok(rows) => return Ok(rows),
                // Another node's retention dropped a partition this node believed in.
                Err(e) if attempt == 0 && e.code() == Some(&SqlState::CHECK_VIOLATION) => {
                    tracing::warn!(error = %e, "readings partition missing; re-checking");
                    let mut known = self.months.lock().unwrap();
                    for m in &months {
                        known.remove(m);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the second attempt returns")
    }

    async fn readings_partitions(
        &self,
        client: &impl GenericClient,
    ) -> Result<Vec<(MonthKey, String)>> {
        let rows = client
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'readings'::regclass",
                &[],
            )
            .await?;
        let mut parts: Vec<(MonthKey, String)> = rows
            .iter()
            .filter_map(|r| {
                let name: String = r.get(0);
                parse_partition_name(&name).map(|m| (m, name))
            })
            .collect();
        parts.sort();
        Ok(parts)
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    // ---- sites

    async fn create_site(&self, site: &Site) -> Result<()> {
        check_ts(site.created_at)?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO sites (id, name, timezone, created_at) VALUES ($1, $2, $3, $4)",
                &[
                    &site.id.as_str(),
                    &site.name,
                    &site.timezone,
                    &to_sys(site.created_at),
                ],
            )
            .await
            .map_err(|e| conflict(e, || format!("site {}", site.id)))?;
        Ok(())
    }

    async fn get_site(&self, id: &SiteId) -> Result<Option<Site>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, name, timezone, created_at FROM sites WHERE id = $1",
                &[&id.as_str()],
            )
            .await?;
        row.map(|r| site_from_row(&r)).transpose()
    }

    async fn list_sites(&self) -> Result<Vec<Site>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, name, timezone, created_at FROM sites ORDER BY id",
                &[],
            )
            .await?;
        rows.iter().map(site_from_row).collect()
    }

    async fn update_site(&self, site: &Site) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE sites SET name = $2, timezone = $3 WHERE id = $1",
                &[&site.id.as_str(), &site.name, &site.timezone],
            )
            .await?;
        Ok(n > 0)
    }

    async fn delete_site(&self, id: &SiteId) -> Result<bool> {
        let client = self.client().await?;
        // Ingest tokens go with the site (ON DELETE CASCADE); devices must be deleted first.
        match client
            .execute("DELETE FROM sites WHERE id = $1", &[&id.as_str()])
            .await
        {
            Ok(n) => Ok(n > 0),
            Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => Err(StoreError::InUse(
                format!("site {id} still has devices; delete or move them first"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    // ---- devices

    async fn create_device(&self, device: &Device, token_hash: &str) -> Result<()> {
        check_ts(device.created_at)?;
        let labels = labels_json(device)?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO devices (id, name, site_id, kind, labels, token_hash, created_at)
                 VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7)",
                &[
                    &device.id.as_str(),
                    &device.name,
                    &device.site.as_str(),
                    &device.kind,
                    &labels,
                    &token_hash,
                    &to_sys(device.created_at),
                ],
            )
            .await
            .map_err(|e| device_write_err(e, device))?;
        Ok(())
    }

    async fn get_device(&self, id: &DeviceId) -> Result<Option<Device>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, name, site_id, kind, labels::text, created_at FROM devices WHERE id = $1",
                &[&id.as_str()],
            )
            .await?;
        row.map(|r| device_from_row(&r)).transpose()
    }

    async fn list_devices(&self) -> Result<Vec<Device>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, name, site_id, kind, labels::text, created_at FROM devices ORDER BY id",
                &[],
            )
            .await?;
        rows.iter().map(device_from_row).collect()
    }

    async fn update_device(&self, device: &Device) -> Result<bool> {
        let labels = labels_json(device)?;
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE devices SET name = $2, site_id = $3, kind = $4, labels = $5::text::jsonb
                 WHERE id = $1",
                &[
                    &device.id.as_str(),
                    &device.name,
                    &device.site.as_str(),
                    &device.kind,
                    &labels,
                ],
            )
            .await
            .map_err(|e| device_write_err(e, device))?;
        Ok(n > 0)
    }

    async fn set_device_token(&self, id: &DeviceId, token_hash: &str) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE devices SET token_hash = $2 WHERE id = $1",
                &[&id.as_str(), &token_hash],
            )
            .await
            .map_err(|e| conflict(e, || "a device with this token".to_owned()))?;
        Ok(n > 0)
    }

    async fn delete_device(&self, id: &DeviceId) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Lock the device row first so a concurrent series_id() can't add a series midway.
        let found = tx
            .query_opt(
                "SELECT 1 FROM devices WHERE id = $1 FOR UPDATE",
                &[&id.as_str()],
            )
            .await?
            .is_some();
        if !found {
            return Ok(false);
        }
        let ids: Vec<i64> = tx
            .query(
                "SELECT id FROM series WHERE device_id = $1",
                &[&id.as_str()],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !ids.is_empty() {
            tx.execute("DELETE FROM readings WHERE series_id = ANY($1)", &[&ids])
                .await?;
            for tier in BucketTier::ROLLUPS {
                tx.execute(
                    &format!(
                        "DELETE FROM {} WHERE series_id = ANY($1)",
                        rollup_table(tier)
                    ),
                    &[&ids],
                )
                .await?;
            }
        }
        // Series, the MQTT credential and bindings go by ON DELETE CASCADE.
        tx.execute("DELETE FROM devices WHERE id = $1", &[&id.as_str()])
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn device_by_token(&self, token_hash: &str) -> Result<Option<DeviceId>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id FROM devices WHERE token_hash = $1",
                &[&token_hash],
            )
            .await?;
        row.map(|r| parse_id(DeviceId::parse(r.get::<_, String>(0))))
            .transpose()
    }

    // ---- site ingest tokens

    async fn create_ingest_token(&self, token: &IngestToken, token_hash: &str) -> Result<()> {
        check_ts(token.created_at)?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO ingest_tokens (id, site_id, name, token_hash, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &token.id,
                    &token.site.as_str(),
                    &token.name,
                    &token_hash,
                    &to_sys(token.created_at),
                ],
            )
            .await
            .map_err(|e| match e.code() {
                Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                    StoreError::Invalid(format!("site {} does not exist", token.site))
                }
                Some(&SqlState::UNIQUE_VIOLATION) if is_token_constraint(&e) => {
                    StoreError::Conflict("an ingest token with this hash".to_owned())
                }
                _ => conflict(e, || format!("ingest token {}", token.id)),
            })?;
        Ok(())
    }

    async fn list_ingest_tokens(&self, site: &SiteId) -> Result<Vec<IngestToken>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, site_id, name, created_at FROM ingest_tokens WHERE site_id = $1
                 ORDER BY created_at, id",
                &[&site.as_str()],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(IngestToken {
                    id: r.try_get(0)?,
                    site: parse_id(SiteId::parse(r.try_get::<_, String>(1)?))?,
                    name: r.try_get(2)?,
                    created_at: from_sys(r.try_get(3)?),
                })
            })
            .collect()
    }

    async fn delete_ingest_token(&self, id: &str) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute("DELETE FROM ingest_tokens WHERE id = $1", &[&id])
            .await?;
        Ok(n > 0)
    }

    async fn ingest_token_site(&self, token_hash: &str) -> Result<Option<SiteId>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT site_id FROM ingest_tokens WHERE token_hash = $1",
                &[&token_hash],
            )
            .await?;
        row.map(|r| parse_id(SiteId::parse(r.get::<_, String>(0))))
            .transpose()
    }

    // ---- MQTT credentials

    async fn set_mqtt_credential(
        &self,
        device: &DeviceId,
        username: &str,
        password_hash: &str,
    ) -> Result<bool> {
        let client = self.client().await?;
        // Selecting from `devices` inserts nothing for an unknown device; the upsert covers
        // the device's own row, so only another device's username conflicts.
        let stmt = client
            .prepare_cached(
                "INSERT INTO mqtt_credentials (device_id, username, password_hash)
                 SELECT id, $2::text, $3::text FROM devices WHERE id = $1
                 ON CONFLICT (device_id) DO UPDATE
                 SET username = excluded.username, password_hash = excluded.password_hash",
            )
            .await?;
        match client
            .execute(&stmt, &[&device.as_str(), &username, &password_hash])
            .await
        {
            Ok(n) => Ok(n > 0),
            // The device was deleted between the SELECT and the insert's key check.
            Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => Ok(false),
            Err(e) => Err(conflict(e, || format!("MQTT username {username:?}"))),
        }
    }

    async fn delete_mqtt_credential(&self, device: &DeviceId) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM mqtt_credentials WHERE device_id = $1")
            .await?;
        Ok(client.execute(&stmt, &[&device.as_str()]).await? > 0)
    }

    async fn mqtt_credential(&self, username: &str) -> Result<Option<(DeviceId, String)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT device_id, password_hash FROM mqtt_credentials WHERE username = $1",
            )
            .await?;
        let row = client.query_opt(&stmt, &[&username]).await?;
        row.map(|r| {
            let device = parse_id(DeviceId::parse(r.try_get::<_, String>(0)?))?;
            Ok((device, r.try_get(1)?))
        })
        .transpose()
    }

    async fn mqtt_username(&self, device: &DeviceId) -> Result<Option<String>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT username FROM mqtt_credentials WHERE device_id = $1")
            .await?;
        let row = client.query_opt(&stmt, &[&device.as_str()]).await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    // ---- topic bindings

    async fn bind_device(&self, binding: &Binding) -> Result<bool> {
        check_ts(binding.created_at)?;
        let client = self.client().await?;
        // Selecting from `devices` inserts nothing for an unknown device. On an identity that
        // is already bound, the no-op update makes RETURNING name its device (and keeps its
        // created_at), atomically even against a concurrent unbind.
        let stmt = client
            .prepare_cached(
                "INSERT INTO device_bindings (format, vendor_id, device_id, created_at)
                 SELECT $1::text, $2::text, id, $4::timestamptz FROM devices WHERE id = $3
                 ON CONFLICT (format, vendor_id)
                 DO UPDATE SET device_id = device_bindings.device_id
                 RETURNING device_id",
            )
            .await?;
        let owner = match client
            .query_opt(
                &stmt,
                &[
                    &binding.format,
                    &binding.vendor_id,
                    &binding.device.as_str(),
                    &to_sys(binding.created_at),
                ],
            )
            .await
        {
            Ok(row) => row.map(|r| r.try_get::<_, String>(0)).transpose()?,
            // The device was deleted between the SELECT and the insert's key check.
            Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => None,
            Err(e) => return Err(e.into()),
        };
        match owner {
            None => Ok(false),
            Some(owner) if owner == binding.device.as_str() => Ok(true),
            Some(owner) => Err(StoreError::Conflict(format!(
                "a binding of {} {:?} to device {owner}",
                binding.format, binding.vendor_id
            ))),
        }
    }

    async fn unbind_device(&self, format: &str, vendor_id: &str) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM device_bindings WHERE format = $1 AND vendor_id = $2")
            .await?;
        Ok(client.execute(&stmt, &[&format, &vendor_id]).await? > 0)
    }

    async fn list_bindings(&self) -> Result<Vec<Binding>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT format, vendor_id, device_id, created_at FROM device_bindings
                 ORDER BY format, vendor_id",
            )
            .await?;
        let rows = client.query(&stmt, &[]).await?;
        rows.iter().map(binding_from_row).collect()
    }

    async fn device_bindings(&self, device: &DeviceId) -> Result<Vec<Binding>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT format, vendor_id, device_id, created_at FROM device_bindings
                 WHERE device_id = $1 ORDER BY format, vendor_id",
            )
            .await?;
        let rows = client.query(&stmt, &[&device.as_str()]).await?;
        rows.iter().map(binding_from_row).collect()
    }

    // ---- pending and rejected vendor identities

    async fn upsert_pending(&self, p: &PendingDevice) -> Result<()> {
        check_ts(p.first_seen)?;
        check_ts(p.last_seen)?;
        let client = self.client().await?;
        // The count saturates instead of failing the write with a bigint overflow.
        let stmt = client
            .prepare_cached(
                "INSERT INTO pending_devices
                     (format, vendor_id, first_seen, last_seen, messages, last_topic, sample)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (format, vendor_id) DO UPDATE SET
                     first_seen = LEAST(pending_devices.first_seen, excluded.first_seen),
                     last_seen = GREATEST(pending_devices.last_seen, excluded.last_seen),
                     messages = CASE
                         WHEN pending_devices.messages > 9223372036854775807 - excluded.messages
                         THEN 9223372036854775807
                         ELSE pending_devices.messages + excluded.messages END,
                     last_topic = excluded.last_topic,
                     sample = excluded.sample",
            )
            .await?;
        client
            .execute(
                &stmt,
                &[
                    &p.format,
                    &p.vendor_id,
                    &to_sys(p.first_seen),
                    &to_sys(p.last_seen),
                    &i64::try_from(p.messages).unwrap_or(i64::MAX),
                    &p.last_topic,
                    &storable_sample(&p.sample).as_ref(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn list_pending(&self) -> Result<Vec<PendingDevice>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT format, vendor_id, first_seen, last_seen, messages, last_topic, sample
                 FROM pending_devices ORDER BY last_seen DESC, format, vendor_id",
            )
            .await?;
        let rows = client.query(&stmt, &[]).await?;
        rows.iter().map(pending_from_row).collect()
    }

    async fn get_pending(&self, format: &str, vendor_id: &str) -> Result<Option<PendingDevice>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT format, vendor_id, first_seen, last_seen, messages, last_topic, sample
                 FROM pending_devices WHERE format = $1 AND vendor_id = $2",
            )
            .await?;
        let row = client.query_opt(&stmt, &[&format, &vendor_id]).await?;
        row.as_ref().map(pending_from_row).transpose()
    }

    async fn delete_pending(&self, format: &str, vendor_id: &str) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM pending_devices WHERE format = $1 AND vendor_id = $2")
            .await?;
        Ok(client.execute(&stmt, &[&format, &vendor_id]).await? > 0)
    }

    async fn set_rejected(&self, format: &str, vendor_id: &str, rejected: bool) -> Result<()> {
        let client = self.client().await?;
        let sql = if rejected {
            "INSERT INTO rejected_devices (format, vendor_id) VALUES ($1, $2)
             ON CONFLICT (format, vendor_id) DO NOTHING"
        } else {
            "DELETE FROM rejected_devices WHERE format = $1 AND vendor_id = $2"
        };
        let stmt = client.prepare_cached(sql).await?;
        client.execute(&stmt, &[&format, &vendor_id]).await?;
        Ok(())
    }

    async fn list_rejected(&self) -> Result<Vec<(String, String)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT format, vendor_id FROM rejected_devices ORDER BY format, vendor_id",
            )
            .await?;
        let rows = client.query(&stmt, &[]).await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    // ---- TCP socket meters

    async fn set_tcp_enrollment(&self, site: &SiteId, open: bool) -> Result<bool> {
        let client = self.client().await?;
        // One statement either way, so that "no such site" and the change are one snapshot.
        let sql = if open {
            "WITH s AS (SELECT id FROM sites WHERE id = $1),
                  ins AS (INSERT INTO tcp_enrollment (site_id) SELECT id FROM s
                          ON CONFLICT (site_id) DO NOTHING)
             SELECT count(*) FROM s"
        } else {
            "WITH s AS (SELECT id FROM sites WHERE id = $1),
                  del AS (DELETE FROM tcp_enrollment WHERE site_id = $1)
             SELECT count(*) FROM s"
        };
        let stmt = client.prepare_cached(sql).await?;
        let row = client.query_one(&stmt, &[&site.as_str()]).await?;
        Ok(row.get::<_, i64>(0) > 0)
    }

    async fn tcp_enrollment_sites(&self) -> Result<Vec<SiteId>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT site_id FROM tcp_enrollment ORDER BY site_id COLLATE \"C\"")
            .await?;
        let rows = client.query(&stmt, &[]).await?;
        rows.iter()
            .map(|r| parse_id(SiteId::parse(r.try_get::<_, String>(0)?)))
            .collect()
    }

    // ---- users

    async fn create_user(&self, user: &User, password_hash: &str) -> Result<()> {
        check_ts(user.created_at)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO users (id, email, role, password_hash, disabled, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await?;
        tx.execute(
            &stmt,
            &[
                &user.id.as_str(),
                &user.email.as_str(),
                &user.role.as_str(),
                &password_hash,
                &user.disabled,
                &to_sys(user.created_at),
            ],
        )
        .await
        .map_err(|e| user_write_err(e, user))?;
        insert_user_sites(&tx, user).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_user(&self, id: &UserId) -> Result<Option<(User, String)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1"
            ))
            .await?;
        let row = client.query_opt(&stmt, &[&id.as_str()]).await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<(User, String)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users u WHERE u.email = $1"
            ))
            .await?;
        let row = client.query_opt(&stmt, &[&email.as_str()]).await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        let client = self.client().await?;
        // Byte order, as SQLite sorts, whatever the database's collation.
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users u ORDER BY u.email COLLATE \"C\""
            ))
            .await?;
        let rows = client.query(&stmt, &[]).await?;
        rows.iter().map(|r| Ok(user_from_row(r)?.0)).collect()
    }

    async fn update_user(&self, user: &User) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let stmt = tx
            .prepare_cached("UPDATE users SET email = $2, role = $3, disabled = $4 WHERE id = $1")
            .await?;
        let updated = tx
            .execute(
                &stmt,
                &[
                    &user.id.as_str(),
                    &user.email.as_str(),
                    &user.role.as_str(),
                    &user.disabled,
                ],
            )
            .await
            .map_err(|e| user_write_err(e, user))?;
        if updated == 0 {
            return Ok(false);
        }
        tx.execute(
            "DELETE FROM user_sites WHERE user_id = $1",
            &[&user.id.as_str()],
        )
        .await?;
        insert_user_sites(&tx, user).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn set_user_password(&self, id: &UserId, password_hash: &str) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("UPDATE users SET password_hash = $2 WHERE id = $1")
            .await?;
        Ok(client
            .execute(&stmt, &[&id.as_str(), &password_hash])
            .await?
            > 0)
    }

    async fn delete_user(&self, id: &UserId) -> Result<bool> {
        let client = self.client().await?;
        // Site assignments, sessions and API tokens go by ON DELETE CASCADE.
        let stmt = client
            .prepare_cached("DELETE FROM users WHERE id = $1")
            .await?;
        Ok(client.execute(&stmt, &[&id.as_str()]).await? > 0)
    }

    async fn count_users(&self) -> Result<u64> {
        let client = self.client().await?;
        let row = client.query_one("SELECT count(*) FROM users", &[]).await?;
        Ok(row.try_get::<_, i64>(0)?.max(0) as u64)
    }

    // ---- browser sessions

    async fn create_session(&self, session: &Session) -> Result<()> {
        for ts in [session.created_at, session.last_seen_at, session.expires_at] {
            check_ts(ts)?;
        }
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ))
            .await?;
        client
            .execute(
                &stmt,
                &[
                    &session.id_hash,
                    &session.user.as_str(),
                    &to_sys(session.created_at),
                    &to_sys(session.last_seen_at),
                    &to_sys(session.expires_at),
                    &session.address,
                    &session.user_agent,
                ],
            )
            .await
            .map_err(|e| match e.code() {
                Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                    StoreError::Invalid(format!("unknown user {}", session.user))
                }
                _ => conflict(e, || "a session with this id".to_owned()),
            })?;
        Ok(())
    }

    async fn get_session(&self, id_hash: &str) -> Result<Option<Session>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE id_hash = $1"
            ))
            .await?;
        let row = client.query_opt(&stmt, &[&id_hash]).await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn touch_session(
        &self,
        id_hash: &str,
        last_seen_at: TsMs,
        expires_at: TsMs,
    ) -> Result<bool> {
        check_ts(last_seen_at)?;
        check_ts(expires_at)?;
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE sessions SET last_seen_at = $2, expires_at = $3 WHERE id_hash = $1",
            )
            .await?;
        let n = client
            .execute(
                &stmt,
                &[&id_hash, &to_sys(last_seen_at), &to_sys(expires_at)],
            )
            .await?;
        Ok(n > 0)
    }

    async fn delete_session(&self, id_hash: &str) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM sessions WHERE id_hash = $1")
            .await?;
        Ok(client.execute(&stmt, &[&id_hash]).await? > 0)
    }

    async fn delete_user_sessions(&self, user: &UserId, keep: Option<&str>) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "DELETE FROM sessions
                 WHERE user_id = $1 AND ($2::text IS NULL OR id_hash <> $2::text)",
            )
            .await?;
        Ok(client.execute(&stmt, &[&user.as_str(), &keep]).await?)
    }

    async fn list_user_sessions(&self, user: &UserId) -> Result<Vec<Session>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = $1
                 ORDER BY created_at DESC, id_hash COLLATE \"C\" DESC"
            ))
            .await?;
        let rows = client.query(&stmt, &[&user.as_str()]).await?;
        rows.iter().map(session_from_row).collect()
    }

    async fn purge_sessions(&self, now: TsMs) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM sessions WHERE expires_at <= $1")
            .await?;
        Ok(client.execute(&stmt, &[&to_sys(clamp_ts(now))]).await?)
    }

    // ---- API tokens of users

    async fn create_api_token(&self, token: &ApiToken, token_hash: &str) -> Result<()> {
        check_ts(token.created_at)?;
        for ts in [token.expires_at, token.last_used_at].into_iter().flatten() {
            check_ts(ts)?;
        }
        let sites: Option<Vec<&str>> = token
            .sites
            .as_ref()
            .map(|s| s.iter().map(SiteId::as_str).collect());
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO api_tokens (id, user_id, name, scope, sites, token_hash,
                     created_at, expires_at, last_used_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .await?;
        client
            .execute(
                &stmt,
                &[
                    &token.id,
                    &token.user.as_str(),
                    &token.name,
                    &token.scope.as_str(),
                    &sites,
                    &token_hash,
                    &to_sys(token.created_at),
                    &token.expires_at.map(to_sys),
                    &token.last_used_at.map(to_sys),
                ],
            )
            .await
            .map_err(|e| match e.code() {
                Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                    StoreError::Invalid(format!("unknown user {}", token.user))
                }
                Some(&SqlState::UNIQUE_VIOLATION) if is_token_constraint(&e) => {
                    StoreError::Conflict("an API token with this hash".to_owned())
                }
                _ => conflict(e, || format!("API token {}", token.id)),
            })?;
        Ok(())
    }

    async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1"
            ))
            .await?;
        let row = client.query_opt(&stmt, &[&token_hash]).await?;
        row.as_ref().map(api_token_from_row).transpose()
    }

    async fn list_api_tokens(&self, user: Option<&UserId>) -> Result<Vec<ApiToken>> {
        let client = self.client().await?;
        let order = "ORDER BY created_at DESC, id COLLATE \"C\" DESC";
        let rows = match user {
            Some(user) => {
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE user_id = $1 {order}"
                    ))
                    .await?;
                client.query(&stmt, &[&user.as_str()]).await?
            }
            None => {
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {API_TOKEN_COLUMNS} FROM api_tokens {order}"
                    ))
                    .await?;
                client.query(&stmt, &[]).await?
            }
        };
        rows.iter().map(api_token_from_row).collect()
    }

    async fn get_api_token(&self, id: &str) -> Result<Option<ApiToken>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"
            ))
            .await?;
        let row = client.query_opt(&stmt, &[&id]).await?;
        row.as_ref().map(api_token_from_row).transpose()
    }

    async fn delete_api_token(&self, id: &str) -> Result<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM api_tokens WHERE id = $1")
            .await?;
        Ok(client.execute(&stmt, &[&id]).await? > 0)
    }

    async fn touch_api_token(&self, id: &str, used_at: TsMs) -> Result<()> {
        check_ts(used_at)?;
        let client = self.client().await?;
        // Uses reported late (another request, another node) never move the mark back;
        // GREATEST ignores the NULL of a token never used.
        let stmt = client
            .prepare_cached(
                "UPDATE api_tokens SET last_used_at = GREATEST(last_used_at, $2) WHERE id = $1",
            )
            .await?;
        client.execute(&stmt, &[&id, &to_sys(used_at)]).await?;
        Ok(())
    }

    // ---- audit log

    async fn append_audit(&self, event: &AuditEvent) -> Result<i64> {
        check_ts(event.ts)?;
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO audit_log (ts, actor, action, target, address, detail)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .await?;
        let row = client
            .query_one(
                &stmt,
                &[
                    &to_sys(event.ts),
                    &event.actor,
                    &event.action,
                    &event.target,
                    &event.address,
                    &event.detail,
                ],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let from = query.from.map(|t| to_sys(clamp_ts(t)));
        let to = query.to.map(|t| to_sys(clamp_ts(t)));
        let limit = sql_limit(query.limit);
        // Only the filters given become conditions, so the planner can use the ts index for
        // a time range and walk the primary key backwards otherwise.
        let mut filters: Vec<(&str, &(dyn ToSql + Sync))> = Vec::new();
        if let Some(from) = &from {
            filters.push(("ts >=", from));
        }
        if let Some(to) = &to {
            filters.push(("ts <", to));
        }
        if let Some(actor) = &query.actor {
            filters.push(("actor =", actor));
        }
        if let Some(action) = &query.action {
            filters.push(("action =", action));
        }
        if let Some(before) = &query.before_id {
            filters.push(("id <", before));
        }
        let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE true");
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        for (cond, value) in filters {
            params.push(value);
            sql.push_str(&format!(" AND {cond} ${}", params.len()));
        }
        params.push(&limit);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await?;
        let rows = client.query(&stmt, &params).await?;
        rows.iter().map(audit_from_row).collect()
    }

    // ---- series

    async fn series_id(&self, device: &DeviceId, channel: &str) -> Result<SeriesId> {
        let client = self.client().await?;
        let select = client
            .prepare_cached("SELECT id FROM series WHERE device_id = $1 AND channel = $2")
            .await?;
        let params: [&(dyn ToSql + Sync); 2] = [&device.as_str(), &channel];
        if let Some(r) = client.query_opt(&select, &params).await? {
            return Ok(SeriesId(r.get(0)));
        }
        let inserted = client
            .query_opt(
                "INSERT INTO series (device_id, channel) VALUES ($1, $2)
                 ON CONFLICT (device_id, channel) DO NOTHING RETURNING id",
                &params,
            )
            .await
            .map_err(|e| match e.code() {
                Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                    StoreError::Invalid(format!("device {device} does not exist"))
                }
                _ => e.into(),
            })?;
        let row = match inserted {
            Some(r) => r,
            // A concurrent caller created it between our SELECT and INSERT.
            None => client.query_one(&select, &params).await?,
        };
        Ok(SeriesId(row.get(0)))
    }

    async fn list_series(&self) -> Result<Vec<SeriesInfo>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, device_id, channel, rollup_watermark FROM series ORDER BY id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SeriesInfo {
                    id: SeriesId(r.try_get(0)?),
                    device: parse_id(DeviceId::parse(r.try_get::<_, String>(1)?))?,
                    channel: r.try_get(2)?,
                    rollup_watermark: r.try_get::<_, Option<SystemTime>>(3)?.map(from_sys),
                })
            })
            .collect()
    }

    // ---- raw readings

    async fn append(&self, batch: &[SeriesPoints]) -> Result<()> {
        let rows = dedup_rows(
            batch
                .iter()
                .flat_map(|sp| sp.points.iter().map(move |p| (sp.series.0, *p))),
        );
        self.write_readings(&rows, false).await?;
        Ok(())
    }

    async fn upsert(&self, series: SeriesId, points: &[Point]) -> Result<Vec<Point>> {
        let rows = dedup_rows(points.iter().map(|p| (series.0, *p)));
        let returned = self.write_readings(&rows, true).await?;
        let mut out = returned
            .iter()
            .map(|r| point_from_row(r, 0))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|p| p.ts);
        Ok(out)
    }

    async fn read_raw(
        &self,
        series: SeriesId,
        from: TsMs,
        to: TsMs,
        limit: usize,
    ) -> Result<Vec<Point>> {
        let (from, to) = (clamp_ts(from), clamp_ts(to));
        if from >= to || limit == 0 {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let stmt = client.prepare_cached(&self.sql.read_raw).await?;
        let rows = client
            .query(
                &stmt,
                &[&series.0, &to_sys(from), &to_sys(to), &sql_limit(limit)],
            )
            .await?;
        rows.iter().map(|r| point_from_row(r, 0)).collect()
    }

    async fn read_raw_before(
        &self,
        series: SeriesId,
        before: TsMs,
        limit: usize,
    ) -> Result<Vec<Point>> {
        let before = clamp_ts(before);
        if limit == 0 || before.0 <= MIN_MS {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let stmt = client.prepare_cached(&self.sql.read_raw_before).await?;
        let rows = client
            .query(&stmt, &[&series.0, &to_sys(before), &sql_limit(limit)])
            .await?;
        rows.iter().map(|r| point_from_row(r, 0)).collect()
    }

    async fn latest(&self) -> Result<Vec<(SeriesId, Point)>> {
        let client = self.client().await?;
        let rows = client.query(&self.sql.latest, &[]).await?;
        rows.iter()
            .map(|r| Ok((SeriesId(r.try_get(0)?), point_from_row(r, 1)?)))
            .collect()
    }

    // ---- rollups

    async fn write_rollups(&self, write: &RollupWrite) -> Result<()> {
        if write.is_empty() {
            return Ok(());
        }
        // One row per (tier, series, bucket) per statement: ON CONFLICT can't touch a row twice.
        let mut merge: BTreeMap<BucketTier, BTreeMap<(i64, i64), Agg>> = BTreeMap::new();
        for (tier, row) in &write.merge {
            check_rollup(*tier, row)?;
            merge
                .entry(*tier)
                .or_default()
                .entry((row.series.0, row.bucket.0))
                .and_modify(|a| a.merge(&row.agg))
                .or_insert(row.agg);
        }
        let mut replace: BTreeMap<BucketTier, BTreeMap<(i64, i64), Agg>> = BTreeMap::new();
        for (tier, row) in &write.replace {
            check_rollup(*tier, row)?;
            replace
                .entry(*tier)
                .or_default()
                .insert((row.series.0, row.bucket.0), row.agg);
        }
        let mut marks: BTreeMap<i64, i64> = BTreeMap::new();
        for (series, ts) in &write.watermarks {
            check_ts(*ts)?;
            let m = marks.entry(series.0).or_insert(ts.0);
            *m = (*m).max(ts.0);
        }

        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Merges first, then replacements: a recomputed bucket is authoritative.
        for (rows, stmts) in [
            (&merge, &self.sql.rollup_merge),
            (&replace, &self.sql.rollup_replace),
        ] {
            for (tier, rows) in rows {
                let cols = RollupCols::new(rows)?;
                let stmt = tx.prepare_cached(&stmts[tier]).await?;
                tx.execute(&stmt, &cols.params()).await?;
            }
        }
        if !marks.is_empty() {
            let ids: Vec<i64> = marks.keys().copied().collect();
            let tss: Vec<SystemTime> = marks.values().map(|&m| to_sys(TsMs(m))).collect();
            tx.execute(
                "UPDATE series s SET rollup_watermark = GREATEST(s.rollup_watermark, v.wm)
                 FROM UNNEST($1::int8[], $2::timestamptz[]) AS v(id, wm) WHERE s.id = v.id",
                &[&ids, &tss],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn read_rollups(
        &self,
        tier: BucketTier,
        series: SeriesId,
        from: TsMs,
        to: TsMs,
    ) -> Result<Vec<RollupRow>> {
        let Some(sql) = self.sql.read_rollups.get(&tier) else {
            return Err(StoreError::Invalid("raw is not a rollup tier".into()));
        };
        let (from, to) = (clamp_ts(from), clamp_ts(to));
        if from >= to {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await?;
        let rows = client
            .query(&stmt, &[&series.0, &to_sys(from), &to_sys(to)])
            .await?;
        rows.iter().map(rollup_from_row).collect()
    }

    // ---- upkeep

    /// Creates the `readings` partitions of the current and the next UTC month.
    async fn maintain(&self, now: TsMs) -> Result<MaintenanceReport> {
        let now = clamp_ts(now);
        let m = month_of(now.0);
        let months: BTreeSet<MonthKey> = [m, m + 1].into_iter().collect();
        let mut client = self.client().await?;
        let created = self.ensure_partitions(&mut client, &months).await?;
        Ok(MaintenanceReport {
            chunks_compacted: 0,
            partitions_created: created,
        })
    }

    /// Raw readings: monthly partitions that end at or before the cutoff are dropped whole
    /// (each counts its exact row count, taken just before the drop, so the cost is one scan
    /// of the partition); older rows of the partition straddling the cutoff are deleted.
    /// Rollups: rows with `bucket < cutoff` are deleted. Returns the rows removed.
    async fn apply_retention(&self, policy: &Retention, now: TsMs) -> Result<u64> {
        let cutoff =
            |days: u32| TsMs(clamp_ts(TsMs(now.0.saturating_sub(i64::from(days) * TsMs::DAY))).0);
        let mut removed = 0u64;
        let mut client = self.client().await?;
        if let Some(days) = policy.raw_days {
            let cut = cutoff(days);
            // Count first, then drop: dropping a partition locks `readings` exclusively until
            // commit, so that transaction holds nothing slow.
            let tx = client.transaction().await?;
            lock(&tx, LOCK_PARTITIONS).await?;
            let mut dropped = Vec::new();
            for (m, name) in self.readings_partitions(&tx).await? {
                if month_start_ms(m + 1) <= cut.0 {
                    let n: i64 = tx
                        .query_one(&format!("SELECT count(*) FROM {name}"), &[])
                        .await?
                        .get(0);
                    removed += n as u64;
                    dropped.push((m, name));
                }
            }
            for (_, name) in &dropped {
                tx.batch_execute(&format!("DROP TABLE {name}")).await?;
            }
            tx.commit().await?;
            let dropped: Vec<MonthKey> = dropped.into_iter().map(|d| d.0).collect();
            // The partition straddling the cutoff (and any older month that isn't ours).
            removed += client
                .execute("DELETE FROM readings WHERE ts < $1", &[&to_sys(cut)])
                .await?;
            if !dropped.is_empty() {
                tracing::info!(
                    partitions = dropped.len(),
                    "dropped old readings partitions"
                );
                let mut known = self.months.lock().unwrap();
                for m in dropped {
                    known.remove(&m);
                }
            }
        }
        for tier in BucketTier::ROLLUPS {
            if let Some(days) = policy.keep_days(tier) {
                removed += client
                    .execute(
                        &format!("DELETE FROM {} WHERE bucket < $1", rollup_table(tier)),
                        &[&to_sys(cutoff(days))],
                    )
                    .await?;
            }
        }
        Ok(removed)
    }

    /// `pg_total_relation_size` (heap, indexes, TOAST) of this backend's tables and of the
    /// partitions of `readings`, in the store's schema.
    async fn disk_bytes(&self) -> Result<u64> {
        let client = self.client().await?;
        let tables: Vec<&str> = TABLES.to_vec();
        let row = client
            .query_one(
                "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::int8
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = current_schema()
                   AND (c.relname = ANY($1)
                        OR c.oid IN (SELECT inhrelid FROM pg_inherits
                                     WHERE inhparent = 'readings'::regclass))",
                &[&tables],
            )
            .await?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        let Some((url, schema)) = self.drop_on_drop.take() else {
            return;
        };
        // Drop can't await, and may run inside a runtime: clean up from a thread of our own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&url, NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) = done {
            eprintln!("warning: could not drop test schema: {e}");
        }
    }
}

// ---- SQL text

impl Sql {
    fn build() -> Sql {
        let qcols: Vec<&str> = Quantity::ALL.iter().map(|q| q.field()).collect();
        let raw_cols = format!("series_id, ts, {}", qcols.join(", "));
        let point_cols = format!("ts, {}", qcols.join(", "));
        let mut unnest = vec!["$1::int8[]".to_owned(), "$2::timestamptz[]".to_owned()];
        unnest.extend((0..qcols.len()).map(|i| format!("${}::float8[]", i + 3)));
        let overlay = qcols
            .iter()
            .map(|c| format!("{c} = COALESCE(EXCLUDED.{c}, readings.{c})"))
            .collect::<Vec<_>>()
            .join(", ");
        let append = format!(
            "INSERT INTO readings ({raw_cols}) SELECT * FROM UNNEST({})
             ON CONFLICT (series_id, ts) DO UPDATE SET {overlay}",
            unnest.join(", ")
        );
        let upsert = format!("{append} RETURNING {point_cols}");
        let read_raw = format!(
            "SELECT {point_cols} FROM readings WHERE series_id = $1 AND ts >= $2 AND ts < $3
             ORDER BY ts LIMIT $4"
        );
        let read_raw_before = format!(
            "SELECT {point_cols} FROM readings WHERE series_id = $1 AND ts < $2
             ORDER BY ts DESC LIMIT $3"
        );
        let r_cols = qcols
            .iter()
            .map(|c| format!("r.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let latest = format!(
            "SELECT s.id, r.ts, {r_cols} FROM series s CROSS JOIN LATERAL (
                 SELECT {point_cols} FROM readings WHERE series_id = s.id ORDER BY ts DESC LIMIT 1
             ) r ORDER BY s.id"
        );

        let mut rollup_merge = HashMap::new();
        let mut rollup_replace = HashMap::new();
        let mut read_rollups = HashMap::new();
        let stats = stat_columns();
        let mut all_cols: Vec<String> = [
            "series_id",
            "bucket",
            "last_ts",
            "energy_import_kwh",
            "energy_export_kwh",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        all_cols.extend(stats.iter().cloned());
        let mut types = vec!["int8", "timestamptz", "timestamptz", "float8", "float8"];
        for _ in Quantity::ALL {
            types.extend(["int4", "float8", "float8", "float8", "float8"]);
        }
        let unnest = types
            .iter()
            .enumerate()
            .map(|(i, t)| format!("${}::{t}[]", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let mut merge_set = vec![
            "last_ts = GREATEST(t.last_ts, EXCLUDED.last_ts)".to_owned(),
            "energy_import_kwh = t.energy_import_kwh + EXCLUDED.energy_import_kwh".to_owned(),
            "energy_export_kwh = t.energy_export_kwh + EXCLUDED.energy_export_kwh".to_owned(),
        ];
        for q in qcols.iter() {
            // A quantity is absent from a bucket exactly when its `_n` is NULL.
            merge_set.push(format!(
                "{q}_n = CASE WHEN EXCLUDED.{q}_n IS NULL THEN t.{q}_n
                    WHEN t.{q}_n IS NULL THEN EXCLUDED.{q}_n
                    ELSE t.{q}_n + EXCLUDED.{q}_n END"
            ));
            merge_set.push(format!(
                "{q}_avg = CASE WHEN EXCLUDED.{q}_n IS NULL THEN t.{q}_avg
                    WHEN t.{q}_n IS NULL THEN EXCLUDED.{q}_avg
                    ELSE (t.{q}_avg * t.{q}_n + EXCLUDED.{q}_avg * EXCLUDED.{q}_n)
                         / (t.{q}_n::float8 + EXCLUDED.{q}_n) END"
            ));
            merge_set.push(format!("{q}_min = LEAST(t.{q}_min, EXCLUDED.{q}_min)"));
            merge_set.push(format!("{q}_max = GREATEST(t.{q}_max, EXCLUDED.{q}_max)"));
            // As Agg::merge: the incoming `last` wins when its bucket part is at least as new
            // (a NULL last_ts is an empty part, older than everything).
            merge_set.push(format!(
                "{q}_last = CASE WHEN EXCLUDED.{q}_n IS NULL THEN t.{q}_last
                    WHEN t.{q}_n IS NULL OR t.last_ts IS NULL OR EXCLUDED.last_ts >= t.last_ts
                    THEN EXCLUDED.{q}_last ELSE t.{q}_last END"
            ));
        }
        let replace_set = all_cols[2..]
            .iter()
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        for tier in BucketTier::ROLLUPS {
            let table = rollup_table(tier);
            let insert = format!(
                "INSERT INTO {table} AS t ({}) SELECT * FROM UNNEST({unnest})
                 ON CONFLICT (series_id, bucket) DO UPDATE SET",
                all_cols.join(", ")
            );
            rollup_merge.insert(tier, format!("{insert} {}", merge_set.join(",\n")));
            rollup_replace.insert(tier, format!("{insert} {replace_set}"));
            read_rollups.insert(
                tier,
                format!(
                    "SELECT {} FROM {table} WHERE series_id = $1 AND bucket >= $2 AND bucket < $3
                     ORDER BY bucket",
                    all_cols.join(", ")
                ),
            );
        }
        Sql {
            append,
            upsert,
            read_raw,
            read_raw_before,
            latest,
            rollup_merge,
            rollup_replace,
            read_rollups,
        }
    }
}

// ---- column arrays for UNNEST

struct RawCols {
    series: Vec<i64>,
    ts: Vec<SystemTime>,
    values: Vec<Vec<Option<f64>>>,
}

impl RawCols {
    fn new(rows: &[(i64, Point)]) -> RawCols {
        let mut values: Vec<Vec<Option<f64>>> = (0..Quantity::COUNT)
            .map(|_| Vec::with_capacity(rows.len()))
            .collect();
        for (_, p) in rows {
            for (q, col) in Quantity::ALL.iter().zip(values.iter_mut()) {
                col.push(p.values.get(*q));
            }
        }
        RawCols {
            series: rows.iter().map(|r| r.0).collect(),
            ts: rows.iter().map(|r| to_sys(r.1.ts)).collect(),
            values,
        }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![&self.series, &self.ts];
        p.extend(self.values.iter().map(|v| v as &(dyn ToSql + Sync)));
        p
    }
}

struct RollupCols {
    series: Vec<i64>,
    bucket: Vec<SystemTime>,
    last_ts: Vec<Option<SystemTime>>,
    import: Vec<f64>,
    export: Vec<f64>,
    n: Vec<Vec<Option<i32>>>,
    /// avg, min, max, last of each quantity, in that order.
    stats: Vec<[Vec<Option<f64>>; 4]>,
}

impl RollupCols {
    fn new(rows: &BTreeMap<(i64, i64), Agg>) -> Result<RollupCols> {
        let len = rows.len();
        let mut c = RollupCols {
            series: Vec::with_capacity(len),
            bucket: Vec::with_capacity(len),
            last_ts: Vec::with_capacity(len),
            import: Vec::with_capacity(len),
            export: Vec::with_capacity(len),
            n: (0..Quantity::COUNT)
                .map(|_| Vec::with_capacity(len))
                .collect(),
            stats: (0..Quantity::COUNT)
                .map(|_| std::array::from_fn(|_| Vec::with_capacity(len)))
                .collect(),
        };
        for (&(series, bucket), agg) in rows {
            c.series.push(series);
            c.bucket.push(to_sys(TsMs(bucket)));
            c.last_ts.push(last_ts_to_sql(agg.last_ts));
            c.import.push(agg.energy_import_kwh);
            c.export.push(agg.energy_export_kwh);
            for (i, s) in agg.stats.iter().enumerate() {
                let [avg, min, max, last] = &mut c.stats[i];
                if s.n == 0 {
                    c.n[i].push(None);
                    avg.push(None);
                    min.push(None);
                    max.push(None);
                    last.push(None);
                } else {
                    let n = i32::try_from(s.n).map_err(|_| {
                        StoreError::Invalid(format!("rollup count {} out of range", s.n))
                    })?;
                    c.n[i].push(Some(n));
                    avg.push(s.avg());
                    min.push(Some(s.min));
                    max.push(Some(s.max));
                    last.push(Some(s.last));
                }
            }
        }
        Ok(c)
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![
            &self.series,
            &self.bucket,
            &self.last_ts,
            &self.import,
            &self.export,
        ];
        for (n, [avg, min, max, last]) in self.n.iter().zip(self.stats.iter()) {
            p.extend([
                n as &(dyn ToSql + Sync),
                avg as &(dyn ToSql + Sync),
                min,
                max,
                last,
            ]);
        }
        p
    }
}

// ---- rows → domain

fn point_from_row(row: &Row, ts_idx: usize) -> Result<Point> {
    let ts = from_sys(row.try_get(ts_idx)?);
    let mut values = Values::new();
    for (i, q) in Quantity::ALL.iter().enumerate() {
        if let Some(v) = row.try_get::<_, Option<f64>>(ts_idx + 1 + i)? {
            values.set(*q, v);
        }
    }
    Ok(Point { ts, values })
}

fn rollup_from_row(row: &Row) -> Result<RollupRow> {
    let mut agg = Agg {
        last_ts: row
            .try_get::<_, Option<SystemTime>>(2)?
            .map(from_sys)
            .unwrap_or(TsMs(i64::MIN)),
        energy_import_kwh: row.try_get(3)?,
        energy_export_kwh: row.try_get(4)?,
        ..Agg::default()
    };
    for (i, stat) in agg.stats.iter_mut().enumerate() {
        let base = 5 + i * 5;
        let Some(n) = row.try_get::<_, Option<i32>>(base)? else {
            continue; // QStat::default()
        };
        let get = |k: usize| -> Result<f64> {
            Ok(row.try_get::<_, Option<f64>>(base + k)?.unwrap_or(f64::NAN))
        };
        let n = n.max(0) as u32;
        *stat = QStat {
            n,
            sum: get(1)? * f64::from(n),
            min: get(2)?,
            max: get(3)?,
            last: get(4)?,
        };
    }
    Ok(RollupRow {
        series: SeriesId(row.try_get(0)?),
        bucket: from_sys(row.try_get(1)?),
        agg,
    })
}

fn site_from_row(r: &Row) -> Result<Site> {
    Ok(Site {
        id: parse_id(SiteId::parse(r.try_get::<_, String>(0)?))?,
        name: r.try_get(1)?,
        timezone: r.try_get(2)?,
        created_at: from_sys(r.try_get(3)?),
    })
}

fn device_from_row(r: &Row) -> Result<Device> {
    let labels: String = r.try_get(4)?;
    Ok(Device {
        id: parse_id(DeviceId::parse(r.try_get::<_, String>(0)?))?,
        name: r.try_get(1)?,
        site: parse_id(SiteId::parse(r.try_get::<_, String>(2)?))?,
        kind: r.try_get(3)?,
        labels: serde_json::from_str(&labels)
            .map_err(|e| StoreError::Invalid(format!("stored device labels: {e}")))?,
        created_at: from_sys(r.try_get(5)?),
    })
}

fn binding_from_row(r: &Row) -> Result<Binding> {
    Ok(Binding {
        format: r.try_get(0)?,
        vendor_id: r.try_get(1)?,
        device: parse_id(DeviceId::parse(r.try_get::<_, String>(2)?))?,
        created_at: from_sys(r.try_get(3)?),
    })
}

fn pending_from_row(r: &Row) -> Result<PendingDevice> {
    let messages: i64 = r.try_get(4)?;
    Ok(PendingDevice {
        format: r.try_get(0)?,
        vendor_id: r.try_get(1)?,
        first_seen: from_sys(r.try_get(2)?),
        last_seen: from_sys(r.try_get(3)?),
        messages: u64::try_from(messages)
            .map_err(|_| StoreError::Invalid(format!("stored message count {messages}")))?,
        last_topic: r.try_get(5)?,
        sample: r.try_get(6)?,
    })
}

/// The sites come as an array from a subquery, so a user and their sites are read in one
/// statement (one snapshot).
const USER_COLUMNS: &str = "u.id, u.email, u.role, u.disabled, u.created_at, u.password_hash,
     ARRAY(SELECT s.site_id FROM user_sites s WHERE s.user_id = u.id)";

fn user_from_row(r: &Row) -> Result<(User, String)> {
    let email: String = r.try_get(1)?;
    let role: String = r.try_get(2)?;
    let sites: Vec<String> = r.try_get(6)?;
    let user = User {
        id: parse_id(UserId::parse(r.try_get::<_, String>(0)?))?,
        email: Email::parse(&email)
            .map_err(|e| StoreError::Invalid(format!("stored e-mail: {e}")))?,
        role: Role::parse(&role).map_err(|e| StoreError::Invalid(format!("stored role: {e}")))?,
        sites: sites
            .into_iter()
            .map(|s| parse_id(SiteId::parse(s)))
            .collect::<Result<_>>()?,
        disabled: r.try_get(3)?,
        created_at: from_sys(r.try_get(4)?),
    };
    Ok((user, r.try_get(5)?))
}

const SESSION_COLUMNS: &str =
    "id_hash, user_id, created_at, last_seen_at, expires_at, address, user_agent";

fn session_from_row(r: &Row) -> Result<Session> {
    Ok(Session {
        id_hash: r.try_get(0)?,
        user: parse_id(UserId::parse(r.try_get::<_, String>(1)?))?,
        created_at: from_sys(r.try_get(2)?),
        last_seen_at: from_sys(r.try_get(3)?),
        expires_at: from_sys(r.try_get(4)?),
        address: r.try_get(5)?,
        user_agent: r.try_get(6)?,
    })
}

const API_TOKEN_COLUMNS: &str =
    "id, user_id, name, scope, sites, created_at, expires_at, last_used_at";

fn api_token_from_row(r: &Row) -> Result<ApiToken> {
    let scope: String = r.try_get(3)?;
    let sites = r
        .try_get::<_, Option<Vec<String>>>(4)?
        .map(|ids| {
            ids.into_iter()
                .map(|s| parse_id(SiteId::parse(s)))
                .collect::<Result<_>>()
        })
        .transpose()?;
    Ok(ApiToken {
        id: r.try_get(0)?,
        user: parse_id(UserId::parse(r.try_get::<_, String>(1)?))?,
        name: r.try_get(2)?,
        scope: TokenScope::parse(&scope)
            .map_err(|e| StoreError::Invalid(format!("stored token scope: {e}")))?,
        sites,
        created_at: from_sys(r.try_get(5)?),
        expires_at: r.try_get::<_, Option<SystemTime>>(6)?.map(from_sys),
        last_used_at: r.try_get::<_, Option<SystemTime>>(7)?.map(from_sys),
    })
}

const AUDIT_COLUMNS: &str = "id, ts, actor, action, target, address, detail";

fn audit_from_row(r: &Row) -> Result<AuditEvent> {
    Ok(AuditEvent {
        id: r.try_get(0)?,
        ts: from_sys(r.try_get(1)?),
        actor: r.try_get(2)?,
        action: r.try_get(3)?,
        target: r.try_get(4)?,
        address: r.try_get(5)?,
        detail: r.try_get(6)?,
    })
}

fn labels_json(device: &Device) -> Result<String> {
    serde_json::to_string(&device.labels)
        .map_err(|e| StoreError::Invalid(format!("device labels: {e}")))
}

fn parse_id<T>(r: std::result::Result<T, wattline_domain::IdError>) -> Result<T> {
    r.map_err(|e| StoreError::Invalid(format!("stored identifier: {e}")))
}

// ---- errors

fn pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => StoreError::Postgres(e),
        other => StoreError::Pool(other.to_string()),
    }
}

/// A unique violation becomes `Conflict(what())`; anything else passes through.
fn conflict(e: tokio_postgres::Error, what: impl FnOnce() -> String) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        StoreError::Conflict(what())
    } else {
        e.into()
    }
}

/// The unique constraint on a `token_hash` column (as opposed to the primary key).
fn is_token_constraint(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .and_then(|d| d.constraint())
        .is_some_and(|c| c.ends_with("token_hash_key"))
}

fn device_write_err(e: tokio_postgres::Error, device: &Device) -> StoreError {
    match e.code() {
        Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
            StoreError::Invalid(format!("site {} does not exist", device.site))
        }
        Some(&SqlState::UNIQUE_VIOLATION) => {
            if is_token_constraint(&e) {
                StoreError::Conflict("a device with this token".to_owned())
            } else {
                StoreError::Conflict(format!("device {}", device.id))
            }
        }
        _ => e.into(),
    }
}

/// A taken e-mail and a taken id are told apart, so the caller can say which.
fn user_write_err(e: tokio_postgres::Error, user: &User) -> StoreError {
    let email_taken = e
        .as_db_error()
        .and_then(|d| d.constraint())
        .is_some_and(|c| c == "users_email_key");
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) && email_taken {
        StoreError::Conflict(format!("user with e-mail {}", user.email))
    } else {
        conflict(e, || format!("user {}", user.id))
    }
}

/// Inserts the user's site assignments one by one, so that an unknown site can be named.
async fn insert_user_sites(tx: &impl GenericClient, user: &User) -> Result<()> {
    let stmt = tx
        .prepare_cached("INSERT INTO user_sites (user_id, site_id) VALUES ($1, $2)")
        .await?;
    for site in &user.sites {
        tx.execute(&stmt, &[&user.id.as_str(), &site.as_str()])
            .await
            .map_err(|e| match e.code() {
                Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                    StoreError::Invalid(format!("unknown site {site}"))
                }
                _ => e.into(),
            })?;
    }
    Ok(())
}

async fn lock(tx: &impl GenericClient, key: i32) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext(COALESCE(current_schema(), '')))",
        &[&key],
    )
    .await?;
    Ok(())
}

// ---- time

fn check_ts(ts: TsMs) -> Result<()> {
    if (MIN_MS..MAX_MS).contains(&ts.0) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "timestamp {} ms is outside the years 1..=9999",
            ts.0
        )))
    }
}

fn check_rollup(tier: BucketTier, row: &RollupRow) -> Result<()> {
    if tier == BucketTier::Raw {
        return Err(StoreError::Invalid("raw is not a rollup tier".into()));
    }
    check_ts(row.bucket)?;
    if row.agg.last_ts.0 != i64::MIN {
        check_ts(row.agg.last_ts)?;
    }
    Ok(())
}

fn clamp_ts(ts: TsMs) -> TsMs {
    TsMs(ts.0.clamp(MIN_MS, MAX_MS))
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// `TsMs` → `SystemTime` (exact: PostgreSQL keeps microseconds).
fn to_sys(ts: TsMs) -> SystemTime {
    let d = Duration::from_millis(ts.0.unsigned_abs());
    if ts.0 >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// `SystemTime` → `TsMs`, rounding down to the millisecond.
fn from_sys(t: SystemTime) -> TsMs {
    let micros: i128 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i128,
        Err(e) => -(e.duration().as_micros() as i128),
    };
    TsMs(micros.div_euclid(1000) as i64)
}

/// The empty rollup's `last_ts` (`i64::MIN`) is stored as NULL.
fn last_ts_to_sql(ts: TsMs) -> Option<SystemTime> {
    (ts.0 != i64::MIN).then(|| to_sys(ts))
}

fn month_of(ms: i64) -> MonthKey {
    let days = ms.div_euclid(TsMs::DAY);
    let (y, m) = civil_year_month(days);
    y * 12 + (m as i32 - 1)
}

/// (year, month) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_year_month(days: i64) -> (i32, u32) {
    // Shift to an era starting 0000-03-01 so that leap days end each 400-year cycle.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as i32, month as u32)
}

/// Days since 1970-01-01 of the first day of `month` (1..=12) in `year`.
fn days_from_civil(year: i32, month: u32) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5; // day 1 of the month
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn month_start_ms(m: MonthKey) -> i64 {
    let (y, mo) = (m.div_euclid(12), m.rem_euclid(12) as u32 + 1);
    days_from_civil(y, mo) * TsMs::DAY
}

fn partition_name(m: MonthKey) -> String {
    format!(
        "readings_y{:04}m{:02}",
        m.div_euclid(12),
        m.rem_euclid(12) + 1
    )
}

fn parse_partition_name(name: &str) -> Option<MonthKey> {
    let rest = name.strip_prefix("readings_y")?;
    let (y, mo) = rest.split_once('m')?;
    if y.len() != 4 || mo.len() != 2 {
        return None;
    }
    let (y, mo): (i32, i32) = (y.parse().ok()?, mo.parse().ok()?);
    (1..=12).contains(&mo).then_some(y * 12 + mo - 1)
}

fn month_literal(m: MonthKey) -> String {
    format!(
        "{:04}-{:02}-01 00:00:00+00",
        m.div_euclid(12),
        m.rem_euclid(12) + 1
    )
}

// ---- misc

/// Rows sorted by (series, ts), duplicates overlaid in input order (later values win).
fn dedup_rows(rows: impl Iterator<Item = (i64, Point)>) -> Vec<(i64, Point)> {
    let mut rows: Vec<(i64, Point)> = rows.collect();
    rows.sort_by_key(|(s, p)| (*s, p.ts)); // stable: keeps input order among duplicates
    let mut out: Vec<(i64, Point)> = Vec::with_capacity(rows.len());
    for (s, p) in rows {
        match out.last_mut() {
            Some((ls, lp)) if *ls == s && lp.ts == p.ts => lp.values.overlay(&p.values),
            _ => out.push((s, p)),
        }
    }
    out
}

fn check_schema_name(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "schema name {s:?}: use lowercase letters, digits and '_' (not starting with pg_)"
        )))
    }
}

// ---- tests

/// The PostgreSQL store the shared suite runs against: `WATTLINE_TEST_PG` (default
/// `postgres://postgres@127.0.0.1:5432/postgres`), in a fresh schema dropped with the store.
/// `None` (with a loud message) when the server can't be reached, unless `CI` is set: then
/// it panics.
#[cfg(test)]
pub(crate) async fn test_store() -> Option<std::sync::Arc<dyn Store>> {
    test_pg_store()
        .await
        .map(|s| std::sync::Arc::new(s) as std::sync::Arc<dyn Store>)
}

/// A test store (see [`test_store`]) and the way to open its schema again, as another start
/// of the server would.
#[cfg(test)]
pub(crate) async fn reopenable_test_store() -> Option<crate::testsuite::Reopenable> {
    let mut store = test_pg_store().await?;
    // The schema must outlive the first store: the reopened one drops it instead.
    let (url, schema) = store
        .drop_on_drop
        .take()
        .expect("test stores drop their schema");
    let reopen: crate::testsuite::Reopen = Box::new(move || {
        Box::pin(async move {
            let mut again = PgStore::connect_with_schema(&url, &schema)
                .await
                .unwrap_or_else(|e| panic!("reopening the PostgreSQL test store {schema}: {e}"));
            again.drop_on_drop = Some((url, schema));
            std::sync::Arc::new(again) as std::sync::Arc<dyn Store>
        })
    });
    Some((std::sync::Arc::new(store), reopen))
}

#[cfg(test)]
pub(crate) fn test_url() -> String {
    std::env::var("WATTLINE_TEST_PG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

#[cfg(test)]
pub(crate) fn fresh_schema_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "wl_test_{}_{}_{}_{}",
        now.as_secs(),
        std::process::id(),
        now.subsec_nanos(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
pub(crate) async fn test_pg_store() -> Option<PgStore> {
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    test_pg_store_at(test_url(), in_ci).await
}

#[cfg(test)]
async fn test_pg_store_at(url: String, in_ci: bool) -> Option<PgStore> {
    // Reachability first, so a broken migration fails loudly instead of being skipped.
    let reach = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(&url, NoTls),
    );
    let reached = match reach.await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("no answer within 10 s".to_owned()),
    };
    match reached {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            drop_stale_test_schemas(&client).await;
        }
        Err(e) if in_ci => panic!(
            "PostgreSQL test server at {url} is unreachable ({e}) and CI is set: \
             start it or point WATTLINE_TEST_PG at one"
        ),
        Err(e) => {
            eprintln!(
                "\n!!!!! SKIPPING PostgreSQL test: {url} is unreachable ({e}).\n\
                 !!!!! Set WATTLINE_TEST_PG to a server (trust auth) to run it; with CI set, \
                 this is a failure.\n"
            );
            return None;
        }
    }
    let schema = fresh_schema_name();
    let mut store = PgStore::connect_with_schema(&url, &schema)
        .await
        .unwrap_or_else(|e| panic!("opening the PostgreSQL test store in {schema}: {e}"));
    store.drop_on_drop = Some((url, schema));
    Some(store)
}

/// Test schemas left behind by killed runs: dropped after six hours.
#[cfg(test)]
async fn drop_stale_test_schemas(client: &tokio_postgres::Client) {
    let Ok(rows) = client
        .query(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'wl\\_test\\_%'",
            &[],
        )
        .await
    else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    for r in rows {
        let name: String = r.get(0);
        let created = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(now);
        if created + 6 * 3600 < now && check_schema_name(&name).is_ok() {
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    //! PostgreSQL specifics; the behaviour every backend shares is in `testsuite.rs`. Test
    //! names start with `pg_` so that `cargo test -- pg` selects them with the suite.

    use super::*;

    fn test_site(id: &str) -> Site {
        Site {
            id: SiteId::parse(id).unwrap(),
            name: id.to_owned(),
            timezone: "UTC".to_owned(),
            created_at: TsMs(1_767_225_600_000),
        }
    }

    fn test_device(id: &str) -> Device {
        Device {
            id: DeviceId::parse(id).unwrap(),
            name: id.to_owned(),
            site: SiteId::parse("home").unwrap(),
            kind: "meter".to_owned(),
            labels: Default::default(),
            created_at: TsMs(1_767_225_600_000),
        }
    }

    /// Site `home`, device `dev` (token hash `hash-{dev}`), and its `main` series.
    async fn test_series(store: &PgStore, dev: &str) -> SeriesId {
        if store
            .get_site(&test_site("home").id)
            .await
            .unwrap()
            .is_none()
        {
            store.create_site(&test_site("home")).await.unwrap();
        }
        store
            .create_device(&test_device(dev), &format!("hash-{dev}"))
            .await
            .unwrap();
        store
            .series_id(&DeviceId::parse(dev).unwrap(), "main")
            .await
            .unwrap()
    }

    fn test_point(ts: i64) -> Point {
        Point {
            ts: TsMs(ts),
            values: Values::new().with(Quantity::Power, ts as f64 / 1e3),
        }
    }

    async fn store() -> Option<PgStore> {
        test_pg_store().await
    }

    async fn partitions(store: &PgStore) -> Vec<String> {
        let client = store.client().await.unwrap();
        let mut names: Vec<String> = store
            .readings_partitions(&client)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.1)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn pg_month_math_matches_jiff() {
        use jiff::tz::TimeZone;
        // Every day from 1583 to 2400, and the extremes.
        let first = -141_714i64; // 1582-01-01
                                 // (jiff itself ends on 9999-12-30.)
        for day in (first..157_000).chain([MIN_MS / TsMs::DAY, MAX_MS / TsMs::DAY - 2]) {
            let ms = day * TsMs::DAY + 12 * TsMs::HOUR;
            let z = jiff::Timestamp::from_millisecond(ms)
                .unwrap()
                .to_zoned(TimeZone::UTC);
            let m = month_of(ms);
            assert_eq!(
                m,
                i32::from(z.year()) * 12 + i32::from(z.month()) - 1,
                "day {day}"
            );
            let start = z.date().first_of_month().to_zoned(TimeZone::UTC).unwrap();
            assert_eq!(
                month_start_ms(m),
                start.timestamp().as_millisecond(),
                "day {day}"
            );
            assert_eq!(month_of(month_start_ms(m)), m);
            assert_eq!(month_of(month_start_ms(m) - 1), m - 1);
        }
        let m = month_of(1_767_225_600_000);
        assert_eq!(partition_name(m), "readings_y2026m01");
        assert_eq!(month_literal(m + 11), "2026-12-01 00:00:00+00");
        assert_eq!(month_literal(m + 12), "2027-01-01 00:00:00+00");
        assert_eq!(parse_partition_name("readings_y2026m01"), Some(m));
        assert_eq!(parse_partition_name("readings_y2026m13"), None);
        assert_eq!(parse_partition_name("readings_default"), None);
    }

    #[test]
    fn pg_millisecond_conversions_are_exact() {
        for ms in [0, 1, -1, 999, -999, 1_767_225_600_001, MIN_MS, MAX_MS - 1] {
            assert_eq!(from_sys(to_sys(TsMs(ms))), TsMs(ms), "{ms}");
        }
        assert!(check_ts(TsMs(MAX_MS)).is_err());
        assert!(check_ts(TsMs(MIN_MS - 1)).is_err());
        assert!(check_schema_name("wl_test_1").is_ok());
        for bad in ["", "Upper", "1abc", "a-b", "pg_x", "a;drop"] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn pg_schema_layout_matches_schema_rs() {
        let Some(store) = store().await else { return };
        let client = store.client().await.unwrap();
        let columns = |table: &'static str| {
            let client = &client;
            async move {
                client
                    .query(
                        "SELECT column_name::text FROM information_schema.columns
                         WHERE table_schema = current_schema() AND table_name = $1
                         ORDER BY ordinal_position",
                        &[&table],
                    )
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
            }
        };
        let mut want: Vec<String> = [
            "series_id",
            "bucket",
            "last_ts",
            "energy_import_kwh",
            "energy_export_kwh",
        ]
        .map(String::from)
        .to_vec();
        want.extend(stat_columns());
        for tier in BucketTier::ROLLUPS {
            assert_eq!(columns(rollup_table(tier)).await, want, "{tier:?}");
        }
        let mut raw = vec!["series_id".to_owned(), "ts".to_owned()];
        raw.extend(Quantity::ALL.iter().map(|q| q.field().to_owned()));
        assert_eq!(columns("readings").await, raw);
        let kind: i8 = client
            .query_one(
                "SELECT relkind::\"char\" FROM pg_class WHERE oid = 'readings'::regclass",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(kind as u8, b'p', "readings is partitioned");
        let types: Vec<String> = client
            .query(
                "SELECT DISTINCT data_type::text FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = 'readings'
                   AND column_name NOT IN ('series_id', 'ts')",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(types, vec!["double precision".to_owned()]);
        let versions: Vec<i32> = client
            .query(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, (1..=MIGRATIONS.len() as i32).collect::<Vec<_>>());
    }

    /// A schema from before the accounts (migration 3) opens, gets the new tables, and its
    /// sites can be assigned to users.
    #[tokio::test]
    async fn pg_schema_3_upgrades_to_accounts() {
        // Reachability and the skip-or-fail decision as for every PostgreSQL test.
        let Some(probe) = store().await else { return };
        drop(probe);
        let (url, schema) = (test_url(), fresh_schema_name());
        let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "CREATE SCHEMA {schema}; SET search_path = {schema};
                 CREATE TABLE schema_migrations (
                     version int PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 );"
            ))
            .await
            .unwrap();
        for (i, sql) in MIGRATIONS[..3].iter().enumerate() {
            client.batch_execute(sql).await.unwrap();
            client
                .execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)",
                    &[&(i as i32 + 1)],
                )
                .await
                .unwrap();
        }
        client
            .batch_execute(
                "INSERT INTO sites (id, name, timezone, created_at)
                 VALUES ('old', 'Old', 'UTC', now())",
            )
            .await
            .unwrap();

        let mut store = PgStore::connect_with_schema(&url, &schema).await.unwrap();
        store.drop_on_drop = Some((url, schema));
        let versions: i64 = client
            .query_one("SELECT count(*) FROM schema_migrations", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(versions, MIGRATIONS.len() as i64);
        for table in ["users", "user_sites", "sessions", "api_tokens", "audit_log"] {
            let n: i64 = client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 0, "{table}");
        }
        let user = User {
            id: UserId::parse("usr_1").unwrap(),
            email: Email::parse("ann@example.org").unwrap(),
            role: Role::Owner,
            sites: [SiteId::parse("old").unwrap()].into(),
            disabled: false,
            created_at: TsMs(1),
        };
        store.create_user(&user, "h").await.unwrap();
        assert_eq!(
            store.get_user(&user.id).await.unwrap(),
            Some((user, "h".to_owned()))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_nodes_starting_together_migrate_once() {
        let Some(first) = store().await else { return };
        // A fresh schema, opened by three "nodes" at once.
        let schema = fresh_schema_name();
        let url = test_url();
        let (a, b, c) = tokio::join!(
            PgStore::connect_with_schema(&url, &schema),
            PgStore::connect_with_schema(&url, &schema),
            PgStore::connect_with_schema(&url, &schema),
        );
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        let client = a.client().await.unwrap();
        let n: i64 = client
            .query_one("SELECT count(*) FROM schema_migrations", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, MIGRATIONS.len() as i64);
        // They share the data: a site made by one is seen by the others.
        a.create_site(&test_site("shared")).await.unwrap();
        assert!(b.get_site(&test_site("shared").id).await.unwrap().is_some());
        assert!(matches!(
            c.create_site(&test_site("shared")).await,
            Err(StoreError::Conflict(m)) if m == "site shared"
        ));
        // …and `first`, in its own schema, does not.
        assert!(first
            .get_site(&test_site("shared").id)
            .await
            .unwrap()
            .is_none());
        drop(client);
        a.drop_schema().await.unwrap();
        // Dropping twice is harmless; a store without a dedicated schema refuses.
        b.drop_schema().await.unwrap();
    }

    #[tokio::test]
    async fn pg_partitions_are_created_on_demand_and_ahead() {
        let Some(store) = store().await else { return };
        assert!(partitions(&store).await.is_empty());
        let s = test_series(&store, "m1").await;
        let jan = 1_767_225_600_000; // 2026-01-01
        let mar = jan + 59 * TsMs::DAY; // 2026-03-01
        store
            .append(&[SeriesPoints {
                series: s,
                points: vec![test_point(jan), test_point(jan + 1), test_point(mar + 5)],
            }])
            .await
            .unwrap();
        assert_eq!(
            partitions(&store).await,
            vec!["readings_y2026m01", "readings_y2026m03"]
        );
        let r = store.maintain(TsMs(mar + 10 * TsMs::DAY)).await.unwrap();
        assert_eq!(r.partitions_created, 1, "March exists; April is new");
        assert_eq!(
            store.maintain(TsMs(mar)).await.unwrap().partitions_created,
            0
        );
        // A fresh node (empty cache) finds the existing partitions instead of failing.
        let other = PgStore::connect_with_schema(&test_url(), store.schema().unwrap())
            .await
            .unwrap();
        assert_eq!(
            other.maintain(TsMs(mar)).await.unwrap().partitions_created,
            0
        );
        other.upsert(s, &[test_point(jan + 2)]).await.unwrap();
        assert_eq!(
            partitions(&store).await,
            vec![
                "readings_y2026m01",
                "readings_y2026m03",
                "readings_y2026m04"
            ]
        );
        // Refused, not silently mangled: instants PostgreSQL can't hold as we need them.
        let bad = store.upsert(s, &[test_point(MAX_MS)]).await;
        assert!(matches!(bad, Err(StoreError::Invalid(_))), "{bad:?}");
    }

    #[tokio::test]
    async fn pg_retention_drops_whole_partitions_and_counts_rows() {
        let Some(store) = store().await else { return };
        let s = test_series(&store, "m1").await;
        let jan = 1_767_225_600_000; // 2026-01-01
        let day = TsMs::DAY;
        let pts: Vec<Point> = [0, 1, 2, 40, 41, 70, 80, 100]
            .iter()
            .map(|d| test_point(jan + d * day))
            .collect();
        store
            .append(&[SeriesPoints {
                series: s,
                points: pts,
            }])
            .await
            .unwrap();
        assert_eq!(partitions(&store).await.len(), 4); // Jan, Feb, Mar, Apr
                                                       // Cutoff 2026-03-16: January and February go whole, March loses one row.
        let now = TsMs(jan + 104 * day);
        let policy = Retention {
            raw_days: Some(30),
            minute_days: None,
            hour_days: None,
            day_days: None,
        };
        let removed = store.apply_retention(&policy, now).await.unwrap();
        assert_eq!(removed, 6);
        assert_eq!(
            partitions(&store).await,
            vec!["readings_y2026m03", "readings_y2026m04"]
        );
        let left = store
            .read_raw(s, TsMs(0), TsMs(i64::MAX), 100)
            .await
            .unwrap();
        assert_eq!(
            left.iter().map(|p| p.ts.0).collect::<Vec<_>>(),
            vec![jan + 80 * day, jan + 100 * day]
        );
        // Late data for a dropped month recreates its partition.
        store.upsert(s, &[test_point(jan + 3 * day)]).await.unwrap();
        assert!(partitions(&store)
            .await
            .contains(&"readings_y2026m01".to_owned()));
    }

    #[tokio::test]
    async fn pg_recovers_when_another_node_dropped_a_partition() {
        let Some(a) = store().await else { return };
        let s = test_series(&a, "m1").await;
        let jan = 1_767_225_600_000;
        a.append(&[SeriesPoints {
            series: s,
            points: vec![test_point(jan)],
        }])
        .await
        .unwrap();
        let b = PgStore::connect_with_schema(&test_url(), a.schema().unwrap())
            .await
            .unwrap();
        let policy = Retention {
            raw_days: Some(1),
            minute_days: None,
            hour_days: None,
            day_days: None,
        };
        assert_eq!(
            b.apply_retention(&policy, TsMs(jan + 100 * TsMs::DAY))
                .await
                .unwrap(),
            1
        );
        assert!(partitions(&a).await.is_empty());
        // `a` still believes January exists; its write must succeed anyway.
        a.append(&[SeriesPoints {
            series: s,
            points: vec![test_point(jan + 1)],
        }])
        .await
        .unwrap();
        assert_eq!(
            a.read_raw(s, TsMs(0), TsMs(i64::MAX), 10)
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn pg_errors_name_the_problem() {
        let Some(store) = store().await else { return };
        let mut d = test_device("d1");
        d.site = SiteId::parse("nowhere").unwrap();
        let e = store.create_device(&d, "h").await.unwrap_err();
        assert!(
            matches!(&e, StoreError::Invalid(m) if m.contains("nowhere")),
            "{e}"
        );
        let e = store
            .series_id(&DeviceId::parse("ghost").unwrap(), "main")
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Invalid(m) if m.contains("ghost")),
            "{e}"
        );
        test_series(&store, "d1").await;
        let e = store.delete_site(&test_site("home").id).await.unwrap_err();
        assert!(e.to_string().contains("site home"), "{e}");
        let e = store
            .create_device(&test_device("d1"), "other")
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "device d1 already exists");
        let e = store
            .create_device(&test_device("d2"), "hash-d1")
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "a device with this token already exists");
        let e = PgStore::connect_with_schema(&test_url(), "Bad-Name")
            .await
            .err()
            .unwrap();
        assert!(matches!(e, StoreError::Invalid(_)));
        let e = PgStore::connect("not a url").await.err().unwrap();
        assert!(matches!(e, StoreError::Invalid(_)));
    }

    #[tokio::test]
    async fn pg_unreachable_server_is_skipped_outside_ci() {
        assert!(
            test_pg_store_at("postgres://postgres@127.0.0.1:1/x".into(), false)
                .await
                .is_none()
        );
    }

    #[tokio::test]
    #[should_panic(expected = "unreachable")]
    async fn pg_unreachable_server_fails_in_ci() {
        test_pg_store_at("postgres://postgres@127.0.0.1:1/x".into(), true).await;
    }

    /// Throughput and size, not run by default:
    /// `cargo test -p wattline-storage --release -- --ignored pg_bench --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark"]
    async fn pg_bench_append() {
        let Some(unnest) = store().await else { return };
        let Some(copy) = store().await else { return };
        const SERIES: usize = 100;
        const PER_BATCH: usize = 500; // × 100 series = 50,000 rows a batch
        const BATCHES: usize = 10; // 500,000 rows
        let mut ids = Vec::new();
        for st in [&unnest, &copy] {
            let mut v = Vec::new();
            st.create_site(&test_site("home")).await.unwrap();
            st.create_device(&test_device("d"), "h").await.unwrap();
            for c in 0..SERIES {
                v.push(
                    st.series_id(&DeviceId::parse("d").unwrap(), &format!("c{c}"))
                        .await
                        .unwrap(),
                );
            }
            ids.push(v);
        }
        let start = 1_767_225_600_000i64;
        let make = |ids: &[SeriesId], b: usize| -> Vec<SeriesPoints> {
            ids.iter()
                .enumerate()
                .map(|(k, s)| SeriesPoints {
                    series: *s,
                    points: (0..PER_BATCH)
                        .map(|i| {
                            let n = b * PER_BATCH + i;
                            let ts = start + n as i64 * 1_000;
                            let x = (n * 31 + k) as f64;
                            Point {
                                ts: TsMs(ts),
                                values: Values::new()
                                    .with(Quantity::Voltage, 230.0 + (x * 0.01).sin() * 3.0)
                                    .with(Quantity::Current, 2.0 + (x * 0.001).cos())
                                    .with(Quantity::Power, 460.0 + (x * 0.001).cos() * 230.0)
                                    .with(Quantity::Energy, 1_000.0 + x * 0.000_13),
                            }
                        })
                        .collect(),
                })
                .collect()
        };
        let mut t_unnest = Duration::ZERO;
        let mut t_copy = Duration::ZERO;
        for b in 0..BATCHES {
            let batch = make(&ids[0], b);
            let t = std::time::Instant::now();
            unnest.append(&batch).await.unwrap();
            t_unnest += t.elapsed();
            let batch = make(&ids[1], b);
            let t = std::time::Instant::now();
            append_via_copy(&copy, &batch).await;
            t_copy += t.elapsed();
        }
        let rows = (SERIES * PER_BATCH * BATCHES) as f64;
        println!(
            "append, {} rows in batches of {}: UNNEST {:.0} rows/s, COPY+INSERT {:.0} rows/s",
            rows,
            SERIES * PER_BATCH,
            rows / t_unnest.as_secs_f64(),
            rows / t_copy.as_secs_f64()
        );
        // Overlaying the same rows again (the ON CONFLICT path).
        let batch = make(&ids[0], 0);
        let t = std::time::Instant::now();
        unnest.append(&batch).await.unwrap();
        println!(
            "re-append of 50,000 existing rows: {:.0} rows/s",
            50_000.0 / t.elapsed().as_secs_f64()
        );
        let before = unnest.disk_bytes().await.unwrap();
        let client = unnest.client().await.unwrap();
        client
            .batch_execute("VACUUM ANALYZE readings")
            .await
            .unwrap();
        let after = unnest.disk_bytes().await.unwrap();
        println!(
            "disk: {before} bytes = {:.1} bytes/row ({after} bytes = {:.1} bytes/row after VACUUM ANALYZE)",
            before as f64 / rows,
            after as f64 / rows
        );
        let sizes = client
            .query(
                "SELECT sum(pg_relation_size(c.oid))::int8, sum(pg_indexes_size(c.oid))::int8
                 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'readings'::regclass",
                &[],
            )
            .await
            .unwrap();
        let (heap, idx): (i64, i64) = (sizes[0].get(0), sizes[0].get(1));
        println!(
            "readings heap {:.1} bytes/row, primary key {:.1} bytes/row",
            heap as f64 / rows,
            idx as f64 / rows
        );
        let t = std::time::Instant::now();
        let latest = unnest.latest().await.unwrap();
        println!("latest() over {} series: {:?}", latest.len(), t.elapsed());
    }

    /// The alternative `append` measured against UNNEST: binary COPY into a temporary table,
    /// then one INSERT … ON CONFLICT from it.
    async fn append_via_copy(store: &PgStore, batch: &[SeriesPoints]) {
        use tokio_postgres::binary_copy::BinaryCopyInWriter;
        use tokio_postgres::types::Type;
        let rows = dedup_rows(
            batch
                .iter()
                .flat_map(|sp| sp.points.iter().map(move |p| (sp.series.0, *p))),
        );
        let months: BTreeSet<MonthKey> = rows.iter().map(|r| month_of(r.1.ts.0)).collect();
        let mut client = store.client().await.unwrap();
        store.ensure_partitions(&mut client, &months).await.unwrap();
        let tx = client.transaction().await.unwrap();
        tx.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS readings_in
                 (LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
        )
        .await
        .unwrap();
        let cols: Vec<&str> = Quantity::ALL.iter().map(|q| q.field()).collect();
        let sink = tx
            .copy_in(&format!(
                "COPY readings_in (series_id, ts, {}) FROM STDIN BINARY",
                cols.join(", ")
            ))
            .await
            .unwrap();
        let mut types = vec![Type::INT8, Type::TIMESTAMPTZ];
        types.extend(std::iter::repeat_n(Type::FLOAT8, Quantity::COUNT));
        let writer = BinaryCopyInWriter::new(sink, &types);
        let mut writer = std::pin::pin!(writer);
        for (series, p) in &rows {
            let ts = to_sys(p.ts);
            let vals: Vec<Option<f64>> = Quantity::ALL.iter().map(|q| p.values.get(*q)).collect();
            let mut row: Vec<&(dyn ToSql + Sync)> = vec![series, &ts];
            row.extend(vals.iter().map(|v| v as &(dyn ToSql + Sync)));
            writer.as_mut().write(&row).await.unwrap();
        }
        writer.finish().await.unwrap();
        let overlay = cols
            .iter()
            .map(|c| format!("{c} = COALESCE(EXCLUDED.{c}, readings.{c})"))
            .collect::<Vec<_>>()
            .join(", ");
        tx.batch_execute(&format!(
            "INSERT INTO readings SELECT * FROM readings_in
             ON CONFLICT (series_id, ts) DO UPDATE SET {overlay}"
        ))
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
}
