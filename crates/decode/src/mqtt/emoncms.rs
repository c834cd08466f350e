//! emoncms-style input: what OpenEnergyMonitor's emonhub (emonTx, emonPi) publishes over MQTT.
//!
//! | topic | payload | readings |
//! |---|---|---|
//! | `emon/<node>/<key>` | one plain number, e.g. `352` | one value, stamped with the receive time |
//! | `emon/<node>` | a JSON object of keys to values, e.g. `{"power1":352,"vrms":238.4,"time":1795302000}` | one reading per channel, stamped with `time` (unix seconds) or, without it, the receive time |
//!
//! The identity is `<node>`, which must be a valid id (`bad_id` otherwise). Values may be JSON
//! numbers or numeric strings (emonhub passes through what the node sent); `null` is no value.
//! Keys are matched case-insensitively, because emonhub publishes the names configured for the
//! node, which differ in case between firmware generations (`vrms` on emonTx V3, `Vrms` on the
//! continuous-monitoring firmware). `N` stands for the digits of a CT input, stored on channel
//! `chN`; keys without digits go to channel `main`:
//!
//! | keys | quantity |
//! |---|---|
//! | `power`, `powerN`, `pN` | power, W |
//! | `vrms` | voltage, V (one voltage input serves every CT, so it is `main`'s) |
//! | `current`, `irms`, `currentN`, `irmsN`, `iN` | current, A |
//! | `pf`, `pfN` | power factor |
//! | `frequency`, `freq` | frequency, Hz |
//! | `energy`, `kwh`, `energyN`, `kwhN` | cumulative energy, kWh |
//! | `wh`, `whN`, `eN` | cumulative energy in Wh, stored as kWh |
//!
//! `eN` is Wh because the emonTx V3/V4 continuous-monitoring firmware's `E1..E6` are Wh
//! accumulators (their emonhub node decoders declare the unit `Wh`). Every other key (`temp1`,
//! `t1`, `pulse`, `MSG`, `rssi`, `power1pluspower2`, which is a sum of inputs already stored...)
//! is ignored; a message with nothing but ignored keys is `Nothing`.
//!
//! A message is one sample of one node, so it is refused as a whole on its first bad value
//! (in key order): text where a number belongs is `bad_number`, an implausible value
//! `out_of_range`, a bad `time` `bad_timestamp`, each naming the key.
//!
//! This module also holds the strict number syntax the ESP32 adapter shares: a decimal number
//! as a meter prints it (`-12`, `0.5`, `1e-05`), no `inf`, `nan`, `+` sign, `.5` or `5.`.

use std::collections::BTreeMap;

use serde_json::Value;
use wattline_domain::{ChannelName, DeviceId, Limits, Quantity, TsMs, Values};

use super::common::{parse_number, seconds_to_ms};
use super::{adapter_codes, AdapterError, ChannelReading, Decoded, Format, TopicIdentity};

pub(super) fn identity(topic: &str) -> Option<TopicIdentity> {
    let rest = topic.strip_prefix("emon/")?;
    let node = match rest.split_once('/') {
        None => rest,
        Some((node, key)) if !key.is_empty() && !key.contains('/') => node,
        Some(_) => return None,
    };
    (!node.is_empty()).then(|| TopicIdentity::new(Format::Emoncms, node))
}

pub(super) fn decode(
    topic: &str,
    identity: TopicIdentity,
    payload: &[u8],
    now: TsMs,
    limits: &Limits,
) -> Result<Decoded, AdapterError> {
    if let Err(e) = DeviceId::parse(identity.id.as_str()) {
        let msg = format!("node {:?} is not a valid id: {e}", identity.id);
        return Err(AdapterError::new(topic, None, adapter_codes::BAD_ID, msg));
    }
    let text = std::str::from_utf8(payload).map_err(|e| {
        AdapterError::new(
            topic,
            None,
            adapter_codes::BAD_TEXT,
            format!("payload is not UTF-8: {e}"),
        )
    })?;
    let key = topic
        .strip_prefix("emon/")
        .and_then(|rest| rest.split_once('/'));
    let readings = match key.map(|(_, key)| key) {
        Some(key) => single_value(topic, key, text, now, limits)?,
        None => json_object(topic, text, now, limits)?,
    };
    if readings.is_empty() {
        return Ok(Decoded::Nothing {
            identity: Some(identity),
        });
    }
    Ok(Decoded::Readings {
        identity,
        readings,
        rejected: Vec::new(),
    })
}

/// What an input key stands for.
struct Input {
    quantity: Quantity,
    channel: ChannelName,
    /// What the value is divided by to get the quantity's unit (1000 for Wh).
    divisor: f64,
}

fn input(key: &str) -> Option<Input> {
    let key = key.to_ascii_lowercase();
    let name = key.trim_end_matches(|c: char| c.is_ascii_digit());
    let digits = &key[name.len()..];
    let numbered = !digits.is_empty();
    let (quantity, divisor) = match name {
        "power" => (Quantity::Power, 1.0),
        "p" if numbered => (Quantity::Power, 1.0),
        "vrms" if !numbered => (Quantity::Voltage, 1.0),
        "current" | "irms" => (Quantity::Current, 1.0),
        "i" if numbered => (Quantity::Current, 1.0),
        "pf" => (Quantity::PowerFactor, 1.0),
        "frequency" | "freq" if !numbered => (Quantity::Frequency, 1.0),
        "energy" | "kwh" => (Quantity::Energy, 1.0),
        "wh" => (Quantity::Energy, 1000.0),
        "e" if numbered => (Quantity::Energy, 1000.0),
        _ => return None,
    };
    let channel = if numbered {
        // Only a run of digits too long for a channel name fails here: not a CT input.
        ChannelName::parse(format!("ch{digits}")).ok()?
    } else {
        ChannelName::default_channel()
    };
    Some(Input {
        quantity,
        channel,
        divisor,
    })
}

/// `emon/<node>/<key>`: one number.
fn single_value(
    topic: &str,
    key: &str,
    text: &str,
    now: TsMs,
    limits: &Limits,
) -> Result<Vec<ChannelReading>, AdapterError> {
    let Some(input) = input(key) else {
        return Ok(Vec::new());
    };
    let text = text.trim_ascii();
    let Some(raw) = parse_number(text) else {
        let what = if text.is_empty() {
            "empty payload, expected a number".to_owned()
        } else {
            format!("{text:?} is not a number")
        };
        return Err(AdapterError::new(
            topic,
            Some(key),
            adapter_codes::BAD_NUMBER,
            what,
        ));
    };
    let value = checked(topic, key, &input, raw, limits)?;
    Ok(vec![ChannelReading {
        channel: input.channel,
        ts: now,
        values: Values::new().with(input.quantity, value),
    }])
}

/// `emon/<node>`: a JSON object, one reading per channel.
fn json_object(
    topic: &str,
    text: &str,
    now: TsMs,
    limits: &Limits,
) -> Result<Vec<ChannelReading>, AdapterError> {
    let object: serde_json::Map<String, Value> = serde_json::from_str(text).map_err(|e| {
        let what = format!("expected a JSON object of input values: {e}");
        AdapterError::new(topic, None, adapter_codes::BAD_JSON, what)
    })?;
    let ts = match object.get("time") {
        None | Some(Value::Null) => now,
        Some(time) => timestamp(topic, time, now, limits)?,
    };
    let mut channels: BTreeMap<ChannelName, Values> = BTreeMap::new();
    for (key, value) in &object {
        let Some(input) = input(key) else {
            continue;
        };
        let raw = match value {
            Value::Null => continue,
            Value::Number(n) => n.as_f64(),
            Value::String(s) => parse_number(s),
            _ => None,
        };
        let Some(raw) = raw else {
            let what = format!("{value} is not a number");
            return Err(AdapterError::new(
                topic,
                Some(key),
                adapter_codes::BAD_NUMBER,
                what,
            ));
        };
        let value = checked(topic, key, &input, raw, limits)?;
        let quantity = input.quantity;
        channels
            .entry(input.channel)
            .or_default()
            .set(quantity, value);
    }
    Ok(channels
        .into_iter()
        .map(|(channel, values)| ChannelReading {
            channel,
            ts,
            values,
        })
        .collect())
}

/// The value in the quantity's unit, if the limits allow it.
fn checked(
    topic: &str,
    key: &str,
    input: &Input,
    raw: f64,
    limits: &Limits,
) -> Result<f64, AdapterError> {
    let value = raw / input.divisor;
    limits
        .check_value(input.quantity, value)
        .map_err(|e| AdapterError::new(topic, Some(key), adapter_codes::OUT_OF_RANGE, e))?;
    Ok(value)
}

/// `time`: unix seconds, as a number or a numeric string.
fn timestamp(topic: &str, time: &Value, now: TsMs, limits: &Limits) -> Result<TsMs, AdapterError> {
    let bad =
        |what: String| AdapterError::new(topic, Some("time"), adapter_codes::BAD_TIMESTAMP, what);
    let secs = match time {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => parse_number(s),
        _ => None,
    };
    let ts = secs
        .and_then(seconds_to_ms)
        .ok_or_else(|| bad(format!("{time} is not a unix time in seconds")))?;
    limits
        .check_ts(ts, now)
        .map_err(|e| bad(format!("{time}: {e}")))?;
    Ok(ts)
}

#[cfg(test)]
#[path = "emoncms_tests.rs"]
mod tests;
