//! `cargo fuzz run json_readings` (from crates/decode): any body, never a panic, and either one
//! `bad_json` error for the whole body or every item accounted for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wattline_decode::parse_json_readings;
use wattline_domain::{Limits, TsMs};

fuzz_target!(|data: &[u8]| {
    let now = TsMs(1_767_657_600_000);
    let out = parse_json_readings(data, now, &Limits::default());
    match out.errors.first() {
        Some(e) if e.line == 0 => {
            assert_eq!(e.code, "bad_json");
            assert_eq!(out.errors.len(), 1);
            assert!(out.readings.is_empty());
        }
        _ => assert_eq!(out.lines, out.readings.len() + out.errors.len()),
    }
    for r in &out.readings {
        assert!(!r.values.is_empty());
        assert!(r.values.iter().all(|(_, v)| v.is_finite()));
    }
});
