//! Socket meters: JSON objects over a raw TCP stream with no framing.
//!
//! The city smart-meter prototype writes each message as one JSON object with a single send:
//! no newline, no length prefix. TCP keeps no message boundaries, so a read may hold two
//! objects back to back, or half of one. [`Framer`] takes bytes as they arrive and yields
//! every complete top-level object; [`parse_message`] reads one object; [`MeterReading::resolve`]
//! turns a reading into an instant and values with the site's time zone.
//!
//! # Framing ([`Framer`])
//!
//! * Objects may follow each other with no separator, or with whitespace (space, tab, CR, LF)
//!   between them, so newline-delimited JSON works too.
//! * The framer tracks brace depth outside strings, and string and escape state, so braces
//!   inside strings (`{"a": "}"}`) do not end an object.
//! * Bytes between objects that are not whitespace and not `{` are *garbage*: one
//!   [`codes::GARBAGE`] error per run, a run ending at the next `{` (which starts an object)
//!   or at the end of the bytes pushed. The framer resynchronises there.
//! * A raw control character (below 0x20) inside a string is never valid JSON. It is how an
//!   unterminated string shows itself in newline-delimited JSON, so the object is reported as
//!   [`codes::BAD_JSON`] at once and the rest of it, up to the next `{`, is dropped without a
//!   second error (the meter gets exactly one answer for the message).
//! * An object longer than the framer's limit (default [`MAX_OBJECT_BYTES`]) is reported as
//!   [`codes::TOO_LARGE`] as soon as it crosses the limit, and the rest of it is skipped (still
//!   tracking depth, not buffering) so memory stays bounded.
//! * An object that never closes (the meter died mid-send, or sent unbalanced braces) keeps the
//!   framer waiting; the connection calls [`Framer::abandon`] after a quiet spell, which reports
//!   it as [`codes::INCOMPLETE`] and starts afresh.
//!
//! Every frame (object or error) asks for exactly one answer, which is what keeps a strict
//! request/response meter going after a bad message.
//!
//! # Messages ([`parse_message`])
//!
//! * `{"id": 0}` is the handshake: the meter asks for an id. The id `0` may be the number or
//!   the string `"0"` (the meter echoes ids as strings, so a firmware that quotes everything is
//!   taken too). A message with id 0 and a `consumption` is refused (`bad_id`): 0 is never a
//!   meter's id.
//! * `{"id": "7", "consumption": 12.0, "datetime": "2026-11-22 07:01:19", "type": "/spent"}`
//!   is a reading of meter 7. The id is the digits Wattline assigned, as a string or as a
//!   non-negative integer; leading zeros, signs and fractions are refused (`bad_id`) because
//!   Wattline never hands them out.
//! * `consumption` is the cumulative energy counter in kWh ([`Quantity::Energy`]); it must be a
//!   JSON number within the [`Limits`]. Missing or `null` is `no_values`.
//! * `datetime` is the meter's local wall time without a zone (`YYYY-MM-DD HH:MM:SS`, `T`
//!   instead of the space and fractional seconds also accepted), read in the device's site
//!   zone (see [`local_to_instant`]). A time with an offset (`…Z`, `…+01:00`) is taken as that
//!   instant. Without `datetime` the arrival time is used.
//! * `type` is optional; when present it must be `"/spent"` (`unsupported_type` otherwise, so
//!   a message meaning something else is not stored as consumption).
//! * Other keys are ignored.
//!
//! # Daylight saving time ([`local_to_instant`])
//!
//! * A wall time in a gap (02:30 on a spring-forward day in Europe) is read with the offset in
//!   force before the gap: a meter whose clock has not jumped yet means exactly that instant
//!   (02:30 CET = 03:30 CEST).
//! * A wall time in a fold (02:30 on an autumn day happens twice) takes, of its two instants, the
//!   one nearer to the meter's previous reading; with no previous reading, or at equal
//!   distance, the earlier one. A meter whose clock runs on through the repeated hour is so
//!   stored in order: first in summer time, then in winter time.

use std::fmt;

use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;
use serde_json::{Map, Value};
use wattline_domain::{Limits, Quantity, TsMs, Values};

/// The largest object the framer buffers by default.
pub const MAX_OBJECT_BYTES: usize = 64 * 1024;

/// The stable machine codes of [`TcpMeterError::code`], as meters and metrics see them.
pub mod codes {
    pub use crate::codes::{
        BAD_FIELD_TYPE, BAD_ID, BAD_JSON, BAD_TIMESTAMP, NOT_FINITE, NO_VALUES, OUT_OF_RANGE,
        TIMESTAMP_IN_FUTURE, TIMESTAMP_TOO_OLD,
    };
    /// Bytes between objects that are neither whitespace nor an object.
    pub const GARBAGE: &str = "garbage";
    /// An object longer than the framer's limit.
    pub const TOO_LARGE: &str = "too_large";
    /// An object that did not close before the connection gave up waiting.
    pub const INCOMPLETE: &str = "incomplete";
    /// A `type` other than `/spent`.
    pub const UNSUPPORTED_TYPE: &str = "unsupported_type";
}

/// Why a frame or a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TcpMeterError {
    /// One of [`codes`].
    pub code: &'static str,
    /// For people: what is wrong, naming the field.
    pub message: String,
    /// The meter id the message carried, when it could be read (to echo in the answer).
    pub id: Option<String>,
}

impl TcpMeterError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        TcpMeterError {
            code,
            message: message.into(),
            id: None,
        }
    }

    fn with_id(mut self, id: &str) -> Self {
        self.id = Some(id.to_owned());
        self
    }
}

/// One unit of the stream: a complete object's bytes, or why some bytes were refused.
pub type Frame = Result<Vec<u8>, TcpMeterError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Between objects: whitespace is skipped, `{` starts an object.
    Between,
    /// Inside an object, buffering it.
    Object,
    /// Inside an object that outgrew the limit: tracking its end, not buffering.
    Oversized,
    /// Garbage between objects; `report` unless it is the tail of an object already refused.
    Garbage { report: bool },
}

/// Splits an unframed byte stream into top-level JSON objects (see the module docs).
#[derive(Debug, Clone)]
pub struct Framer {
    max: usize,
    mode: Mode,
    buf: Vec<u8>,
    depth: u64,
    in_string: bool,
    escape: bool,
    /// Length and first bytes of the current garbage run, for its error message.
    garbage: usize,
    garbage_sample: Vec<u8>,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new(MAX_OBJECT_BYTES)
    }
}

const SAMPLE: usize = 24;

impl Framer {
    /// A framer that refuses objects longer than `max_object_bytes`.
    pub fn new(max_object_bytes: usize) -> Self {
        Framer {
            max: max_object_bytes.max(2),
            mode: Mode::Between,
            buf: Vec::new(),
            depth: 0,
            in_string: false,
            escape: false,
            garbage: 0,
            garbage_sample: Vec::new(),
        }
    }

    /// Whether part of an object is waiting for the rest.
    pub fn in_object(&self) -> bool {
        matches!(self.mode, Mode::Object | Mode::Oversized)
    }

    /// Bytes held for the object in progress.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next bytes of the stream; appends every frame they complete to `out`, in
    /// stream order.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Frame>) {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.mode {
                Mode::Between => match b {
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    b'{' => self.open(),
                    _ => self.start_garbage(b, true),
                },
                Mode::Garbage { report } => {
                    if b == b'{' {
                        self.end_garbage(report, out);
                        self.open();
                    } else {
                        self.note_garbage(b);
                    }
                }
                Mode::Object | Mode::Oversized => {
                    // Copy the run of bytes that cannot change any state in one go: the common
                    // case inside strings and numbers.
                    let run = if self.in_string && !self.escape {
                        data[i..]
                            .iter()
                            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                            .unwrap_or(data.len() - i)
                    } else {
                        0
                    };
                    if run > 0 {
                        self.take(&data[i..i + run], out);
                        i += run;
                        continue;
                    }
                    self.scan(b, out);
                }
            }
            i += 1;
        }
        // A garbage run ends with the bytes at hand: a meter that sent it waits for an answer.
        // More garbage in the next push is a new run.
        if let Mode::Garbage { report } = self.mode {
            self.end_garbage(report, out);
        }
    }

    /// Gives up on the object in progress (the peer went quiet in the middle of it). Returns
    /// its refusal, unless it was refused already (too large). The framer starts afresh.
    pub fn abandon(&mut self) -> Option<TcpMeterError> {
        let refusal = match self.mode {
            Mode::Object => Some(TcpMeterError::new(
                codes::INCOMPLETE,
                format!(
                    "an object of {} bytes did not close (unbalanced braces, or the rest never came)",
                    self.buf.len()
                ),
            )),
            _ => None,
        };
        self.reset();
        refusal
    }

    fn reset(&mut self) {
        self.mode = Mode::Between;
        self.buf = Vec::new();
        self.depth = 0;
        self.in_string = false;
        self.escape = false;
    }

    fn open(&mut self) {
        self.mode = Mode::Object;
        self.buf.clear();
        self.buf.push(b'{');
        self.depth = 1;
        self.in_string = false;
        self.escape = false;
    }

    fn start_garbage(&mut self, b: u8, report: bool) {
        self.mode = Mode::Garbage { report };
        self.garbage = 0;
        self.garbage_sample.clear();
        self.note_garbage(b);
    }

    fn note_garbage(&mut self, b: u8) {
        self.garbage += 1;
        if self.garbage_sample.len() < SAMPLE {
            self.garbage_sample.push(b);
        }
    }

    fn end_garbage(&mut self, report: bool, out: &mut Vec<Frame>) {
        if report && self.garbage > 0 {
            let sample = String::from_utf8_lossy(&self.garbage_sample);
            let more = if self.garbage > self.garbage_sample.len() {
                "..."
            } else {
                ""
            };
            out.push(Err(TcpMeterError::new(
                codes::GARBAGE,
                format!(
                    "{} bytes that are not a JSON object: {sample:?}{more}",
                    self.garbage
                ),
            )));
        }
        self.garbage = 0;
        self.garbage_sample.clear();
    }

    /// Bytes inside a string that change no state.
    fn take(&mut self, bytes: &[u8], out: &mut Vec<Frame>) {
        if self.mode == Mode::Object {
            self.buf.extend_from_slice(bytes);
            self.check_size(out);
        }
    }

    fn check_size(&mut self, out: &mut Vec<Frame>) {
        if self.buf.len() > self.max {
            out.push(Err(TcpMeterError::new(
                codes::TOO_LARGE,
                format!(
                    "an object longer than {} bytes; the rest of it is skipped",
                    self.max
                ),
            )));
            self.buf = Vec::new();
            self.mode = Mode::Oversized;
        }
    }

    /// One byte inside an object.
    fn scan(&mut self, b: u8, out: &mut Vec<Frame>) {
        if self.in_string {
            if self.escape {
                self.escape = false;
            } else if b == b'\\' {
                self.escape = true;
            } else if b == b'"' {
                self.in_string = false;
            } else if b < 0x20 {
                let oversized = self.mode == Mode::Oversized;
                self.reset();
                if !oversized {
                    out.push(Err(TcpMeterError::new(
                        codes::BAD_JSON,
                        format!("a raw control character (0x{b:02x}) inside a string; the object is dropped"),
                    )));
                }
                // The rest of the object is its tail, already answered for.
                self.start_garbage(b, false);
                return;
            }
        } else {
            match b {
                b'"' => self.in_string = true,
                b'{' => self.depth = self.depth.saturating_add(1),
                b'}' => self.depth -= 1,
                _ => {}
            }
        }
        if self.mode == Mode::Object {
            self.buf.push(b);
            self.check_size(out);
        }
        if self.depth == 0 {
            if self.mode == Mode::Object {
                out.push(Ok(std::mem::take(&mut self.buf)));
            }
            self.reset();
        }
    }
}

/// A meter's id: the number Wattline assigned at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeterId(pub u64);

impl fmt::Display for MeterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The meter's time as it was sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MeterTime {
    /// No `datetime`: the arrival time counts.
    Arrival,
    /// Local wall time, to read in the site's zone.
    Local(DateTime),
    /// A time that carried its offset.
    Absolute(Timestamp),
}

/// A reading as sent, before its time is placed in a zone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterReading {
    pub meter: MeterId,
    /// Cumulative energy, kWh.
    pub consumption: f64,
    pub time: MeterTime,
}

/// What one object says.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `{"id": 0}`: the meter asks for an id.
    Hello,
    Reading(MeterReading),
}

/// Reads one framed object (see the module docs). Values are checked against `limits`; the
/// time is checked by [`MeterReading::resolve`], once the zone is known.
pub fn parse_message(bytes: &[u8], limits: &Limits) -> Result<Message, TcpMeterError> {
    let map: Map<String, Value> = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(TcpMeterError::new(codes::BAD_JSON, "not a JSON object")),
        Err(e) => {
            return Err(TcpMeterError::new(
                codes::BAD_JSON,
                format!("malformed JSON: {e}"),
            ))
        }
    };
    let id = match map.get("id") {
        None | Some(Value::Null) => {
            return Err(TcpMeterError::new(
                codes::BAD_ID,
                "no \"id\": send {\"id\": 0} to get one",
            ))
        }
        Some(v) => parse_id(v)?,
    };
    let consumption = map.get("consumption").filter(|v| !v.is_null());
    let Some(meter) = id else {
        if consumption.is_some() {
            return Err(TcpMeterError::new(
                codes::BAD_ID,
                "id 0 asks for an id and cannot carry a reading; use the id the handshake returned",
            ));
        }
        return Ok(Message::Hello);
    };
    let id_text = meter.to_string();
    let fail = |e: TcpMeterError| e.with_id(&id_text);
    if let Some(t) = map.get("type") {
        if t.as_str() != Some("/spent") {
            return Err(fail(TcpMeterError::new(
                codes::UNSUPPORTED_TYPE,
                format!("field \"type\": {} is not \"/spent\"", clip(&t.to_string())),
            )));
        }
    }
    let consumption = match consumption {
        None => {
            return Err(fail(TcpMeterError::new(
                codes::NO_VALUES,
                "no \"consumption\" (cumulative kWh)",
            )))
        }
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(other) => {
            return Err(fail(TcpMeterError::new(
                codes::BAD_FIELD_TYPE,
                format!(
                    "field \"consumption\": {} is not a number",
                    clip(&other.to_string())
                ),
            )))
        }
    };
    if let Err(e) = limits.check_value(Quantity::Energy, consumption) {
        return Err(fail(TcpMeterError::new(
            e.code(),
            format!("field \"consumption\": {e}"),
        )));
    }
    let time = match map.get("datetime") {
        None | Some(Value::Null) => MeterTime::Arrival,
        Some(Value::String(s)) => parse_time(s).map_err(fail)?,
        Some(other) => {
            return Err(fail(TcpMeterError::new(
                codes::BAD_TIMESTAMP,
                format!(
                    "field \"datetime\": {} is not a string",
                    clip(&other.to_string())
                ),
            )))
        }
    };
    Ok(Message::Reading(MeterReading {
        meter,
        consumption,
        time,
    }))
}

/// `None` for the handshake id 0.
fn parse_id(v: &Value) -> Result<Option<MeterId>, TcpMeterError> {
    let bad = || {
        TcpMeterError::new(
            codes::BAD_ID,
            format!(
                "\"id\": {} is not an id Wattline assigns (digits, or 0 to ask for one)",
                clip(&v.to_string())
            ),
        )
    };
    let n = match v {
        Value::Number(n) => n.as_u64().ok_or_else(bad)?,
        Value::String(s) => {
            let canonical = !s.is_empty()
                && s.len() <= 19
                && s.bytes().all(|b| b.is_ascii_digit())
                && (s == "0" || !s.starts_with('0'));
            if !canonical {
                return Err(bad());
            }
            s.parse().map_err(|_| bad())?
        }
        _ => return Err(bad()),
    };
    Ok((n != 0).then_some(MeterId(n)))
}

fn parse_time(s: &str) -> Result<MeterTime, TcpMeterError> {
    let t = s.trim();
    // An offset or `Z` makes it an instant; jiff's civil parser would drop the offset.
    let has_offset = t.ends_with(['Z', 'z'])
        || t.rfind(['+', '-']).is_some_and(|i| {
            // A date's own dashes come before the time; an offset sign comes after it.
            t[..i].contains(':')
        });
    if has_offset {
        if let Ok(ts) = t.parse::<Timestamp>() {
            return Ok(MeterTime::Absolute(ts));
        }
    } else if let Ok(dt) = t.parse::<DateTime>() {
        // A date alone parses as midnight; a meter always sends the time of day.
        if t.len() > 10 {
            return Ok(MeterTime::Local(dt));
        }
    }
    Err(TcpMeterError::new(
        codes::BAD_TIMESTAMP,
        format!(
            "field \"datetime\": {} is not a local time like \"2026-11-22 07:01:19\"",
            clip(&format!("{s:?}"))
        ),
    ))
}

impl MeterReading {
    /// The reading's instant and values. `tz` is the device's site zone; `previous` the
    /// meter's newest reading before this one (to place wall times in a DST fold); `now` the
    /// arrival time. The instant is checked against `limits`.
    pub fn resolve(
        &self,
        tz: &TimeZone,
        previous: Option<TsMs>,
        limits: &Limits,
        now: TsMs,
    ) -> Result<(TsMs, Values), TcpMeterError> {
        let id = self.meter.to_string();
        let ts = match self.time {
            MeterTime::Arrival => now,
            MeterTime::Absolute(t) => TsMs::from_timestamp(t),
            MeterTime::Local(dt) => local_to_instant(dt, tz, previous).ok_or_else(|| {
                TcpMeterError::new(
                    codes::BAD_TIMESTAMP,
                    format!("field \"datetime\": {dt} does not exist in the site's time zone"),
                )
                .with_id(&id)
            })?,
        };
        limits.check_ts(ts, now).map_err(|e| {
            TcpMeterError::new(
                e.code(),
                format!(
                    "field \"datetime\": {} ({ts}) is {}",
                    describe_time(&self.time),
                    match e.code() {
                        "timestamp_too_old" => format!("before {}", limits.earliest),
                        _ => format!(
                            "more than {} h ahead of the server clock ({now})",
                            limits.max_ahead_ms / TsMs::HOUR
                        ),
                    }
                ),
            )
            .with_id(&id)
        })?;
        Ok((ts, Values::new().with(Quantity::Energy, self.consumption)))
    }
}

fn describe_time(t: &MeterTime) -> String {
    match t {
        MeterTime::Arrival => "the arrival time".to_owned(),
        MeterTime::Local(dt) => dt.to_string(),
        MeterTime::Absolute(ts) => ts.to_string(),
    }
}

/// A wall time in `tz` as an instant, with gaps and folds resolved as the module docs say.
/// `None` only when the result is outside the representable range.
pub fn local_to_instant(dt: DateTime, tz: &TimeZone, previous: Option<TsMs>) -> Option<TsMs> {
    let at = |offset: jiff::tz::Offset| offset.to_timestamp(dt).ok().map(TsMs::from_timestamp);
    match tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => at(offset),
        // The offset before the gap: the clock had not jumped yet.
        AmbiguousOffset::Gap { before, .. } => at(before),
        AmbiguousOffset::Fold { before, after } => {
            let (early, late) = (at(before)?, at(after)?);
            match previous {
                Some(p) if late.0.abs_diff(p.0) < early.0.abs_diff(p.0) => Some(late),
                _ => Some(early),
            }
        }
    }
}

fn clip(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
#[path = "tcp_meter_tests.rs"]
mod tests;
