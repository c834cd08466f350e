//! A household: standby base load, fridge compressor cycles, lights following occupancy and
//! daylight, appliances (kettle, microwave, oven with thermostat, washing machine, dishwasher,
//! TV, hob), an optional heat pump (20 % of homes) and an optional EV charger (15 %).

use super::{home_occupancy, slot_event, Local, Sample};
use crate::rng::Key;

// Streams of random numbers; each model part draws from its own.
const PARAMS: u64 = 1;
const BASE: u64 = 2;
const LIGHT_NOISE: u64 = 3;
const VOLT: u64 = 4;
const EV_DAY: u64 = 5;
const PF: u64 = 6;
/// Appliance kind `k` uses streams `APPLIANCE + 2k` and `APPLIANCE + 2k + 1`.
const APPLIANCE: u64 = 100;

/// Appliance events are drawn per slot of this many seconds.
const SLOT: i64 = 600;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pattern {
    /// Full power while on.
    Steady,
    /// Preheat, then a thermostat switching the element.
    Oven,
    /// Water heating, then motor or pump.
    Washer,
    /// Water heating twice (wash and dry), pump in between.
    Dishwasher,
}

/// name, weight (share of events), power range W, duration range s, pattern.
type Appliance = (&'static str, f64, (f64, f64), (f64, f64), Pattern);

const APPLIANCES: [Appliance; 7] = [
    (
        "kettle",
        4.0,
        (1800.0, 3000.0),
        (90.0, 240.0),
        Pattern::Steady,
    ),
    (
        "microwave",
        2.5,
        (700.0, 1250.0),
        (45.0, 420.0),
        Pattern::Steady,
    ),
    (
        "oven",
        0.8,
        (1800.0, 3400.0),
        (1500.0, 4200.0),
        Pattern::Oven,
    ),
    (
        "washer",
        0.5,
        (1900.0, 2300.0),
        (3600.0, 6000.0),
        Pattern::Washer,
    ),
    (
        "dishwasher",
        0.5,
        (1700.0, 2100.0),
        (5400.0, 8400.0),
        Pattern::Dishwasher,
    ),
    ("tv", 1.5, (60.0, 220.0), (1800.0, 10800.0), Pattern::Steady),
    (
        "hob",
        1.0,
        (1000.0, 2200.0),
        (600.0, 2400.0),
        Pattern::Steady,
    ),
];
const WEIGHT_TOTAL: f64 = 10.8;

#[derive(Debug, Clone)]
pub struct Household {
    key: Key,
    base: f64,
    fridge_w: f64,
    fridge_period: i64,
    fridge_duty: f64,
    fridge_phase: i64,
    light_w: f64,
    /// Appliance events per day at full occupancy.
    events_per_day: f64,
    heat_pump: Option<(f64, i64, i64)>,
    ev_w: Option<f64>,
    v_offset: f64,
    v_phase: f64,
    /// Ohms of the service line: voltage drops with load.
    r_line: f64,
    pf: f64,
}

impl Household {
    pub fn new(key: Key) -> Household {
        let p = |n: i64, lo: f64, hi: f64| key.uniform(PARAMS, n, lo, hi);
        let fridge_period = p(1, 2400.0, 4200.0) as i64;
        let hp_period = p(8, 1200.0, 2700.0) as i64;
        Household {
            key,
            base: p(0, 40.0, 180.0),
            fridge_w: p(2, 90.0, 160.0),
            fridge_period,
            fridge_duty: p(3, 0.30, 0.50),
            fridge_phase: p(4, 0.0, fridge_period as f64) as i64,
            light_w: p(5, 80.0, 600.0),
            events_per_day: p(6, 6.0, 20.0),
            heat_pump: (key.unit(PARAMS, 7) < 0.20).then(|| {
                (
                    p(9, 900.0, 2800.0),
                    hp_period,
                    p(10, 0.0, hp_period as f64) as i64,
                )
            }),
            ev_w: (key.unit(PARAMS, 11) < 0.15)
                .then(|| [3600.0, 7200.0, 11000.0][(key.unit(PARAMS, 12) * 3.0) as usize]),
            v_offset: p(13, -4.0, 4.0),
            v_phase: p(14, 0.0, std::f64::consts::TAU),
            r_line: p(15, 0.05, 0.25),
            pf: p(16, 0.90, 0.99),
        }
    }

    pub fn sample(&self, t: &Local) -> Sample {
        let key = self.key;
        let s = t.s;
        let hour = t.hour();
        let weekend = t.weekend();
        let occupancy = home_occupancy(t.sod / 60, weekend);

        let mut p = self.base + 15.0 * key.smooth(BASE, s as f64, 900.0);

        // Fridge compressor, with its start-up surge.
        let ph = (s + self.fridge_phase).rem_euclid(self.fridge_period);
        if (ph as f64) < self.fridge_duty * self.fridge_period as f64 {
            p += self.fridge_w * if ph < 2 { 3.5 } else { 1.0 };
        }

        // Lights and small loads: people at home after dark.
        let dark = if !(7.5..=16.5).contains(&hour) {
            1.0
        } else {
            0.15
        };
        p += self.light_w * occupancy * dark * (0.9 + 0.2 * key.unit(LIGHT_NOISE, s));

        // Heat pump: longer duty at night and in the morning.
        if let Some((w, period, phase)) = self.heat_pump {
            let duty = 0.35 + 0.25 * (std::f64::consts::TAU * (hour - 5.0) / 24.0).cos();
            if (((s + phase).rem_euclid(period)) as f64) < duty * period as f64 {
                p += w;
            }
        }

        // EV: most evenings a session of one to four hours, maybe past midnight.
        if let Some(w) = self.ev_w {
            let local = t.day * 86_400 + t.sod;
            for day in [t.day - 1, t.day] {
                if key.unit(EV_DAY, day) < 0.7 {
                    let h = key.at(EV_DAY + 1, day);
                    let start = day * 86_400 + (63_000.0 + crate::rng::unit(h) * 21_600.0) as i64;
                    let dur = 3600.0 + crate::rng::unit(crate::rng::mix(h)) * 10_800.0;
                    if local >= start && ((local - start) as f64) < dur {
                        p += w;
                    }
                }
            }
        }

        // Appliances: per slot and kind, an event starts with a probability that follows
        // occupancy (local time of the slot).
        let mut motor = false;
        let local = t.day * 86_400 + t.sod;
        let slot_now = local.div_euclid(SLOT);
        for (k, (_, weight, power, duration, pattern)) in APPLIANCES.iter().enumerate() {
            let stream = APPLIANCE + 2 * k as u64;
            let lookback = (duration.1 as i64 + SLOT - 1) / SLOT;
            for j in slot_now - lookback..=slot_now {
                let slot_occ = home_occupancy((j * SLOT).rem_euclid(86_400) / 60, weekend);
                let prob =
                    self.events_per_day * weight / WEIGHT_TOTAL * slot_occ * SLOT as f64 / 86_400.0;
                let Some((start, dur, size)) = slot_event(key, stream, j, SLOT, prob, *duration)
                else {
                    continue;
                };
                if local < start || local >= start + dur {
                    continue;
                }
                let w = power.0 + (power.1 - power.0) * size;
                let el = local - start;
                p += match pattern {
                    Pattern::Steady => w,
                    Pattern::Oven if el > 600 && el % 120 >= 55 => 0.0,
                    Pattern::Oven => w,
                    Pattern::Washer if el < 900 => w,
                    Pattern::Dishwasher if el < 900 || (3600..4300).contains(&el) => w,
                    Pattern::Washer | Pattern::Dishwasher => {
                        motor = true;
                        120.0 + 380.0 * ((el / 20) % 2) as f64
                    }
                };
            }
        }

        let day_angle = std::f64::consts::TAU * t.sod as f64 / 86_400.0;
        let voltage = 230.0
            + self.v_offset
            + 2.5 * (day_angle + self.v_phase).sin()
            + 0.8 * key.smooth(VOLT, s as f64, 60.0)
            - self.r_line * p / 230.0;
        // Motors pull the power factor down; resistive loads (kettle, oven) push it up.
        let pf = (self.pf + 0.01 * key.smooth(PF, s as f64, 300.0)
            - if motor { 0.08 } else { 0.0 })
        .clamp(0.6, 1.0);
        Sample {
            power: p.max(0.0),
            voltage,
            pf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_has_appliance_peaks_and_standby() {
        let start = 1_767_571_200; // 2026-01-05T00:00:00Z, a Monday
        let mut with_peaks = 0;
        for device in 0..10 {
            let h = Household::new(Key::new(42, device));
            let mut max: f64 = 0.0;
            let mut min = f64::MAX;
            let mut sum = 0.0;
            for s in start..start + 86_400 {
                let p = h.sample(&Local::new(s, 0)).power;
                max = max.max(p);
                min = min.min(p);
                sum += p;
            }
            let kwh = sum / 3_600_000.0;
            if max > 1500.0 {
                with_peaks += 1;
            }
            assert!(min < 400.0, "no standby: min {min}");
            assert!((1.0..80.0).contains(&kwh), "daily energy {kwh} kWh");
        }
        assert!(
            with_peaks >= 8,
            "only {with_peaks} of 10 homes used an appliance all day"
        );
    }
}
