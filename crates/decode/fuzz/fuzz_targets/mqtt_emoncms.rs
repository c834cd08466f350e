//! `cargo fuzz run mqtt_emoncms` (from crates/decode): the first byte picks an emoncms topic,
//! the rest is the payload. Never a panic; every reading plausible, and a single-value topic
//! gives at most one value stamped on receipt; every refusal names its topic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wattline_decode::mqtt::{Decoded, Format, MqttDecoder};
use wattline_domain::{Limits, TsMs};

const TOPICS: [&str; 8] = [
    "emon/emontx3",
    "emon/emontx3/power1",
    "emon/emontx3/vrms",
    "emon/emontx3/E1",
    "emon/emontx3/pf",
    "emon/emontx3/temp1",
    "emon/a b/power1",
    "emon/a b",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let topic = TOPICS[usize::from(pick) % TOPICS.len()];
    let single = topic.matches('/').count() == 2;
    let now = TsMs(1_795_478_400_000);
    let mut dec = MqttDecoder::new(Limits::default());
    match dec.decode(topic, payload, now) {
        Ok(Decoded::Readings {
            identity,
            readings,
            rejected,
        }) => {
            assert_eq!(identity.format, Format::Emoncms);
            assert!(!readings.is_empty() && rejected.is_empty());
            if single {
                assert_eq!(readings.len(), 1);
                assert_eq!(readings[0].ts, now);
                assert_eq!(readings[0].values.iter().count(), 1);
            }
            for r in &readings {
                let ok = dec.limits.check(r.ts, &r.values, now);
                assert!(ok.is_ok(), "{r:?}");
            }
        }
        Ok(d) => assert_eq!(d.identity().map(|i| i.format), Some(Format::Emoncms)),
        Err(e) => assert!(e.message.starts_with(topic), "{e}"),
    }
});
