//! The counters `/metrics` exposes, kept as atomics so the hot path never takes a lock.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Upper bounds of the write-latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
pub struct Metrics {
    pub readings_accepted: AtomicU64,
    pub readings_late: AtomicU64,
    pub counter_events: AtomicU64,
    pub write_batches: AtomicU64,
    pub queue_depth: AtomicU64,
    pub rollup_flushes: AtomicU64,
    pub storage_errors: AtomicU64,
    /// Rejections by reason code; the set of codes is small and fixed, a mutex is fine here.
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    latency_counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
}

impl Metrics {
    pub fn reject(&self, code: &'static str, n: u64) {
        *self
            .rejected
            .lock()
            .expect("metrics poisoned")
            .entry(code)
            .or_default() += n;
    }

    pub fn observe_write_latency(&self, seconds: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_counts[i].fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "wattline_readings_accepted_total",
            "Readings stored durably.",
            self.readings_accepted.load(Relaxed),
        );
        counter(
            &mut out,
            "wattline_readings_late_total",
            "Accepted readings older than their series' newest, which repaired rollups.",
            self.readings_late.load(Relaxed),
        );
        counter(
            &mut out,
            "wattline_counter_events_total",
            "Energy counter resets, rollovers and discontinuities detected.",
            self.counter_events.load(Relaxed),
        );
        counter(
            &mut out,
            "wattline_write_batches_total",
            "Group commits to storage.",
            self.write_batches.load(Relaxed),
        );
        counter(
            &mut out,
            "wattline_rollup_flushes_total",
            "Rollup flushes to storage.",
            self.rollup_flushes.load(Relaxed),
        );
        counter(
            &mut out,
            "wattline_storage_errors_total",
            "Storage operations that failed.",
            self.storage_errors.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP wattline_readings_rejected_total Readings refused, by reason.\n\
             # TYPE wattline_readings_rejected_total counter"
        );
        for (code, n) in self.rejected.lock().expect("metrics poisoned").iter() {
            let _ = writeln!(
                out,
                "wattline_readings_rejected_total{{reason=\"{code}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP wattline_ingest_queue_depth Readings accepted for writing but not yet durable.\n\
             # TYPE wattline_ingest_queue_depth gauge\nwattline_ingest_queue_depth {}",
            self.queue_depth.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP wattline_write_latency_seconds Time from a write's arrival to its durable commit.\n\
             # TYPE wattline_write_latency_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.latency_counts[i].load(Relaxed);
            let _ = writeln!(
                out,
                "wattline_write_latency_seconds_bucket{{le=\"{b}\"}} {cumulative}"
            );
        }
        cumulative += self.latency_counts[LATENCY_BUCKETS.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "wattline_write_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}\n\
             wattline_write_latency_seconds_sum {}\nwattline_write_latency_seconds_count {cumulative}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.readings_accepted.fetch_add(3, Relaxed);
        m.reject("out_of_range", 2);
        m.observe_write_latency(0.003);
        let text = m.render();
        assert!(text.contains("wattline_readings_accepted_total 3"));
        assert!(text.contains("wattline_readings_rejected_total{reason=\"out_of_range\"} 2"));
        assert!(text.contains("wattline_write_latency_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("wattline_write_latency_seconds_bucket{le=\"0.0025\"} 0"));
    }
}
