//! A run: devices split into groups, each group one generator task writing its log and one
//! forwarder task sending it; a stop signal (Ctrl-C, SIGTERM) ends generation, lets the
//! senders drain for `drain_timeout`, and leaves whatever is left in the logs for next time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinSet;

use crate::commlog::CommLog;
use crate::control::{self, Action, Command};
use crate::encode::Protocol;
use crate::forward::{Ended, Forwarder, Synced};
use crate::journal::{AckPointer, Journal};
use crate::meter::{Meter, Zone};
use crate::register::{Access, DevicePlan, Registrar};
use crate::sink::{
    AnySink, HttpConn, HttpSink, MqttDeviceSink, MqttGatewaySink, NullSink, TcpConfig, TcpSink,
};
use crate::stats::{Counters, Progress, Stats, Summary};
use crate::{Config, ProfileChoice, RunError};

/// Rows a generator writes per round before it syncs (and lets the sender go).
const ROUND_ROWS: u64 = 20_000;

/// The parameters a state dir was started with; a restart must agree on them, since they
/// decide which device is in which log and what it generates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunState {
    seed: u64,
    prefix: String,
    first_device: u32,
    devices: u32,
    protocols: Vec<Protocol>,
    profile: ProfileChoice,
    group_size: Option<usize>,
    /// Time of the first reading, unix ms.
    start_ms: i64,
    /// Real time: simulated time = wall clock - offset.
    offset_ms: i64,
}

fn wall_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Milliseconds between readings. Socket meters report whole seconds, so theirs are too.
pub fn interval_ms(rate_hz: f64, protocol: Protocol) -> i64 {
    let ms = (1000.0 / rate_hz).round().max(1.0) as i64;
    if protocol == Protocol::Tcp {
        ((ms + 500) / 1000).max(1) * 1000
    } else {
        ms
    }
}

fn default_group_size(p: Protocol) -> usize {
    if p.per_device_connection() {
        250
    } else {
        1000
    }
}

#[derive(Debug, Clone, Copy)]
enum Clock {
    Real { offset_ms: i64 },
    Fast,
}

struct GenDevice {
    meter: Meter,
    interval: i64,
    next: i64,
    remaining: Option<u64>,
    last: Option<i64>,
}

impl GenDevice {
    fn active(&self, end_ts: Option<i64>) -> bool {
        self.remaining != Some(0) && end_ts.is_none_or(|e| self.next < e)
    }
}

struct Generator {
    who: String,
    protocol: Protocol,
    devices: Vec<GenDevice>,
    journal: Journal,
    zone: Zone,
    counters: Arc<Counters>,
    synced: watch::Sender<Synced>,
    acked: Arc<Notify>,
    control: broadcast::Receiver<Command>,
    stop: watch::Receiver<bool>,
    clock: Clock,
    end_ts: Option<i64>,
    sync_every: Duration,
    max_buffered: u64,
    comm: CommLog,
}

impl Generator {
    fn buffered(&self) -> u64 {
        let s = self.counters.snapshot();
        s.buffered()
    }

    fn apply(&mut self, c: Command, heap: &mut BinaryHeap<Reverse<(i64, usize)>>) {
        for (i, d) in self.devices.iter_mut().enumerate() {
            if !c.applies_to(d.meter.index) {
                continue;
            }
            match c.action {
                Action::Scale(f) => d.meter.set_scale(f),
                Action::Rate(hz) => {
                    d.interval = interval_ms(hz, self.protocol);
                    if let Some(last) = d.last {
                        d.next = last + d.interval;
                    }
                    if d.active(self.end_ts) {
                        heap.push(Reverse((d.next, i)));
                    }
                }
            }
        }
    }

    async fn run(mut self) -> Result<(), RunError> {
        let result = self.generate().await;
        // Whatever happened, what is written is synced and the sender may drain it.
        let end = match self.journal.sync().await {
            Ok(end) => end,
            Err(e) => {
                self.comm
                    .log(&self.who, format_args!("log sync failed: {e}"));
                self.journal.synced()
            }
        };
        self.synced.send_replace(Synced { end, done: true });
        result
    }

    async fn generate(&mut self) -> Result<(), RunError> {
        let mut heap: BinaryHeap<Reverse<(i64, usize)>> = self
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.active(self.end_ts))
            .map(|(i, d)| Reverse((d.next, i)))
            .collect();
        let mut out = Vec::with_capacity(4);
        loop {
            if *self.stop.borrow() {
                return Ok(());
            }
            while let Ok(c) = self.control.try_recv() {
                self.apply(c, &mut heap);
            }
            let horizon = match self.clock {
                Clock::Real { offset_ms } => wall_ms() - offset_ms,
                Clock::Fast => i64::MAX,
            };
            let mut rows = 0u64;
            while let Some(&Reverse((ts, i))) = heap.peek() {
                if ts > horizon || rows >= ROUND_ROWS {
                    break;
                }
                heap.pop();
                let d = &mut self.devices[i];
                if ts != d.next || !d.active(self.end_ts) {
                    continue; // superseded by a rate change, or finished
                }
                out.clear();
                d.meter.read(ts, &self.zone, &mut out);
                for r in &out {
                    self.journal.append(r);
                }
                rows += out.len() as u64;
                d.last = Some(ts);
                if let Some(n) = d.remaining.as_mut() {
                    *n -= 1;
                }
                d.next = ts + d.interval;
                if d.active(self.end_ts) {
                    heap.push(Reverse((d.next, i)));
                }
            }
            if rows > 0 {
                let end = self.journal.sync().await?;
                Counters::add(&self.counters.generated, rows);
                self.synced.send_replace(Synced { end, done: false });
            }
            let Some(&Reverse((next_due, _))) = heap.peek() else {
                return Ok(());
            };
            match self.clock {
                Clock::Fast => {
                    // Run ahead of the server by a bounded number of rows only.
                    while self.buffered() > self.max_buffered && !*self.stop.borrow() {
                        tokio::select! {
                            _ = self.acked.notified() => {}
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                            _ = self.stop.changed() => {}
                        }
                    }
                    tokio::task::yield_now().await;
                }
                Clock::Real { offset_ms } => {
                    // Batch a round's readings (one fsync per `sync_every`), or sleep until
                    // the next one is due if that is later.
                    let until_due = (next_due + offset_ms - wall_ms()).max(0) as u64;
                    let wait = self
                        .sync_every
                        .max(Duration::from_millis(until_due.min(3_600_000)));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stop.changed() => {}
                        c = self.control.recv() => {
                            if let Ok(c) = c {
                                self.apply(c, &mut heap);
                            }
                        }
                    }
                }
            }
        }
    }
}

struct Group {
    id: usize,
    protocol: Protocol,
    devices: Vec<DevicePlan>,
}

fn make_groups(cfg: &Config, plan: &[DevicePlan]) -> Vec<Group> {
    let mut groups = Vec::new();
    for &p in &cfg.protocols {
        let devices: Vec<DevicePlan> = plan.iter().filter(|d| d.protocol == p).cloned().collect();
        let size = cfg
            .group_size
            .unwrap_or_else(|| default_group_size(p))
            .max(1);
        for chunk in devices.chunks(size) {
            groups.push(Group {
                id: groups.len(),
                protocol: p,
                devices: chunk.to_vec(),
            });
        }
    }
    groups
}

fn make_sink(
    cfg: &Config,
    access: &Access,
    g: &Group,
    comm: &CommLog,
    who: &str,
) -> Result<AnySink, RunError> {
    let token = || access.token.clone().unwrap_or_default();
    Ok(match g.protocol {
        Protocol::HttpJson | Protocol::HttpLp => AnySink::Http(HttpSink::new(
            HttpConn::new(&cfg.http, comm.clone(), who.to_owned())?,
            g.protocol,
            token(),
            cfg.prefix.clone(),
        )),
        Protocol::MqttGateway => AnySink::MqttGateway(MqttGatewaySink::new(
            &cfg.mqtt,
            token(),
            cfg.prefix.clone(),
            g.id,
            comm.clone(),
            who.to_owned(),
        )?),
        Protocol::MqttNative | Protocol::Tasmota | Protocol::Shelly | Protocol::Clemap => {
            AnySink::MqttDevices(MqttDeviceSink::new(
                g.protocol,
                &cfg.mqtt,
                access.mqtt.clone(),
                cfg.prefix.clone(),
                access.tz.clone(),
                comm.clone(),
                who.to_owned(),
            )?)
        }
        Protocol::Tcp => AnySink::Tcp(TcpSink::new(
            TcpConfig {
                addr: cfg.tcp.clone(),
                tz: access.tz.clone(),
                ids: access.tcp.clone(),
            },
            cfg.prefix.clone(),
            comm.clone(),
            who.to_owned(),
        )),
        Protocol::Null => AnySink::Null(NullSink),
    })
}

/// The run's parameters: from `run.json` when the state dir has one (which must agree), else
/// fresh (and written, when `create`: after registration, so that a real-time run starts
/// when its devices exist, not before).
fn run_state(cfg: &Config, create: bool) -> Result<Option<RunState>, RunError> {
    let path = cfg.state_dir.join("run.json");
    let slowest = cfg
        .protocols
        .iter()
        .map(|&p| interval_ms(cfg.rate_hz, p))
        .max()
        .unwrap_or(1000);
    let now = wall_ms();
    let start = match cfg.start {
        Some(s) => s,
        // Fast runs end by now: their readings may not lie in the future.
        None if cfg.fast => {
            let span = match (cfg.count, cfg.duration) {
                (Some(c), _) => c as i64 * slowest,
                (None, Some(d)) => d.as_millis() as i64,
                (None, None) => 0,
            };
            now - span - 1000
        }
        None => now,
    };
    let start = start.div_euclid(1000) * 1000;
    let fresh = RunState {
        seed: cfg.seed,
        prefix: cfg.prefix.clone(),
        first_device: cfg.first_device,
        devices: cfg.devices,
        protocols: cfg.protocols.clone(),
        profile: cfg.profile,
        group_size: cfg.group_size,
        start_ms: start,
        offset_ms: if cfg.fast { 0 } else { now - start },
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let old: RunState = serde_json::from_slice(&bytes)
                .map_err(|e| RunError::Config(format!("{}: {e}", path.display())))?;
            let same = RunState {
                start_ms: old.start_ms,
                offset_ms: old.offset_ms,
                ..fresh.clone()
            };
            if same != old {
                return Err(RunError::Config(format!(
                    "{} was started with other devices, seed, protocols, profile or group size \
                     ({}); resume with the same ones or use another --state-dir",
                    cfg.state_dir.display(),
                    String::from_utf8_lossy(&bytes).trim()
                )));
            }
            Ok(Some(old))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_json::to_string_pretty(&fresh).expect("run state JSON");
            std::fs::write(&path, text).map_err(|e| RunError::io(&path, e))?;
            Ok(Some(fresh))
        }
        Err(e) => Err(RunError::io(&path, e)),
    }
}

fn write_devices_csv(cfg: &Config, plan: &[DevicePlan], access: &Access) -> Result<(), RunError> {
    let path = cfg.state_dir.join("devices.csv");
    let mut s = String::from("index,name,protocol,kind,server_device\n");
    for d in plan {
        let server = match access.tcp.get(&d.index) {
            Some(id) => format!("tcp-{id}"),
            None => d.name.clone(),
        };
        s.push_str(&format!(
            "{},{},{},{},{server}\n",
            d.index,
            d.name,
            d.protocol,
            d.kind.as_str()
        ));
    }
    std::fs::write(&path, s).map_err(|e| RunError::io(&path, e))
}

/// Waits for Ctrl-C or SIGTERM.
async fn signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// Runs the simulation to its end (count or duration reached and everything acknowledged),
/// or until a signal and the drain that follows.
pub async fn run(cfg: Config) -> Result<Summary, RunError> {
    cfg.check()?;
    let started = Instant::now();
    std::fs::create_dir_all(&cfg.state_dir).map_err(|e| RunError::io(&cfg.state_dir, e))?;
    let comm_path = cfg.state_dir.join("comm.log");
    let comm = CommLog::open(&comm_path).map_err(|e| RunError::io(&comm_path, e))?;
    // Refuse a mismatched state dir before registering anything.
    run_state(&cfg, false)?;
    let plan = cfg.plan();
    comm.log(
        "run",
        format_args!(
            "start: {} devices, protocols {:?}, seed {}, rate {} Hz, {}",
            cfg.devices,
            cfg.protocols.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            cfg.seed,
            cfg.rate_hz,
            if cfg.fast { "fast" } else { "real time" }
        ),
    );
    let registering = Instant::now();
    let access = Registrar {
        http: &cfg.http,
        tcp: &cfg.tcp,
        admin_token: cfg.admin_token.as_deref(),
        token: cfg.token.as_deref(),
        site: &cfg.site,
        timezone: cfg.timezone.as_deref(),
        creds_path: &cfg.state_dir.join("credentials.json"),
        comm: comm.clone(),
        quiet: !cfg.progress,
    }
    .run(&plan)
    .await?;
    let registration = registering.elapsed();
    write_devices_csv(&cfg, &plan, &access)?;
    let state = run_state(&cfg, true)?.expect("created");

    let clock = if cfg.fast {
        Clock::Fast
    } else {
        Clock::Real {
            offset_ms: state.offset_ms,
        }
    };
    let end_ts = cfg.duration.map(|d| state.start_ms + d.as_millis() as i64);
    let (stop_gen_tx, stop_gen) = watch::channel(false);
    let (stop_fwd_tx, stop_fwd) = watch::channel(false);
    let (ctl_tx, _) = broadcast::channel(1024);
    let mut stats = Stats::default();
    let mut generators = JoinSet::new();
    let mut forwarders = JoinSet::new();
    let mut replayed = 0u64;
    for g in make_groups(&cfg, &plan) {
        let who = format!("group-{:04} {}", g.id, g.protocol);
        let (journal, rec) = Journal::open(&cfg.state_dir, g.id, &cfg.prefix)?;
        if rec.truncated > 0 {
            comm.log(
                &who,
                format_args!(
                    "cut {} bytes of a torn last line off the log",
                    rec.truncated
                ),
            );
        }
        if rec.unacked_rows > 0 {
            comm.log(
                &who,
                format_args!(
                    "replaying {} unacknowledged rows from the log",
                    rec.unacked_rows
                ),
            );
        }
        replayed += rec.unacked_rows;
        let counters = stats.add_group(g.protocol);
        Counters::add(&counters.replayed, rec.unacked_rows);
        let interval = interval_ms(cfg.rate_hz, g.protocol);
        let now_virtual = wall_ms() - state.offset_ms;
        let devices = g
            .devices
            .iter()
            .map(|d| match rec.devices.get(&d.index) {
                Some(tail) => {
                    let mut next = tail.last_ts + interval;
                    if !cfg.fast && next + interval < now_virtual {
                        // The simulator was off: so was the meter's uplink. Skip to now on
                        // the same grid (the counter still runs through the gap).
                        let missed = (now_virtual - next) / interval;
                        next += missed * interval;
                    }
                    GenDevice {
                        meter: Meter::resume(d.kind, cfg.seed, d.index, tail.last_ts, tail.energy),
                        interval,
                        next,
                        remaining: cfg.count.map(|c| c.saturating_sub(tail.readings)),
                        last: Some(tail.last_ts),
                    }
                }
                None => GenDevice {
                    meter: Meter::new(d.kind, cfg.seed, d.index, state.start_ms),
                    interval,
                    next: state.start_ms,
                    remaining: cfg.count,
                    last: None,
                },
            })
            .collect();
        let (synced_tx, synced_rx) = watch::channel(Synced {
            end: rec.end,
            done: false,
        });
        let acked = Arc::new(Notify::new());
        let forwarder = Forwarder {
            who: who.clone(),
            sink: make_sink(&cfg, &access, &g, &comm, &who)?,
            reader: journal.reader(rec.ack)?,
            ack: AckPointer::new(&cfg.state_dir, g.id, rec.ack),
            counters: counters.clone(),
            comm: comm.clone(),
            policy: cfg.retry,
            batch_rows: cfg.batch_rows,
            acked: acked.clone(),
            jitter_seed: cfg.seed ^ g.id as u64,
        };
        let generator = Generator {
            who: who.clone(),
            protocol: g.protocol,
            devices,
            journal,
            zone: Zone::new(access.tz.clone()),
            counters,
            synced: synced_tx,
            acked,
            control: ctl_tx.subscribe(),
            stop: stop_gen.clone(),
            clock,
            end_ts,
            sync_every: cfg.sync_every,
            max_buffered: cfg.max_buffered_rows,
            comm: comm.clone(),
        };
        generators.spawn(async move { (who, generator.run().await) });
        forwarders.spawn(forwarder.run(synced_rx, stop_fwd.clone()));
    }
    if replayed > 0 && cfg.progress {
        eprintln!(
            "simulate: replaying {replayed} unacknowledged rows from {}",
            cfg.state_dir.display()
        );
    }
    if let Some(source) = cfg.control.clone() {
        tokio::spawn(control::run(
            source,
            cfg.prefix.clone(),
            ctl_tx.clone(),
            comm.clone(),
            stop_fwd.clone(),
        ));
    }
    let (finished_tx, mut finished) = watch::channel(false);
    let progress = cfg.progress.then(|| {
        let stats = stats.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut p = Progress::new(Instant::now(), stats.total());
            let mut tick =
                tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => eprintln!("{}", p.line(Instant::now(), stats.total())),
                    _ = finished.changed() => break,
                }
            }
            eprintln!("{}", p.line(Instant::now(), stats.total()));
        })
    });

    let mut failures = Vec::new();
    let mut interrupted = false;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut sig = Box::pin(signal());
    loop {
        tokio::select! {
            joined = forwarders.join_next() => match joined {
                None => break,
                Some(Ok(Ok(Ended::Drained))) => {}
                Some(Ok(Ok(Ended::Stopped))) => interrupted = true,
                Some(Ok(Err(e))) => {
                    // One group giving up stops the run: its readings stay in its log.
                    failures.push(e.to_string());
                    interrupted = true;
                    stop_gen_tx.send_replace(true);
                    stop_fwd_tx.send_replace(true);
                }
                Some(Err(e)) => {
                    failures.push(format!("sender task: {e}"));
                    stop_gen_tx.send_replace(true);
                    stop_fwd_tx.send_replace(true);
                }
            },
            _ = &mut sig => {
                interrupted = true;
                if drain_deadline.is_none() {
                    comm.log("run", "stop requested: generation ends, draining the logs");
                    if cfg.progress {
                        eprintln!("simulate: stopping; sending what is logged for up to {:?} (again to stop at once)", cfg.drain_timeout);
                    }
                    stop_gen_tx.send_replace(true);
                    drain_deadline = Some(tokio::time::Instant::now() + cfg.drain_timeout);
                    sig = Box::pin(signal());
                } else {
                    stop_fwd_tx.send_replace(true);
                }
            },
            _ = async {
                match drain_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                comm.log("run", "drain time over: the rest stays in the logs");
                stop_fwd_tx.send_replace(true);
                drain_deadline = None;
            },
        }
    }
    stop_gen_tx.send_replace(true);
    while let Some(joined) = generators.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((who, Err(e))) => failures.push(format!("{who}: {e}")),
            Err(e) => failures.push(format!("generator task: {e}")),
        }
    }
    stop_fwd_tx.send_replace(true);
    finished_tx.send_replace(true);
    if let Some(p) = progress {
        let _ = p.await;
    }
    let mut summary = Summary::new(
        &stats,
        cfg.devices,
        cfg.seed,
        started.elapsed(),
        cfg.state_dir.display().to_string(),
        interrupted,
    );
    summary.failures = failures;
    summary.registration_s = registration.as_secs_f64();
    summary.timezone = access.tz_name.clone();
    comm.log(
        "run",
        format_args!(
            "end: generated {} acknowledged {} resent {} replayed {} buffered {}{}",
            summary.generated,
            summary.acknowledged,
            summary.resent,
            summary.replayed,
            summary.buffered,
            if summary.failures.is_empty() {
                String::new()
            } else {
                format!(" failures: {}", summary.failures.join("; "))
            }
        ),
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(interval_ms(1.0, Protocol::HttpJson), 1000);
        assert_eq!(interval_ms(4.0, Protocol::HttpJson), 250);
        assert_eq!(interval_ms(0.1, Protocol::MqttNative), 10_000);
        assert_eq!(interval_ms(4.0, Protocol::Tcp), 1000);
        assert_eq!(interval_ms(0.4, Protocol::Tcp), 3000);
    }

    /// The null protocol: the whole pipeline without a server.
    async fn null_run(dir: &std::path::Path, devices: u32) -> Summary {
        let cfg = Config {
            protocols: vec![Protocol::Null],
            devices,
            profile: ProfileChoice::Mix,
            fast: true,
            count: Some(30),
            start: Some(1_767_632_400_000),
            state_dir: dir.to_owned(),
            group_size: Some(4),
            progress: false,
            ..Config::default()
        };
        run(cfg).await.unwrap()
    }

    fn rows_of(dir: &std::path::Path, device: &str) -> Vec<String> {
        let mut rows = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "csv") && p.file_name().unwrap() != "devices.csv"
            {
                for l in std::fs::read_to_string(&p).unwrap().lines() {
                    if l.starts_with(&format!("{device},")) {
                        rows.push(l.to_owned());
                    }
                }
            }
        }
        rows
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn device_k_is_the_same_whatever_the_device_count() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let sa = null_run(a.path(), 10).await;
        let sb = null_run(b.path(), 3).await;
        assert_eq!(sa.acknowledged, sa.generated);
        assert_eq!(sb.buffered, 0);
        for k in 0..3 {
            let name = format!("sim-{k:06}");
            let ra = rows_of(a.path(), &name);
            assert!(ra.len() >= 30, "{name}: {}", ra.len());
            assert_eq!(ra, rows_of(b.path(), &name), "{name}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_finished_state_dir_generates_nothing_more() {
        let a = tempfile::tempdir().unwrap();
        let first = null_run(a.path(), 5).await;
        assert_eq!(first.generated, first.acknowledged);
        let again = null_run(a.path(), 5).await;
        assert_eq!(again.generated, 0);
        assert_eq!(again.replayed, 0);
        let other = Config {
            protocols: vec![Protocol::Null],
            devices: 6,
            fast: true,
            count: Some(30),
            state_dir: a.path().to_owned(),
            progress: false,
            ..Config::default()
        };
        assert!(matches!(run(other).await, Err(RunError::Config(_))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn control_commands_change_rate_and_consumption_while_running() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("control");
        std::fs::write(&control, "rate sim-000001 10\nscale 0 0\n").unwrap();
        let cfg = Config {
            protocols: vec![Protocol::Null],
            devices: 2,
            rate_hz: 2.0,
            duration: Some(Duration::from_secs(3)),
            state_dir: dir.path().join("state"),
            control: Some(control::Source::File(control)),
            progress: false,
            ..Config::default()
        };
        let summary = run(cfg).await.unwrap();
        assert_eq!(summary.buffered, 0);
        let fast = rows_of(&dir.path().join("state"), "sim-000001");
        let slow = rows_of(&dir.path().join("state"), "sim-000000");
        assert!(
            fast.len() >= 20,
            "rate 10 Hz for most of 3 s: {}",
            fast.len()
        );
        assert!(slow.len() <= 7, "{}", slow.len());
        // Scaled to nothing: the last readings draw no power, the counter stands still.
        let power = |row: &str| row.split(',').nth(5).unwrap().to_owned();
        let energy = |row: &str| row.split(',').nth(8).unwrap().to_owned();
        let n = slow.len();
        assert_eq!(power(&slow[n - 1]), "0");
        assert_eq!(energy(&slow[n - 1]), energy(&slow[n - 2]));
    }
}
