//! `cargo fuzz run mqtt_native` (from crates/decode): the first byte picks a native topic, the
//! rest is the payload, fed to `MqttDecoder::decode` and to `decode_gateway`. Never a panic;
//! every reading plausible; every refusal, of the message or of an item, names its topic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wattline_decode::mqtt::{decode_gateway, Decoded, Format, MqttDecoder};
use wattline_domain::{Limits, TsMs, Values};

const TOPICS: [&str; 5] = [
    "wattline/meter-1/readings",
    "wattline/readings",
    "wattline/meter-1/commands",
    "wattline/a b/readings",
    "wattline/17/readings",
];

fn plausible(limits: &Limits, ts: TsMs, values: &Values, now: TsMs) {
    assert!(limits.check(ts, values, now).is_ok(), "{ts:?} {values:?}");
}

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
            assert_eq!(identity.format, Format::Native);
            assert!(topic.ends_with("/readings") && !identity.id.is_empty());
            for r in &readings {
                plausible(&dec.limits, r.ts, &r.values, now);
            }
            for e in &rejected {
                assert!(e.message.starts_with(topic), "{e}");
            }
        }
        Ok(d) => {
            assert!(topic.ends_with("/commands"));
            assert_eq!(d.identity().map(|i| i.format), Some(Format::Native));
        }
        Err(e) => assert!(e.message.starts_with(topic), "{e}"),
    }
    match decode_gateway(topic, payload, now, &dec.limits) {
        Ok((readings, rejected)) => {
            assert_eq!(topic, "wattline/readings");
            for r in &readings {
                plausible(&dec.limits, r.ts, &r.values, now);
            }
            for e in &rejected {
                assert!(e.message.starts_with(topic), "{e}");
            }
        }
        Err(e) => assert!(e.message.starts_with(topic), "{e}"),
    }
});
