//! The ESP32 energy-meter sketch (EmonLib style): one reading spread over four plain-text topics.
//!
//! | topic | payload | meaning |
//! |---|---|---|
//! | `<prefix>/data/kWh` | `0.06436kWh` | cumulative energy, kWh (survives reboots) |
//! | `<prefix>/data/Current` | `0.00A` | RMS current, A |
//! | `<prefix>/data/Voltage` | `8.37V` | RMS voltage, V |
//! | `<prefix>/temps` | `0 Days, 00:31:38` | uptime since boot (not wall time) |
//!
//! The identity is `<prefix>`, which must be one topic level and a valid id: `<x>/temps` is a
//! generic shape, and a stricter match claims fewer foreign topics. Topic levels are matched
//! exactly (MQTT topics are case-sensitive); the units in payloads case-insensitively.
//!
//! A value is a number (`-?\d+(\.\d+)?([eE][+-]?\d+)?`), optional whitespace, then exactly the
//! topic's unit; anything else is `bad_number` (`12abcV`, `V`, `1.2A` on the Voltage topic, a
//! bare `8.37`). Values are checked against the limits (`out_of_range`).
//!
//! The sketch publishes the three values of a cycle as separate QoS 0 messages every 5 s, so
//! [`Esp32State`] merges them into one reading on channel `main`, stamped with the receive time
//! of the cycle's first value (the device has no clock; `temps` carries no value and could as
//! well close the previous cycle as open the next). A cycle is emitted:
//! * when it has energy, current and voltage;
//! * when a value arrives that the pending cycle already has: the pending cycle is emitted as
//!   it is and the value starts the next one, so a lost message costs only that value;
//! * when any message of the device arrives more than 30 s after the pending cycle began (the
//!   device went quiet; mixing values that far apart would misdate them);
//! * when the uptime goes down: the device rebooted, and values from before the reboot are not
//!   merged with values after it.
//!
//! The uptime produces no values (it is not wall time), so `temps` is `Nothing` unless it
//! flushes a cycle; a malformed uptime is `bad_number` all the same. A refused message leaves
//! the state untouched. A cycle still pending when the device falls silent is emitted with its
//! next message, or dropped by [`Esp32State::forget`].

use std::collections::HashMap;

use wattline_domain::{ChannelName, DeviceId, Limits, Quantity, TsMs, Values};

use super::common::number_len;
use super::{adapter_codes, AdapterError, ChannelReading, Decoded, Format, TopicIdentity};

/// How long a cycle may wait for its other values.
const STALE_MS: i64 = 30_000;

/// The quantities of a complete cycle.
const CYCLE: [Quantity; 3] = [Quantity::Energy, Quantity::Current, Quantity::Voltage];

/// Memory between messages, per device id.
#[derive(Debug, Default)]
pub struct Esp32State {
    devices: HashMap<String, Device>,
}

impl Esp32State {
    pub fn forget(&mut self, id: &str) {
        self.devices.remove(id);
    }
}

#[derive(Debug, Default)]
struct Device {
    cycle: Option<Cycle>,
    /// The last uptime reported, in seconds: a smaller one means a reboot.
    uptime_s: Option<u64>,
}

#[derive(Debug)]
struct Cycle {
    started: TsMs,
    values: Values,
}

impl Device {
    /// Takes the pending cycle if it is stale at `now` or `also` says so.
    fn flush_if(&mut self, now: TsMs, also: impl FnOnce(&Cycle) -> bool) -> Option<Cycle> {
        let flush = self
            .cycle
            .as_ref()
            .is_some_and(|c| now.0.saturating_sub(c.started.0) > STALE_MS || also(c));
        if flush {
            self.cycle.take()
        } else {
            None
        }
    }
}

/// What a topic's last level carries.
#[derive(Debug, Clone, Copy)]
enum Leaf {
    /// A quantity and the unit the sketch appends to it.
    Value(Quantity, &'static str),
    Uptime,
}

fn parse_topic(topic: &str) -> Option<(&str, Leaf)> {
    let (prefix, leaf) = match topic.strip_suffix("/temps") {
        Some(prefix) => (prefix, Leaf::Uptime),
        None => {
            let (prefix, name) = topic.rsplit_once("/data/")?;
            let leaf = match name {
                "kWh" => Leaf::Value(Quantity::Energy, "kWh"),
                "Current" => Leaf::Value(Quantity::Current, "A"),
                "Voltage" => Leaf::Value(Quantity::Voltage, "V"),
                _ => return None,
            };
            (prefix, leaf)
        }
    };
    // A valid id has no `/`, so this also keeps the prefix to one level.
    DeviceId::parse(prefix).is_ok().then_some((prefix, leaf))
}

pub(super) fn identity(topic: &str) -> Option<TopicIdentity> {
    parse_topic(topic).map(|(prefix, _)| TopicIdentity::new(Format::Esp32, prefix))
}

pub(super) fn decode(
    state: &mut Esp32State,
    topic: &str,
    identity: TopicIdentity,
    payload: &[u8],
    now: TsMs,
    limits: &Limits,
) -> Result<Decoded, AdapterError> {
    let Some((_, leaf)) = parse_topic(topic) else {
        return Err(AdapterError::new(
            topic,
            None,
            adapter_codes::UNKNOWN_TOPIC,
            "not an ESP32 sketch topic",
        ));
    };
    let field = topic.rsplit('/').next();
    let text = std::str::from_utf8(payload).map_err(|e| {
        let what = format!("payload is not UTF-8: {e}");
        AdapterError::new(topic, field, adapter_codes::BAD_TEXT, what)
    })?;
    let text = text.trim_ascii();
    let done = match leaf {
        Leaf::Value(q, unit) => {
            let value = parse_with_unit(text, unit).ok_or_else(|| {
                let what = format!("{text:?} is not a number followed by {unit:?}");
                AdapterError::new(topic, field, adapter_codes::BAD_NUMBER, what)
            })?;
            limits
                .check_value(q, value)
                .map_err(|e| AdapterError::new(topic, field, adapter_codes::OUT_OF_RANGE, e))?;
            let device = state.devices.entry(identity.id.clone()).or_default();
            let flushed = device.flush_if(now, |c| c.values.get(q).is_some());
            let cycle = device.cycle.get_or_insert(Cycle {
                started: now,
                values: Values::new(),
            });
            cycle.values.set(q, value);
            let complete = CYCLE.iter().all(|&q| cycle.values.get(q).is_some());
            match flushed {
                Some(c) => Some(c),
                None if complete => device.cycle.take(),
                None => None,
            }
        }
        Leaf::Uptime => {
            let uptime = parse_uptime(text).ok_or_else(|| {
                let what = format!("{text:?} is not an uptime like \"0 Days, 00:31:38\"");
                AdapterError::new(topic, field, adapter_codes::BAD_NUMBER, what)
            })?;
            let device = state.devices.entry(identity.id.clone()).or_default();
            let rebooted = device.uptime_s.is_some_and(|last| uptime < last);
            device.uptime_s = Some(uptime);
            device.flush_if(now, |_| rebooted)
        }
    };
    Ok(match done {
        Some(cycle) => Decoded::Readings {
            identity,
            readings: vec![ChannelReading {
                channel: ChannelName::default_channel(),
                ts: cycle.started,
                values: cycle.values,
            }],
            rejected: Vec::new(),
        },
        None => Decoded::Nothing {
            identity: Some(identity),
        },
    })
}

/// `8.37V`, `8.37 v`: the number before exactly `unit` (any case). `text` is trimmed.
fn parse_with_unit(text: &str, unit: &str) -> Option<f64> {
    let (number, rest) = text.split_at(number_len(text));
    if number.is_empty() || !rest.trim_ascii_start().eq_ignore_ascii_case(unit) {
        return None;
    }
    number.parse().ok()
}

/// `0 Days, 00:31:38` (also `1 Day,`) in seconds. `text` is trimmed.
fn parse_uptime(text: &str) -> Option<u64> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    // Nine digits of days is millions of years: more cannot be an uptime (nor overflow).
    if !(1..=9).contains(&digits) {
        return None;
    }
    let days: u64 = text[..digits].parse().ok()?;
    let rest = &text[digits..];
    let word = rest.trim_ascii_start();
    if word.len() == rest.len() {
        return None;
    }
    let letters = word.bytes().take_while(u8::is_ascii_alphabetic).count();
    let (name, rest) = word.split_at(letters);
    if !(name.eq_ignore_ascii_case("days") || name.eq_ignore_ascii_case("day")) {
        return None;
    }
    let clock = rest.strip_prefix(',')?.trim_ascii_start();
    let &[h1, h2, b':', m1, m2, b':', s1, s2] = clock.as_bytes() else {
        return None;
    };
    let two = |a: u8, b: u8| {
        (a.is_ascii_digit() && b.is_ascii_digit()).then(|| u64::from((a - b'0') * 10 + (b - b'0')))
    };
    let (h, m, s) = (two(h1, h2)?, two(m1, m2)?, two(s1, s2)?);
    if h >= 24 || m >= 60 || s >= 60 {
        return None;
    }
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
#[path = "esp32_tests.rs"]
mod tests;
