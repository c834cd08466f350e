//! `cargo fuzz run line_protocol` (from crates/decode): any body, any precision, never a panic,
//! and every decoded line is accounted for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wattline_decode::{parse_line_protocol, Precision};
use wattline_domain::{Limits, TsMs};

fuzz_target!(|data: &[u8]| {
    let (precision, body) = match data.split_first() {
        Some((p, rest)) => {
            let p = [Precision::Ns, Precision::Us, Precision::Ms, Precision::S][usize::from(p % 4)];
            (p, rest)
        }
        None => (Precision::Ns, data),
    };
    let now = TsMs(1_767_657_600_000);
    let out = parse_line_protocol(body, precision, now, &Limits::default());
    assert_eq!(out.lines, out.readings.len() + out.errors.len());
    for e in &out.errors {
        assert!(e.line >= 1);
        assert!(e.message.starts_with(&format!("line {}: ", e.line)));
    }
    for r in &out.readings {
        assert!(!r.values.is_empty());
        assert!(r.values.iter().all(|(_, v)| v.is_finite()));
    }
});
