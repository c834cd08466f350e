use proptest::prelude::*;
use wattline_domain::Quantity as Q;

use super::super::MqttDecoder;
use super::*;

/// 2026-11-22T12:42:00Z: shortly after the fixtures' `ts`.
const NOW: TsMs = TsMs(1_795_351_320_000);
/// `params.ts` of the delta fixture, in milliseconds.
const DELTA_TS: TsMs = TsMs(1_795_302_071_520);
const PREFIX: &str = "shellyplus1pm-a8032ab12345";
const STATUS: &str = "shellyplus1pm-a8032ab12345/status/switch:0";
const EVENTS: &str = "shellyplus1pm-a8032ab12345/events/rpc";
const GEN1: &str = "shelly1pm-ab12cd";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/shelly/{}"
        ),
        name
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn shelly(id: &str) -> TopicIdentity {
    TopicIdentity::new(Format::Shelly, id)
}

fn readings(dec: &mut MqttDecoder, topic: &str, payload: &[u8]) -> Vec<ChannelReading> {
    match dec.decode(topic, payload, NOW) {
        Ok(Decoded::Readings {
            identity,
            readings,
            rejected,
        }) => {
            assert_eq!(Some(identity), MqttDecoder::classify(topic));
            assert!(rejected.is_empty());
            readings
        }
        other => panic!("{topic}: expected readings, got {other:?}"),
    }
}

/// The one reading of a message.
fn one(dec: &mut MqttDecoder, topic: &str, payload: &[u8]) -> ChannelReading {
    let mut r = readings(dec, topic, payload);
    assert_eq!(r.len(), 1, "{r:?}");
    r.remove(0)
}

fn channel<'r>(readings: &'r [ChannelReading], name: &str) -> &'r Values {
    &readings
        .iter()
        .find(|r| r.channel.as_str() == name)
        .unwrap_or_else(|| panic!("no channel {name} in {readings:?}"))
        .values
}

fn nothing(dec: &mut MqttDecoder, topic: &str, payload: &[u8], id: &str) {
    assert_eq!(
        dec.decode(topic, payload, NOW).unwrap(),
        Decoded::Nothing {
            identity: Some(shelly(id))
        },
        "{topic}"
    );
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

fn notify(params: &str) -> Vec<u8> {
    format!(
        r#"{{"src":"{PREFIX}","dst":"{PREFIX}/events","method":"NotifyStatus","params":{params}}}"#
    )
    .into_bytes()
}

#[test]
fn full_switch_status_reads_every_meter_value() {
    let r = one(
        &mut MqttDecoder::default(),
        STATUS,
        &fixture("gen2_status_switch0.json"),
    );
    assert_eq!(r.channel.as_str(), "switch:0");
    assert_eq!(r.ts, NOW, "a status carries no time of its own");
    let v = r.values;
    assert_eq!(v.get(Q::Power), Some(1840.3));
    assert_eq!(v.get(Q::Voltage), Some(229.8));
    assert_eq!(v.get(Q::Current), Some(8.031));
    assert_eq!(v.get(Q::PowerFactor), Some(0.99));
    assert_eq!(v.get(Q::Frequency), Some(50.0));
    assert_eq!(v.get(Q::Energy), Some(14.093512));
    assert_eq!(v.get(Q::EnergyExport), Some(0.0));
    assert_eq!(v.iter().count(), 7);
}

#[test]
fn delta_is_laid_over_the_last_full_status() {
    let mut dec = MqttDecoder::default();
    one(&mut dec, STATUS, &fixture("gen2_status_switch0.json"));
    let r = one(&mut dec, EVENTS, &fixture("gen2_notify_status_delta.json"));
    assert_eq!(r.channel.as_str(), "switch:0");
    assert_eq!(r.ts, DELTA_TS);
    let v = r.values;
    assert_eq!(v.get(Q::Power), Some(1835.9));
    assert_eq!(v.get(Q::Current), Some(8.012));
    assert_eq!(v.get(Q::Voltage), Some(229.8));
    assert_eq!(v.get(Q::PowerFactor), Some(0.99));
    assert_eq!(v.get(Q::Frequency), Some(50.0));
    assert_eq!(v.get(Q::Energy), Some(14.093512));
    assert_eq!(v.iter().count(), 7);

    // Deltas build on each other: the next one keeps the previous delta's power.
    let r = one(
        &mut dec,
        EVENTS,
        &notify(r#"{"ts":1795302081.0,"switch:0":{"id":0,"voltage":231.2}}"#),
    );
    assert_eq!(r.ts, TsMs(1_795_302_081_000));
    assert_eq!(r.values.get(Q::Power), Some(1835.9));
    assert_eq!(r.values.get(Q::Voltage), Some(231.2));
}

#[test]
fn delta_without_a_known_status_gives_what_it_has() {
    let mut dec = MqttDecoder::default();
    let r = one(&mut dec, EVENTS, &fixture("gen2_notify_status_delta.json"));
    assert_eq!(r.ts, DELTA_TS);
    assert_eq!(r.values.get(Q::Power), Some(1835.9));
    assert_eq!(r.values.get(Q::Current), Some(8.012));
    assert_eq!(r.values.iter().count(), 2);

    // No meter value in it (a relay switching, a temperature): nothing.
    nothing(
        &mut dec,
        EVENTS,
        &notify(r#"{"ts":1795302090.0,"switch:1":{"id":1,"output":false},"sys":{"uptime":1234}}"#),
        PREFIX,
    );
}

#[test]
fn forget_drops_the_remembered_status() {
    let mut dec = MqttDecoder::default();
    one(&mut dec, STATUS, &fixture("gen2_status_switch0.json"));
    dec.forget(&shelly(PREFIX));
    let r = one(&mut dec, EVENTS, &fixture("gen2_notify_status_delta.json"));
    assert_eq!(r.values.get(Q::Voltage), None);
    assert_eq!(r.values.iter().count(), 2);
}

#[test]
fn state_is_per_prefix_and_component() {
    let mut dec = MqttDecoder::default();
    one(&mut dec, STATUS, &fixture("gen2_status_switch0.json"));
    let other = "shellypro4pm-0000/events/rpc";
    let r = one(&mut dec, other, &fixture("gen2_notify_status_delta.json"));
    assert_eq!(r.values.get(Q::Voltage), None, "another device's status");
    let r = one(
        &mut dec,
        EVENTS,
        &notify(r#"{"ts":1795302090.0,"switch:1":{"apower":5}}"#),
    );
    assert_eq!(r.channel.as_str(), "switch:1");
    assert_eq!(r.values.iter().count(), 1, "another component's status");
}

#[test]
fn full_status_notification_replaces_the_memory() {
    let mut dec = MqttDecoder::default();
    one(&mut dec, STATUS, &fixture("gen2_status_switch0.json"));
    let full = format!(
        r#"{{"src":"{PREFIX}","method":"NotifyFullStatus","params":{{"ts":1795302095.25,"sys":{{"uptime":5}},"switch:0":{{"id":0,"apower":12.5,"voltage":228.0}}}}}}"#
    );
    let r = one(&mut dec, EVENTS, full.as_bytes());
    assert_eq!(r.ts, TsMs(1_795_302_095_250));
    assert_eq!(r.values.get(Q::Power), Some(12.5));
    assert_eq!(
        r.values.get(Q::Energy),
        None,
        "not laid over the older status"
    );
    let r = one(&mut dec, EVENTS, &fixture("gen2_notify_status_delta.json"));
    assert_eq!(r.values.get(Q::Voltage), Some(228.0));
    assert_eq!(r.values.get(Q::Power), Some(1835.9));
}

#[test]
fn other_notifications_and_components_name_the_device_only() {
    let mut dec = MqttDecoder::default();
    let event = format!(
        r#"{{"src":"{PREFIX}","method":"NotifyEvent","params":{{"ts":1795302090.1,"events":[{{"component":"input:0","event":"single_push"}}]}}}}"#
    );
    nothing(&mut dec, EVENTS, event.as_bytes(), PREFIX);
    for (topic, payload) in [
        ("status/sys", &br#"{"uptime":1234,"ram_free":100000}"#[..]),
        ("status/input:0", br#"{"id":0,"state":false}"#),
        ("status/em:1", br#"{"id":1,"a_act_power":5}"#),
        ("status/wifi", b"\xff not JSON, not looked at"),
        (
            "rpc",
            br#"{"id":1,"src":"wattline","method":"Switch.Set","params":{"id":0,"on":false}}"#,
        ),
    ] {
        nothing(&mut dec, &format!("{PREFIX}/{topic}"), payload, PREFIX);
    }
}

#[test]
fn notification_time_is_used_only_when_trustworthy() {
    let mut dec = MqttDecoder::default();
    for params in [
        r#"{"switch:0":{"apower":1}}"#,
        r#"{"ts":null,"switch:0":{"apower":1}}"#,
        r#"{"ts":12.5,"switch:0":{"apower":1}}"#,
        r#"{"ts":-3,"switch:0":{"apower":1}}"#,
        r#"{"ts":4102444800,"switch:0":{"apower":1}}"#,
        r#"{"ts":1e300,"switch:0":{"apower":1}}"#,
    ] {
        assert_eq!(one(&mut dec, EVENTS, &notify(params)).ts, NOW, "{params}");
    }
    let e = err(
        &mut dec,
        EVENTS,
        &notify(r#"{"ts":"yesterday","switch:0":{"apower":1}}"#),
    );
    assert_eq!(
        (e.code, e.field.as_deref()),
        (codes::BAD_TIMESTAMP, Some("params.ts"))
    );
}

#[test]
fn pro_3em_phases_and_totals() {
    let mut dec = MqttDecoder::default();
    let em = br#"{"id":0,"a_current":4.029,"a_voltage":236.1,"a_act_power":951.2,"a_aprt_power":951.9,"a_pf":1,"a_freq":50,
        "b_current":4.027,"b_voltage":236.201,"b_act_power":-951.1,"b_aprt_power":951.8,"b_pf":-1,"b_freq":50,
        "c_current":3.03,"c_voltage":236.402,"c_act_power":715.4,"c_aprt_power":716.2,"c_pf":0.99,"c_freq":50,
        "n_current":null,"total_current":11.087,"total_act_power":715.5,"total_aprt_power":2619.9,"user_calibrated_phase":[]}"#;
    let r = readings(&mut dec, "shellypro3em-c8f09e8b1234/status/em:0", em);
    let names: Vec<&str> = r.iter().map(|r| r.channel.as_str()).collect();
    assert_eq!(names, ["L1", "L2", "L3", "main"]);
    let l2 = channel(&r, "L2");
    assert_eq!(l2.get(Q::Voltage), Some(236.201));
    assert_eq!(l2.get(Q::Current), Some(4.027));
    assert_eq!(l2.get(Q::Power), Some(-951.1));
    assert_eq!(l2.get(Q::ApparentPower), Some(951.8));
    assert_eq!(l2.get(Q::PowerFactor), Some(-1.0));
    assert_eq!(l2.get(Q::Frequency), Some(50.0));
    assert_eq!(l2.iter().count(), 6);
    let main = channel(&r, "main");
    assert_eq!(main.get(Q::Power), Some(715.5));
    assert_eq!(main.get(Q::ApparentPower), Some(2619.9));
    assert_eq!(main.iter().count(), 2);

    let emdata = br#"{"id":0,"a_total_act_energy":2776.35,"a_total_act_ret_energy":0,"b_total_act_energy":0.1,"b_total_act_ret_energy":2757.6,
        "c_total_act_energy":1200,"c_total_act_ret_energy":0,"total_act":3976.45,"total_act_ret":2757.6}"#;
    let r = readings(
        &mut dec,
        "shellypro3em-c8f09e8b1234/status/emdata:0",
        emdata,
    );
    assert_eq!(channel(&r, "L1").get(Q::Energy), Some(2.77635));
    assert_eq!(channel(&r, "L2").get(Q::EnergyExport), Some(2.7576));
    assert_eq!(channel(&r, "L3").get(Q::Energy), Some(1.2));
    assert_eq!(channel(&r, "main").get(Q::Energy), Some(3.97645));
    assert_eq!(channel(&r, "main").get(Q::EnergyExport), Some(2.7576));

    // A phase delta keeps the other phases' last values, at the delta's time.
    let delta = br#"{"method":"NotifyStatus","params":{"ts":1795302099.0,"em:0":{"id":0,"a_act_power":100.5,"total_act_power":-135.2}}}"#;
    let r = readings(&mut dec, "shellypro3em-c8f09e8b1234/events/rpc", delta);
    assert_eq!(r.len(), 4);
    assert!(r.iter().all(|r| r.ts == TsMs(1_795_302_099_000)));
    assert_eq!(channel(&r, "L1").get(Q::Power), Some(100.5));
    assert_eq!(channel(&r, "L1").get(Q::Voltage), Some(236.1));
    assert_eq!(channel(&r, "L3").get(Q::Power), Some(715.4));
    assert_eq!(channel(&r, "main").get(Q::Power), Some(-135.2));
}

#[test]
fn single_phase_em_channels() {
    let mut dec = MqttDecoder::default();
    let r = one(
        &mut dec,
        "shellyproem50-0000/status/em1:1",
        br#"{"id":1,"current":2.5,"voltage":230.0,"act_power":-550.0,"aprt_power":575.0,"pf":-0.96,"freq":50.0,"calibration":"factory"}"#,
    );
    assert_eq!(r.channel.as_str(), "em1:1");
    assert_eq!(r.values.get(Q::Power), Some(-550.0));
    assert_eq!(r.values.get(Q::ApparentPower), Some(575.0));
    assert_eq!(r.values.iter().count(), 6);
    let r = one(
        &mut dec,
        "shellyproem50-0000/status/em1data:1",
        br#"{"id":1,"total_act_energy":12345.6,"total_act_ret_energy":7.5}"#,
    );
    assert_eq!(r.channel.as_str(), "em1:1");
    assert_eq!(r.values.get(Q::Energy), Some(12345.6 / 1000.0));
    assert_eq!(r.values.get(Q::EnergyExport), Some(0.0075));
}

#[test]
fn online_is_availability() {
    let mut dec = MqttDecoder::default();
    for (topic, id) in [
        (format!("{PREFIX}/online"), PREFIX),
        (format!("shellies/{GEN1}/online"), GEN1),
    ] {
        for (payload, online) in [("true", true), ("false", false)] {
            assert_eq!(
                dec.decode(&topic, payload.as_bytes(), NOW).unwrap(),
                Decoded::Availability {
                    identity: shelly(id),
                    online
                }
            );
        }
        let e = err(&mut dec, &topic, b"maybe");
        assert_eq!(
            (e.code, e.field.as_deref()),
            (codes::BAD_TEXT, Some("online"))
        );
    }
}

#[test]
fn gen1_values_are_one_reading_each_at_receipt() {
    let mut dec = MqttDecoder::default();
    let t = |rest: &str| format!("shellies/{GEN1}/{rest}");
    let cases: [(&str, &str, &str, Q, f64); 7] = [
        ("relay/0/power", "42.47", "relay0", Q::Power, 42.47),
        // Watt-minutes: 6000 Wmin = 100 Wh = 0.1 kWh.
        ("relay/0/energy", "6000", "relay0", Q::Energy, 0.1),
        ("relay/1/power", " 0\n", "relay1", Q::Power, 0.0),
        ("roller/0/energy", "120", "roller0", Q::Energy, 0.002),
        ("emeter/2/voltage", "231.5", "emeter2", Q::Voltage, 231.5),
        (
            "emeter/0/total",
            "12345.6",
            "emeter0",
            Q::Energy,
            12345.6 / 1000.0,
        ),
        (
            "emeter/0/total_returned",
            "2.5",
            "emeter0",
            Q::EnergyExport,
            0.0025,
        ),
    ];
    for (rest, payload, ch, q, v) in cases {
        let r = one(&mut dec, &t(rest), payload.as_bytes());
        assert_eq!(r.channel.as_str(), ch, "{rest}");
        assert_eq!(r.ts, NOW);
        assert_eq!(r.values.get(q), Some(v), "{rest}");
        assert_eq!(r.values.iter().count(), 1);
    }
    for (rest, payload) in [
        ("relay/0", "on"),
        ("relay/0/command", "off"),
        ("emeter/0/energy", "1000"),
        ("relay/x/power", "5"),
        ("temperature", "41.5"),
        ("announce", r#"{"id":"shelly1pm-ab12cd"}"#),
    ] {
        nothing(&mut dec, &t(rest), payload.as_bytes(), GEN1);
    }
}

#[test]
fn identity_does_not_swallow_other_families_topics() {
    for (topic, id) in [
        (STATUS, PREFIX),
        ("shellyplus1pm-a8032ab12345/status/sys", PREFIX),
        ("shellyplus1pm-a8032ab12345/status/bthomesensor:200", PREFIX),
        (EVENTS, PREFIX),
        ("shellyplus1pm-a8032ab12345/online", PREFIX),
        ("shellyplus1pm-a8032ab12345/rpc", PREFIX),
        ("shellies/shelly1pm-ab12cd/relay/0/power", GEN1),
        ("shellies/shelly1pm-ab12cd/online", GEN1),
    ] {
        assert_eq!(identity(topic), Some(shelly(id)), "{topic}");
    }
    for topic in [
        "tele/plug1/SENSOR",
        "tele/online",
        "cmnd/rpc",
        "stat/status/switch:0",
        "emon/online",
        "emon/node1",
        "emon/status/switch:0",
        "wattline/online",
        "one-minute/online",
        "ten-second/rpc",
        "esp1/data/kWh",
        "esp1/temps",
        "shellies/announce",
        "shellies/online",
        "home/shelly/status/switch:0",
        "home/shelly/online",
        "p/status/Switch:0",
        "p/status/switch:",
        "p/status/switch:x",
        "p/status/:0",
        "p/events/other",
        "p/status",
    ] {
        assert_eq!(identity(topic), None, "{topic}");
    }
    // Tasmota's shapes are tried first and take three-level tele/stat/cmnd topics.
    assert_eq!(
        MqttDecoder::classify("tele/plug1/online").map(|i| i.format),
        Some(Format::Tasmota)
    );
}

#[test]
fn invalid_ids_are_refused() {
    let mut dec = MqttDecoder::default();
    for topic in [
        "shelly plus/online",
        "/online",
        "shellies/bad id/relay/0/power",
        "shellies//relay/0/power",
    ] {
        let e = err(&mut dec, topic, b"true");
        assert_eq!(e.code, codes::BAD_ID, "{e}");
    }
    let long = format!("shellies/{GEN1}/relay/{}/power", "9".repeat(64));
    assert_eq!(err(&mut dec, &long, b"5").code, codes::BAD_ID);
}

#[test]
fn broken_payloads_are_refused_naming_topic_and_field() {
    let mut dec = MqttDecoder::default();
    one(&mut dec, STATUS, &fixture("gen2_status_switch0.json"));
    let gen1 = format!("shellies/{GEN1}/relay/0/power");
    let gen1_energy = format!("shellies/{GEN1}/relay/0/energy");
    let cases: Vec<(&str, Vec<u8>, &str, Option<&str>)> = vec![
        (
            STATUS,
            br#"{"id":0,"apower":1840.3,"voltage":22"#.to_vec(),
            codes::BAD_JSON,
            None,
        ),
        (STATUS, b"".to_vec(), codes::BAD_JSON, None),
        (STATUS, b"[]".to_vec(), codes::BAD_JSON, None),
        (
            STATUS,
            b"{\"apower\":\"\xff\"}".to_vec(),
            codes::BAD_TEXT,
            None,
        ),
        (
            STATUS,
            br#"{"apower":"abc"}"#.to_vec(),
            codes::BAD_NUMBER,
            Some("apower"),
        ),
        (
            STATUS,
            br#"{"apower":"12abc"}"#.to_vec(),
            codes::BAD_NUMBER,
            Some("apower"),
        ),
        (
            STATUS,
            br#"{"apower":[1840.3]}"#.to_vec(),
            codes::BAD_NUMBER,
            Some("apower"),
        ),
        (
            STATUS,
            br#"{"apower":1e12}"#.to_vec(),
            codes::OUT_OF_RANGE,
            Some("apower"),
        ),
        (
            STATUS,
            br#"{"pf":7}"#.to_vec(),
            codes::OUT_OF_RANGE,
            Some("pf"),
        ),
        (
            STATUS,
            br#"{"aenergy":5}"#.to_vec(),
            codes::BAD_JSON,
            Some("aenergy"),
        ),
        (
            STATUS,
            br#"{"aenergy":{"total":{"Wh":1}}}"#.to_vec(),
            codes::BAD_NUMBER,
            Some("aenergy.total"),
        ),
        (
            STATUS,
            br#"{"aenergy":{"total":-1}}"#.to_vec(),
            codes::OUT_OF_RANGE,
            Some("aenergy.total"),
        ),
        (
            EVENTS,
            b"{\"method\":\"NotifyStatus\",\"params\":{".to_vec(),
            codes::BAD_JSON,
            None,
        ),
        (
            EVENTS,
            br#"{"params":{"switch:0":{"apower":1}}}"#.to_vec(),
            codes::BAD_JSON,
            Some("method"),
        ),
        (
            EVENTS,
            br#"{"method":7}"#.to_vec(),
            codes::BAD_JSON,
            Some("method"),
        ),
        (
            EVENTS,
            br#"{"method":"NotifyStatus"}"#.to_vec(),
            codes::BAD_JSON,
            Some("params"),
        ),
        (
            EVENTS,
            br#"{"method":"NotifyStatus","params":[1]}"#.to_vec(),
            codes::BAD_JSON,
            Some("params"),
        ),
        (
            EVENTS,
            notify(r#"{"switch:0":5}"#),
            codes::BAD_JSON,
            Some("params.switch:0"),
        ),
        (
            EVENTS,
            notify(r#"{"switch:0":{"apower":"x"}}"#),
            codes::BAD_NUMBER,
            Some("params.switch:0.apower"),
        ),
        (
            EVENTS,
            notify(r#"{"switch:0":{"apower":5e9}}"#),
            codes::OUT_OF_RANGE,
            Some("params.switch:0.apower"),
        ),
        (
            EVENTS,
            notify(r#"{"switch:0":{"aenergy":{"total":[1]}}}"#),
            codes::BAD_NUMBER,
            Some("params.switch:0.aenergy.total"),
        ),
        // One bad component refuses the whole message, the good one included.
        (
            EVENTS,
            notify(r#"{"switch:0":{"apower":1,"voltage":1},"switch:1":{"pf":7}}"#),
            codes::OUT_OF_RANGE,
            Some("params.switch:1.pf"),
        ),
        (&gen1, b"abc".to_vec(), codes::BAD_NUMBER, Some("power")),
        (&gen1, b"12abc".to_vec(), codes::BAD_NUMBER, Some("power")),
        (&gen1, b"".to_vec(), codes::BAD_NUMBER, Some("power")),
        (&gen1, b"NaN".to_vec(), codes::BAD_NUMBER, Some("power")),
        (&gen1, b"\"5\"".to_vec(), codes::BAD_NUMBER, Some("power")),
        (&gen1, b"[5]".to_vec(), codes::BAD_NUMBER, Some("power")),
        (
            &gen1,
            b"{\"power\":5}".to_vec(),
            codes::BAD_NUMBER,
            Some("power"),
        ),
        (&gen1, b"1e12".to_vec(), codes::OUT_OF_RANGE, Some("power")),
        (&gen1, b"\xff\xfe".to_vec(), codes::BAD_TEXT, Some("power")),
        (
            &gen1_energy,
            b"-60".to_vec(),
            codes::OUT_OF_RANGE,
            Some("energy"),
        ),
    ];
    for (topic, payload, code, field) in cases {
        let e = err(&mut dec, topic, &payload);
        let shown = String::from_utf8_lossy(&payload);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (code, field),
            "{topic} {shown}: {e}"
        );
        // The memory is as the full status left it: the delta lands on it, unchanged.
        let r = one(&mut dec, EVENTS, &fixture("gen2_notify_status_delta.json"));
        assert_eq!(r.values.get(Q::Voltage), Some(229.8), "after {shown}");
        assert_eq!(r.values.get(Q::Power), Some(1835.9));
        assert_eq!(r.values.get(Q::PowerFactor), Some(0.99));
        assert_eq!(r.values.iter().count(), 7);
    }
    // switch:1 of the refused message was not remembered either.
    let r = one(&mut dec, EVENTS, &notify(r#"{"switch:1":{"current":2}}"#));
    assert_eq!(r.values.iter().count(), 1);
    let e = err(&mut dec, &gen1, b"12abc");
    assert!(e.message.contains("\"12abc\" is not a number"), "{e}");
}

fn json_number(v: f64) -> String {
    format!("{v}")
}

proptest! {
    #[test]
    fn generated_status_decodes_to_exactly_its_values(
        apower in -1e9f64..=1e9,
        voltage in 0.0f64..=1e6,
        total_wh in 0.0f64..=1e12,
        delta_apower in -1e9f64..=1e9,
    ) {
        let mut dec = MqttDecoder::default();
        let status = format!(
            r#"{{"id":0,"output":true,"apower":{},"voltage":{},"aenergy":{{"total":{},"by_minute":[1,2,3],"minute_ts":1795302060}}}}"#,
            json_number(apower), json_number(voltage), json_number(total_wh),
        );
        let r = one(&mut dec, STATUS, status.as_bytes());
        prop_assert_eq!(r.values.get(Q::Power), Some(apower));
        prop_assert_eq!(r.values.get(Q::Voltage), Some(voltage));
        prop_assert_eq!(r.values.get(Q::Energy), Some(total_wh / 1000.0));
        prop_assert_eq!(r.values.iter().count(), 3);
        let delta = notify(&format!(r#"{{"ts":1795302071.52,"switch:0":{{"apower":{}}}}}"#, json_number(delta_apower)));
        let r = one(&mut dec, EVENTS, &delta);
        prop_assert_eq!(r.ts, DELTA_TS);
        prop_assert_eq!(r.values.get(Q::Power), Some(delta_apower));
        prop_assert_eq!(r.values.get(Q::Voltage), Some(voltage));
        prop_assert_eq!(r.values.get(Q::Energy), Some(total_wh / 1000.0));
    }

    #[test]
    fn any_message_sequence_decodes_or_is_refused_never_panics(
        messages in proptest::collection::vec(
            (
                prop::sample::select(vec![
                    STATUS,
                    "p/status/em:0",
                    "p/status/emdata:0",
                    "p/status/em1:0",
                    EVENTS,
                    "p/events/rpc",
                    "p/online",
                    "shellies/s1/relay/0/power",
                    "shellies/s1/relay/0/energy",
                    "shellies/s1/emeter/1/total",
                ]),
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..48),
                    r#"\{"method":"Notify(Full)?Status","params":\{"ts":[0-9.e]{0,12},"(switch|em|emdata|em1):0":\{[\[\]{}"0-9a-z_.,:eE+ -]{0,50}"#
                        .prop_map(String::into_bytes),
                    r#"\{"(a_act_power|apower|voltage|aenergy|pf|total_act)":[\[\]{}"0-9a-z_.,:eE+ -]{0,30}\}"#
                        .prop_map(String::into_bytes),
                    "[0-9.eE+ -]{0,12}".prop_map(String::into_bytes),
                ],
            ),
            1..8,
        ),
    ) {
        let mut dec = MqttDecoder::default();
        for (topic, payload) in messages {
            match dec.decode(topic, &payload, NOW) {
                Ok(Decoded::Readings { readings, .. }) => {
                    prop_assert!(!readings.is_empty());
                    for r in readings {
                        prop_assert!(!r.values.is_empty());
                        prop_assert!(dec.limits.check(r.ts, &r.values, NOW).is_ok());
                    }
                }
                Ok(_) => {}
                Err(e) => prop_assert!(e.message.starts_with(topic), "{}", e),
            }
        }
    }
}
