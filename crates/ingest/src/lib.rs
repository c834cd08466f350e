//! Wattline's write path.
//!
//! Transports (HTTP today, MQTT and TCP later) hand validated [`Reading`]s to
//! [`Engine::write`], which returns once they are durable. One writer task group-commits
//! whatever has queued up since its last commit, so a busy server makes fewer, larger
//! transactions and a quiet one answers at once. A semaphore counted in readings bounds what
//! may wait in memory: when storage falls behind, writers wait (backpressure) instead of the
//! queue growing without limit.
//!
//! Readings newer than their series' last one take the fast path: appended, then folded into
//! pending rollups. Older ones (late, out of order, duplicates) are merged into stored data and
//! the rollups they touch are recomputed from raw readings, so totals stay exact.

pub mod live;
pub mod metrics;
pub mod registry;
pub mod rejections;
pub mod rollup;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, OwnedSemaphorePermit, RwLock, Semaphore};
use tokio::task::JoinHandle;
use wattline_domain::energy::{EnergyConfig, EnergyState};
use wattline_domain::{Agg, BucketTier, Point, Reading, SeriesId, TsMs};
use wattline_storage::{DynStore, Retention, RollupRow, RollupWrite, SeriesPoints, StoreError};

pub use metrics::Metrics;
pub use registry::{Registry, RegistryView};
use rollup::{Pending, SeriesPending};

/// Maps keyed by series ids (integers the store hands out, not anything a request chooses),
/// looked up for every series of every batch: a fast hash is safe and cheaper than SipHash.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub energy: EnergyConfig,
    /// Readings that may wait for storage at once before writers are made to wait.
    pub max_queued_readings: usize,
    /// Most readings one group commit takes.
    pub max_commit_readings: usize,
    /// How long a writer waits for queue space before it is told the server is overloaded.
    pub queue_timeout: Duration,
    pub rollup_flush_interval: Duration,
    /// How far out of order readings may arrive (behind the newest of their series) and
    /// still be folded into rollups without a repair.
    pub reorder_window: Duration,
    pub maintenance_interval: Duration,
    pub retention: Retention,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            energy: EnergyConfig::default(),
            max_queued_readings: 500_000,
            max_commit_readings: 100_000,
            queue_timeout: Duration::from_secs(30),
            rollup_flush_interval: Duration::from_secs(2),
            reorder_window: Duration::from_secs(30),
            maintenance_interval: Duration::from_secs(60),
            retention: Retention::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("storage is behind: no room in the write queue after {0:?}; retry later")]
    Overloaded(Duration),
    #[error("device {0} is not registered")]
    UnknownDevice(String),
    #[error("storage failed: {0}")]
    Storage(#[from] StoreError),
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl EngineError {
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::Overloaded(_) => "overloaded",
            EngineError::UnknownDevice(_) => "unknown_device",
            EngineError::Storage(_) => "storage_error",
            EngineError::ShuttingDown => "shutting_down",
        }
    }
}

struct WriteRequest {
    readings: Vec<Reading>,
    arrived: Instant,
    done: oneshot::Sender<Result<usize, EngineError>>,
    _permit: OwnedSemaphorePermit,
}

/// The live state of one series between batches.
#[derive(Debug, Default, Clone)]
struct SeriesLive {
    /// Energy accounting as of the newest folded reading.
    energy: EnergyState,
    /// Stored readings newer than `folded_upto`, ascending, not yet in the rollups: they wait
    /// out the reorder window so that a reading arriving a little out of order slots in
    /// without repairing rollups. A queue: batches join at the back and fold from the front.
    unfolded: VecDeque<Point>,
    /// Every stored reading up to here is in the rollups (pending or stored).
    folded_upto: Option<TsMs>,
    /// Newest timestamp seen; readings older than it by the reorder window are folded.
    max_ts: Option<TsMs>,
}

/// A series holding more unfolded readings than this folds the oldest regardless (a meter
/// whose clock jumped ahead must not make the window hold everything).
const MAX_UNFOLDED: usize = 10_000;

impl SeriesLive {
    /// Adds readings newer than `folded_upto` to the unfolded ones, in order; a reading with
    /// the timestamp of an unfolded one is laid over it.
    fn take(&mut self, points: &[Point]) {
        for p in points {
            self.max_ts = self.max_ts.max(Some(p.ts));
        }
        match (self.unfolded.back(), points.first()) {
            (Some(last), Some(first)) if first.ts <= last.ts => {
                let mut all = Vec::from(std::mem::take(&mut self.unfolded));
                all.extend_from_slice(points);
                all.sort_by_key(|p| p.ts);
                self.unfolded = dedup_overlay(all).into();
            }
            _ => self.unfolded.extend(points),
        }
    }

    /// How many unfolded readings are old enough to fold; `all` folds everything.
    fn due(&self, window_ms: i64, all: bool) -> usize {
        if all {
            return self.unfolded.len();
        }
        let horizon = self
            .max_ts
            .map_or(i64::MIN, |t| t.0.saturating_sub(window_ms));
        // Counted from the front, where the due readings are: a batch makes a few of them due,
        // and folding reads them next, where a binary search would touch the cold middle of
        // every series' window.
        let due = self
            .unfolded
            .iter()
            .take_while(|p| p.ts.0 <= horizon)
            .count();
        due.max(self.unfolded.len().saturating_sub(MAX_UNFOLDED))
    }

    /// Folds the oldest `n` unfolded readings into `pending`; returns counter events seen.
    fn fold(&mut self, n: usize, pending: &mut SeriesPending, cfg: &EnergyConfig) -> u64 {
        let mut events = 0;
        for p in self.unfolded.drain(..n) {
            let d = self.energy.observe(p.ts, &p.values, cfg);
            events += u64::from(d.counter_event.is_some());
            pending.add(&p, &d);
            self.folded_upto = Some(p.ts);
        }
        events
    }
}

struct Shared {
    store: DynStore,
    config: EngineConfig,
    registry: Registry,
    metrics: Metrics,
    /// Newest stored point of each series, for "latest reading of every device".
    latest: std::sync::RwLock<FastMap<SeriesId, Point>>,
    pending: Mutex<Pending>,
    /// Per-series energy state and unfolded readings. Lock order: `live`, then `pending`.
    live: Mutex<FastMap<SeriesId, SeriesLive>>,
    /// Held for reading while a query combines stored and pending rollups, for writing while a
    /// flush moves pending rollups into storage: a query sees each reading exactly once.
    flush_gate: RwLock<()>,
    queue_space: Arc<Semaphore>,
    rejections: rejections::Rejections,
    /// Committed batches for live dashboards; `None` once [`Engine::close_live`] ended them.
    live_tx: Mutex<Option<broadcast::Sender<LiveBatch>>>,
}

/// The readings of one group commit, shared by every live subscriber.
pub type LiveBatch = Arc<live::LiveCommit>;

/// Commits a live subscriber may fall behind by before it skips ahead. A commit holds up to
/// `max_commit_readings`, so this bounds memory by commits, not readings; a slow dashboard
/// loses batches (it is told how many) instead of holding the writer back.
const LIVE_CAPACITY: usize = 256;

/// Handle to the write path; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    requests: mpsc::UnboundedSender<WriteRequest>,
}

/// The engine's background tasks; [`EngineTasks::shutdown`] drains and flushes them.
pub struct EngineTasks {
    writer: JoinHandle<()>,
    background: JoinHandle<()>,
    stop_background: oneshot::Sender<()>,
    shared: Arc<Shared>,
}

impl Engine {
    /// Loads sites, devices and series, repairs rollups after an unclean stop, and starts the
    /// writer and the background upkeep.
    pub async fn start(
        store: DynStore,
        config: EngineConfig,
    ) -> Result<(Engine, EngineTasks), EngineError> {
        let shared = Arc::new(Shared {
            store: store.clone(),
            queue_space: Arc::new(Semaphore::new(config.max_queued_readings)),
            config,
            registry: Registry::default(),
            metrics: Metrics::default(),
            latest: Default::default(),
            pending: Default::default(),
            live: Default::default(),
            flush_gate: RwLock::new(()),
            live_tx: Mutex::new(Some(broadcast::channel(LIVE_CAPACITY).0)),
            rejections: Default::default(),
        });
        for site in store.list_sites().await? {
            shared.registry.put_site(&site);
        }
        for device in store.list_devices().await? {
            shared.registry.put_device(&device);
        }
        let series = store.list_series().await?;
        for s in &series {
            shared.registry.put_series(s.id, &s.device, &s.channel);
        }
        *shared.latest.write().expect("latest poisoned") =
            store.latest().await?.into_iter().collect();
        let mut replayed = 0usize;
        for s in &series {
            let (state, n) = replay_series(&shared, s.id, s.rollup_watermark).await?;
            let last = shared
                .latest
                .read()
                .expect("latest poisoned")
                .get(&s.id)
                .map(|p| p.ts);
            let live = SeriesLive {
                energy: state,
                folded_upto: last,
                max_ts: last,
                ..Default::default()
            };
            shared
                .live
                .lock()
                .expect("live poisoned")
                .insert(s.id, live);
            replayed += n;
        }
        if replayed > 0 {
            tracing::info!(
                readings = replayed,
                "re-aggregated readings stored after the last rollup flush"
            );
        }
        flush_rollups(&shared).await?;

        let (requests, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(writer_loop(shared.clone(), rx));
        let (stop_background, stop_rx) = oneshot::channel();
        let background = tokio::spawn(background_loop(shared.clone(), stop_rx));
        Ok((
            Engine {
                shared: shared.clone(),
                requests,
            },
            EngineTasks {
                writer,
                background,
                stop_background,
                shared,
            },
        ))
    }

    pub fn store(&self) -> &DynStore {
        &self.shared.store
    }

    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The most recent rejected readings, whichever transport refused them.
    pub fn rejections(&self) -> &rejections::Rejections {
        &self.shared.rejections
    }

    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Stores the readings and returns how many, once they are durable. Devices must exist.
    pub async fn write(&self, readings: Vec<Reading>) -> Result<usize, EngineError> {
        if readings.is_empty() {
            return Ok(0);
        }
        // Unknown devices are refused when their series is resolved, in the writer.
        let arrived = Instant::now();
        let want = readings.len().min(self.shared.config.max_queued_readings) as u32;
        let permit = tokio::time::timeout(
            self.shared.config.queue_timeout,
            self.shared.queue_space.clone().acquire_many_owned(want),
        )
        .await
        .map_err(|_| EngineError::Overloaded(self.shared.config.queue_timeout))?
        .map_err(|_| EngineError::ShuttingDown)?;
        self.shared
            .metrics
            .queue_depth
            .fetch_add(readings.len() as u64, Relaxed);
        let (done, rx) = oneshot::channel();
        self.requests
            .send(WriteRequest {
                readings,
                arrived,
                done,
                _permit: permit,
            })
            .map_err(|_| EngineError::ShuttingDown)?;
        rx.await.map_err(|_| EngineError::ShuttingDown)?
    }

    /// Every committed batch from now on, once it is durable. `None` after [`Engine::close_live`].
    /// A receiver that falls more than a few hundred commits behind gets `Lagged` and skips.
    pub fn subscribe_live(&self) -> Option<broadcast::Receiver<LiveBatch>> {
        self.shared
            .live_tx
            .lock()
            .expect("live_tx poisoned")
            .as_ref()
            .map(broadcast::Sender::subscribe)
    }

    /// Ends every live subscription (their receivers see `Closed`), so that long-lived
    /// streams do not hold a graceful shutdown open.
    pub fn close_live(&self) {
        self.shared.live_tx.lock().expect("live_tx poisoned").take();
    }

    /// Makes pending rollups durable now.
    pub async fn flush(&self) -> Result<(), EngineError> {
        flush_rollups(&self.shared).await
    }

    /// Rollup rows of a series, stored and pending combined.
    pub async fn rollups(
        &self,
        tier: BucketTier,
        series: SeriesId,
        from: TsMs,
        to: TsMs,
    ) -> Result<Vec<RollupRow>, EngineError> {
        let _gate = self.shared.flush_gate.read().await;
        let mut rows = self
            .shared
            .store
            .read_rollups(tier, series, from, to)
            .await?;
        // Pending rollups and unfolded readings, taken together under the writer's lock order.
        let (pending, unfolded) = {
            let live = self.shared.live.lock().expect("live poisoned");
            let pending = self.shared.pending.lock().expect("pending poisoned");
            (
                pending.series.get(&series).cloned(),
                live.get(&series)
                    .filter(|l| !l.unfolded.is_empty())
                    .cloned(),
            )
        };
        let mut overlay = pending.unwrap_or_default();
        if let Some(mut l) = unfolded {
            let n = l.unfolded.len();
            l.fold(n, &mut overlay, &self.shared.config.energy);
        }
        if !overlay.minutes.is_empty() {
            let tz = self.shared.registry.series_zone(series);
            overlay.overlay(tier, series, from, to, &tz, &mut rows);
        }
        Ok(rows)
    }

    pub fn latest_of(&self, series: SeriesId) -> Option<Point> {
        self.shared
            .latest
            .read()
            .expect("latest poisoned")
            .get(&series)
            .copied()
    }

    /// Forgets a deleted device's series everywhere in memory.
    pub fn forget_device(&self, device: &wattline_domain::DeviceId) {
        let series: Vec<SeriesId> = self
            .shared
            .registry
            .device_series(device)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        {
            let mut latest = self.shared.latest.write().expect("latest poisoned");
            let mut pending = self.shared.pending.lock().expect("pending poisoned");
            for s in &series {
                latest.remove(s);
                pending.series.remove(s);
            }
        }
        self.shared.registry.remove_device(device);
    }
}

impl EngineTasks {
    /// Stops taking writes once every handle is dropped, finishes queued ones, flushes rollups.
    pub async fn shutdown(self) {
        let _ = self.stop_background.send(());
        let _ = self.background.await;
        // The writer ends when every Engine handle (and so every request sender) is gone.
        let _ = self.writer.await;
        fold_all(&self.shared);
        if let Err(e) = flush_rollups(&self.shared).await {
            tracing::error!(error = %e, "final rollup flush failed; it is redone from raw on next start");
        }
        // Leave the files self-contained and compact (what that means is the backend's call).
        let store = &self.shared.store;
        if let Err(e) = store.checkpoint().await {
            tracing::error!(error = %e, "final checkpoint failed");
        }
    }
}

/// Rebuilds a series' energy state and re-aggregates what was stored after its watermark.
async fn replay_series(
    shared: &Shared,
    series: SeriesId,
    watermark: Option<TsMs>,
) -> Result<(EnergyState, usize), EngineError> {
    let after = watermark.map_or(TsMs(i64::MIN), |w| TsMs(w.0.saturating_add(1)));
    let mut state = state_before(shared, series, after).await?;
    let points = shared
        .store
        .read_raw(series, after, TsMs(i64::MAX), usize::MAX)
        .await?;
    if points.is_empty() {
        return Ok((state, 0));
    }
    let mut sp = SeriesPending::default();
    for p in &points {
        let d = state.observe(p.ts, &p.values, &shared.config.energy);
        sp.add(p, &d);
    }
    shared
        .pending
        .lock()
        .expect("pending poisoned")
        .series
        .entry(series)
        .or_default()
        .merge(sp);
    Ok((state, points.len()))
}

/// The energy state as it was just before `ts`, from the stored readings before it.
async fn state_before(
    shared: &Shared,
    series: SeriesId,
    ts: TsMs,
) -> Result<EnergyState, EngineError> {
    const LOOKBACK: usize = 20_000;
    let mut state = EnergyState::default();
    for p in shared.store.read_raw_before(series, ts, LOOKBACK).await? {
        state.absorb_older(p.ts, &p.values);
        if state.is_complete() {
            break;
        }
    }
    Ok(state)
}

async fn flush_rollups(shared: &Shared) -> Result<(), EngineError> {
    let _gate = shared.flush_gate.write().await;
    let taken = std::mem::take(&mut *shared.pending.lock().expect("pending poisoned"));
    if taken.is_empty() {
        return Ok(());
    }
    let write = taken.to_write(|series| shared.registry.series_zone(series));
    match shared.store.write_rollups(&write).await {
        Ok(()) => {
            shared.metrics.rollup_flushes.fetch_add(1, Relaxed);
            Ok(())
        }
        Err(e) => {
            // Put them back so the next flush tries again; nothing is lost meanwhile.
            shared
                .pending
                .lock()
                .expect("pending poisoned")
                .merge(taken);
            shared.metrics.storage_errors.fetch_add(1, Relaxed);
            Err(e.into())
        }
    }
}

async fn background_loop(shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut flush_tick = tokio::time::interval(shared.config.rollup_flush_interval);
    let mut maintain_tick = tokio::time::interval(shared.config.maintenance_interval);
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    maintain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = flush_tick.tick() => {
                if let Err(e) = flush_rollups(&shared).await {
                    tracing::error!(error = %e, "rollup flush failed; will retry");
                }
            }
            _ = maintain_tick.tick() => {
                let now = TsMs::now();
                match shared.store.maintain(now).await {
                    Ok(r) if r.chunks_compacted > 0 || r.partitions_created > 0 => {
                        tracing::debug!(chunks = r.chunks_compacted, partitions = r.partitions_created, "storage maintenance");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "storage maintenance failed"),
                }
                match shared.store.apply_retention(&shared.config.retention, now).await {
                    Ok(n) if n > 0 => tracing::info!(removed = n, "retention removed old data"),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "retention failed"),
                }
            }
        }
    }
}

async fn writer_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<WriteRequest>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        let mut n = group[0].readings.len();
        while n < shared.config.max_commit_readings {
            match rx.try_recv() {
                Ok(r) => {
                    n += r.readings.len();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        // A panic in one group fails that group's writers (their replies are dropped), not
        // every write after it.
        let commit = std::panic::AssertUnwindSafe(commit_group(&shared, group));
        if futures::FutureExt::catch_unwind(commit).await.is_err() {
            tracing::error!("a group commit panicked; its writers were told it failed");
        }
    }
}

/// One group commit: resolve series, store, update live state, answer every request.
async fn commit_group(shared: &Shared, group: Vec<WriteRequest>) {
    let total: usize = group.iter().map(|r| r.readings.len()).sum();
    let mut accepted = Vec::with_capacity(group.len());
    let mut series = Vec::with_capacity(group.len());
    for req in group {
        match resolve_series(shared, &req.readings).await {
            Ok(ids) => {
                accepted.push(req);
                series.push(ids);
            }
            Err(e) => {
                let _ = req.done.send(Err(e));
            }
        }
    }
    let by_series = group_by_series(&accepted, &series);
    drop(series);

    let result = store_points(shared, by_series).await;
    let touched = result.as_ref().map(Vec::clone).unwrap_or_default();
    shared.metrics.queue_depth.fetch_sub(total as u64, Relaxed);
    shared.metrics.write_batches.fetch_add(1, Relaxed);
    // The batch is built only when a dashboard listens, from readings that are moved, not
    // copied, once their writer has its answer.
    let live_tx = match &result {
        Ok(_) => shared
            .live_tx
            .lock()
            .expect("live_tx poisoned")
            .as_ref()
            .filter(|tx| tx.receiver_count() > 0)
            .cloned(),
        Err(_) => None,
    };
    let mut live = Vec::new();
    for mut req in accepted {
        let n = req.readings.len();
        let reply = match &result {
            Ok(_) => {
                shared
                    .metrics
                    .readings_accepted
                    .fetch_add(n as u64, Relaxed);
                shared
                    .metrics
                    .observe_write_latency(req.arrived.elapsed().as_secs_f64());
                Ok(n)
            }
            Err(e) => {
                shared.metrics.storage_errors.fetch_add(1, Relaxed);
                Err(EngineError::Storage(StoreError::Invalid(e.to_string())))
            }
        };
        let _ = req.done.send(reply);
        if live_tx.is_some() {
            live.append(&mut req.readings);
        }
    }
    if let Some(tx) = live_tx {
        if !live.is_empty() {
            // Fails only when every receiver has gone since the check: nobody to tell.
            let _ = tx.send(Arc::new(live::LiveCommit::new(live)));
        }
    }
    if let Err(e) = result {
        tracing::error!(error = %e, readings = total, "group commit failed");
    }
    // After the answers: folding overlaps the clients' next requests. Until then queries see
    // the readings as unfolded ones.
    fold_due(shared, &touched);
}

/// The series of every reading, in order: known ones under one registry lock, new ones from
/// storage. Fails at the first reading whose device is unknown.
async fn resolve_series(
    shared: &Shared,
    readings: &[Reading],
) -> Result<Vec<SeriesId>, EngineError> {
    let mut missing = Vec::new();
    let mut ids: Vec<SeriesId> = {
        let registry = shared.registry.view();
        readings
            .iter()
            .enumerate()
            .map(|(i, r)| {
                registry.series(&r.device, &r.channel).unwrap_or_else(|| {
                    missing.push(i);
                    SeriesId(0)
                })
            })
            .collect()
    };
    for i in missing {
        ids[i] = series_for(shared, &readings[i]).await?;
    }
    Ok(ids)
}

/// The accepted readings' points per series, in order of first appearance. Each series'
/// points are counted first, so every vector is allocated once at its final size.
fn group_by_series(requests: &[WriteRequest], series: &[Vec<SeriesId>]) -> Vec<SeriesPoints> {
    let n: usize = series.iter().map(Vec::len).sum();
    let mut slot_of: FastMap<SeriesId, usize> = FastMap::default();
    let mut counts: Vec<(SeriesId, usize)> = Vec::new();
    let mut slots = Vec::with_capacity(n);
    for &s in series.iter().flatten() {
        let slot = *slot_of.entry(s).or_insert_with(|| {
            counts.push((s, 0));
            counts.len() - 1
        });
        counts[slot].1 += 1;
        slots.push(slot);
    }
    let mut out: Vec<SeriesPoints> = counts
        .into_iter()
        .map(|(series, n)| SeriesPoints {
            series,
            points: Vec::with_capacity(n),
        })
        .collect();
    let readings = requests.iter().flat_map(|r| r.readings.iter());
    for (r, slot) in readings.zip(slots) {
        out[slot].points.push(r.point());
    }
    out
}

async fn series_for(shared: &Shared, r: &Reading) -> Result<SeriesId, EngineError> {
    if let Some(s) = shared.registry.series(&r.device, &r.channel) {
        return Ok(s);
    }
    if !shared.registry.device_exists(&r.device) {
        return Err(EngineError::UnknownDevice(r.device.to_string()));
    }
    let s = shared
        .store
        .series_id(&r.device, r.channel.as_str())
        .await?;
    shared.registry.put_series(s, &r.device, r.channel.as_str());
    Ok(s)
}

/// Stores one group's points, then brings the rollups along: readings older than what is
/// already folded repair the rollups they touch; the others join the unfolded readings and
/// fold once they are older than the reorder window.
async fn store_points(
    shared: &Shared,
    mut writes: Vec<SeriesPoints>,
) -> Result<Vec<SeriesId>, EngineError> {
    let mut beyond: Vec<(SeriesId, Vec<TsMs>, TsMs)> = Vec::new();
    {
        let live = shared.live.lock().expect("live poisoned");
        for sp in &mut writes {
            sp.points.sort_by_key(|p| p.ts);
            sp.points = dedup_overlay(std::mem::take(&mut sp.points));
            if let Some(folded) = live.get(&sp.series).and_then(|l| l.folded_upto) {
                let split = sp.points.partition_point(|p| p.ts <= folded);
                if split > 0 {
                    beyond.push((
                        sp.series,
                        sp.points[..split].iter().map(|p| p.ts).collect(),
                        folded,
                    ));
                }
            }
        }
    }
    // Every reading is durable before anything is answered or folded.
    shared.store.append(&writes).await?;

    if !beyond.is_empty() {
        // Recomputing from raw must start from complete stored rollups.
        flush_rollups(shared).await?;
        for (series, ts, folded) in &beyond {
            recompute(shared, *series, ts, *folded).await?;
            shared
                .metrics
                .readings_late
                .fetch_add(ts.len() as u64, Relaxed);
        }
    }

    {
        let mut live = shared.live.lock().expect("live poisoned");
        for sp in &writes {
            let l = live.entry(sp.series).or_default();
            let split = sp.points.partition_point(|p| Some(p.ts) <= l.folded_upto);
            l.take(&sp.points[split..]);
        }
    }
    let touched: Vec<SeriesId> = writes.iter().map(|sp| sp.series).collect();
    let mut latest = shared.latest.write().expect("latest poisoned");
    for sp in writes {
        if let Some(last) = sp.points.last() {
            let newer = latest.get(&sp.series).is_none_or(|p| p.ts <= last.ts);
            if newer {
                latest.insert(sp.series, *last);
            }
        }
    }
    Ok(touched)
}

/// Folds the readings of these series that are older than the reorder window.
fn fold_due(shared: &Shared, series: &[SeriesId]) {
    if series.is_empty() {
        return;
    }
    let cfg = shared.config.energy;
    let window_ms = shared.config.reorder_window.as_millis() as i64;
    let mut events = 0;
    {
        let mut live = shared.live.lock().expect("live poisoned");
        let mut pending = shared.pending.lock().expect("pending poisoned");
        for s in series {
            let Some(l) = live.get_mut(s) else { continue };
            let due = l.due(window_ms, false);
            if due == 0 {
                continue;
            }
            events += l.fold(due, pending.series.entry(*s).or_default(), &cfg);
        }
    }
    shared.metrics.counter_events.fetch_add(events, Relaxed);
}

/// Folds every unfolded reading (at shutdown, so the final flush holds everything).
fn fold_all(shared: &Shared) {
    let cfg = shared.config.energy;
    let mut live = shared.live.lock().expect("live poisoned");
    let mut pending = shared.pending.lock().expect("pending poisoned");
    for (series, l) in live.iter_mut() {
        let n = l.due(0, true);
        if n > 0 {
            l.fold(n, pending.series.entry(*series).or_default(), &cfg);
        }
    }
}

/// Collapses readings with the same timestamp into one, later values laid over earlier ones.
fn dedup_overlay(mut points: Vec<Point>) -> Vec<Point> {
    points.dedup_by(|later, earlier| {
        let same = later.ts == earlier.ts;
        if same {
            earlier.values.overlay(&later.values);
        }
        same
    });
    points
}

/// Recomputes the rollups that late readings at `late` touched, from the stored raw readings:
/// their minutes, the minute of the reading after them (its energy was measured from a new
/// predecessor), and every hour and day containing those minutes.
async fn recompute(
    shared: &Shared,
    series: SeriesId,
    late: &[TsMs],
    folded_upto: TsMs,
) -> Result<(), EngineError> {
    let store = &shared.store;
    let (Some(min), Some(max)) = (late.iter().min(), late.iter().max()) else {
        return Ok(());
    };
    // Only folded readings belong in the rollups: unfolded ones (after `folded_upto`) join
    // them when they fold, measured from the newest folded reading.
    let cap = TsMs(folded_upto.0.saturating_add(1));
    let next = store.read_raw(series, TsMs(max.0 + 1), cap, 1).await?;
    let region_start = min.minute_start();
    let region_end = TsMs(next.first().map_or(*max, |p| p.ts).minute_start().0 + TsMs::MINUTE);

    let mut state = state_before(shared, series, region_start).await?;
    let points = store
        .read_raw(series, region_start, region_end.min(cap), usize::MAX)
        .await?;
    let mut minutes: std::collections::BTreeMap<TsMs, Agg> = Default::default();
    for p in &points {
        let d = state.observe(p.ts, &p.values, &shared.config.energy);
        minutes
            .entry(p.ts.minute_start())
            .or_default()
            .add(p.ts, &p.values, &d);
    }
    let minute_rows: Vec<(BucketTier, RollupRow)> = minutes
        .into_iter()
        .map(|(bucket, agg)| {
            (
                BucketTier::Minute,
                RollupRow {
                    series,
                    bucket,
                    agg,
                },
            )
        })
        .collect();
    let touched: BTreeSet<TsMs> = minute_rows.iter().map(|(_, r)| r.bucket).collect();
    store
        .write_rollups(&RollupWrite {
            replace: minute_rows,
            ..Default::default()
        })
        .await?;

    // Coarser tiers are rebuilt from the tier below, bucket by bucket.
    let tz = shared.registry.series_zone(series);
    let mut below = (BucketTier::Minute, touched);
    for tier in [BucketTier::Hour, BucketTier::Day] {
        let buckets: BTreeSet<(TsMs, TsMs)> =
            below.1.iter().map(|b| tier.bucket(*b, &tz)).collect();
        let mut rows = Vec::new();
        for (start, end) in &buckets {
            let parts = store.read_rollups(below.0, series, *start, *end).await?;
            let mut agg = Agg::default();
            for p in &parts {
                agg.merge(&p.agg);
            }
            rows.push((
                tier,
                RollupRow {
                    series,
                    bucket: *start,
                    agg,
                },
            ));
        }
        store
            .write_rollups(&RollupWrite {
                replace: rows,
                ..Default::default()
            })
            .await?;
        below = (tier, buckets.into_iter().map(|b| b.0).collect());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattline_domain::{Quantity, Values};

    fn pt(ts: i64, p: f64) -> Point {
        Point {
            ts: TsMs(ts),
            values: Values::new().with(Quantity::Power, p),
        }
    }

    #[test]
    fn dedup_overlay_keeps_one_point_per_instant() {
        let mut b = pt(2, 5.0);
        b.values.set(Quantity::Voltage, 230.0);
        let out = dedup_overlay(vec![pt(1, 1.0), pt(2, 2.0), b, pt(3, 3.0)]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].values.get(Quantity::Power), Some(5.0));
        assert_eq!(out[1].values.get(Quantity::Voltage), Some(230.0));
    }
}
