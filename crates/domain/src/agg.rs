//! Rollup accumulators: avg/min/max/last of each quantity and the energy of one bucket.
//! Mergeable, so buckets are filled incrementally from batches and combined across tiers.

use crate::energy::EnergyDelta;
use crate::quantity::{Quantity, Values};
use crate::time::TsMs;

/// Statistics of one quantity in one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QStat {
    pub n: u32,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
}

impl Default for QStat {
    fn default() -> Self {
        QStat {
            n: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: f64::NAN,
        }
    }
}

impl QStat {
    pub fn avg(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / f64::from(self.n))
    }

    fn add(&mut self, v: f64) {
        self.n += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.last = v;
    }

    /// Folds a later bucket part into this one (`later_is_newer` says whose `last` wins).
    fn merge(&mut self, other: &QStat, later_is_newer: bool) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 || later_is_newer {
            self.last = other.last;
        }
        self.n += other.n;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// One bucket's rollup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agg {
    pub stats: [QStat; Quantity::COUNT],
    pub energy_import_kwh: f64,
    pub energy_export_kwh: f64,
    /// Timestamp of the newest reading folded in; decides which `last` wins on merge.
    pub last_ts: TsMs,
}

impl Default for Agg {
    fn default() -> Self {
        Agg {
            stats: [QStat::default(); Quantity::COUNT],
            energy_import_kwh: 0.0,
            energy_export_kwh: 0.0,
            last_ts: TsMs(i64::MIN),
        }
    }
}

impl Agg {
    pub fn add(&mut self, ts: TsMs, values: &Values, energy: &EnergyDelta) {
        let newer = ts >= self.last_ts;
        for (q, v) in values.iter() {
            let s = &mut self.stats[q.index()];
            if newer || s.n == 0 {
                s.add(v);
            } else {
                let last = s.last;
                s.add(v);
                s.last = last;
            }
        }
        self.energy_import_kwh += energy.import_kwh;
        self.energy_export_kwh += energy.export_kwh;
        if newer {
            self.last_ts = ts;
        }
    }

    pub fn merge(&mut self, other: &Agg) {
        let newer = other.last_ts >= self.last_ts;
        for (s, o) in self.stats.iter_mut().zip(other.stats.iter()) {
            s.merge(o, newer);
        }
        self.energy_import_kwh += other.energy_import_kwh;
        self.energy_export_kwh += other.energy_export_kwh;
        if newer {
            self.last_ts = other.last_ts;
        }
    }

    pub fn stat(&self, q: Quantity) -> &QStat {
        &self.stats[q.index()]
    }

    pub fn count(&self) -> u32 {
        self.stats.iter().map(|s| s.n).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn agg_of(points: &[(i64, f64)]) -> Agg {
        let mut a = Agg::default();
        for &(ts, p) in points {
            a.add(
                TsMs(ts),
                &Values::new().with(Quantity::Power, p),
                &EnergyDelta::default(),
            );
        }
        a
    }

    proptest! {
        /// Merging two parts of a bucket gives the same rollup as adding all readings to one.
        #[test]
        fn merge_equals_whole(mut pts in proptest::collection::vec((0i64..1000, -1e4f64..1e4), 1..40),
                              split in 0usize..40) {
            pts.sort_by_key(|p| p.0);
            pts.dedup_by_key(|p| p.0);
            let split = split.min(pts.len());
            let whole = agg_of(&pts);
            let mut left = agg_of(&pts[..split]);
            left.merge(&agg_of(&pts[split..]));
            let (w, m) = (whole.stat(Quantity::Power), left.stat(Quantity::Power));
            prop_assert_eq!(w.n, m.n);
            prop_assert!((w.sum - m.sum).abs() < 1e-6);
            prop_assert_eq!(w.min, m.min);
            prop_assert_eq!(w.max, m.max);
            prop_assert_eq!(w.last, m.last);
        }
    }
}
