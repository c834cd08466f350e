//! `cargo fuzz run mqtt_tasmota` (from crates/decode): the first byte picks a Tasmota topic, the
//! rest is the payload. Never a panic; every reading plausible and stamped on receipt; every
//! refusal names its topic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wattline_decode::mqtt::{Decoded, Format, MqttDecoder};
use wattline_domain::{Limits, TsMs};

const TOPICS: [&str; 7] = [
    "tele/plug1/SENSOR",
    "tele/plug1/LWT",
    "tele/plug1/STATE",
    "stat/plug1/RESULT",
    "cmnd/plug1/POWER",
    "tele/plug 1/SENSOR",
    "tele//LWT",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let topic = TOPICS[usize::from(pick) % TOPICS.len()];
    let now = TsMs(1_795_357_300_000);
    let mut dec = MqttDecoder::new(Limits::default());
    match dec.decode(topic, payload, now) {
        Ok(Decoded::Readings {
            identity,
            readings,
            rejected,
        }) => {
            assert_eq!(identity.format, Format::Tasmota);
            assert!(!readings.is_empty() && rejected.is_empty());
            for r in &readings {
                assert_eq!(r.ts, now);
                assert!(!r.values.is_empty());
                for (q, v) in r.values.iter() {
                    assert!(dec.limits.check_value(q, v).is_ok(), "{q:?} = {v}");
                }
            }
        }
        Ok(d) => assert_eq!(d.identity().map(|i| i.format), Some(Format::Tasmota)),
        Err(e) => assert!(e.message.starts_with(topic), "{e}"),
    }
});
