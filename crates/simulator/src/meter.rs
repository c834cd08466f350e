//! A simulated meter: a load model plus the energy counter it integrates.
//!
//! The counter integrates the model's power exactly: power is held constant within each
//! second (rounded to 0.1 W, as reported) and the counter is an integer of 0.1 W × 1 ms, so
//! there is no floating-point drift and the counter at time t does not depend on how often it
//! was read on the way: one reading a minute or ten a second give the same value at the
//! same instant. It depends only on the run's start (where the counter begins at its seeded
//! initial value) and on `scale` changes made while running.

use std::cell::Cell;

use crate::profile::{Kind, Profile, Sample, MAX_CHANNELS};
use crate::record::{round_to, Record, RAW_PER_KWH};
use crate::rng::Key;

/// A site's time zone, with the offset cached per quarter hour (zone transitions fall on
/// quarter hours), since every sample asks for it.
#[derive(Debug, Clone)]
pub struct Zone {
    tz: jiff::tz::TimeZone,
    cache: Cell<(i64, i32)>,
}

impl Zone {
    pub fn new(tz: jiff::tz::TimeZone) -> Zone {
        Zone {
            tz,
            cache: Cell::new((i64::MIN, 0)),
        }
    }

    pub fn utc() -> Zone {
        Zone::new(jiff::tz::TimeZone::UTC)
    }

    pub fn tz(&self) -> &jiff::tz::TimeZone {
        &self.tz
    }

    /// Seconds east of UTC at unix second `s`.
    pub fn offset(&self, s: i64) -> i32 {
        let q = s.div_euclid(900);
        let (cq, off) = self.cache.get();
        if cq == q {
            return off;
        }
        let off = jiff::Timestamp::from_second(q * 900)
            .map(|ts| self.tz.to_offset(ts).seconds())
            .unwrap_or(0);
        self.cache.set((q, off));
        off
    }
}

#[derive(Debug, Clone)]
pub struct Meter {
    pub index: u32,
    profile: Profile,
    /// Where the integration stands (unix ms): the last reading's time.
    at: i64,
    energy: [u64; MAX_CHANNELS],
    /// The power (0.1 W) and samples of the second last looked at.
    cache: Option<(i64, [i64; MAX_CHANNELS], [Sample; MAX_CHANNELS])>,
    /// Consumption factor set at run time (`scale <device> <factor>`).
    scale: f64,
}

/// The counter's seeded initial value in kWh: meters are not new.
fn initial_kwh(kind: Kind, seed: u64, index: u32, channel: usize) -> f64 {
    let u = Key::new(seed, u64::from(index)).unit(0xe0, channel as i64);
    match kind {
        Kind::Household => 1000.0 + u * 39_000.0,
        Kind::Building => 10_000.0 + u * 990_000.0,
        Kind::Miner => 100.0 + u * 49_900.0,
    }
}

impl Meter {
    /// A meter whose counters start at their initial values at `start` (unix ms).
    pub fn new(kind: Kind, seed: u64, index: u32, start: i64) -> Meter {
        let mut energy = [0; MAX_CHANNELS];
        for (c, e) in energy.iter_mut().enumerate() {
            *e = (initial_kwh(kind, seed, index, c) * 1000.0).round() as u64
                * (RAW_PER_KWH / 1000.0) as u64;
        }
        Meter {
            index,
            profile: Profile::new(kind, seed, index),
            at: start,
            energy,
            cache: None,
            scale: 1.0,
        }
    }

    /// A meter resumed from its last logged reading: time and raw counters per channel.
    pub fn resume(
        kind: Kind,
        seed: u64,
        index: u32,
        at: i64,
        energy: [u64; MAX_CHANNELS],
    ) -> Meter {
        Meter {
            at,
            energy,
            ..Meter::new(kind, seed, index, at)
        }
    }

    pub fn kind(&self) -> Kind {
        self.profile.kind()
    }

    pub fn channels(&self) -> &'static [u8] {
        self.profile.channels()
    }

    pub fn at(&self) -> i64 {
        self.at
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Multiplies the consumption from now on (the socket meter's user turning it up).
    pub fn set_scale(&mut self, scale: f64) {
        self.scale = scale.max(0.0);
        self.cache = None;
    }

    fn second(&mut self, s: i64, zone: &Zone) -> ([i64; MAX_CHANNELS], [Sample; MAX_CHANNELS]) {
        if let Some((cs, p, samples)) = self.cache {
            if cs == s {
                return (p, samples);
            }
        }
        let mut samples = [Sample::default(); MAX_CHANNELS];
        let n = self.channels().len();
        self.profile.sample(s, zone.offset(s), &mut samples[..n]);
        let mut p = [0i64; MAX_CHANNELS];
        for c in 0..n {
            p[c] = (samples[c].power * self.scale * 10.0).round().max(0.0) as i64;
        }
        self.cache = Some((s, p, samples));
        (p, samples)
    }

    /// Integrates up to `to` (unix ms); earlier times are ignored (time never runs back).
    fn advance(&mut self, to: i64, zone: &Zone) {
        let n = self.channels().len();
        while self.at < to {
            let s = self.at.div_euclid(1000);
            let end = ((s + 1) * 1000).min(to);
            let (p, _) = self.second(s, zone);
            let dt = (end - self.at) as u64;
            for (e, p) in self.energy.iter_mut().zip(p).take(n) {
                *e += p as u64 * dt;
            }
            self.at = end;
        }
    }

    /// The reading at `ts` (unix ms), one record per channel, appended to `out`.
    pub fn read(&mut self, ts: i64, zone: &Zone, out: &mut Vec<Record>) {
        self.advance(ts, zone);
        let (p, samples) = self.second(ts.div_euclid(1000), zone);
        for (c, &channel) in self.channels().iter().enumerate() {
            let s = samples[c];
            let power = p[c] as f64 / 10.0;
            let voltage = round_to(s.voltage, 10.0);
            let pf = round_to(s.pf, 1000.0);
            out.push(Record {
                device: self.index,
                channel,
                ts,
                voltage,
                current: round_to(power / (voltage * pf), 1000.0),
                power,
                pf,
                energy_raw: self.energy[c],
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: i64 = 1_767_632_400_000;

    fn series(kind: Kind, index: u32, interval: i64, until: i64) -> Vec<Record> {
        let zone = Zone::utc();
        let mut m = Meter::new(kind, 42, index, START);
        let mut out = Vec::new();
        let mut ts = START;
        while ts <= until {
            m.read(ts, &zone, &mut out);
            ts += interval;
        }
        out
    }

    #[test]
    fn same_seed_same_readings() {
        for kind in Kind::ALL {
            let a = series(kind, 7, 1000, START + 600_000);
            let b = series(kind, 7, 1000, START + 600_000);
            assert_eq!(a, b);
            let other = series(kind, 8, 1000, START + 600_000);
            assert_ne!(a, other);
        }
    }

    #[test]
    fn counter_does_not_depend_on_the_reading_rate() {
        for kind in Kind::ALL {
            // Every second, and every 250 ms, and every 60 s: equal at the common instants.
            let fast = series(kind, 3, 250, START + 3_600_000);
            let slow = series(kind, 3, 60_000, START + 3_600_000);
            let each = series(kind, 3, 1000, START + 3_600_000);
            for r in &slow {
                let same = |s: &[Record]| {
                    *s.iter()
                        .find(|x| x.ts == r.ts && x.channel == r.channel)
                        .expect("common instant")
                };
                assert_eq!(same(&fast), *r);
                assert_eq!(same(&each), *r);
            }
        }
    }

    #[test]
    fn counter_integrates_the_reported_power() {
        for kind in Kind::ALL {
            let rs = series(kind, 11, 1000, START + 7_200_000);
            let n = kind.channels().len();
            for c in 0..n {
                let ch: Vec<&Record> = rs.iter().skip(c).step_by(n).collect();
                let mut expect = ch[0].energy_raw;
                for w in ch.windows(2) {
                    // Power within a second is the power reported at its start.
                    expect += (w[0].power * 10.0).round() as u64 * (w[1].ts - w[0].ts) as u64;
                    assert_eq!(w[1].energy_raw, expect, "{kind:?} channel {c}");
                    assert!(w[1].energy_kwh() >= w[0].energy_kwh());
                }
                // And in kWh: energy over two hours = mean power × 2 h (to rounding).
                let first = ch[0].energy_kwh();
                let last = ch[ch.len() - 1].energy_kwh();
                let mean_w: f64 =
                    ch[..ch.len() - 1].iter().map(|r| r.power).sum::<f64>() / (ch.len() - 1) as f64;
                assert!(((last - first) - mean_w * 2.0 / 1000.0).abs() < 0.002);
            }
        }
    }

    #[test]
    fn resume_continues_the_same_counter() {
        let zone = Zone::utc();
        let full = series(Kind::Household, 5, 1000, START + 120_000);
        let mid = &full[60];
        let mut energy = [0; MAX_CHANNELS];
        energy[0] = mid.energy_raw;
        let mut m = Meter::resume(Kind::Household, 42, 5, mid.ts, energy);
        let mut out = Vec::new();
        for r in &full[61..] {
            m.read(r.ts, &zone, &mut out);
        }
        assert_eq!(out, full[61..]);
    }

    #[test]
    fn scale_changes_consumption() {
        let zone = Zone::utc();
        let mut a = Meter::new(Kind::Miner, 1, 1, START);
        let mut b = Meter::new(Kind::Miner, 1, 1, START);
        b.set_scale(2.0);
        let (mut ra, mut rb) = (Vec::new(), Vec::new());
        a.read(START + 60_000, &zone, &mut ra);
        b.read(START + 60_000, &zone, &mut rb);
        assert!((rb[0].power / ra[0].power - 2.0).abs() < 0.01);
        let used = |m: &Meter, r: &[Record]| {
            r[0].energy_raw as f64 - {
                let m0 = Meter::new(m.kind(), 1, 1, START);
                m0.energy[0] as f64
            }
        };
        assert!((used(&b, &rb) / used(&a, &ra) - 2.0).abs() < 0.01);
    }

    #[test]
    fn zone_offsets_follow_dst() {
        let z = Zone::new(jiff::tz::TimeZone::get("Europe/Zurich").unwrap());
        assert_eq!(z.offset(1_767_632_400), 3600); // January
        assert_eq!(z.offset(1_783_000_000), 7200); // July
    }
}
