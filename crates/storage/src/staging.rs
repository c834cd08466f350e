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
use std::sync::Arc;
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

/// Maps keyed by series ids, looked up for every series of every commit. The ids are
/// integers the store hands out, not anything a request chooses, so a fast hash is safe.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Points of one generation, per series in ascending time order.
pub type SeriesBuffer = FastMap<SeriesId, Vec<Point>>;

/// Points committed to staging rows and not yet in chunks. Per series they are in ascending
/// time order and newer than anything chunked, because only appends of newer points land here.
///
/// While a generation is being cut into chunks it is `frozen` (shared, not copied) and new
/// appends go to `active`; readers look at both, frozen first (its points are older).
#[derive(Default)]
pub struct Unchunked {
    pub active: SeriesBuffer,
    pub frozen: Option<Arc<SeriesBuffer>>,
    pub total: usize,
    /// The staging rows whose points are in `active`.
    pub staging_ids: Vec<i64>,
    pub oldest: Option<Instant>,
    /// Points per series in the last frozen generation: a series' vector in the next one
    /// starts at that size instead of doubling its way there, copying as it goes.
    sizes: FastMap<SeriesId, usize>,
}

impl Unchunked {
    /// Adds a batch; points older than buffered ones are merged in order, and one with the
    /// timestamp of a buffered point is laid over it.
    pub fn push(&mut self, batch: &[SeriesPoints], staging_id: i64) {
        for sp in batch {
            let pts = self.active.entry(sp.series).or_insert_with(|| {
                let last = self.sizes.get(&sp.series).copied().unwrap_or(0);
                Vec::with_capacity(last.max(sp.points.len()))
            });
            let before = pts.len();
            match (pts.last(), sp.points.first()) {
                (Some(last), Some(first)) if first.ts <= last.ts => merge_into(pts, &sp.points),
                _ => pts.extend_from_slice(&sp.points),
            }
            self.total += pts.len() - before;
        }
        self.staging_ids.push(staging_id);
        self.oldest.get_or_insert_with(Instant::now);
    }

    /// Moves the active generation aside for chunking: its points and staging rows.
    pub fn freeze(&mut self) -> (Arc<SeriesBuffer>, Vec<i64>) {
        self.sizes.clear();
        self.sizes
            .extend(self.active.iter().map(|(s, pts)| (*s, pts.len())));
        let points = Arc::new(std::mem::take(&mut self.active));
        self.frozen = Some(points.clone());
        self.total = 0;
        self.oldest = None;
        (points, std::mem::take(&mut self.staging_ids))
    }

    /// The frozen generation is in chunks now.
    pub fn thaw_done(&mut self) {
        self.frozen = None;
    }

    /// Puts a generation back after its chunking failed, ahead of newer points.
    pub fn unfreeze(&mut self, points: Arc<SeriesBuffer>, staging_ids: Vec<i64>) {
        self.frozen = None;
        let points = Arc::try_unwrap(points).unwrap_or_else(|shared| (*shared).clone());
        for (series, mut older) in points {
            self.total += older.len();
            let newer = self.active.remove(&series).unwrap_or_default();
            older.extend(newer);
            self.active.insert(series, older);
        }
        let mut ids = staging_ids;
        ids.append(&mut self.staging_ids);
        self.staging_ids = ids;
        self.oldest = Some(Instant::now());
    }

    fn generations(&self) -> impl Iterator<Item = &SeriesBuffer> {
        self.frozen
            .as_deref()
            .into_iter()
            .chain(std::iter::once(&self.active))
    }

    /// Points of `series` with `from <= ts < to`, ascending.
    pub fn range(&self, series: SeriesId, from: TsMs, to: TsMs) -> Vec<Point> {
        let mut out = Vec::new();
        for generation in self.generations() {
            if let Some(pts) = generation.get(&series) {
                let start = pts.partition_point(|p| p.ts < from);
                let end = pts.partition_point(|p| p.ts < to);
                out.extend_from_slice(&pts[start..end.max(start)]);
            }
        }
        out
    }

    /// The newest buffered point of every series that has one.
    pub fn lasts(&self) -> HashMap<SeriesId, Point> {
        let mut out = HashMap::new();
        for generation in self.generations() {
            for (s, pts) in generation {
                if let Some(p) = pts.last() {
                    out.insert(*s, *p);
                }
            }
        }
        out
    }
}

/// Merges ascending `new` points into ascending `pts`, overlaying equal timestamps.
fn merge_into(pts: &mut Vec<Point>, new: &[Point]) {
    let mut merged = Vec::with_capacity(pts.len() + new.len());
    let (mut i, mut j) = (0, 0);
    while i < pts.len() || j < new.len() {
        match (pts.get(i), new.get(j)) {
            (Some(a), Some(b)) if a.ts == b.ts => {
                let mut p = *a;
                p.values.overlay(&b.values);
                merged.push(p);
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.ts < b.ts => {
                merged.push(*a);
                i += 1;
            }
            (Some(_), Some(b)) | (None, Some(b)) => {
                merged.push(*b);
                j += 1;
            }
            (Some(a), None) => {
                merged.push(*a);
                i += 1;
            }
            (None, None) => unreachable!(),
        }
    }
    *pts = merged;
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
        let (frozen, ids) = u.freeze();
        assert_eq!(ids, vec![1]);
        u.push(&[sp(1, &[40]), sp(2, &[5])], 2);
        assert_eq!(u.total, 2);
        assert_eq!(frozen[&SeriesId(1)].len(), 3);

        let r: Vec<i64> = u
            .range(SeriesId(1), TsMs(20), TsMs(40))
            .iter()
            .map(|p| p.ts.0)
            .collect();
        assert_eq!(r, vec![20, 30]);
        assert_eq!(u.lasts()[&SeriesId(1)].ts, TsMs(40));
        let chunked = sp(1, &[10, 20]).points;
        let merged = merge_chunked_and_buffered(chunked, u.range(SeriesId(1), TsMs(0), TsMs(100)));
        let ts: Vec<i64> = merged.iter().map(|p| p.ts.0).collect();
        assert_eq!(ts, vec![10, 20, 30, 40]);
        // A failed cut puts the frozen points back ahead of the newer ones.
        drop(frozen);
        let (frozen, ids) = u.freeze();
        u.push(&[sp(1, &[50])], 3);
        u.unfreeze(frozen, ids);
        let ts: Vec<i64> = u
            .range(SeriesId(1), TsMs(0), TsMs(100))
            .iter()
            .map(|p| p.ts.0)
            .collect();
        assert_eq!(ts, vec![40, 50]);
        assert_eq!(u.staging_ids, vec![2, 3]);
        assert_eq!(u.total, 3);
    }

    #[test]
    fn out_of_order_points_merge_into_the_buffer() {
        let mut u = Unchunked::default();
        u.push(&[sp(2, &[5, 8])], 1);
        u.push(&[sp(2, &[1, 5, 9])], 2);
        let got = u.range(SeriesId(2), TsMs(0), TsMs(100));
        let ts: Vec<i64> = got.iter().map(|p| p.ts.0).collect();
        assert_eq!(ts, vec![1, 5, 8, 9]);
        assert_eq!(u.total, 4, "the duplicate at 5 is laid over, not added");
        assert_eq!(u.staging_ids, vec![1, 2]);
    }
}
