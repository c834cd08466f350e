//! Clemap energy monitor: binary aggregates under `ten-second/<serial>` and `one-minute/<serial>`.
//!
//! The identity is `<serial>` (the topic's last level, e.g. `SE05000160`), which must be a valid
//! id: `one-minute/<x>` is a generic shape, and a stricter match claims fewer foreign topics.
//!
//! # Layout
//!
//! Little-endian; measured values are integers in thousandths of their unit.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | type: 16 (ten-second, 70 bytes) or 17 (one-minute, 130 bytes) |
//! | 1 | 8 | `timestamp`: f64, unix seconds |
//! | 9 | 12 | sensor id (a BSON ObjectId) |
//! | 21 | 1 | phase |
//! | 22 | 48 | type 16: i64 ×6: `p_l1 p_l2 p_l3 q_l1 q_l2 q_l3` |
//! | 22 | 84 | type 17: i32 ×21: `v i s p q pf phi` of L1, then of L2, then of L3 |
//! | 106 | 24 | type 17: i64 ×3: `avg_energy_l1 avg_energy_l2 avg_energy_l3` |
//!
//! This is the vendor's description, checked against the two fixture messages and their
//! decoded values (`shared/fixtures/seed-clemap`): the sizes add up exactly (22 + 48 = 70,
//! 22 + 84 + 24 = 130), every field sits at the offset above, and a test re-encodes the decoded
//! values and compares the bytes. The one-minute block is grouped by phase (all of L1 first),
//! not by quantity.
//!
//! # What is stored
//!
//! Channels `L1`, `L2`, `L3`, stamped with the message's timestamp:
//! * type 16: power (`p`, W) and reactive power (`q`, var);
//! * type 17: voltage (`v`), current (`i`), apparent power (`s`), power (`p`), reactive power
//!   (`q`) and power factor (`pf`; in the fixture `pf` is `p / s` to three places).
//!
//! Not stored:
//! * `phi` (degrees) says nothing `pf` does not, and does not even agree with it as a plain
//!   phase angle (137.944° next to pf 0.827, whose angle is 34°).
//! * `avg_energy`: the energy of the message's one-minute interval in Wh, not a meter counter.
//!   In the fixture it is 4.630, 1.363 and 3.469 where one minute at `p` gives 277.584/60 =
//!   4.626, 81.735/60 = 1.362 and 207.999/60 = 3.467 Wh. Wattline has no quantity for interval
//!   energy (its rollups integrate power, or difference cumulative counters), and summing these
//!   into a counter would invent one that restarts and drifts with every lost message.
//! * The sensor id (the vendor's database id, not the serial) and the phase byte (0 in the
//!   fixture, undocumented): the topic already names the device.
//!
//! # Refusals
//!
//! The whole message, on its first problem, in this order: a first byte other than 16 or 17
//! (`bad_type`); a type that does not match the topic (`bad_type`: 16 belongs on `ten-second/`,
//! 17 on `one-minute/`; the byte would be decodable, but a mismatch means the publisher is not
//! the Clemap these generic topics were meant for, or its data is mislabelled); a length other
//! than the type's (`bad_length`, truncated or with extra bytes); a timestamp that is not finite
//! or fails the limits (`bad_timestamp`); a value outside the limits (`out_of_range`, named as
//! in the table, e.g. `v_l2`). The three phases are one measurement, so one implausible value
//! means the message cannot be trusted.

use wattline_domain::{ChannelName, DeviceId, Limits, Quantity, TsMs, Values};

use super::common::seconds_to_ms;
use super::{adapter_codes, AdapterError, ChannelReading, Decoded, Format, TopicIdentity};

const TEN_SECOND: u8 = 16;
const ONE_MINUTE: u8 = 17;
const TEN_SECOND_LEN: usize = 70;
const ONE_MINUTE_LEN: usize = 130;

const PHASES: [&str; 3] = ["L1", "L2", "L3"];

/// The i32 values of one phase in a one-minute message, and what each is stored as.
const ONE_MINUTE_FIELDS: [(&str, Option<Quantity>); 7] = [
    ("v", Some(Quantity::Voltage)),
    ("i", Some(Quantity::Current)),
    ("s", Some(Quantity::ApparentPower)),
    ("p", Some(Quantity::Power)),
    ("q", Some(Quantity::ReactivePower)),
    ("pf", Some(Quantity::PowerFactor)),
    ("phi", None),
];

/// The type byte a topic's kind calls for.
fn topic_type(topic: &str) -> Option<(u8, &str)> {
    let (kind, serial) = topic.split_once('/')?;
    let ty = match kind {
        "ten-second" => TEN_SECOND,
        "one-minute" => ONE_MINUTE,
        _ => return None,
    };
    Some((ty, serial))
}

pub(super) fn identity(topic: &str) -> Option<TopicIdentity> {
    let (_, serial) = topic_type(topic)?;
    // A valid id has no `/`, so this also keeps the serial to one level.
    DeviceId::parse(serial)
        .is_ok()
        .then(|| TopicIdentity::new(Format::Clemap, serial))
}

fn layout_name(ty: u8) -> &'static str {
    if ty == TEN_SECOND {
        "ten-second"
    } else {
        "one-minute"
    }
}

pub(super) fn decode(
    topic: &str,
    identity: TopicIdentity,
    payload: &[u8],
    now: TsMs,
    limits: &Limits,
) -> Result<Decoded, AdapterError> {
    let Some((topic_ty, _)) = topic_type(topic) else {
        return Err(AdapterError::new(
            topic,
            None,
            adapter_codes::UNKNOWN_TOPIC,
            "not a Clemap topic",
        ));
    };
    let Some(&ty) = payload.first() else {
        let what = "empty payload: expected a Clemap message";
        return Err(AdapterError::new(
            topic,
            None,
            adapter_codes::BAD_LENGTH,
            what,
        ));
    };
    let len = match ty {
        TEN_SECOND => TEN_SECOND_LEN,
        ONE_MINUTE => ONE_MINUTE_LEN,
        other => {
            let what = format!(
                "first byte {other} is no Clemap layout \
                 ({TEN_SECOND}: ten-second, {ONE_MINUTE}: one-minute)"
            );
            return Err(AdapterError::new(
                topic,
                None,
                adapter_codes::BAD_TYPE,
                what,
            ));
        }
    };
    if ty != topic_ty {
        let what = format!(
            "type {ty} ({} layout) on a {} topic",
            layout_name(ty),
            layout_name(topic_ty)
        );
        return Err(AdapterError::new(
            topic,
            None,
            adapter_codes::BAD_TYPE,
            what,
        ));
    }
    let bad_length = || {
        let what = format!(
            "type {ty} ({}) is {len} bytes long, this one is {}",
            layout_name(ty),
            payload.len()
        );
        AdapterError::new(topic, None, adapter_codes::BAD_LENGTH, what)
    };
    let mut r = Le(&payload[1..]);
    let frame = Frame::read(&mut r, ty).ok_or_else(bad_length)?;
    if !r.0.is_empty() {
        return Err(bad_length());
    }

    let bad_ts = |what: String| {
        AdapterError::new(topic, Some("timestamp"), adapter_codes::BAD_TIMESTAMP, what)
    };
    let ts = seconds_to_ms(frame.secs)
        .ok_or_else(|| bad_ts(format!("{:?} is not a unix time in seconds", frame.secs)))?;
    limits
        .check_ts(ts, now)
        .map_err(|e| bad_ts(format!("{:?}: {e}", frame.secs)))?;

    let mut phases = [Values::new(); 3];
    for (phase, name, quantity, raw) in frame.values {
        let Some(q) = quantity else { continue };
        let value = raw as f64 / 1000.0;
        if let Err(e) = limits.check_value(q, value) {
            let field = format!("{name}_l{}", phase + 1);
            return Err(AdapterError::new(
                topic,
                Some(&field),
                adapter_codes::OUT_OF_RANGE,
                e,
            ));
        }
        phases[phase].set(q, value);
    }
    let readings = PHASES
        .into_iter()
        .zip(phases)
        .map(|(channel, values)| ChannelReading {
            channel: ChannelName::parse(channel).expect("L1, L2 and L3 are channel names"),
            ts,
            values,
        })
        .collect();
    Ok(Decoded::Readings {
        identity,
        readings,
        rejected: Vec::new(),
    })
}

/// A message as read, before any check.
struct Frame {
    secs: f64,
    /// Phase index, field name, quantity it is stored as, value in thousandths.
    values: Vec<(usize, &'static str, Option<Quantity>, i64)>,
}

impl Frame {
    /// Reads what follows the type byte; `None` if the message is too short.
    fn read(r: &mut Le<'_>, ty: u8) -> Option<Frame> {
        let secs = f64::from_le_bytes(r.take()?);
        r.take::<12>()?; // sensor id
        r.take::<1>()?; // phase
        let mut values = Vec::with_capacity(21);
        if ty == TEN_SECOND {
            for (name, q) in [("p", Quantity::Power), ("q", Quantity::ReactivePower)] {
                for phase in 0..3 {
                    values.push((phase, name, Some(q), i64::from_le_bytes(r.take()?)));
                }
            }
        } else {
            for phase in 0..3 {
                for (name, q) in ONE_MINUTE_FIELDS {
                    let raw = i32::from_le_bytes(r.take()?);
                    values.push((phase, name, q, i64::from(raw)));
                }
            }
            r.take::<24>()?; // avg_energy_l1..l3, not stored (see the module docs)
        }
        Some(Frame { secs, values })
    }
}

/// A little-endian reader over a byte slice.
struct Le<'a>(&'a [u8]);

impl Le<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
}

#[cfg(test)]
#[path = "clemap_tests.rs"]
mod tests;
