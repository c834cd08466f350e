//! What the adapters share: reading text, JSON and numbers out of payloads strictly, checking
//! values against the limits, and refusals that name the topic and field.

use serde_json::{Map, Value};
use wattline_domain::{DeviceId, Limits, Quantity, TsMs};

use super::{adapter_codes as codes, AdapterError};

/// Refuses a topic whose identity part is no valid id: it could never be bound to a device.
pub(super) fn check_id(topic: &str, id: &str) -> Result<(), AdapterError> {
    DeviceId::parse(id)
        .map(drop)
        .map_err(|e| AdapterError::new(topic, None, codes::BAD_ID, e))
}

/// The payload as text; `field` is the topic level that names it.
pub(super) fn text<'p>(
    topic: &str,
    field: Option<&str>,
    payload: &'p [u8],
) -> Result<&'p str, AdapterError> {
    std::str::from_utf8(payload)
        .map_err(|e| AdapterError::new(topic, field, codes::BAD_TEXT, format!("not UTF-8: {e}")))
}

/// The payload as a JSON object.
pub(super) fn json(topic: &str, payload: &[u8]) -> Result<Map<String, Value>, AdapterError> {
    let v = serde_json::from_str(text(topic, None, payload)?).map_err(|e| {
        AdapterError::new(topic, None, codes::BAD_JSON, format!("malformed JSON: {e}"))
    })?;
    match v {
        Value::Object(map) => Ok(map),
        other => Err(not_an_object(topic, None, &other)),
    }
}

/// `v` as an object; `field` is where it sits.
pub(super) fn json_object<'v>(
    topic: &str,
    field: &str,
    v: &'v Value,
) -> Result<&'v Map<String, Value>, AdapterError> {
    match v {
        Value::Object(map) => Ok(map),
        other => Err(not_an_object(topic, Some(field), other)),
    }
}

fn not_an_object(topic: &str, field: Option<&str>, found: &Value) -> AdapterError {
    let what = format!("expected an object, found {}", describe(found));
    AdapterError::new(topic, field, codes::BAD_JSON, what)
}

/// A JSON value where a number of `q` belongs, divided by `div` into Wattline's unit and
/// checked against the limits. `null` is absent.
pub(super) fn number(
    topic: &str,
    field: &str,
    v: &Value,
    q: Quantity,
    div: f64,
    limits: &Limits,
) -> Result<Option<f64>, AdapterError> {
    match v {
        Value::Null => Ok(None),
        // Without serde_json's arbitrary_precision every number has an f64; NaN would be
        // refused by the limits if that ever changed.
        Value::Number(n) => checked(
            topic,
            field,
            q,
            n.as_f64().unwrap_or(f64::NAN) / div,
            limits,
        )
        .map(Some),
        other => Err(not_a_number(topic, field, &describe(other))),
    }
}

/// A number sent as text (Shelly Gen1): JSON number syntax, surrounding whitespace allowed,
/// so `12abc`, `0x10`, `inf` and `NaN` are refused rather than half-read.
pub(super) fn text_number(
    topic: &str,
    field: &str,
    payload: &[u8],
    q: Quantity,
    div: f64,
    limits: &Limits,
) -> Result<f64, AdapterError> {
    let t = text(topic, Some(field), payload)?;
    let v = parse_number(t.trim()).ok_or_else(|| not_a_number(topic, field, &quoted(t)))?;
    checked(topic, field, q, v / div, limits)
}

/// `v` if the limits take it for `q`.
pub(super) fn checked(
    topic: &str,
    field: &str,
    q: Quantity,
    v: f64,
    limits: &Limits,
) -> Result<f64, AdapterError> {
    limits
        .check_value(q, v)
        .map(|()| v)
        .map_err(|e| AdapterError::new(topic, Some(field), codes::OUT_OF_RANGE, e))
}

/// An availability word; `field` is the topic level that carries it.
pub(super) fn availability(
    topic: &str,
    field: &str,
    payload: &[u8],
    online: &str,
    offline: &str,
) -> Result<bool, AdapterError> {
    let t = text(topic, Some(field), payload)?.trim();
    if t.eq_ignore_ascii_case(online) {
        Ok(true)
    } else if t.eq_ignore_ascii_case(offline) {
        Ok(false)
    } else {
        let what = format!("{} is neither {online:?} nor {offline:?}", quoted(t));
        Err(AdapterError::new(topic, Some(field), codes::BAD_TEXT, what))
    }
}

fn not_a_number(topic: &str, field: &str, found: &str) -> AdapterError {
    AdapterError::new(
        topic,
        Some(field),
        codes::BAD_NUMBER,
        format!("{found} is not a number"),
    )
}

/// A JSON value for a message: strings quoted and clipped, containers by kind.
pub(super) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => quoted(s),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
        other => other.to_string(),
    }
}

/// Text quoted for a message, clipped so a huge payload cannot bloat logs.
fn quoted(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((end, _)) => format!("{:?}...", &s[..end]),
        None => format!("{s:?}"),
    }
}

/// Unix seconds (with any fraction) to milliseconds, rounded: the fraction of an `f64` number of
/// seconds is rarely exact (`0.123` is `0.12299...`), and truncating would move whole
/// milliseconds. `None` if out of range or not finite.
pub(super) fn seconds_to_ms(secs: f64) -> Option<TsMs> {
    let ms = (secs * 1000.0).round();
    // i64::MAX as f64 rounds up to 2^63, which is out of range itself; NaN is in no range.
    (-9.223_372_036_854_776e18..9.223_372_036_854_776e18)
        .contains(&ms)
        .then_some(TsMs(ms as i64))
}

/// The length of the longest prefix of `s` that is a number: `-?\d+(\.\d+)?([eE][+-]?\d+)?`.
/// A `.` or exponent not followed by digits is not part of it (`5.` is `5` and a rest `.`).
pub(super) fn number_len(s: &str) -> usize {
    let b = s.as_bytes();
    let digits = |from: usize| {
        b.get(from..)
            .unwrap_or_default()
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let mut end = usize::from(b.first() == Some(&b'-'));
    let int = digits(end);
    if int == 0 {
        return 0;
    }
    end += int;
    if b.get(end) == Some(&b'.') {
        let frac = digits(end + 1);
        if frac > 0 {
            end += 1 + frac;
        }
    }
    if matches!(b.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(end + 1), Some(b'+' | b'-')));
        let exp = digits(end + 1 + sign);
        if exp > 0 {
            end += 1 + sign + exp;
        }
    }
    end
}

/// `s` as a number, if all of it is one (see [`number_len`]). Too large is infinite, which the
/// limits refuse.
pub(super) fn parse_number(s: &str) -> Option<f64> {
    if s.is_empty() || number_len(s) != s.len() {
        return None;
    }
    s.parse().ok()
}
