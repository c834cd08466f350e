//! Refusals shared by the decoders, and their messages.

use std::fmt;

use wattline_domain::{Limits, Quantity, TsMs, ValueError};

use crate::{codes, LineError};

/// A refusal of one line or item, before it is told where it happened.
#[derive(Debug)]
pub(crate) struct Fail {
    pub code: &'static str,
    pub field: Option<String>,
    /// The message without its `line N: ` prefix.
    pub msg: String,
}

impl Fail {
    pub fn new(code: &'static str, field: Option<&str>, msg: String) -> Self {
        Fail {
            code,
            field: field.map(str::to_owned),
            msg,
        }
    }

    /// Places the refusal: `what` is `line` or `item`, `n` its 1-based number.
    pub fn at(self, what: &str, n: usize) -> LineError {
        LineError {
            line: n,
            field: self.field,
            code: self.code,
            message: format!("{what} {n}: {}", self.msg),
        }
    }
}

/// A quantity value refused by the limits; `raw` is the value as the client wrote it.
pub(crate) fn value_fail(q: Quantity, raw: &dyn fmt::Display, e: &ValueError) -> Fail {
    let field = q.field();
    let msg = match e {
        ValueError::NotFinite { .. } => format!("field {field:?}: {raw} is not a finite number"),
        ValueError::OutOfRange { min, max, unit, .. } => {
            let sep = if unit.is_empty() { "" } else { " " };
            format!("field {field:?}: {raw} is outside {min}..={max}{sep}{unit}")
        }
        other => format!("field {field:?}: {other}"),
    };
    Fail::new(e.code(), Some(field), msg)
}

/// A timestamp refused by the limits; `raw` is the timestamp as the client wrote it.
pub(crate) fn ts_fail(
    raw: &dyn fmt::Display,
    field: Option<&str>,
    ts: TsMs,
    e: &ValueError,
    limits: &Limits,
    now: TsMs,
) -> Fail {
    let msg = match e {
        ValueError::TooOld { .. } => format!(
            "timestamp {raw} ({}) is before {}",
            iso(ts),
            iso(limits.earliest)
        ),
        ValueError::InFuture { .. } => format!(
            "timestamp {raw} ({}) is more than {} ahead of the server clock ({})",
            iso(ts),
            duration(limits.max_ahead_ms),
            iso(now)
        ),
        other => format!("timestamp {raw}: {other}"),
    };
    Fail::new(e.code(), field, msg)
}

/// A timestamp that cannot be read or converted.
pub(crate) fn bad_ts(field: Option<&str>, msg: String) -> Fail {
    Fail::new(codes::BAD_TIMESTAMP, field, msg)
}

/// RFC 3339 text of an instant, for messages.
pub(crate) fn iso(ts: TsMs) -> String {
    match jiff::Timestamp::from_millisecond(ts.0) {
        Ok(t) => t.to_string(),
        Err(_) => format!("{} ms, beyond year 9999", ts.0),
    }
}

fn duration(ms: i64) -> String {
    if ms % TsMs::HOUR == 0 {
        format!("{} h", ms / TsMs::HOUR)
    } else if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

/// The quantity a field name (as raw bytes) stands for. A name that needed escapes can never be
/// one, so callers pass unescaped-free names only.
#[inline]
pub(crate) fn quantity_of(name: &[u8]) -> Option<Quantity> {
    Some(match name {
        b"voltage" => Quantity::Voltage,
        b"current" => Quantity::Current,
        b"power" => Quantity::Power,
        b"apparent_power" => Quantity::ApparentPower,
        b"reactive_power" => Quantity::ReactivePower,
        b"power_factor" => Quantity::PowerFactor,
        b"frequency" => Quantity::Frequency,
        b"energy" => Quantity::Energy,
        b"energy_export" => Quantity::EnergyExport,
        _ => return None,
    })
}

/// `voltage, current, …`: the known field names, for `no_values` messages.
pub(crate) fn known_fields() -> String {
    Quantity::ALL.map(Quantity::field).join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_names_match_the_domain() {
        for q in Quantity::ALL {
            assert_eq!(quantity_of(q.field().as_bytes()), Some(q));
        }
        assert_eq!(quantity_of(b"Voltage"), None);
    }
}
