//! Wattline's own topics: the HTTP API's JSON readings, over MQTT.
//!
//! | topic | published by | payload | decoded by |
//! |---|---|---|---|
//! | `wattline/<device>/readings` | the device (its own credential) | JSON reading or batch | [`decode`]: identity `native:<device>` |
//! | `wattline/readings` | a gateway (site or admin credential) | JSON reading or batch, every item names its device | [`decode_gateway`]: identity `native:` (empty id) |
//! | `wattline/<device>/commands` | Wattline, for the device to subscribe to | — | [`decode`]: `Nothing` |
//!
//! The body is exactly what `POST /api/v1/readings` takes as JSON (see the crate docs), with
//! one difference on a device's own topic: `device` may be omitted, since the topic names it.
//! An item that names *another* device is refused (`bad_id`): the broker authenticated the
//! publisher as the topic's device, and that credential must not write other devices' series.
//! A gateway topic has no device of its own, so there every item must name one.
//!
//! Items are independent readings, so a batch is taken in part as on the HTTP API: refused
//! items go to `rejected`, one error each, and only a body that is not JSON at all fails the
//! message. The JSON decoder's codes are mapped to [`adapter_codes`] so MQTT metrics use one
//! vocabulary for every family (`bad_field_type` is `bad_number`, `missing_device` is `bad_id`,
//! `not_finite` is `out_of_range`, timestamp range errors are `bad_timestamp`); the message
//! keeps the detail.
//!
//! The empty id stands for "gateway" because no device id can be empty; for the same reason
//! `wattline//readings` is no native topic at all. Any other device level is taken as an
//! identity so that a malformed id is reported as `bad_id` rather than as an unknown topic.

use wattline_domain::{DeviceId, Limits, Reading, TsMs};

use super::{adapter_codes, AdapterError, ChannelReading, Decoded, Format, TopicIdentity};
use crate::json::parse_json_readings_for_device;
use crate::{codes, LineError};

/// The gateway topic, where the payload names the devices.
const GATEWAY_TOPIC: &str = "wattline/readings";

pub(super) fn identity(topic: &str) -> Option<TopicIdentity> {
    if topic == GATEWAY_TOPIC {
        return Some(TopicIdentity::new(Format::Native, ""));
    }
    let (device, kind) = topic.strip_prefix("wattline/")?.split_once('/')?;
    let known = matches!(kind, "readings" | "commands");
    (known && !device.is_empty()).then(|| TopicIdentity::new(Format::Native, device))
}

pub(super) fn decode(
    topic: &str,
    identity: TopicIdentity,
    payload: &[u8],
    now: TsMs,
    limits: &Limits,
) -> Result<Decoded, AdapterError> {
    if identity.id.is_empty() {
        return Err(AdapterError::new(
            topic,
            None,
            adapter_codes::UNKNOWN_TOPIC,
            "gateway topic: use decode_gateway",
        ));
    }
    let device = DeviceId::parse(identity.id.as_str()).map_err(|e| {
        AdapterError::new(
            topic,
            None,
            adapter_codes::BAD_ID,
            format!("the topic's device: {e}"),
        )
    })?;
    if topic.ends_with("/commands") {
        return Ok(Decoded::Nothing {
            identity: Some(identity),
        });
    }
    let (readings, rejected) = decode_body(topic, payload, Some(&device), now, limits)?;
    let readings = readings
        .into_iter()
        .map(|r| ChannelReading {
            channel: r.channel,
            ts: r.ts,
            values: r.values,
        })
        .collect();
    Ok(Decoded::Readings {
        identity,
        readings,
        rejected,
    })
}

/// Decodes a message of the gateway topic `wattline/readings`: readings of the devices the
/// items name (each must name one), and the refused items. `Err`: not the gateway topic, or a
/// body that is not JSON. Which devices the publisher may write is the caller's decision (a
/// site credential: its site's devices).
pub fn decode_gateway(
    topic: &str,
    payload: &[u8],
    now: TsMs,
    limits: &Limits,
) -> Result<(Vec<Reading>, Vec<AdapterError>), AdapterError> {
    if topic != GATEWAY_TOPIC {
        return Err(AdapterError::new(
            topic,
            None,
            adapter_codes::UNKNOWN_TOPIC,
            format!("not the gateway topic {GATEWAY_TOPIC:?}"),
        ));
    }
    decode_body(topic, payload, None, now, limits)
}

fn decode_body(
    topic: &str,
    payload: &[u8],
    device: Option<&DeviceId>,
    now: TsMs,
    limits: &Limits,
) -> Result<(Vec<Reading>, Vec<AdapterError>), AdapterError> {
    let out = parse_json_readings_for_device(payload, device, now, limits);
    let to_adapter = |e: LineError| AdapterError {
        topic: topic.to_owned(),
        field: e.field,
        code: adapter_code(e.code),
        message: format!("{topic}: {}", e.message),
    };
    let mut errors = out.errors.into_iter();
    match errors.next() {
        // Line 0 is the body as a whole: the one error of a body that is not JSON.
        Some(e) if e.line == 0 => Err(to_adapter(e)),
        first => Ok((
            out.readings,
            first.into_iter().chain(errors).map(to_adapter).collect(),
        )),
    }
}

/// The [`adapter_codes`] code of a JSON decoder code.
fn adapter_code(code: &'static str) -> &'static str {
    match code {
        codes::BAD_JSON => adapter_codes::BAD_JSON,
        codes::MISSING_DEVICE | codes::BAD_ID => adapter_codes::BAD_ID,
        codes::BAD_FIELD_TYPE => adapter_codes::BAD_NUMBER,
        codes::NOT_FINITE | codes::OUT_OF_RANGE => adapter_codes::OUT_OF_RANGE,
        codes::NO_VALUES => adapter_codes::NO_VALUES,
        codes::BAD_TIMESTAMP | codes::TIMESTAMP_TOO_OLD | codes::TIMESTAMP_IN_FUTURE => {
            adapter_codes::BAD_TIMESTAMP
        }
        // A code added to the JSON decoder later: keep it rather than misname it.
        other => other,
    }
}

#[cfg(test)]
#[path = "native_tests.rs"]
mod tests;
