use proptest::prelude::*;
use wattline_domain::Quantity as Q;

use super::super::MqttDecoder;
use super::*;

/// 2026-11-22T14:21:40Z: after the fixtures' device times, which must not matter.
const NOW: TsMs = TsMs(1_795_357_300_000);
const SENSOR: &str = "tele/plug1/SENSOR";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/tasmota/{}"
        ),
        name
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn plug1() -> TopicIdentity {
    TopicIdentity::new(Format::Tasmota, "plug1")
}

/// The readings of one message, by channel name, checking what every reading must satisfy.
fn readings(dec: &mut MqttDecoder, topic: &str, payload: &[u8], now: TsMs) -> Vec<ChannelReading> {
    match dec.decode(topic, payload, now) {
        Ok(Decoded::Readings {
            identity,
            readings,
            rejected,
        }) => {
            assert_eq!(identity, plug1());
            assert!(rejected.is_empty());
            for r in &readings {
                assert_eq!(r.ts, now, "Tasmota readings are stamped on receipt");
            }
            readings
        }
        other => panic!("{topic}: expected readings, got {other:?}"),
    }
}

fn channel<'r>(readings: &'r [ChannelReading], name: &str) -> &'r Values {
    &readings
        .iter()
        .find(|r| r.channel.as_str() == name)
        .unwrap_or_else(|| panic!("no channel {name} in {readings:?}"))
        .values
}

fn err(dec: &mut MqttDecoder, topic: &str, payload: &[u8]) -> AdapterError {
    match dec.decode(topic, payload, NOW) {
        Err(e) => {
            assert!(e.message.starts_with(topic), "{e}");
            if let Some(f) = &e.field {
                assert!(e.message.contains(&format!("{f:?}")), "{e}");
            }
            e
        }
        Ok(d) => panic!(
            "{topic} {:?}: expected an error, got {d:?}",
            String::from_utf8_lossy(payload)
        ),
    }
}

#[test]
fn single_channel_plug_reads_on_main() {
    let r = readings(
        &mut MqttDecoder::default(),
        SENSOR,
        &fixture("sensor_single.json"),
        NOW,
    );
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].channel.as_str(), "main");
    let v = &r[0].values;
    assert_eq!(v.get(Q::Energy), Some(3.705));
    assert_eq!(v.get(Q::Power), Some(5.0));
    assert_eq!(v.get(Q::ApparentPower), Some(5.0));
    assert_eq!(v.get(Q::ReactivePower), Some(0.0));
    assert_eq!(v.get(Q::PowerFactor), Some(1.0));
    assert_eq!(v.get(Q::Voltage), Some(233.0));
    assert_eq!(v.get(Q::Current), Some(0.021));
    // Yesterday, Today, Period and TotalStartTime are not readings.
    assert_eq!(v.iter().count(), 7);
}

#[test]
fn two_channels_main_gets_device_totals_and_channels_their_own_values() {
    let r = readings(
        &mut MqttDecoder::default(),
        SENSOR,
        &fixture("sensor_two_channels.json"),
        NOW,
    );
    let names: Vec<&str> = r.iter().map(|r| r.channel.as_str()).collect();
    assert_eq!(names, ["main", "ch1", "ch2"]);

    let main = channel(&r, "main");
    assert_eq!(main.get(Q::Energy), Some(12.412));
    assert_eq!(main.get(Q::Power), Some(23.63 + 67.17));
    assert_eq!(main.get(Q::Voltage), Some(231.0));
    assert_eq!(main.iter().count(), 3, "{main:?}");

    let ch1 = channel(&r, "ch1");
    assert_eq!(ch1.get(Q::Power), Some(23.63));
    assert_eq!(ch1.get(Q::ApparentPower), Some(30.10));
    assert_eq!(ch1.get(Q::ReactivePower), Some(18.64));
    assert_eq!(ch1.get(Q::PowerFactor), Some(0.79));
    assert_eq!(ch1.get(Q::Current), Some(0.130));
    assert_eq!(ch1.get(Q::Voltage), Some(231.0));

    let ch2 = channel(&r, "ch2");
    assert_eq!(ch2.get(Q::Power), Some(67.17));
    assert_eq!(ch2.get(Q::ApparentPower), Some(70.02));
    assert_eq!(ch2.get(Q::ReactivePower), Some(19.77));
    assert_eq!(ch2.get(Q::PowerFactor), Some(0.96));
    assert_eq!(ch2.get(Q::Current), Some(0.303));
    assert_eq!(ch2.get(Q::Voltage), Some(231.0));
    for ch in [ch1, ch2] {
        assert_eq!(ch.get(Q::Energy), None, "Wattline integrates channel power");
        assert_eq!(ch.iter().count(), 6);
    }
}

#[test]
fn device_time_is_never_used_even_before_ntp() {
    let mut dec = MqttDecoder::default();
    let payload = fixture("sensor_before_ntp.json");
    assert!(String::from_utf8_lossy(&payload).contains("\"Time\":\"1970-01-01T"));
    for now in [NOW, TsMs(NOW.0 + 12_345)] {
        let r = readings(&mut dec, SENSOR, &payload, now);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].ts, now);
        assert_eq!(r[0].values.get(Q::Energy), Some(3.712));
        assert_eq!(r[0].values.get(Q::PowerFactor), Some(0.88));
    }
}

#[test]
fn sensor_without_energy_names_the_device_only() {
    let d = MqttDecoder::default()
        .decode(
            SENSOR,
            br#"{"Time":"2026-11-20T21:57:38","DS18B20":{"Id":"01131B","Temperature":21.5},"TempUnit":"C"}"#,
            NOW,
        )
        .unwrap();
    assert_eq!(
        d,
        Decoded::Nothing {
            identity: Some(plug1())
        }
    );
}

#[test]
fn arrays_spread_over_channels() {
    let mut dec = MqttDecoder::default();
    // Three phases: a voltage per phase, so `main` gets none; a shorter array and a null leave
    // values out; a channel with nothing but the shared values is not a reading.
    let r = readings(
        &mut dec,
        SENSOR,
        br#"{"ENERGY":{"Total":5,"Power":[1,null,3,null],"Voltage":[230,231,232],"Current":[0.5],"Frequency":50}}"#,
        NOW,
    );
    let names: Vec<&str> = r.iter().map(|r| r.channel.as_str()).collect();
    assert_eq!(names, ["main", "ch1", "ch2", "ch3"]);
    let main = channel(&r, "main");
    assert_eq!(main.get(Q::Energy), Some(5.0));
    assert_eq!(main.get(Q::Power), Some(4.0));
    assert_eq!(main.get(Q::Frequency), Some(50.0));
    assert_eq!(main.get(Q::Voltage), None);
    assert_eq!(main.iter().count(), 3);
    let ch1 = channel(&r, "ch1");
    assert_eq!(ch1.get(Q::Power), Some(1.0));
    assert_eq!(ch1.get(Q::Current), Some(0.5));
    assert_eq!(ch1.get(Q::Voltage), Some(230.0));
    assert_eq!(ch1.get(Q::Frequency), Some(50.0));
    let ch2 = channel(&r, "ch2");
    assert_eq!(ch2.get(Q::Power), None);
    assert_eq!(ch2.get(Q::Voltage), Some(231.0));
    assert_eq!(channel(&r, "ch3").get(Q::Power), Some(3.0));

    // Per-channel counters go to their channels, their sum to `main`.
    let r = readings(
        &mut dec,
        SENSOR,
        br#"{"ENERGY":{"Total":[1.5,2.25],"ExportActive":0.5}}"#,
        NOW,
    );
    assert_eq!(channel(&r, "main").get(Q::Energy), Some(3.75));
    assert_eq!(channel(&r, "main").get(Q::EnergyExport), Some(0.5));
    assert_eq!(channel(&r, "ch2").get(Q::Energy), Some(2.25));
    assert_eq!(channel(&r, "ch2").get(Q::EnergyExport), None);
}

#[test]
fn lwt_is_availability() {
    let mut dec = MqttDecoder::default();
    for (payload, online) in [(&b"Online"[..], true), (b"Offline", false)] {
        assert_eq!(
            dec.decode("tele/plug1/LWT", payload, NOW).unwrap(),
            Decoded::Availability {
                identity: plug1(),
                online
            }
        );
    }
    let e = err(&mut dec, "tele/plug1/LWT", b"Rebooting");
    assert_eq!((e.code, e.field.as_deref()), (codes::BAD_TEXT, Some("LWT")));
    assert!(e.message.contains("Rebooting"), "{e}");
}

#[test]
fn state_results_and_commands_name_the_device() {
    let mut dec = MqttDecoder::default();
    for (topic, payload) in [
        (
            "tele/plug1/STATE",
            &br#"{"Time":"2026-11-20T21:57:38","POWER":"ON"}"#[..],
        ),
        ("stat/plug1/RESULT", br#"{"POWER":"ON"}"#),
        ("stat/plug1/POWER", b"ON"),
        ("cmnd/plug1/POWER", b"TOGGLE"),
        ("cmnd/plug1/POWER2", b"\xff not even text"),
    ] {
        assert_eq!(MqttDecoder::classify(topic), Some(plug1()), "{topic}");
        assert_eq!(
            dec.decode(topic, payload, NOW).unwrap(),
            Decoded::Nothing {
                identity: Some(plug1())
            },
            "{topic}"
        );
    }
}

#[test]
fn identity_is_the_topic_of_tasmota_shaped_topics_only() {
    assert_eq!(identity("tele/plug1/SENSOR"), Some(plug1()));
    assert_eq!(identity("cmnd/plug1/POWER"), Some(plug1()));
    for topic in [
        "tele/plug1",
        "tele/plug1/",
        "tele/plug1/SENSOR/x",
        "tasmota/tele/plug1/SENSOR",
        "TELE/plug1/SENSOR",
        "emon/plug1/power",
        "shellyplus1pm-a8032ab12345/status/switch:0",
    ] {
        assert_eq!(identity(topic), None, "{topic}");
    }
    // The shape is Tasmota's, so the topic is claimed, and refused for its id.
    let mut dec = MqttDecoder::default();
    for topic in ["tele/plug 1/SENSOR", "tele//LWT", "cmnd/plug+/POWER"] {
        assert!(identity(topic).is_some(), "{topic}");
        let e = err(&mut dec, topic, b"Online");
        assert_eq!(e.code, codes::BAD_ID, "{e}");
    }
}

#[test]
fn broken_payloads_are_refused_naming_topic_and_field() {
    let mut dec = MqttDecoder::default();
    let many = format!(
        r#"{{"ENERGY":{{"Power":[{}1]}}}}"#,
        "1,".repeat(MAX_CHANNELS)
    );
    let cases: [(&[u8], &str, Option<&str>); 20] = [
        (
            br#"{"Time":"2026-11-20T21:57:38","ENERGY":{"Total":3.705,"Pow"#,
            codes::BAD_JSON,
            None,
        ),
        (b"", codes::BAD_JSON, None),
        (
            b"{\"ENERGY\":{\"Power\":5}} trailing",
            codes::BAD_JSON,
            None,
        ),
        (b"[1,2]", codes::BAD_JSON, None),
        (b"\"ENERGY\"", codes::BAD_JSON, None),
        (b"{\"ENERGY\":{\"Power\":\xff}}", codes::BAD_TEXT, None),
        (br#"{"ENERGY":[1,2]}"#, codes::BAD_JSON, Some("ENERGY")),
        (br#"{"ENERGY":5}"#, codes::BAD_JSON, Some("ENERGY")),
        (
            br#"{"ENERGY":{"Power":"abc"}}"#,
            codes::BAD_NUMBER,
            Some("ENERGY.Power"),
        ),
        (
            br#"{"ENERGY":{"Power":"12abc"}}"#,
            codes::BAD_NUMBER,
            Some("ENERGY.Power"),
        ),
        (
            br#"{"ENERGY":{"Total":true}}"#,
            codes::BAD_NUMBER,
            Some("ENERGY.Total"),
        ),
        (
            br#"{"ENERGY":{"Voltage":{"L1":230}}}"#,
            codes::BAD_NUMBER,
            Some("ENERGY.Voltage"),
        ),
        (
            br#"{"ENERGY":{"Power":[5,[1,2]]}}"#,
            codes::BAD_NUMBER,
            Some("ENERGY.Power[1]"),
        ),
        (
            br#"{"ENERGY":{"Power":1e12}}"#,
            codes::OUT_OF_RANGE,
            Some("ENERGY.Power"),
        ),
        (
            br#"{"ENERGY":{"Power":[5,1e12]}}"#,
            codes::OUT_OF_RANGE,
            Some("ENERGY.Power[1]"),
        ),
        (
            br#"{"ENERGY":{"Power":[6e8,6e8]}}"#,
            codes::OUT_OF_RANGE,
            Some("ENERGY.Power"),
        ),
        (
            br#"{"ENERGY":{"Factor":7}}"#,
            codes::OUT_OF_RANGE,
            Some("ENERGY.Factor"),
        ),
        (
            br#"{"ENERGY":{"Total":-1}}"#,
            codes::OUT_OF_RANGE,
            Some("ENERGY.Total"),
        ),
        (many.as_bytes(), codes::OUT_OF_RANGE, Some("ENERGY.Power")),
        (
            br#"{"ENERGY":{"Today":0.3,"TotalStartTime":"2025-10-21T22:15:00"}}"#,
            codes::NO_VALUES,
            Some("ENERGY"),
        ),
    ];
    for (payload, code, field) in cases {
        let e = err(&mut dec, SENSOR, payload);
        let shown = String::from_utf8_lossy(payload);
        assert_eq!((e.code, e.field.as_deref()), (code, field), "{shown}: {e}");
        // The decoder keeps working after each refusal.
        let r = readings(&mut dec, SENSOR, &fixture("sensor_two_channels.json"), NOW);
        assert_eq!(channel(&r, "ch2").get(Q::Power), Some(67.17));
    }
    let e = err(&mut dec, SENSOR, br#"{"ENERGY":{"Power":"12abc"}}"#);
    assert!(e.message.contains("\"12abc\" is not a number"), "{e}");
    let e = err(&mut dec, SENSOR, br#"{"ENERGY":{"Factor":7}}"#);
    assert!(e.message.contains("power_factor = 7"), "{e}");
    for payload in [&b""[..], b"\xff\xfe"] {
        let e = err(&mut dec, "tele/plug1/LWT", payload);
        assert_eq!((e.code, e.field.as_deref()), (codes::BAD_TEXT, Some("LWT")));
    }
}

/// A JSON number as Rust prints an f64: the shortest text that reads back as the same value.
fn json_number(v: f64) -> String {
    format!("{v}")
}

proptest! {
    #[test]
    fn generated_sensor_decodes_to_exactly_its_values(
        power in -1e9f64..=1e9,
        total in 0.0f64..=1e12,
        factor in -1.0f64..=1.0,
        voltage in 0.0f64..=1e6,
    ) {
        let payload = format!(
            r#"{{"Time":"1970-01-01T00:00:09","ENERGY":{{"Total":{},"Yesterday":1,"Power":{},"Factor":{},"Voltage":{}}}}}"#,
            json_number(total), json_number(power), json_number(factor), json_number(voltage),
        );
        let r = readings(&mut MqttDecoder::default(), SENSOR, payload.as_bytes(), NOW);
        prop_assert_eq!(r.len(), 1);
        let v = &r[0].values;
        prop_assert_eq!(v.get(Q::Energy), Some(total));
        prop_assert_eq!(v.get(Q::Power), Some(power));
        prop_assert_eq!(v.get(Q::PowerFactor), Some(factor));
        prop_assert_eq!(v.get(Q::Voltage), Some(voltage));
        prop_assert_eq!(v.iter().count(), 4);
    }

    #[test]
    fn generated_channel_arrays_decode_per_channel(
        powers in proptest::collection::vec(-1e6f64..=1e6, 1..=8),
        voltage in 0.0f64..=1e6,
    ) {
        let list: Vec<String> = powers.iter().map(|p| json_number(*p)).collect();
        let payload = format!(
            r#"{{"ENERGY":{{"Power":[{}],"Voltage":{}}}}}"#,
            list.join(","), json_number(voltage),
        );
        let r = readings(&mut MqttDecoder::default(), SENSOR, payload.as_bytes(), NOW);
        prop_assert_eq!(r.len(), powers.len() + 1);
        prop_assert_eq!(channel(&r, "main").get(Q::Power), Some(powers.iter().sum::<f64>()));
        for (i, p) in powers.iter().enumerate() {
            let ch = channel(&r, &format!("ch{}", i + 1));
            prop_assert_eq!(ch.get(Q::Power), Some(*p));
            prop_assert_eq!(ch.get(Q::Voltage), Some(voltage));
        }
    }

    #[test]
    fn any_payload_decodes_or_is_refused_never_panics(
        command in prop::sample::select(vec!["tele/p/SENSOR", "tele/p/LWT", "tele/p/STATE", "stat/p/RESULT", "cmnd/p/POWER"]),
        junk in proptest::collection::vec(any::<u8>(), 0..64),
        jsonish in r#"\{"ENERGY":[\[\]{}"0-9a-zA-Z.,:eE+ -]{0,60}"#,
    ) {
        let mut dec = MqttDecoder::default();
        for payload in [&junk[..], jsonish.as_bytes()] {
            match dec.decode(command, payload, NOW) {
                Ok(Decoded::Readings { readings, .. }) => {
                    prop_assert!(!readings.is_empty());
                    for r in readings {
                        prop_assert!(!r.values.is_empty());
                        prop_assert!(dec.limits.check(r.ts, &r.values, NOW).is_ok());
                    }
                }
                Ok(_) => {}
                Err(e) => prop_assert!(e.message.starts_with(command), "{}", e),
            }
        }
    }
}
