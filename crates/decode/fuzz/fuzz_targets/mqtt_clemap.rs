//! `cargo fuzz run mqtt_clemap` (from crates/decode): the first byte picks a Clemap topic, the
//! rest is the payload. Never a panic; a decoded message is three plausible phase readings
//! (`L1`, `L2`, `L3`) with one timestamp; every refusal names its topic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wattline_decode::mqtt::{Decoded, Format, MqttDecoder};
use wattline_domain::{Limits, TsMs};

const TOPICS: [&str; 2] = ["ten-second/SE05000160", "one-minute/SE05000160"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let topic = TOPICS[usize::from(pick) % TOPICS.len()];
    let now = TsMs(1_767_657_600_000);
    let mut dec = MqttDecoder::new(Limits::default());
    match dec.decode(topic, payload, now) {
        Ok(Decoded::Readings {
            identity,
            readings,
            rejected,
        }) => {
            assert_eq!(identity.format, Format::Clemap);
            assert!(rejected.is_empty());
            let channels: Vec<&str> = readings.iter().map(|r| r.channel.as_str()).collect();
            assert_eq!(channels, ["L1", "L2", "L3"]);
            for r in &readings {
                assert_eq!(r.ts, readings[0].ts);
                assert!(dec.limits.check(r.ts, &r.values, now).is_ok(), "{r:?}");
            }
        }
        Ok(d) => panic!("a Clemap message is readings or an error: {d:?}"),
        Err(e) => assert!(e.message.starts_with(topic), "{e}"),
    }
});
