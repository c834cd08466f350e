//! Column-chunk codec for raw readings: one series' points as a compact, lossless byte string
//! (the SQLite backend stores raw readings as such chunks).
//!
//! # Guarantees
//!
//! * Bit-exact round trip for every `f64` bit pattern (`-0.0`, subnormals, infinities, any
//!   NaN payload), every `i64` timestamp and every per-point presence mask.
//! * Decoding never panics and never allocates more than the chunk can justify: the point count
//!   is capped at [`MAX_POINTS`] and checked against the body length before anything is
//!   allocated; corrupt input yields a [`CodecError`] that names what is wrong.
//! * A 32-bit checksum over the whole chunk turns silent corruption (a flipped bit on disk)
//!   into an error instead of wrong readings, for 4 bytes per chunk.
//!
//! # Format (version 1)
//!
//! ```text
//! chunk   = version:u8  flags:u8  n:varint  [raw_len:varint if flags&ZSTD]  body  checksum:u32le
//! body    = (empty when n = 0)
//!           timestamps  masks  column*            -- zstd-compressed when flags&ZSTD
//! timestamps = predictor:u8  len:varint  rice-stream(n residuals)
//! masks   = runs:varint  (mask:varint  count:varint)*    -- run-length encoded, mask <= 0x1FF
//! column  = one per quantity present in any point, in `Quantity` index order, holding the
//!           present values only (m of them), in point order:
//!   kind=0 decimal: scale:u8  predictor:u8  exceptions:varint (gap:varint  bits:u64le)*
//!                   len:varint  rice-stream(m residuals)
//!   kind=1 xor:     len:varint  xor-stream(m values)
//!   kind=2 raw:     m × bits:u64le
//! ```
//!
//! * Varints are LEB128. Residuals are zigzag-mapped (`0, -1, 1, -2…` → `0, 1, 2, 3…`).
//!   The checksum covers every byte before it.
//! * Predictors: 1 = previous value, 2 = previous value + previous step, 3 = floor of the mean
//!   of the last four values. Before the first value the history is all zeros; the first value
//!   fills all four slots (so value 0 is stored whole, and value 1 as a delta). All predictor
//!   arithmetic wraps, so any `i64` sequence round-trips: ascending timestamps are needed only
//!   for compactness, and the decoder does not insist on them.
//! * Bit streams are least-significant-bit first and end with zero padding to a byte. A Rice
//!   stream is a sequence of blocks of 64 residuals (the last may be shorter), each a 6-bit
//!   header `k` (0..=56, or 63 for "all residuals zero", with nothing after it) and then per
//!   residual `x` with `q = x >> k`: if `q < 8`, `q` zero bits, a one bit and the low `k` bits
//!   of `x`; otherwise the escape: 8 zero bits, a 6-bit `t` = index of the top set bit of `x`,
//!   and the low `t` bits of `x`.
//! * An XOR stream starts with the first value's 64 bits; then per value `x = bits ^ previous`:
//!   `0` when `x` is zero; `1 0` and the window's bits when `x` fits the current window of
//!   meaningful bits; `1 1`, 6 bits of leading zeros, 6 bits of (length − 1), and the
//!   meaningful bits, opening a new window.
//! * A decimal column's value is `integer as f64 / 10^scale`, except at the exception positions
//!   (each `gap` counts the positions skipped since the previous exception, or since the
//!   start), whose raw bits are stored beside the stream and whose residual in the stream is 0.
//!
//! # Why this design
//!
//! Meter readings are decimal numbers printed with a fixed number of digits (`224.36`,
//! `1.253`, `27021316.546`), so a column usually becomes exact integers once scaled by a
//! small power of ten `10^k`. The encoder picks the scale per column (0..=9): a value is
//! *decimal at `k`* when `i = round(v·10^k)` satisfies `(i as f64 / 10^k).to_bits() ==
//! v.to_bits()` with `|v·10^k| < 2^53`; the division by an exact power of ten is correctly
//! rounded, which is what makes this exact. Values that are not decimal at the chosen scale
//! (a `-0.0`, a NaN, a float32-ish `230.10000610351562`) become *exceptions* stored as raw
//! bits beside the column, so a single odd value does not spoil a whole column; the scale is
//! chosen to minimise (exceptions × 80 bits + values × 3.3 bits per digit).
//!
//! The integers are predicted from the previous ones. Which predictor wins depends on the
//! quantity: the mean of the last four values for noise around a slowly moving level (voltage,
//! steady loads), the previous value when the level jumps around, delta-of-delta for counters
//! (energy) and regular timestamps. The encoder computes the exact encoded size under each
//! and keeps the smallest, per column. Prediction residuals of meter data are small, roughly
//! Gaussian and change scale when a load switches, so they are written as **Rice codes in
//! blocks of 64** with the Rice parameter chosen per block (a short downhill search on the
//! exact cost; a block of zeros costs 6 bits in total). On the generator's data that comes
//! within about 0.3 bit of the residuals' empirical entropy, where byte varints would spend
//! 8 or 16 bits on a residual worth 7–10, and it decodes with one `trailing_zeros` and a few
//! shifts per value. Large quotients escape to an explicit bit length, so a 2 kW step costs
//! ~30 bits instead of a long unary run.
//!
//! Columns that are not decimal fall back to Gorilla-style XOR-with-previous coding of the raw
//! bits, or to plain 8-byte bits when that is smaller; each column takes whichever encoding is
//! smallest. Finally the body is zstd-compressed (level 3) only if that makes it smaller:
//! Rice-coded noise does not compress further, but constant or periodic data does.
//!
//! Measured on `gen_readings.py` data (3 devices × 3,600-point chunks, 4 fields): about
//! 3.7 bytes per reading at 1 Hz and 4.0 at 0.1 Hz, i.e. 7–10 bits per value; decoding runs
//! at roughly 100 million values per second (release build).
//!
//! Columns are separate length-prefixed sections, so a reader that needs one quantity could
//! skip the others without decoding their values.

use std::io::Read;

use wattline_domain::{Point, Quantity, TsMs, Values};

/// The format version this build writes and reads (first byte of every chunk).
pub const FORMAT_VERSION: u8 = 1;

/// Most points one chunk may hold. [`encode_points`] refuses more; [`decode_points`] rejects
/// chunks that declare more, before allocating anything.
pub const MAX_POINTS: usize = 1_000_000;

const FLAG_ZSTD: u8 = 0x01;
const ZSTD_LEVEL: i32 = 3;
/// Bodies smaller than this are not worth a zstd attempt.
const ZSTD_MIN_BODY: usize = 256;
const CHECKSUM_LEN: usize = 4;
const QUANTITY_BITS: u16 = (1 << Quantity::COUNT) - 1;

const COL_DECIMAL: u8 = 0;
const COL_XOR: u8 = 1;
const COL_RAW: u8 = 2;

/// Largest decimal scale tried: values with up to 9 decimals are stored as integers.
const MAX_SCALE: usize = 9;
const POW10: [f64; MAX_SCALE + 1] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
/// 2^53: integers below this magnitude convert to `f64` exactly.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;
/// Estimated cost of one exception (raw bits, gap varint, placeholder residual), in bits.
const EXCEPTION_COST_BITS: u64 = 80;

/// Residuals per Rice block; each block has its own 6-bit header.
const BLOCK: usize = 64;
const BLOCK_HEADER_BITS: u32 = 6;
/// Block header value marking a block of zero residuals (no further bits).
const ZERO_BLOCK: u64 = 63;
const MAX_RICE_K: u32 = 56;
/// Unary quotients of this size or more are escaped: LIMIT zeros, a 6-bit length, the bits.
const UNARY_LIMIT: u32 = 8;

/// Why a chunk could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("chunk is truncated: {0} is cut off")]
    Truncated(&'static str),
    #[error("unsupported chunk format version {found} (this build reads version {supported})")]
    BadVersion { found: u8, supported: u8 },
    #[error(
        "chunk checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): \
         the chunk is corrupt or truncated"
    )]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("unknown flag bits {0:#04x} in the chunk header")]
    BadFlags(u8),
    #[error("malformed varint in {0}: longer than 10 bytes or beyond 64 bits")]
    BadVarint(&'static str),
    #[error("chunk declares {count} points, more than the limit of {max}")]
    TooManyPoints { count: u64, max: usize },
    #[error("chunk declares {count} points, but its {body_len}-byte body cannot hold that many")]
    BodyTooShort { count: usize, body_len: usize },
    #[error("length mismatch in {what}: expected {expected}, found {found}")]
    LengthMismatch {
        what: &'static str,
        expected: u64,
        found: u64,
    },
    #[error("invalid {what}: {value}")]
    Invalid { what: &'static str, value: u64 },
    #[error("{count} unexpected trailing byte(s) after {what}")]
    TrailingBytes { what: &'static str, count: usize },
    #[error("non-zero padding bits at the end of {0}")]
    BadPadding(&'static str),
    #[error("zstd decompression of the chunk body failed: {0}")]
    Decompress(#[source] std::io::Error),
}

type Result<T, E = CodecError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Encoding

/// Encodes one series' points, which must be sorted by strictly ascending timestamp.
///
/// # Panics
///
/// When given more than [`MAX_POINTS`] points: such a chunk could not be decoded again.
pub fn encode_points(points: &[Point]) -> Vec<u8> {
    debug_assert!(
        points.windows(2).all(|w| w[0].ts < w[1].ts),
        "encode_points needs strictly ascending timestamps"
    );
    assert!(
        points.len() <= MAX_POINTS,
        "a chunk holds at most {MAX_POINTS} points, got {}",
        points.len()
    );
    let mut body = Vec::new();
    encode_body(points, &mut body);

    let mut out = Vec::with_capacity(body.len() + 24);
    out.push(FORMAT_VERSION);
    let compressed = (body.len() >= ZSTD_MIN_BODY && body.len() <= max_zstd_body(points.len()))
        .then(|| zstd_compress(&body))
        .flatten()
        .filter(|c| c.len() + varint_len(body.len() as u64) < body.len());
    match compressed {
        Some(c) => {
            out.push(FLAG_ZSTD);
            put_varint(&mut out, points.len() as u64);
            put_varint(&mut out, body.len() as u64);
            out.extend_from_slice(&c);
        }
        None => {
            out.push(0);
            put_varint(&mut out, points.len() as u64);
            out.extend_from_slice(&body);
        }
    }
    let sum = checksum(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Compresses a chunk body with this thread's zstd context. A fresh context per chunk
/// (`zstd::bulk::compress`) allocates and clears its tables every time, which cost more than
/// compressing a typical chunk; the output is the same either way.
fn zstd_compress(body: &[u8]) -> Option<Vec<u8>> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()?);
        }
        c.as_mut()?.compress(body).ok()
    })
}

/// Upper bound for a zstd-compressed body's declared size: the encoder never compresses a
/// larger body, so the decoder can refuse (zip-bomb) declarations above it.
fn max_zstd_body(n: usize) -> usize {
    1024 + n * 128
}

fn encode_body(points: &[Point], out: &mut Vec<u8>) {
    if points.is_empty() {
        return;
    }
    let ts: Vec<i64> = points.iter().map(|p| p.ts.0).collect();
    let (pred, bits) = encode_ints(&ts, &[]);
    out.push(pred as u8);
    put_section(out, &bits);

    let mut runs: Vec<(u16, usize)> = Vec::new();
    for p in points {
        let mask = p.values.mask();
        debug_assert!(mask & !QUANTITY_BITS == 0);
        match runs.last_mut() {
            Some((m, len)) if *m == mask => *len += 1,
            _ => runs.push((mask, 1)),
        }
    }
    put_varint(out, runs.len() as u64);
    let mut union = 0u16;
    for &(mask, len) in &runs {
        put_varint(out, u64::from(mask));
        put_varint(out, len as u64);
        union |= mask;
    }

    for q in Quantity::ALL {
        if union & (1 << q.index()) != 0 {
            let column: Vec<f64> = points.iter().filter_map(|p| p.values.get(q)).collect();
            encode_column(&column, out);
        }
    }
}

fn put_section(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Writes the smallest of the decimal, XOR and raw encodings of one column. XOR is not tried
/// when the decimal form has no exceptions and takes at most 2 bytes a value: XOR needs a
/// value to repeat exactly to go below that, and repeats cost the decimal form almost nothing.
fn encode_column(values: &[f64], out: &mut Vec<u8>) {
    let raw_len = 1 + 8 * values.len();
    let mut best = encode_decimal_column(values);
    let clean = best.as_ref().is_some_and(|(bytes, exceptions)| {
        *exceptions == 0 && bytes.len() <= 16 + 2 * values.len()
    });
    if !clean {
        let xor = encode_xor_column(values);
        if best.as_ref().is_none_or(|(b, _)| xor.len() < b.len()) {
            best = Some((xor, 0));
        }
    }
    match best {
        Some((b, _)) if b.len() <= raw_len => out.extend_from_slice(&b),
        _ => {
            out.push(COL_RAW);
            for v in values {
                out.extend_from_slice(&v.to_bits().to_le_bytes());
            }
        }
    }
}

/// `v` as an integer at decimal scale `k`, when that reproduces `v` bit for bit.
#[inline]
fn scaled(v: f64, k: usize) -> Option<i64> {
    let p = POW10[k];
    let x = v * p;
    // `is_finite` rejects NaN and infinities.
    if !x.is_finite() || x.abs() >= EXACT_INT {
        return None;
    }
    let i = x.round() as i64;
    ((i as f64 / p).to_bits() == v.to_bits()).then_some(i)
}

/// The smallest scale at which `v` is decimal.
fn min_scale(v: f64) -> Option<usize> {
    (0..=MAX_SCALE).find(|&k| near_integer(v * POW10[k]) && scaled(v, k).is_some())
}

/// False when `x` (= `v` × 10^k, rounded) is clearly no integer, so that [`scaled`] must
/// fail: the cheap test that spares `min_scale` a rounding and a division for every scale
/// below a value's own (six of them for a meter's kWh counter).
///
/// If `scaled` succeeds with `i = round(x)`, then `i / 10^k` rounds to `v`, so `x` lies within
/// about two units of roundoff (2 × 2⁻⁵³ relative) of `i`; this accepts anything within 2⁻⁵⁰
/// relative of the nearest integer. Adding and subtracting 1.5 × 2⁵² rounds to the nearest
/// integer (ties to even, which is as near) exactly while |x| < 2⁵¹; beyond that, and for
/// NaN and infinities, it accepts and leaves the decision to `scaled`.
#[inline]
fn near_integer(x: f64) -> bool {
    const ROUNDER: f64 = 6_755_399_441_055_744.0; // 1.5 × 2^52
    const LIMIT: f64 = 2_251_799_813_685_248.0; // 2^51
    if x.is_nan() || x.abs() >= LIMIT {
        return true;
    }
    let nearest = (x + ROUNDER) - ROUNDER;
    (x - nearest).abs() <= x.abs() * (1.0 / 1_125_899_906_842_624.0) // 2^-50
}

/// The decimal encoding of a column and its number of exceptions, unless more than half the
/// values would be exceptions.
fn encode_decimal_column(values: &[f64]) -> Option<(Vec<u8>, usize)> {
    let m = values.len() as u64;
    // hist[k]: values whose smallest scale is k; hist[MAX_SCALE + 1]: never decimal.
    let mut hist = [0u64; MAX_SCALE + 2];
    for &v in values {
        hist[min_scale(v).unwrap_or(MAX_SCALE + 1)] += 1;
    }
    let mut above = m;
    let mut choice: Option<(u64, usize)> = None;
    for (k, count) in hist.iter().enumerate().take(MAX_SCALE + 1) {
        above -= count;
        if above * 2 > m {
            continue;
        }
        // log2(10) ≈ 3.32 bits per value for each extra digit.
        let cost = above * EXCEPTION_COST_BITS + m * 332 * k as u64 / 100;
        if choice.is_none_or(|(c, _)| cost < c) {
            choice = Some((cost, k));
        }
    }
    let (_, k) = choice?;

    let mut ints = Vec::with_capacity(values.len());
    let mut exceptions = Vec::new();
    for (j, &v) in values.iter().enumerate() {
        match scaled(v, k) {
            Some(i) => ints.push(i),
            None => {
                exceptions.push(j);
                ints.push(0);
            }
        }
    }
    let (pred, bits) = encode_ints(&ints, &exceptions);

    let mut out = Vec::with_capacity(bits.len() + 8 + exceptions.len() * 10);
    out.push(COL_DECIMAL);
    out.push(k as u8);
    out.push(pred as u8);
    put_varint(&mut out, exceptions.len() as u64);
    let mut next = 0;
    for &j in &exceptions {
        put_varint(&mut out, (j - next) as u64);
        out.extend_from_slice(&values[j].to_bits().to_le_bytes());
        next = j + 1;
    }
    put_section(&mut out, &bits);
    Some((out, exceptions.len()))
}

fn encode_xor_column(values: &[f64]) -> Vec<u8> {
    let mut w = BitWriter::with_capacity(values.len() * 4);
    let mut prev = 0u64;
    // (leading zeros, trailing zeros) of the current window; None before the first one.
    let mut window: Option<(u32, u32)> = None;
    for (j, v) in values.iter().enumerate() {
        let bits = v.to_bits();
        if j == 0 {
            w.put_long(bits, 64);
            prev = bits;
            continue;
        }
        let x = bits ^ prev;
        prev = bits;
        if x == 0 {
            w.put(0, 1);
            continue;
        }
        let (lz, tz) = (x.leading_zeros(), x.trailing_zeros());
        let len = 64 - lz - tz;
        match window {
            // Reuse the window unless a fresh one saves more than its 12-bit description.
            Some((wl, wt)) if lz >= wl && tz >= wt && 64 - wl - wt <= len + 12 => {
                w.put(0b01, 2);
                w.put_long(x >> wt, 64 - wl - wt);
            }
            _ => {
                w.put(0b11, 2);
                w.put(u64::from(lz), 6);
                w.put(u64::from(len - 1), 6);
                w.put_long(x >> tz, len);
                window = Some((lz, tz));
            }
        }
    }
    let bits = w.finish();
    let mut out = Vec::with_capacity(bits.len() + 6);
    out.push(COL_XOR);
    put_section(&mut out, &bits);
    out
}

/// How an integer is predicted from the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Predictor {
    /// The previous value: for values that wander (power, current).
    Delta = 1,
    /// The previous value plus the previous step: for counters and regular timestamps.
    DeltaOfDelta = 2,
    /// The mean of the last four values: for noise around a slowly moving level (voltage).
    Mean4 = 3,
}

impl Predictor {
    const ALL: [Predictor; 3] = [Predictor::Delta, Predictor::DeltaOfDelta, Predictor::Mean4];

    fn from_u8(b: u8) -> Result<Self> {
        match b {
            1 => Ok(Predictor::Delta),
            2 => Ok(Predictor::DeltaOfDelta),
            3 => Ok(Predictor::Mean4),
            _ => Err(CodecError::Invalid {
                what: "predictor",
                value: u64::from(b),
            }),
        }
    }
}

/// What the predictors know: the last four values (newest first) and the last step. Before
/// the first value everything is 0; the first value fills all four slots. Arithmetic wraps,
/// so predictions of extreme values are poor but never wrong.
#[derive(Default)]
struct History {
    last: [i64; 4],
    step: i64,
    seen: bool,
}

impl History {
    #[inline(always)]
    fn delta(&self) -> i64 {
        self.last[0]
    }

    #[inline(always)]
    fn delta_of_delta(&self) -> i64 {
        self.last[0].wrapping_add(self.step)
    }

    #[inline(always)]
    fn mean4(&self) -> i64 {
        let [a, b, c, d] = self.last;
        a.wrapping_add(b).wrapping_add(c).wrapping_add(d) >> 2
    }

    #[inline(always)]
    fn guess(&self, pred: Predictor) -> i64 {
        match pred {
            Predictor::Delta => self.delta(),
            Predictor::DeltaOfDelta => self.delta_of_delta(),
            Predictor::Mean4 => self.mean4(),
        }
    }

    #[inline(always)]
    fn push(&mut self, x: i64) {
        if self.seen {
            self.step = x.wrapping_sub(self.last[0]);
            self.last = [x, self.last[0], self.last[1], self.last[2]];
        } else {
            self.seen = true;
            self.last = [x; 4];
        }
    }
}

/// Residuals of `ints` under `pred`. At the (ascending) `exceptions` the integer is replaced
/// by its prediction (residual 0), so exceptions do not disturb their neighbours' residuals.
fn residuals(ints: &[i64], exceptions: &[usize], pred: Predictor) -> Vec<u64> {
    let mut out = Vec::with_capacity(ints.len());
    let mut exc = exceptions.iter().copied().peekable();
    let mut h = History::default();
    for (j, &x) in ints.iter().enumerate() {
        let guess = h.guess(pred);
        let actual = if exc.next_if_eq(&j).is_some() {
            guess
        } else {
            x
        };
        out.push(zigzag(actual.wrapping_sub(guess)));
        h.push(actual);
    }
    out
}

/// The better predictor for `ints` and the Rice stream of its residuals.
fn encode_ints(ints: &[i64], exceptions: &[usize]) -> (Predictor, Vec<u8>) {
    let mut best: Option<(u64, Predictor, Vec<u64>, Vec<u8>)> = None;
    for pred in Predictor::ALL {
        let res = residuals(ints, exceptions, pred);
        let (bits, headers) = rice_plan(&res);
        if best.as_ref().is_none_or(|b| bits < b.0) {
            best = Some((bits, pred, res, headers));
        }
    }
    let (bits, pred, res, headers) = best.expect("three predictors were tried");
    let mut w = BitWriter::with_capacity(bits.div_ceil(8) as usize);
    rice_encode(&res, &headers, &mut w);
    (pred, w.finish())
}

#[inline]
fn rice_len(x: u64, k: u32) -> u64 {
    let q = x >> k;
    if q < u64::from(UNARY_LIMIT) {
        q + 1 + u64::from(k)
    } else {
        u64::from(UNARY_LIMIT + 6 + (63 - x.leading_zeros()))
    }
}

/// The block header (Rice `k`, or [`ZERO_BLOCK`]) with the fewest bits, and that bit count
/// (header included).
fn block_choice(block: &[u64]) -> (u8, u64) {
    let (mut max, mut sum) = (0u64, 0u64);
    for &x in block {
        max = max.max(x);
        sum = sum.saturating_add(x.min(1 << 48));
    }
    if max == 0 {
        return (ZERO_BLOCK as u8, u64::from(BLOCK_HEADER_BITS));
    }
    let cost = |k: u32| -> u64 { block.iter().map(|&x| rice_len(x, k)).sum() };
    let k_max = (64 - max.leading_zeros()).min(MAX_RICE_K);
    let (k, bits) = if block.len() <= 16 {
        // Few values: one outlier can make the cost bumpy, so try every k.
        (0..=k_max)
            .map(|k| (k, cost(k)))
            .min_by_key(|&(_, bits)| bits)
            .expect("k = 0 is always tried")
    } else {
        // The cost is close to convex in k once there are enough values: start near log2 of
        // the mean without the largest value (near the optimum for geometric-like residuals,
        // and not thrown off by the first value of a stream or a load step) and walk downhill.
        let rest = sum - max.min(1 << 48);
        let mean = rest / (block.len() as u64 - 1);
        let mut k = (64 - mean.leading_zeros()).saturating_sub(1).min(k_max);
        let mut bits = cost(k);
        let mut moved_down = false;
        while k > 0 {
            let lower = cost(k - 1);
            if lower >= bits {
                break;
            }
            (k, bits, moved_down) = (k - 1, lower, true);
        }
        while !moved_down && k < k_max {
            let higher = cost(k + 1);
            if higher >= bits {
                break;
            }
            (k, bits) = (k + 1, higher);
        }
        (k, bits)
    };
    (k as u8, bits + u64::from(BLOCK_HEADER_BITS))
}

/// The header of every block of `res` and the total size in bits.
fn rice_plan(res: &[u64]) -> (u64, Vec<u8>) {
    let mut headers = Vec::with_capacity(res.len().div_ceil(BLOCK));
    let mut total = 0;
    for block in res.chunks(BLOCK) {
        let (header, bits) = block_choice(block);
        headers.push(header);
        total += bits;
    }
    (total, headers)
}

fn rice_encode(res: &[u64], headers: &[u8], w: &mut BitWriter) {
    for (block, &header) in res.chunks(BLOCK).zip(headers) {
        w.put(u64::from(header), BLOCK_HEADER_BITS);
        if u64::from(header) == ZERO_BLOCK {
            continue;
        }
        let k = u32::from(header);
        for &x in block {
            let q = x >> k;
            if q < u64::from(UNARY_LIMIT) {
                w.put(1 << q, q as u32 + 1);
                w.put(x & low_mask(k), k);
            } else {
                let top = 63 - x.leading_zeros();
                w.put(0, UNARY_LIMIT);
                w.put(u64::from(top), 6);
                w.put_long(x & low_mask(top), top);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Decodes a chunk written by [`encode_points`].
pub fn decode_points(bytes: &[u8]) -> Result<Vec<Point>, CodecError> {
    let &version = bytes
        .first()
        .ok_or(CodecError::Truncated("format version"))?;
    if version != FORMAT_VERSION {
        return Err(CodecError::BadVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if bytes.len() < 3 + CHECKSUM_LEN {
        return Err(CodecError::Truncated("chunk header and checksum"));
    }
    let (content, tail) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let computed = checksum(content);
    if stored != computed {
        return Err(CodecError::ChecksumMismatch { stored, computed });
    }

    let mut r = ByteReader::new(&content[1..]);
    let flags = r.u8("flags")?;
    if flags & !FLAG_ZSTD != 0 {
        return Err(CodecError::BadFlags(flags));
    }
    let count = r.varint("point count")?;
    if count > MAX_POINTS as u64 {
        return Err(CodecError::TooManyPoints {
            count,
            max: MAX_POINTS,
        });
    }
    let n = count as usize;
    if flags & FLAG_ZSTD == 0 {
        return decode_body(r.rest(), n);
    }
    let raw_len = r.varint("uncompressed body length")?;
    if raw_len > max_zstd_body(n) as u64 {
        return Err(CodecError::Invalid {
            what: "uncompressed body length (too large for the point count)",
            value: raw_len,
        });
    }
    let mut decoder =
        zstd::stream::read::Decoder::with_buffer(r.rest()).map_err(CodecError::Decompress)?;
    let mut body = Vec::new();
    (&mut decoder)
        .take(raw_len + 1)
        .read_to_end(&mut body)
        .map_err(CodecError::Decompress)?;
    if body.len() as u64 != raw_len {
        return Err(CodecError::LengthMismatch {
            what: "uncompressed body length",
            expected: raw_len,
            found: body.len() as u64,
        });
    }
    decode_body(&body, n)
}

fn decode_body(body: &[u8], n: usize) -> Result<Vec<Point>> {
    if n == 0 {
        return match body.len() {
            0 => Ok(Vec::new()),
            count => Err(CodecError::TrailingBytes {
                what: "an empty chunk",
                count,
            }),
        };
    }
    // Every 64 timestamps take at least a 6-bit block header: refuse counts the body cannot
    // hold before allocating for them.
    if (n.div_ceil(BLOCK) as u64) * u64::from(BLOCK_HEADER_BITS) > body.len() as u64 * 8 {
        return Err(CodecError::BodyTooShort {
            count: n,
            body_len: body.len(),
        });
    }
    let mut r = ByteReader::new(body);

    let pred = Predictor::from_u8(r.u8("timestamp predictor")?)?;
    let section = r.section("timestamps")?;
    check_rice_room(section, n, "timestamps")?;
    let mut ts = Vec::with_capacity(n);
    decode_ints(section, n, pred, "timestamps", |x| ts.push(x))?;

    let run_count = r.varint("mask run count")?;
    // Each run takes at least two bytes.
    if run_count == 0 || run_count > n as u64 || run_count > (r.rest().len() / 2) as u64 {
        return Err(CodecError::Invalid {
            what: "mask run count",
            value: run_count,
        });
    }
    let mut runs = Vec::with_capacity(run_count as usize);
    let mut present = [0usize; Quantity::COUNT];
    let mut total = 0usize;
    for _ in 0..run_count {
        let mask = r.varint("presence mask")?;
        if mask > u64::from(QUANTITY_BITS) {
            return Err(CodecError::Invalid {
                what: "presence mask",
                value: mask,
            });
        }
        let len = r.varint("mask run length")?;
        if len == 0 || len > (n - total) as u64 {
            return Err(CodecError::Invalid {
                what: "mask run length",
                value: len,
            });
        }
        let (mask, len) = (mask as u16, len as usize);
        total += len;
        for (q, count) in present.iter_mut().enumerate() {
            if mask & (1 << q) != 0 {
                *count += len;
            }
        }
        runs.push((mask, len));
    }
    if total != n {
        return Err(CodecError::LengthMismatch {
            what: "mask runs (points covered)",
            expected: n as u64,
            found: total as u64,
        });
    }

    let mut columns: [Vec<f64>; Quantity::COUNT] = Default::default();
    for (q, &m) in present.iter().enumerate() {
        if m > 0 {
            columns[q] = decode_column(&mut r, m)?;
        }
    }
    if !r.rest().is_empty() {
        return Err(CodecError::TrailingBytes {
            what: "the last column",
            count: r.rest().len(),
        });
    }

    // Column by column: every point gets its timestamp, then each run's present columns are
    // laid over its points, slice against slice.
    let mut points: Vec<Point> = ts
        .into_iter()
        .map(|t| Point {
            ts: TsMs(t),
            values: Values::new(),
        })
        .collect();
    let mut cursor = [0usize; Quantity::COUNT];
    let mut start = 0;
    for (mask, len) in runs {
        let run = &mut points[start..start + len];
        start += len;
        for q in Quantity::ALL {
            let i = q.index();
            if mask & (1 << i) != 0 {
                let column = &columns[i][cursor[i]..cursor[i] + len];
                cursor[i] += len;
                for (p, &v) in run.iter_mut().zip(column) {
                    p.values.set(q, v);
                }
            }
        }
    }
    Ok(points)
}

fn decode_column(r: &mut ByteReader<'_>, m: usize) -> Result<Vec<f64>> {
    match r.u8("column kind")? {
        COL_DECIMAL => {
            let k = r.u8("decimal scale")?;
            if usize::from(k) > MAX_SCALE {
                return Err(CodecError::Invalid {
                    what: "decimal scale",
                    value: u64::from(k),
                });
            }
            let pred = Predictor::from_u8(r.u8("column predictor")?)?;
            let exc_count = r.varint("exception count")?;
            if exc_count > m as u64 || exc_count > (r.rest().len() / 9) as u64 {
                return Err(CodecError::Invalid {
                    what: "exception count",
                    value: exc_count,
                });
            }
            let mut exceptions = Vec::with_capacity(exc_count as usize);
            let mut next = 0u64;
            for _ in 0..exc_count {
                let idx = next.saturating_add(r.varint("exception position")?);
                if idx >= m as u64 {
                    return Err(CodecError::Invalid {
                        what: "exception position",
                        value: idx,
                    });
                }
                exceptions.push((idx as usize, r.u64_le("exception value")?));
                next = idx + 1;
            }
            let section = r.section("decimal column")?;
            check_rice_room(section, m, "decimal column")?;
            let p = POW10[usize::from(k)];
            let mut values = Vec::with_capacity(m);
            decode_ints(section, m, pred, "decimal column", |i| {
                values.push(i as f64 / p)
            })?;
            for (idx, bits) in exceptions {
                values[idx] = f64::from_bits(bits);
            }
            Ok(values)
        }
        COL_XOR => decode_xor(r.section("xor column")?, m),
        COL_RAW => {
            let bytes = r.take(m.saturating_mul(8), "raw column")?;
            Ok(bytes
                .chunks_exact(8)
                .map(|c| {
                    f64::from_bits(u64::from_le_bytes([
                        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
                    ]))
                })
                .collect())
        }
        kind => Err(CodecError::Invalid {
            what: "column kind",
            value: u64::from(kind),
        }),
    }
}

/// Decodes `count` integers predicted by `pred`, handing each to `sink`.
fn decode_ints(
    bytes: &[u8],
    count: usize,
    pred: Predictor,
    what: &'static str,
    sink: impl FnMut(i64),
) -> Result<()> {
    // One monomorphised loop per predictor, so the hot loop does not branch on it.
    match pred {
        Predictor::Delta => decode_predicted(bytes, count, what, sink, History::delta),
        Predictor::DeltaOfDelta => {
            decode_predicted(bytes, count, what, sink, History::delta_of_delta)
        }
        Predictor::Mean4 => decode_predicted(bytes, count, what, sink, History::mean4),
    }
}

#[inline(always)]
fn decode_predicted(
    bytes: &[u8],
    count: usize,
    what: &'static str,
    mut sink: impl FnMut(i64),
    guess: impl Fn(&History) -> i64,
) -> Result<()> {
    let mut h = History::default();
    rice_decode(bytes, count, what, |r| {
        let x = guess(&h).wrapping_add(unzigzag(r));
        h.push(x);
        sink(x);
    })
}

/// Refuses a Rice stream too short to hold `count` values (each block of 64 takes at least
/// its 6-bit header), before anything is allocated for them.
fn check_rice_room(bytes: &[u8], count: usize, what: &'static str) -> Result<()> {
    let min_bits = count.div_ceil(BLOCK) as u64 * u64::from(BLOCK_HEADER_BITS);
    if min_bits > bytes.len() as u64 * 8 {
        return Err(CodecError::Truncated(what));
    }
    Ok(())
}

fn rice_decode(
    bytes: &[u8],
    count: usize,
    what: &'static str,
    mut sink: impl FnMut(u64),
) -> Result<()> {
    let mut r = BitReader::new(bytes, what);
    let mut left = count;
    while left > 0 {
        let len = left.min(BLOCK);
        left -= len;
        let header = r.read(BLOCK_HEADER_BITS)?;
        if header == ZERO_BLOCK {
            for _ in 0..len {
                sink(0);
            }
            continue;
        }
        if header > u64::from(MAX_RICE_K) {
            return Err(CodecError::Invalid {
                what: "Rice block header",
                value: header,
            });
        }
        let k = header as u32;
        let mask = low_mask(k);
        for _ in 0..len {
            sink(r.rice(k, mask)?);
        }
    }
    r.finish()
}

fn decode_xor(bytes: &[u8], m: usize) -> Result<Vec<f64>> {
    const WHAT: &str = "xor column";
    let mut r = BitReader::new(bytes, WHAT);
    let mut values = Vec::with_capacity(m.min(bytes.len() * 8));
    let mut prev = r.read_long(64)?;
    values.push(f64::from_bits(prev));
    let mut window: Option<(u32, u32)> = None; // (meaningful length, trailing zeros)
    for _ in 1..m {
        if r.read(1)? == 1 {
            let (len, tz) = if r.read(1)? == 0 {
                window.ok_or(CodecError::Invalid {
                    what: "xor window reuse before any window",
                    value: 0,
                })?
            } else {
                let lz = r.read(6)? as u32;
                let len = r.read(6)? as u32 + 1;
                if lz + len > 64 {
                    return Err(CodecError::Invalid {
                        what: "xor window (leading zeros + length)",
                        value: u64::from(lz + len),
                    });
                }
                let w = (len, 64 - lz - len);
                window = Some(w);
                w
            };
            prev ^= r.read_long(len)? << tz;
        }
        values.push(f64::from_bits(prev));
    }
    r.finish()?;
    Ok(values)
}

// ---------------------------------------------------------------------------------------------
// Primitives

#[inline]
fn zigzag(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

#[inline]
fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

#[inline]
fn low_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// A 32-bit checksum of `data`: a multiply–xorshift chain over 8-byte words (each step is a
/// bijection of the state, so any change within one word always changes the state), folded
/// at the end.
fn checksum(data: &[u8]) -> u32 {
    const K1: u64 = 0x9E37_79B9_7F4A_7C15;
    const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    let mut h = (data.len() as u64).wrapping_mul(K2) ^ 0x5741_5454_4C49_4E45;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        h = (h ^ w).wrapping_mul(K1);
        h ^= h >> 29;
    }
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    h = (h ^ u64::from_le_bytes(last)).wrapping_mul(K1);
    h ^= h >> 32;
    h = h.wrapping_mul(K2);
    h ^= h >> 29;
    (h ^ (h >> 32)) as u32
}

/// Appends bits least-significant first.
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    fn with_capacity(bytes: usize) -> Self {
        BitWriter {
            out: Vec::with_capacity(bytes),
            acc: 0,
            n: 0,
        }
    }

    /// Writes the low `bits` (at most 56) bits of `v`; the others must be zero.
    #[inline]
    fn put(&mut self, v: u64, bits: u32) {
        debug_assert!(bits <= 56 && v & !low_mask(bits) == 0);
        self.acc |= v << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// Writes the low `bits` (at most 64) bits of `v`; the others must be zero.
    fn put_long(&mut self, v: u64, bits: u32) {
        if bits <= 56 {
            self.put(v, bits);
        } else {
            self.put(v & low_mask(32), 32);
            self.put(v >> 32, bits - 32);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// Reads bits least-significant first; running out of bits is [`CodecError::Truncated`].
struct BitReader<'a> {
    data: &'a [u8],
    /// Next byte not yet counted in `avail`.
    pos: usize,
    /// Unread bits, lowest first; bits above `avail` are zero or copies of the bytes from
    /// `pos` on (the word-at-a-time refill may load them early).
    buf: u64,
    avail: u32,
    what: &'static str,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], what: &'static str) -> Self {
        BitReader {
            data,
            pos: 0,
            buf: 0,
            avail: 0,
            what,
        }
    }

    /// Tops `buf` up to at least 56 bits, or to the end of the data. Needs `avail <= 55`
    /// to make progress on the fast path; callers only refill when short of a ≤56-bit read.
    #[inline]
    fn refill(&mut self) {
        if let Some(w) = self.data.get(self.pos..self.pos + 8) {
            let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            self.buf |= w << self.avail;
            let take = (63 - self.avail) / 8;
            self.pos += take as usize;
            self.avail += take * 8;
        } else {
            while self.avail <= 56 {
                let Some(&b) = self.data.get(self.pos) else {
                    break;
                };
                self.buf |= u64::from(b) << self.avail;
                self.pos += 1;
                self.avail += 8;
            }
        }
    }

    /// Reads `bits` (at most 56) bits.
    #[inline]
    fn read(&mut self, bits: u32) -> Result<u64> {
        if self.avail < bits {
            self.refill();
            if self.avail < bits {
                return Err(CodecError::Truncated(self.what));
            }
        }
        let v = self.buf & low_mask(bits);
        self.buf >>= bits;
        self.avail -= bits;
        Ok(v)
    }

    /// Reads `bits` (at most 64) bits.
    fn read_long(&mut self, bits: u32) -> Result<u64> {
        if bits <= 56 {
            self.read(bits)
        } else {
            let lo = self.read(32)?;
            Ok(lo | self.read(bits - 32)? << 32)
        }
    }

    /// Reads one Rice-coded value with parameter `k` (at most [`MAX_RICE_K`]); `mask` is
    /// `low_mask(k)`.
    #[inline(always)]
    fn rice(&mut self, k: u32, mask: u64) -> Result<u64> {
        if self.avail < 56 {
            self.refill();
        }
        let q = self.buf.trailing_zeros();
        let len = q + 1 + k;
        if q < UNARY_LIMIT && len <= self.avail {
            let rest = self.buf >> (q + 1);
            // Two shifts: `len` can be 64 when the buffer is full.
            self.buf = rest >> k;
            self.avail -= len;
            return Ok(u64::from(q) << k | (rest & mask));
        }
        self.rice_slow(k)
    }

    /// The escape code, and running out of bits.
    #[cold]
    #[inline(never)]
    fn rice_slow(&mut self, k: u32) -> Result<u64> {
        let q = self.buf.trailing_zeros();
        if q < UNARY_LIMIT {
            // Bits above `avail` are zero here: a refill that leaves fewer than 56 bits has
            // reached the end of the data.
            if q >= self.avail {
                return Err(CodecError::Truncated(self.what));
            }
            self.buf >>= q + 1;
            self.avail -= q + 1;
            Ok(u64::from(q) << k | self.read(k)?)
        } else {
            if self.avail < UNARY_LIMIT {
                return Err(CodecError::Truncated(self.what));
            }
            self.buf >>= UNARY_LIMIT;
            self.avail -= UNARY_LIMIT;
            let top = self.read(6)? as u32;
            Ok(1 << top | self.read_long(top)?)
        }
    }

    /// Checks that exactly the whole input was used, up to zero padding in the last byte.
    fn finish(mut self) -> Result<()> {
        self.refill();
        if self.pos != self.data.len() || self.avail >= 8 {
            let used = (self.pos * 8 - self.avail as usize).div_ceil(8);
            return Err(CodecError::TrailingBytes {
                what: self.what,
                count: self.data.len() - used,
            });
        }
        if self.buf != 0 {
            return Err(CodecError::BadPadding(self.what));
        }
        Ok(())
    }
}

struct ByteReader<'a> {
    data: &'a [u8],
}

impl<'a> ByteReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        ByteReader { data }
    }

    fn rest(&self) -> &'a [u8] {
        self.data
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if n > self.data.len() {
            return Err(CodecError::Truncated(what));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u64_le(&mut self, what: &'static str) -> Result<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }

    fn varint(&mut self, what: &'static str) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8(what)?;
            if i == 9 && b > 1 {
                return Err(CodecError::BadVarint(what));
            }
            v |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::BadVarint(what))
    }

    /// A length-prefixed section.
    fn section(&mut self, what: &'static str) -> Result<&'a [u8]> {
        let len = self.varint(what)?;
        if len > self.data.len() as u64 {
            return Err(CodecError::Truncated(what));
        }
        self.take(len as usize, what)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;
    use std::time::Instant;

    use proptest::prelude::*;

    use super::*;

    /// A point's exact content: timestamp, mask and the bits of every present value.
    fn exact(points: &[Point]) -> Vec<(i64, u16, Vec<u64>)> {
        points
            .iter()
            .map(|p| {
                let bits = p.values.iter().map(|(_, v)| v.to_bits()).collect();
                (p.ts.0, p.values.mask(), bits)
            })
            .collect()
    }

    fn assert_round_trip(points: &[Point]) -> Vec<u8> {
        let bytes = encode_points(points);
        let back = decode_points(&bytes).unwrap_or_else(|e| panic!("decode failed: {e}"));
        assert_eq!(exact(&back), exact(points));
        bytes
    }

    fn point(ts: i64, values: &[(Quantity, f64)]) -> Point {
        let mut v = Values::new();
        for &(q, x) in values {
            v.set(q, x);
        }
        Point {
            ts: TsMs(ts),
            values: v,
        }
    }

    /// Recomputes the checksum after the content was changed on purpose.
    fn reseal(mut content: Vec<u8>) -> Vec<u8> {
        let sum = checksum(&content);
        content.extend_from_slice(&sum.to_le_bytes());
        content
    }

    fn unseal(bytes: &[u8]) -> Vec<u8> {
        bytes[..bytes.len() - CHECKSUM_LEN].to_vec()
    }

    /// Parses `v` from its text the way ingest does, so values are shortest-decimal doubles.
    fn fixed(v: f64, decimals: usize) -> f64 {
        format!("{v:.decimals$}").parse().unwrap()
    }

    /// A deterministic household-meter model (no Python needed): standby wander, a fridge
    /// cycle, appliance events, voltage drift and load drop, and a cumulative Wh counter,
    /// printed with the generator's digits (V .2, A .3, W .1, Wh .3).
    fn synthetic(n: usize, step_ms: i64, seed: u64) -> Vec<Point> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut uniform = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let gauss = move |u: &mut dyn FnMut() -> f64| {
            let (a, b) = (u().max(1e-12), u());
            (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
        };
        let dt = step_ms as f64 / 1000.0;
        let (mut wander, mut energy) = (0.0, 1e6 + 3e7 * uniform());
        let base = 40.0 + 140.0 * uniform();
        let v_off = 8.0 * uniform() - 4.0;
        let mut appliance_until = 0.0;
        let mut appliance_w = 0.0;
        let t0 = 1_767_632_400_000i64;
        (0..n)
            .map(|j| {
                let t = j as f64 * dt;
                wander += 0.3 * gauss(&mut uniform) - 0.002 * wander;
                let mut p = base + wander;
                if (t % 3000.0) < 1200.0 {
                    p += 120.0;
                }
                if t >= appliance_until && uniform() < 0.002 * dt {
                    appliance_until = t + 60.0 + 900.0 * uniform();
                    appliance_w = 700.0 + 2300.0 * uniform();
                }
                if t < appliance_until {
                    p += appliance_w;
                }
                let p =
                    (p * (1.0 + 0.01 * gauss(&mut uniform)) + 1.5 * gauss(&mut uniform)).max(0.0);
                let v = 230.0 + v_off + 0.25 * gauss(&mut uniform);
                let pf = 0.90 + 0.09 * (p / 2000.0).min(1.0);
                let i = p / (v * pf);
                let v = v - i * 0.15;
                energy += p * dt / 3600.0;
                point(
                    t0 + j as i64 * step_ms,
                    &[
                        (Quantity::Voltage, fixed(v, 2)),
                        (Quantity::Current, fixed(i, 3)),
                        (Quantity::Power, fixed(p, 1)),
                        (Quantity::Energy, fixed(energy, 3)),
                    ],
                )
            })
            .collect()
    }

    /// Series from `gen_readings.py` (one per device), or None when the script or Python is
    /// missing. `WATTLINE_GEN_READINGS` overrides the script's path.
    fn generator(rate: &str, duration: &str) -> Option<Vec<Vec<Point>>> {
        // ../shared beside the repository; WATTLINE_GEN_READINGS overrides the script.
        let script = std::env::var("WATTLINE_GEN_READINGS").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/bench/gen_readings.py"
            )
            .to_string()
        });
        if !Path::new(&script).exists() {
            assert!(std::env::var("CI").is_err(), "{script} is missing in CI");
            eprintln!("!!! SKIPPING codec generator test: {script} not found");
            return None;
        }
        let args = [
            script.as_str(),
            "--devices",
            "3",
            "--duration",
            duration,
            "--rate",
            rate,
            "--format",
            "csv",
            "--ts-unit",
            "ms",
            "--order",
            "device",
        ];
        let out = match Command::new("python3").args(args).output() {
            Ok(out) if out.status.success() => out,
            other => {
                eprintln!("codec: running {script} failed ({other:?}); skipping");
                return None;
            }
        };
        let text = String::from_utf8(out.stdout).unwrap();
        let mut series: Vec<(String, Vec<Point>)> = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 6, "unexpected CSV line {line:?}");
            let num = |i: usize| f[i].parse::<f64>().unwrap();
            let p = point(
                f[1].parse().unwrap(),
                &[
                    (Quantity::Voltage, num(2)),
                    (Quantity::Current, num(3)),
                    (Quantity::Power, num(4)),
                    (Quantity::Energy, num(5)),
                ],
            );
            match series.last_mut() {
                Some((d, pts)) if d == f[0] => pts.push(p),
                _ => series.push((f[0].to_string(), vec![p])),
            }
        }
        Some(series.into_iter().map(|(_, pts)| pts).collect())
    }

    /// Encodes every series (checking the round trip) and returns bytes per reading.
    fn bytes_per_reading(label: &str, series: &[Vec<Point>]) -> f64 {
        let (mut bytes, mut readings) = (0, 0);
        for pts in series {
            bytes += assert_round_trip(pts).len();
            readings += pts.len();
        }
        let per = bytes as f64 / readings as f64;
        println!(
            "codec: {label}: {} chunk(s), {readings} readings, {bytes} bytes, \
             {per:.3} bytes/reading (4 fields)",
            series.len()
        );
        per
    }

    #[test]
    fn empty_chunk_round_trips() {
        let bytes = assert_round_trip(&[]);
        assert_eq!(bytes.len(), 3 + CHECKSUM_LEN);
        assert!(decode_points(&bytes).unwrap().is_empty());
    }

    #[test]
    fn special_values_and_extreme_timestamps_round_trip() {
        let odd = [
            -0.0,
            0.0,
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7FF0_0000_0000_0001), // signalling NaN
            f64::from_bits(0xFFF8_DEAD_BEEF_0001), // NaN with a payload
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE / 3.0, // subnormal
            f64::from_bits(1),
            f64::MAX,
            f64::MIN,
            1e300,
            9_007_199_254_740_993.0,
            0.1 + 0.2,
            230.100_006_103_515_62, // a float32 widened to f64
        ];
        let ts = [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX];
        let points: Vec<Point> = ts
            .iter()
            .enumerate()
            .map(|(j, &t)| {
                let values: Vec<(Quantity, f64)> = Quantity::ALL
                    .iter()
                    .enumerate()
                    .map(|(q, &quantity)| (quantity, odd[(j * 3 + q) % odd.len()]))
                    .collect();
                point(t, &values)
            })
            .collect();
        assert_round_trip(&points);
        // One point, and one value per point in turn.
        assert_round_trip(&points[..1]);
        for &v in &odd {
            assert_round_trip(&[point(7, &[(Quantity::Power, v)]), point(8, &[])]);
        }
    }

    #[test]
    fn odd_values_in_a_decimal_column_become_exceptions() {
        let mut points = synthetic(3600, 1000, 7);
        let plain = encode_points(&points).len();
        points[100].values.set(Quantity::Power, -0.0);
        points[2000].values.set(Quantity::Power, f64::NAN);
        points[3000]
            .values
            .set(Quantity::Voltage, 230.100_006_103_515_62);
        let bytes = assert_round_trip(&points);
        // Three exceptions cost a few dozen bytes, not a whole column in raw bits.
        assert!(bytes.len() < plain + 60, "{} vs {plain}", bytes.len());
    }

    #[test]
    fn masks_that_change_round_trip() {
        let mut points = synthetic(1000, 1000, 3);
        for (j, p) in points.iter_mut().enumerate() {
            if j % 7 == 0 {
                let mut v = Values::new();
                for (q, x) in p.values.iter() {
                    if q != Quantity::Current {
                        v.set(q, x);
                    }
                }
                if j % 21 == 0 {
                    v.set(Quantity::Frequency, 50.0 - (j % 5) as f64 / 100.0);
                }
                p.values = v;
            }
            if j % 97 == 0 {
                p.values = Values::new();
            }
        }
        assert_round_trip(&points);
    }

    #[test]
    fn constant_and_irregular_data_round_trip() {
        let constant: Vec<Point> = (0..5000)
            .map(|j| {
                point(
                    j * 10_000,
                    &[(Quantity::Voltage, 230.0), (Quantity::Energy, 5.5)],
                )
            })
            .collect();
        let bytes = assert_round_trip(&constant);
        // Zero blocks: 6 bits per 64 timestamps or values.
        assert!(
            bytes.len() < 500,
            "constant chunk took {} bytes",
            bytes.len()
        );
        // Jittery timestamps, raw float noise (XOR / raw fallback) and large jumps.
        let mut s = 1u64;
        let noisy: Vec<Point> = (0..3000)
            .map(|j| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let jitter = (s >> 60) as i64;
                point(
                    j * 1000 + jitter,
                    &[
                        (Quantity::Power, f64::from_bits(s)),
                        (Quantity::Voltage, (s >> 20) as f64 / 3.0),
                        (Quantity::Current, if j % 500 == 0 { 1e15 } else { 1.5 }),
                    ],
                )
            })
            .collect();
        assert_round_trip(&noisy);
    }

    #[test]
    fn generator_data_is_compact_and_round_trips() {
        for (label, rate, duration) in [
            ("gen_readings 1 Hz", "1", "3600s"),
            ("gen_readings 0.1 Hz", "0.1", "36000s"),
        ] {
            let Some(series) = generator(rate, duration) else {
                return;
            };
            assert_eq!(series.len(), 3);
            assert!(series.iter().all(|s| s.len() == 3600));
            let per = bytes_per_reading(label, &series);
            assert!(per < 12.0, "{label}: {per:.3} bytes per reading");
            if rate == "1" {
                assert!(per < 8.0, "{label}: {per:.3} bytes per reading");
            }
        }
    }

    #[test]
    fn synthetic_data_is_compact_and_round_trips() {
        let series: Vec<Vec<Point>> = (1..=3).map(|d| synthetic(3600, 1000, d)).collect();
        let per = bytes_per_reading("synthetic 1 Hz", &series);
        assert!(per < 12.0, "{per:.3} bytes per reading");
        let series: Vec<Vec<Point>> = (1..=3).map(|d| synthetic(3600, 10_000, d)).collect();
        let per = bytes_per_reading("synthetic 0.1 Hz", &series);
        assert!(per < 12.0, "{per:.3} bytes per reading");
    }

    #[test]
    fn small_chunks_stay_small() {
        // Appends write small chunks before compaction merges them; a few outliers (the
        // first values) must not inflate the Rice parameter of a short block.
        for n in [1, 2, 5, 10, 30] {
            let points = synthetic(n, 1000, 9);
            let len = assert_round_trip(&points).len();
            println!("codec: {n}-point chunk: {len} bytes");
            assert!(len <= 50 + 8 * n, "{n} points took {len} bytes");
        }
    }

    #[test]
    fn every_prefix_and_every_bit_flip_is_an_error() {
        let mut odd = synthetic(300, 1000, 11);
        odd[5].values.set(Quantity::Frequency, f64::NAN);
        let chunks = [
            encode_points(&synthetic(300, 1000, 5)),
            encode_points(&odd),
            encode_points(&[point(1, &[(Quantity::Power, 1.0)])]),
            encode_points(&[]),
        ];
        for bytes in &chunks {
            for len in 0..bytes.len() {
                assert!(
                    decode_points(&bytes[..len]).is_err(),
                    "prefix {len} decoded"
                );
                // With a valid checksum the parser itself must notice the cut.
                if len > CHECKSUM_LEN {
                    let cut = reseal(bytes[..len - CHECKSUM_LEN].to_vec());
                    if cut.len() > CHECKSUM_LEN && cut.len() < bytes.len() {
                        assert!(
                            decode_points(&cut).is_err(),
                            "resealed prefix {len} decoded"
                        );
                    }
                }
            }
            for i in 0..bytes.len() * 8 {
                let mut bad = bytes.clone();
                bad[i / 8] ^= 1 << (i % 8);
                assert!(decode_points(&bad).is_err(), "flipped bit {i} decoded");
            }
        }
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let good = encode_points(&synthetic(200, 1000, 2));
        let msg = |bytes: &[u8]| decode_points(bytes).unwrap_err().to_string();

        assert!(msg(&[]).contains("format version"), "{}", msg(&[]));
        let mut v2 = good.clone();
        v2[0] = 2;
        assert!(msg(&v2).contains("version 2"), "{}", msg(&v2));
        assert!(msg(&good[..good.len() - 1]).contains("checksum"));

        let mut content = unseal(&good);
        content[1] = 0x80;
        assert!(msg(&reseal(content)).contains("flag"));

        // Point count: over the limit, and larger than the body can hold.
        let mut content = vec![FORMAT_VERSION, 0];
        put_varint(&mut content, MAX_POINTS as u64 + 1);
        assert!(msg(&reseal(content)).contains("limit"));
        let mut content = vec![FORMAT_VERSION, 0];
        put_varint(&mut content, 900_000);
        content.extend_from_slice(&[1, 1, 0]);
        let m = msg(&reseal(content));
        assert!(m.contains("cannot hold"), "{m}");

        let mut content = vec![FORMAT_VERSION, 0];
        content.extend_from_slice(&[0xFF; 11]);
        assert!(msg(&reseal(content)).contains("varint in point count"));

        // Extra bytes after the last column.
        let mut content = unseal(&good);
        content.push(0);
        assert!(msg(&reseal(content)).contains("trailing"));

        // A mask run that claims more points than the chunk holds.
        let one = encode_points(&[point(5, &[(Quantity::Power, 2.0)])]);
        let content = unseal(&one);
        // version, flags, n=1, predictor, section len + bytes, runs=1, mask, len=1.
        let sec = usize::from(content[4]);
        let run_len_at = 5 + sec + 2;
        assert_eq!(content[run_len_at], 1);
        let mut bad = content.clone();
        bad[run_len_at] = 2;
        assert!(msg(&reseal(bad)).contains("mask run length"));
        let mut bad = content.clone();
        bad[run_len_at - 1] = 0x7F;
        bad.insert(run_len_at, 0x7F);
        bad[run_len_at - 1] |= 0x80;
        assert!(msg(&reseal(bad)).contains("presence mask"));
        let mut bad = content;
        bad[run_len_at + 1] = 9;
        assert!(msg(&reseal(bad)).contains("column kind"));
    }

    #[test]
    fn zstd_bodies_round_trip_and_are_bounded() {
        // Periodic integer data: Rice codes spend bits per value, zstd finds the period.
        let points: Vec<Point> = (0..20_000)
            .map(|j| {
                point(
                    j * 1000,
                    &[(Quantity::Power, [100.0, 2500.0, 7.0, 900.0][j as usize % 4])],
                )
            })
            .collect();
        let bytes = assert_round_trip(&points);
        assert_eq!(
            bytes[1] & FLAG_ZSTD,
            FLAG_ZSTD,
            "expected a compressed body"
        );
        // A declared body size beyond the bound is refused before decompressing.
        let mut content = vec![FORMAT_VERSION, FLAG_ZSTD];
        put_varint(&mut content, 1);
        put_varint(&mut content, 1 << 40);
        content.extend_from_slice(&bytes[6..20]);
        assert!(decode_points(&reseal(content))
            .unwrap_err()
            .to_string()
            .contains("too large"));
    }

    /// `min_scale` before `near_integer`: the reference it must agree with.
    fn min_scale_by_division(v: f64) -> Option<usize> {
        (0..=MAX_SCALE).find(|&k| scaled(v, k).is_some())
    }

    #[test]
    fn min_scale_agrees_with_trying_every_scale_on_edge_values() {
        let mut values = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            2.5,
            0.1,
            0.3,
            1e-9,
            1.5e-9,
            1e-10,
            123_456.789_012_345,
            27_021.316_546,
            -224.36,
            f64::MIN_POSITIVE,
            5e-324,
            -5e-324,
            f64::MAX,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            2_251_799_813_685_247.5,
            2_251_799_813_685_248.0,
            4_503_599_627_370_495.5,
            9_007_199_254_740_991.0,
            9_007_199_254_740_992.0,
        ];
        for e in 0..=60 {
            let p = 2f64.powi(e);
            values.extend([p, p + 0.5, p - 0.5, p * 1.1, p / 3.0, -(p + 0.25)]);
        }
        for p in POW10 {
            for m in [1i64, 7, 12_345, 999_999_999, 4_503_599_627_370_495] {
                values.push(m as f64 / p);
                values.push(-(m as f64) / p);
            }
        }
        for v in values {
            assert_eq!(
                min_scale(v),
                min_scale_by_division(v),
                "{v:e} ({:#x})",
                v.to_bits()
            );
        }
    }

    proptest! {
        #[test]
        fn min_scale_agrees_with_trying_every_scale(bits in any::<u64>(),
                                                     m in any::<i64>(),
                                                     k in 0usize..=12,
                                                     nudge in -3i64..=3) {
            let v = f64::from_bits(bits);
            prop_assert_eq!(min_scale(v), min_scale_by_division(v));
            // Decimals, and their neighbours a few units of roundoff away.
            let d = (m >> (m.unsigned_abs() % 60)) as f64 / 10f64.powi(k as i32);
            let d = f64::from_bits(d.to_bits().wrapping_add_signed(nudge));
            prop_assert_eq!(min_scale(d), min_scale_by_division(d), "{:e}", d);
        }
    }

    #[test]
    fn reused_zstd_context_writes_what_a_fresh_one_does() {
        let bodies: Vec<Vec<u8>> = vec![
            (0..5000u32).map(|i| (i % 7) as u8).collect(),
            (0..300u32).map(|i| (i * 31 % 251) as u8).collect(),
            vec![0u8; 70_000],
            (0..5000u32).map(|i| (i % 7) as u8).collect(),
        ];
        for body in &bodies {
            let fresh = zstd::bulk::compress(body, ZSTD_LEVEL).unwrap();
            assert_eq!(zstd_compress(body).unwrap(), fresh, "{} bytes", body.len());
        }
    }

    /// Best and median of many timed runs (the best is robust on a busy machine), in seconds.
    fn time_runs(mut f: impl FnMut()) -> (f64, f64) {
        let mut times = Vec::new();
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < 2.0 {
            let t = Instant::now();
            f();
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        (times[0], times[times.len() / 2])
    }

    #[test]
    #[ignore = "timing; run with --release -- --ignored --nocapture"]
    fn decode_speed() {
        let points = synthetic(3600, 1000, 1);
        let bytes = encode_points(&points);
        let values = (points.len() * 4) as f64;
        let (best, median) = time_runs(|| {
            let back = decode_points(std::hint::black_box(&bytes)).unwrap();
            assert_eq!(back.len(), points.len());
        });
        println!(
            "codec: decode 3600 points × 4 values: best {:.1} µs = {:.0} M values/s, \
             median {:.1} µs = {:.0} M values/s",
            best * 1e6,
            values / best / 1e6,
            median * 1e6,
            values / median / 1e6
        );
        let (best, median) = time_runs(|| {
            std::hint::black_box(encode_points(std::hint::black_box(&points)));
        });
        println!(
            "codec: encode 3600 points: best {:.0} µs, median {:.0} µs",
            best * 1e6,
            median * 1e6
        );
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<u64>().prop_map(f64::from_bits),
            (any::<i32>(), 0i32..=7).prop_map(|(i, k)| f64::from(i) / 10f64.powi(k)),
            (-5000i64..5000).prop_map(|i| 230.0 + i as f64 / 100.0),
            prop::sample::select(vec![
                -0.0,
                0.0,
                f64::NAN,
                f64::from_bits(0x7FF0_0000_0000_0001),
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::MIN_POSITIVE / 7.0,
                f64::MAX,
                -1e-310,
            ]),
        ]
    }

    fn timestamps() -> impl Strategy<Value = Vec<i64>> {
        prop_oneof![
            prop::collection::btree_set(any::<i64>(), 0..150).prop_map(|s| s.into_iter().collect()),
            (any::<i64>(), prop::collection::vec(1i64..3000, 0..300)).prop_map(|(start, steps)| {
                let mut t = start;
                let mut out = vec![t];
                for s in steps {
                    match t.checked_add(s) {
                        Some(next) => {
                            t = next;
                            out.push(t);
                        }
                        None => break,
                    }
                }
                out
            }),
        ]
    }

    fn points() -> impl Strategy<Value = Vec<Point>> {
        (timestamps(), 0u16..512).prop_flat_map(|(ts, base)| {
            let n = ts.len();
            let per_point = (
                prop::bool::weighted(0.8),
                0u16..512,
                prop::array::uniform9(value()),
            );
            prop::collection::vec(per_point, n).prop_map(move |rows| {
                ts.iter()
                    .zip(rows)
                    .map(|(&t, (same, mask, vals))| {
                        let mask = if same { base } else { mask };
                        let mut values = Values::new();
                        for q in Quantity::ALL {
                            if mask & (1 << q.index()) != 0 {
                                values.set(q, vals[q.index()]);
                            }
                        }
                        Point {
                            ts: TsMs(t),
                            values,
                        }
                    })
                    .collect()
            })
        })
    }

    proptest! {
        #[test]
        fn arbitrary_points_round_trip(points in points()) {
            let bytes = encode_points(&points);
            let back = decode_points(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(exact(&back), exact(&points));
        }

        #[test]
        fn random_bytes_are_errors(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            prop_assert!(decode_points(&bytes).is_err());
        }

        #[test]
        fn resealed_garbage_never_panics(
            seed in 0u64..8,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            tail in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut content = unseal(&encode_points(&synthetic(150, 1000, seed)));
            for (at, b) in edits {
                let i = at.index(content.len());
                if i > 0 {
                    content[i] = b;
                }
            }
            if seed % 2 == 0 {
                content.extend_from_slice(&tail);
            }
            // Ok or Err: only panics and runaway allocations are bugs here.
            let _ = decode_points(&reseal(content));
        }

        #[test]
        fn resealed_random_bodies_never_panic(
            flags in 0u8..2,
            n in 0u64..5000,
            body in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut content = vec![FORMAT_VERSION, flags];
            put_varint(&mut content, n);
            if flags == FLAG_ZSTD {
                put_varint(&mut content, body.len() as u64 * 3);
            }
            content.extend_from_slice(&body);
            let _ = decode_points(&reseal(content));
        }
    }
}
