//! `cargo fuzz run tcp_meter` (from crates/decode): the input is a byte stream from a socket
//! meter, cut into reads where the first byte says. Never a panic; the framer never holds more
//! than its limit; every object it yields is one the framer closed; every reading decoded and
//! placed in a zone is plausible; and the same stream in one read yields the same objects.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wattline_decode::tcp_meter::{parse_message, Framer, Message};
use wattline_domain::time::parse_zone;
use wattline_domain::{Limits, TsMs};

const MAX: usize = 512;

fn objects(frames: &[Result<Vec<u8>, wattline_decode::tcp_meter::TcpMeterError>]) -> Vec<Vec<u8>> {
    frames.iter().filter_map(|f| f.as_ref().ok().cloned()).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut % 32) + 1;
    let limits = Limits::default();
    let now = TsMs(1_795_334_400_000); // 2026-11-22
    let zones = [parse_zone("UTC").unwrap(), parse_zone("Europe/Zurich").unwrap()];
    let mut framer = Framer::new(MAX);
    let mut frames = Vec::new();
    for chunk in stream.chunks(step) {
        framer.push(chunk, &mut frames);
        assert!(framer.buffered() <= MAX);
    }
    for f in &frames {
        match f {
            Ok(obj) => {
                assert!(obj.len() <= MAX && obj.first() == Some(&b'{') && obj.last() == Some(&b'}'));
                if let Ok(Message::Reading(r)) = parse_message(obj, &limits) {
                    for tz in &zones {
                        if let Ok((ts, values)) = r.resolve(tz, Some(now), &limits, now) {
                            assert!(limits.check(ts, &values, now).is_ok());
                        }
                    }
                }
            }
            Err(e) => assert!(!e.message.is_empty()),
        }
    }
    // Reads do not change which objects come out, only where garbage runs are cut.
    let mut whole = Framer::new(MAX);
    let mut at_once = Vec::new();
    whole.push(stream, &mut at_once);
    assert_eq!(objects(&frames), objects(&at_once));
});
