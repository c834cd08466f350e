use super::*;
use crate::LineError;
use proptest::prelude::*;
use wattline_domain::Quantity as Q;

/// 2026-01-06T00:00:00Z, seven hours after the generator's first reading.
const NOW: TsMs = TsMs(1_767_657_600_000);
/// 2026-01-05T17:00:00Z, the generator's first reading.
const T0: i64 = 1_767_632_400_000;

fn parse_p(body: &str, p: Precision) -> LpOutcome {
    let out = parse_line_protocol(body.as_bytes(), p, NOW, &Limits::default());
    assert_eq!(out.lines, out.readings.len() + out.errors.len());
    out
}

fn parse(body: &str) -> LpOutcome {
    parse_p(body, Precision::Ns)
}

fn one(body: &str) -> Reading {
    let out = parse(body);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.readings.len(), 1, "{body}");
    out.readings.into_iter().next().unwrap()
}

fn err(body: &str) -> LineError {
    let out = parse(body);
    assert!(out.readings.is_empty(), "{body}: {:?}", out.readings);
    assert_eq!(out.errors.len(), 1, "{body}: {:?}", out.errors);
    out.errors.into_iter().next().unwrap()
}

fn code(body: &str) -> &'static str {
    err(body).code
}

fn dev(s: &str) -> DeviceId {
    DeviceId::parse(s).unwrap()
}

#[test]
fn generator_energy_lines_give_four_quantities() {
    let body = "energy,device=17 voltage=224.36,current=1.253,power=256.5,energy=27021.316546 1767632400000000000\n\
                energy,device=18 voltage=230.82,current=1.650,power=349.4,energy=17833910.933 1767632401000000000\n";
    let out = parse(body);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.lines, 2);
    let r = &out.readings[0];
    assert_eq!(r.device, dev("17"));
    assert_eq!(r.channel, ChannelName::default_channel());
    assert_eq!(r.ts, TsMs(T0));
    assert_eq!(r.values.iter().count(), 4);
    assert_eq!(r.values.get(Q::Voltage), Some(224.36));
    assert_eq!(r.values.get(Q::Current), Some(1.253));
    assert_eq!(r.values.get(Q::Power), Some(256.5));
    assert_eq!(r.values.get(Q::Energy), Some(27021.316546));
    assert_eq!(out.readings[1].ts, TsMs(T0 + 1000));
    assert_eq!(out.readings[1].device, dev("18"));
    assert!(out.unknown_fields.is_empty());
}

#[test]
fn generator_output_parses_when_python_is_there() {
    // ../shared beside the repository (WATTLINE_SHARED overrides); CI must have it.
    let shared = std::env::var("WATTLINE_SHARED")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared").to_string());
    let script = format!("{shared}/bench/gen_readings.py");
    if !std::path::Path::new(&script).exists() {
        assert!(std::env::var("CI").is_err(), "{script} is missing in CI");
        eprintln!("!!! SKIPPING generator test: {script} not found");
        return;
    }
    let script = script.as_str();
    let Ok(run) = std::process::Command::new("python3")
        .args([
            script,
            "--devices",
            "20",
            "--duration",
            "5s",
            "--format",
            "lp",
        ])
        .output()
    else {
        return;
    };
    if !run.status.success() {
        return;
    }
    let out = parse_line_protocol(&run.stdout, Precision::Ns, NOW, &Limits::default());
    assert_eq!(out.lines, 100);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert!(out.readings.iter().all(|r| r.values.iter().count() == 4));
}

#[test]
fn all_quantities_and_channel() {
    let r = one(
        "m,device=meter-1,channel=L1 voltage=230,current=2,power=-400,apparent_power=460,\
         reactive_power=-20,power_factor=0.87,frequency=50.01,energy=12,energy_export=3 1767632400000000000",
    );
    assert_eq!(r.channel.as_str(), "L1");
    assert_eq!(r.values.iter().count(), 9);
    assert_eq!(r.values.get(Q::Power), Some(-400.0));
    assert_eq!(r.values.get(Q::PowerFactor), Some(0.87));
    assert_eq!(r.values.get(Q::EnergyExport), Some(3.0));
}

#[test]
fn number_forms() {
    let cases: &[(&str, f64)] = &[
        ("1.5", 1.5),
        ("1e3", 1000.0),
        ("1E+3", 1000.0),
        ("2.5e-1", 0.25),
        ("-2", -2.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("-0.0", 0.0),
        ("12i", 12.0),
        ("-12i", -12.0),
        ("12u", 12.0),
        ("0.1", 0.1),
        ("123456789.123456789", 123_456_789.123_456_79),
        ("0.30000000000000004", 0.300_000_000_000_000_04),
        ("1e-7", 1e-7),
        ("4.9e-324", 4.9e-324),
    ];
    for (text, want) in cases {
        let r = one(&format!("m,device=d power={text}"));
        assert_eq!(r.values.get(Q::Power), Some(*want), "{text}");
    }
    let r = one("m,device=d energy=37140176170.030556");
    assert_eq!(r.values.get(Q::Energy), Some(37_140_176_170.030_556));
    // Beyond any limit, but still read exactly.
    let lex = |t: &str| lex_number(t.as_bytes(), 0).1.ok();
    assert_eq!(lex("9007199254740993"), Some(9_007_199_254_740_992.0));
    assert_eq!(
        lex("-9223372036854775808i"),
        Some(-9_223_372_036_854_775_808.0)
    );
    assert_eq!(
        lex("18446744073709551615u"),
        Some(18_446_744_073_709_551_615.0)
    );
    assert_eq!(lex("1.7976931348623157e308"), Some(f64::MAX));
}

#[test]
fn not_a_number_is_syntax_and_overflow_is_not_finite() {
    // InfluxDB has no NaN or infinity literal: these are malformed lines.
    for v in [
        "NaN", "nan", "inf", "-inf", "Infinity", "+1", "1.2.3", "1e", "1e+", "-", ".", "0x10",
        "1.5i", "-1u", "1_000",
    ] {
        let e = err(&format!("m,device=d power={v}"));
        assert_eq!(e.code, "syntax", "{v}: {e:?}");
        assert!(
            e.message.starts_with("line 1: field \"power\": "),
            "{}",
            e.message
        );
        assert_eq!(e.field.as_deref(), Some("power"));
    }
    // A well-formed float too large for f64 is infinite: refused as such.
    let e = err("m,device=d power=1e999");
    assert_eq!(e.code, "not_finite");
    assert_eq!(
        e.message,
        "line 1: field \"power\": 1e999 is not a finite number"
    );
    // Out-of-range integers.
    let e = err("m,device=d power=99999999999999999999i");
    assert_eq!(e.code, "syntax");
    assert!(e.message.contains("out of range"), "{}", e.message);
    let e = err("m,device=d power=18446744073709551616u");
    assert!(e.message.contains("out of range"), "{}", e.message);
}

#[test]
fn other_field_types_are_fine_when_unknown() {
    let r = one(
        r#"m,device=d power=1,state="on, \"really\" = yes \\",ok=true,bad=F,n=5i,u=7u,x=1.5 1767632400000000000"#,
    );
    assert_eq!(r.values.iter().count(), 1);
    let out = parse(r#"m,device=d power=1,state="a",ok=t,flag=FALSE,n=5i"#);
    let names: Vec<&str> = out.unknown_fields.iter().map(String::as_str).collect();
    assert_eq!(names, ["flag", "n", "ok", "state"]);
    for b in [
        "t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE",
    ] {
        one(&format!("m,device=d power=1,b={b}"));
    }
    assert_eq!(code("m,device=d power=1,b=yes"), "syntax");
    assert_eq!(code("m,device=d power=1,b=tRUE"), "syntax");
}

#[test]
fn known_field_with_string_or_bool_is_bad_field_type() {
    let e = err(r#"m,device=d voltage=230,power="512""#);
    assert_eq!(e.code, "bad_field_type");
    assert_eq!(e.field.as_deref(), Some("power"));
    assert_eq!(
        e.message,
        "line 1: field \"power\": expected a number, found a string"
    );
    let e = err("m,device=d power=true");
    assert_eq!(
        e.message,
        "line 1: field \"power\": expected a number, found a boolean"
    );
}

#[test]
fn escapes_in_names() {
    let out = parse(
        "my\\ meas\\,ure=ment,site=a\\ b\\,c\\=d,we\\ ird\\=key=v,device=d my\\ field\\,x\\=y=1,power=2,back\\\\slash=3,lit\\eral=4",
    );
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let names: Vec<&str> = out.unknown_fields.iter().map(String::as_str).collect();
    assert_eq!(names, ["back\\slash", "lit\\eral", "my field,x=y"]);
    // Escaped names that unescape to a quantity or tag name are still those names? No: an
    // escape is needed only for `, = \` and space, which no quantity or tag name contains.
    let out = parse("m,device=d pow\\er=1");
    assert_eq!(out.errors[0].code, "no_values");
    // A backslash at the very end of a tag value.
    assert_eq!(code("m,device=d\\"), "syntax");
}

#[test]
fn device_and_channel_tags() {
    assert_eq!(one("m,device_id=meter-7 power=1").device, dev("meter-7"));
    assert_eq!(
        one("m,host=x,device=a,device_id=a power=1").device,
        dev("a")
    );
    let e = err("m,device=a,device_id=b power=1");
    assert_eq!(e.code, "bad_id");
    assert_eq!(
        e.message,
        "line 1: tags \"device\" and \"device_id\" disagree (\"a\" and \"b\")"
    );
    assert_eq!(code("m,channel=L1,device=a,channel=L2 power=1"), "bad_id");
    let e = err("m,device=a\\ b power=1");
    assert_eq!(e.code, "bad_id");
    assert_eq!(e.field.as_deref(), Some("device"));
    assert!(
        e.message
            .starts_with("line 1: tag \"device\": device id may contain only"),
        "{}",
        e.message
    );
    let e = err("m,device=a,channel=L/1 power=1");
    assert_eq!(e.code, "bad_id");
    assert_eq!(e.field.as_deref(), Some("channel"));
    assert!(e.message.contains("'/'"), "{}", e.message);
    let e = err(&format!("m,device={} power=1", "x".repeat(65)));
    assert_eq!(e.code, "bad_id");
    // Tags may come in any order; other tags are ignored.
    let r = one("m,channel=L3,zone=eu,device=a power=1");
    assert_eq!((r.device.as_str(), r.channel.as_str()), ("a", "L3"));
}

#[test]
fn missing_device() {
    let e = err("m power=1");
    assert_eq!(e.code, "missing_device");
    assert_eq!(e.message, "line 1: missing tag \"device\"");
    let out = parse("# header\n\nm,device=a power=1\n\nm,host=x,Device=b power=1\n");
    assert_eq!(out.errors[0].message, "line 5: missing tag \"device\"");
    assert_eq!(out.errors[0].line, 5);
}

#[test]
fn no_values() {
    let e = err("m,device=a volts=230,watts=5");
    assert_eq!(e.code, "no_values");
    assert_eq!(e.field, None);
    assert!(
        e.message
            .starts_with("line 1: no quantity field (ignored field \"volts\")"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("voltage, current, power"),
        "{}",
        e.message
    );
    let out = parse("m,device=a volts=230,watts=5");
    assert_eq!(out.unknown_fields.len(), 2);
}

#[test]
fn out_of_range_names_line_field_and_range() {
    let out = parse("m,device=a power=1\n# c\nm,device=a power_factor=1.2\n");
    assert_eq!(out.readings.len(), 1);
    let e = &out.errors[0];
    assert_eq!(e.code, "out_of_range");
    assert_eq!(e.line, 3);
    assert_eq!(e.field.as_deref(), Some("power_factor"));
    assert_eq!(
        e.message,
        "line 3: field \"power_factor\": 1.2 is outside -1..=1"
    );
    let e = err("m,device=a voltage=-1");
    assert_eq!(
        e.message,
        "line 1: field \"voltage\": -1 is outside 0..=1000000 V"
    );
    // The first bad field is reported.
    let e = err("m,device=a frequency=0,power=2e9");
    assert_eq!(e.field.as_deref(), Some("frequency"));
}

#[test]
fn timestamps() {
    let e = err("m,device=a power=1 0");
    assert_eq!(e.code, "timestamp_too_old");
    assert_eq!(
        e.message,
        "line 1: timestamp 0 (1970-01-01T00:00:00Z) is before 2000-01-01T00:00:00Z"
    );
    let ahead = (NOW.0 + TsMs::DAY + 1) * 1_000_000;
    let e = err(&format!("m,device=a power=1 {ahead}"));
    assert_eq!(e.code, "timestamp_in_future");
    assert!(
        e.message
            .contains("is more than 24 h ahead of the server clock"),
        "{}",
        e.message
    );
    for bad in [
        "12a",
        "1.5",
        "abc",
        "1767632400000000000x",
        "-",
        "1e9",
        "1767632400000000000,5",
    ] {
        let e = err(&format!("m,device=a power=1 {bad}"));
        assert_eq!(e.code, "bad_timestamp", "{bad}");
        assert!(
            e.message.starts_with("line 1: invalid timestamp"),
            "{}",
            e.message
        );
        assert!(e.message.contains(bad), "{}", e.message);
    }
    let e = err("m,device=a power=1 99999999999999999999");
    assert_eq!(e.code, "bad_timestamp");
    assert!(e.message.contains("out of range"), "{}", e.message);
    let e = err("m,device=a power=1 1767632400000000000 extra");
    assert_eq!(e.code, "syntax");
    // Missing timestamp: now.
    assert_eq!(one("m,device=a power=1").ts, NOW);
    assert_eq!(one("m,device=a power=1   ").ts, NOW);
}

#[test]
fn precisions() {
    let at = |line: &str, p: Precision| {
        let out = parse_p(line, p);
        assert!(out.errors.is_empty(), "{line} {p:?}: {:?}", out.errors);
        out.readings[0].ts
    };
    assert_eq!(
        at("m,device=a power=1 1767632400123456789", Precision::Ns),
        TsMs(T0 + 123)
    );
    assert_eq!(
        at("m,device=a power=1 1767632400123456", Precision::Us),
        TsMs(T0 + 123)
    );
    assert_eq!(
        at("m,device=a power=1 1767632400123", Precision::Ms),
        TsMs(T0 + 123)
    );
    assert_eq!(at("m,device=a power=1 1767632400", Precision::S), TsMs(T0));
    // Sub-millisecond parts go toward negative infinity.
    assert_eq!(Precision::Ns.to_ms(-1), Some(-1));
    assert_eq!(Precision::Ns.to_ms(999_999), Some(0));
    assert_eq!(Precision::Us.to_ms(-1_001), Some(-2));
    assert_eq!(Precision::S.to_ms(i64::MAX), None);
    let e = parse_p("m,device=a power=1 9223372036854775807", Precision::S).errors;
    assert_eq!(e[0].code, "bad_timestamp");
    assert!(e[0].message.contains("at precision s"), "{}", e[0].message);
    // An unusable timestamp is a syntax-level problem: reported before the missing device.
    let e = parse_p("m power=1 9223372036854775807", Precision::S).errors;
    assert_eq!(e[0].code, "bad_timestamp");

    for (s, p) in [
        ("ns", Precision::Ns),
        ("n", Precision::Ns),
        ("us", Precision::Us),
        ("u", Precision::Us),
        ("µs", Precision::Us),
        ("μs", Precision::Us),
        ("ms", Precision::Ms),
        ("s", Precision::S),
    ] {
        assert_eq!(Precision::parse(s), Some(p), "{s}");
    }
    for s in ["", "m", "h", "NS", "sec"] {
        assert_eq!(Precision::parse(s), None, "{s}");
    }
    assert_eq!(Precision::default(), Precision::Ns);
    for p in [Precision::Ns, Precision::Us, Precision::Ms, Precision::S] {
        assert_eq!(Precision::parse(p.as_str()), Some(p));
    }
}

#[test]
fn comments_blank_lines_crlf_and_whitespace() {
    let body = "# a comment\r\n\r\n   \n\t# indented comment\n  m,device=a power=1  1767632400000000000  \r\n\
                m,device=b   power=2\t1767632400000000000\r\n\
                m,device=c power=3 1767632400000000000\t\n\
                m,device=d power=4";
    let out = parse(body);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.lines, 4);
    let devs: Vec<&str> = out.readings.iter().map(|r| r.device.as_str()).collect();
    assert_eq!(devs, ["a", "b", "c", "d"]);
    assert_eq!(out.readings[3].ts, NOW);
    assert_eq!(parse("").lines, 0);
    assert_eq!(parse("\n\n# only comments\n").lines, 0);
}

#[test]
fn syntax_errors_name_what_is_wrong() {
    let cases: &[(&str, &str)] = &[
        (",device=a power=1", "line 1: missing measurement"),
        (" ,device=a power=1", "line 1: missing measurement"),
        (
            "m,device=a",
            "line 1: missing fields after the measurement and tags",
        ),
        (
            "m,device=a ",
            "line 1: missing fields after the measurement and tags",
        ),
        ("m,=a power=1", "line 1: empty tag key"),
        ("m, power=1", "line 1: empty tag key"),
        ("m,device power=1", "line 1: tag \"device\" has no value"),
        (
            "m,device= power=1",
            "line 1: tag \"device\" has an empty value",
        ),
        (
            "m,device=a,x= power=1",
            "line 1: tag \"x\" has an empty value",
        ),
        ("m,device=a power", "line 1: field \"power\" has no value"),
        ("m,device=a power=", "line 1: field \"power\" has no value"),
        (
            "m,device=a power=,voltage=1",
            "line 1: field \"power\" has no value",
        ),
        ("m,device=a power=1,", "line 1: empty field key"),
        ("m,device=a =1", "line 1: empty field key"),
        (
            "m,device=a x=\"abc",
            "line 1: unterminated string field \"x\"",
        ),
        (
            "m,device=a x=\"ab\\\"",
            "line 1: unterminated string field \"x\"",
        ),
        (
            "m,device=a x=\"a\"b",
            "line 1: field \"x\": unexpected 'b' after the value",
        ),
        (
            "m,device=a power=1.2.3",
            "line 1: field \"power\": \"1.2.3\" is not a valid number",
        ),
        (
            "m,device=a power=abc",
            "line 1: field \"power\": invalid value \"abc\"",
        ),
    ];
    for (line, msg) in cases {
        let e = err(line);
        assert_eq!(e.code, "syntax", "{line}");
        assert_eq!(e.message, *msg, "{line}");
    }
    let out = parse("m,device=a power=1\nm,device=a x=\"open\nm,device=a power=2");
    assert_eq!(out.readings.len(), 2);
    let e = &out.errors[0];
    assert_eq!(e.message, "line 2: unterminated string field \"x\"");
    assert_eq!(e.field.as_deref(), Some("x"));
}

#[test]
fn syntax_comes_before_device_and_values() {
    assert_eq!(code("m power=-1 abc"), "bad_timestamp");
    assert_eq!(code("m power=-1,x=\"a"), "syntax");
    assert_eq!(code("m power=-1"), "missing_device");
    assert_eq!(code("m,device=a/b power=-1"), "bad_id");
    assert_eq!(code("m,device=a power=-1e99 1"), "out_of_range");
    assert_eq!(code("m,device=a x=1 1"), "no_values");
}

#[test]
fn a_batch_is_decoded_in_part() {
    let body = "m,device=a power=1 1767632400000000000\n\
                m,device=b power=oops 1767632400000000000\n\
                m,device=c power=3,volts=2 1767632400000000000\n\
                m power=4\n\
                m,device=e power_factor=-0.5,pf=1\n";
    let out = parse(body);
    assert_eq!(out.lines, 5);
    let devs: Vec<&str> = out.readings.iter().map(|r| r.device.as_str()).collect();
    assert_eq!(devs, ["a", "c", "e"]);
    let lines: Vec<(usize, &str)> = out.errors.iter().map(|e| (e.line, e.code)).collect();
    assert_eq!(lines, [(2, "syntax"), (4, "missing_device")]);
    let names: Vec<&str> = out.unknown_fields.iter().map(String::as_str).collect();
    assert_eq!(names, ["pf", "volts"]);
}

#[test]
fn repeated_field_last_wins() {
    assert_eq!(
        one("m,device=a power=1,power=2").values.get(Q::Power),
        Some(2.0)
    );
}

#[test]
fn ids_are_reused_across_runs_and_switches() {
    let body = "m,device=a power=1\nm,device=a power=2\nm,device=a power=3\nm,device=b,channel=L1 power=4\n\
                m,device=b,channel=L1 power=5\nm,device=a,channel=L2 power=6\nm,device=a\\ x power=7\nm,device=a power=8";
    let out = parse(body);
    let got: Vec<(&str, &str)> = out
        .readings
        .iter()
        .map(|r| (r.device.as_str(), r.channel.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("a", "main"),
            ("a", "main"),
            ("a", "main"),
            ("b", "L1"),
            ("b", "L1"),
            ("a", "L2"),
            ("a", "main")
        ]
    );
    assert_eq!(out.errors[0].line, 7);
}

#[test]
fn newline_search_finds_every_position() {
    for len in 0..40 {
        for at in 0..len {
            let mut b = vec![b'x'; len];
            b[at] = b'\n';
            assert_eq!(find_newline(&b), Some(at), "{len} {at}");
        }
        assert_eq!(find_newline(&vec![0x8a; len]), None);
    }
}

#[test]
fn eight_digits_swar() {
    assert_eq!(eight_digits(b"00000000"), Some(0));
    assert_eq!(eight_digits(b"12345678"), Some(12_345_678));
    assert_eq!(eight_digits(b"99999999"), Some(99_999_999));
    for bad in [
        b"1234567a",
        b"/2345678",
        b"12345:78",
        b"1234 678",
        b"\xb0\x31\x31\x31\x31\x31\x31\x31",
    ] {
        assert_eq!(eight_digits(bad), None, "{bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Properties.

fn esc_name(s: &str, equals: bool) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | ' ' | '\\') || (equals && c == '=') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

fn esc_string(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

const ID_RE: &str = "[A-Za-z0-9._:-]{1,64}";

/// Names with everything that needs escaping, but no line breaks; a measurement must not start
/// with `#` (that line would be a comment).
fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_ ,=\\\\\"'#.é-]{1,12}"
}

fn value_for(q: Q) -> impl Strategy<Value = (f64, bool)> {
    let (min, max) = Limits::default().range(q);
    prop_oneof![
        (min..=max).prop_map(|v| (v, false)),
        // Integral values written as `12i`.
        ((min.max(-1e15) as i64)..=(max.min(1e15) as i64)).prop_map(|v| (v as f64, true)),
        Just((min, false)),
        Just((max, false)),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    device: String,
    channel: Option<String>,
    device_key: &'static str,
    extra_tags: Vec<(String, String)>,
    measurement: String,
    values: Vec<(Q, f64, bool)>,
    unknown: Vec<(String, String)>,
    ts_ms: Option<i64>,
    sub_ms: i64,
    precision: Precision,
    spaces: usize,
    crlf: bool,
}

fn case() -> impl Strategy<Value = Case> {
    let quantities =
        proptest::sample::subsequence(Q::ALL.to_vec(), 1..=Q::COUNT).prop_flat_map(|qs| {
            qs.into_iter()
                .map(|q| value_for(q).prop_map(move |(v, i)| (q, v, i)))
                .collect::<Vec<_>>()
        });
    let extra = proptest::collection::vec((name(), name()), 0..3).prop_map(|tags| {
        tags.into_iter()
            .filter(|(k, _)| !matches!(k.as_str(), "device" | "device_id" | "channel"))
            .collect::<Vec<_>>()
    });
    let unknown =
        proptest::collection::vec((name(), "[ -~é\"\\\\]{0,10}"), 0..3).prop_map(|fields| {
            fields
                .into_iter()
                .filter(|(k, _)| Q::from_field(k).is_none())
                .collect::<Vec<_>>()
        });
    let precision = prop_oneof![
        Just(Precision::Ns),
        Just(Precision::Us),
        Just(Precision::Ms),
        Just(Precision::S)
    ];
    (
        (
            ID_RE,
            proptest::option::of(ID_RE),
            prop_oneof![Just("device"), Just("device_id")],
            extra,
            name().prop_filter("no comment", |m| !m.starts_with('#')),
        ),
        quantities,
        unknown,
        (
            proptest::option::of(946_684_800_000i64..=NOW.0 + TsMs::DAY),
            0i64..1_000_000,
        ),
        (precision, 1usize..3, any::<bool>()),
    )
        .prop_map(
            |(
                (device, channel, device_key, extra_tags, measurement),
                values,
                unknown,
                (ts_ms, sub_ms),
                (precision, spaces, crlf),
            )| Case {
                device,
                channel,
                device_key,
                extra_tags,
                measurement,
                values,
                unknown,
                ts_ms,
                sub_ms,
                precision,
                spaces,
                crlf,
            },
        )
}

impl Case {
    fn line(&self) -> String {
        let mut l = esc_name(&self.measurement, false);
        let mut tags: Vec<(String, String)> = self.extra_tags.clone();
        tags.push((self.device_key.to_owned(), self.device.clone()));
        if let Some(c) = &self.channel {
            tags.push(("channel".to_owned(), c.clone()));
        }
        let k = self.spaces % tags.len();
        tags.rotate_left(k);
        for (k, v) in &tags {
            l.push(',');
            l.push_str(&esc_name(k, true));
            l.push('=');
            l.push_str(&esc_name(v, true));
        }
        l.push_str(&" ".repeat(self.spaces));
        let mut fields: Vec<String> = self
            .values
            .iter()
            .map(|(q, v, int)| {
                if *int {
                    format!("{}={}i", q.field(), *v as i64)
                } else {
                    format!("{}={v:?}", q.field())
                }
            })
            .collect();
        for (k, v) in &self.unknown {
            fields.insert(
                fields.len() / 2,
                format!("{}=\"{}\"", esc_name(k, true), esc_string(v)),
            );
        }
        l.push_str(&fields.join(","));
        if let Some(ms) = self.ts_ms {
            let t = match self.precision {
                Precision::Ns => format!("{}", ms as i128 * 1_000_000 + i128::from(self.sub_ms)),
                Precision::Us => format!("{}", ms as i128 * 1_000 + i128::from(self.sub_ms % 1000)),
                Precision::Ms => format!("{ms}"),
                Precision::S => format!("{}", ms.div_euclid(1000)),
            };
            l.push(' ');
            l.push_str(&t);
        }
        if self.crlf {
            l.push_str(" \r");
        }
        l
    }

    fn expected(&self) -> Reading {
        let mut values = Values::new();
        for (q, v, _) in &self.values {
            values.set(*q, *v);
        }
        let ts = match (self.ts_ms, self.precision) {
            (None, _) => NOW,
            (Some(ms), Precision::S) => TsMs(ms.div_euclid(1000) * 1000),
            (Some(ms), _) => TsMs(ms),
        };
        Reading {
            device: dev(&self.device),
            channel: match &self.channel {
                Some(c) => ChannelName::parse(c.as_str()).unwrap(),
                None => ChannelName::default_channel(),
            },
            ts,
            values,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn formatted_readings_parse_back(cases in proptest::collection::vec(case(), 1..6)) {
        for precision in [Precision::Ns, Precision::Us, Precision::Ms, Precision::S] {
            let these: Vec<&Case> = cases.iter().filter(|c| c.precision == precision).collect();
            let mut body = String::from("# generated\n");
            for c in &these {
                body.push_str(&c.line());
                body.push('\n');
            }
            let out = parse_line_protocol(body.as_bytes(), precision, NOW, &Limits::default());
            prop_assert!(out.errors.is_empty(), "{body}\n{:?}", out.errors);
            let want: Vec<Reading> = these.iter().map(|c| c.expected()).collect();
            prop_assert_eq!(&out.readings, &want, "{}", body);
            let unknown: BTreeSet<String> = these.iter().flat_map(|c| c.unknown.iter().map(|(k, _)| k.clone())).collect();
            prop_assert_eq!(out.unknown_fields, unknown);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let out = parse_line_protocol(&body, Precision::Ns, NOW, &Limits::default());
        prop_assert_eq!(out.lines, out.readings.len() + out.errors.len());
        for e in &out.errors {
            let prefix = format!("line {}: ", e.line);
            prop_assert!(e.message.starts_with(&prefix));
        }
    }

    #[test]
    fn line_protocol_like_text_never_panics(
        body in "[a-z_,= \"\\\\0-9.eEiu+#\\-\r\n\t]{0,300}",
        p in 0usize..4,
    ) {
        let precision = [Precision::Ns, Precision::Us, Precision::Ms, Precision::S][p];
        let body = format!("m,device=a {body}");
        let out = parse_line_protocol(body.as_bytes(), precision, NOW, &Limits::default());
        prop_assert_eq!(out.lines, out.readings.len() + out.errors.len());
    }

    #[test]
    fn numbers_match_rusts_parser(text in "-?[0-9]{0,20}(\\.[0-9]{0,20})?([eE][+-]?[0-9]{1,3})?") {
        let b = text.as_bytes();
        let (end, got) = lex_number(b, 0);
        match text.parse::<f64>() {
            Ok(want) if !text.is_empty() && text != "-" => {
                prop_assert_eq!(end, b.len());
                let got = got.ok().unwrap();
                prop_assert!(got == want || (got.is_nan() && want.is_nan()), "{} {} {}", text, got, want);
                prop_assert_eq!(got.is_sign_negative(), want.is_sign_negative());
            }
            _ => prop_assert!(got.is_err() || end < b.len(), "{}", text),
        }
    }

    #[test]
    fn timestamps_match_rusts_parser(t in any::<i64>(), lead in 0usize..3) {
        let text = format!("{}{}", "0".repeat(lead), t.unsigned_abs());
        let text = if t < 0 { format!("-{text}") } else { text };
        let (end, got) = lex_i64(text.as_bytes(), 0);
        prop_assert_eq!(end, text.len());
        prop_assert_eq!(got.ok(), Some(t));
    }
}

#[test]
fn count_lines_counts_newlines_and_an_unterminated_last_line() {
    assert_eq!(count_lines(b""), 0);
    assert_eq!(count_lines(b"\n"), 1);
    assert_eq!(count_lines(b"a"), 1);
    assert_eq!(count_lines(b"a\nb"), 2);
    assert_eq!(count_lines(b"a\nb\n"), 2);
    // Bytes that differ from '\n' only in the high bit, or border it, are not newlines.
    assert_eq!(count_lines(b"\x8a\x0b\x09\x8a\x0a\xff\x00\x0a\x0a"), 3);
    assert_eq!(count_lines(&[b'\n'; 17]), 17);
}

#[test]
fn readings_capacity_bounds_the_readings_but_not_by_blank_lines() {
    let shortest = b"m,device=a power=1";
    assert_eq!(shortest.len(), MIN_READING_LINE);
    let one = parse_line_protocol(shortest, Precision::S, NOW, &Limits::default());
    assert_eq!(one.readings.len(), 1, "{:?}", one.errors);
    let body = [&shortest[..]; 1000].join(&b'\n');
    let out = parse_line_protocol(&body, Precision::S, NOW, &Limits::default());
    assert_eq!(out.readings.len(), 1000);
    assert!(readings_capacity(&body) >= 1000);
    assert!(readings_capacity(&vec![b'\n'; 1 << 20]) <= (1 << 20) / MIN_READING_LINE + 1);
    assert_eq!(readings_capacity(b""), 0);
}

proptest! {
    #[test]
    fn count_lines_agrees_with_a_byte_count(body in proptest::collection::vec(
        prop_oneof![Just(b'\n'), Just(0x8a_u8), Just(0u8), any::<u8>()], 0..100)) {
        let newlines = body.iter().filter(|&&b| b == b'\n').count();
        let want = newlines + usize::from(body.last().is_some_and(|&b| b != b'\n'));
        prop_assert_eq!(count_lines(&body), want);
    }

    #[test]
    fn parsing_into_a_shared_outcome_equals_parsing_alone(lines in proptest::collection::vec(
        prop_oneof![
            Just("m,device=a power=1 1"),
            Just("m,device=b voltage=230.5,energy=12.25 2"),
            Just("bad line"),
            Just(""),
            Just("# comment"),
        ], 0..20)) {
        let body = lines.join("\n");
        let limits = Limits::default();
        let alone = parse_line_protocol(body.as_bytes(), Precision::S, NOW, &limits);
        let mut shared = LpOutcome::default();
        shared.readings.reserve_exact(readings_capacity(body.as_bytes()));
        parse_line_protocol_into(body.as_bytes(), Precision::S, NOW, &limits, &mut shared);
        prop_assert_eq!(&alone.readings, &shared.readings);
        prop_assert_eq!(alone.errors.len(), shared.errors.len());
        prop_assert_eq!(alone.lines, shared.lines);
        prop_assert!(alone.readings.len() <= readings_capacity(body.as_bytes()));
    }
}
