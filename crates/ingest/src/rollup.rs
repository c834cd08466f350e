//! Rollups not yet merged into storage.
//!
//! Every durable reading is folded into the minute, hour and day buckets of its series here,
//! and the buckets are merged into storage every few seconds in one transaction together with
//! the series' watermark. Merging per batch would cost three row updates per series per
//! batch; merging every few seconds costs three per series per flush. Queries combine stored
//! rows with these pending ones, so nothing is invisible in between.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use wattline_domain::energy::EnergyDelta;
use wattline_domain::{Agg, BucketTier, Point, SeriesId, TsMs};
use wattline_storage::{RollupRow, RollupWrite};

/// One tier's pending buckets of a series, ascending by bucket start.
///
/// Readings arrive in order, so the bucket a reading goes to is nearly always the newest: a
/// sorted `Vec` finds it at its end. (A `BTreeMap` walked its nodes for every reading and
/// allocated a 4 KiB leaf per series and tier after every flush.) A bucket older than the
/// newest is found by binary search and inserted in place.
#[derive(Debug, Default, Clone)]
pub struct Buckets(Vec<(TsMs, Agg)>);

impl Buckets {
    /// The bucket starting at `start`, added empty when missing.
    #[inline]
    pub fn entry(&mut self, start: TsMs) -> &mut Agg {
        let i = match self.0.last() {
            Some((newest, _)) if *newest == start => self.0.len() - 1,
            Some((newest, _)) if *newest > start => {
                match self.0.binary_search_by_key(&start, |(b, _)| *b) {
                    Ok(i) => i,
                    Err(i) => {
                        self.0.insert(i, (start, Agg::default()));
                        i
                    }
                }
            }
            _ => {
                self.0.push((start, Agg::default()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bucket starts, ascending.
    pub fn keys(&self) -> impl Iterator<Item = &TsMs> + '_ {
        self.0.iter().map(|(b, _)| b)
    }

    /// Buckets, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (&TsMs, &Agg)> + '_ {
        self.0.iter().map(|(b, a)| (b, a))
    }

    /// Buckets starting in `[from, to)`, ascending.
    pub fn range(&self, from: TsMs, to: TsMs) -> impl Iterator<Item = (&TsMs, &Agg)> + '_ {
        let lo = self.0.partition_point(|(b, _)| *b < from);
        let hi = self.0.partition_point(|(b, _)| *b < to).max(lo);
        self.0[lo..hi].iter().map(|(b, a)| (b, a))
    }
}

/// A series' pending minute buckets, and the newest reading they include.
///
/// Only minutes are kept: a reading is added to one bucket, not three. Hours and days are
/// merged from the minutes when they are needed (a flush, a query), the way a repair
/// rebuilds them from stored minutes. (Every zone since 1972 has whole-minute offsets, so
/// a UTC minute lies in one local hour and day.)
#[derive(Debug, Default, Clone)]
pub struct SeriesPending {
    pub minutes: Buckets,
    pub max_ts: Option<TsMs>,
}

impl SeriesPending {
    pub fn add(&mut self, point: &Point, energy: &EnergyDelta) {
        let ts = point.ts;
        self.minutes
            .entry(ts.minute_start())
            .add(ts, &point.values, energy);
        self.max_ts = self.max_ts.max(Some(ts));
    }

    pub fn merge(&mut self, other: SeriesPending) {
        for (bucket, agg) in other.minutes.iter() {
            self.minutes.entry(*bucket).merge(agg);
        }
        self.max_ts = self.max_ts.max(other.max_ts);
    }

    /// The pending buckets of a rollup tier: the minutes, or the hours or days of `tz` that
    /// they fall in, each merged from its minutes in order.
    pub fn tier(&self, tier: BucketTier, tz: &TimeZone) -> Buckets {
        if tier == BucketTier::Minute {
            return self.minutes.clone();
        }
        let mut out = Buckets::default();
        // Minutes ascend, so one bucket computation serves every minute it spans.
        let mut current: Option<(TsMs, TsMs)> = None;
        for (minute, agg) in self.minutes.iter() {
            let start = match current {
                Some((start, end)) if *minute >= start && *minute < end => start,
                _ => {
                    let b = tier.bucket(*minute, tz);
                    current = Some(b);
                    b.0
                }
            };
            out.entry(start).merge(agg);
        }
        out
    }
}

/// Pending rollups of all series.
#[derive(Debug, Default, Clone)]
pub struct Pending {
    pub series: crate::FastMap<SeriesId, SeriesPending>,
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

    /// The storage write that makes these rollups durable, with each series' watermark;
    /// `zone` gives a series' time zone, for its hours and days.
    pub fn to_write(&self, zone: impl Fn(SeriesId) -> TimeZone) -> RollupWrite {
        let mut w = RollupWrite::default();
        let minutes: usize = self.series.values().map(|p| p.minutes.len()).sum();
        w.merge.reserve(minutes + 2 * self.series.len());
        w.watermarks.reserve_exact(self.series.len());
        for (series, p) in &self.series {
            let tz = zone(*series);
            for tier in BucketTier::ROLLUPS {
                for (bucket, agg) in p.tier(tier, &tz).iter() {
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
    /// Lays these buckets (of zone `tz`) in `[from, to)` over rows read from storage.
    pub fn overlay(
        &self,
        tier: BucketTier,
        series: SeriesId,
        from: TsMs,
        to: TsMs,
        tz: &TimeZone,
        rows: &mut Vec<RollupRow>,
    ) {
        if self.minutes.is_empty() {
            return;
        }
        let pending = self.tier(tier, tz);
        if pending.range(from, to).next().is_none() {
            return;
        }
        let mut by_bucket: BTreeMap<TsMs, Agg> =
            rows.drain(..).map(|r| (r.bucket, r.agg)).collect();
        for (bucket, agg) in pending.range(from, to) {
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
    fn buckets_stay_sorted_when_readings_come_out_of_order() {
        let mut b = Buckets::default();
        for start in [60, 120, 0, 180, 120, 30, 180] {
            b.entry(TsMs(start)).add(
                TsMs(start),
                &Values::new().with(Quantity::Power, 1.0),
                &EnergyDelta::default(),
            );
        }
        let keys: Vec<i64> = b.keys().map(|k| k.0).collect();
        assert_eq!(keys, vec![0, 30, 60, 120, 180]);
        let counts: Vec<u32> = b.iter().map(|(_, a)| a.stat(Quantity::Power).n).collect();
        assert_eq!(counts, vec![1, 1, 1, 2, 2]);
        let range: Vec<i64> = b.range(TsMs(30), TsMs(180)).map(|(k, _)| k.0).collect();
        assert_eq!(range, vec![30, 60, 120]);
        assert_eq!(b.range(TsMs(181), TsMs(1000)).count(), 0);
        assert_eq!(b.range(TsMs(100), TsMs(50)).count(), 0);
        assert_eq!(b.len(), 5);
        assert!(!b.is_empty());
    }

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
            p.add(&pt, &EnergyDelta::default());
        }
        assert_eq!(p.minutes.len(), 2, "two minutes");
        let hours = p.tier(BucketTier::Hour, &tz);
        assert_eq!(
            hours.keys().copied().collect::<Vec<_>>(),
            vec![t0],
            "local hour 18:00"
        );
        let days = p.tier(BucketTier::Day, &tz);
        assert_eq!(
            days.keys().copied().collect::<Vec<_>>(),
            vec![TsMs(t0.0 - 18 * TsMs::HOUR)],
            "local midnight is 23:00 UTC"
        );
        for tier in [&hours, &days] {
            let (_, agg) = tier.iter().next().unwrap();
            assert_eq!(agg.stat(Quantity::Power).n, 120);
            assert_eq!(agg.stat(Quantity::Power).sum, 12_000.0);
            assert_eq!(agg.last_ts, TsMs(t0.0 + 119_000));
        }
        assert_eq!(p.tier(BucketTier::Minute, &tz).len(), 2);

        // Minutes on both sides of a local midnight and an hour boundary land in two days
        // and two hours; the write has every tier and the watermark.
        let mut q = SeriesPending::default();
        let midnight = TsMs(t0.0 + 6 * TsMs::HOUR); // 23:00 UTC = local midnight
        for ts in [
            midnight.0 - 60_000,
            midnight.0 - 1,
            midnight.0,
            midnight.0 + 61_000,
        ] {
            let pt = Point {
                ts: TsMs(ts),
                values: Values::new().with(Quantity::Power, 1.0),
            };
            q.add(&pt, &EnergyDelta::default());
        }
        assert_eq!(q.minutes.len(), 3);
        assert_eq!(q.tier(BucketTier::Hour, &tz).len(), 2);
        assert_eq!(q.tier(BucketTier::Day, &tz).len(), 2);
        let mut both = Pending::default();
        both.series.insert(SeriesId(9), q);
        let w = both.to_write(|_| tz.clone());
        assert_eq!(w.merge.len(), 3 + 2 + 2);
        assert_eq!(w.watermarks, vec![(SeriesId(9), TsMs(midnight.0 + 61_000))]);

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
            &tz,
            &mut rows,
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].agg.stat(Quantity::Power).n, 121);
        assert_eq!(rows[0].agg.stat(Quantity::Power).max, 400.0);
    }
}
