use super::*;
use crate::mqtt::MqttDecoder;
use crate::parse_json_readings;
use proptest::prelude::*;
use wattline_domain::{ChannelName, Quantity as Q, Values};

/// 2026-01-06T00:00:00Z.
const NOW: TsMs = TsMs(1_767_657_600_000);
/// 2026-01-05T17:00:00Z.
const T0: i64 = 1_767_632_400_000;
const TOPIC: &str = "wattline/meter-1/readings";

fn decode_with(d: &mut MqttDecoder, topic: &str, payload: &str) -> Result<Decoded, AdapterError> {
    d.decode(topic, payload.as_bytes(), NOW)
}

/// A native message that decoded: its readings and refused items.
fn readings(payload: &str) -> (Vec<ChannelReading>, Vec<AdapterError>) {
    match decode_with(&mut MqttDecoder::default(), TOPIC, payload) {
        Ok(Decoded::Readings {
            identity,
            readings,
            rejected,
        }) => {
            assert_eq!(identity, TopicIdentity::new(Format::Native, "meter-1"));
            (readings, rejected)
        }
        other => panic!("{payload}: {other:?}"),
    }
}

fn refused(topic: &str, payload: &[u8]) -> AdapterError {
    match MqttDecoder::default().decode(topic, payload, NOW) {
        Err(e) => {
            assert_eq!(e.topic, topic);
            assert!(e.message.starts_with(&format!("{topic}: ")), "{e}");
            e
        }
        Ok(d) => panic!("{topic}: {d:?}"),
    }
}

#[test]
fn identities() {
    let id = |t: &str| MqttDecoder::classify(t);
    assert_eq!(
        id("wattline/meter-1/readings"),
        Some(TopicIdentity::new(Format::Native, "meter-1"))
    );
    assert_eq!(
        id("wattline/meter-1/commands"),
        Some(TopicIdentity::new(Format::Native, "meter-1"))
    );
    assert_eq!(
        id("wattline/readings"),
        Some(TopicIdentity::new(Format::Native, ""))
    );
    // The empty id means "gateway": an empty device level must not claim it.
    assert_eq!(identity("wattline//readings"), None);
    for t in [
        "wattline/meter-1/status",
        "wattline/meter-1",
        "wattline/a/b/readings",
        "wattline/readings/",
        "wattline",
        "Wattline/meter-1/readings",
    ] {
        assert_eq!(identity(t), None, "{t}");
    }
}

#[test]
fn device_topic_takes_readings_without_device() {
    let (r, rejected) =
        readings(r#"{"ts":1767632400000,"channel":"L1","voltage":230.1,"power":512}"#);
    assert!(rejected.is_empty());
    assert_eq!(
        r,
        [ChannelReading {
            channel: ChannelName::parse("L1").unwrap(),
            ts: TsMs(T0),
            values: Values::new().with(Q::Voltage, 230.1).with(Q::Power, 512.0),
        }]
    );
    // Its own id, as a string or digits, is fine too; no ts means the receive time.
    let (r, rejected) = readings(r#"{"device":"meter-1","device_id":"meter-1","power":1}"#);
    assert!(rejected.is_empty());
    assert_eq!(r[0].ts, NOW);
    assert_eq!(r[0].channel.as_str(), "main");
    let mut d = MqttDecoder::default();
    let out = decode_with(&mut d, "wattline/17/readings", r#"{"device":17,"power":1}"#).unwrap();
    assert!(matches!(out, Decoded::Readings { readings, .. } if readings.len() == 1));
}

#[test]
fn device_topic_batch_refuses_items_of_other_devices() {
    let (r, rejected) = readings(
        r#"[
            {"power": 1},
            {"device": "meter-2", "power": 2},
            {"device": "meter-1", "power": 3},
            {"device_id": "meter-2", "power": 4},
            {"power": "5"},
            {"voltage": 1e9},
            {"power": 7, "ts": 1767632400},
            {"power": 8, "ts": "soon"},
            {"watts": 9},
            42,
            {"device": "a b", "power": 11}
        ]"#,
    );
    let powers: Vec<f64> = r.iter().filter_map(|r| r.values.get(Q::Power)).collect();
    assert_eq!(powers, [1.0, 3.0]);
    let codes: Vec<(&str, Option<&str>)> = rejected
        .iter()
        .map(|e| (e.code, e.field.as_deref()))
        .collect();
    assert_eq!(
        codes,
        [
            ("bad_id", Some("device")),
            ("bad_id", Some("device_id")),
            ("bad_number", Some("power")),
            ("out_of_range", Some("voltage")),
            ("bad_timestamp", Some("ts")),
            ("bad_timestamp", Some("ts")),
            ("no_values", None),
            ("bad_json", None),
            ("bad_id", Some("device")),
        ]
    );
    assert_eq!(
        rejected[0].message,
        "wattline/meter-1/readings: item 2: \"device\": publishing as another device \
         (\"meter-2\") is not allowed; this publisher is \"meter-1\""
    );
    assert_eq!(
        rejected[2].message,
        "wattline/meter-1/readings: item 5: field \"power\": expected a number, found a string"
    );
    for e in &rejected {
        assert_eq!(e.topic, TOPIC);
        assert!(e.message.starts_with(TOPIC), "{e}");
    }
    // A well-formed body whose items are all refused still decodes: nothing taken, all listed.
    let (r, rejected) = readings(r#"{"device":"meter-2","power":1}"#);
    assert!(r.is_empty());
    assert_eq!(rejected.len(), 1);
    assert_eq!(readings("[]"), (vec![], vec![]));
}

#[test]
fn malformed_bodies_fail_the_message() {
    for body in [
        &b""[..],
        b"{",
        b"{\"power\": 1",
        b"power=1",
        b"\xff\xfe{}",
        b"{\"power\": \"\xff\"}",
        b"{\"power\": NaN}",
    ] {
        let e = refused(TOPIC, body);
        assert_eq!(e.code, "bad_json", "{body:?}");
        assert_eq!(e.field, None);
        assert!(
            e.message
                .starts_with("wattline/meter-1/readings: malformed JSON: "),
            "{e}"
        );
    }
}

#[test]
fn bad_topic_device_is_bad_id() {
    let e = refused("wattline/a b/readings", br#"{"power":1}"#);
    assert_eq!(e.code, "bad_id");
    assert!(
        e.message
            .starts_with("wattline/a b/readings: the topic's device: device id may contain only"),
        "{e}"
    );
    let e = refused(&format!("wattline/{}/readings", "x".repeat(65)), b"{}");
    assert_eq!(e.code, "bad_id");
}

#[test]
fn commands_are_nothing() {
    let out = MqttDecoder::default()
        .decode("wattline/meter-1/commands", b"{\"relay\":\"off\"}", NOW)
        .unwrap();
    assert_eq!(
        out,
        Decoded::Nothing {
            identity: Some(TopicIdentity::new(Format::Native, "meter-1"))
        }
    );
}

#[test]
fn gateway_topic() {
    let e = refused("wattline/readings", br#"{"device":"a","power":1}"#);
    assert_eq!(e.code, "unknown_topic");
    assert_eq!(
        e.message,
        "wattline/readings: gateway topic: use decode_gateway"
    );

    let limits = Limits::default();
    let (r, rejected) = decode_gateway(
        "wattline/readings",
        br#"[{"device":"a","power":1},{"power":2},{"device":"b","channel":"L2","voltage":230,"ts":1767632400000}]"#,
        NOW,
        &limits,
    )
    .unwrap();
    assert_eq!(
        r,
        [
            Reading {
                device: DeviceId::parse("a").unwrap(),
                channel: ChannelName::default_channel(),
                ts: NOW,
                values: Values::new().with(Q::Power, 1.0),
            },
            Reading {
                device: DeviceId::parse("b").unwrap(),
                channel: ChannelName::parse("L2").unwrap(),
                ts: TsMs(T0),
                values: Values::new().with(Q::Voltage, 230.0),
            }
        ]
    );
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].code, "bad_id");
    assert_eq!(
        rejected[0].message,
        "wattline/readings: item 2: missing \"device\""
    );

    let e = decode_gateway("wattline/readings", b"[", NOW, &limits).unwrap_err();
    assert_eq!(e.code, "bad_json");
    assert!(
        e.message.starts_with("wattline/readings: malformed JSON"),
        "{e}"
    );
    let e = decode_gateway(TOPIC, br#"{"device":"a","power":1}"#, NOW, &limits).unwrap_err();
    assert_eq!(e.code, "unknown_topic");
    assert_eq!(
        e.message,
        "wattline/meter-1/readings: not the gateway topic \"wattline/readings\""
    );
}

#[test]
fn keeps_working_after_bad_messages() {
    let mut d = MqttDecoder::default();
    for bad in ["", "{", "[1,", "\"x\""] {
        assert!(decode_with(&mut d, TOPIC, bad).is_err(), "{bad}");
    }
    let out = decode_with(&mut d, TOPIC, r#"{"power":5}"#).unwrap();
    let Decoded::Readings { readings, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(readings[0].values.get(Q::Power), Some(5.0));
}

#[test]
fn json_codes_map_to_adapter_codes() {
    for (json, adapter) in [
        (codes::BAD_JSON, adapter_codes::BAD_JSON),
        (codes::MISSING_DEVICE, adapter_codes::BAD_ID),
        (codes::BAD_ID, adapter_codes::BAD_ID),
        (codes::BAD_FIELD_TYPE, adapter_codes::BAD_NUMBER),
        (codes::NOT_FINITE, adapter_codes::OUT_OF_RANGE),
        (codes::OUT_OF_RANGE, adapter_codes::OUT_OF_RANGE),
        (codes::NO_VALUES, adapter_codes::NO_VALUES),
        (codes::BAD_TIMESTAMP, adapter_codes::BAD_TIMESTAMP),
        (codes::TIMESTAMP_TOO_OLD, adapter_codes::BAD_TIMESTAMP),
        (codes::TIMESTAMP_IN_FUTURE, adapter_codes::BAD_TIMESTAMP),
    ] {
        assert_eq!(adapter_code(json), adapter, "{json}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Without a device of its own, the variant is the HTTP API's decoder, unchanged.
    #[test]
    fn without_a_device_the_http_decoder_is_unchanged(body in "[\\[\\]{}\",:0-9a-z_. \\-]{0,120}") {
        let limits = Limits::default();
        prop_assert_eq!(
            parse_json_readings_for_device(body.as_bytes(), None, NOW, &limits),
            parse_json_readings(body.as_bytes(), NOW, &limits)
        );
    }

    #[test]
    fn arbitrary_payloads_never_panic(
        topic in prop::sample::select(vec![TOPIC, "wattline/readings", "wattline/m/commands", "wattline/a b/readings"]),
        payload in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut d = MqttDecoder::default();
        if let Ok(Decoded::Readings { readings, .. }) = d.decode(topic, &payload, NOW) {
            for r in readings {
                prop_assert!(!r.values.is_empty());
                prop_assert!(r.values.iter().all(|(_, v)| v.is_finite()));
            }
        }
        let _ = decode_gateway(topic, &payload, NOW, &Limits::default());
    }
}
