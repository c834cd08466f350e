//! The sending side of a group: reads synced rows from the log, sends them in batches,
//! retries with exponential backoff until every row is acknowledged, then moves the
//! acknowledgement pointer.
//!
//! Batches are sent one after another, so the pointer is simply "everything before this byte
//! is acknowledged"; a batch is retried (only its unacknowledged records) until it goes
//! through or `give_up_after` has passed since its first failure. Giving up stops this group
//! with an error and leaves the rest in the log for the next run with the same state dir.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::commlog::CommLog;
use crate::journal::{AckPointer, JournalError, Reader};
use crate::record::Record;
use crate::rng;
use crate::sink::{Sink, SinkError};
use crate::stats::Counters;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// First backoff.
    pub initial: Duration,
    /// Backoffs double up to this.
    pub max: Duration,
    /// A batch failing for longer than this stops the group.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            give_up_after: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based): doubling, capped, with jitter in
    /// [50 %, 100 %] so groups that failed together do not retry in lockstep.
    pub fn backoff(&self, attempt: u32, jitter: u64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max);
        base.mul_f64(0.5 + 0.5 * rng::unit(jitter))
    }
}

/// Where the writer stands: the synced end of the log, and whether it will write more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Synced {
    pub end: u64,
    pub done: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{who}: gave up after {attempts} attempts over {elapsed:?}: {last}")]
    GaveUp {
        who: String,
        attempts: u32,
        elapsed: Duration,
        last: SinkError,
    },
}

/// How a forwarder ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Everything the writer logged is acknowledged.
    Drained,
    /// Stopped on request with rows left in the log.
    Stopped,
}

pub struct Forwarder<S: Sink> {
    pub who: String,
    pub sink: S,
    pub reader: Reader,
    pub ack: AckPointer,
    pub counters: Arc<Counters>,
    pub comm: CommLog,
    pub policy: RetryPolicy,
    pub batch_rows: usize,
    /// Woken after every acknowledged batch (the generator waits on it when too far ahead).
    pub acked: Arc<Notify>,
    /// Seeds the backoff jitter.
    pub jitter_seed: u64,
}

impl<S: Sink> Forwarder<S> {
    /// Runs until the writer is done and everything is acknowledged, or `stop` turns true.
    pub async fn run(
        mut self,
        mut synced: watch::Receiver<Synced>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<Ended, ForwardError> {
        let mut batch: Vec<Record> = Vec::new();
        let mut retries = 0u64;
        let ended = loop {
            if *stop.borrow() {
                break Ended::Stopped;
            }
            let Synced { end, done } = *synced.borrow_and_update();
            if self.reader.pos() >= end {
                if done {
                    break Ended::Drained;
                }
                tokio::select! {
                    r = synced.changed() => if r.is_err() { break Ended::Stopped },
                    _ = stop.changed() => {}
                }
                continue;
            }
            let to = self.reader.read(end, self.batch_rows, &mut batch).await?;
            if batch.is_empty() {
                // A reading longer than the budget cannot happen (rows are short); guard
                // against spinning anyway.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            match self.deliver(&batch, &mut stop, &mut retries).await? {
                true => {
                    self.reader.advance(to);
                    self.ack.store(to).await?;
                    self.acked.notify_waiters();
                }
                false => break Ended::Stopped,
            }
        };
        self.ack.store(self.reader.pos()).await?;
        self.sink.close().await;
        Ok(ended)
    }

    /// Sends one batch until all of it is acknowledged (true) or a stop is requested (false).
    async fn deliver(
        &mut self,
        batch: &[Record],
        stop: &mut watch::Receiver<bool>,
        retries: &mut u64,
    ) -> Result<bool, ForwardError> {
        let mut acked = vec![false; batch.len()];
        let mut attempt = 0u32;
        let mut first_failure: Option<Instant> = None;
        loop {
            let pending = acked.iter().filter(|a| !**a).count() as u64;
            if attempt == 0 {
                Counters::add(&self.counters.sent, pending);
            } else {
                Counters::add(&self.counters.resent, pending);
            }
            attempt += 1;
            let before = acked.iter().filter(|a| **a).count() as u64;
            let result = self.sink.send(batch, &mut acked).await;
            let now_acked = acked.iter().filter(|a| **a).count() as u64;
            Counters::add(&self.counters.acked, now_acked - before);
            match result {
                Ok(d) => {
                    Counters::add(&self.counters.rejected, d.rejected);
                    if d.rejected > 0 {
                        self.comm.log(
                            &self.who,
                            format_args!("server refused {} reading(s) for good", d.rejected),
                        );
                    }
                    if let Some(t) = first_failure {
                        self.comm.log(
                            &self.who,
                            format_args!(
                                "recovered: batch of {} delivered after {attempt} attempts, {:.1} s",
                                batch.len(),
                                t.elapsed().as_secs_f64()
                            ),
                        );
                    }
                    return Ok(true);
                }
                Err(e) => {
                    Counters::add(&self.counters.errors, 1);
                    let since = *first_failure.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.policy.give_up_after {
                        self.comm.log(&self.who, format_args!("giving up: {e}"));
                        return Err(ForwardError::GaveUp {
                            who: self.who.clone(),
                            attempts: attempt,
                            elapsed: since.elapsed(),
                            last: e,
                        });
                    }
                    *retries += 1;
                    let wait = self
                        .policy
                        .backoff(attempt, rng::mix(self.jitter_seed ^ *retries));
                    self.comm.log(
                        &self.who,
                        format_args!(
                            "error (attempt {attempt}, {} of {} unacknowledged): {e}; retry in {} ms",
                            acked.iter().filter(|a| !**a).count(),
                            batch.len(),
                            wait.as_millis()
                        ),
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => {}
                    }
                    if *stop.borrow() {
                        return Ok(false);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Journal;
    use crate::sink::Delivery;
    use std::collections::HashMap;
    use std::future::Future;

    /// Fails its first `fail` attempts (acknowledging the first `partial` records of each
    /// failing attempt, like per-device connections where some got through), then takes
    /// everything; counts how often each (device, ts, channel) reached it.
    struct FlakySink {
        fail: u32,
        partial: usize,
        seen: HashMap<(u32, i64, u8), u32>,
        attempts: u32,
    }

    impl Sink for FlakySink {
        #[allow(clippy::manual_async_fn)]
        fn send<'a>(
            &'a mut self,
            batch: &'a [Record],
            acked: &'a mut [bool],
        ) -> impl Future<Output = Result<Delivery, SinkError>> + Send + 'a {
            async move {
                self.attempts += 1;
                let failing = self.fail > 0;
                let mut taken = 0;
                for (r, a) in batch.iter().zip(acked.iter_mut()) {
                    if *a {
                        continue;
                    }
                    if failing && taken >= self.partial {
                        break;
                    }
                    *self.seen.entry((r.device, r.ts, r.channel)).or_default() += 1;
                    *a = true;
                    taken += 1;
                }
                if failing {
                    self.fail -= 1;
                    return Err(SinkError::Transport("connection refused".into()));
                }
                Ok(Delivery::default())
            }
        }
    }

    fn rec(device: u32, ts: i64) -> Record {
        Record {
            device,
            channel: 0,
            ts,
            voltage: 230.0,
            current: 1.0,
            power: 230.0,
            pf: 1.0,
            energy_raw: ts as u64,
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(4),
            give_up_after: Duration::from_secs(30),
        }
    }

    async fn forwarder(
        dir: &std::path::Path,
        sink: FlakySink,
        rows: usize,
    ) -> (Forwarder<FlakySink>, watch::Sender<Synced>, Synced) {
        let (mut j, rec0) = Journal::open(dir, 0, "d").unwrap();
        for i in 0..rows {
            j.append(&rec((i % 7) as u32, 1000 * i as i64));
        }
        let end = j.sync().await.unwrap();
        let synced = Synced { end, done: true };
        let (tx, _) = watch::channel(synced);
        let f = Forwarder {
            who: "test".into(),
            sink,
            reader: j.reader(rec0.ack).unwrap(),
            ack: AckPointer::new(dir, 0, rec0.ack),
            counters: Arc::default(),
            comm: CommLog::discard(),
            policy: policy(),
            batch_rows: 100,
            acked: Arc::default(),
            jitter_seed: 1,
        };
        (f, tx, synced)
    }

    #[tokio::test]
    async fn failures_are_retried_until_everything_is_acknowledged_once() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FlakySink {
            fail: 5,
            partial: 30,
            seen: HashMap::new(),
            attempts: 0,
        };
        let (f, tx, synced) = forwarder(dir.path(), sink, 1000).await;
        let counters = f.counters.clone();
        let (_stop_tx, stop) = watch::channel(false);
        let ended = f.run(tx.subscribe(), stop).await.unwrap();
        assert_eq!(ended, Ended::Drained);
        let s = counters.snapshot();
        assert_eq!(s.acknowledged, 1000);
        assert_eq!(s.sent, 1000);
        assert_eq!(s.errors, 5);
        // Partial progress is kept: only what was not acknowledged is sent again.
        assert!(s.resent > 0 && s.resent < 5 * 100, "{s:?}");
        assert_eq!(
            AckPointer::read(&crate::journal::ack_path(dir.path(), 0)),
            synced.end
        );
    }

    #[tokio::test]
    async fn a_restart_replays_from_the_pointer_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        // First run: the server never answers; stop after a few attempts.
        let sink = FlakySink {
            fail: u32::MAX,
            partial: 0,
            seen: HashMap::new(),
            attempts: 0,
        };
        let (mut f, tx, _) = forwarder(dir.path(), sink, 500).await;
        f.sink.partial = 0;
        let (stop_tx, stop) = watch::channel(false);
        let run = tokio::spawn(f.run(tx.subscribe(), stop));
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop_tx.send(true).unwrap();
        assert_eq!(run.await.unwrap().unwrap(), Ended::Stopped);

        // Second run, same dir: the server fails 3 more times, then takes everything.
        let (j, rec) = Journal::open(dir.path(), 0, "d").unwrap();
        assert_eq!(rec.unacked_rows, 500);
        let (tx, _) = watch::channel(Synced {
            end: rec.end,
            done: true,
        });
        let f = Forwarder {
            who: "test".into(),
            sink: FlakySink {
                fail: 3,
                partial: 10,
                seen: HashMap::new(),
                attempts: 0,
            },
            reader: j.reader(rec.ack).unwrap(),
            ack: AckPointer::new(dir.path(), 0, rec.ack),
            counters: Arc::default(),
            comm: CommLog::discard(),
            policy: policy(),
            batch_rows: 64,
            acked: Arc::default(),
            jitter_seed: 2,
        };
        let (_s, stop) = watch::channel(false);
        let ended = f.run(tx.subscribe(), stop).await.unwrap();
        assert_eq!(ended, Ended::Drained);
        let (_, rec) = Journal::open(dir.path(), 0, "d").unwrap();
        assert_eq!(rec.unacked_rows, 0);
        assert_eq!(rec.ack, rec.end);
    }

    #[tokio::test]
    async fn a_partly_acknowledged_batch_is_resumed_after_a_restart_without_loss() {
        // The sink takes 40 records per failing attempt; the run is stopped mid-batch, so the
        // pointer stays before the batch. The second run sends the batch again: the records
        // the sink had already taken arrive twice (the server overlays them), none is lost.
        let dir = tempfile::tempdir().unwrap();
        let sink = FlakySink {
            fail: u32::MAX,
            partial: 40,
            seen: HashMap::new(),
            attempts: 0,
        };
        let (f, tx, _) = forwarder(dir.path(), sink, 300).await;
        let (stop_tx, stop) = watch::channel(false);
        let handle = tokio::spawn(async move {
            let mut f = f;
            let mut stop = stop;
            let mut batch = Vec::new();
            let end = tx.borrow().end;
            let to = f.reader.read(end, 100, &mut batch).await.unwrap();
            let mut retries = 0;
            let ok = f.deliver(&batch, &mut stop, &mut retries).await.unwrap();
            (ok, to, f.sink.seen)
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        stop_tx.send(true).unwrap();
        let (ok, _, seen_first) = handle.await.unwrap();
        assert!(!ok);
        assert_eq!(
            seen_first.len(),
            100,
            "the first batch got through in parts"
        );

        let (j, rec) = Journal::open(dir.path(), 0, "d").unwrap();
        assert_eq!(rec.unacked_rows, 300);
        let (tx, _) = watch::channel(Synced {
            end: rec.end,
            done: true,
        });
        let sink = FlakySink {
            fail: 0,
            partial: 0,
            seen: HashMap::new(),
            attempts: 0,
        };
        let f = Forwarder {
            who: "test".into(),
            sink,
            reader: j.reader(rec.ack).unwrap(),
            ack: AckPointer::new(dir.path(), 0, rec.ack),
            counters: Arc::default(),
            comm: CommLog::discard(),
            policy: policy(),
            batch_rows: 100,
            acked: Arc::default(),
            jitter_seed: 3,
        };
        let (_s, stop) = watch::channel(false);
        let counters = f.counters.clone();
        f.run(tx.subscribe(), stop).await.unwrap();
        assert_eq!(counters.snapshot().acknowledged, 300);
    }

    #[tokio::test]
    async fn giving_up_is_an_error_and_keeps_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FlakySink {
            fail: u32::MAX,
            partial: 0,
            seen: HashMap::new(),
            attempts: 0,
        };
        let (mut f, tx, _) = forwarder(dir.path(), sink, 10).await;
        f.policy.give_up_after = Duration::from_millis(20);
        let (_s, stop) = watch::channel(false);
        let err = f.run(tx.subscribe(), stop).await.unwrap_err();
        assert!(matches!(err, ForwardError::GaveUp { .. }), "{err}");
        let (_, rec) = Journal::open(dir.path(), 0, "d").unwrap();
        assert_eq!(rec.unacked_rows, 10);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            give_up_after: Duration::from_secs(60),
        };
        for (attempt, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (6, 3200),
            (7, 5000),
            (30, 5000),
        ] {
            for j in 0..50 {
                let b = p.backoff(attempt, j).as_millis() as u64;
                assert!(
                    b >= full / 2 && b <= full,
                    "attempt {attempt}: {b} vs {full}"
                );
            }
        }
    }
}
