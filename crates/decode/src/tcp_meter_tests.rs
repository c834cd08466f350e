use super::*;
use proptest::prelude::*;

fn frames(chunks: &[&[u8]]) -> Vec<Frame> {
    let mut f = Framer::default();
    let mut out = Vec::new();
    for c in chunks {
        f.push(c, &mut out);
    }
    out
}

fn objects(out: &[Frame]) -> Vec<String> {
    out.iter()
        .map(|f| match f {
            Ok(b) => String::from_utf8(b.clone()).unwrap(),
            Err(e) => format!("ERR {}", e.code),
        })
        .collect()
}

const A: &str =
    r#"{"id": "1", "consumption": 1.0, "datetime": "2026-11-22 07:01:16", "type": "/spent"}"#;
const B: &str =
    r#"{"id": "1", "consumption": 2.0, "datetime": "2026-11-22 07:01:17", "type": "/spent"}"#;

#[test]
fn objects_back_to_back_split_and_newline_delimited() {
    // Two in one packet, no separator.
    let both = format!("{A}{B}");
    assert_eq!(objects(&frames(&[both.as_bytes()])), vec![A, B]);
    // One split across packets, at every position.
    for cut in 0..A.len() {
        let (x, y) = A.as_bytes().split_at(cut);
        assert_eq!(objects(&frames(&[x, y])), vec![A], "cut at {cut}");
    }
    // Newline-delimited, CRLF and blanks between.
    let nd = format!("{A}\n{B}\r\n\n  \t{A}\n");
    assert_eq!(objects(&frames(&[nd.as_bytes()])), vec![A, B, A]);
}

#[test]
fn braces_and_quotes_inside_strings_do_not_frame() {
    let tricky = r#"{"a": "}{\"}", "b": {"c": "\\"}, "d": "\u007d"}"#;
    let s = format!("{tricky}{A}");
    assert_eq!(objects(&frames(&[s.as_bytes()])), vec![tricky, A]);
}

#[test]
fn garbage_between_objects_is_one_error_and_the_stream_resynchronises() {
    let s = format!("hello{A} ]]] {B}");
    assert_eq!(
        objects(&frames(&[s.as_bytes()])),
        vec!["ERR garbage", A, "ERR garbage", B]
    );
    // Garbage with nothing after it is answered at once: the meter waits for a reply.
    assert_eq!(objects(&frames(&[b"PING"])), vec!["ERR garbage"]);
    let out = frames(&[b"x".repeat(100).as_slice()]);
    let msg = &out[0].as_ref().unwrap_err().message;
    assert!(msg.starts_with("100 bytes"), "{msg}");
}

#[test]
fn an_unterminated_string_is_dropped_at_the_next_line() {
    let s = format!("{{\"id\": \"1}}\n{A}\n");
    assert_eq!(objects(&frames(&[s.as_bytes()])), vec!["ERR bad_json", A]);
    // The tail after a refused object gets no second answer.
    let s = format!("{{\"id\": \"1\n, \"x\": 2}} trailing {B}");
    assert_eq!(objects(&frames(&[s.as_bytes()])), vec!["ERR bad_json", B]);
}

#[test]
fn oversized_objects_are_refused_without_buffering_and_skipped() {
    let mut f = Framer::new(64);
    let mut out = Vec::new();
    let big = format!(
        "{{\"pad\": \"{}\", \"n\": {{\"x\": 1}}}}",
        "y".repeat(10_000)
    );
    for chunk in big.as_bytes().chunks(7) {
        f.push(chunk, &mut out);
        assert!(f.buffered() <= 65);
    }
    assert_eq!(objects(&out), vec!["ERR too_large".to_owned()]);
    // The next object is judged on its own: A is longer than 64 bytes as well, a short one
    // goes through.
    f.push(A.as_bytes(), &mut out);
    assert_eq!(objects(&out), vec!["ERR too_large", "ERR too_large"]);
    out.clear();
    f.push(br#"{"id": 0}"#, &mut out);
    assert_eq!(objects(&out), vec![r#"{"id": 0}"#]);
    // Exactly at the limit is fine, one byte over is not.
    let mut f = Framer::new(9);
    let mut out = Vec::new();
    f.push(br#"{"id": 0}{"id": 10}"#, &mut out);
    assert_eq!(objects(&out), vec![r#"{"id": 0}"#, "ERR too_large"]);
}

#[test]
fn abandon_reports_an_open_object_once() {
    let mut f = Framer::default();
    let mut out = Vec::new();
    f.push(br#"{"id": "1", "consumption": {"#, &mut out);
    assert!(out.is_empty() && f.in_object());
    assert_eq!(f.abandon().unwrap().code, codes::INCOMPLETE);
    assert!(!f.in_object());
    assert_eq!(f.abandon(), None);
    f.push(A.as_bytes(), &mut out);
    assert_eq!(objects(&out), vec![A]);
}

fn limits() -> Limits {
    Limits::default()
}

fn zurich() -> TimeZone {
    TimeZone::get("Europe/Zurich").unwrap()
}

fn ts(s: &str) -> TsMs {
    TsMs::parse_api(s).unwrap()
}

#[test]
fn handshake_and_readings() {
    assert_eq!(
        parse_message(br#"{"id": 0}"#, &limits()),
        Ok(Message::Hello)
    );
    assert_eq!(
        parse_message(br#"{"id":"0"}"#, &limits()),
        Ok(Message::Hello)
    );
    let m = parse_message(A.as_bytes(), &limits()).unwrap();
    let Message::Reading(r) = m else {
        panic!("{m:?}")
    };
    assert_eq!(r.meter, MeterId(1));
    assert_eq!(r.consumption, 1.0);
    let now = ts("2026-11-22T12:00:00Z");
    let (t, v) = r.resolve(&zurich(), None, &limits(), now).unwrap();
    // 07:01:16 in Zurich in November is UTC+1.
    assert_eq!(t, ts("2026-11-22T06:01:16Z"));
    assert_eq!(v.get(Quantity::Energy), Some(1.0));
    // Number ids, `T` separators, fractions, offsets, and no datetime at all.
    let m = parse_message(
        br#"{"id": 12, "consumption": 3, "datetime": "2026-11-22T07:01:16.250"}"#,
        &limits(),
    )
    .unwrap();
    let Message::Reading(r) = m else { panic!() };
    assert_eq!(r.meter, MeterId(12));
    assert_eq!(
        r.resolve(&zurich(), None, &limits(), now).unwrap().0,
        ts("2026-11-22T06:01:16.250Z")
    );
    let m = parse_message(
        br#"{"id": "3", "consumption": 3, "datetime": "2026-11-22T07:01:16-05:00", "extra": [1]}"#,
        &limits(),
    )
    .unwrap();
    let Message::Reading(r) = m else { panic!() };
    assert_eq!(
        r.resolve(&zurich(), None, &limits(), now).unwrap().0,
        ts("2026-11-22T12:01:16Z")
    );
    let Message::Reading(r) =
        parse_message(br#"{"id": "3", "consumption": 3}"#, &limits()).unwrap()
    else {
        panic!()
    };
    assert_eq!(r.resolve(&zurich(), None, &limits(), now).unwrap().0, now);
}

#[test]
fn refusals_name_the_field_and_keep_the_id() {
    let code = |s: &str| parse_message(s.as_bytes(), &limits()).unwrap_err();
    for (msg, want) in [
        (r#"{"id": "1", "consumption": 1.0,}"#, codes::BAD_JSON),
        (r#"{}"#, codes::BAD_ID),
        (r#"{"consumption": 1}"#, codes::BAD_ID),
        (r#"{"id": "01", "consumption": 1}"#, codes::BAD_ID),
        (r#"{"id": "-1", "consumption": 1}"#, codes::BAD_ID),
        (r#"{"id": 1.5, "consumption": 1}"#, codes::BAD_ID),
        (r#"{"id": -3, "consumption": 1}"#, codes::BAD_ID),
        (r#"{"id": "", "consumption": 1}"#, codes::BAD_ID),
        (
            r#"{"id": "99999999999999999999", "consumption": 1}"#,
            codes::BAD_ID,
        ),
        (r#"{"id": 0, "consumption": 1}"#, codes::BAD_ID),
        (r#"{"id": "1"}"#, codes::NO_VALUES),
        (r#"{"id": "1", "consumption": null}"#, codes::NO_VALUES),
        (r#"{"id": "1", "consumption": "12"}"#, codes::BAD_FIELD_TYPE),
        (r#"{"id": "1", "consumption": -1}"#, codes::OUT_OF_RANGE),
        (r#"{"id": "1", "consumption": 1e999}"#, codes::BAD_JSON),
        (
            r#"{"id": "1", "consumption": 1, "datetime": "yesterday"}"#,
            codes::BAD_TIMESTAMP,
        ),
        (
            r#"{"id": "1", "consumption": 1, "datetime": "2026-11-22"}"#,
            codes::BAD_TIMESTAMP,
        ),
        (
            r#"{"id": "1", "consumption": 1, "datetime": 1767}"#,
            codes::BAD_TIMESTAMP,
        ),
        (
            r#"{"id": "1", "consumption": 1, "type": "/produced"}"#,
            codes::UNSUPPORTED_TYPE,
        ),
    ] {
        assert_eq!(code(msg).code, want, "{msg}");
    }
    let e = code(r#"{"id": "7", "consumption": "x"}"#);
    assert_eq!(e.id.as_deref(), Some("7"));
    assert!(e.message.contains("consumption"), "{e}");
    assert_eq!(
        parse_message(b"[1]", &limits()).unwrap_err().code,
        codes::BAD_JSON
    );
    // Times outside the limits are refused when placed.
    let now = ts("2026-11-22T12:00:00Z");
    for (dt, want) in [
        ("1970-01-01 00:00:00", codes::TIMESTAMP_TOO_OLD),
        ("2026-11-24 12:00:00", codes::TIMESTAMP_IN_FUTURE),
    ] {
        let m = format!(r#"{{"id": "5", "consumption": 1, "datetime": "{dt}"}}"#);
        let Message::Reading(r) = parse_message(m.as_bytes(), &limits()).unwrap() else {
            panic!()
        };
        let e = r.resolve(&zurich(), None, &limits(), now).unwrap_err();
        assert_eq!((e.code, e.id.as_deref()), (want, Some("5")), "{e}");
    }
}

#[test]
fn dst_gap_takes_the_offset_before_it() {
    let tz = zurich();
    // 2026-03-29: 02:00 CET jumps to 03:00 CEST.
    let dt: DateTime = "2026-03-29 02:30:00".parse().unwrap();
    assert_eq!(
        local_to_instant(dt, &tz, None),
        Some(ts("2026-03-29T01:30:00Z"))
    );
    let before: DateTime = "2026-03-29 01:59:59".parse().unwrap();
    let after: DateTime = "2026-03-29 03:00:00".parse().unwrap();
    assert_eq!(
        local_to_instant(before, &tz, None),
        Some(ts("2026-03-29T00:59:59Z"))
    );
    assert_eq!(
        local_to_instant(after, &tz, None),
        Some(ts("2026-03-29T01:00:00Z"))
    );
}

#[test]
fn dst_fold_follows_the_meter_through_the_repeated_hour() {
    let tz = zurich();
    // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:00-02:59 happens twice.
    let wall = |s: &str| s.parse::<DateTime>().unwrap();
    // No history: the first (summer time) occurrence.
    assert_eq!(
        local_to_instant(wall("2026-10-25 02:30:00"), &tz, None),
        Some(ts("2026-10-25T00:30:00Z"))
    );
    // A meter ticking every 10 minutes from 01:50 CEST to 03:10 CET lands in order.
    let mut prev = None;
    let mut got = Vec::new();
    let clock = [
        "01:50", "02:00", "02:10", "02:20", "02:30", "02:40", "02:50", "02:00", "02:10", "02:20",
        "02:30", "02:40", "02:50", "03:00", "03:10",
    ];
    for hm in clock {
        let t = local_to_instant(wall(&format!("2026-10-25 {hm}:00")), &tz, prev).unwrap();
        got.push(t);
        prev = Some(t);
    }
    for w in got.windows(2) {
        assert_eq!(w[1].0 - w[0].0, 10 * TsMs::MINUTE, "{got:?}");
    }
    assert_eq!(got[0], ts("2026-10-24T23:50:00Z"));
    // A reading a little out of order inside the first pass stays in the first pass.
    let first_pass = ts("2026-10-25T00:40:00Z");
    assert_eq!(
        local_to_instant(wall("2026-10-25 02:39:00"), &tz, Some(first_pass)),
        Some(ts("2026-10-25T00:39:00Z"))
    );
}

/// A valid stream of meter messages, each with a few whitespace choices between them.
fn stream() -> impl Strategy<Value = (Vec<String>, Vec<u8>)> {
    let object = prop_oneof![
        Just(r#"{"id": 0}"#.to_owned()),
        (1u64..100_000, 0.0f64..1e6, any::<bool>()).prop_map(|(id, c, quoted)| {
            let id = if quoted {
                format!("\"{id}\"")
            } else {
                id.to_string()
            };
            format!(r#"{{"id": {id}, "consumption": {c}, "datetime": "2026-11-22 07:01:19", "type": "/spent"}}"#)
        }),
        "[ -~]{0,20}".prop_map(|s| serde_json::json!({"note": s, "n": {"x": [1, {"y": "}"}]}}).to_string()),
    ];
    let sep = prop_oneof![Just(""), Just("\n"), Just("\r\n"), Just(" \t ")];
    prop::collection::vec((object, sep), 0..12).prop_map(|items| {
        let mut bytes = Vec::new();
        let mut objs = Vec::new();
        for (o, s) in items {
            bytes.extend_from_slice(o.as_bytes());
            bytes.extend_from_slice(s.as_bytes());
            objs.push(o);
        }
        (objs, bytes)
    })
}

proptest! {
    #[test]
    fn any_split_of_a_valid_stream_yields_the_same_objects(
        (objs, bytes) in stream(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        for c in at {
            chunks.push(&bytes[from..c]);
            from = c;
        }
        chunks.push(&bytes[from..]);
        let out = frames(&chunks);
        prop_assert_eq!(objects(&out), objs.clone());
        for o in &objs {
            prop_assert!(parse_message(o.as_bytes(), &limits()).is_ok() || o.contains("note"));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..10),
        max in 2usize..300,
    ) {
        let mut f = Framer::new(max);
        let mut out = Vec::new();
        let tz = zurich();
        let now = ts("2026-11-22T12:00:00Z");
        for c in &chunks {
            f.push(c, &mut out);
            prop_assert!(f.buffered() <= max);
        }
        f.abandon();
        for fr in &out {
            match fr {
                Ok(obj) => {
                    let framed = obj.len() <= max && obj.first() == Some(&b'{') && obj.last() == Some(&b'}');
                    prop_assert!(framed, "{:?}", obj);
                    if let Ok(Message::Reading(r)) = parse_message(obj, &limits()) {
                        let _ = r.resolve(&tz, Some(now), &limits(), now);
                    }
                }
                Err(e) => prop_assert!(!e.message.is_empty()),
            }
        }
    }

    #[test]
    fn objects_with_noise_between_still_come_through(
        (objs, _) in stream(),
        noise in prop::collection::vec("[a-z\\]\\[,:0-9]{1,5}", 0..12),
    ) {
        let mut bytes = Vec::new();
        for (i, o) in objs.iter().enumerate() {
            if let Some(n) = noise.get(i) {
                bytes.extend_from_slice(n.as_bytes());
            }
            bytes.extend_from_slice(o.as_bytes());
        }
        let got: Vec<String> = objects(&frames(&[&bytes]))
            .into_iter()
            .filter(|o| o != "ERR garbage")
            .collect();
        prop_assert_eq!(got, objs);
    }
}
