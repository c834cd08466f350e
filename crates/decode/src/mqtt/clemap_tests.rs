use super::*;
use crate::mqtt::MqttDecoder;
use proptest::prelude::*;
use serde_json::Value;
use wattline_domain::Quantity as Q;

/// 2026-01-06T00:00:00Z.
const NOW: TsMs = TsMs(1_767_657_600_000);
const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/seed-clemap/"
);
const MINUTE_TOPIC: &str = "one-minute/SE05000160";
const TEN_TOPIC: &str = "ten-second/SE05000160";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{DIR}{name}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn decoded_json() -> serde_json::Map<String, Value> {
    serde_json::from_slice(&fixture("decoded.json")).expect("decoded.json is a JSON object")
}

/// A message's fields as the device writes them (values in thousandths).
#[derive(Debug, Clone)]
struct Msg {
    secs: f64,
    sensor: [u8; 12],
    phase: u8,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    /// `p_l1 p_l2 p_l3`, `q_l1 q_l2 q_l3`.
    Ten { p: [i64; 3], q: [i64; 3] },
    /// Per phase `v i s p q pf phi`, then `avg_energy_l1..l3`.
    Minute {
        phases: [[i32; 7]; 3],
        avg: [i64; 3],
    },
}

/// The test's own encoder, written from the layout table in the module docs.
fn encode(m: &Msg) -> Vec<u8> {
    let mut out = vec![match m.body {
        Body::Ten { .. } => 16,
        Body::Minute { .. } => 17,
    }];
    out.extend(m.secs.to_le_bytes());
    out.extend(m.sensor);
    out.push(m.phase);
    match &m.body {
        Body::Ten { p, q } => {
            for v in p.iter().chain(q) {
                out.extend(v.to_le_bytes());
            }
        }
        Body::Minute { phases, avg } => {
            for v in phases.iter().flatten() {
                out.extend(v.to_le_bytes());
            }
            for v in avg {
                out.extend(v.to_le_bytes());
            }
        }
    }
    out
}

/// The fixture's values as messages of both types.
fn fixture_msgs() -> (Msg, Msg) {
    let j = decoded_json();
    let milli = |k: &str| {
        let v = j[k].as_f64().unwrap_or_else(|| panic!("decoded.json: {k}"));
        (v * 1000.0).round() as i64
    };
    let phase_of = |l: usize| -> [i32; 7] {
        ["v", "i", "s", "p", "q", "pf", "phi"].map(|f| milli(&format!("{f}_l{l}")) as i32)
    };
    let sensor_hex = j["sensor_id"]
        .as_str()
        .unwrap()
        .trim_start_matches("ObjectId(\"")
        .trim_end_matches("\")");
    let mut sensor = [0u8; 12];
    for (i, b) in sensor.iter_mut().enumerate() {
        *b = u8::from_str_radix(&sensor_hex[2 * i..2 * i + 2], 16).unwrap();
    }
    let secs = j["timestamp"].as_f64().unwrap();
    let phase = j["phase"].as_u64().unwrap() as u8;
    let ten = Msg {
        secs,
        sensor,
        phase,
        body: Body::Ten {
            p: [1, 2, 3].map(|l| milli(&format!("p_l{l}"))),
            q: [1, 2, 3].map(|l| milli(&format!("q_l{l}"))),
        },
    };
    let minute = Msg {
        body: Body::Minute {
            phases: [phase_of(1), phase_of(2), phase_of(3)],
            avg: [1, 2, 3].map(|l| milli(&format!("avg_energy_l{l}"))),
        },
        ..ten.clone()
    };
    (ten, minute)
}

fn readings(topic: &str, payload: &[u8]) -> Vec<ChannelReading> {
    match MqttDecoder::default().decode(topic, payload, NOW) {
        Ok(Decoded::Readings {
            identity,
            readings,
            rejected,
        }) => {
            assert_eq!(identity, TopicIdentity::new(Format::Clemap, "SE05000160"));
            assert!(rejected.is_empty());
            readings
        }
        other => panic!("{topic}: {other:?}"),
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
fn the_layout_matches_the_fixture_bytes() {
    let (ten, minute) = fixture_msgs();
    let ten_bin = fixture("type16_ten_second.bin");
    let minute_bin = fixture("type17_one_minute.bin");
    assert_eq!(ten_bin.len(), TEN_SECOND_LEN);
    assert_eq!(minute_bin.len(), ONE_MINUTE_LEN);
    assert_eq!(
        u64::from(minute_bin[0]),
        decoded_json()["feature_type"].as_u64().unwrap()
    );
    // Every byte, `phi`, `avg_energy`, sensor id and phase included, is where the table says.
    assert_eq!(encode(&ten), ten_bin);
    assert_eq!(encode(&minute), minute_bin);
}

#[test]
fn fixtures_decode_to_decoded_json() {
    let j = decoded_json();
    let num = |k: String| {
        j[&k]
            .as_f64()
            .unwrap_or_else(|| panic!("decoded.json: {k}"))
    };
    let ts = TsMs(j["timestamp"].as_i64().unwrap() * 1000);
    assert_eq!(ts, TsMs(1_670_492_819_000));

    let minute = readings(MINUTE_TOPIC, &fixture("type17_one_minute.bin"));
    let ten = readings(TEN_TOPIC, &fixture("type16_ten_second.bin"));
    assert_eq!(minute.len(), 3);
    assert_eq!(ten.len(), 3);
    for (l, (m, t)) in (1..=3).zip(minute.iter().zip(&ten)) {
        let channel = format!("L{l}");
        assert_eq!((m.channel.as_str(), m.ts), (channel.as_str(), ts));
        assert_eq!((t.channel.as_str(), t.ts), (channel.as_str(), ts));
        let expected = Values::new()
            .with(Q::Voltage, num(format!("v_l{l}")))
            .with(Q::Current, num(format!("i_l{l}")))
            .with(Q::ApparentPower, num(format!("s_l{l}")))
            .with(Q::Power, num(format!("p_l{l}")))
            .with(Q::ReactivePower, num(format!("q_l{l}")))
            .with(Q::PowerFactor, num(format!("pf_l{l}")));
        assert_eq!(m.values, expected, "{channel}");
        let expected = Values::new()
            .with(Q::Power, num(format!("p_l{l}")))
            .with(Q::ReactivePower, num(format!("q_l{l}")));
        assert_eq!(t.values, expected, "{channel}");
    }
    // Spot checks against the README and decoded.json as written.
    assert_eq!(minute[0].values.get(Q::Voltage), Some(235.491));
    assert_eq!(minute[1].values.get(Q::PowerFactor), Some(0.535));
    assert_eq!(ten[2].values.get(Q::ReactivePower), Some(-98.382));
    for rs in [&minute, &ten] {
        let total: f64 = rs.iter().filter_map(|r| r.values.get(Q::Power)).sum();
        assert!((total - 567.318).abs() < 1e-9, "{total}");
    }
}

/// The finding the module docs state: `avg_energy` is the Wh of the one-minute interval.
#[test]
fn avg_energy_is_the_minutes_energy_in_wh() {
    let j = decoded_json();
    let bin = fixture("type17_one_minute.bin");
    for l in 1..=3 {
        let at = 106 + 8 * (l - 1);
        let raw = i64::from_le_bytes(bin[at..at + 8].try_into().unwrap());
        let avg = raw as f64 / 1000.0;
        assert_eq!(avg, j[&format!("avg_energy_l{l}")].as_f64().unwrap());
        let p = j[&format!("p_l{l}")].as_f64().unwrap();
        let minute_wh = p / 60.0;
        assert!(
            (avg - minute_wh).abs() < 0.005,
            "L{l}: {avg} vs {minute_wh}"
        );
    }
}

#[test]
fn wrong_lengths() {
    let minute = fixture("type17_one_minute.bin");
    let ten = fixture("type16_ten_second.bin");
    for topic in [MINUTE_TOPIC, TEN_TOPIC] {
        let e = refused(topic, b"");
        assert_eq!((e.code, e.field.as_deref()), ("bad_length", None));
        assert_eq!(
            e.message,
            format!("{topic}: empty payload: expected a Clemap message")
        );
    }
    for (topic, bin) in [(MINUTE_TOPIC, &minute), (TEN_TOPIC, &ten)] {
        for len in [1, 8, 9, 21, 22, 23, bin.len() - 1] {
            let e = refused(topic, &bin[..len]);
            assert_eq!(e.code, "bad_length", "{topic} {len}");
        }
        let mut long = bin.clone();
        long.push(0);
        let e = refused(topic, &long);
        assert_eq!(e.code, "bad_length");
    }
    // Each type's length is its own: the other type's is wrong.
    assert_eq!(refused(MINUTE_TOPIC, &minute[..70]).code, "bad_length");
    let mut padded = ten.clone();
    padded.resize(130, 0);
    assert_eq!(refused(TEN_TOPIC, &padded).code, "bad_length");
    let mut long = minute.clone();
    long.push(0);
    assert_eq!(
        refused(MINUTE_TOPIC, &long).message,
        "one-minute/SE05000160: type 17 (one-minute) is 130 bytes long, this one is 131"
    );
    assert_eq!(
        refused(TEN_TOPIC, &ten[..69]).message,
        "ten-second/SE05000160: type 16 (ten-second) is 70 bytes long, this one is 69"
    );
}

#[test]
fn wrong_types() {
    let minute = fixture("type17_one_minute.bin");
    for ty in [0u8, 1, 15, 18, 255, b'{'] {
        let mut bin = minute.clone();
        bin[0] = ty;
        let e = refused(MINUTE_TOPIC, &bin);
        assert_eq!((e.code, e.field.as_deref()), ("bad_type", None), "{ty}");
        assert_eq!(
            e.message,
            format!(
                "{MINUTE_TOPIC}: first byte {ty} is no Clemap layout (16: ten-second, 17: one-minute)"
            )
        );
    }
    let e = refused(MINUTE_TOPIC, &fixture("type16_ten_second.bin"));
    assert_eq!(e.code, "bad_type");
    assert_eq!(
        e.message,
        "one-minute/SE05000160: type 16 (ten-second layout) on a one-minute topic"
    );
    let e = refused(TEN_TOPIC, &minute);
    assert_eq!(
        e.message,
        "ten-second/SE05000160: type 17 (one-minute layout) on a ten-second topic"
    );
    // JSON or text on a Clemap topic is a wrong type, not a crash.
    assert_eq!(refused(TEN_TOPIC, b"{\"p\":1}").code, "bad_type");
}

#[test]
fn bad_timestamps() {
    let (ten, minute) = fixture_msgs();
    for secs in [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e300,
        -1e300,
        0.0,
        -1.0,
        // 2000-01-01 minus a second, and a day and a second ahead of NOW.
        946_684_799.0,
        (NOW.0 / 1000 + 86_401) as f64,
    ] {
        for (topic, m) in [(TEN_TOPIC, &ten), (MINUTE_TOPIC, &minute)] {
            let e = refused(topic, &encode(&Msg { secs, ..m.clone() }));
            assert_eq!(
                (e.code, e.field.as_deref()),
                ("bad_timestamp", Some("timestamp")),
                "{secs}"
            );
            assert!(
                e.message
                    .starts_with(&format!("{topic}: field \"timestamp\": {secs:?}")),
                "{e}"
            );
        }
    }
    let e = refused(
        TEN_TOPIC,
        &encode(&Msg {
            secs: f64::NAN,
            ..ten.clone()
        }),
    );
    assert_eq!(
        e.message,
        "ten-second/SE05000160: field \"timestamp\": NaN is not a unix time in seconds"
    );
    // The edges the limits allow; a fraction of a second is kept to the millisecond.
    for (secs, ms) in [
        (946_684_800.0, 946_684_800_000),
        ((NOW.0 / 1000 + 86_400) as f64, NOW.0 + 86_400_000),
        (1_670_492_819.25, 1_670_492_819_250),
    ] {
        let r = readings(
            TEN_TOPIC,
            &encode(&Msg {
                secs,
                ..ten.clone()
            }),
        );
        assert_eq!(r[0].ts, TsMs(ms));
    }
}

#[test]
fn implausible_values_are_out_of_range() {
    let (ten, minute) = fixture_msgs();
    let Body::Minute { phases, avg } = minute.body.clone() else {
        unreachable!()
    };
    for (l, i, raw, field) in [
        (0, 0, 2_000_000_000, "v_l1"),
        (0, 0, -1, "v_l1"),
        (2, 1, -200_000_000, "i_l3"),
        (1, 2, -1, "s_l2"),
        (1, 5, 1_500, "pf_l2"),
        (2, 5, -1_001, "pf_l3"),
    ] {
        let mut phases = phases;
        phases[l][i] = raw;
        let m = Msg {
            body: Body::Minute { phases, avg },
            ..minute.clone()
        };
        let e = refused(MINUTE_TOPIC, &encode(&m));
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("out_of_range", Some(field)),
            "{raw}"
        );
    }
    let mut phases = phases;
    phases[0][0] = 2_000_000_000;
    let m = Msg {
        body: Body::Minute { phases, avg },
        ..minute.clone()
    };
    assert_eq!(
        refused(MINUTE_TOPIC, &encode(&m)).message,
        "one-minute/SE05000160: field \"v_l1\": voltage = 2000000 is outside what a meter can \
         report (0 ..= 1000000 V)"
    );
    for (p, q, field) in [
        ([0, 2_000_000_000_000, 0], [0; 3], "p_l2"),
        ([0; 3], [0, 0, i64::MIN], "q_l3"),
        ([-1_000_000_000_001, 0, 0], [0; 3], "p_l1"),
    ] {
        let m = Msg {
            body: Body::Ten { p, q },
            ..ten.clone()
        };
        let e = refused(TEN_TOPIC, &encode(&m));
        assert_eq!((e.code, e.field.as_deref()), ("out_of_range", Some(field)));
    }
    // `phi` and `avg_energy` are not stored, so any value of theirs is fine.
    let mut phases = [[0; 7]; 3];
    phases[0][6] = i32::MIN;
    let m = Msg {
        body: Body::Minute {
            phases,
            avg: [i64::MIN, -1, i64::MAX],
        },
        ..minute.clone()
    };
    assert_eq!(readings(MINUTE_TOPIC, &encode(&m)).len(), 3);
}

#[test]
fn keeps_working_after_bad_messages() {
    let mut d = MqttDecoder::default();
    let minute = fixture("type17_one_minute.bin");
    for bad in [&b""[..], b"\x11", &minute[..100], b"\xff\xfe"] {
        assert!(d.decode(MINUTE_TOPIC, bad, NOW).is_err());
    }
    let out = d.decode(MINUTE_TOPIC, &minute, NOW).unwrap();
    assert!(
        matches!(out, Decoded::Readings { ref readings, .. } if readings.len() == 3),
        "{out:?}"
    );
}

#[test]
fn identities() {
    assert_eq!(
        identity("one-minute/SE05000160"),
        Some(TopicIdentity::new(Format::Clemap, "SE05000160"))
    );
    assert_eq!(
        MqttDecoder::classify("ten-second/SE05000160"),
        Some(TopicIdentity::new(Format::Clemap, "SE05000160"))
    );
    for t in [
        "one-minute",
        "one-minute/",
        "one-minute/a/b",
        "one-minute/a b",
        "five-minute/SE1",
        "One-Minute/SE1",
        "x/one-minute/SE1",
    ] {
        assert_eq!(identity(t), None, "{t}");
    }
}

fn in_range_msg() -> impl Strategy<Value = Msg> {
    let secs = (946_684_800_000i64..=NOW.0).prop_map(|ms| ms as f64 / 1000.0);
    let ten = (
        prop::array::uniform3(-1_000_000_000_000i64..=1_000_000_000_000),
        prop::array::uniform3(-1_000_000_000_000i64..=1_000_000_000_000),
    )
        .prop_map(|(p, q)| Body::Ten { p, q });
    let phase = (
        0..=1_000_000_000i32,
        -100_000_000..=100_000_000i32,
        0..=i32::MAX,
        any::<i32>(),
        any::<i32>(),
        -1000..=1000i32,
        any::<i32>(),
    )
        .prop_map(|(v, i, s, p, q, pf, phi)| [v, i, s, p, q, pf, phi]);
    let minute = (prop::array::uniform3(phase), any::<[i64; 3]>())
        .prop_map(|(phases, avg)| Body::Minute { phases, avg });
    (
        secs,
        any::<[u8; 12]>(),
        any::<u8>(),
        prop_oneof![ten, minute],
    )
        .prop_map(|(secs, sensor, phase, body)| Msg {
            secs,
            sensor,
            phase,
            body,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encoded_messages_decode_back(m in in_range_msg()) {
        let topic = match m.body { Body::Ten { .. } => TEN_TOPIC, Body::Minute { .. } => MINUTE_TOPIC };
        let r = readings(topic, &encode(&m));
        prop_assert_eq!(r.len(), 3);
        let ms = (m.secs * 1000.0).round() as i64;
        for (l, reading) in r.iter().enumerate() {
            prop_assert_eq!(reading.channel.as_str(), PHASES[l]);
            prop_assert_eq!(reading.ts, TsMs(ms));
            let expected = match &m.body {
                Body::Ten { p, q } => Values::new()
                    .with(Q::Power, p[l] as f64 / 1000.0)
                    .with(Q::ReactivePower, q[l] as f64 / 1000.0),
                Body::Minute { phases, .. } => {
                    let [v, i, s, p, q, pf, _] = phases[l].map(|x| f64::from(x) / 1000.0);
                    Values::new()
                        .with(Q::Voltage, v)
                        .with(Q::Current, i)
                        .with(Q::ApparentPower, s)
                        .with(Q::Power, p)
                        .with(Q::ReactivePower, q)
                        .with(Q::PowerFactor, pf)
                }
            };
            prop_assert_eq!(reading.values, expected);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        topic in prop::sample::select(vec![TEN_TOPIC, MINUTE_TOPIC]),
        ty in prop::sample::select(vec![16u8, 17, 0, 255]),
        rest in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..140),
            proptest::collection::vec(any::<u8>(), 69..=69),
            proptest::collection::vec(any::<u8>(), 129..=129),
        ],
    ) {
        let mut payload = vec![ty];
        payload.extend(rest);
        if let Ok(Decoded::Readings { readings, .. }) = MqttDecoder::default().decode(topic, &payload, NOW) {
            prop_assert_eq!(readings.len(), 3);
            for r in readings {
                prop_assert!(!r.values.is_empty());
                prop_assert!(r.values.iter().all(|(_, v)| v.is_finite()));
            }
        }
    }
}
