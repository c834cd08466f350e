//! JSON readings: `{"device": "meter-1", "ts": ..., "power": 512}` or an array of them.
//!
//! One pass with serde_json: each object is decoded straight into a reading (keys borrowed from
//! the body where they need no unescaping), so there is no intermediate `serde_json::Value`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use wattline_domain::{ChannelName, DeviceId, IdError, Limits, Reading, TsMs, Values};

use crate::fail::{self, Fail};
use crate::{codes, JsonOutcome, LineError};

/// Decodes a JSON reading or an array of readings. A body that is not well-formed JSON gives one
/// `bad_json` error (line 0) and no readings; otherwise each item ends up either in `readings`
/// or in `errors` (see the crate docs for the rules).
pub fn parse_json_readings(body: &[u8], now: TsMs, limits: &Limits) -> JsonOutcome {
    parse_json_readings_for_device(body, None, now, limits)
}

/// [`parse_json_readings`] for a publisher that is one device (MQTT `wattline/<device>/readings`):
/// with `Some(device)`, an item without `device` (or with `device: null`) is that device's, and
/// an item naming another device is refused (`bad_id`), since a device's credential must not
/// write another device's series. `None` is [`parse_json_readings`].
pub(crate) fn parse_json_readings_for_device(
    body: &[u8],
    device: Option<&DeviceId>,
    now: TsMs,
    limits: &Limits,
) -> JsonOutcome {
    let mut ctx = Ctx {
        now,
        limits,
        device,
        out: JsonOutcome::default(),
        default_channel: ChannelName::default_channel(),
    };
    // Some Windows tools write a UTF-8 byte order mark; JSON parsers may ignore it (RFC 8259).
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    let mut de = serde_json::Deserializer::from_slice(body);
    match TopSeed(&mut ctx)
        .deserialize(&mut de)
        .and_then(|()| de.end())
    {
        Ok(()) => ctx.out,
        Err(e) => JsonOutcome {
            errors: vec![LineError {
                line: 0,
                field: None,
                code: codes::BAD_JSON,
                message: format!("malformed JSON: {e}"),
            }],
            ..JsonOutcome::default()
        },
    }
}

struct Ctx<'l> {
    now: TsMs,
    limits: &'l Limits,
    /// The publisher's own device, when it is one: the default and the only device allowed.
    device: Option<&'l DeviceId>,
    out: JsonOutcome,
    default_channel: ChannelName,
}

/// The body: one object or an array.
struct TopSeed<'c, 'l>(&'c mut Ctx<'l>);

impl<'de> DeserializeSeed<'de> for TopSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reading object or an array of reading objects")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.0.item(1, map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 1;
        while seq
            .next_element_seed(ItemSeed {
                ctx: &mut *self.0,
                index,
            })?
            .is_some()
        {
            index += 1;
        }
        Ok(())
    }
}

/// One item of a batch: an object, or anything else (refused, the batch goes on).
struct ItemSeed<'c, 'l> {
    ctx: &'c mut Ctx<'l>,
    index: usize,
}

impl ItemSeed<'_, '_> {
    fn not_an_object(self, found: &str) {
        self.ctx.out.lines += 1;
        let msg = format!("expected a reading object, found {found}");
        let f = Fail::new(codes::BAD_JSON, None, msg);
        self.ctx.out.errors.push(f.at("item", self.index));
    }
}

impl<'de> DeserializeSeed<'de> for ItemSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reading object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.ctx.item(self.index, map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.not_an_object("an array");
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.not_an_object("null");
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.not_an_object("a boolean");
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.not_an_object("a number");
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.not_an_object("a number");
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.not_an_object("a number");
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.not_an_object("a string");
        Ok(())
    }
}

/// An object key, borrowed from the body unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Any JSON value, kept only as far as a reading needs it.
#[derive(Debug, Clone, PartialEq)]
enum Scalar<'de> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'de, str>),
    Array,
    Object,
}

impl Scalar<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Int(_) | Scalar::UInt(_) | Scalar::Float(_) => "a number",
            Scalar::Str(_) => "a string",
            Scalar::Array => "an array",
            Scalar::Object => "an object",
        }
    }

    fn number(&self) -> Option<f64> {
        match *self {
            Scalar::Int(v) => Some(v as f64),
            Scalar::UInt(v) => Some(v as f64),
            Scalar::Float(v) => Some(v),
            _ => None,
        }
    }
}

/// Numbers as the client wrote them (near enough), strings quoted: for messages.
impl fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Int(v) => write!(f, "{v}"),
            Scalar::UInt(v) => write!(f, "{v}"),
            Scalar::Float(v) => write!(f, "{v:?}"),
            Scalar::Str(s) => write!(f, "{s:?}"),
            other => f.write_str(other.kind()),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::UInt(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Array)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Object)
            }
        }
        d.deserialize_any(V)
    }
}

impl Ctx<'_> {
    /// Reads one object to its end, then records it as a reading or an error.
    fn item<'de, A: MapAccess<'de>>(&mut self, index: usize, mut map: A) -> Result<(), A::Error> {
        let mut device: Option<(&'static str, Scalar<'de>)> = None;
        let mut conflict: Option<Fail> = None;
        let mut channel = Scalar::Null;
        let mut ts = Scalar::Null;
        let mut values = Values::new();
        let mut pending: Option<Fail> = None;
        let mut first_unknown: Option<String> = None;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if let Some(q) = fail::quantity_of(key.as_bytes()) {
                let v: Scalar<'de> = map.next_value()?;
                if let Some(x) = v.number() {
                    if pending.is_none() {
                        if let Err(e) = self.limits.check_value(q, x) {
                            pending = Some(fail::value_fail(q, &v, &e));
                        }
                    }
                    values.set(q, x);
                } else if v != Scalar::Null && pending.is_none() {
                    let f = q.field();
                    let msg = format!("field {f:?}: expected a number, found {}", v.kind());
                    pending = Some(Fail::new(codes::BAD_FIELD_TYPE, Some(f), msg));
                }
                continue;
            }
            match key.as_ref() {
                k @ ("device" | "device_id") => {
                    let name = if k == "device" { "device" } else { "device_id" };
                    let v: Scalar<'de> = map.next_value()?;
                    match &device {
                        None => device = Some((name, v)),
                        Some((first, d)) => {
                            if *d != v && conflict.is_none() {
                                let msg = format!("{first:?} and {name:?} disagree ({d} and {v})");
                                conflict = Some(Fail::new(codes::BAD_ID, Some(name), msg));
                            }
                        }
                    }
                }
                "channel" => channel = map.next_value()?,
                "ts" => ts = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    let unknown = &mut self.out.unknown_fields;
                    if !unknown.contains(key.as_ref()) {
                        unknown.insert(key.clone().into_owned());
                    }
                    if first_unknown.is_none() {
                        first_unknown = Some(key.into_owned());
                    }
                }
            }
        }
        self.out.lines += 1;
        let result = self.reading(
            device,
            conflict,
            channel,
            ts,
            values,
            pending,
            first_unknown,
        );
        match result {
            Ok(r) => self.out.readings.push(r),
            Err(f) => self.out.errors.push(f.at("item", index)),
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn reading(
        &self,
        device: Option<(&'static str, Scalar<'_>)>,
        conflict: Option<Fail>,
        channel: Scalar<'_>,
        ts: Scalar<'_>,
        values: Values,
        pending: Option<Fail>,
        first_unknown: Option<String>,
    ) -> Result<Reading, Fail> {
        let ts_ms = self.timestamp(&ts)?;
        if let Some(f) = conflict {
            return Err(f);
        }
        let device = match device {
            None | Some((_, Scalar::Null)) => match self.device {
                Some(own) => own.clone(),
                None => {
                    return Err(Fail::new(
                        codes::MISSING_DEVICE,
                        Some("device"),
                        "missing \"device\"".into(),
                    ))
                }
            },
            Some((key, Scalar::Str(s))) => self.own_device(key, DeviceId::parse(s.into_owned()))?,
            Some((key, Scalar::UInt(n))) => self.own_device(key, DeviceId::parse(n.to_string()))?,
            Some((key, other)) => {
                let msg = format!("{key:?} must be a string, found {}", other.kind());
                return Err(Fail::new(codes::BAD_ID, Some(key), msg));
            }
        };
        let channel = match channel {
            Scalar::Null => self.default_channel.clone(),
            Scalar::Str(s) => ChannelName::parse(s.into_owned()).map_err(|e| {
                Fail::new(codes::BAD_ID, Some("channel"), format!("\"channel\": {e}"))
            })?,
            other => {
                let msg = format!("\"channel\" must be a string, found {}", other.kind());
                return Err(Fail::new(codes::BAD_ID, Some("channel"), msg));
            }
        };
        if let Some(f) = pending {
            return Err(f);
        }
        if values.is_empty() {
            let found = match first_unknown {
                Some(k) => format!(" (ignored key {k:?})"),
                None => String::new(),
            };
            let msg = format!(
                "no quantity field{found}; known fields are {}",
                fail::known_fields()
            );
            return Err(Fail::new(codes::NO_VALUES, None, msg));
        }
        let ts_ms = ts_ms.unwrap_or(self.now);
        if let Err(e) = self.limits.check_ts(ts_ms, self.now) {
            let raw: &dyn fmt::Display = if ts == Scalar::Null { &"now" } else { &ts };
            let f = fail::ts_fail(raw, Some("ts"), ts_ms, &e, self.limits, self.now);
            return Err(f);
        }
        Ok(Reading {
            device,
            channel,
            ts: ts_ms,
            values,
        })
    }

    /// The device an item names under `key`, if it may write it.
    fn own_device(&self, key: &str, parsed: Result<DeviceId, IdError>) -> Result<DeviceId, Fail> {
        let device =
            parsed.map_err(|e| Fail::new(codes::BAD_ID, Some(key), format!("{key:?}: {e}")))?;
        match self.device {
            Some(own) if *own != device => {
                let msg = format!(
                    "{key:?}: publishing as another device ({:?}) is not allowed; \
                     this publisher is {:?}",
                    device.as_str(),
                    own.as_str()
                );
                Err(Fail::new(codes::BAD_ID, Some(key), msg))
            }
            _ => Ok(device),
        }
    }

    /// `ts` as unix milliseconds; `None` when absent.
    fn timestamp(&self, ts: &Scalar<'_>) -> Result<Option<TsMs>, Fail> {
        let out_of_range = || fail::bad_ts(Some("ts"), format!("\"ts\" {ts} is out of range"));
        match ts {
            Scalar::Null => Ok(None),
            Scalar::Int(v) => Ok(Some(TsMs(*v))),
            Scalar::UInt(v) => i64::try_from(*v)
                .map(|v| Some(TsMs(v)))
                .map_err(|_| out_of_range()),
            Scalar::Float(v) => {
                let v = v.floor();
                // i64::MAX as f64 rounds up to 2^63, which is out of range itself.
                if (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&v) {
                    Ok(Some(TsMs(v as i64)))
                } else {
                    Err(out_of_range())
                }
            }
            Scalar::Str(s) => TsMs::parse_api(s)
                .map(Some)
                .map_err(|e| fail::bad_ts(Some("ts"), format!("\"ts\": {e}"))),
            other => {
                let msg = format!(
                    "\"ts\" must be unix milliseconds or an RFC 3339 string, found {}",
                    other.kind()
                );
                Err(fail::bad_ts(Some("ts"), msg))
            }
        }
    }
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
