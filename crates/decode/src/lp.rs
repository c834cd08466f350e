//! InfluxDB line protocol: `measurement,tag=v field=1.5,other=2i 1767632400000000000`.
//!
//! The parser works on bytes, one line at a time, and allocates only what the reading owns (its
//! device id and channel) unless a name needs unescaping, an unknown field name is seen for the
//! first time or a line is refused.

use std::borrow::Cow;
use std::collections::BTreeSet;

use wattline_domain::{ChannelName, DeviceId, Limits, Quantity, Reading, TsMs, Values};

use crate::fail::{self, Fail};
use crate::{codes, LpOutcome};

/// The unit of line-protocol timestamps: the `precision=` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// Nanoseconds: InfluxDB's default.
    #[default]
    Ns,
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
    /// Seconds.
    S,
}

impl Precision {
    /// Reads a `precision=` value: `ns`/`n`, `us`/`u`/`µs`, `ms` or `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ns" | "n" => Precision::Ns,
            // U+00B5 MICRO SIGN and U+03BC GREEK SMALL LETTER MU look alike; accept both.
            "us" | "u" | "\u{b5}s" | "\u{3bc}s" => Precision::Us,
            "ms" => Precision::Ms,
            "s" => Precision::S,
            _ => return None,
        })
    }

    /// The canonical `precision=` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Precision::Ns => "ns",
            Precision::Us => "us",
            Precision::Ms => "ms",
            Precision::S => "s",
        }
    }

    /// Converts a timestamp in this unit to unix milliseconds, truncating sub-millisecond parts
    /// toward negative infinity. `None` when seconds overflow.
    #[inline]
    pub const fn to_ms(self, t: i64) -> Option<i64> {
        match self {
            Precision::Ns => Some(t.div_euclid(1_000_000)),
            Precision::Us => Some(t.div_euclid(1_000)),
            Precision::Ms => Some(t),
            Precision::S => t.checked_mul(1_000),
        }
    }
}

/// Decodes a line-protocol body. Never fails as a whole: every line ends up either in
/// `readings` or in `errors` (see the crate docs for the rules).
pub fn parse_line_protocol(
    body: &[u8],
    precision: Precision,
    now: TsMs,
    limits: &Limits,
) -> LpOutcome {
    let mut out = LpOutcome::default();
    // Sized once: growing it line by line copied every reading about twice.
    out.readings.reserve_exact(readings_capacity(body));
    parse_line_protocol_into(body, precision, now, limits, &mut out);
    out
}

/// [`parse_line_protocol`] adding to `out`: its readings, errors, unknown fields and line
/// count. Line numbers in errors count from 1 within `body`. A caller that parses a body in
/// parts can reserve `out.readings` for all of them ([`readings_capacity`]), so that no
/// reading is copied to a larger vector.
pub fn parse_line_protocol_into(
    body: &[u8],
    precision: Precision,
    now: TsMs,
    limits: &Limits,
    out: &mut LpOutcome,
) {
    let mut parser = Parser {
        precision,
        now,
        limits,
        devices: RunCache::default(),
        channels: RunCache::default(),
        default_channel: ChannelName::default_channel(),
    };
    let mut rest = body;
    let mut line_no = 0usize;
    while !rest.is_empty() {
        line_no += 1;
        let (mut line, next) = match find_newline(rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        rest = next;
        if let [head @ .., b'\r'] = line {
            line = head;
        }
        let start = skip_ws(line, 0);
        if start == line.len() || line[start] == b'#' {
            continue;
        }
        out.lines += 1;
        match parser.line(&line[start..], &mut out.unknown_fields) {
            Ok(r) => out.readings.push(r),
            Err(f) => out.errors.push(f.at("line", line_no)),
        }
    }
}

/// The shortest line that gives a reading: `m,device=a power=1`.
const MIN_READING_LINE: usize = 18;

/// An upper bound for the readings `body` gives, to size a vector for them: its lines, but
/// no more than lines of the shortest reading would fill it, so that a body of blank lines
/// reserves no more than a body of readings would use.
pub fn readings_capacity(body: &[u8]) -> usize {
    count_lines(body).min(body.len() / MIN_READING_LINE + 1)
}

/// How many lines `body` holds: its newlines, plus one for a last line without one. An upper
/// bound for the readings it gives (blank and comment lines give none).
pub fn count_lines(body: &[u8]) -> usize {
    const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const NL: u64 = LO7 / 0x7f * b'\n' as u64;
    let mut chunks = body.chunks_exact(8);
    let mut newlines = 0usize;
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w) ^ NL;
        // Bit 7 of a byte is set exactly where that byte of x is zero: adding 0x7f to the
        // low seven bits cannot carry into the next byte.
        let zero = !(((x & LO7) + LO7) | x | LO7);
        // One 0/1 per byte, summed into the top byte by the multiplication.
        newlines += ((zero >> 7).wrapping_mul(LO7 / 0x7f) >> 56) as usize;
    }
    newlines += chunks.remainder().iter().filter(|&&b| b == b'\n').count();
    newlines + usize::from(body.last().is_some_and(|&b| b != b'\n'))
}

/// Position of the next `\n`, eight bytes at a time (SWAR), as lines are ~100 bytes long.
#[inline]
fn find_newline(b: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = LO * b'\n' as u64;
    let mut i = 0;
    while i + 8 <= b.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i..i + 8]);
        let x = u64::from_le_bytes(w) ^ NL;
        // A zero byte in x marks a newline; this test has no false positives below the first.
        let z = x.wrapping_sub(LO) & !x & HI;
        if z != 0 {
            return Some(i + (z.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..].iter().position(|&c| c == b'\n').map(|p| i + p)
}

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    i
}

/// A byte class table: `stops` and, for names, the backslash (which starts an escape).
const fn stop_table(stops: &[u8], backslash: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < stops.len() {
        t[stops[i] as usize] = true;
        i += 1;
    }
    t[b'\\' as usize] = backslash;
    t
}

/// Where the measurement and tag values end.
static VALUE_STOP: [bool; 256] = stop_table(b", ", true);
/// Where tag keys and field keys end.
static KEY_STOP: [bool; 256] = stop_table(b", =", true);
/// Where an unquoted field value or the timestamp ends.
static TOKEN_STOP: [bool; 256] = stop_table(b", \t", false);

/// Scans a name from `i` to its first unescaped stop byte. Returns the end and whether the name
/// holds a backslash (and so may need unescaping).
#[inline(always)]
fn scan_name(b: &[u8], mut i: usize, stop: &[bool; 256]) -> (usize, bool) {
    let mut esc = false;
    while let Some(&c) = b.get(i) {
        if stop[c as usize] {
            if c != b'\\' {
                break;
            }
            // `\x` never ends a name, whatever x is.
            esc = true;
            i += 2;
        } else {
            i += 1;
        }
    }
    (i.min(b.len()), esc)
}

/// The end of an unquoted token (a number, a boolean, the timestamp).
#[inline(always)]
fn scan_token(b: &[u8], mut i: usize) -> usize {
    while let Some(&c) = b.get(i) {
        if TOKEN_STOP[c as usize] {
            break;
        }
        i += 1;
    }
    i
}

/// A name with `\,` `\ ` `\=` and `\\` resolved; any other backslash is literal.
fn unescape(raw: &[u8], esc: bool) -> Cow<'_, [u8]> {
    if !esc {
        return Cow::Borrowed(raw);
    }
    let mut v = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match (raw[i], raw.get(i + 1)) {
            (b'\\', Some(&c @ (b',' | b' ' | b'=' | b'\\'))) => {
                v.push(c);
                i += 2;
            }
            (c, _) => {
                v.push(c);
                i += 1;
            }
        }
    }
    Cow::Owned(v)
}

fn text(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// A span of the line: `[s, e)`, and whether it holds escapes.
#[derive(Clone, Copy)]
struct Span {
    s: usize,
    e: usize,
    esc: bool,
}

impl Span {
    fn raw<'a>(&self, b: &'a [u8]) -> &'a [u8] {
        &b[self.s..self.e]
    }
    fn name<'a>(&self, b: &'a [u8]) -> Cow<'a, [u8]> {
        unescape(self.raw(b), self.esc)
    }
    fn text(&self, b: &[u8]) -> String {
        text(&self.name(b)).into_owned()
    }
}

/// A tag value as an owned string, for the id parsers.
#[inline]
fn id_text(b: &[u8], span: Span) -> String {
    match std::str::from_utf8(span.raw(b)) {
        Ok(s) if !span.esc => s.to_owned(),
        _ => span.text(b),
    }
}

fn syntax(field: Option<&str>, msg: String) -> Fail {
    Fail::new(codes::SYNTAX, field, msg)
}

/// A field value, by type.
#[derive(Clone, Copy)]
enum FieldValue {
    Number(f64),
    Str,
    Bool,
}

/// Why a numeric token is no line-protocol number.
enum NumError {
    Invalid,
    OutOfRange,
}

/// Digits to their value: `Invalid` when empty or not all digits, `OutOfRange` over `u64::MAX`.
#[inline]
fn parse_digits(t: &[u8]) -> Result<u64, NumError> {
    if t.is_empty() {
        return Err(NumError::Invalid);
    }
    let mut v: u64 = 0;
    if t.len() <= 19 {
        // 19 digits always fit a u64.
        for &c in t {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                return Err(NumError::Invalid);
            }
            v = v * 10 + u64::from(d);
        }
        return Ok(v);
    }
    let mut overflow = false;
    for &c in t {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return Err(NumError::Invalid);
        }
        match v.checked_mul(10).and_then(|v| v.checked_add(u64::from(d))) {
            Some(n) => v = n,
            None => overflow = true,
        }
    }
    if overflow {
        Err(NumError::OutOfRange)
    } else {
        Ok(v)
    }
}

/// `-?digits` as an i64.
#[inline]
fn parse_i64(t: &[u8]) -> Result<i64, NumError> {
    let (neg, digits) = match t {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, t),
    };
    let m = parse_digits(digits)?;
    if neg {
        if m <= 1 << 63 {
            Ok((m as i64).wrapping_neg())
        } else {
            Err(NumError::OutOfRange)
        }
    } else {
        i64::try_from(m).map_err(|_| NumError::OutOfRange)
    }
}

/// Exact powers of ten as f64 (10^22 is the largest that is).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Lexes the numeric field value at `b[start..]` in one pass: a float
/// `-?(d+(.d*)?|.d+)([eE][-+]?d+)?`, an integer `-?d+i` or an unsigned `d+u`. Returns where the
/// number ends and its value; the caller checks that a separator follows. This refuses what
/// Rust's float parser would take but InfluxDB does not (`NaN`, `inf`, `+1`).
///
/// Meter values (`224.36`, `27021.316546`) take an exact fast path: when the digits form an
/// integer m <= 2^53 and the decimal exponent e is within 10^±22, m and 10^|e| are exact f64s,
/// so one multiplication or division gives the correctly rounded result. Everything else goes
/// to Rust's (correctly rounding) parser.
#[inline]
fn lex_number(b: &[u8], start: usize) -> (usize, Result<f64, NumError>) {
    let neg = b.get(start) == Some(&b'-');
    let mut i = start + usize::from(neg);
    let mut mant: u64 = 0;
    let int_start = i;
    while let Some(&c) = b.get(i) {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        mant = mant.wrapping_mul(10).wrapping_add(u64::from(d));
        i += 1;
    }
    let mut digits = i - int_start;
    match b.get(i) {
        Some(b'i') => return (i + 1, parse_i64(&b[start..i]).map(|v| v as f64)),
        Some(b'u') => return (i + 1, parse_digits(&b[start..i]).map(|v| v as f64)),
        _ => {}
    }
    let mut frac_digits = 0usize;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while let Some(&c) = b.get(i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            mant = mant.wrapping_mul(10).wrapping_add(u64::from(d));
            frac_digits += 1;
            i += 1;
        }
    }
    digits += frac_digits;
    if digits == 0 {
        return (i, Err(NumError::Invalid));
    }
    let mut exp: i64 = 0;
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        let exp_neg = b.get(i) == Some(&b'-');
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let exp_start = i;
        while let Some(&c) = b.get(i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            if exp < 100_000 {
                exp = exp * 10 + i64::from(d);
            }
            i += 1;
        }
        if i == exp_start {
            return (i, Err(NumError::Invalid));
        }
        if exp_neg {
            exp = -exp;
        }
    }
    let e10 = exp - frac_digits as i64;
    // Up to 19 digits always fit a u64, so `mant` is exact.
    if digits <= 19 && mant <= 1 << 53 && (-22..=22).contains(&e10) {
        let m = mant as f64;
        let v = if e10 >= 0 {
            m * POW10[e10 as usize]
        } else {
            m / POW10[(-e10) as usize]
        };
        return (i, Ok(if neg { -v } else { v }));
    }
    let v = std::str::from_utf8(&b[start..i])
        .ok()
        .and_then(|s| s.parse::<f64>().ok());
    (i, v.ok_or(NumError::Invalid))
}

/// The value of eight ASCII digits (the first is the most significant), or `None` when one of
/// the bytes is no digit. SWAR: pairs, then quads, then the eight are combined with three
/// multiplications instead of eight dependent ones.
#[inline(always)]
fn eight_digits(chunk: &[u8; 8]) -> Option<u64> {
    let v = u64::from_le_bytes(*chunk);
    let x = v.wrapping_sub(0x3030_3030_3030_3030);
    // A byte below '0' borrows into bit 7; one above '9' reaches bit 7 when 0x46 is added.
    if (x | v.wrapping_add(0x4646_4646_4646_4646)) & 0x8080_8080_8080_8080 != 0 {
        return None;
    }
    // Byte k holds digit k (little endian: the most significant digit is the lowest byte).
    let x = (x * 10 + (x >> 8)) & 0x00ff_00ff_00ff_00ff; // 16-bit lanes: 2-digit numbers
    let x = (x * 100 + (x >> 16)) & 0x0000_ffff_0000_ffff; // 32-bit lanes: 4-digit numbers
    Some((x * 10_000 + (x >> 32)) & 0xffff_ffff)
}

/// Lexes an integer `-?d+` at `b[start..]` in one pass: where it ends, and its value.
#[inline]
fn lex_i64(b: &[u8], start: usize) -> (usize, Result<i64, NumError>) {
    let neg = b.get(start) == Some(&b'-');
    let mut i = start + usize::from(neg);
    let mut v: u64 = 0;
    let digits_start = i;
    while let Some(chunk) = b.get(i..).and_then(|r| r.first_chunk::<8>()) {
        match eight_digits(chunk) {
            Some(d) => {
                v = v.wrapping_mul(100_000_000).wrapping_add(d);
                i += 8;
            }
            None => break,
        }
    }
    while let Some(&c) = b.get(i) {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        v = v.wrapping_mul(10).wrapping_add(u64::from(d));
        i += 1;
    }
    let r = match i - digits_start {
        0 => Err(NumError::Invalid),
        // Up to 19 digits always fit a u64.
        1..=19 if neg => {
            if v <= 1 << 63 {
                Ok((v as i64).wrapping_neg())
            } else {
                Err(NumError::OutOfRange)
            }
        }
        1..=19 => i64::try_from(v).map_err(|_| NumError::OutOfRange),
        _ => parse_i64(&b[start..i]),
    };
    (i, r)
}

/// True when `rest` starts with `key`: a fixed-size compare the compiler inlines, where
/// `starts_with` with keys of several lengths ends up in a `memcmp` call.
#[inline(always)]
fn starts_with_key<const N: usize>(rest: &[u8], key: &[u8; N]) -> bool {
    rest.first_chunk::<N>() == Some(key)
}

/// The quantity named by the field key at the start of `rest`, and the key's length, when the
/// key is a quantity's name followed by `=`: the common case, matched without scanning.
#[inline]
fn quantity_key(rest: &[u8]) -> Option<(Quantity, usize)> {
    use Quantity as Q;
    let (q, matched, len) = match *rest.first()? {
        b'v' => (Q::Voltage, starts_with_key(rest, b"voltage="), 7),
        b'c' => (Q::Current, starts_with_key(rest, b"current="), 7),
        b'p' if rest.get(5) == Some(&b'_') => {
            (Q::PowerFactor, starts_with_key(rest, b"power_factor="), 12)
        }
        b'p' => (Q::Power, starts_with_key(rest, b"power="), 5),
        b'e' if rest.get(6) == Some(&b'_') => (
            Q::EnergyExport,
            starts_with_key(rest, b"energy_export="),
            13,
        ),
        b'e' => (Q::Energy, starts_with_key(rest, b"energy="), 6),
        b'a' => (
            Q::ApparentPower,
            starts_with_key(rest, b"apparent_power="),
            14,
        ),
        b'r' => (
            Q::ReactivePower,
            starts_with_key(rest, b"reactive_power="),
            14,
        ),
        b'f' => (Q::Frequency, starts_with_key(rest, b"frequency="), 9),
        _ => return None,
    };
    matched.then_some((q, len))
}

/// True when a numeric value ending at `b[i]` is followed by what may follow a field value.
#[inline]
fn at_value_end(b: &[u8], i: usize) -> bool {
    matches!(b.get(i), None | Some(b',' | b' ' | b'\t'))
}

fn is_bool(t: &[u8]) -> bool {
    matches!(
        t,
        b"t" | b"T" | b"true" | b"True" | b"TRUE" | b"f" | b"F" | b"false" | b"False" | b"FALSE"
    )
}

/// Which tag names the reading's device or channel.
#[derive(Clone, Copy)]
struct Tag {
    key: &'static str,
    span: Span,
}

struct Parser<'l> {
    precision: Precision,
    now: TsMs,
    limits: &'l Limits,
    devices: RunCache<DeviceId>,
    channels: RunCache<ChannelName>,
    default_channel: ChannelName,
}

impl Parser<'_> {
    /// Decodes one line `b`: not blank, no comment, no leading whitespace, no line ending.
    fn line(&mut self, b: &[u8], unknown: &mut BTreeSet<String>) -> Result<Reading, Fail> {
        let n = b.len();

        // Measurement: must be there, otherwise ignored.
        let (mut i, _) = scan_name(b, 0, &VALUE_STOP);
        if i == 0 {
            return Err(syntax(None, "missing measurement".into()));
        }

        // Tags.
        let mut device: Option<Tag> = None;
        let mut channel: Option<Tag> = None;
        let mut conflict: Option<Fail> = None;
        while i < n && b[i] == b',' {
            let rest = &b[i + 1..];
            let (ke, kesc) = if starts_with_key(rest, b"device=") {
                (i + 7, false)
            } else if starts_with_key(rest, b"channel=") {
                (i + 8, false)
            } else {
                scan_name(b, i + 1, &KEY_STOP)
            };
            let key = Span {
                s: i + 1,
                e: ke,
                esc: kesc,
            };
            if key.s == key.e {
                return Err(syntax(None, "empty tag key".into()));
            }
            if ke >= n || b[ke] != b'=' {
                let k = key.text(b);
                return Err(syntax(Some(&k), format!("tag {k:?} has no value")));
            }
            let (ve, vesc) = scan_name(b, ke + 1, &VALUE_STOP);
            let value = Span {
                s: ke + 1,
                e: ve,
                esc: vesc,
            };
            if value.s == value.e {
                let k = key.text(b);
                return Err(syntax(Some(&k), format!("tag {k:?} has an empty value")));
            }
            i = ve;
            if kesc {
                continue; // an escaped key is never one we look for
            }
            let (slot, key) = match key.raw(b) {
                b"device" => (&mut device, "device"),
                b"device_id" => (&mut device, "device_id"),
                b"channel" => (&mut channel, "channel"),
                _ => continue,
            };
            match slot {
                None => *slot = Some(Tag { key, span: value }),
                Some(first) => {
                    if conflict.is_none() && first.span.raw(b) != value.raw(b) {
                        let msg = format!(
                            "tags {:?} and {key:?} disagree ({:?} and {:?})",
                            first.key,
                            first.span.text(b),
                            value.text(b)
                        );
                        conflict = Some(Fail::new(codes::BAD_ID, Some(key), msg));
                    }
                }
            }
        }
        if i >= n {
            return Err(syntax(
                None,
                "missing fields after the measurement and tags".into(),
            ));
        }
        // Here b[i] == b' ': the tags end at a space.
        i = skip_ws(b, i);
        if i >= n {
            return Err(syntax(
                None,
                "missing fields after the measurement and tags".into(),
            ));
        }

        // Fields.
        let mut values = Values::new();
        let mut pending: Option<Fail> = None;
        let mut first_unknown: Option<Span> = None;
        loop {
            let (key, q) = match quantity_key(&b[i..]) {
                Some((q, len)) => (
                    Span {
                        s: i,
                        e: i + len,
                        esc: false,
                    },
                    Some(q),
                ),
                None => {
                    let (ke, kesc) = scan_name(b, i, &KEY_STOP);
                    let key = Span {
                        s: i,
                        e: ke,
                        esc: kesc,
                    };
                    let q = if kesc {
                        None
                    } else {
                        fail::quantity_of(key.raw(b))
                    };
                    (key, q)
                }
            };
            let ke = key.e;
            if key.s == key.e {
                return Err(syntax(None, "empty field key".into()));
            }
            if ke >= n || b[ke] != b'=' || at_value_end(b, ke + 1) {
                let k = key.text(b);
                return Err(syntax(Some(&k), format!("field {k:?} has no value")));
            }
            i = ke + 1;
            let value = match b[i] {
                b'"' => {
                    let mut j = i + 1;
                    loop {
                        match b.get(j) {
                            None => {
                                let k = key.text(b);
                                let msg = format!("unterminated string field {k:?}");
                                return Err(syntax(Some(&k), msg));
                            }
                            Some(b'\\') => j += 2,
                            Some(b'"') => break,
                            Some(_) => j += 1,
                        }
                    }
                    i = j + 1;
                    FieldValue::Str
                }
                b'0'..=b'9' | b'-' | b'.' => match lex_number(b, i) {
                    (e, Ok(v)) if at_value_end(b, e) => {
                        i = e;
                        FieldValue::Number(v)
                    }
                    (e, r) => {
                        let what = match r {
                            Err(NumError::OutOfRange) if at_value_end(b, e) => "is out of range",
                            _ => "is not a valid number",
                        };
                        let tok = &b[i..scan_token(b, i)];
                        let k = key.text(b);
                        let msg = format!("field {k:?}: {:?} {what}", text(tok));
                        return Err(syntax(Some(&k), msg));
                    }
                },
                _ => {
                    let e = scan_token(b, i);
                    let tok = &b[i..e];
                    if !is_bool(tok) {
                        let k = key.text(b);
                        let msg = format!("field {k:?}: invalid value {:?}", text(tok));
                        return Err(syntax(Some(&k), msg));
                    }
                    i = e;
                    FieldValue::Bool
                }
            };
            match (q, value) {
                (Some(q), FieldValue::Number(v)) => {
                    if pending.is_none() {
                        if let Err(e) = self.limits.check_value(q, v) {
                            let raw = text(&b[ke + 1..i]);
                            pending = Some(fail::value_fail(q, &raw, &e));
                        }
                    }
                    values.set(q, v);
                }
                (Some(q), FieldValue::Str | FieldValue::Bool) => {
                    if pending.is_none() {
                        let found = match value {
                            FieldValue::Str => "a string",
                            _ => "a boolean",
                        };
                        let f = q.field();
                        let msg = format!("field {f:?}: expected a number, found {found}");
                        pending = Some(Fail::new(codes::BAD_FIELD_TYPE, Some(f), msg));
                    }
                }
                (None, _) => {
                    let name = key.name(b);
                    let name = text(&name);
                    if !unknown.contains(name.as_ref()) {
                        unknown.insert(name.into_owned());
                    }
                    first_unknown.get_or_insert(key);
                }
            }
            match b.get(i) {
                None => break,
                Some(b',') => i += 1,
                Some(b' ' | b'\t') => break,
                Some(&c) => {
                    let k = key.text(b);
                    let c = text(&b[i..]).chars().next().unwrap_or(c as char);
                    let msg = format!("field {k:?}: unexpected {c:?} after the value");
                    return Err(syntax(Some(&k), msg));
                }
            }
        }

        // Timestamp.
        i = skip_ws(b, i);
        let mut ts_raw: Option<(TsMs, &[u8])> = None;
        if i < n {
            let (mut e, r) = lex_i64(b, i);
            let valid_end = matches!(b.get(e), None | Some(b' ' | b'\t'));
            if !valid_end {
                while e < n && b[e] != b' ' && b[e] != b'\t' {
                    e += 1;
                }
            }
            let tok = &b[i..e];
            match r {
                Ok(t) if valid_end => match self.precision.to_ms(t) {
                    Some(ms) => ts_raw = Some((TsMs(ms), tok)),
                    None => {
                        let msg = format!(
                            "timestamp {} is out of range at precision {}",
                            text(tok),
                            self.precision.as_str()
                        );
                        return Err(fail::bad_ts(None, msg));
                    }
                },
                Err(NumError::OutOfRange) if valid_end => {
                    let msg = format!("timestamp {} is out of range", text(tok));
                    return Err(fail::bad_ts(None, msg));
                }
                _ => {
                    let msg = format!("invalid timestamp {:?}", text(tok));
                    return Err(fail::bad_ts(None, msg));
                }
            }
            let j = skip_ws(b, e);
            if j < n {
                let msg = format!("unexpected text after the timestamp: {:?}", text(&b[j..]));
                return Err(syntax(None, msg));
            }
        }

        // The line is well-formed: now what it says.
        if let Some(f) = conflict {
            return Err(f);
        }
        let Some(dev) = device else {
            return Err(Fail::new(
                codes::MISSING_DEVICE,
                Some("device"),
                "missing tag \"device\"".into(),
            ));
        };
        let device = self.device(b, dev)?;
        let channel = match channel {
            None => self.default_channel.clone(),
            Some(tag) => self.channel(b, tag)?,
        };
        if let Some(f) = pending {
            return Err(f);
        }
        if values.is_empty() {
            let found = match first_unknown {
                Some(k) => format!(" (ignored field {:?})", k.text(b)),
                None => String::new(),
            };
            let msg = format!(
                "no quantity field{found}; known fields are {}",
                fail::known_fields()
            );
            return Err(Fail::new(codes::NO_VALUES, None, msg));
        }
        let ts = ts_raw.map_or(self.now, |(ts, _)| ts);
        if let Err(e) = self.limits.check_ts(ts, self.now) {
            let raw: Cow<'_, str> = match ts_raw {
                Some((_, tok)) => text(tok),
                None => Cow::Borrowed("now"),
            };
            return Err(fail::ts_fail(&raw, None, ts, &e, self.limits, self.now));
        }
        Ok(Reading {
            device,
            channel,
            ts,
            values,
        })
    }

    fn device(&mut self, b: &[u8], tag: Tag) -> Result<DeviceId, Fail> {
        self.devices.get(b, tag.span, || {
            DeviceId::parse(id_text(b, tag.span)).map_err(|e| {
                Fail::new(
                    codes::BAD_ID,
                    Some(tag.key),
                    format!("tag {:?}: {e}", tag.key),
                )
            })
        })
    }

    fn channel(&mut self, b: &[u8], tag: Tag) -> Result<ChannelName, Fail> {
        self.channels.get(b, tag.span, || {
            ChannelName::parse(id_text(b, tag.span)).map_err(|e| {
                Fail::new(
                    codes::BAD_ID,
                    Some(tag.key),
                    format!("tag {:?}: {e}", tag.key),
                )
            })
        })
    }
}

/// Reuses the last validated id while consecutive lines name the same one (a meter's batch).
/// It keeps an id only once the same tag value came twice in a row, so a batch that cycles
/// through many devices pays for no extra copies.
struct RunCache<T> {
    prev_raw: Vec<u8>,
    id: Option<T>,
}

impl<T> Default for RunCache<T> {
    fn default() -> Self {
        RunCache {
            prev_raw: Vec::new(),
            id: None,
        }
    }
}

impl<T: Clone + AsRef<str>> RunCache<T> {
    #[inline]
    fn get(
        &mut self,
        b: &[u8],
        span: Span,
        parse: impl FnOnce() -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        let raw = span.raw(b);
        if span.esc {
            return parse();
        }
        if let Some(id) = &self.id {
            if id.as_ref().as_bytes() == raw {
                return Ok(id.clone());
            }
        }
        let id = parse()?;
        if self.prev_raw == raw {
            self.id = Some(id.clone());
        } else {
            self.prev_raw.clear();
            self.prev_raw.extend_from_slice(raw);
        }
        Ok(id)
    }
}

#[cfg(test)]
#[path = "lp_tests.rs"]
mod tests;
