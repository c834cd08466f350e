use super::*;
use crate::mqtt::common::number_len;
use crate::mqtt::MqttDecoder;
use proptest::prelude::*;
use wattline_domain::Quantity as Q;

/// 2026-11-24T00:00:00Z: after the README example's `time` (2026-11-22T...).
const NOW: TsMs = TsMs(1_795_478_400_000);

const README: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/emoncms/README.md"
);

/// The README's examples: (topic, payload) of every "`topic` = `payload`" it shows.
fn readme_examples() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(README).unwrap_or_else(|e| panic!("{README}: {e}"));
    let examples: Vec<(String, String)> = text
        .split("` = `")
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| {
            let topic = w[0].rsplit('`').next().unwrap();
            let payload = w[1].split('`').next().unwrap();
            (topic.to_owned(), payload.to_owned())
        })
        .collect();
    assert_eq!(examples.len(), 2, "{README} changed: {examples:?}");
    examples
}

fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name).unwrap()
}

fn decode_with(d: &mut MqttDecoder, topic: &str, payload: &str) -> Result<Decoded, AdapterError> {
    d.decode(topic, payload.as_bytes(), NOW)
}

fn readings(topic: &str, payload: &str) -> Vec<ChannelReading> {
    match decode_with(&mut MqttDecoder::default(), topic, payload) {
        Ok(Decoded::Readings {
            identity,
            readings,
            rejected,
        }) => {
            assert_eq!(identity.format, Format::Emoncms);
            assert!(rejected.is_empty());
            readings
        }
        other => panic!("{topic} {payload}: {other:?}"),
    }
}

fn one(topic: &str, payload: &str) -> (ChannelName, Quantity, f64) {
    let r = readings(topic, payload);
    assert_eq!(r.len(), 1, "{r:?}");
    let (q, v) = r[0].values.iter().next().unwrap();
    assert_eq!(r[0].values.iter().count(), 1);
    assert_eq!(r[0].ts, NOW);
    (r[0].channel.clone(), q, v)
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
fn readme_examples_decode() {
    let examples = readme_examples();
    let (topic, payload) = &examples[0];
    assert_eq!(
        (topic.as_str(), payload.as_str()),
        ("emon/emontx3/power1", "352")
    );
    assert_eq!(
        MqttDecoder::classify(topic),
        Some(TopicIdentity::new(Format::Emoncms, "emontx3"))
    );
    assert_eq!(one(topic, payload), (ch("ch1"), Q::Power, 352.0));

    let (topic, payload) = &examples[1];
    assert_eq!(topic, "emon/<node>");
    let r = readings("emon/emontx3", payload);
    let ts = TsMs(1_795_302_000_000);
    assert_eq!(
        r,
        [
            ChannelReading {
                channel: ch("ch1"),
                ts,
                values: Values::new().with(Q::Power, 352.0),
            },
            ChannelReading {
                channel: ch("ch2"),
                ts,
                values: Values::new().with(Q::Power, 12.0),
            },
            ChannelReading {
                channel: ch("main"),
                ts,
                values: Values::new().with(Q::Voltage, 238.4),
            },
        ]
    );
    // Without `time`, the receive time.
    let r = readings("emon/emontx3", r#"{"power1":352}"#);
    assert_eq!(r[0].ts, NOW);
}

#[test]
fn key_mapping() {
    for (key, value, channel, q, expected) in [
        ("power", "5", "main", Q::Power, 5.0),
        ("power1", "-5", "ch1", Q::Power, -5.0),
        ("P3", "7", "ch3", Q::Power, 7.0),
        ("power12", "1", "ch12", Q::Power, 1.0),
        ("vrms", "238.4", "main", Q::Voltage, 238.4),
        ("Vrms", "23840e-2", "main", Q::Voltage, 238.4),
        ("current", "1.5", "main", Q::Current, 1.5),
        ("irms", "1.5", "main", Q::Current, 1.5),
        ("irms2", "0.25", "ch2", Q::Current, 0.25),
        ("current4", "2", "ch4", Q::Current, 2.0),
        ("I1", "3", "ch1", Q::Current, 3.0),
        ("pf", "0.9", "main", Q::PowerFactor, 0.9),
        ("PF2", "-0.5", "ch2", Q::PowerFactor, -0.5),
        ("frequency", "50.01", "main", Q::Frequency, 50.01),
        ("freq", "49.9", "main", Q::Frequency, 49.9),
        ("energy", "12.5", "main", Q::Energy, 12.5),
        ("energy2", "12.5", "ch2", Q::Energy, 12.5),
        ("kwh1", "3", "ch1", Q::Energy, 3.0),
        ("kWh", "3", "main", Q::Energy, 3.0),
        ("wh", "1234", "main", Q::Energy, 1.234),
        ("wh3", "1234", "ch3", Q::Energy, 1.234),
        ("E1", "27021316", "ch1", Q::Energy, 27_021.316),
        ("e6", "5", "ch6", Q::Energy, 0.005),
    ] {
        assert_eq!(
            one(&format!("emon/n1/{key}"), value),
            (ch(channel), q, expected),
            "{key}"
        );
        let json = format!(r#"{{"{key}":{value}}}"#);
        assert_eq!(one("emon/n1", &json), (ch(channel), q, expected), "{json}");
    }
}

#[test]
fn ignored_keys_are_nothing() {
    let nothing = Decoded::Nothing {
        identity: Some(TopicIdentity::new(Format::Emoncms, "emonpi")),
    };
    for key in [
        "temp1",
        "t1",
        "pulse",
        "pulsecount",
        "rssi",
        "MSG",
        "power1pluspower2",
        "p",
        "e",
        "i",
        "vrms1",
        "freq1",
        "time",
    ] {
        // The payload of an ignored key is not even read.
        assert_eq!(
            decode_with(
                &mut MqttDecoder::default(),
                &format!("emon/emonpi/{key}"),
                "x"
            ),
            Ok(nothing.clone()),
            "{key}"
        );
    }
    for body in [
        "{}",
        r#"{"temp1":21.5,"rssi":-60,"t1":"warm","pulse":null}"#,
        r#"{"power1":null}"#,
        r#"{"time":1795302000,"temp1":1}"#,
    ] {
        assert_eq!(
            decode_with(&mut MqttDecoder::default(), "emon/emonpi", body),
            Ok(nothing.clone()),
            "{body}"
        );
    }
    // Ignored keys beside known ones are dropped silently.
    let r = readings("emon/emonpi", r#"{"power1":1,"temp1":"x","rssi":[1]}"#);
    assert_eq!(r.len(), 1);
}

#[test]
fn numbers_may_be_strings_and_are_strict() {
    let r = readings(
        "emon/n",
        r#"{"power1":"352","vrms":"2.384e2","pf1":"-0.5"}"#,
    );
    assert_eq!(r[0].values.get(Q::Power), Some(352.0));
    assert_eq!(r[0].values.get(Q::PowerFactor), Some(-0.5));
    assert_eq!(r[1].values.get(Q::Voltage), Some(238.4));
    // A plain payload may carry the newline `mosquitto_pub -l` or `echo` add.
    assert_eq!(
        one("emon/n/power1", " 352\r\n"),
        (ch("ch1"), Q::Power, 352.0)
    );

    for bad in [
        "abc", "1,5", "0x10", "+5", ".5", "5.", "1e", "1e+", "NaN", "inf", "-inf", "1 2", "--1",
        "5W", "١٢",
    ] {
        let e = refused("emon/n/power1", bad.as_bytes());
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("bad_number", Some("power1")),
            "{bad}"
        );
        assert_eq!(
            e.message,
            format!("emon/n/power1: field \"power1\": {:?} is not a number", bad)
        );
        let json = format!(r#"{{"power1":{bad:?}}}"#);
        let e = refused("emon/n", json.as_bytes());
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("bad_number", Some("power1")),
            "{json}"
        );
    }
    let e = refused("emon/n/power1", b"");
    assert_eq!(e.code, "bad_number");
    assert_eq!(
        e.message,
        "emon/n/power1: field \"power1\": empty payload, expected a number"
    );
    for v in ["true", "[1]", "{\"a\":1}", "\" 1\""] {
        let json = format!(r#"{{"vrms":230,"power2":{v}}}"#);
        let e = refused("emon/n", json.as_bytes());
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("bad_number", Some("power2")),
            "{v}"
        );
        assert_eq!(
            e.message,
            format!("emon/n: field \"power2\": {v} is not a number")
        );
    }
}

#[test]
fn implausible_values_are_out_of_range() {
    for (topic, payload, field) in [
        ("emon/n/vrms", "1e9", "vrms"),
        ("emon/n/vrms", "-1", "vrms"),
        ("emon/n/pf1", "1.5", "pf1"),
        ("emon/n/power1", "1e999", "power1"),
        ("emon/n/E1", "-5", "E1"),
        ("emon/n/freq", "0", "freq"),
    ] {
        let e = refused(topic, payload.as_bytes());
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("out_of_range", Some(field)),
            "{topic} {payload}"
        );
    }
    let e = refused("emon/n/vrms", b"1e9");
    assert_eq!(
        e.message,
        "emon/n/vrms: field \"vrms\": voltage = 1000000000 is outside what a meter can report \
         (0 ..= 1000000 V)"
    );
    // One bad value refuses the whole sample.
    let e = refused("emon/n", br#"{"power1":100,"vrms":1e9}"#);
    assert_eq!((e.code, e.field.as_deref()), ("out_of_range", Some("vrms")));
}

#[test]
fn time() {
    let at = |time: &str| readings("emon/n", &format!(r#"{{"power1":1,"time":{time}}}"#))[0].ts;
    assert_eq!(at("1795302000"), TsMs(1_795_302_000_000));
    assert_eq!(at("\"1795302000\""), TsMs(1_795_302_000_000));
    assert_eq!(at("1795302000.123"), TsMs(1_795_302_000_123));
    assert_eq!(at("1.795302e9"), TsMs(1_795_302_000_000));
    assert_eq!(at("null"), NOW);
    for (time, says) in [
        (
            "\"yesterday\"",
            "\"yesterday\" is not a unix time in seconds",
        ),
        ("true", "true is not a unix time in seconds"),
        ("[1]", "[1] is not a unix time in seconds"),
        ("1e300", "1e+300 is not a unix time in seconds"),
        (
            "0",
            "0: timestamp 1970-01-01T00:00:00Z is before 2000-01-01",
        ),
        (
            "4102444800",
            "4102444800: timestamp 2100-01-01T00:00:00Z is more than a day ahead",
        ),
    ] {
        let body = format!(r#"{{"power1":1,"time":{time}}}"#);
        let e = refused("emon/n", body.as_bytes());
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("bad_timestamp", Some("time")),
            "{time}"
        );
        assert!(
            e.message
                .starts_with(&format!("emon/n: field \"time\": {says}")),
            "{e}"
        );
    }
    // The day ahead the limits allow.
    assert_eq!(at("1795564800"), TsMs(1_795_564_800_000));
    assert_eq!(
        refused("emon/n", br#"{"power1":1,"time":1795564801}"#).code,
        "bad_timestamp"
    );
}

#[test]
fn malformed_messages() {
    for body in [
        &b""[..],
        b"{",
        b"[1]",
        b"352",
        b"\"x\"",
        b"{\"power1\":1} x",
        b"null",
    ] {
        let e = refused("emon/n", body);
        assert_eq!((e.code, e.field.as_deref()), ("bad_json", None), "{body:?}");
        assert!(
            e.message
                .starts_with("emon/n: expected a JSON object of input values: "),
            "{e}"
        );
    }
    for (topic, body) in [
        ("emon/n", &b"{\"power1\":\xff}"[..]),
        ("emon/n/power1", b"\xff1"),
    ] {
        let e = refused(topic, body);
        assert_eq!(e.code, "bad_text", "{topic}");
        assert!(e.message.contains("payload is not UTF-8"), "{e}");
    }
    let e = refused("emon/a b/power1", b"1");
    assert_eq!(e.code, "bad_id");
    assert!(
        e.message
            .starts_with("emon/a b/power1: node \"a b\" is not a valid id: "),
        "{e}"
    );
}

#[test]
fn identities() {
    assert_eq!(
        identity("emon/emonpi"),
        Some(TopicIdentity::new(Format::Emoncms, "emonpi"))
    );
    assert_eq!(
        identity("emon/5/power1"),
        Some(TopicIdentity::new(Format::Emoncms, "5"))
    );
    for t in [
        "emon",
        "emon/",
        "emon//power1",
        "emon/n/",
        "emon/n/a/b",
        "EMON/n",
        "x/emon/n",
    ] {
        assert_eq!(identity(t), None, "{t}");
    }
}

#[test]
fn keeps_working_after_bad_messages() {
    let mut d = MqttDecoder::default();
    for (topic, payload) in [
        ("emon/n", "{"),
        ("emon/n/power1", "x"),
        ("emon/n/vrms", "1e9"),
        ("emon/n", r#"{"time":"x","power1":1}"#),
    ] {
        assert!(
            decode_with(&mut d, topic, payload).is_err(),
            "{topic} {payload}"
        );
    }
    let out = decode_with(&mut d, "emon/n/power1", "3").unwrap();
    assert!(
        matches!(out, Decoded::Readings { ref readings, .. } if readings[0].values.get(Q::Power) == Some(3.0)),
        "{out:?}"
    );
}

#[test]
fn number_syntax() {
    for (s, len) in [
        ("", 0),
        ("-", 0),
        ("1", 1),
        ("-12.50", 6),
        ("5.", 1),
        ("5.x", 1),
        ("1e5", 3),
        ("1E-05kWh", 5),
        ("1e", 1),
        ("1e+", 1),
        ("2eV", 1),
        (".5", 0),
        ("0.06436kWh", 7),
        ("8.37 V", 4),
    ] {
        assert_eq!(number_len(s), len, "{s}");
    }
    assert_eq!(parse_number("0.1"), Some(0.1));
    assert_eq!(parse_number("1e999"), Some(f64::INFINITY));
    assert_eq!(parse_number("-0"), Some(-0.0));
    assert_eq!(parse_number(" 1"), None);
}

#[test]
fn seconds_to_milliseconds() {
    assert_eq!(
        seconds_to_ms(1_670_492_819.0),
        Some(TsMs(1_670_492_819_000))
    );
    assert_eq!(
        seconds_to_ms(1_670_492_819.123),
        Some(TsMs(1_670_492_819_123))
    );
    assert_eq!(seconds_to_ms(-1.5), Some(TsMs(-1500)));
    for bad in [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e300,
        -1e300,
        9.3e15,
    ] {
        assert_eq!(seconds_to_ms(bad), None, "{bad}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn printed_numbers_parse_back(v in any::<f64>().prop_filter("finite", |v| v.is_finite())) {
        for text in [format!("{v}"), format!("{v:e}"), format!("{v:E}")] {
            prop_assert_eq!(number_len(&text), text.len(), "{}", text);
            prop_assert_eq!(parse_number(&text), Some(v), "{}", text);
        }
    }

    /// Whatever the strict syntax takes, Rust's parser reads the same way.
    #[test]
    fn accepted_text_is_a_rust_float(s in "[-+0-9.eEinfa ]{0,12}") {
        if let Some(v) = parse_number(&s) {
            prop_assert_eq!(s.parse::<f64>().ok(), Some(v));
        }
        prop_assert!(number_len(&s) <= s.len());
    }

    #[test]
    fn arbitrary_messages_never_panic(
        key in prop::sample::select(vec!["", "/power1", "/vrms", "/E1", "/temp1", "/pf"]),
        payload in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..128),
            "\\{(\"(power1|vrms|pf|time|E2|x)\":(-?[0-9.e]{1,8}|\"[0-9a-z.]{0,6}\"|null|true),?){0,4}\\}"
                .prop_map(String::into_bytes),
        ],
    ) {
        let topic = format!("emon/n{key}");
        if let Ok(Decoded::Readings { readings, .. }) = MqttDecoder::default().decode(&topic, &payload, NOW) {
            for r in readings {
                prop_assert!(!r.values.is_empty());
                prop_assert!(r.values.iter().all(|(_, v)| v.is_finite()));
            }
        }
    }
}
