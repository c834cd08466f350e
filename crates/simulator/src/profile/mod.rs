//! Load models: pure functions from (seed, device, unix second, local offset) to the power,
//! voltage and power factor of each channel.
//!
//! Nothing here keeps state between seconds. Random events (a kettle, an EV session, a GPU
//! fault) are drawn per time slot from [`Key`] hashes, and a sample at second `s` looks back
//! over the slots whose events could still be running. So device k's series does not depend
//! on the device count, the order devices are sampled in, or the rate readings are taken at.
//! Models resolve one second; the meter (see `meter.rs`) holds power constant within a second.

mod building;
mod household;
mod miner;

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::rng::{self, Key};

pub use building::Building;
pub use household::Household;
pub use miner::Miner;

/// The channels a model reports, by index into [`CHANNEL_NAMES`].
pub const CHANNEL_NAMES: [&str; 4] = ["main", "L1", "L2", "L3"];
pub const MAIN: &[u8] = &[0];
pub const PHASES: &[u8] = &[1, 2, 3];

/// The most channels one device has.
pub const MAX_CHANNELS: usize = 3;

/// What kind of load a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Household,
    Building,
    Miner,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Household, Kind::Building, Kind::Miner];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Household => "household",
            Kind::Building => "building",
            Kind::Miner => "miner",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "household" => Some(Kind::Household),
            "building" | "three-phase" => Some(Kind::Building),
            "miner" | "gpu-miner" => Some(Kind::Miner),
            _ => None,
        }
    }

    pub fn channels(self) -> &'static [u8] {
        match self {
            Kind::Building => PHASES,
            Kind::Household | Kind::Miner => MAIN,
        }
    }
}

/// One channel at one second.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    /// Active power, W.
    pub power: f64,
    /// RMS voltage, V.
    pub voltage: f64,
    /// Power factor, 0..=1.
    pub pf: f64,
}

/// A device's load model with its parameters drawn.
#[derive(Debug, Clone)]
pub enum Profile {
    Household(Household),
    Building(Building),
    Miner(Miner),
}

impl Profile {
    pub fn new(kind: Kind, seed: u64, device: u32) -> Profile {
        let key = Key::new(seed, u64::from(device));
        match kind {
            Kind::Household => Profile::Household(Household::new(key)),
            Kind::Building => Profile::Building(Building::new(key)),
            Kind::Miner => Profile::Miner(Miner::new(key)),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Profile::Household(_) => Kind::Household,
            Profile::Building(_) => Kind::Building,
            Profile::Miner(_) => Kind::Miner,
        }
    }

    pub fn channels(&self) -> &'static [u8] {
        self.kind().channels()
    }

    /// The channels' values during unix second `second`, where local time is UTC +
    /// `offset_s` (the site's zone at that instant). `out` has one entry per channel.
    pub fn sample(&self, second: i64, offset_s: i32, out: &mut [Sample]) {
        let t = Local::new(second, offset_s);
        match self {
            Profile::Household(h) => out[0] = h.sample(&t),
            Profile::Building(b) => b.sample(&t, out),
            Profile::Miner(m) => out[0] = m.sample(&t),
        }
    }
}

/// One second, in UTC and in local time.
#[derive(Debug, Clone, Copy)]
pub struct Local {
    /// Unix second.
    pub s: i64,
    /// Local day number (days since 1970-01-01 local).
    pub day: i64,
    /// Local second of the day.
    pub sod: i64,
    /// Monday = 0 ... Sunday = 6.
    pub weekday: i64,
}

impl Local {
    pub fn new(s: i64, offset_s: i32) -> Local {
        let local = s + i64::from(offset_s);
        let day = local.div_euclid(86_400);
        Local {
            s,
            day,
            sod: local.rem_euclid(86_400),
            // 1970-01-01 was a Thursday.
            weekday: (day + 3).rem_euclid(7),
        }
    }

    pub fn hour(&self) -> f64 {
        self.sod as f64 / 3600.0
    }

    pub fn weekend(&self) -> bool {
        self.weekday >= 5
    }
}

/// Home occupancy (0..1) by local minute of the day, weekdays and weekends: a morning peak,
/// a small midday, the evening peak. A table, since appliances look it up per time slot.
pub fn home_occupancy(minute_of_day: i64, weekend: bool) -> f64 {
    static TABLE: OnceLock<Vec<[f64; 2]>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..1440)
            .map(|m| {
                let h = m as f64 / 60.0;
                let f = |weekend: bool| {
                    let g = |c: f64, w: f64| (-((h - c) / w).powi(2)).exp();
                    let (morning, midday) = if weekend {
                        (g(9.5, 1.8), 0.45 * g(13.5, 2.5))
                    } else {
                        (g(7.2, 1.0), 0.12 * g(13.0, 2.0))
                    };
                    (0.03 + 0.8 * morning + midday + g(19.5, 2.2)).min(1.0)
                };
                [f(false), f(true)]
            })
            .collect()
    });
    table[minute_of_day.rem_euclid(1440) as usize][usize::from(weekend)]
}

/// A random event that may start in each slot of `slot` seconds: whether it does, and when.
/// Returns the event's start, duration and a uniform number for its size, if slot `j` has one.
pub fn slot_event(
    key: Key,
    stream: u64,
    j: i64,
    slot: i64,
    probability: f64,
    duration: (f64, f64),
) -> Option<(i64, i64, f64)> {
    if key.unit(stream, j) >= probability {
        return None;
    }
    let h = key.at(stream + 1, j);
    let start = j * slot + (rng::unit(h) * slot as f64) as i64;
    let dur = duration.0 + (duration.1 - duration.0) * rng::unit(rng::mix(h));
    let size = rng::unit(rng::mix(h ^ 0x55));
    Some((start, dur as i64, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_time_and_weekday() {
        // 2026-01-05T17:00:00Z was a Monday.
        let t = Local::new(1_767_632_400, 0);
        assert_eq!(t.weekday, 0);
        assert_eq!(t.sod, 17 * 3600);
        let zurich = Local::new(1_767_632_400, 3600);
        assert_eq!(zurich.sod, 18 * 3600);
        let sunday = Local::new(1_767_632_400 - 86_400, 0);
        assert!(sunday.weekend());
    }

    #[test]
    fn occupancy_peaks_in_the_evening() {
        assert!(home_occupancy(19 * 60 + 30, false) > 0.9);
        assert!(home_occupancy(3 * 60, false) < 0.1);
        assert!(home_occupancy(7 * 60 + 12, false) > home_occupancy(7 * 60 + 12, true));
    }

    #[test]
    fn every_model_gives_plausible_values_for_a_day() {
        for kind in Kind::ALL {
            for device in 0..20 {
                let p = Profile::new(kind, 42, device);
                let mut out = [Sample::default(); MAX_CHANNELS];
                let n = p.channels().len();
                for s in (1_767_632_400..1_767_632_400 + 86_400).step_by(37) {
                    p.sample(s, 0, &mut out[..n]);
                    for c in &out[..n] {
                        assert!(c.power >= 0.0 && c.power < 200_000.0, "{kind:?} {c:?}");
                        assert!((180.0..260.0).contains(&c.voltage), "{kind:?} {c:?}");
                        assert!(c.pf > 0.5 && c.pf <= 1.0, "{kind:?} {c:?}");
                    }
                }
            }
        }
    }
}
