//! `cargo fuzz run mqtt_shelly` (from crates/decode): a sequence of messages, separated by zero
//! bytes, each a byte that picks a Shelly topic and then the payload, through one decoder (so
//! Gen2 deltas meet remembered statuses). Never a panic; every reading plausible, stamped on
//! receipt or within the limits; every refusal names its topic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wattline_decode::mqtt::{Decoded, Format, MqttDecoder};
use wattline_domain::{Limits, TsMs};

const TOPICS: [&str; 14] = [
    "shellyplus1pm-a8/status/switch:0",
    "shellyplus1pm-a8/status/switch:1",
    "shellyplus1pm-a8/events/rpc",
    "shellyplus1pm-a8/online",
    "shellypro3em-c8/status/em:0",
    "shellypro3em-c8/status/emdata:0",
    "shellypro3em-c8/status/em1:0",
    "shellypro3em-c8/status/em1data:0",
    "shellypro3em-c8/events/rpc",
    "shellies/shelly1pm-ab/relay/0/power",
    "shellies/shelly1pm-ab/relay/0/energy",
    "shellies/shellyem3-cd/emeter/1/total",
    "shellies/shellyem3-cd/emeter/2/pf",
    "shellies/shelly1pm-ab/online",
];

fuzz_target!(|data: &[u8]| {
    let now = TsMs(1_795_351_320_000);
    let mut dec = MqttDecoder::new(Limits::default());
    for message in data.split(|&b| b == 0) {
        let Some((&pick, payload)) = message.split_first() else {
            continue;
        };
        let topic = TOPICS[usize::from(pick) % TOPICS.len()];
        match dec.decode(topic, payload, now) {
            Ok(Decoded::Readings {
                identity,
                readings,
                rejected,
            }) => {
                assert_eq!(identity.format, Format::Shelly);
                assert!(!readings.is_empty() && rejected.is_empty());
                for r in &readings {
                    assert!(r.ts == now || dec.limits.check_ts(r.ts, now).is_ok());
                    assert!(!r.values.is_empty());
                    for (q, v) in r.values.iter() {
                        assert!(dec.limits.check_value(q, v).is_ok(), "{q:?} = {v}");
                    }
                }
            }
            Ok(d) => assert_eq!(d.identity().map(|i| i.format), Some(Format::Shelly)),
            Err(e) => assert!(e.message.starts_with(topic), "{e}"),
        }
    }
});
