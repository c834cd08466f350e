//! A three-phase commercial building: per-phase base and plug loads, lighting and HVAC that
//! follow business hours, lifts that draw on all three phases for a minute, and per-phase
//! voltage and power factor (HVAC motors lower it).

use super::{slot_event, Local, Sample};
use crate::rng::Key;

const PARAMS: u64 = 1;
const PLUG: u64 = 10;
const VOLT: u64 = 20;
const LIFT: u64 = 30;
const HVAC_NOISE: u64 = 40;

/// Lift runs are drawn per slot of this many seconds.
const LIFT_SLOT: i64 = 60;

#[derive(Debug, Clone)]
pub struct Building {
    key: Key,
    base: [f64; 3],
    lights: [f64; 3],
    hvac_w: f64,
    hvac_period: i64,
    hvac_phase: i64,
    lift_w: f64,
    v_offset: [f64; 3],
    pf: [f64; 3],
    /// Opening hours, local: (open, close) in hours.
    hours: (f64, f64),
}

impl Building {
    pub fn new(key: Key) -> Building {
        let p = |n: i64, lo: f64, hi: f64| key.uniform(PARAMS, n, lo, hi);
        let size = p(0, 0.5, 3.0);
        let hvac_period = p(1, 900.0, 1800.0) as i64;
        Building {
            key,
            base: [0, 1, 2].map(|i| size * p(10 + i, 1000.0, 4000.0)),
            lights: [0, 1, 2].map(|i| size * p(20 + i, 500.0, 3000.0)),
            hvac_w: size * p(2, 3000.0, 15_000.0),
            hvac_period,
            hvac_phase: p(3, 0.0, hvac_period as f64) as i64,
            lift_w: size * p(4, 5000.0, 15_000.0),
            v_offset: [0, 1, 2].map(|i| p(30 + i, -3.0, 3.0)),
            pf: [0, 1, 2].map(|i| p(40 + i, 0.90, 0.98)),
            hours: (p(5, 6.5, 8.0), p(6, 17.0, 20.0)),
        }
    }

    /// How busy the building is (0..1): business hours on weekdays, a little on Saturdays.
    fn activity(&self, t: &Local) -> f64 {
        let h = t.hour();
        let (open, close) = self.hours;
        let ramp = |x: f64| x.clamp(0.0, 1.0);
        let day = ramp(h - open + 0.5).min(ramp(close + 0.5 - h));
        match t.weekday {
            0..=4 => 0.1 + 0.9 * day,
            5 => 0.1 + 0.25 * day,
            _ => 0.08,
        }
    }

    pub fn sample(&self, t: &Local, out: &mut [Sample]) {
        let key = self.key;
        let s = t.s;
        let activity = self.activity(t);

        // HVAC: a three-phase compressor cycling, longer duty when the building is busy.
        let duty = 0.25 + 0.5 * activity;
        let hvac_on = (((s + self.hvac_phase).rem_euclid(self.hvac_period)) as f64)
            < duty * self.hvac_period as f64;
        let hvac = if hvac_on {
            self.hvac_w * (1.0 + 0.03 * key.smooth(HVAC_NOISE, s as f64, 30.0)) / 3.0
        } else {
            0.0
        };

        // Lifts: a run of 20-60 s on all three phases.
        let mut lift = 0.0;
        let slot_now = s.div_euclid(LIFT_SLOT);
        for j in slot_now - 1..=slot_now {
            if let Some((start, dur, size)) =
                slot_event(key, LIFT, j, LIFT_SLOT, 0.4 * activity, (20.0, 60.0))
            {
                if s >= start && s < start + dur {
                    lift += self.lift_w * (0.6 + 0.4 * size) / 3.0;
                }
            }
        }

        let day_angle = std::f64::consts::TAU * t.sod as f64 / 86_400.0;
        for (i, o) in out.iter_mut().enumerate().take(3) {
            let plug = self.base[i]
                * (0.6 + 0.4 * activity)
                * (1.0 + 0.05 * key.smooth(PLUG + i as u64, s as f64, 120.0));
            let p = plug + self.lights[i] * activity + hvac + lift;
            let voltage = 230.0
                + self.v_offset[i]
                + 2.0 * (day_angle + i as f64).sin()
                + 0.6 * key.smooth(VOLT + i as u64, s as f64, 45.0)
                - 0.02 * p / 230.0;
            let pf = (self.pf[i] - if hvac_on { 0.06 } else { 0.0 }).clamp(0.6, 1.0);
            *o = Sample {
                power: p.max(0.0),
                voltage,
                pf,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::MAX_CHANNELS;

    #[test]
    fn busier_on_a_weekday_afternoon_than_on_sunday_night() {
        let b = Building::new(Key::new(1, 9));
        let mut out = [Sample::default(); MAX_CHANNELS];
        let avg = |start: i64, out: &mut [Sample; MAX_CHANNELS]| {
            let mut sum = 0.0;
            for s in start..start + 3600 {
                b.sample(&Local::new(s, 0), out);
                sum += out.iter().map(|c| c.power).sum::<f64>();
            }
            sum / 3600.0
        };
        let monday_2pm = avg(1_767_571_200 + 14 * 3600, &mut out);
        let sunday_2am = avg(1_767_571_200 - 22 * 3600, &mut out);
        assert!(
            monday_2pm > 1.5 * sunday_2am,
            "{monday_2pm} vs {sunday_2am}"
        );
    }
}
