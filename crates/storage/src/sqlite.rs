//! The embedded backend: one SQLite file, zero configuration.
//!
//! Raw readings are stored as compressed column chunks ([`crate::codec`]), each holding the
//! points of one series within one UTC hour; that is what makes a reading cost a few bytes
//! instead of the ~70 of a row per reading. Appends write a small chunk per series and batch;
//! [`Store::maintain`] later merges the chunks of an hour into one. Rollups are plain tables
//! (see [`crate::schema`]) so that `pandas.read_sql` and the `sqlite3` shell can read them.
//!
//! One thread owns the only writing connection: SQLite allows one writer at a time anyway, and
//! a dedicated thread keeps blocking disk I/O off the async runtime. Readers use a small pool
//! of read connections; WAL mode lets them run while the writer commits. Every commit is
//! `synchronous=FULL`, so a write is on disk when its call returns.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use wattline_domain::{
    Agg, ApiToken, AuditEvent, BucketTier, Device, DeviceId, Email, Point, QStat, Quantity, Role,
    SeriesId, Session, Site, SiteId, TokenScope, TsMs, User, UserId,
};

use crate::codec::{decode_points, encode_points};
use crate::schema::{rollup_table, stat_columns};
use crate::staging::{self, merge_chunked_and_buffered, Unchunked};
use crate::types::storable_sample;
use crate::{
    AuditQuery, Binding, IngestToken, MaintenanceReport, PendingDevice, Result, Retention,
    RollupRow, RollupWrite, SeriesInfo, SeriesPoints, Store, StoreError,
};

/// Chunks never span more than one UTC hour, so a range read can find every chunk that may
/// hold a timestamp through the `(series_id, start_ts)` index alone.
const CHUNK_SPAN_MS: i64 = TsMs::HOUR;
/// An hour with this many chunks is merged even while it is still receiving readings, so the
/// current hour of a 1 Hz meter stays cheap to read.
const COMPACT_OPEN_HOUR_AT: u32 = 32;
/// A closed hour is merged once no reading for it has arrived for this long.
const CLOSED_HOUR_GRACE_MS: i64 = 2 * TsMs::MINUTE;
const READ_POOL_MAX: usize = 4;
/// The write buffer is cut into chunks once it holds this many points...
const CHUNKIFY_POINTS: usize = 200_000;
/// ...or once its oldest point has waited this long.
const CHUNKIFY_AGE: std::time::Duration = std::time::Duration::from_secs(10);

fn chunk_hour(ts: TsMs) -> i64 {
    ts.0.div_euclid(CHUNK_SPAN_MS).saturating_mul(CHUNK_SPAN_MS)
}

const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE sites (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        timezone TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        site_id TEXT NOT NULL REFERENCES sites(id),
        kind TEXT NOT NULL,
        labels TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX devices_site ON devices(site_id);
    CREATE TABLE ingest_tokens (
        id TEXT PRIMARY KEY,
        site_id TEXT NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE series (
        id INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        channel TEXT NOT NULL,
        rollup_watermark INTEGER,
        UNIQUE (device_id, channel)
    );
    CREATE TABLE chunks (
        id INTEGER PRIMARY KEY,
        series_id INTEGER NOT NULL,
        start_ts INTEGER NOT NULL,
        end_ts INTEGER NOT NULL,
        n INTEGER NOT NULL,
        data BLOB NOT NULL
    );
    CREATE UNIQUE INDEX chunks_series_start ON chunks(series_id, start_ts);
    "#,
    // 2: one row per commit holds its readings until they are cut into chunks.
    r#"
    CREATE TABLE staging (
        id INTEGER PRIMARY KEY,
        data BLOB NOT NULL
    );
    "#,
    // 3: MQTT credentials, topic bindings, pending and rejected vendor identities. Credentials
    // and bindings go with their device (ON DELETE CASCADE).
    r#"
    CREATE TABLE mqtt_credentials (
        device_id TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
        username TEXT NOT NULL,
        password_hash TEXT NOT NULL
    );
    CREATE UNIQUE INDEX mqtt_credentials_username ON mqtt_credentials(username);
    CREATE TABLE device_bindings (
        format TEXT NOT NULL,
        vendor_id TEXT NOT NULL,
        device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (format, vendor_id)
    ) WITHOUT ROWID;
    CREATE INDEX device_bindings_device ON device_bindings(device_id);
    CREATE TABLE pending_devices (
        format TEXT NOT NULL,
        vendor_id TEXT NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        messages INTEGER NOT NULL,
        last_topic TEXT NOT NULL,
        sample TEXT NOT NULL,
        PRIMARY KEY (format, vendor_id)
    ) WITHOUT ROWID;
    CREATE TABLE rejected_devices (
        format TEXT NOT NULL,
        vendor_id TEXT NOT NULL,
        PRIMARY KEY (format, vendor_id)
    ) WITHOUT ROWID;
    "#,
    // 4: sites that enroll TCP socket meters asking for an id; a row means open. The setting
    // goes with its site.
    r#"
    CREATE TABLE tcp_enrollment (
        site_id TEXT PRIMARY KEY REFERENCES sites(id) ON DELETE CASCADE,
        opened_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 5: users, their sites, browser sessions, API tokens, the audit log. A user takes their
    // site assignments, sessions and tokens along; a deleted site leaves every user's list.
    // An API token's `sites` is NULL (all of the user's sites) or a JSON array of site ids;
    // its sites are not foreign keys because the token only narrows the user's own list.
    // AUTOINCREMENT keeps audit ids from ever being reused, so they only grow.
    r#"
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE user_sites (
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        site_id TEXT NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
        PRIMARY KEY (user_id, site_id)
    ) WITHOUT ROWID;
    CREATE INDEX user_sites_site ON user_sites(site_id);
    CREATE TABLE sessions (
        id_hash TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        last_seen_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        address TEXT NOT NULL,
        user_agent TEXT NOT NULL
    );
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE INDEX sessions_expires ON sessions(expires_at);
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        scope TEXT NOT NULL,
        sites TEXT,
        token_hash TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        last_used_at INTEGER
    );
    CREATE INDEX api_tokens_user ON api_tokens(user_id);
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        address TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_log_ts ON audit_log(ts);
    "#,
];

/// The rollup tables are generated from the shared column list rather than written out.
fn rollup_ddl() -> String {
    let stats: String = Quantity::ALL
        .iter()
        .map(|q| {
            let f = q.field();
            format!(", {f}_n INTEGER, {f}_avg REAL, {f}_min REAL, {f}_max REAL, {f}_last REAL")
        })
        .collect();
    BucketTier::ROLLUPS
        .iter()
        .map(|t| {
            format!(
                "CREATE TABLE {} (series_id INTEGER NOT NULL, bucket INTEGER NOT NULL, \
                 last_ts INTEGER NOT NULL, energy_import_kwh REAL NOT NULL, \
                 energy_export_kwh REAL NOT NULL{stats}, PRIMARY KEY (series_id, bucket)) \
                 WITHOUT ROWID;\n",
                rollup_table(*t)
            )
        })
        .collect()
}

/// Opens a connection. Each keeps at most 16 MiB of pages cached (writer and every reader):
/// enough for the B-tree interiors the queries walk, and a bound on memory however large the
/// database grows.
fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // auto_vacuum takes effect only when set before the file gets its first page, which the
    // switch to WAL writes; on an existing file it changes nothing. Incremental vacuum hands
    // the pages freed by compaction and retention back to the file system.
    conn.execute_batch(
        "PRAGMA auto_vacuum=INCREMENTAL; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; \
         PRAGMA cache_size=-16384; PRAGMA temp_store=MEMORY;",
    )?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    migrate_to(conn, MIGRATIONS.len() as u32)
}

/// Applies the migrations up to `target`; tests stop early to build an older database.
fn migrate_to(conn: &mut Connection, target: u32) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, \
         applied_at INTEGER NOT NULL);",
    )?;
    let applied: u32 = conn.query_row(
        "SELECT coalesce(max(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    let mut steps: Vec<String> = MIGRATIONS.iter().map(|s| s.to_string()).collect();
    steps[0].push_str(&rollup_ddl());
    for (i, sql) in steps.iter().enumerate() {
        let version = i as u32 + 1;
        if version <= applied || version > target {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql).map_err(|e| StoreError::Migration {
            version,
            reason: e.to_string(),
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, TsMs::now().0],
        )?;
        tx.commit()?;
        tracing::info!(version, "applied sqlite schema migration");
    }
    Ok(())
}

/// State owned by the writer thread.
struct Writer {
    conn: Connection,
    /// Hours (per series) that hold more than one chunk, with their chunk counts and when
    /// they last received data: the compaction work list.
    fragmented: HashMap<(i64, i64), Fragment>,
    /// Committed points not yet in chunks; readers look here too.
    buffer: Arc<Mutex<Unchunked>>,
    /// A frozen generation of the buffer being encoded on another thread.
    encoding: Option<Encoding>,
    /// The one long-lived encoder thread's work queue. A thread per cut would leave the
    /// allocator a thread heap to abandon every few seconds.
    encoder: mpsc::Sender<Box<dyn FnOnce() + Send>>,
    /// Newest chunked timestamp per series: newer points may wait in the buffer, older ones
    /// must be merged into their chunk.
    chunked_last: staging::FastMap<i64, i64>,
    /// Set by the store's `Drop`: finish up and release the file.
    stop: bool,
}

/// Chunk encoding in flight: the encoded rows arrive on `rows`.
struct Encoding {
    rows: mpsc::Receiver<Vec<ChunkRow>>,
    points: Arc<staging::SeriesBuffer>,
    staging_ids: Vec<i64>,
}

/// A chunk ready to insert.
struct ChunkRow {
    series: i64,
    hour: i64,
    start: i64,
    end: i64,
    n: i64,
    data: Vec<u8>,
}

/// Encodes points (ascending) as chunks, one per UTC hour they touch.
fn encode_chunk_rows(series: i64, points: &[Point], out: &mut Vec<ChunkRow>) {
    let mut start = 0;
    while start < points.len() {
        let hour = chunk_hour(points[start].ts);
        let end = points[start..]
            .iter()
            .position(|p| chunk_hour(p.ts) != hour)
            .map_or(points.len(), |i| start + i);
        let part = &points[start..end];
        out.push(ChunkRow {
            series,
            hour,
            start: part[0].ts.0,
            end: part[part.len() - 1].ts.0,
            n: part.len() as i64,
            data: encode_points(part),
        });
        start = end;
    }
}

fn encode_buffer(points: &staging::SeriesBuffer) -> Vec<ChunkRow> {
    let mut rows = Vec::with_capacity(points.len());
    for (series, pts) in points {
        encode_chunk_rows(series.0, pts, &mut rows);
    }
    rows
}

fn insert_chunk_rows(w: &mut Writer, rows: &[ChunkRow], now: TsMs) -> Result<()> {
    let mut stmt = w.conn.prepare_cached(
        "INSERT INTO chunks (series_id, start_ts, end_ts, n, data) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for r in rows {
        stmt.execute(params![r.series, r.start, r.end, r.n, r.data])?;
        let last = w.chunked_last.entry(r.series).or_insert(r.end);
        *last = (*last).max(r.end);
        let frag = w.fragmented.entry((r.series, r.hour)).or_insert(Fragment {
            chunks: 0,
            last_write: now,
        });
        frag.chunks += 1;
        frag.last_write = now;
    }
    Ok(())
}

impl Writer {
    fn buffer_due(&self) -> bool {
        let b = self.buffer.lock().expect("buffer poisoned");
        b.total >= CHUNKIFY_POINTS || b.oldest.is_some_and(|t| t.elapsed() >= CHUNKIFY_AGE)
    }
}

/// Stores one batch durably in one transaction: points newer than their series' chunks as a
/// staging row (and into the buffer), older ones merged into their hour's chunk.
fn stage(w: &mut Writer, batch: Vec<SeriesPoints>) -> Result<()> {
    let is_old = |w: &Writer, sp: &SeriesPoints| {
        let last = w.chunked_last.get(&sp.series.0).copied();
        sp.points.first().is_some_and(|p| Some(p.ts.0) <= last)
    };
    // A generation being encoded is not in `chunked_last` yet: points at or before its
    // newest must wait for it to land, then merge like any older point.
    let overlaps_frozen = |w: &Writer, sp: &SeriesPoints| {
        let frozen_last = w
            .encoding
            .as_ref()
            .and_then(|e| e.points.get(&sp.series))
            .and_then(|pts| pts.last())
            .map(|p| p.ts);
        sp.points.first().is_some_and(|p| Some(p.ts) <= frozen_last)
    };
    if w.encoding.is_some()
        && batch
            .iter()
            .any(|sp| is_old(w, sp) || overlaps_frozen(w, sp))
    {
        finish_chunkify(w)?;
    }
    let mut fresh = Vec::with_capacity(batch.len());
    let mut old: Vec<(i64, Vec<Point>)> = Vec::new();
    for sp in batch {
        if !is_old(w, &sp) {
            fresh.push(sp);
            continue;
        }
        let last = TsMs(w.chunked_last[&sp.series.0]);
        let split = sp.points.partition_point(|p| p.ts <= last);
        old.push((sp.series.0, sp.points[..split].to_vec()));
        if split < sp.points.len() {
            fresh.push(SeriesPoints {
                series: sp.series,
                points: sp.points[split..].to_vec(),
            });
        }
    }
    let in_tx = !old.is_empty();
    if in_tx {
        w.conn.execute_batch("BEGIN IMMEDIATE")?;
    }
    let result = (|| {
        let mut id = None;
        if !fresh.is_empty() {
            w.conn
                .prepare_cached("INSERT INTO staging (data) VALUES (?1)")?
                .execute([staging::encode_batch(&fresh)])?;
            id = Some(w.conn.last_insert_rowid());
        }
        for (series, points) in &old {
            let mut by_hour: BTreeMap<i64, Vec<Point>> = BTreeMap::new();
            for p in points {
                by_hour.entry(chunk_hour(p.ts)).or_default().push(*p);
            }
            for (hour, new) in by_hour {
                let (ids, stored) = load_hour(&w.conn, *series, hour)?;
                rewrite_hour(w, *series, &ids, &merge_points(stored, new))?;
                w.fragmented.remove(&(*series, hour));
            }
        }
        if in_tx {
            w.conn.execute_batch("COMMIT")?;
        }
        Ok(id)
    })();
    match result {
        Ok(Some(id)) => {
            w.buffer.lock().expect("buffer poisoned").push(&fresh, id);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            if in_tx {
                let _ = w.conn.execute_batch("ROLLBACK");
            }
            Err(e)
        }
    }
}

/// Starts cutting the buffer into chunks: the generation is frozen and encoded on another
/// thread, so appends go on meanwhile; `finish_chunkify` inserts the result.
fn start_chunkify(w: &mut Writer, jobs: mpsc::Sender<Job>) {
    if w.encoding.is_some() {
        return;
    }
    let (points, staging_ids) = {
        let mut b = w.buffer.lock().expect("buffer poisoned");
        if b.staging_ids.is_empty() {
            return;
        }
        b.freeze()
    };
    let (tx, rx) = mpsc::channel();
    let to_encode = points.clone();
    let spawned = w.encoder.send(Box::new(move || {
        let _ = tx.send(encode_buffer(&to_encode));
        let _ = jobs.send(Box::new(|w: &mut Writer| {
            if let Err(e) = finish_chunkify(w) {
                tracing::error!(error = %e, "storing encoded chunks failed; will retry");
            }
        }));
    }));
    w.encoding = Some(Encoding {
        rows: rx,
        points,
        staging_ids,
    });
    if spawned.is_err() {
        // No thread to spare: encode here instead.
        let _ = finish_chunkify_with(w, encode_buffer);
    }
}

/// Inserts the chunks of an encoding in flight, waiting for the encoder if needed.
fn finish_chunkify(w: &mut Writer) -> Result<()> {
    finish_chunkify_with(w, |_| Vec::new())
}

fn finish_chunkify_with(
    w: &mut Writer,
    fallback: impl FnOnce(&staging::SeriesBuffer) -> Vec<ChunkRow>,
) -> Result<()> {
    let Some(enc) = w.encoding.take() else {
        return Ok(());
    };
    let rows = enc.rows.recv().unwrap_or_else(|_| fallback(&enc.points));
    commit_chunks(w, rows, enc.points, enc.staging_ids)
}

/// Cuts everything buffered into chunks now (before merges, deletes, retention, shutdown).
fn chunkify(w: &mut Writer) -> Result<()> {
    finish_chunkify(w)?;
    let (points, staging_ids) = {
        let mut b = w.buffer.lock().expect("buffer poisoned");
        if b.staging_ids.is_empty() {
            return Ok(());
        }
        b.freeze()
    };
    let rows = encode_buffer(&points);
    commit_chunks(w, rows, points, staging_ids)
}

/// Inserts the chunks of a frozen generation and deletes its staging rows in one
/// transaction; the generation leaves the buffer only after the commit, so a concurrent
/// reader sees every point in the buffer, the chunks, or both (and drops the duplicates).
fn commit_chunks(
    w: &mut Writer,
    rows: Vec<ChunkRow>,
    points: Arc<staging::SeriesBuffer>,
    staging_ids: Vec<i64>,
) -> Result<()> {
    let now = TsMs::now();
    let result = (|| {
        w.conn.execute_batch("BEGIN IMMEDIATE")?;
        insert_chunk_rows(w, &rows, now)?;
        let mut del = w.conn.prepare_cached("DELETE FROM staging WHERE id = ?1")?;
        for id in &staging_ids {
            del.execute([id])?;
        }
        drop(del);
        w.conn.execute_batch("COMMIT")?;
        Ok::<_, StoreError>(())
    })();
    let mut b = w.buffer.lock().expect("buffer poisoned");
    match result {
        Ok(()) => {
            b.thaw_done();
            Ok(())
        }
        Err(e) => {
            let _ = w.conn.execute_batch("ROLLBACK");
            b.unfreeze(points, staging_ids);
            Err(e)
        }
    }
}

/// Reads the staging rows left by a crash back into the buffer.
fn load_staging(conn: &Connection, buffer: &mut Unchunked) -> Result<()> {
    let mut stmt = conn.prepare("SELECT id, data FROM staging ORDER BY id")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let batch =
            staging::decode_batch(r.get_ref(1)?.as_blob()?).map_err(|e| StoreError::Corrupt {
                series: -1,
                reason: format!("staging row {id}: {e}"),
            })?;
        buffer.push(&batch, id);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Fragment {
    chunks: u32,
    last_write: TsMs,
}

type Job = Box<dyn FnOnce(&mut Writer) + Send>;

pub struct SqliteStore {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
    readers: Arc<Mutex<Vec<Connection>>>,
    buffer: Arc<Mutex<Unchunked>>,
    /// Joined on drop, so that a dropped store has chunked its buffer, checkpointed and
    /// released the file before anyone opens it again.
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Jobs already queued run first; the stop flag ends the loop after them. This blocks
        // the dropping thread for the final chunking, which happens once, at shutdown.
        let _ = self.jobs.send(Box::new(|w: &mut Writer| w.stop = true));
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let mut conn = open_connection(&path)?;
        migrate(&mut conn)?;
        let fragmented = find_fragmented(&conn)?;
        let chunked_last: staging::FastMap<i64, i64> = {
            let mut stmt =
                conn.prepare("SELECT series_id, max(end_ts) FROM chunks GROUP BY series_id")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut unchunked = Unchunked::default();
        load_staging(&conn, &mut unchunked)?;
        if unchunked.total > 0 {
            tracing::info!(
                readings = unchunked.total,
                "recovered buffered readings from staging"
            );
        }
        let buffer = Arc::new(Mutex::new(unchunked));
        let (jobs, rx) = mpsc::channel::<Job>();
        let (encoder, encode_work) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("chunk-encoder".into())
            .spawn(move || {
                while let Ok(work) = encode_work.recv() {
                    work();
                }
            })?;
        let mut writer = Writer {
            conn,
            fragmented,
            buffer: buffer.clone(),
            encoding: None,
            encoder,
            chunked_last,
            stop: false,
        };
        let writer_thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    // A bug in one job must not take every later write down with it: that
                    // job's caller sees the worker gone, the open transaction is rolled back.
                    let outcome =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut writer)));
                    if outcome.is_err() {
                        tracing::error!("a storage job panicked; rolled back, carrying on");
                        if !writer.conn.is_autocommit() {
                            let _ = writer.conn.execute_batch("ROLLBACK");
                        }
                    }
                    if writer.stop {
                        break;
                    }
                }
                if let Err(e) = chunkify(&mut writer) {
                    tracing::error!(error = %e, "final chunking failed; staging rows are kept");
                }
                let _ = writer
                    .conn
                    .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
            })?;
        Ok(SqliteStore {
            path,
            jobs,
            readers: Arc::new(Mutex::new(Vec::new())),
            buffer,
            writer_thread: Some(writer_thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |w: &mut Writer| {
                let _ = tx.send(f(w));
            }))
            .map_err(|_| StoreError::WorkerGone)?;
        rx.await.map_err(|_| StoreError::WorkerGone)?
    }

    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().expect("reader pool poisoned").pop();
            let conn = match pooled {
                Some(c) => c,
                None => open_connection(&path)?,
            };
            let out = f(&conn);
            let mut pool = readers.lock().expect("reader pool poisoned");
            if pool.len() < READ_POOL_MAX {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(|_| StoreError::WorkerGone)?
    }
}

/// Hours of the last two days with several chunks, found again after a restart.
fn find_fragmented(conn: &Connection) -> Result<HashMap<(i64, i64), Fragment>> {
    let since = chunk_hour(TsMs::now()) - 48 * TsMs::HOUR;
    let mut stmt = conn.prepare(
        "SELECT series_id, (start_ts / ?2) * ?2 AS h, count(*) FROM chunks \
         WHERE start_ts >= ?1 GROUP BY series_id, h HAVING count(*) > 1",
    )?;
    let rows = stmt.query_map(params![since, CHUNK_SPAN_MS], |r| {
        Ok((
            (r.get::<_, i64>(0)?, r.get::<_, i64>(1)?),
            r.get::<_, u32>(2)?,
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (key, chunks) = row?;
        out.insert(
            key,
            Fragment {
                chunks,
                last_write: TsMs(i64::MIN),
            },
        );
    }
    Ok(out)
}

fn corrupt(series: i64, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        series,
        reason: e.to_string(),
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

fn site_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Site> {
    let id: String = r.get(0)?;
    Ok(Site {
        id: SiteId::parse(id).map_err(|e| bad_column(0, e))?,
        name: r.get(1)?,
        timezone: r.get(2)?,
        created_at: TsMs(r.get(3)?),
    })
}

fn device_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    let id: String = r.get(0)?;
    let site: String = r.get(2)?;
    let labels: String = r.get(4)?;
    Ok(Device {
        id: DeviceId::parse(id).map_err(|e| bad_column(0, e))?,
        name: r.get(1)?,
        site: SiteId::parse(site).map_err(|e| bad_column(2, e))?,
        kind: r.get(3)?,
        labels: serde_json::from_str(&labels).map_err(|e| bad_column(4, e))?,
        created_at: TsMs(r.get(5)?),
    })
}

fn bad_column(
    i: usize,
    e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
}

const DEVICE_COLUMNS: &str = "id, name, site_id, kind, labels, created_at";

const BINDING_COLUMNS: &str = "format, vendor_id, device_id, created_at";

fn binding_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Binding> {
    let device: String = r.get(2)?;
    Ok(Binding {
        format: r.get(0)?,
        vendor_id: r.get(1)?,
        device: DeviceId::parse(device).map_err(|e| bad_column(2, e))?,
        created_at: TsMs(r.get(3)?),
    })
}

const PENDING_COLUMNS: &str =
    "format, vendor_id, first_seen, last_seen, messages, last_topic, sample";

fn pending_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PendingDevice> {
    let messages: i64 = r.get(4)?;
    Ok(PendingDevice {
        format: r.get(0)?,
        vendor_id: r.get(1)?,
        first_seen: TsMs(r.get(2)?),
        last_seen: TsMs(r.get(3)?),
        messages: u64::try_from(messages).map_err(|e| bad_column(4, e))?,
        last_topic: r.get(5)?,
        sample: r.get(6)?,
    })
}

fn is_foreign_key_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
}

/// SQLite names the failed unique constraint only in its message (`… failed: users.email`).
fn is_unique_violation_of(e: &rusqlite::Error, column: &str) -> bool {
    is_unique_violation(e)
        && matches!(e, rusqlite::Error::SqliteFailure(_, Some(msg)) if msg.contains(column))
}

/// A taken e-mail and a taken id are told apart, so the caller can say which.
fn user_write_err(e: rusqlite::Error, user: &User) -> StoreError {
    if is_unique_violation_of(&e, "users.email") {
        StoreError::Conflict(format!("user with e-mail {}", user.email))
    } else if is_unique_violation(&e) {
        StoreError::Conflict(format!("user {}", user.id))
    } else {
        e.into()
    }
}

/// Inserts the user's site assignments one by one, so that an unknown site can be named.
fn insert_user_sites(conn: &Connection, user: &User) -> Result<()> {
    let mut stmt =
        conn.prepare_cached("INSERT INTO user_sites (user_id, site_id) VALUES (?1, ?2)")?;
    for site in &user.sites {
        stmt.execute(params![user.id.as_str(), site.as_str()])
            .map_err(|e| {
                if is_foreign_key_violation(&e) {
                    StoreError::Invalid(format!("unknown site {site}"))
                } else {
                    e.into()
                }
            })?;
    }
    Ok(())
}

/// The sites come as one JSON array from a subquery, so a user and their sites are read in
/// one statement (one snapshot, even while the writer commits).
const USER_COLUMNS: &str = "u.id, u.email, u.role, u.disabled, u.created_at, u.password_hash, \
     (SELECT json_group_array(s.site_id) FROM user_sites s WHERE s.user_id = u.id)";

fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(User, String)> {
    let id: String = r.get(0)?;
    let email: String = r.get(1)?;
    let role: String = r.get(2)?;
    let sites: String = r.get(6)?;
    let sites: Vec<String> = serde_json::from_str(&sites).map_err(|e| bad_column(6, e))?;
    let user = User {
        id: UserId::parse(id).map_err(|e| bad_column(0, e))?,
        email: Email::parse(&email).map_err(|e| bad_column(1, e))?,
        role: Role::parse(&role).map_err(|e| bad_column(2, e))?,
        sites: sites
            .into_iter()
            .map(SiteId::parse)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad_column(6, e))?,
        disabled: r.get(3)?,
        created_at: TsMs(r.get(4)?),
    };
    Ok((user, r.get(5)?))
}

const SESSION_COLUMNS: &str =
    "id_hash, user_id, created_at, last_seen_at, expires_at, address, user_agent";

fn session_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Session> {
    let user: String = r.get(1)?;
    Ok(Session {
        id_hash: r.get(0)?,
        user: UserId::parse(user).map_err(|e| bad_column(1, e))?,
        created_at: TsMs(r.get(2)?),
        last_seen_at: TsMs(r.get(3)?),
        expires_at: TsMs(r.get(4)?),
        address: r.get(5)?,
        user_agent: r.get(6)?,
    })
}

const API_TOKEN_COLUMNS: &str =
    "id, user_id, name, scope, sites, created_at, expires_at, last_used_at";

/// `None` (all of the user's sites) is NULL; a set, even an empty one, is a JSON array.
fn token_sites_to_sql(sites: &Option<std::collections::BTreeSet<SiteId>>) -> Option<String> {
    sites.as_ref().map(|set| {
        let ids: Vec<&str> = set.iter().map(SiteId::as_str).collect();
        serde_json::Value::from(ids).to_string()
    })
}

fn api_token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiToken> {
    let user: String = r.get(1)?;
    let scope: String = r.get(3)?;
    let sites: Option<String> = r.get(4)?;
    let sites = match sites {
        None => None,
        Some(text) => {
            let ids: Vec<String> = serde_json::from_str(&text).map_err(|e| bad_column(4, e))?;
            Some(
                ids.into_iter()
                    .map(SiteId::parse)
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| bad_column(4, e))?,
            )
        }
    };
    Ok(ApiToken {
        id: r.get(0)?,
        user: UserId::parse(user).map_err(|e| bad_column(1, e))?,
        name: r.get(2)?,
        scope: TokenScope::parse(&scope).map_err(|e| bad_column(3, e))?,
        sites,
        created_at: TsMs(r.get(5)?),
        expires_at: r.get::<_, Option<i64>>(6)?.map(TsMs),
        last_used_at: r.get::<_, Option<i64>>(7)?.map(TsMs),
    })
}

const AUDIT_COLUMNS: &str = "id, ts, actor, action, target, address, detail";

fn audit_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEvent> {
    Ok(AuditEvent {
        id: r.get(0)?,
        ts: TsMs(r.get(1)?),
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        address: r.get(5)?,
        detail: r.get(6)?,
    })
}

/// Loads every chunk of one series' hour: their row ids and their points, merged in order.
fn load_hour(conn: &Connection, series: i64, hour: i64) -> Result<(Vec<i64>, Vec<Point>)> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, data FROM chunks WHERE series_id = ?1 AND start_ts >= ?2 AND start_ts < ?3 \
         ORDER BY start_ts",
    )?;
    let mut ids = Vec::new();
    let mut points: Vec<Point> = Vec::new();
    let mut rows = stmt.query(params![series, hour, hour + CHUNK_SPAN_MS])?;
    let mut sorted = true;
    while let Some(r) = rows.next()? {
        ids.push(r.get::<_, i64>(0)?);
        let blob = r.get_ref(1)?.as_blob()?;
        let decoded = decode_points(blob).map_err(|e| corrupt(series, e))?;
        if let (Some(last), Some(first)) = (points.last(), decoded.first()) {
            sorted &= last.ts < first.ts;
        }
        points.extend(decoded);
    }
    if !sorted {
        points = merge_points(Vec::new(), points);
    }
    Ok((ids, points))
}

/// Merges `new` into `base` by timestamp; at equal timestamps the newer values are laid over.
fn merge_points(base: Vec<Point>, new: Vec<Point>) -> Vec<Point> {
    let mut by_ts: BTreeMap<i64, Point> = base.into_iter().map(|p| (p.ts.0, p)).collect();
    for p in new {
        by_ts
            .entry(p.ts.0)
            .and_modify(|old| old.values.overlay(&p.values))
            .or_insert(p);
    }
    by_ts.into_values().collect()
}

/// Replaces the chunks of one series' hour by a single chunk of `points`.
fn rewrite_hour(w: &mut Writer, series: i64, ids: &[i64], points: &[Point]) -> Result<()> {
    {
        let mut del = w.conn.prepare_cached("DELETE FROM chunks WHERE id = ?1")?;
        for id in ids {
            del.execute([id])?;
        }
    }
    if let Some(last) = points.last() {
        let known = w.chunked_last.entry(series).or_insert(last.ts.0);
        *known = (*known).max(last.ts.0);
        w.conn
            .prepare_cached(
                "INSERT INTO chunks (series_id, start_ts, end_ts, n, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                series,
                points[0].ts.0,
                points[points.len() - 1].ts.0,
                points.len() as i64,
                encode_points(points)
            ])?;
    }
    Ok(())
}

fn rollup_columns() -> Vec<String> {
    let mut cols = vec![
        "series_id".to_string(),
        "bucket".into(),
        "last_ts".into(),
        "energy_import_kwh".into(),
        "energy_export_kwh".into(),
    ];
    cols.extend(stat_columns());
    cols
}

fn rollup_values(row: &RollupRow) -> Vec<SqlValue> {
    let a = &row.agg;
    let mut v = vec![
        SqlValue::Integer(row.series.0),
        SqlValue::Integer(row.bucket.0),
        SqlValue::Integer(a.last_ts.0),
        SqlValue::Real(a.energy_import_kwh),
        SqlValue::Real(a.energy_export_kwh),
    ];
    for s in &a.stats {
        if s.n == 0 {
            v.extend(std::iter::repeat_n(SqlValue::Null, 5));
        } else {
            v.push(SqlValue::Integer(i64::from(s.n)));
            v.push(SqlValue::Real(s.sum / f64::from(s.n)));
            v.push(SqlValue::Real(s.min));
            v.push(SqlValue::Real(s.max));
            v.push(SqlValue::Real(s.last));
        }
    }
    v
}

/// Reads a rollup row whose columns are in [`rollup_columns`] order.
fn rollup_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RollupRow> {
    let mut agg = Agg {
        last_ts: TsMs(r.get(2)?),
        energy_import_kwh: r.get(3)?,
        energy_export_kwh: r.get(4)?,
        ..Agg::default()
    };
    for (i, s) in agg.stats.iter_mut().enumerate() {
        let base = 5 + i * 5;
        let n: Option<i64> = r.get(base)?;
        if let Some(n) = n.filter(|n| *n > 0) {
            let avg: f64 = r.get(base + 1)?;
            *s = QStat {
                n: n as u32,
                sum: avg * n as f64,
                min: r.get(base + 2)?,
                max: r.get(base + 3)?,
                last: r.get(base + 4)?,
            };
        }
    }
    Ok(RollupRow {
        series: SeriesId(r.get(0)?),
        bucket: TsMs(r.get(1)?),
        agg,
    })
}

fn write_rollup_rows(
    conn: &Connection,
    tier: BucketTier,
    rows: &[&RollupRow],
    merge: bool,
) -> Result<()> {
    let table = rollup_table(tier);
    let cols = rollup_columns();
    let insert = format!(
        "INSERT OR REPLACE INTO {table} ({}) VALUES ({})",
        cols.join(", "),
        (1..=cols.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let select = format!(
        "SELECT {} FROM {table} WHERE series_id = ?1 AND bucket = ?2",
        cols.join(", ")
    );
    let mut ins = conn.prepare_cached(&insert)?;
    let mut sel = conn.prepare_cached(&select)?;
    for row in rows {
        let merged;
        let row = if merge {
            match sel
                .query_row(params![row.series.0, row.bucket.0], rollup_from_row)
                .optional()?
            {
                Some(mut stored) => {
                    stored.agg.merge(&row.agg);
                    merged = stored;
                    &merged
                }
                None => *row,
            }
        } else {
            *row
        };
        ins.execute(params_from_iter(rollup_values(row)))?;
    }
    Ok(())
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn create_site(&self, site: &Site) -> Result<()> {
        let site = site.clone();
        self.write(move |w| {
            w.conn
                .execute(
                    "INSERT INTO sites (id, name, timezone, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![
                        site.id.as_str(),
                        site.name,
                        site.timezone,
                        site.created_at.0
                    ],
                )
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Conflict(format!("site {}", site.id))
                    } else {
                        e.into()
                    }
                })?;
            Ok(())
        })
        .await
    }

    async fn get_site(&self, id: &SiteId) -> Result<Option<Site>> {
        let id = id.clone();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT id, name, timezone, created_at FROM sites WHERE id = ?1",
                [id.as_str()],
                site_from_row,
            )
            .optional()?)
        })
        .await
    }

    async fn list_sites(&self) -> Result<Vec<Site>> {
        self.read(|c| {
            let mut stmt =
                c.prepare("SELECT id, name, timezone, created_at FROM sites ORDER BY id")?;
            let rows = stmt.query_map([], site_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn update_site(&self, site: &Site) -> Result<bool> {
        let site = site.clone();
        self.write(move |w| {
            Ok(w.conn.execute(
                "UPDATE sites SET name = ?2, timezone = ?3 WHERE id = ?1",
                params![site.id.as_str(), site.name, site.timezone],
            )? > 0)
        })
        .await
    }

    async fn delete_site(&self, id: &SiteId) -> Result<bool> {
        let id = id.clone();
        self.write(move |w| {
            let devices: i64 = w.conn.query_row(
                "SELECT count(*) FROM devices WHERE site_id = ?1",
                [id.as_str()],
                |r| r.get(0),
            )?;
            if devices > 0 {
                return Err(StoreError::InUse(format!(
                    "site {id} still has devices; delete or move them first"
                )));
            }
            Ok(w.conn
                .execute("DELETE FROM sites WHERE id = ?1", [id.as_str()])?
                > 0)
        })
        .await
    }

    async fn create_device(&self, device: &Device, token_hash: &str) -> Result<()> {
        let device = device.clone();
        let token_hash = token_hash.to_owned();
        self.write(move |w| {
            let labels = serde_json::to_string(&device.labels)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            w.conn
                .execute(
                    "INSERT INTO devices (id, name, site_id, kind, labels, token_hash, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        device.id.as_str(),
                        device.name,
                        device.site.as_str(),
                        device.kind,
                        labels,
                        token_hash,
                        device.created_at.0
                    ],
                )
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Conflict(format!("device {}", device.id))
                    } else {
                        e.into()
                    }
                })?;
            Ok(())
        })
        .await
    }

    async fn get_device(&self, id: &DeviceId) -> Result<Option<Device>> {
        let id = id.clone();
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1"),
                [id.as_str()],
                device_from_row,
            )
            .optional()?)
        })
        .await
    }

    async fn list_devices(&self) -> Result<Vec<Device>> {
        self.read(|c| {
            let mut stmt =
                c.prepare(&format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id"))?;
            let rows = stmt.query_map([], device_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn update_device(&self, device: &Device) -> Result<bool> {
        let device = device.clone();
        self.write(move |w| {
            let labels = serde_json::to_string(&device.labels)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            Ok(w.conn.execute(
                "UPDATE devices SET name = ?2, site_id = ?3, kind = ?4, labels = ?5 WHERE id = ?1",
                params![
                    device.id.as_str(),
                    device.name,
                    device.site.as_str(),
                    device.kind,
                    labels
                ],
            )? > 0)
        })
        .await
    }

    async fn set_device_token(&self, id: &DeviceId, token_hash: &str) -> Result<bool> {
        let (id, hash) = (id.clone(), token_hash.to_owned());
        self.write(move |w| {
            let updated = w
                .conn
                .execute(
                    "UPDATE devices SET token_hash = ?2 WHERE id = ?1",
                    params![id.as_str(), hash],
                )
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Conflict("a device with this token".to_owned())
                    } else {
                        e.into()
                    }
                })?;
            Ok(updated > 0)
        })
        .await
    }

    async fn delete_device(&self, id: &DeviceId) -> Result<bool> {
        let id = id.clone();
        self.write(move |w| {
            // Buffered readings of the device must not come back from staging rows later.
            chunkify(w)?;
            let tx = w.conn.transaction()?;
            let series: Vec<i64> = {
                let mut stmt = tx.prepare("SELECT id FROM series WHERE device_id = ?1")?;
                let rows = stmt.query_map([id.as_str()], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for s in &series {
                tx.execute("DELETE FROM chunks WHERE series_id = ?1", [s])?;
                for tier in BucketTier::ROLLUPS {
                    tx.execute(
                        &format!("DELETE FROM {} WHERE series_id = ?1", rollup_table(tier)),
                        [s],
                    )?;
                }
            }
            tx.execute("DELETE FROM series WHERE device_id = ?1", [id.as_str()])?;
            // The MQTT credential and bindings go by ON DELETE CASCADE.
            let deleted = tx.execute("DELETE FROM devices WHERE id = ?1", [id.as_str()])? > 0;
            tx.commit()?;
            w.fragmented.retain(|(s, _), _| !series.contains(s));
            Ok(deleted)
        })
        .await
    }

    async fn device_by_token(&self, token_hash: &str) -> Result<Option<DeviceId>> {
        let hash = token_hash.to_owned();
        self.read(move |c| {
            let id: Option<String> = c
                .query_row(
                    "SELECT id FROM devices WHERE token_hash = ?1",
                    [hash],
                    |r| r.get(0),
                )
                .optional()?;
            id.map(|s| DeviceId::parse(s).map_err(|e| StoreError::Invalid(e.to_string())))
                .transpose()
        })
        .await
    }

    async fn create_ingest_token(&self, token: &IngestToken, token_hash: &str) -> Result<()> {
        let (t, hash) = (token.clone(), token_hash.to_owned());
        self.write(move |w| {
            w.conn
                .execute(
                    "INSERT INTO ingest_tokens (id, site_id, name, token_hash, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![t.id, t.site.as_str(), t.name, hash, t.created_at.0],
                )
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Conflict(format!("ingest token {}", t.id))
                    } else {
                        e.into()
                    }
                })?;
            Ok(())
        })
        .await
    }

    async fn list_ingest_tokens(&self, site: &SiteId) -> Result<Vec<IngestToken>> {
        let site = site.clone();
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, site_id, name, created_at FROM ingest_tokens WHERE site_id = ?1 \
                 ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([site.as_str()], |r| {
                let site: String = r.get(1)?;
                Ok(IngestToken {
                    id: r.get(0)?,
                    site: SiteId::parse(site).map_err(|e| bad_column(1, e))?,
                    name: r.get(2)?,
                    created_at: TsMs(r.get(3)?),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn delete_ingest_token(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |w| {
            Ok(w.conn
                .execute("DELETE FROM ingest_tokens WHERE id = ?1", [id])?
                > 0)
        })
        .await
    }

    async fn ingest_token_site(&self, token_hash: &str) -> Result<Option<SiteId>> {
        let hash = token_hash.to_owned();
        self.read(move |c| {
            let id: Option<String> = c
                .query_row(
                    "SELECT site_id FROM ingest_tokens WHERE token_hash = ?1",
                    [hash],
                    |r| r.get(0),
                )
                .optional()?;
            id.map(|s| SiteId::parse(s).map_err(|e| StoreError::Invalid(e.to_string())))
                .transpose()
        })
        .await
    }

    async fn set_mqtt_credential(
        &self,
        device: &DeviceId,
        username: &str,
        password_hash: &str,
    ) -> Result<bool> {
        let (device, username, hash) = (
            device.clone(),
            username.to_owned(),
            password_hash.to_owned(),
        );
        self.write(move |w| {
            // Selecting from `devices` inserts nothing for an unknown device; the upsert
            // covers the device's own row, so only another device's username conflicts.
            let n = w
                .conn
                .prepare_cached(
                    "INSERT INTO mqtt_credentials (device_id, username, password_hash) \
                     SELECT id, ?2, ?3 FROM devices WHERE id = ?1 \
                     ON CONFLICT (device_id) DO UPDATE SET username = excluded.username, \
                     password_hash = excluded.password_hash",
                )?
                .execute(params![device.as_str(), username, hash])
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Conflict(format!("MQTT username {username:?}"))
                    } else {
                        e.into()
                    }
                })?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete_mqtt_credential(&self, device: &DeviceId) -> Result<bool> {
        let device = device.clone();
        self.write(move |w| {
            Ok(w.conn
                .prepare_cached("DELETE FROM mqtt_credentials WHERE device_id = ?1")?
                .execute([device.as_str()])?
                > 0)
        })
        .await
    }

    async fn mqtt_credential(&self, username: &str) -> Result<Option<(DeviceId, String)>> {
        let username = username.to_owned();
        self.read(move |c| {
            let found: Option<(String, String)> = c
                .prepare_cached(
                    "SELECT device_id, password_hash FROM mqtt_credentials WHERE username = ?1",
                )?
                .query_row([username], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            found
                .map(|(device, hash)| {
                    let device =
                        DeviceId::parse(device).map_err(|e| StoreError::Invalid(e.to_string()))?;
                    Ok((device, hash))
                })
                .transpose()
        })
        .await
    }

    async fn mqtt_username(&self, device: &DeviceId) -> Result<Option<String>> {
        let device = device.clone();
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT username FROM mqtt_credentials WHERE device_id = ?1")?
                    .query_row([device.as_str()], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    async fn bind_device(&self, binding: &Binding) -> Result<bool> {
        let b = binding.clone();
        self.write(move |w| {
            // Selecting from `devices` inserts nothing for an unknown device. On an identity
            // that is already bound, the no-op update makes RETURNING name its device (and
            // keeps its created_at).
            let owner: Option<String> = w
                .conn
                .prepare_cached(
                    "INSERT INTO device_bindings (format, vendor_id, device_id, created_at) \
                     SELECT ?1, ?2, id, ?4 FROM devices WHERE id = ?3 \
                     ON CONFLICT (format, vendor_id) \
                     DO UPDATE SET device_id = device_bindings.device_id \
                     RETURNING device_id",
                )?
                .query_row(
                    params![b.format, b.vendor_id, b.device.as_str(), b.created_at.0],
                    |r| r.get(0),
                )
                .optional()?;
            match owner {
                None => Ok(false),
                Some(owner) if owner == b.device.as_str() => Ok(true),
                Some(owner) => Err(StoreError::Conflict(format!(
                    "a binding of {} {:?} to device {owner}",
                    b.format, b.vendor_id
                ))),
            }
        })
        .await
    }

    async fn unbind_device(&self, format: &str, vendor_id: &str) -> Result<bool> {
        let (format, vendor_id) = (format.to_owned(), vendor_id.to_owned());
        self.write(move |w| {
            Ok(w.conn
                .prepare_cached("DELETE FROM device_bindings WHERE format = ?1 AND vendor_id = ?2")?
                .execute([format, vendor_id])?
                > 0)
        })
        .await
    }

    async fn list_bindings(&self) -> Result<Vec<Binding>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {BINDING_COLUMNS} FROM device_bindings ORDER BY format, vendor_id"
            ))?;
            let rows = stmt.query_map([], binding_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn device_bindings(&self, device: &DeviceId) -> Result<Vec<Binding>> {
        let device = device.clone();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {BINDING_COLUMNS} FROM device_bindings WHERE device_id = ?1 \
                 ORDER BY format, vendor_id"
            ))?;
            let rows = stmt.query_map([device.as_str()], binding_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn upsert_pending(&self, p: &PendingDevice) -> Result<()> {
        let p = p.clone();
        self.write(move |w| {
            // The count saturates: an overflowing sum would turn into a REAL.
            w.conn
                .prepare_cached(&format!(
                    "INSERT INTO pending_devices ({PENDING_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (format, vendor_id) DO UPDATE SET \
                     first_seen = min(first_seen, excluded.first_seen), \
                     last_seen = max(last_seen, excluded.last_seen), \
                     messages = CASE WHEN messages > {max} - excluded.messages THEN {max} \
                     ELSE messages + excluded.messages END, \
                     last_topic = excluded.last_topic, sample = excluded.sample",
                    max = i64::MAX
                ))?
                .execute(params![
                    p.format,
                    p.vendor_id,
                    p.first_seen.0,
                    p.last_seen.0,
                    i64::try_from(p.messages).unwrap_or(i64::MAX),
                    p.last_topic,
                    storable_sample(&p.sample),
                ])?;
            Ok(())
        })
        .await
    }

    async fn list_pending(&self) -> Result<Vec<PendingDevice>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {PENDING_COLUMNS} FROM pending_devices \
                 ORDER BY last_seen DESC, format, vendor_id"
            ))?;
            let rows = stmt.query_map([], pending_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn get_pending(&self, format: &str, vendor_id: &str) -> Result<Option<PendingDevice>> {
        let (format, vendor_id) = (format.to_owned(), vendor_id.to_owned());
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {PENDING_COLUMNS} FROM pending_devices \
                     WHERE format = ?1 AND vendor_id = ?2"
            ))?
            .query_row([format, vendor_id], pending_from_row)
            .optional()?)
        })
        .await
    }

    async fn delete_pending(&self, format: &str, vendor_id: &str) -> Result<bool> {
        let (format, vendor_id) = (format.to_owned(), vendor_id.to_owned());
        self.write(move |w| {
            Ok(w.conn
                .prepare_cached("DELETE FROM pending_devices WHERE format = ?1 AND vendor_id = ?2")?
                .execute([format, vendor_id])?
                > 0)
        })
        .await
    }

    async fn set_rejected(&self, format: &str, vendor_id: &str, rejected: bool) -> Result<()> {
        let (format, vendor_id) = (format.to_owned(), vendor_id.to_owned());
        self.write(move |w| {
            let sql = if rejected {
                "INSERT INTO rejected_devices (format, vendor_id) VALUES (?1, ?2) \
                 ON CONFLICT (format, vendor_id) DO NOTHING"
            } else {
                "DELETE FROM rejected_devices WHERE format = ?1 AND vendor_id = ?2"
            };
            w.conn.prepare_cached(sql)?.execute([format, vendor_id])?;
            Ok(())
        })
        .await
    }

    async fn list_rejected(&self) -> Result<Vec<(String, String)>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT format, vendor_id FROM rejected_devices ORDER BY format, vendor_id",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn set_tcp_enrollment(&self, site: &SiteId, open: bool) -> Result<bool> {
        let site = site.clone();
        self.write(move |w| {
            let exists = w
                .conn
                .prepare_cached("SELECT 1 FROM sites WHERE id = ?1")?
                .exists([site.as_str()])?;
            if !exists {
                return Ok(false);
            }
            if open {
                w.conn
                    .prepare_cached(
                        "INSERT INTO tcp_enrollment (site_id, opened_at) VALUES (?1, ?2) \
                         ON CONFLICT (site_id) DO NOTHING",
                    )?
                    .execute(params![site.as_str(), TsMs::now().0])?;
            } else {
                w.conn
                    .prepare_cached("DELETE FROM tcp_enrollment WHERE site_id = ?1")?
                    .execute([site.as_str()])?;
            }
            Ok(true)
        })
        .await
    }

    async fn tcp_enrollment_sites(&self) -> Result<Vec<SiteId>> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT site_id FROM tcp_enrollment ORDER BY site_id")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let mut sites = Vec::new();
            for id in rows {
                sites.push(SiteId::parse(id?).map_err(|e| StoreError::Invalid(e.to_string()))?);
            }
            Ok(sites)
        })
        .await
    }

    async fn create_user(&self, user: &User, password_hash: &str) -> Result<()> {
        let (user, hash) = (user.clone(), password_hash.to_owned());
        self.write(move |w| {
            let tx = w.conn.transaction()?;
            tx.prepare_cached(
                "INSERT INTO users (id, email, role, password_hash, disabled, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                user.id.as_str(),
                user.email.as_str(),
                user.role.as_str(),
                hash,
                user.disabled,
                user.created_at.0
            ])
            .map_err(|e| user_write_err(e, &user))?;
            insert_user_sites(&tx, &user)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn get_user(&self, id: &UserId) -> Result<Option<(User, String)>> {
        let id = id.clone();
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?1"
            ))?
            .query_row([id.as_str()], user_from_row)
            .optional()?)
        })
        .await
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<(User, String)>> {
        let email = email.clone();
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users u WHERE u.email = ?1"
            ))?
            .query_row([email.as_str()], user_from_row)
            .optional()?)
        })
        .await
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users u ORDER BY u.email"
            ))?;
            let rows = stmt.query_map([], |r| user_from_row(r).map(|(u, _)| u))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn update_user(&self, user: &User) -> Result<bool> {
        let user = user.clone();
        self.write(move |w| {
            let tx = w.conn.transaction()?;
            let updated = tx
                .prepare_cached(
                    "UPDATE users SET email = ?2, role = ?3, disabled = ?4 WHERE id = ?1",
                )?
                .execute(params![
                    user.id.as_str(),
                    user.email.as_str(),
                    user.role.as_str(),
                    user.disabled
                ])
                .map_err(|e| user_write_err(e, &user))?;
            if updated == 0 {
                return Ok(false);
            }
            tx.prepare_cached("DELETE FROM user_sites WHERE user_id = ?1")?
                .execute([user.id.as_str()])?;
            insert_user_sites(&tx, &user)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn set_user_password(&self, id: &UserId, password_hash: &str) -> Result<bool> {
        let (id, hash) = (id.clone(), password_hash.to_owned());
        self.write(move |w| {
            Ok(w.conn
                .prepare_cached("UPDATE users SET password_hash = ?2 WHERE id = ?1")?
                .execute(params![id.as_str(), hash])?
                > 0)
        })
        .await
    }

    async fn delete_user(&self, id: &UserId) -> Result<bool> {
        let id = id.clone();
        self.write(move |w| {
            // Site assignments, sessions and API tokens go by ON DELETE CASCADE.
            Ok(w.conn
                .prepare_cached("DELETE FROM users WHERE id = ?1")?
                .execute([id.as_str()])?
                > 0)
        })
        .await
    }

    async fn count_users(&self) -> Result<u64> {
        self.read(|c| {
            let n: i64 = c
                .prepare_cached("SELECT count(*) FROM users")?
                .query_row([], |r| r.get(0))?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    async fn create_session(&self, session: &Session) -> Result<()> {
        let s = session.clone();
        self.write(move |w| {
            w.conn
                .prepare_cached(&format!(
                    "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ))?
                .execute(params![
                    s.id_hash,
                    s.user.as_str(),
                    s.created_at.0,
                    s.last_seen_at.0,
                    s.expires_at.0,
                    s.address,
                    s.user_agent
                ])
                .map_err(|e| {
                    if is_foreign_key_violation(&e) {
                        StoreError::Invalid(format!("unknown user {}", s.user))
                    } else if is_unique_violation(&e) {
                        StoreError::Conflict("a session with this id".to_owned())
                    } else {
                        e.into()
                    }
                })?;
            Ok(())
        })
        .await
    }

    async fn get_session(&self, id_hash: &str) -> Result<Option<Session>> {
        let id_hash = id_hash.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE id_hash = ?1"
            ))?
            .query_row([id_hash], session_from_row)
            .optional()?)
        })
        .await
    }

    async fn touch_session(
        &self,
        id_hash: &str,
        last_seen_at: TsMs,
        expires_at: TsMs,
    ) -> Result<bool> {
        let id_hash = id_hash.to_owned();
        self.write(move |w| {
            Ok(w.conn
                .prepare_cached(
                    "UPDATE sessions SET last_seen_at = ?2, expires_at = ?3 WHERE id_hash = ?1",
                )?
                .execute(params![id_hash, last_seen_at.0, expires_at.0])?
                > 0)
        })
        .await
    }

    async fn delete_session(&self, id_hash: &str) -> Result<bool> {
        let id_hash = id_hash.to_owned();
        self.write(move |w| {
            Ok(w.conn
                .prepare_cached("DELETE FROM sessions WHERE id_hash = ?1")?
                .execute([id_hash])?
                > 0)
        })
        .await
    }

    async fn delete_user_sessions(&self, user: &UserId, keep: Option<&str>) -> Result<u64> {
        let (user, keep) = (user.clone(), keep.map(str::to_owned));
        self.write(move |w| {
            let n = w
                .conn
                .prepare_cached(
                    "DELETE FROM sessions WHERE user_id = ?1 AND (?2 IS NULL OR id_hash <> ?2)",
                )?
                .execute(params![user.as_str(), keep])?;
            Ok(n as u64)
        })
        .await
    }

    async fn list_user_sessions(&self, user: &UserId) -> Result<Vec<Session>> {
        let user = user.clone();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ?1 \
                 ORDER BY created_at DESC, id_hash DESC"
            ))?;
            let rows = stmt.query_map([user.as_str()], session_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn purge_sessions(&self, now: TsMs) -> Result<u64> {
        self.write(move |w| {
            let n = w
                .conn
                .prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1")?
                .execute([now.0])?;
            Ok(n as u64)
        })
        .await
    }

    async fn create_api_token(&self, token: &ApiToken, token_hash: &str) -> Result<()> {
        let (t, hash) = (token.clone(), token_hash.to_owned());
        self.write(move |w| {
            w.conn
                .prepare_cached(
                    "INSERT INTO api_tokens (id, user_id, name, scope, sites, token_hash, \
                     created_at, expires_at, last_used_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    t.id,
                    t.user.as_str(),
                    t.name,
                    t.scope.as_str(),
                    token_sites_to_sql(&t.sites),
                    hash,
                    t.created_at.0,
                    t.expires_at.map(|ts| ts.0),
                    t.last_used_at.map(|ts| ts.0)
                ])
                .map_err(|e| {
                    if is_foreign_key_violation(&e) {
                        StoreError::Invalid(format!("unknown user {}", t.user))
                    } else if is_unique_violation_of(&e, "api_tokens.token_hash") {
                        StoreError::Conflict("an API token with this hash".to_owned())
                    } else if is_unique_violation(&e) {
                        StoreError::Conflict(format!("API token {}", t.id))
                    } else {
                        e.into()
                    }
                })?;
            Ok(())
        })
        .await
    }

    async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>> {
        let hash = token_hash.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = ?1"
            ))?
            .query_row([hash], api_token_from_row)
            .optional()?)
        })
        .await
    }

    async fn list_api_tokens(&self, user: Option<&UserId>) -> Result<Vec<ApiToken>> {
        let user = user.cloned();
        self.read(move |c| {
            let order = "ORDER BY created_at DESC, id DESC";
            let tokens = match user {
                Some(user) => c
                    .prepare_cached(&format!(
                        "SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE user_id = ?1 {order}"
                    ))?
                    .query_map([user.as_str()], api_token_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
                None => c
                    .prepare_cached(&format!(
                        "SELECT {API_TOKEN_COLUMNS} FROM api_tokens {order}"
                    ))?
                    .query_map([], api_token_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            };
            Ok(tokens)
        })
        .await
    }

    async fn get_api_token(&self, id: &str) -> Result<Option<ApiToken>> {
        let id = id.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE id = ?1"
            ))?
            .query_row([id], api_token_from_row)
            .optional()?)
        })
        .await
    }

    async fn delete_api_token(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |w| {
            Ok(w.conn
                .prepare_cached("DELETE FROM api_tokens WHERE id = ?1")?
                .execute([id])?
                > 0)
        })
        .await
    }

    async fn touch_api_token(&self, id: &str, used_at: TsMs) -> Result<()> {
        let id = id.to_owned();
        self.write(move |w| {
            // Uses reported late (another request, another node) never move the mark back.
            w.conn
                .prepare_cached(
                    "UPDATE api_tokens SET last_used_at = max(coalesce(last_used_at, ?2), ?2) \
                     WHERE id = ?1",
                )?
                .execute(params![id, used_at.0])?;
            Ok(())
        })
        .await
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<i64> {
        let e = event.clone();
        self.write(move |w| {
            w.conn
                .prepare_cached(
                    "INSERT INTO audit_log (ts, actor, action, target, address, detail) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    e.ts.0, e.actor, e.action, e.target, e.address, e.detail
                ])?;
            Ok(w.conn.last_insert_rowid())
        })
        .await
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let q = query.clone();
        if q.limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |c| {
            // Only the filters given become conditions, so SQLite can pick the ts index for
            // a time range and walk the primary key backwards otherwise.
            let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE 1 = 1");
            let mut args: Vec<SqlValue> = Vec::new();
            let mut filter = |cond: &str, v: SqlValue| {
                args.push(v);
                sql.push_str(&format!(" AND {cond} ?{}", args.len()));
            };
            if let Some(from) = q.from {
                filter("ts >=", SqlValue::Integer(from.0));
            }
            if let Some(to) = q.to {
                filter("ts <", SqlValue::Integer(to.0));
            }
            if let Some(actor) = q.actor {
                filter("actor =", SqlValue::Text(actor));
            }
            if let Some(action) = q.action {
                filter("action =", SqlValue::Text(action));
            }
            if let Some(before) = q.before_id {
                filter("id <", SqlValue::Integer(before));
            }
            args.push(SqlValue::Integer(
                i64::try_from(q.limit).unwrap_or(i64::MAX),
            ));
            sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params_from_iter(args), audit_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn series_id(&self, device: &DeviceId, channel: &str) -> Result<SeriesId> {
        let (device, channel) = (device.clone(), channel.to_owned());
        self.write(move |w| {
            w.conn
                .prepare_cached(
                    "INSERT INTO series (device_id, channel) VALUES (?1, ?2) \
                     ON CONFLICT (device_id, channel) DO NOTHING",
                )?
                .execute(params![device.as_str(), channel])?;
            let id = w
                .conn
                .prepare_cached("SELECT id FROM series WHERE device_id = ?1 AND channel = ?2")?
                .query_row(params![device.as_str(), channel], |r| r.get(0))?;
            Ok(SeriesId(id))
        })
        .await
    }

    async fn list_series(&self) -> Result<Vec<SeriesInfo>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, device_id, channel, rollup_watermark FROM series ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                let device: String = r.get(1)?;
                Ok(SeriesInfo {
                    id: SeriesId(r.get(0)?),
                    device: DeviceId::parse(device).map_err(|e| bad_column(1, e))?,
                    channel: r.get(2)?,
                    rollup_watermark: r.get::<_, Option<i64>>(3)?.map(TsMs),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn append(&self, batch: &[SeriesPoints]) -> Result<()> {
        let batch: Vec<SeriesPoints> = batch
            .iter()
            .filter(|s| !s.points.is_empty())
            .cloned()
            .collect();
        if batch.is_empty() {
            return Ok(());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let jobs = self.jobs.clone();
        self.jobs
            .send(Box::new(move |w: &mut Writer| {
                let result = stage(w, batch);
                let staged = result.is_ok();
                let _ = tx.send(result);
                // After answering, and on another thread: callers never wait for encoding.
                if staged && w.buffer_due() {
                    start_chunkify(w, jobs);
                }
            }))
            .map_err(|_| StoreError::WorkerGone)?;
        rx.await.map_err(|_| StoreError::WorkerGone)?
    }

    async fn upsert(&self, series: SeriesId, points: &[Point]) -> Result<Vec<Point>> {
        let points = points.to_vec();
        self.write(move |w| {
            // Merging works on chunks: cut the buffer first (late data is rare).
            chunkify(w)?;
            let mut by_hour: BTreeMap<i64, Vec<Point>> = BTreeMap::new();
            for p in points {
                by_hour.entry(chunk_hour(p.ts)).or_default().push(p);
            }
            w.conn.execute_batch("BEGIN IMMEDIATE")?;
            let result = (|| {
                let mut out = Vec::new();
                for (hour, new) in by_hour {
                    let wanted: Vec<i64> = new.iter().map(|p| p.ts.0).collect();
                    let (ids, stored) = load_hour(&w.conn, series.0, hour)?;
                    let merged = merge_points(stored, new);
                    rewrite_hour(w, series.0, &ids, &merged)?;
                    w.fragmented.remove(&(series.0, hour));
                    out.extend(merged.into_iter().filter(|p| wanted.contains(&p.ts.0)));
                }
                Ok(out)
            })();
            match result {
                Ok(out) => {
                    w.conn.execute_batch("COMMIT")?;
                    Ok(out)
                }
                Err(e) => {
                    let _ = w.conn.execute_batch("ROLLBACK");
                    Err(e)
                }
            }
        })
        .await
    }

    async fn read_raw(
        &self,
        series: SeriesId,
        from: TsMs,
        to: TsMs,
        limit: usize,
    ) -> Result<Vec<Point>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The buffer first, then the chunks: see `chunkify` for why this order is safe.
        let buffered = self
            .buffer
            .lock()
            .expect("buffer poisoned")
            .range(series, from, to);
        let chunked = self
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                "SELECT data FROM chunks WHERE series_id = ?1 AND start_ts >= ?2 AND start_ts < ?3 \
                 ORDER BY start_ts",
            )?;
                let mut rows = stmt.query(params![series.0, chunk_hour(from), to.0])?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let pts = decode_points(r.get_ref(0)?.as_blob()?)
                        .map_err(|e| corrupt(series.0, e))?;
                    for p in pts {
                        if p.ts >= from && p.ts < to {
                            out.push(p);
                            if out.len() >= limit {
                                return Ok(out);
                            }
                        }
                    }
                }
                Ok(out)
            })
            .await?;
        let mut all = merge_chunked_and_buffered(chunked, buffered);
        all.truncate(limit);
        Ok(all)
    }

    async fn read_raw_before(
        &self,
        series: SeriesId,
        before: TsMs,
        limit: usize,
    ) -> Result<Vec<Point>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut newest_first =
            self.buffer
                .lock()
                .expect("buffer poisoned")
                .range(series, TsMs(i64::MIN), before);
        newest_first.reverse();
        newest_first.truncate(limit);
        if newest_first.len() == limit {
            return Ok(newest_first);
        }
        // Chunked points at or after the oldest buffered one are the same points again.
        let before = newest_first.last().map_or(before, |p| p.ts);
        let limit = limit - newest_first.len();
        let chunked = self
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT data FROM chunks WHERE series_id = ?1 AND start_ts < ?2 \
                 ORDER BY start_ts DESC",
                )?;
                let mut rows = stmt.query(params![series.0, before.0])?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let pts = decode_points(r.get_ref(0)?.as_blob()?)
                        .map_err(|e| corrupt(series.0, e))?;
                    for p in pts.into_iter().rev() {
                        if p.ts < before {
                            out.push(p);
                            if out.len() >= limit {
                                return Ok(out);
                            }
                        }
                    }
                }
                Ok(out)
            })
            .await?;
        newest_first.extend(chunked);
        Ok(newest_first)
    }

    async fn latest(&self) -> Result<Vec<(SeriesId, Point)>> {
        let mut out = self
            .read(|c| {
                let mut stmt = c.prepare(
                    "SELECT s.id, (SELECT data FROM chunks WHERE series_id = s.id \
                 ORDER BY start_ts DESC LIMIT 1) FROM series s",
                )?;
                let mut rows = stmt.query([])?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let id: i64 = r.get(0)?;
                    let Some(blob) = r.get_ref(1)?.as_blob_or_null()? else {
                        continue;
                    };
                    let pts = decode_points(blob).map_err(|e| corrupt(id, e))?;
                    if let Some(p) = pts.last() {
                        out.push((SeriesId(id), *p));
                    }
                }
                Ok(out)
            })
            .await?;
        let mut buffered = self.buffer.lock().expect("buffer poisoned").lasts();
        for (series, p) in out.iter_mut() {
            if let Some(b) = buffered.remove(series) {
                *p = b;
            }
        }
        out.extend(buffered);
        Ok(out)
    }

    async fn write_rollups(&self, write: &RollupWrite) -> Result<()> {
        let write = write.clone();
        self.write(move |w| {
            let tx = w.conn.transaction()?;
            for tier in BucketTier::ROLLUPS {
                let merge: Vec<&RollupRow> = write
                    .merge
                    .iter()
                    .filter(|(t, _)| *t == tier)
                    .map(|(_, r)| r)
                    .collect();
                write_rollup_rows(&tx, tier, &merge, true)?;
                let replace: Vec<&RollupRow> = write
                    .replace
                    .iter()
                    .filter(|(t, _)| *t == tier)
                    .map(|(_, r)| r)
                    .collect();
                write_rollup_rows(&tx, tier, &replace, false)?;
            }
            {
                let mut stmt = tx.prepare_cached(
                    "UPDATE series SET rollup_watermark = max(coalesce(rollup_watermark, ?2), ?2) \
                     WHERE id = ?1",
                )?;
                for (s, ts) in &write.watermarks {
                    stmt.execute(params![s.0, ts.0])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn read_rollups(
        &self,
        tier: BucketTier,
        series: SeriesId,
        from: TsMs,
        to: TsMs,
    ) -> Result<Vec<RollupRow>> {
        if tier == BucketTier::Raw {
            return Err(StoreError::Invalid("raw is not a rollup tier".into()));
        }
        self.read(move |c| {
            let sql = format!(
                "SELECT {} FROM {} WHERE series_id = ?1 AND bucket >= ?2 AND bucket < ?3 \
                 ORDER BY bucket",
                rollup_columns().join(", "),
                rollup_table(tier)
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![series.0, from.0, to.0], rollup_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn maintain(&self, now: TsMs) -> Result<MaintenanceReport> {
        let due: Vec<(i64, i64)> = self
            .write(move |w| {
                chunkify(w)?;
                Ok(w.fragmented
                    .iter()
                    .filter(|((_, hour), f)| {
                        let closed = hour + CHUNK_SPAN_MS + CLOSED_HOUR_GRACE_MS <= now.0
                            && f.last_write.0 + CLOSED_HOUR_GRACE_MS <= now.0;
                        f.chunks > 1 && (closed || f.chunks >= COMPACT_OPEN_HOUR_AT)
                    })
                    .map(|(k, _)| *k)
                    .collect())
            })
            .await?;
        let mut report = MaintenanceReport::default();
        // Small transactions, each its own writer job, so that appends queued meanwhile wait
        // for one batch of hours at most, never for the whole compaction.
        for batch in due.chunks(64) {
            let batch = batch.to_vec();
            report.chunks_compacted += self
                .write(move |w| {
                    let mut compacted = 0u64;
                    w.conn.execute_batch("BEGIN IMMEDIATE")?;
                    let result = (|| {
                        for &(series, hour) in &batch {
                            let (ids, points) = load_hour(&w.conn, series, hour)?;
                            if ids.len() > 1 {
                                rewrite_hour(w, series, &ids, &points)?;
                                compacted += ids.len() as u64;
                            }
                        }
                        Ok::<_, StoreError>(())
                    })();
                    if let Err(e) = result {
                        let _ = w.conn.execute_batch("ROLLBACK");
                        return Err(e);
                    }
                    w.conn.execute_batch("COMMIT")?;
                    for key in &batch {
                        let closed = key.1 + CHUNK_SPAN_MS + CLOSED_HOUR_GRACE_MS <= now.0;
                        if closed {
                            w.fragmented.remove(key);
                        } else if let Some(f) = w.fragmented.get_mut(key) {
                            f.chunks = 1;
                        }
                    }
                    Ok(compacted)
                })
                .await?;
        }
        let compacted = report.chunks_compacted;
        self.write(move |w| {
            w.fragmented
                .retain(|_, f| f.chunks > 1 || f.last_write.0 + TsMs::DAY > now.0);
            if compacted > 0 {
                w.conn.execute_batch("PRAGMA incremental_vacuum;")?;
            }
            Ok(())
        })
        .await?;
        Ok(report)
    }

    async fn apply_retention(&self, policy: &Retention, now: TsMs) -> Result<u64> {
        let policy = policy.clone();
        self.write(move |w| {
            // Buffered points are subject to retention too.
            chunkify(w)?;
            let cutoff = |days: u32| now.0 - i64::from(days) * TsMs::DAY;
            let tx = w.conn.transaction()?;
            let mut removed = 0u64;
            if let Some(days) = policy.raw_days {
                removed +=
                    tx.execute("DELETE FROM chunks WHERE end_ts < ?1", [cutoff(days)])? as u64;
            }
            for tier in BucketTier::ROLLUPS {
                if let Some(days) = policy.keep_days(tier) {
                    removed += tx.execute(
                        &format!("DELETE FROM {} WHERE bucket < ?1", rollup_table(tier)),
                        [cutoff(days)],
                    )? as u64;
                }
            }
            tx.commit()?;
            if removed > 0 {
                w.conn.execute_batch("PRAGMA incremental_vacuum;")?;
            }
            Ok(removed)
        })
        .await
    }

    async fn checkpoint(&self) -> Result<()> {
        // Compact every fragmented hour, the open one too: appends after a restart simply
        // start new chunks.
        self.maintain(TsMs(i64::MAX / 2)).await?;
        self.write(|w| {
            chunkify(w)?;
            w.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
            Ok(())
        })
        .await
    }

    async fn disk_bytes(&self) -> Result<u64> {
        let base = self.path.clone();
        let mut total = file_size(&base);
        for suffix in ["-wal", "-shm"] {
            let mut p = base.clone().into_os_string();
            p.push(suffix);
            total += file_size(Path::new(&p));
        }
        Ok(total)
    }
}

/// A store in a fresh temporary directory, for the shared backend suite.
#[cfg(test)]
pub(crate) async fn test_store() -> Option<Arc<dyn Store>> {
    let dir = tempfile::tempdir().expect("temp dir").keep();
    Some(Arc::new(
        SqliteStore::open(dir.join("wattline.db")).expect("open sqlite store"),
    ))
}

/// A store in a fresh temporary directory, and the way to open its file again.
#[cfg(test)]
pub(crate) async fn reopenable_test_store() -> Option<crate::testsuite::Reopenable> {
    let path = tempfile::tempdir()
        .expect("temp dir")
        .keep()
        .join("wattline.db");
    let store = SqliteStore::open(&path).expect("open sqlite store");
    let reopen: crate::testsuite::Reopen = Box::new(move || {
        Box::pin(async move {
            Arc::new(SqliteStore::open(path).expect("reopen sqlite store")) as Arc<dyn Store>
        })
    });
    Some((Arc::new(store), reopen))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattline_domain::Values;

    fn p(ts: i64, power: f64) -> Point {
        Point {
            ts: TsMs(ts),
            values: Values::new().with(Quantity::Power, power),
        }
    }

    #[test]
    fn merge_points_overlays_duplicates_and_sorts() {
        let merged = merge_points(vec![p(2, 1.0), p(5, 2.0)], vec![p(3, 9.0), p(5, 7.0)]);
        let ts: Vec<i64> = merged.iter().map(|p| p.ts.0).collect();
        assert_eq!(ts, vec![2, 3, 5]);
        assert_eq!(merged[2].values.get(Quantity::Power), Some(7.0));
    }

    fn count(store: &SqliteStore, table: &str) -> i64 {
        let c = open_connection(store.path()).unwrap();
        c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// A database from before the accounts (schema 4) opens, gets the new tables, and its
    /// sites can be assigned to users.
    #[tokio::test]
    async fn schema_4_database_upgrades_to_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        {
            let mut c = open_connection(&path).unwrap();
            migrate_to(&mut c, 4).unwrap();
            c.execute(
                "INSERT INTO sites (id, name, timezone, created_at) VALUES ('old', 'Old', 'UTC', 0)",
                [],
            )
            .unwrap();
            let has_users: bool = c
                .query_row(
                    "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'users'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(!has_users);
        }
        let store = SqliteStore::open(&path).unwrap();
        let c = open_connection(&path).unwrap();
        let version: u32 = c
            .query_row("SELECT max(version) FROM schema_migrations", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
        for table in ["users", "user_sites", "sessions", "api_tokens", "audit_log"] {
            assert_eq!(count(&store, table), 0, "{table}");
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

    #[tokio::test]
    async fn older_points_during_chunk_encoding_stay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("w.db")).unwrap();
        let s = SeriesId(1);
        let base = 1_767_632_400_000;
        let even: Vec<Point> = (0..10).map(|i| p(base + i * 2000, i as f64)).collect();
        store
            .append(&[SeriesPoints {
                series: s,
                points: even,
            }])
            .await
            .unwrap();
        // Another writer's older readings (odd seconds, one duplicate) arrive while that
        // generation is frozen for encoding: staged in the same writer job, so the encoder's
        // completion cannot land first.
        let mut odd: Vec<Point> = (0..10).map(|i| p(base + i * 2000 + 1000, 100.0)).collect();
        odd.push(p(base + 4000, -1.0));
        odd.sort_by_key(|p| p.ts);
        let jobs = store.jobs.clone();
        store
            .write(move |w| {
                start_chunkify(w, jobs);
                assert!(w.encoding.is_some());
                stage(
                    w,
                    vec![SeriesPoints {
                        series: s,
                        points: odd,
                    }],
                )
            })
            .await
            .unwrap();
        for _ in 0..2 {
            let all = store
                .read_raw(s, TsMs(base), TsMs(base + 60_000), 100)
                .await
                .unwrap();
            let ts: Vec<i64> = all.iter().map(|p| (p.ts.0 - base) / 1000).collect();
            assert_eq!(ts, (0..20).collect::<Vec<_>>(), "ordered, each second once");
            assert_eq!(
                all[4].values.get(Quantity::Power),
                Some(-1.0),
                "the duplicate overlaid"
            );
            store.checkpoint().await.unwrap();
        }
    }

    #[tokio::test]
    async fn appends_split_at_hours_and_compaction_merges_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("w.db")).unwrap();
        let site = Site {
            id: SiteId::parse("s").unwrap(),
            name: "s".into(),
            timezone: "UTC".into(),
            created_at: TsMs(0),
        };
        store.create_site(&site).await.unwrap();
        let dev = Device {
            id: DeviceId::parse("d").unwrap(),
            name: "d".into(),
            site: site.id.clone(),
            kind: "meter".into(),
            labels: Default::default(),
            created_at: TsMs(0),
        };
        store.create_device(&dev, "h").await.unwrap();
        let s = store.series_id(&dev.id, "main").await.unwrap();
        let base = 1_767_632_400_000; // an hour boundary
        for batch in 0..10 {
            let pts: Vec<Point> = (0..720)
                .map(|i| p(base + (batch * 720 + i) * 1000, i as f64))
                .collect();
            store
                .append(&[SeriesPoints {
                    series: s,
                    points: pts,
                }])
                .await
                .unwrap();
            if batch == 0 {
                assert_eq!(count(&store, "chunks"), 0, "appends go to staging first");
                assert_eq!(count(&store, "staging"), 1);
            }
            // Cut the buffer into chunks after every batch: five chunks per hour.
            store.write(chunkify).await.unwrap();
        }
        assert_eq!(count(&store, "staging"), 0);
        // 7200 s from an hour boundary: batches 0-4 in hour 1, 5-9 in hour 2.
        assert_eq!(count(&store, "chunks"), 10);
        // Maintenance runs after the writes (stamped with the real clock) have gone quiet.
        let later = TsMs(TsMs::now().0 + TsMs::HOUR);
        let report = store.maintain(later).await.unwrap();
        assert_eq!(report.chunks_compacted, 10);
        assert_eq!(count(&store, "chunks"), 2);
        let all = store
            .read_raw(s, TsMs(base), TsMs(base + 2 * TsMs::HOUR), usize::MAX)
            .await
            .unwrap();
        assert_eq!(all.len(), 7200);
        assert!(all.windows(2).all(|w| w[0].ts < w[1].ts));
    }
}
