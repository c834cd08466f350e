use super::*;
use crate::mqtt::MqttDecoder;
use proptest::prelude::*;
use wattline_domain::Quantity as Q;

/// 2026-01-06T00:00:00Z.
const NOW: TsMs = TsMs(1_767_657_600_000);

const README: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/seed-esp32/README.md"
);

/// The README's table: (topic, payload) per row, in its order.
fn readme_cycle() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(README).unwrap_or_else(|e| panic!("{README}: {e}"));
    let rows: Vec<(String, String)> = text
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('`').collect();
            (cells[1].to_owned(), cells[3].to_owned())
        })
        .collect();
    assert_eq!(rows.len(), 4, "{README} changed: {rows:?}");
    rows
}

const P: &str = "Smart_Energie";

fn topic(leaf: &str) -> String {
    format!("{P}/{leaf}")
}

fn at(ms: i64) -> TsMs {
    TsMs(NOW.0 + ms)
}

fn send(d: &mut MqttDecoder, leaf: &str, payload: &str, ms: i64) -> Result<Decoded, AdapterError> {
    d.decode(&topic(leaf), payload.as_bytes(), at(ms))
}

/// Sends a message that must be taken and emit nothing.
fn quiet(d: &mut MqttDecoder, leaf: &str, payload: &str, ms: i64) {
    assert_eq!(
        send(d, leaf, payload, ms),
        Ok(Decoded::Nothing {
            identity: Some(TopicIdentity::new(Format::Esp32, P))
        }),
        "{leaf} {payload}"
    );
}

/// Sends a message that must emit one reading; returns its stamp and values.
fn emits(d: &mut MqttDecoder, leaf: &str, payload: &str, ms: i64) -> (TsMs, Values) {
    match send(d, leaf, payload, ms) {
        Ok(Decoded::Readings {
            identity,
            readings,
            rejected,
        }) => {
            assert_eq!(identity, TopicIdentity::new(Format::Esp32, P));
            assert!(rejected.is_empty());
            assert_eq!(readings.len(), 1);
            assert_eq!(readings[0].channel.as_str(), "main");
            (readings[0].ts, readings[0].values)
        }
        other => panic!("{leaf} {payload}: {other:?}"),
    }
}

fn refused(d: &mut MqttDecoder, leaf: &str, payload: &[u8]) -> AdapterError {
    let t = topic(leaf);
    match d.decode(&t, payload, NOW) {
        Err(e) => {
            assert_eq!(e.topic, t);
            assert!(e.message.starts_with(&format!("{t}: ")), "{e}");
            e
        }
        Ok(out) => panic!("{t} {payload:?}: {out:?}"),
    }
}

fn full(energy: f64, current: f64, voltage: f64) -> Values {
    Values::new()
        .with(Q::Energy, energy)
        .with(Q::Current, current)
        .with(Q::Voltage, voltage)
}

#[test]
fn readme_cycle_is_one_reading() {
    let rows = readme_cycle();
    let mut d = MqttDecoder::default();
    let mut out = Vec::new();
    for (i, (t, payload)) in rows.iter().enumerate() {
        assert_eq!(
            MqttDecoder::classify(t),
            Some(TopicIdentity::new(Format::Esp32, P)),
            "{t}"
        );
        out.push(d.decode(t, payload.as_bytes(), at(100 * i as i64)).unwrap());
    }
    let nothing = Decoded::Nothing {
        identity: Some(TopicIdentity::new(Format::Esp32, P)),
    };
    assert_eq!(out[..3], [nothing.clone(), nothing.clone(), nothing]);
    // Stamped at the cycle's first value (kWh, the second row), not at `temps`.
    assert_eq!(
        out[3],
        Decoded::Readings {
            identity: TopicIdentity::new(Format::Esp32, P),
            readings: vec![ChannelReading {
                channel: ChannelName::default_channel(),
                ts: at(100),
                values: full(0.06436, 0.0, 8.37),
            }],
            rejected: vec![],
        }
    );
}

#[test]
fn any_order_completes_a_cycle() {
    let mut d = MqttDecoder::default();
    quiet(&mut d, "data/Voltage", "230.5V", 0);
    quiet(&mut d, "data/Current", "1.25A", 10);
    assert_eq!(
        emits(&mut d, "data/kWh", "12.5kWh", 20),
        (at(0), full(12.5, 1.25, 230.5))
    );
    // The next cycle starts afresh.
    quiet(&mut d, "data/kWh", "12.6kWh", 5000);
    quiet(&mut d, "data/Voltage", "230.1V", 5010);
    assert_eq!(
        emits(&mut d, "data/Current", "1.5A", 5020),
        (at(5000), full(12.6, 1.5, 230.1))
    );
}

#[test]
fn a_lost_message_costs_only_its_value() {
    let mut d = MqttDecoder::default();
    quiet(&mut d, "data/kWh", "1kWh", 0);
    quiet(&mut d, "data/Current", "2A", 10);
    // Voltage lost; the next cycle's kWh closes the partial one.
    let partial = Values::new().with(Q::Energy, 1.0).with(Q::Current, 2.0);
    assert_eq!(emits(&mut d, "data/kWh", "1.1kWh", 5000), (at(0), partial));
    quiet(&mut d, "data/Current", "2.1A", 5010);
    assert_eq!(
        emits(&mut d, "data/Voltage", "230V", 5020),
        (at(5000), full(1.1, 2.1, 230.0))
    );
}

#[test]
fn a_stale_cycle_is_emitted_as_is() {
    let mut d = MqttDecoder::default();
    quiet(&mut d, "data/kWh", "1kWh", 0);
    // 30 s is still the same cycle.
    quiet(&mut d, "data/Current", "2A", 30_000);
    let partial = Values::new().with(Q::Energy, 1.0).with(Q::Current, 2.0);
    assert_eq!(
        emits(&mut d, "data/Voltage", "230V", 30_001),
        (at(0), partial)
    );
    // The voltage started the next cycle.
    quiet(&mut d, "data/kWh", "1kWh", 30_010);
    assert_eq!(
        emits(&mut d, "data/Current", "3A", 30_020),
        (at(30_001), full(1.0, 3.0, 230.0))
    );
    // `temps` flushes a stale cycle too.
    quiet(&mut d, "data/kWh", "2kWh", 100_000);
    assert_eq!(
        emits(&mut d, "temps", "0 Days, 00:31:38", 130_001),
        (at(100_000), Values::new().with(Q::Energy, 2.0))
    );
}

#[test]
fn a_reboot_ends_the_cycle() {
    let mut d = MqttDecoder::default();
    quiet(&mut d, "temps", "0 Days, 00:31:38", 0);
    quiet(&mut d, "data/kWh", "5kWh", 10);
    // Uptime going up is the normal case.
    quiet(&mut d, "temps", "0 Days, 00:31:43", 20);
    assert_eq!(
        emits(&mut d, "temps", "0 Days, 00:00:04", 30),
        (at(10), Values::new().with(Q::Energy, 5.0))
    );
    // Nothing pending: a reboot alone emits nothing.
    quiet(&mut d, "temps", "0 Days, 00:00:01", 40);
    quiet(&mut d, "temps", "1 Day, 00:00:00", 50);
}

#[test]
fn devices_are_kept_apart_and_forgotten() {
    let mut d = MqttDecoder::default();
    quiet(&mut d, "data/kWh", "1kWh", 0);
    quiet(&mut d, "data/Current", "1A", 0);
    assert_eq!(
        d.decode("Other/data/kWh", b"9kWh", at(5)).unwrap(),
        Decoded::Nothing {
            identity: Some(TopicIdentity::new(Format::Esp32, "Other"))
        }
    );
    d.forget(&TopicIdentity::new(Format::Esp32, "Other"));
    assert_eq!(
        emits(&mut d, "data/Voltage", "1V", 10),
        (at(0), full(1.0, 1.0, 1.0))
    );
    quiet(&mut d, "data/kWh", "1kWh", 20);
    d.forget(&TopicIdentity::new(Format::Esp32, P));
    // The forgotten kWh neither completes this cycle nor is flushed by the next kWh.
    quiet(&mut d, "data/Current", "1A", 30);
    quiet(&mut d, "data/Voltage", "1V", 40);
    assert_eq!(
        emits(&mut d, "data/kWh", "2kWh", 50),
        (at(30), full(2.0, 1.0, 1.0))
    );
}

#[test]
fn units_are_parsed_strictly() {
    let mut d = MqttDecoder::default();
    for (leaf, payload) in [
        ("data/Voltage", "12abcV"),
        ("data/Voltage", "V"),
        ("data/Voltage", "1.2A"),
        ("data/Voltage", "8.37"),
        ("data/Voltage", "8.37VV"),
        ("data/Voltage", "8.37 mV"),
        ("data/Voltage", "NaNV"),
        ("data/Voltage", "infV"),
        ("data/Voltage", "+8V"),
        ("data/Voltage", "8,37V"),
        ("data/Voltage", ""),
        ("data/Current", "0.00"),
        ("data/Current", "0.00kWh"),
        ("data/kWh", "0.06436Wh"),
        ("data/kWh", "0.06436k Wh"),
        ("data/kWh", "kWh0.06436"),
    ] {
        let e = refused(&mut d, leaf, payload.as_bytes());
        let field = leaf.rsplit('/').next().unwrap();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("bad_number", Some(field)),
            "{leaf} {payload}"
        );
        let unit = match field {
            "Voltage" => "V",
            "Current" => "A",
            _ => "kWh",
        };
        assert_eq!(
            e.message,
            format!(
                "{P}/{leaf}: field {field:?}: {payload:?} is not a number followed by {unit:?}"
            )
        );
    }
    // Case of the unit, whitespace around and between, and exponents are fine.
    let mut d = MqttDecoder::default();
    quiet(&mut d, "data/Voltage", " 8.37 v\r\n", 0);
    quiet(&mut d, "data/Current", "-1.5e-1\tA", 0);
    assert_eq!(
        emits(&mut d, "data/kWh", "0.06436KWH", 0),
        (at(0), full(0.06436, -0.15, 8.37))
    );
}

#[test]
fn implausible_values_are_out_of_range() {
    let mut d = MqttDecoder::default();
    for (leaf, payload) in [
        ("data/Voltage", "1e9V"),
        ("data/Voltage", "-1V"),
        ("data/Current", "1e6A"),
        ("data/kWh", "-0.5kWh"),
        ("data/kWh", "1e999kWh"),
    ] {
        let e = refused(&mut d, leaf, payload.as_bytes());
        let field = leaf.rsplit('/').next().unwrap();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("out_of_range", Some(field)),
            "{payload}"
        );
    }
    let e = refused(&mut d, "data/Voltage", b"1e9V");
    assert_eq!(
        e.message,
        "Smart_Energie/data/Voltage: field \"Voltage\": voltage = 1000000000 is outside what a \
         meter can report (0 ..= 1000000 V)"
    );
}

#[test]
fn malformed_uptime_and_text() {
    let mut d = MqttDecoder::default();
    for payload in [
        "",
        "abc",
        "0 Days 00:31:38",
        "0 Days, 24:00:00",
        "0 Days, 00:60:00",
        "0 Days, 00:00:60",
        "0 Days, 0:31:38",
        "0 Days, 00:31:38:00",
        "0 Days, 00:31",
        "0Days, 00:31:38",
        "-1 Days, 00:31:38",
        "0 Weeks, 00:31:38",
        "1234567890 Days, 00:00:00",
        "0 Days, 00:3a:38",
    ] {
        let e = refused(&mut d, "temps", payload.as_bytes());
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("bad_number", Some("temps")),
            "{payload}"
        );
        assert_eq!(
            e.message,
            format!(
                "{P}/temps: field \"temps\": {payload:?} is not an uptime like \"0 Days, 00:31:38\""
            )
        );
    }
    for leaf in ["temps", "data/Voltage"] {
        let e = refused(&mut d, leaf, b"8.37\xffV");
        assert_eq!(e.code, "bad_text");
        assert!(e.message.contains("payload is not UTF-8"), "{e}");
    }
    assert_eq!(parse_uptime("0 Days, 00:31:38"), Some(1898));
    assert_eq!(parse_uptime("2 days,23:59:59"), Some(2 * 86_400 + 86_399));
    assert_eq!(parse_uptime("1 DAY, 00:00:01"), Some(86_401));
}

#[test]
fn bad_messages_leave_the_cycle_alone() {
    let mut d = MqttDecoder::default();
    quiet(&mut d, "temps", "0 Days, 01:00:00", 0);
    quiet(&mut d, "data/kWh", "3kWh", 10);
    for (leaf, payload) in [
        ("data/kWh", &b"x"[..]),
        ("data/kWh", b"-1kWh"),
        ("data/Current", b"1V"),
        ("data/Voltage", b"\xff"),
        ("data/Voltage", b"1e9V"),
        // Would read as a reboot if it were taken.
        ("temps", b"0 Days, 00:00:99"),
    ] {
        refused(&mut d, leaf, payload);
    }
    quiet(&mut d, "data/Current", "4A", 20);
    assert_eq!(
        emits(&mut d, "data/Voltage", "230V", 30),
        (at(10), full(3.0, 4.0, 230.0))
    );
}

#[test]
fn identities() {
    for t in [
        "Smart_Energie/temps",
        "Smart_Energie/data/kWh",
        "Smart_Energie/data/Current",
        "Smart_Energie/data/Voltage",
    ] {
        assert_eq!(
            identity(t),
            Some(TopicIdentity::new(Format::Esp32, "Smart_Energie")),
            "{t}"
        );
    }
    for t in [
        "/temps",
        "temps",
        "a/b/temps",
        "a b/temps",
        "a/data/kwh",
        "a/data/voltage",
        "a/data/Power",
        "a/b/data/kWh",
        "a/data/kWh/x",
        "a/data/",
        "a/Temps",
    ] {
        assert_eq!(identity(t), None, "{t}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn values_with_units_parse_back(
        v in any::<f64>().prop_filter("finite", |v| v.is_finite()),
        unit in prop::sample::select(vec!["kWh", "A", "V"]),
        sep in prop::sample::select(vec!["", " ", "\t"]),
        upper in any::<bool>(),
        exp in any::<bool>(),
    ) {
        let number = if exp { format!("{v:e}") } else { format!("{v}") };
        let unit_text = if upper { unit.to_ascii_uppercase() } else { unit.to_owned() };
        let text = format!("{number}{sep}{unit_text}");
        prop_assert_eq!(parse_with_unit(&text, unit), Some(v), "{}", text);
        // Any other unit is refused.
        for other in ["kWh", "A", "V"] {
            if other != unit {
                prop_assert_eq!(parse_with_unit(&text, other), None, "{}", text);
            }
        }
    }

    #[test]
    fn uptimes_parse_back(days in 0u64..1_000_000, h in 0u64..24, m in 0u64..60, s in 0u64..60) {
        let text = format!("{days} Days, {h:02}:{m:02}:{s:02}");
        prop_assert_eq!(parse_uptime(&text), Some(days * 86_400 + h * 3600 + m * 60 + s));
    }

    /// Any sequence of messages: no panic, every reading has values, all finite, stamped at
    /// or before the message that emitted it.
    #[test]
    fn arbitrary_messages_never_panic(
        msgs in proptest::collection::vec(
            (
                prop::sample::select(vec!["temps", "data/kWh", "data/Current", "data/Voltage"]),
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..24),
                    "-?[0-9]{1,4}(\\.[0-9]{1,3})? ?(kWh|A|V|x)".prop_map(String::into_bytes),
                    "[0-9]{1,2} Days, [0-2][0-9]:[0-6][0-9]:[0-6][0-9]".prop_map(String::into_bytes),
                ],
                0i64..40_000,
            ),
            0..40,
        ),
    ) {
        let mut d = MqttDecoder::default();
        let mut t = NOW.0;
        for (leaf, payload, step) in msgs {
            t += step;
            if let Ok(Decoded::Readings { readings, .. }) = d.decode(&topic(leaf), &payload, TsMs(t)) {
                prop_assert_eq!(readings.len(), 1);
                prop_assert!(!readings[0].values.is_empty());
                prop_assert!(readings[0].values.iter().all(|(_, v)| v.is_finite()));
                prop_assert!(readings[0].ts.0 <= t);
            }
        }
    }
}
