//! Rollups not yet merged into storage.
//!
//! Every durable reading is folded into the minute, hour and day buckets of its series here,
//! and the buckets are merged into storage every few seconds in one transaction together with
//! the series' watermark. Merging per batch would cost three row updates per series per
//! batch; merging every few seconds costs three per series per flush. Queries combine stored
//! rows with these pending ones, so nothing is invisible in between.

use std::collections::{BTreeMap, HashMap};

use jiff::tz::TimeZone;
use wattline_domain::energy::EnergyDelta;
use wattline_domain::{Agg, BucketTier, Point, SeriesId, TsMs};
use wattline_storage::{RollupRow, RollupWrite};

/// A series' pending buckets per tier, and the newest reading they include.
#[derive(Debug, Default, Clone)]
pub struct SeriesPending {
    pub tiers: [BTreeMap<TsMs, Agg>; 3],
    pub max_ts: Option<TsMs>,
    /// The last hour and day bucket seen, so most readings skip the time-zone arithmetic.
    hour: Option<(TsMs, TsMs)>,
    day: Option<(TsMs, TsMs)>,
}

fn tier_index(tier: BucketTier) -> usize {
    match tier {
        BucketTier::Minute => 0,
        BucketTier::Hour => 1,
        BucketTier::Day => 2,
        BucketTier::Raw => unreachable!("raw is not a rollup tier"),
    }
}

fn cached_bucket(
    cache: &mut Option<(TsMs, TsMs)>,
    tier: BucketTier,
    ts: TsMs,
    tz: &TimeZone,
) -> TsMs {
    match *cache {
        Some((start, end)) if ts >= start && ts < end => start,
        _ => {
            let b = tier.bucket(ts, tz);
            *cache = Some(b);
            b.0
        }
    }
}

impl SeriesPending {
    pub fn add(&mut self, point: &Point, energy: &EnergyDelta, tz: &TimeZone) {
        let ts = point.ts;
        let minute = ts.minute_start();
        let hour = cached_bucket(&mut self.hour, BucketTier::Hour, ts, tz);
        let day = cached_bucket(&mut self.day, BucketTier::Day, ts, tz);
        for (i, bucket) in [minute, hour, day].into_iter().enumerate() {
            let tier = &mut self.tiers[i];
            // Readings arrive in order, so the newest bucket is nearly always the one.
            match tier.last_entry() {
                Some(mut newest) if *newest.key() == bucket => {
                    newest.get_mut().add(ts, &point.values, energy)
                }
                _ => tier
                    .entry(bucket)
                    .or_default()
                    .add(ts, &point.values, energy),
            }
        }
        self.max_ts = self.max_ts.max(Some(ts));
    }

    pub fn merge(&mut self, other: SeriesPending) {
        for (mine, theirs) in self.tiers.iter_mut().zip(other.tiers) {
            for (bucket, agg) in theirs {
                mine.entry(bucket).or_default().merge(&agg);
            }
        }
        self.max_ts = self.max_ts.max(other.max_ts);
    }
}

/// Pending rollups of all series.
#[derive(Debug, Default, Clone)]
pub struct Pending {
    pub series: HashMap<SeriesId, SeriesPending>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    pub fn merge(&mut self, other: Pending) {
        for (s, p) in other.series {
            self.series.entry(s).or_default().merge(p);
        }
    }

    /// The storage write that makes these rollups durable, with each series' watermark.
    pub fn to_write(&self) -> RollupWrite {
        let mut w = RollupWrite::default();
        for (series, p) in &self.series {
            for (i, tier) in BucketTier::ROLLUPS.into_iter().enumerate() {
                for (bucket, agg) in &p.tiers[i] {
                    w.merge.push((
                        tier,
                        RollupRow {
                            series: *series,
                            bucket: *bucket,
                            agg: *agg,
                        },
                    ));
                }
            }
            if let Some(ts) = p.max_ts {
                w.watermarks.push((*series, ts));
            }
        }
        w
    }
}

impl SeriesPending {
    /// Lays these buckets in `[from, to)` over rows read from storage.
    pub fn overlay(
        &self,
        tier: BucketTier,
        series: SeriesId,
        from: TsMs,
        to: TsMs,
        rows: &mut Vec<RollupRow>,
    ) {
        let pending = &self.tiers[tier_index(tier)];
        if pending.range(from..to).next().is_none() {
            return;
        }
        let mut by_bucket: BTreeMap<TsMs, Agg> =
            rows.drain(..).map(|r| (r.bucket, r.agg)).collect();
        for (bucket, agg) in pending.range(from..to) {
            by_bucket.entry(*bucket).or_default().merge(agg);
        }
        rows.extend(by_bucket.into_iter().map(|(bucket, agg)| RollupRow {
            series,
            bucket,
            agg,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattline_domain::{Quantity, Values};

    #[test]
    fn pending_buckets_follow_the_zone_and_overlay_stored_rows() {
        let tz = TimeZone::get("Europe/Zurich").unwrap();
        let mut p = SeriesPending::default();
        let t0 = TsMs(1_767_632_400_000); // 17:00 UTC = 18:00 local
        for i in 0..120 {
            let pt = Point {
                ts: TsMs(t0.0 + i * 1000),
                values: Values::new().with(Quantity::Power, 100.0),
            };
            p.add(&pt, &EnergyDelta::default(), &tz);
        }
        assert_eq!(p.tiers[0].len(), 2, "two minutes");
        assert_eq!(p.tiers[1].keys().next(), Some(&t0), "local hour 18:00");
        let day = *p.tiers[2].keys().next().unwrap();
        assert_eq!(
            day,
            TsMs(t0.0 - 18 * TsMs::HOUR),
            "local midnight is 23:00 UTC"
        );

        let series = SeriesId(1);
        let mut pending = Pending::default();
        pending.series.insert(series, p);
        let mut stored = Agg::default();
        stored.add(
            TsMs(t0.0 - 1),
            &Values::new().with(Quantity::Power, 400.0),
            &EnergyDelta::default(),
        );
        let mut rows = vec![RollupRow {
            series,
            bucket: t0,
            agg: stored,
        }];
        pending.series[&series].overlay(
            BucketTier::Hour,
            series,
            t0,
            TsMs(t0.0 + TsMs::HOUR),
            &mut rows,
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].agg.stat(Quantity::Power).n, 121);
        assert_eq!(rows[0].agg.stat(Quantity::Power).max, 400.0);
    }
}
