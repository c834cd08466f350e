//! `cargo fuzz run mqtt_esp32` (from crates/decode): the input is a run of messages, each
//! `[topic pick, seconds since the last one, payload length, payload...]`, fed to one decoder so
//! the cycle merging is exercised. Never a panic; every emitted reading is one plausible cycle
//! (energy, current and voltage only, on `main`, stamped no later than the message that emitted
//! it); every refusal names its topic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wattline_decode::mqtt::{Decoded, Format, MqttDecoder};
use wattline_domain::{Limits, Quantity, TsMs};

const TOPICS: [&str; 6] = [
    "Smart_Energie/data/kWh",
    "Smart_Energie/data/Current",
    "Smart_Energie/data/Voltage",
    "Smart_Energie/temps",
    "Other/data/kWh",
    "Other/temps",
];

fuzz_target!(|data: &[u8]| {
    let mut dec = MqttDecoder::new(Limits::default());
    let mut now = TsMs(1_767_657_600_000);
    let mut rest = data;
    while let [pick, step, len, tail @ ..] = rest {
        let topic = TOPICS[usize::from(*pick) % TOPICS.len()];
        now = TsMs(now.0 + i64::from(*step) * 1000);
        let (payload, next) = tail.split_at(usize::from(*len).min(tail.len()));
        rest = next;
        match dec.decode(topic, payload, now) {
            Ok(Decoded::Readings {
                identity,
                readings,
                rejected,
            }) => {
                assert_eq!(identity.format, Format::Esp32);
                assert!(topic.starts_with(&format!("{}/", identity.id)));
                assert_eq!(readings.len(), 1);
                assert!(rejected.is_empty());
                let r = &readings[0];
                assert_eq!(r.channel.as_str(), "main");
                assert!(r.ts <= now);
                assert!(dec.limits.check(r.ts, &r.values, now).is_ok(), "{r:?}");
                assert!(r.values.iter().all(|(q, _)| matches!(
                    q,
                    Quantity::Energy | Quantity::Current | Quantity::Voltage
                )));
            }
            Ok(d) => assert_eq!(d.identity().map(|i| i.format), Some(Format::Esp32)),
            Err(e) => assert!(e.message.starts_with(topic), "{e}"),
        }
    }
});
