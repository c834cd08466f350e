//! Wattline's ingest decoders: request bodies in, validated [`Reading`]s and per-line errors out.
//!
//! Everything here is pure (no I/O, no clock: the caller passes `now`), so the HTTP handlers
//! and, later, the MQTT subscriber share the same decoders and the same error codes.
//!
//! # Formats
//!
//! ## InfluxDB line protocol ([`parse_line_protocol`])
//!
//! As InfluxDB 1.x/2.x accept it and Telegraf and the Influx client libraries write it:
//!
//! ```text
//! # comment
//! energy,device=meter-1,channel=L1 voltage=230.1,power=512i,energy=1234.5 1767632400000000000
//! ```
//!
//! * The measurement must be there but its name is ignored.
//! * Tag `device` (or its alias `device_id`) names the device and is required; tag `channel`
//!   names the channel (default `main`, [`ChannelName::DEFAULT`]). Both are validated as ids.
//!   Other tags are ignored silently (Telegraf adds `host` and friends).
//! * Fields named as a [`Quantity`] (`voltage`, `current`, `power`, `apparent_power`,
//!   `reactive_power`, `power_factor`, `frequency`, `energy`, `energy_export`) become the
//!   reading's values. They must be numeric: float (`1.5`, `-2`, `1e3`, `.5`), integer (`12i`)
//!   or unsigned (`12u`). Other fields may have any type (strings, booleans too); they are
//!   ignored and their names are reported in [`Outcome::unknown_fields`] so typos show up.
//! * Escapes: `\,` `\ ` `\=` and `\\` in the measurement, tag keys, tag values and field keys;
//!   `\"` and `\\` in string field values. A backslash before any other character is literal.
//! * The timestamp is optional (missing means `now`); its unit is the request's [`Precision`]
//!   (nanoseconds unless told otherwise, as in InfluxDB). Sub-millisecond parts are truncated
//!   toward negative infinity, since Wattline stores milliseconds.
//! * Blank lines, `#` comments, `\r\n` line endings, leading and trailing whitespace and runs
//!   of spaces between the sections are accepted.
//! * A line ends at `\n`, always: as InfluxDB documents, newlines are not supported inside
//!   field values, so an unclosed string is reported on its own line instead of swallowing
//!   the rest of the body.
//! * `NaN`, `inf` and friends are not line-protocol floats (InfluxDB refuses them too), so they
//!   are `syntax` errors. A float that overflows (`1e999`) is syntactically fine and is refused
//!   as `not_finite`.
//! * A field repeated on one line: the last value wins (as InfluxDB). Tags that name the device
//!   (`device`, `device_id`) or the channel, repeated on one line, must agree (`bad_id`).
//! * Throughput: about 3 million generator lines per second (CPU time) on one core of the
//!   development machine; `examples/lp_throughput.rs` measures it.
//!
//! ## JSON readings ([`parse_json_readings`])
//!
//! A flat object, or an array of them:
//!
//! ```json
//! {"device": "meter-1", "ts": "2026-01-05T17:00:00Z", "channel": "L1", "voltage": 230.1, "power": 512}
//! ```
//!
//! * `device` (alias `device_id`) is required: a string, or a non-negative integer taken as its
//!   decimal digits (line protocol tags are text, so `device=17` and `"device": 17` agree).
//! * `channel` is optional (a string; `null` means the default channel).
//! * `ts` is optional (missing or `null` means `now`): a number is unix milliseconds
//!   (a fraction is truncated toward negative infinity), a string is RFC 3339 or a string of
//!   digits (unix milliseconds).
//! * Quantity values must be JSON numbers; `null` means absent. Other keys are ignored and
//!   reported in [`Outcome::unknown_fields`]. A key repeated in one object: the last wins, but
//!   `device` and `device_id` must agree.
//! * Numbers are parsed exactly (serde_json's `float_roundtrip`), as in line protocol.
//! * A leading UTF-8 byte order mark is skipped.
//! * A body that is not well-formed JSON (or not an object or array) gives one `bad_json`
//!   error with `line == 0` (the body as a whole) and no readings. An array item that is not
//!   an object is a `bad_json` error for that item only.
//!
//! ## Socket meters ([`tcp_meter`])
//!
//! JSON objects over a raw TCP stream with no framing (`{"id": 0}` handshakes and
//! `{"id": "7", "consumption": …, "datetime": …}` readings); see the module for framing,
//! resynchronisation and how local wall times meet daylight saving time.
//!
//! # Partial batches
//!
//! **A batch with some bad lines is stored in part**: the good readings are stored and the
//! response lists the bad lines. These decoders do not decide what is stored; an [`Outcome`]
//! carries both lists (`readings` and `errors`) and the HTTP layer stores the former and
//! reports the latter. A meter that sends one implausible value then loses that one line, not
//! the whole batch, and the client learns which line and why.
//!
//! Each refused line (or JSON item) gives exactly one [`LineError`]: the first problem found,
//! in this order: syntax (`syntax`, `bad_timestamp`, `bad_json`), then the device and channel
//! (`missing_device`, `bad_id`), then the fields in the order they appear (`bad_field_type`,
//! `not_finite`, `out_of_range`), then `no_values`, then the timestamp's range
//! (`timestamp_too_old`, `timestamp_in_future`). So `lines == readings.len() + errors.len()`,
//! except for a malformed JSON body.
//!
//! [`ChannelName::DEFAULT`]: wattline_domain::ChannelName::DEFAULT
//! [`Quantity`]: wattline_domain::Quantity

use std::collections::BTreeSet;
use std::fmt;

use wattline_domain::Reading;

mod fail;
mod json;
mod lp;
pub mod mqtt;
pub mod tcp_meter;

pub use json::parse_json_readings;
pub use lp::{
    count_lines, parse_line_protocol, parse_line_protocol_into, readings_capacity, Precision,
};

/// The stable machine codes of [`LineError::code`]. API clients and metrics match on these.
pub mod codes {
    /// Malformed line protocol: a missing measurement or field, a bad escape or value syntax.
    pub const SYNTAX: &str = "syntax";
    /// The body is not well-formed JSON, or a batch item is not an object.
    pub const BAD_JSON: &str = "bad_json";
    /// No `device` (or `device_id`) tag or key.
    pub const MISSING_DEVICE: &str = "missing_device";
    /// The device or channel is not a valid identifier.
    pub const BAD_ID: &str = "bad_id";
    /// A quantity field whose value is not a number (a string, a boolean, an object...).
    pub const BAD_FIELD_TYPE: &str = "bad_field_type";
    /// The reading has no quantity field.
    pub const NO_VALUES: &str = "no_values";
    /// A quantity value that is infinite or NaN.
    pub const NOT_FINITE: &str = "not_finite";
    /// A quantity value outside what a meter can report ([`wattline_domain::Limits`]).
    pub const OUT_OF_RANGE: &str = "out_of_range";
    /// A timestamp before [`wattline_domain::Limits::earliest`].
    pub const TIMESTAMP_TOO_OLD: &str = "timestamp_too_old";
    /// A timestamp too far ahead of the server clock.
    pub const TIMESTAMP_IN_FUTURE: &str = "timestamp_in_future";
    /// A timestamp that is not a number (or RFC 3339 text, in JSON), or overflows.
    pub const BAD_TIMESTAMP: &str = "bad_timestamp";
}

/// Why one line (line protocol) or one item (JSON) was refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LineError {
    /// 1-based: the physical line of the body (blank and comment lines count), or the index of
    /// the item in a JSON batch (1 for a single object). 0 means the body as a whole.
    pub line: usize,
    /// The field, tag or key at fault, when one is.
    pub field: Option<String>,
    /// One of [`codes`].
    pub code: &'static str,
    /// For people: names the line, the field and what is wrong, e.g.
    /// `line 3: field "power_factor": 1.2 is outside -1..=1`.
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LineError {}

/// What a body decoded to: the good readings and the refused lines, both in body order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub readings: Vec<Reading>,
    pub errors: Vec<LineError>,
    /// Names of fields (line protocol) or keys (JSON) that are no quantity and were ignored.
    pub unknown_fields: BTreeSet<String>,
    /// How many lines (JSON: items) were decoded: blank and comment lines do not count.
    pub lines: usize,
}

/// The outcome of [`parse_line_protocol`].
pub type LpOutcome = Outcome;
/// The outcome of [`parse_json_readings`].
pub type JsonOutcome = Outcome;
