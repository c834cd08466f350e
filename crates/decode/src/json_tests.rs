use super::*;
use proptest::prelude::*;
use wattline_domain::Quantity as Q;

/// 2026-01-06T00:00:00Z.
const NOW: TsMs = TsMs(1_767_657_600_000);
/// 2026-01-05T17:00:00Z.
const T0: i64 = 1_767_632_400_000;

fn parse(body: &str) -> JsonOutcome {
    let out = parse_json_readings(body.as_bytes(), NOW, &Limits::default());
    if out.errors.first().is_none_or(|e| e.line != 0) {
        assert_eq!(out.lines, out.readings.len() + out.errors.len());
    }
    out
}

fn one(body: &str) -> Reading {
    let out = parse(body);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.readings.len(), 1);
    out.readings.into_iter().next().unwrap()
}

fn err(body: &str) -> LineError {
    let out = parse(body);
    assert!(out.readings.is_empty(), "{:?}", out.readings);
    assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
    out.errors.into_iter().next().unwrap()
}

#[test]
fn single_object() {
    let r = one(
        r#"{"device": "meter-1", "ts": "2026-01-05T17:00:00Z", "channel": "L1", "voltage": 230.1, "power": 512}"#,
    );
    assert_eq!(r.device.as_str(), "meter-1");
    assert_eq!(r.channel.as_str(), "L1");
    assert_eq!(r.ts, TsMs(T0));
    assert_eq!(r.values.get(Q::Voltage), Some(230.1));
    assert_eq!(r.values.get(Q::Power), Some(512.0));
    assert_eq!(r.values.iter().count(), 2);
    let out = parse(r#"{"device": "meter-1", "power": 1}"#);
    assert_eq!(out.lines, 1);
}

#[test]
fn generator_payload() {
    let r = one(
        r#"{"device_id":"meter-0017","ts":1767632400000,"voltage":224.36,"current":1.253,"power":256.5,"energy":27021316.546}"#,
    );
    assert_eq!(r.device.as_str(), "meter-0017");
    assert_eq!(r.ts, TsMs(T0));
    assert_eq!(r.values.iter().count(), 4);
    assert_eq!(r.channel, ChannelName::default_channel());
}

#[test]
fn every_quantity_and_integer_and_negative_values() {
    let r = one(
        r#"{"device":"d","voltage":230,"current":-2,"power":-400.5,"apparent_power":460,"reactive_power":-20,
            "power_factor":-0.87,"frequency":50,"energy":12,"energy_export":3e2}"#,
    );
    assert_eq!(r.values.iter().count(), 9);
    assert_eq!(r.values.get(Q::Current), Some(-2.0));
    assert_eq!(r.values.get(Q::EnergyExport), Some(300.0));
}

#[test]
fn batch_with_bad_items_is_decoded_in_part() {
    let body = r#"[
        {"device": "a", "power": 1},
        {"device": "b", "power": "1"},
        42,
        {"device": "c", "power": 3, "watts": 2, "unit": {"nested": [1, 2]}},
        {"power": 4},
        [1, 2],
        {"device": "e", "power_factor": 1.2}
    ]"#;
    let out = parse(body);
    assert_eq!(out.lines, 7);
    let devs: Vec<&str> = out.readings.iter().map(|r| r.device.as_str()).collect();
    assert_eq!(devs, ["a", "c"]);
    let errs: Vec<(usize, &str)> = out.errors.iter().map(|e| (e.line, e.code)).collect();
    assert_eq!(
        errs,
        [
            (2, "bad_field_type"),
            (3, "bad_json"),
            (5, "missing_device"),
            (6, "bad_json"),
            (7, "out_of_range")
        ]
    );
    assert_eq!(
        out.errors[0].message,
        "item 2: field \"power\": expected a number, found a string"
    );
    assert_eq!(
        out.errors[1].message,
        "item 3: expected a reading object, found a number"
    );
    assert_eq!(out.errors[2].message, "item 5: missing \"device\"");
    assert_eq!(
        out.errors[4].message,
        "item 7: field \"power_factor\": 1.2 is outside -1..=1"
    );
    assert_eq!(out.errors[4].field.as_deref(), Some("power_factor"));
    let names: Vec<&str> = out.unknown_fields.iter().map(String::as_str).collect();
    assert_eq!(names, ["unit", "watts"]);
    assert_eq!(parse("[]"), JsonOutcome::default());
}

#[test]
fn malformed_json_is_one_error() {
    for body in [
        "",
        "{",
        r#"{"device": "a", "power": 1"#,
        r#"[{"device": "a", "power": 1},"#,
        r#"{"device": "a", "power": 1} x"#,
        r#"{"device": "a", "power": NaN}"#,
        r#"{"device": "a", "power": 1e999}"#,
        "\"just a string\"",
        "42",
        "null",
    ] {
        let out = parse(body);
        assert!(out.readings.is_empty(), "{body}");
        assert_eq!(out.errors.len(), 1, "{body}");
        let e = &out.errors[0];
        assert_eq!(
            (e.line, e.code, e.field.as_ref()),
            (0, "bad_json", None),
            "{body}"
        );
        assert!(e.message.starts_with("malformed JSON: "), "{}", e.message);
        assert_eq!(out.lines, 0);
        assert!(out.unknown_fields.is_empty());
    }
    let e = err("[\n{\"device\": \"a\",\n \"power\": 1,,}]");
    assert!(e.message.contains("line 3 column"), "{}", e.message);
    let e = err("42");
    assert!(
        e.message
            .contains("a reading object or an array of reading objects"),
        "{}",
        e.message
    );
}

#[test]
fn a_leading_byte_order_mark_is_skipped() {
    assert_eq!(
        one("\u{feff}{\"device\":\"a\",\"power\":1}")
            .device
            .as_str(),
        "a"
    );
}

#[test]
fn timestamps() {
    let at = |ts: &str| one(&format!(r#"{{"device":"a","power":1,"ts":{ts}}}"#)).ts;
    assert_eq!(at("1767632400000"), TsMs(T0));
    assert_eq!(at("1767632400000.9"), TsMs(T0));
    assert_eq!(at("\"1767632400000\""), TsMs(T0));
    assert_eq!(at("\"2026-01-05T18:00:00.250+01:00\""), TsMs(T0 + 250));
    assert_eq!(at("null"), NOW);
    assert_eq!(one(r#"{"device":"a","power":1}"#).ts, NOW);

    let e = err(r#"{"device":"a","power":1,"ts":"yesterday"}"#);
    assert_eq!(e.code, "bad_timestamp");
    assert_eq!(e.field.as_deref(), Some("ts"));
    assert!(
        e.message
            .starts_with("item 1: \"ts\": \"yesterday\" is neither RFC 3339"),
        "{}",
        e.message
    );
    let e = err(r#"{"device":"a","power":1,"ts":true}"#);
    assert_eq!(e.code, "bad_timestamp");
    assert!(e.message.contains("found a boolean"), "{}", e.message);
    let e = err(r#"{"device":"a","power":1,"ts":18446744073709551615}"#);
    assert_eq!(e.code, "bad_timestamp");
    let e = err(r#"{"device":"a","power":1,"ts":1e300}"#);
    assert_eq!(e.code, "bad_timestamp");

    let e = err(r#"{"device":"a","power":1,"ts":1767632400}"#);
    assert_eq!(e.code, "timestamp_too_old");
    assert_eq!(
        e.message,
        "item 1: timestamp 1767632400 (1970-01-21T11:00:32.4Z) is before 2000-01-01T00:00:00Z"
    );
    let e = err(&format!(
        r#"{{"device":"a","power":1,"ts":{}}}"#,
        NOW.0 + TsMs::DAY + 1
    ));
    assert_eq!(e.code, "timestamp_in_future");
    assert!(e.message.contains("more than 24 h ahead"), "{}", e.message);
    // A bad ts is found before the device.
    assert_eq!(err(r#"{"power":1,"ts":"x"}"#).code, "bad_timestamp");
}

#[test]
fn device_and_channel() {
    assert_eq!(one(r#"{"device":17,"power":1}"#).device.as_str(), "17");
    assert_eq!(one(r#"{"device_id":"x","power":1}"#).device.as_str(), "x");
    assert_eq!(
        one(r#"{"device":"x","device_id":"x","power":1}"#)
            .device
            .as_str(),
        "x"
    );
    let e = err(r#"{"device":"x","device_id":"y","power":1}"#);
    assert_eq!(e.code, "bad_id");
    assert_eq!(
        e.message,
        r#"item 1: "device" and "device_id" disagree ("x" and "y")"#
    );
    let e = err(r#"{"device":"a b","power":1}"#);
    assert_eq!(e.code, "bad_id");
    assert_eq!(e.field.as_deref(), Some("device"));
    assert!(
        e.message
            .starts_with("item 1: \"device\": device id may contain only"),
        "{}",
        e.message
    );
    for bad in ["-1", "1.5", "true", "[]", "{}"] {
        let e = err(&format!(r#"{{"device":{bad},"power":1}}"#));
        assert_eq!(e.code, "bad_id", "{bad}");
        assert!(e.message.contains("must be a string"), "{}", e.message);
    }
    let e = err(r#"{"device":null,"power":1}"#);
    assert_eq!(e.code, "missing_device");
    assert_eq!(
        one(r#"{"device":"a","channel":null,"power":1}"#)
            .channel
            .as_str(),
        "main"
    );
    let e = err(r#"{"device":"a","channel":"L 1","power":1}"#);
    assert_eq!((e.code, e.field.as_deref()), ("bad_id", Some("channel")));
    let e = err(r#"{"device":"a","channel":1,"power":1}"#);
    assert_eq!(e.code, "bad_id");
    // Escaped strings and keys work (they are not borrowed from the body).
    let r = one(r#"{"dev\u0069ce":"met\u0065r","pow\u0065r":1,"\u00e9":2}"#);
    assert_eq!(r.device.as_str(), "meter");
    assert_eq!(r.values.get(Q::Power), Some(1.0));
}

#[test]
fn values() {
    let r = one(r#"{"device":"a","power":null,"voltage":230}"#);
    assert_eq!(r.values.get(Q::Power), None);
    for (v, found) in [
        ("true", "a boolean"),
        ("\"1\"", "a string"),
        ("[1]", "an array"),
        ("{}", "an object"),
    ] {
        let e = err(&format!(r#"{{"device":"a","power":{v}}}"#));
        assert_eq!(e.code, "bad_field_type");
        assert_eq!(
            e.message,
            format!("item 1: field \"power\": expected a number, found {found}")
        );
    }
    let e = err(r#"{"device":"a","power":null}"#);
    assert_eq!(e.code, "no_values");
    let e = err(r#"{"device":"a","watts":5}"#);
    assert_eq!(e.code, "no_values");
    assert!(
        e.message
            .starts_with("item 1: no quantity field (ignored key \"watts\")"),
        "{}",
        e.message
    );
    let e = err(r#"{"device":"a","voltage":-1}"#);
    assert_eq!(
        e.message,
        "item 1: field \"voltage\": -1 is outside 0..=1000000 V"
    );
    let e = err(r#"{"device":"a","voltage":-1.5}"#);
    assert_eq!(
        e.message,
        "item 1: field \"voltage\": -1.5 is outside 0..=1000000 V"
    );
    assert_eq!(
        one(r#"{"device":"a","power":1,"power":2}"#)
            .values
            .get(Q::Power),
        Some(2.0)
    );
    // Value errors come after the device.
    assert_eq!(err(r#"{"voltage":-1}"#).code, "missing_device");
}

fn json_reading() -> impl Strategy<Value = (Reading, bool)> {
    let limits = Limits::default();
    let values =
        proptest::sample::subsequence(Q::ALL.to_vec(), 1..=Q::COUNT).prop_flat_map(move |qs| {
            qs.into_iter()
                .map(|q| {
                    let (min, max) = limits.range(q);
                    (min..=max).prop_map(move |v| (q, v))
                })
                .collect::<Vec<_>>()
        });
    (
        "[A-Za-z0-9._:-]{1,64}",
        proptest::option::of("[A-Za-z0-9._:-]{1,64}"),
        946_684_800_000i64..=NOW.0,
        values,
        any::<bool>(),
    )
        .prop_map(|(d, c, ts, vals, rfc)| {
            let mut values = Values::new();
            for (q, v) in vals {
                values.set(q, v);
            }
            let r = Reading {
                device: DeviceId::parse(d).unwrap(),
                channel: c.map_or_else(ChannelName::default_channel, |c| {
                    ChannelName::parse(c).unwrap()
                }),
                ts: TsMs(ts),
                values,
            };
            (r, rfc)
        })
}

fn to_json((r, rfc): &(Reading, bool)) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("device".into(), r.device.as_str().into());
    if r.channel.as_str() != ChannelName::DEFAULT || *rfc {
        m.insert("channel".into(), r.channel.as_str().into());
    }
    let ts = if *rfc {
        crate::fail::iso(r.ts).into()
    } else {
        r.ts.0.into()
    };
    m.insert("ts".into(), ts);
    for (q, v) in r.values.iter() {
        m.insert(q.field().into(), v.into());
    }
    serde_json::Value::Object(m)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn serialized_readings_parse_back(items in proptest::collection::vec(json_reading(), 0..6)) {
        let body = serde_json::Value::Array(items.iter().map(to_json).collect()).to_string();
        let out = parse_json_readings(body.as_bytes(), NOW, &Limits::default());
        prop_assert!(out.errors.is_empty(), "{:?}", out.errors);
        let want: Vec<Reading> = items.iter().map(|(r, _)| r.clone()).collect();
        prop_assert_eq!(out.readings, want);
        prop_assert_eq!(out.lines, items.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let out = parse_json_readings(&body, NOW, &Limits::default());
        prop_assert!(out.lines == out.readings.len() + out.errors.len() || out.errors[0].line == 0);
    }

    #[test]
    fn json_like_text_never_panics(body in "[\\[\\]{}\",:0-9a-z_. \\-eE]{0,200}") {
        let out = parse_json_readings(body.as_bytes(), NOW, &Limits::default());
        prop_assert!(out.lines == out.readings.len() + out.errors.len() || out.errors[0].line == 0);
    }
}
