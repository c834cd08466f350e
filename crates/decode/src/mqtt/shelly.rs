//! Shelly: Gen2+ (Plus/Pro) JSON status and RPC notifications, Gen1 one-value-per-topic text.
//!
//! # Gen2 and later
//!
//! The identity is the device's MQTT prefix (by default its id, `shellyplus1pm-a8032ab12345`).
//! A prefix is one topic level and never one of the other families' roots (`tele`, `stat`,
//! `cmnd`, `emon`, `wattline`, `one-minute`, `ten-second`, `shellies`), so these shapes do not
//! swallow their topics:
//!
//! | topic | result |
//! |---|---|
//! | `<prefix>/status/<component>` (generic status update) | a meter component: readings from its full status, remembered; any other (`sys`, `wifi`, `input:0`...): nothing |
//! | `<prefix>/events/rpc`, method `NotifyStatus` | each meter component in `params` is a delta: laid over the remembered status, readings from the merged status |
//! | `<prefix>/events/rpc`, method `NotifyFullStatus` | each meter component in `params` is a full status, as on `status/` |
//! | `<prefix>/events/rpc`, any other method (`NotifyEvent`: button presses...) | nothing |
//! | `<prefix>/online`: `true` / `false` | availability |
//! | `<prefix>/rpc` (commands to the device, replies to a client) | nothing |
//!
//! Meter components and where their values go (`Wh` counters are divided by 1000 into kWh):
//!
//! | component | channel | keys |
//! |---|---|---|
//! | `switch:N`, `pm1:N`, `cover:N`, `light:N` | the component (`switch:0`) | `apower` power, `voltage`, `current`, `pf` power_factor, `freq` frequency, `aenergy.total` energy, `ret_aenergy.total` energy_export |
//! | `em1:N` (single-phase EM) | `em1:N` | `act_power` power, `aprt_power` apparent_power, `voltage`, `current`, `pf`, `freq` |
//! | `em1data:N` | `em1:N` | `total_act_energy` energy, `total_act_ret_energy` energy_export |
//! | `em:0` (three-phase Pro 3EM) | `L1`, `L2`, `L3` from `a_`, `b_`, `c_` keys; `main` | per phase `voltage`, `current`, `act_power`, `aprt_power`, `pf`, `freq`; `main` gets `total_act_power` and `total_aprt_power` |
//! | `emdata:0` | `L1`, `L2`, `L3`; `main` | `a_total_act_energy` energy, `a_total_act_ret_energy` energy_export (`b_`, `c_` alike); `main` gets `total_act`, `total_act_ret` |
//!
//! `main` carries the device totals, as for a multi-channel Tasmota: it is the channel a query
//! that names none reads. `em:N` and `emdata:N` with `N > 0` are not taken (no device has
//! them; their phases would collide with `em:0`'s). `aenergy.by_minute` and `minute_ts` are
//! not readings of this instant and are ignored, as are temperatures and relay state.
//!
//! Deltas: a Gen2 device sends only what changed, so an unchanged value is still the last one
//! it sent. The decoder remembers, per prefix and component, the last values (not the JSON:
//! only what a reading needs) and lays a delta's values over them. A delta for a component
//! with no remembered status yields what the delta has, and is remembered in turn, so later
//! deltas build on it; one without meter values yields nothing. A message that is refused
//! changes nothing that is remembered, so a bad delta cannot corrupt later readings. At most
//! [`MAX_COMPONENTS`] components are remembered per prefix.
//!
//! Time: `params.ts` of a notification (unix seconds, fractional) stamps its readings, rounded
//! to the millisecond. A `ts` the limits refuse (a clock not set yet, or running far ahead)
//! is not trusted and `now` is used instead, as is a missing `ts`; a `ts` that is no number
//! is `bad_timestamp`. A `status/` message carries no time of its own and is stamped `now`.
//!
//! # Gen1
//!
//! The identity is `<id>` of `shellies/<id>/...`; every topic under it names the device. One
//! value per topic, as text in JSON number syntax; each message is its own reading at `now`.
//!
//! | topic | channel | quantity |
//! |---|---|---|
//! | `shellies/<id>/relay/N/power` (also `light/N`, `roller/N`) | `relayN` (`lightN`, `rollerN`) | power, W |
//! | `shellies/<id>/relay/N/energy` (also `light/N`, `roller/N`) | `relayN` | energy: watt-minutes / 60000 = kWh |
//! | `shellies/<id>/emeter/N/{power, reactive_power, voltage, current, pf}` (EM, 3EM) | `emeterN` | power, reactive_power, voltage, current, power_factor |
//! | `shellies/<id>/emeter/N/total`, `.../total_returned` | `emeterN` | energy, energy_export: Wh / 1000 |
//! | `shellies/<id>/online`: `true` / `false` | | availability |
//! | anything else (`relay/N` state, `relay/N/command`, `emeter/N/energy`...) | | nothing |
//!
//! The emeter's `energy` / `returned_energy` (watt-minutes) are left out: `total` and
//! `total_returned` count the same energy.
//!
//! # Refusals
//!
//! As for Tasmota: `bad_number` for text or another non-number where a number belongs,
//! `out_of_range` for values the limits refuse, `bad_json` for malformed JSON or a
//! non-object where an object belongs (a status, `params`, `aenergy`), `bad_text` for a payload
//! that is not UTF-8 or an availability word that is neither `true` nor `false`, `bad_id` for
//! an identity that is no valid id. Fields are named as paths: `apower`, `aenergy.total`,
//! `params.switch:0.apower`; for Gen1, the topic's last level.

use std::collections::HashMap;

use serde_json::{Map, Value};
use wattline_domain::{ChannelName, Limits, Quantity as Q, TsMs, Values};

use super::common::{availability, check_id, describe, json, json_object, number, text_number};
use super::{adapter_codes as codes, AdapterError, ChannelReading, Decoded, Format, TopicIdentity};

/// First topic levels that belong to other families (or to Gen1) and are never a Gen2 prefix.
const RESERVED: [&str; 8] = [
    "tele",
    "stat",
    "cmnd",
    "emon",
    "wattline",
    "one-minute",
    "ten-second",
    "shellies",
];

/// Most components remembered per prefix: a Pro 4PM has four switches, a Pro 3EM in
/// single-phase mode three `em1` and three `em1data`; this bounds memory against a publisher
/// inventing components.
const MAX_COMPONENTS: usize = 32;

/// Wh per kWh: Shelly's counters are in Wh.
const WH: f64 = 1000.0;
/// Watt-minutes per kWh: Gen1 relay counters are in watt-minutes.
const WMIN: f64 = 60_000.0;

/// One row of a component's layout: the channel (`None`: named as the component), the key
/// (`outer.inner` for a key inside an object), the quantity, and the divisor into Wattline's unit.
type Row = (Option<&'static str>, &'static str, Q, f64);

const POWER_METER: &[Row] = &[
    (None, "apower", Q::Power, 1.0),
    (None, "voltage", Q::Voltage, 1.0),
    (None, "current", Q::Current, 1.0),
    (None, "pf", Q::PowerFactor, 1.0),
    (None, "freq", Q::Frequency, 1.0),
    (None, "aenergy.total", Q::Energy, WH),
    (None, "ret_aenergy.total", Q::EnergyExport, WH),
];

const EM1: &[Row] = &[
    (None, "act_power", Q::Power, 1.0),
    (None, "aprt_power", Q::ApparentPower, 1.0),
    (None, "voltage", Q::Voltage, 1.0),
    (None, "current", Q::Current, 1.0),
    (None, "pf", Q::PowerFactor, 1.0),
    (None, "freq", Q::Frequency, 1.0),
];

const EM1_DATA: &[Row] = &[
    (None, "total_act_energy", Q::Energy, WH),
    (None, "total_act_ret_energy", Q::EnergyExport, WH),
];

const EM: &[Row] = &[
    (Some("L1"), "a_act_power", Q::Power, 1.0),
    (Some("L1"), "a_aprt_power", Q::ApparentPower, 1.0),
    (Some("L1"), "a_voltage", Q::Voltage, 1.0),
    (Some("L1"), "a_current", Q::Current, 1.0),
    (Some("L1"), "a_pf", Q::PowerFactor, 1.0),
    (Some("L1"), "a_freq", Q::Frequency, 1.0),
    (Some("L2"), "b_act_power", Q::Power, 1.0),
    (Some("L2"), "b_aprt_power", Q::ApparentPower, 1.0),
    (Some("L2"), "b_voltage", Q::Voltage, 1.0),
    (Some("L2"), "b_current", Q::Current, 1.0),
    (Some("L2"), "b_pf", Q::PowerFactor, 1.0),
    (Some("L2"), "b_freq", Q::Frequency, 1.0),
    (Some("L3"), "c_act_power", Q::Power, 1.0),
    (Some("L3"), "c_aprt_power", Q::ApparentPower, 1.0),
    (Some("L3"), "c_voltage", Q::Voltage, 1.0),
    (Some("L3"), "c_current", Q::Current, 1.0),
    (Some("L3"), "c_pf", Q::PowerFactor, 1.0),
    (Some("L3"), "c_freq", Q::Frequency, 1.0),
    (Some("main"), "total_act_power", Q::Power, 1.0),
    (Some("main"), "total_aprt_power", Q::ApparentPower, 1.0),
];

const EM_DATA: &[Row] = &[
    (Some("L1"), "a_total_act_energy", Q::Energy, WH),
    (Some("L1"), "a_total_act_ret_energy", Q::EnergyExport, WH),
    (Some("L2"), "b_total_act_energy", Q::Energy, WH),
    (Some("L2"), "b_total_act_ret_energy", Q::EnergyExport, WH),
    (Some("L3"), "c_total_act_energy", Q::Energy, WH),
    (Some("L3"), "c_total_act_ret_energy", Q::EnergyExport, WH),
    (Some("main"), "total_act", Q::Energy, WH),
    (Some("main"), "total_act_ret", Q::EnergyExport, WH),
];

/// The values of one component, per channel in its layout's order (empty ones included, so
/// a delta lines up with the remembered status).
type Status = Vec<(ChannelName, Values)>;

/// Memory between messages: the last values of each Gen2 meter component, per prefix.
#[derive(Debug, Default)]
pub struct ShellyState {
    devices: HashMap<String, HashMap<String, Status>>,
}

impl ShellyState {
    pub fn forget(&mut self, id: &str) {
        self.devices.remove(id);
    }

    fn remember(&mut self, prefix: &str, component: &str, status: Status) {
        let components = self.devices.entry(prefix.to_owned()).or_default();
        if components.len() < MAX_COMPONENTS || components.contains_key(component) {
            components.insert(component.to_owned(), status);
        }
    }

    /// `<prefix>/status/<component>`.
    fn status(
        &mut self,
        topic: &str,
        identity: TopicIdentity,
        component: &str,
        payload: &[u8],
        now: TsMs,
        limits: &Limits,
    ) -> Result<Decoded, AdapterError> {
        let Some((rows, own)) = layout(component) else {
            return Ok(nothing(identity));
        };
        let status = values(topic, "", rows, &own, &json(topic, payload)?, limits)?;
        let readings = readings(&status, now);
        self.remember(&identity.id, component, status);
        Ok(decoded(identity, readings))
    }

    /// `<prefix>/events/rpc`.
    fn notification(
        &mut self,
        topic: &str,
        identity: TopicIdentity,
        payload: &[u8],
        now: TsMs,
        limits: &Limits,
    ) -> Result<Decoded, AdapterError> {
        let msg = json(topic, payload)?;
        let full = match msg.get("method") {
            Some(Value::String(m)) if m == "NotifyStatus" => false,
            Some(Value::String(m)) if m == "NotifyFullStatus" => true,
            Some(Value::String(_)) => return Ok(nothing(identity)),
            other => {
                let found = other.map_or_else(|| "nothing".to_owned(), describe);
                let what = format!("expected the notification's name, found {found}");
                return Err(AdapterError::new(
                    topic,
                    Some("method"),
                    codes::BAD_JSON,
                    what,
                ));
            }
        };
        let params = json_object(topic, "params", msg.get("params").unwrap_or(&Value::Null))?;
        let ts = notification_ts(topic, params, now, limits)?;
        // Everything is decoded before anything is remembered: a refused message leaves the
        // memory as it was.
        let mut updates = Vec::new();
        for (component, delta) in params {
            let Some((rows, own)) = layout(component) else {
                continue;
            };
            let at = format!("params.{component}.");
            let field = &at[..at.len() - 1];
            let delta = values(
                topic,
                &at,
                rows,
                &own,
                json_object(topic, field, delta)?,
                limits,
            )?;
            let merged = match self
                .devices
                .get(&identity.id)
                .and_then(|d| d.get(component))
            {
                Some(last) if !full => overlay(last, &delta),
                _ => delta,
            };
            updates.push((component, merged));
        }
        let mut out = Vec::new();
        for (component, status) in updates {
            out.extend(readings(&status, ts));
            self.remember(&identity.id, component, status);
        }
        Ok(decoded(identity, out))
    }
}

pub(super) fn identity(topic: &str) -> Option<TopicIdentity> {
    let levels: Vec<&str> = topic.split('/').collect();
    let id = match levels.as_slice() {
        ["shellies", id, _, ..] => id,
        [prefix, ..] if RESERVED.contains(prefix) => return None,
        [prefix, "online" | "rpc"] | [prefix, "events", "rpc"] => prefix,
        [prefix, "status", component] if is_component(component) => prefix,
        _ => return None,
    };
    Some(TopicIdentity::new(Format::Shelly, *id))
}

pub(super) fn decode(
    state: &mut ShellyState,
    topic: &str,
    identity: TopicIdentity,
    payload: &[u8],
    now: TsMs,
    limits: &Limits,
) -> Result<Decoded, AdapterError> {
    check_id(topic, &identity.id)?;
    let levels: Vec<&str> = topic.split('/').collect();
    match levels.as_slice() {
        ["shellies", _, rest @ ..] => gen1(topic, identity, rest, payload, now, limits),
        [_, "online"] => Ok(Decoded::Availability {
            online: availability(topic, "online", payload, "true", "false")?,
            identity,
        }),
        [_, "events", "rpc"] => state.notification(topic, identity, payload, now, limits),
        [_, "status", component] => state.status(topic, identity, component, payload, now, limits),
        _ => Ok(nothing(identity)),
    }
}

/// `shellies/<id>/<rest>`.
fn gen1(
    topic: &str,
    identity: TopicIdentity,
    rest: &[&str],
    payload: &[u8],
    now: TsMs,
    limits: &Limits,
) -> Result<Decoded, AdapterError> {
    let (kind, n, leaf, q, div) = match *rest {
        ["online"] => {
            return Ok(Decoded::Availability {
                online: availability(topic, "online", payload, "true", "false")?,
                identity,
            })
        }
        [kind @ ("relay" | "light" | "roller"), n, leaf @ "power"] => {
            (kind, n, leaf, Q::Power, 1.0)
        }
        [kind @ ("relay" | "light" | "roller"), n, leaf @ "energy"] => {
            (kind, n, leaf, Q::Energy, WMIN)
        }
        ["emeter", n, leaf] => {
            let (q, div) = match leaf {
                "power" => (Q::Power, 1.0),
                "reactive_power" => (Q::ReactivePower, 1.0),
                "voltage" => (Q::Voltage, 1.0),
                "current" => (Q::Current, 1.0),
                "pf" => (Q::PowerFactor, 1.0),
                "total" => (Q::Energy, WH),
                "total_returned" => (Q::EnergyExport, WH),
                _ => return Ok(nothing(identity)),
            };
            ("emeter", n, leaf, q, div)
        }
        _ => return Ok(nothing(identity)),
    };
    if !is_index(n) {
        return Ok(nothing(identity));
    }
    let channel = ChannelName::parse(format!("{kind}{n}"))
        .map_err(|e| AdapterError::new(topic, None, codes::BAD_ID, e))?;
    let v = text_number(topic, leaf, payload, q, div, limits)?;
    let values = Values::new().with(q, v);
    Ok(decoded(
        identity,
        vec![ChannelReading {
            channel,
            ts: now,
            values,
        }],
    ))
}

/// The rows of a meter component and the name of its own channel; `None` for other components.
fn layout(component: &str) -> Option<(&'static [Row], String)> {
    let (kind, n) = component.split_once(':')?;
    if !is_index(n) {
        return None;
    }
    Some(match (kind, n) {
        ("switch" | "pm1" | "cover" | "light", _) => (POWER_METER, component.to_owned()),
        ("em1", _) => (EM1, component.to_owned()),
        ("em1data", n) => (EM1_DATA, format!("em1:{n}")),
        ("em", "0") => (EM, String::new()),
        ("emdata", "0") => (EM_DATA, String::new()),
        _ => return None,
    })
}

/// The values a component's status (or delta) carries, per channel of its layout. `at` prefixes
/// field names in refusals.
fn values(
    topic: &str,
    at: &str,
    rows: &[Row],
    own: &str,
    status: &Map<String, Value>,
    limits: &Limits,
) -> Result<Status, AdapterError> {
    let mut out: Status = Vec::new();
    for &(channel, key, q, div) in rows {
        let channel = channel.unwrap_or(own);
        if out.last().is_none_or(|(c, _)| c.as_str() != channel) {
            let name = ChannelName::parse(channel)
                .map_err(|e| AdapterError::new(topic, None, codes::BAD_ID, e))?;
            out.push((name, Values::new()));
        }
        let Some(raw) = lookup(topic, at, status, key)? else {
            continue;
        };
        let v = number(topic, &format!("{at}{key}"), raw, q, div, limits)?;
        if let (Some(v), Some((_, values))) = (v, out.last_mut()) {
            values.set(q, v);
        }
    }
    Ok(out)
}

/// The value at `key`, or at `inner` of the object at `outer` for `outer.inner`; `None` when
/// absent (`null` is left to [`number`], which takes it as absent too).
fn lookup<'s>(
    topic: &str,
    at: &str,
    status: &'s Map<String, Value>,
    key: &str,
) -> Result<Option<&'s Value>, AdapterError> {
    let Some((outer, inner)) = key.split_once('.') else {
        return Ok(status.get(key));
    };
    match status.get(outer) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => Ok(json_object(topic, &format!("{at}{outer}"), v)?.get(inner)),
    }
}

/// `last` with the values `delta` has laid over it.
fn overlay(last: &Status, delta: &Status) -> Status {
    last.iter()
        .zip(delta)
        .map(|((channel, old), (_, new))| {
            let mut merged = *old;
            merged.overlay(new);
            (channel.clone(), merged)
        })
        .collect()
}

fn notification_ts(
    topic: &str,
    params: &Map<String, Value>,
    now: TsMs,
    limits: &Limits,
) -> Result<TsMs, AdapterError> {
    match params.get("ts") {
        None | Some(Value::Null) => Ok(now),
        Some(Value::Number(n)) => {
            // `as` saturates: a ts beyond i64 milliseconds becomes an instant the limits refuse.
            let ts = TsMs((n.as_f64().unwrap_or(0.0) * 1000.0).round() as i64);
            Ok(if limits.check_ts(ts, now).is_ok() {
                ts
            } else {
                now
            })
        }
        Some(other) => Err(AdapterError::new(
            topic,
            Some("params.ts"),
            codes::BAD_TIMESTAMP,
            format!("{} is not unix seconds", describe(other)),
        )),
    }
}

fn readings(status: &Status, ts: TsMs) -> Vec<ChannelReading> {
    status
        .iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(channel, values)| ChannelReading {
            channel: channel.clone(),
            ts,
            values: *values,
        })
        .collect()
}

fn decoded(identity: TopicIdentity, readings: Vec<ChannelReading>) -> Decoded {
    if readings.is_empty() {
        nothing(identity)
    } else {
        Decoded::Readings {
            identity,
            readings,
            rejected: Vec::new(),
        }
    }
}

fn nothing(identity: TopicIdentity) -> Decoded {
    Decoded::Nothing {
        identity: Some(identity),
    }
}

/// A Gen2 component name as it appears in topics: `sys`, `switch:0`, `bthomesensor:200`.
fn is_component(s: &str) -> bool {
    let (kind, n) = s.split_once(':').unwrap_or((s, "0"));
    kind.starts_with(|c: char| c.is_ascii_lowercase())
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && is_index(n)
}

fn is_index(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
#[path = "shelly_tests.rs"]
mod tests;
