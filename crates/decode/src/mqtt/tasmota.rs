//! Tasmota: energy telemetry on `tele/<topic>/SENSOR`, availability on `tele/<topic>/LWT`.
//!
//! Tasmota's default FullTopic is `%prefix%/%topic%/`, so every topic of a device is
//! `<prefix>/<topic>/<command>` with prefix `tele` (telemetry), `stat` (answers) or `cmnd`
//! (commands), and the identity is `<topic>`. All three name the device, so all three are
//! recognised (a custom FullTopic with more levels is not); two topics carry what Wattline
//! stores:
//!
//! | topic | result |
//! |---|---|
//! | `tele/<topic>/SENSOR` with an `ENERGY` object | readings (below) |
//! | `tele/<topic>/SENSOR` without `ENERGY` (temperature sensors only...) | nothing |
//! | `tele/<topic>/LWT`: `Online` / `Offline` | availability |
//! | `tele/<topic>/STATE`, `tele/<topic>/INFO1`..., `stat/<topic>/...`, `cmnd/<topic>/...` | nothing |
//!
//! # `ENERGY`
//!
//! | key | quantity | per channel |
//! |---|---|---|
//! | `Total` (kWh) | `energy` | `main` gets the value, or the sum of an array |
//! | `ExportActive` (kWh) | `energy_export` | as `Total` |
//! | `Power` | `power` | as `Total` |
//! | `ApparentPower`, `ReactivePower`, `Factor`, `Current` | `apparent_power`, `reactive_power`, `power_factor`, `current` | a scalar goes to `main`, an array to `ch1`, `ch2`, ... |
//! | `Voltage`, `Frequency` | `voltage`, `frequency` | a scalar goes to `main` *and* to every `chN`; an array to `chN` only |
//!
//! A device with several relays or phases sends per-channel values as arrays (element `i` is
//! channel `ch<i+1>`) while `Voltage` and the counters usually stay scalar. The channels then
//! get their own power, currents and factors plus the shared voltage, and `main` gets the
//! device totals: a counter for the energy and the summed power. Only power and the counters
//! are summed: apparent power and current of several channels do not add up to a meaningful
//! device value. The channels get no counter of their own unless the device sends one per
//! channel (`Total` as an array): Wattline integrates their power. The channel count is the
//! longest array; a shorter array or a `null` element leaves that value out for the channels
//! it does not reach. At most [`MAX_CHANNELS`] channels, so one payload cannot create an
//! unbounded number of series.
//!
//! `Yesterday`, `Today`, `Period` (derived from `Total`) and `TotalStartTime` are ignored, as is
//! every key outside `ENERGY`.
//!
//! # Time
//!
//! `Time` is the device's local wall time without an offset, and `1970-01-01T...` until NTP
//! has synchronised, so it cannot be turned into an instant: readings are stamped with the
//! receive time `now`.
//!
//! # Refusals
//!
//! A value where a number belongs that is no number (text, an object, a nested array) is
//! `bad_number`; a number outside [`Limits`] (or a sum outside them) is `out_of_range`; both
//! name the field as `ENERGY.Power` or `ENERGY.Power[1]` (the array index, from 0).
//! `null` means absent; more than [`MAX_CHANNELS`] elements are `out_of_range` too. Malformed
//! JSON, or JSON that is not an object where one belongs, is `bad_json`; a payload that is not
//! UTF-8, or an LWT word other than `Online`/`Offline`, is `bad_text`; an `ENERGY` object with
//! none of the keys above is `no_values`; a topic id that is no valid id is `bad_id`.
//!
//! The helpers at the end are shared with the Shelly adapter.

use serde_json::Value;
use wattline_domain::{ChannelName, Limits, Quantity, TsMs, Values};

use super::common::{availability, check_id, checked, json, json_object, number};
use super::{adapter_codes as codes, AdapterError, ChannelReading, Decoded, Format, TopicIdentity};

/// Most channels one `ENERGY` object may describe.
const MAX_CHANNELS: usize = 32;

/// How the values of a key spread over `main` and the `chN` channels.
#[derive(Clone, Copy, PartialEq)]
enum Spread {
    /// `main` gets a scalar or the sum of an array.
    Summed,
    /// A scalar goes to `main` and every channel.
    Shared,
    /// A scalar goes to `main`, an array to the channels.
    Own,
}

const KEYS: [(&str, Quantity, Spread); 9] = [
    ("Total", Quantity::Energy, Spread::Summed),
    ("ExportActive", Quantity::EnergyExport, Spread::Summed),
    ("Power", Quantity::Power, Spread::Summed),
    ("ApparentPower", Quantity::ApparentPower, Spread::Own),
    ("ReactivePower", Quantity::ReactivePower, Spread::Own),
    ("Factor", Quantity::PowerFactor, Spread::Own),
    ("Current", Quantity::Current, Spread::Own),
    ("Voltage", Quantity::Voltage, Spread::Shared),
    ("Frequency", Quantity::Frequency, Spread::Shared),
];

pub(super) fn identity(topic: &str) -> Option<TopicIdentity> {
    let mut levels = topic.split('/');
    match (levels.next(), levels.next(), levels.next(), levels.next()) {
        (Some("tele" | "stat" | "cmnd"), Some(id), Some(command), None) if !command.is_empty() => {
            Some(TopicIdentity::new(Format::Tasmota, id))
        }
        _ => None,
    }
}

pub(super) fn decode(
    topic: &str,
    identity: TopicIdentity,
    payload: &[u8],
    now: TsMs,
    limits: &Limits,
) -> Result<Decoded, AdapterError> {
    check_id(topic, &identity.id)?;
    let prefix = topic.split('/').next();
    let command = topic.rsplit('/').next();
    match (prefix, command) {
        (Some("tele"), Some("SENSOR")) => Ok(match sensor(topic, payload, now, limits)? {
            Some(readings) => Decoded::Readings {
                identity,
                readings,
                rejected: Vec::new(),
            },
            None => Decoded::Nothing {
                identity: Some(identity),
            },
        }),
        (Some("tele"), Some("LWT")) => Ok(Decoded::Availability {
            online: availability(topic, "LWT", payload, "Online", "Offline")?,
            identity,
        }),
        _ => Ok(Decoded::Nothing {
            identity: Some(identity),
        }),
    }
}

/// The readings of a SENSOR payload, `main` first; `None` when it has no `ENERGY`.
fn sensor(
    topic: &str,
    payload: &[u8],
    now: TsMs,
    limits: &Limits,
) -> Result<Option<Vec<ChannelReading>>, AdapterError> {
    let root = json(topic, payload)?;
    let Some(energy) = root.get("ENERGY") else {
        return Ok(None);
    };
    let energy = json_object(topic, "ENERGY", energy)?;
    let mut main = Values::new();
    let mut shared = Values::new();
    let mut channels: Vec<Values> = Vec::new();
    for (key, q, spread) in KEYS {
        let Some(item) = energy.get(key) else {
            continue;
        };
        let field = format!("ENERGY.{key}");
        match item {
            Value::Array(items) => {
                if items.len() > MAX_CHANNELS {
                    let what =
                        format!("{} channels; at most {MAX_CHANNELS} are taken", items.len());
                    return Err(AdapterError::new(
                        topic,
                        Some(&field),
                        codes::OUT_OF_RANGE,
                        what,
                    ));
                }
                if channels.len() < items.len() {
                    channels.resize(items.len(), Values::new());
                }
                let mut sum = None;
                for (i, item) in items.iter().enumerate() {
                    let element = format!("{field}[{i}]");
                    if let Some(v) = number(topic, &element, item, q, 1.0, limits)? {
                        channels[i].set(q, v);
                        sum = Some(sum.unwrap_or(0.0) + v);
                    }
                }
                if let (Spread::Summed, Some(sum)) = (spread, sum) {
                    // In-range channels can still add up to a sum no meter reports.
                    main.set(q, checked(topic, &field, q, sum, limits)?);
                }
            }
            item => {
                if let Some(v) = number(topic, &field, item, q, 1.0, limits)? {
                    main.set(q, v);
                    if spread == Spread::Shared {
                        shared.set(q, v);
                    }
                }
            }
        }
    }
    let mut out = Vec::with_capacity(channels.len() + 1);
    let mut push = |channel, values| {
        out.push(ChannelReading {
            channel,
            ts: now,
            values,
        })
    };
    if !main.is_empty() {
        push(ChannelName::default_channel(), main);
    }
    for (i, mut values) in channels.into_iter().enumerate() {
        if !values.is_empty() {
            values.overlay(&shared);
            let name = ChannelName::parse(format!("ch{}", i + 1)).expect("ch<n> is a channel name");
            push(name, values);
        }
    }
    if out.is_empty() {
        let keys = KEYS.map(|(k, _, _)| k).join(", ");
        return Err(AdapterError::new(
            topic,
            Some("ENERGY"),
            codes::NO_VALUES,
            format!("none of {keys}"),
        ));
    }
    Ok(Some(out))
}

#[cfg(test)]
#[path = "tasmota_tests.rs"]
mod tests;
