//! The SQLite backend's write buffer: appended points not yet cut into per-series chunks.
//!
//! A commit writes the whole batch as one staging row (durable) and adds its points here;
//! every so often the buffer is cut into chunks in one transaction that also deletes the
//! staging rows. One row per commit, instead of one small chunk per series per commit, is
//! what keeps a busy commit cheap: a 5,000-reading batch from 1,000 meters is one B-tree
//! insert, not 1,000. After a crash the staging rows are read back into the buffer.
//!
//! The staging format is plain and fast to write (it lives for seconds):
//! `records:u32`, then per record `series:i64 n:u32 (ts:i64 mask:u16 value:f64 × popcount(mask))×n`,
//! little-endian. The record count makes a truncated row detectable at any cut.

use std::collections::HashMap;
use std::time::Instant;

use wattline_domain::{Point, Quantity, SeriesId, TsMs, Values};

use crate::SeriesPoints;

pub fn encode_batch(batch: &[SeriesPoints]) -> Vec<u8> {
    let points: usize = batch.iter().map(|s| s.points.len()).sum();
    let mut out = Vec::with_capacity(4 + batch.len() * 12 + points * 50);
    out.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    for sp in batch {
        out.extend_from_slice(&sp.series.0.to_le_bytes());
        out.extend_from_slice(&(sp.points.len() as u32).to_le_bytes());
        for p in &sp.points {
            out.extend_from_slice(&p.ts.0.to_le_bytes());
            out.extend_from_slice(&p.values.mask().to_le_bytes());
            for (_, v) in p.values.iter() {
                out.extend_from_slice(&v.to_bits().to_le_bytes());
            }
        }
    }
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let end = self.pos + N;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| format!("staging row truncated at byte {}", self.pos))?;
        self.pos = end;
        Ok(bytes.try_into().expect("length checked"))
    }
}

pub fn decode_batch(buf: &[u8]) -> Result<Vec<SeriesPoints>, String> {
    let mut r = Reader { buf, pos: 0 };
    let records = u32::from_le_bytes(r.take()?) as usize;
    if records > buf.len() / 12 {
        return Err(format!(
            "staging row claims {records} records, more than it holds"
        ));
    }
    let mut out = Vec::with_capacity(records);
    for _ in 0..records {
        let series = SeriesId(i64::from_le_bytes(r.take()?));
        let n = u32::from_le_bytes(r.take()?) as usize;
        // Each point takes at least 10 bytes: refuse counts the row cannot hold.
        if n > (buf.len() - r.pos) / 10 {
            return Err(format!(
                "staging row claims {n} points for series {series}, more than it holds"
            ));
        }
        let mut points = Vec::with_capacity(n);
        for _ in 0..n {
            let ts = TsMs(i64::from_le_bytes(r.take()?));
            let mask = u16::from_le_bytes(r.take()?);
            let mut values = Values::new();
            for q in Quantity::ALL {
                if mask & (1 << q.index()) != 0 {
                    values.set(q, f64::from_bits(u64::from_le_bytes(r.take()?)));
                }
            }
            if mask >> Quantity::COUNT != 0 {
                return Err(format!(
                    "staging row has an unknown quantity bit in mask {mask:#x}"
                ));
            }
            points.push(Point { ts, values });
        }
        out.push(SeriesPoints { series, points });
    }
    if r.pos != buf.len() {
        return Err(format!(
            "staging row has {} bytes after its last record",
            buf.len() - r.pos
        ));
    }
    Ok(out)
}

/// Points committed to staging rows and not yet in chunks. Per series they are in ascending
/// time order and newer than anything chunked, because only appends of newer points land here.
#[derive(Default, Clone)]
pub struct Unchunked {
    pub points: HashMap<SeriesId, Vec<Point>>,
    pub total: usize,
    /// The staging rows whose points are held here.
    pub staging_ids: Vec<i64>,
    pub oldest: Option<Instant>,
}

impl Unchunked {
    pub fn push(&mut self, batch: &[SeriesPoints], staging_id: i64) {
        for sp in batch {
            self.total += sp.points.len();
            self.points
                .entry(sp.series)
                .or_default()
                .extend_from_slice(&sp.points);
        }
        self.staging_ids.push(staging_id);
        self.oldest.get_or_insert_with(Instant::now);
    }

    pub fn clear(&mut self) {
        *self = Unchunked::default();
    }

    /// Points of `series` with `from <= ts < to`, ascending.
    pub fn range(&self, series: SeriesId, from: TsMs, to: TsMs) -> Vec<Point> {
        let Some(pts) = self.points.get(&series) else {
            return Vec::new();
        };
        let start = pts.partition_point(|p| p.ts < from);
        let end = pts.partition_point(|p| p.ts < to);
        pts[start..end.max(start)].to_vec()
    }

    pub fn last(&self, series: SeriesId) -> Option<Point> {
        self.points.get(&series).and_then(|p| p.last()).copied()
    }
}

/// Chunk points followed by buffered points, dropping buffered ones already in the chunks
/// (a read that overlaps a buffer flush sees them in both).
pub fn merge_chunked_and_buffered(mut chunked: Vec<Point>, buffered: Vec<Point>) -> Vec<Point> {
    let last = chunked.last().map(|p| p.ts);
    chunked.extend(buffered.into_iter().filter(|p| Some(p.ts) > last));
    chunked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(series: i64, ts: &[i64]) -> SeriesPoints {
        SeriesPoints {
            series: SeriesId(series),
            points: ts
                .iter()
                .map(|t| Point {
                    ts: TsMs(*t),
                    values: Values::new()
                        .with(Quantity::Power, *t as f64 * 0.1)
                        .with(Quantity::Energy, -0.0),
                })
                .collect(),
        }
    }

    #[test]
    fn staging_rows_round_trip_and_refuse_garbage() {
        let batch = vec![sp(1, &[1, 2, 3]), sp(7, &[5]), sp(9, &[])];
        let bytes = encode_batch(&batch);
        let back = decode_batch(&bytes).unwrap();
        assert_eq!(back.len(), 3);
        for (a, b) in batch.iter().zip(&back) {
            assert_eq!(a.series, b.series);
            assert_eq!(a.points.len(), b.points.len());
            for (p, q) in a.points.iter().zip(&b.points) {
                assert_eq!(p.ts, q.ts);
                assert_eq!(p.values.mask(), q.values.mask());
                for (x, y) in p.values.iter().zip(q.values.iter()) {
                    assert_eq!(x.1.to_bits(), y.1.to_bits());
                }
            }
        }
        for cut in 1..bytes.len() {
            assert!(
                decode_batch(&bytes[..cut]).is_err(),
                "prefix {cut} accepted"
            );
        }
        let mut huge = 1u32.to_le_bytes().to_vec();
        huge.extend_from_slice(&1i64.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_batch(&huge)
            .unwrap_err()
            .contains("more than it holds"));
    }

    #[test]
    fn buffer_ranges_and_merge_drop_duplicates() {
        let mut u = Unchunked::default();
        u.push(&[sp(1, &[10, 20, 30])], 1);
        u.push(&[sp(1, &[40]), sp(2, &[5])], 2);
        assert_eq!(u.total, 5);
        let r: Vec<i64> = u
            .range(SeriesId(1), TsMs(20), TsMs(40))
            .iter()
            .map(|p| p.ts.0)
            .collect();
        assert_eq!(r, vec![20, 30]);
        assert_eq!(u.last(SeriesId(1)).unwrap().ts, TsMs(40));
        let chunked = sp(1, &[10, 20]).points;
        let merged = merge_chunked_and_buffered(chunked, u.range(SeriesId(1), TsMs(0), TsMs(100)));
        let ts: Vec<i64> = merged.iter().map(|p| p.ts.0).collect();
        assert_eq!(ts, vec![10, 20, 30, 40]);
    }
}
