//! A GPU mining rig: a steady high load set by the number of GPUs and their power limit,
//! which the operator retunes every few hours (hash-rate steps), and faults: a GPU dropping
//! off the bus for minutes, or the whole rig hanging at idle until the watchdog reboots it.

use super::{slot_event, Local, Sample};
use crate::rng::Key;

const PARAMS: u64 = 1;
const EPOCH: u64 = 2;
const FAULT: u64 = 3;
const JITTER: u64 = 5;
const VOLT: u64 = 6;

/// Power-limit levels the operator steps between (fraction of the GPUs' rated power).
const LEVELS: [f64; 5] = [0.75, 0.85, 0.9, 1.0, 1.05];
/// Faults are drawn per slot of this many seconds.
const FAULT_SLOT: i64 = 3600;

#[derive(Debug, Clone)]
pub struct Miner {
    key: Key,
    gpus: u32,
    gpu_w: f64,
    overhead: f64,
    /// Seconds between retunings.
    epoch: i64,
    nominal_v: f64,
    pf: f64,
}

impl Miner {
    pub fn new(key: Key) -> Miner {
        let p = |n: i64, lo: f64, hi: f64| key.uniform(PARAMS, n, lo, hi);
        Miner {
            key,
            gpus: p(0, 4.0, 13.0) as u32,
            gpu_w: p(1, 150.0, 320.0),
            overhead: p(2, 60.0, 140.0),
            epoch: p(3, 2.0 * 3600.0, 8.0 * 3600.0) as i64,
            nominal_v: if key.unit(PARAMS, 4) < 0.3 {
                240.0
            } else {
                230.0
            },
            pf: p(5, 0.96, 0.99),
        }
    }

    pub fn sample(&self, t: &Local) -> Sample {
        let key = self.key;
        let s = t.s;
        let epoch = s.div_euclid(self.epoch);
        let level = LEVELS[(key.unit(EPOCH, epoch) * LEVELS.len() as f64) as usize];
        let mut gpus = f64::from(self.gpus);
        let mut crashed = false;
        let slot_now = s.div_euclid(FAULT_SLOT);
        for j in slot_now - 1..=slot_now {
            if let Some((start, dur, size)) =
                slot_event(key, FAULT, j, FAULT_SLOT, 0.04, (120.0, 1200.0))
            {
                if s >= start && s < start + dur {
                    if size < 0.3 {
                        crashed = true;
                    } else {
                        gpus -= 1.0;
                    }
                }
            }
        }
        let power = if crashed {
            // Hung: fans and the host only.
            self.overhead * 0.8
        } else {
            self.overhead
                + gpus.max(0.0)
                    * self.gpu_w
                    * level
                    * (1.0 + 0.015 * key.smooth(EPOCH + 10, s as f64, 30.0))
                    * (1.0 + 0.004 * (key.unit(JITTER, s) - 0.5))
        };
        let voltage = self.nominal_v
            + 2.0 * key.smooth(VOLT, s as f64, 600.0)
            + 0.5 * key.smooth(VOLT + 1, s as f64, 20.0)
            - 0.1 * power / self.nominal_v;
        Sample {
            power,
            voltage,
            pf: self.pf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_high_load_with_steps_and_faults() {
        let mut seen_crash = false;
        let mut levels = std::collections::BTreeSet::new();
        for device in 0..10 {
            let m = Miner::new(Key::new(5, device));
            let full = m.overhead + f64::from(m.gpus) * m.gpu_w * 1.05;
            for s in (1_767_571_200..1_767_571_200 + 7 * 86_400).step_by(60) {
                let p = m.sample(&Local::new(s, 0)).power;
                assert!(p <= full * 1.03, "{p} > {full}");
                if p < m.overhead {
                    seen_crash = true;
                }
                levels.insert((p / 50.0) as i64);
            }
        }
        assert!(seen_crash, "no rig ever hung in 10 rig-weeks");
        assert!(levels.len() > 10, "no hash-rate steps: {levels:?}");
    }
}
