//! MQTT payload adapters: a topic and a payload in, readings of a *topic identity* out.
//!
//! Devices publish in their vendor's format, under their vendor's topics, and most of them do
//! not know their Wattline device id. So an adapter does not produce readings of a device: it produces
//! [`ChannelReading`]s of a [`TopicIdentity`] (`tasmota`/`plug1` for `tele/plug1/SENSOR`), and
//! the broker maps the identity to a registered device through its binding (or lists it as a
//! pending device).
//!
//! Everything here is pure: no I/O, no clock (the caller passes the receive time `now`). Two
//! families need memory between messages (Shelly Gen2 deltas are laid over the last full
//! status; the ESP32 sketch spreads one reading over four topics); that state lives in
//! [`MqttDecoder`], which the broker keeps, so the functions stay deterministic and fuzzable.
//!
//! | family | topics | identity |
//! |---|---|---|
//! | native | `wattline/<device>/readings`, `wattline/<device>/commands` | the device id itself |
//! | native gateway | `wattline/readings` (every item names its device; [`decode_gateway`]) | none |
//! | tasmota | `tele/<topic>/SENSOR`, `tele/<topic>/LWT` | `<topic>` |
//! | shelly | `<prefix>/status/switch:N`, `<prefix>/status/em:0`, `<prefix>/status/em1:N`, `<prefix>/events/rpc`, `shellies/<id>/relay/N/{power,energy}`, `shellies/<id>/online` | `<prefix>` / `<id>` |
//! | emoncms | `emon/<node>/<key>`, `emon/<node>` | `<node>` |
//! | esp32 | `<prefix>/data/{kWh,Current,Voltage}`, `<prefix>/temps` | `<prefix>` |
//! | clemap | `one-minute/<serial>`, `ten-second/<serial>` | `<serial>` |

use std::fmt;

use serde::{Deserialize, Serialize};
use wattline_domain::{ChannelName, Limits, TsMs, Values};

mod clemap;
mod common;
mod emoncms;
mod esp32;
mod native;
mod shelly;
mod tasmota;

pub use esp32::Esp32State;
pub use native::decode_gateway;
pub use shelly::ShellyState;

/// The payload families Wattline understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Native,
    Tasmota,
    Shelly,
    Emoncms,
    Esp32,
    Clemap,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::Native,
        Format::Tasmota,
        Format::Shelly,
        Format::Emoncms,
        Format::Esp32,
        Format::Clemap,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::Tasmota => "tasmota",
            Format::Shelly => "shelly",
            Format::Emoncms => "emoncms",
            Format::Esp32 => "esp32",
            Format::Clemap => "clemap",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who published, in the vendor's terms: the part of the topic that names the device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TopicIdentity {
    pub format: Format,
    /// The Tasmota topic, Shelly id or prefix, emoncms node, ESP32 prefix, Clemap serial, or
    /// (native) the Wattline device id.
    pub id: String,
}

impl TopicIdentity {
    pub fn new(format: Format, id: impl Into<String>) -> Self {
        TopicIdentity {
            format,
            id: id.into(),
        }
    }
}

impl fmt::Display for TopicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.format, self.id)
    }
}

/// One reading of one channel of a device not yet resolved to a Wattline device id.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelReading {
    pub channel: ChannelName,
    pub ts: TsMs,
    pub values: Values,
}

/// What one message meant.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// Readings to store. For `Format::Native`, `identity.id` is the device id (items naming
    /// another device are refused into `rejected`).
    Readings {
        identity: TopicIdentity,
        readings: Vec<ChannelReading>,
        /// Parts of the message refused while the rest was taken (items of a native batch).
        rejected: Vec<AdapterError>,
    },
    /// The device said it is online or offline (Tasmota LWT, Shelly `online`).
    Availability {
        identity: TopicIdentity,
        online: bool,
    },
    /// A well-formed message that carries no reading by itself: one ESP32 topic of a cycle not
    /// complete yet, a Shelly status without meter values, Tasmota `STATE`, a command echo...
    /// `identity` is set when the topic names a device (so it still counts as seen).
    Nothing { identity: Option<TopicIdentity> },
}

impl Decoded {
    pub fn identity(&self) -> Option<&TopicIdentity> {
        match self {
            Decoded::Readings { identity, .. } | Decoded::Availability { identity, .. } => {
                Some(identity)
            }
            Decoded::Nothing { identity } => identity.as_ref(),
        }
    }
}

/// Stable machine codes of [`AdapterError::code`]; metrics are labelled with these.
pub mod adapter_codes {
    /// No adapter knows this topic.
    pub const UNKNOWN_TOPIC: &str = "unknown_topic";
    /// Payload is not well-formed JSON where JSON is expected, or JSON of the wrong shape (an
    /// array where an object belongs).
    pub const BAD_JSON: &str = "bad_json";
    /// A value where a number belongs is not a number (or has the wrong unit suffix).
    pub const BAD_NUMBER: &str = "bad_number";
    /// Binary payload of the wrong length.
    pub const BAD_LENGTH: &str = "bad_length";
    /// Binary payload whose type byte is not a known layout.
    pub const BAD_TYPE: &str = "bad_type";
    /// A value outside the plausible range, or not finite.
    pub const OUT_OF_RANGE: &str = "out_of_range";
    /// A timestamp that cannot be read or is out of range.
    pub const BAD_TIMESTAMP: &str = "bad_timestamp";
    /// The topic's identity part is not a valid id.
    pub const BAD_ID: &str = "bad_id";
    /// A well-formed message with none of the values the adapter needs.
    pub const NO_VALUES: &str = "no_values";
    /// Payload not valid UTF-8 where text is expected, or a word that is not one of the
    /// expected ones (an LWT that is neither `Online` nor `Offline`).
    pub const BAD_TEXT: &str = "bad_text";
}

/// Why a message was refused: names the topic, the field when one is at fault, and what is
/// wrong, e.g. `tele/plug1/SENSOR: field "ENERGY.Power": "abc" is not a number`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterError {
    pub topic: String,
    /// The field at fault (dotted path into JSON, or the topic's last level).
    pub field: Option<String>,
    /// One of [`adapter_codes`].
    pub code: &'static str,
    pub message: String,
}

impl AdapterError {
    pub fn new(
        topic: &str,
        field: Option<&str>,
        code: &'static str,
        what: impl fmt::Display,
    ) -> Self {
        let message = match field {
            Some(f) => format!("{topic}: field {f:?}: {what}"),
            None => format!("{topic}: {what}"),
        };
        AdapterError {
            topic: topic.to_owned(),
            field: field.map(str::to_owned),
            code,
            message,
        }
    }
}

impl fmt::Display for AdapterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AdapterError {}

/// The adapters with the memory some of them need between messages. One per broker (or per
/// external-broker subscription); not shared between threads.
#[derive(Debug, Default)]
pub struct MqttDecoder {
    pub limits: Limits,
    shelly: ShellyState,
    esp32: Esp32State,
}

impl MqttDecoder {
    pub fn new(limits: Limits) -> Self {
        MqttDecoder {
            limits,
            ..Default::default()
        }
    }

    /// The family a topic belongs to, from its shape alone (no payload). `None`: no adapter
    /// takes it. Used by the broker's ACL to find the identity a topic claims.
    pub fn classify(topic: &str) -> Option<TopicIdentity> {
        native::identity(topic)
            .or_else(|| tasmota::identity(topic))
            .or_else(|| shelly::identity(topic))
            .or_else(|| emoncms::identity(topic))
            .or_else(|| clemap::identity(topic))
            .or_else(|| esp32::identity(topic))
    }

    /// Decodes one message received at `now`.
    pub fn decode(
        &mut self,
        topic: &str,
        payload: &[u8],
        now: TsMs,
    ) -> Result<Decoded, AdapterError> {
        let Some(identity) = Self::classify(topic) else {
            return Err(AdapterError::new(
                topic,
                None,
                adapter_codes::UNKNOWN_TOPIC,
                "no adapter takes this topic",
            ));
        };
        let limits = &self.limits;
        match identity.format {
            Format::Native => native::decode(topic, identity, payload, now, limits),
            Format::Tasmota => tasmota::decode(topic, identity, payload, now, limits),
            Format::Shelly => {
                shelly::decode(&mut self.shelly, topic, identity, payload, now, limits)
            }
            Format::Emoncms => emoncms::decode(topic, identity, payload, now, limits),
            Format::Esp32 => esp32::decode(&mut self.esp32, topic, identity, payload, now, limits),
            Format::Clemap => clemap::decode(topic, identity, payload, now, limits),
        }
    }

    /// Forgets the per-device memory of an identity (device deleted or disconnected).
    pub fn forget(&mut self, identity: &TopicIdentity) {
        match identity.format {
            Format::Shelly => self.shelly.forget(&identity.id),
            Format::Esp32 => self.esp32.forget(&identity.id),
            _ => {}
        }
    }
}
