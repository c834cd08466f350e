//! Energy accounting: how much energy a series used between two of its readings.
//!
//! Cumulative counters are preferred. A drop in a counter is never negative consumption: it is
//! classified as jitter, a rollover of a counter with a fixed number of digits, a reset to zero
//! (firmware update, power loss), or a discontinuity (meter replaced) where the counter says
//! nothing and power, if reported, is integrated instead. An upward jump that would need more
//! than `max_power_w` is a discontinuity too. Without counters, power is integrated with the
//! trapezoid rule across gaps no longer than `max_gap_ms`; a longer gap adds nothing, because
//! what happened while the meter was silent is unknown.
//!
//! The energy between two readings is attributed to the later reading's bucket, as meters
//! themselves report it; the totals over any span that contains both readings are exact.

use crate::quantity::{Quantity, Values};
use crate::time::TsMs;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnergyConfig {
    /// Highest average power a series can plausibly draw between two counter readings.
    pub max_power_w: f64,
    /// Counter resolution slack: integer-kWh counters tick by 1 kWh however short the interval.
    pub counter_slack_kwh: f64,
    /// Longest gap across which power is integrated.
    pub max_gap_ms: i64,
}

impl Default for EnergyConfig {
    fn default() -> Self {
        EnergyConfig {
            max_power_w: 1_000_000.0,
            counter_slack_kwh: 1.0,
            max_gap_ms: 10 * TsMs::MINUTE,
        }
    }
}

/// What a counter did between two readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CounterStep {
    Increase(f64),
    /// A small drop from rounding in the meter; counts as nothing, the baseline is kept.
    Jitter,
    Rollover(f64),
    Reset(f64),
    Discontinuity,
}

impl CounterStep {
    pub fn kwh(self) -> Option<f64> {
        match self {
            CounterStep::Increase(e) | CounterStep::Rollover(e) | CounterStep::Reset(e) => Some(e),
            CounterStep::Jitter => Some(0.0),
            CounterStep::Discontinuity => None,
        }
    }
}

/// Classifies a counter's move from `prev` to `cur` (kWh values, `cur` later than `prev`).
pub fn counter_step(prev: (TsMs, f64), cur: (TsMs, f64), cfg: &EnergyConfig) -> CounterStep {
    let dt_h = ((cur.0 .0 - prev.0 .0).max(0) as f64) / 3_600_000.0;
    let ceiling = cfg.max_power_w / 1000.0 * dt_h + cfg.counter_slack_kwh;
    let (p, c) = (prev.1, cur.1);
    let d = c - p;
    if d >= 0.0 {
        return if d <= ceiling {
            CounterStep::Increase(d)
        } else {
            CounterStep::Discontinuity
        };
    }
    if -d <= (p * 1e-6).max(0.01) {
        return CounterStep::Jitter;
    }
    // A counter with k decimal digits wraps at 10^k: it was near the top and is now near zero.
    let mut wrap = 1000.0;
    while wrap <= p {
        wrap *= 10.0;
    }
    let wrapped = wrap - p + c;
    if p >= 0.9 * wrap && c < 0.1 * wrap && wrapped <= ceiling {
        return CounterStep::Rollover(wrapped);
    }
    if c <= ceiling {
        return CounterStep::Reset(c);
    }
    CounterStep::Discontinuity
}

/// Energy in kWh from power held between two readings (trapezoid), split into import
/// (positive power) and export (negative power); nothing across a gap longer than allowed.
pub fn integrate_power(prev: (TsMs, f64), cur: (TsMs, f64), cfg: &EnergyConfig) -> (f64, f64) {
    let dt = cur.0 .0 - prev.0 .0;
    if dt <= 0 || dt > cfg.max_gap_ms {
        return (0.0, 0.0);
    }
    let hours = dt as f64 / 3_600_000.0;
    let import = (prev.1.max(0.0) + cur.1.max(0.0)) / 2.0 * hours / 1000.0;
    let export = ((-prev.1).max(0.0) + (-cur.1).max(0.0)) / 2.0 * hours / 1000.0;
    (import, export)
}

/// Energy attributed to one reading, and what the counters did to get there.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EnergyDelta {
    pub import_kwh: f64,
    pub export_kwh: f64,
    /// A counter went backwards (reset, rollover) or jumped (replacement) at this reading.
    pub counter_event: Option<CounterEvent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterEvent {
    Rollover,
    Reset,
    Discontinuity,
}

/// The state energy accounting needs about a series' past: the last value of each counter
/// and of power, with when each was seen. Rebuilt from raw readings after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EnergyState {
    pub last_import: Option<(TsMs, f64)>,
    pub last_export: Option<(TsMs, f64)>,
    pub last_power: Option<(TsMs, f64)>,
    /// Timestamp of the last reading observed; readings must be fed in increasing order.
    pub last_ts: Option<TsMs>,
}

impl EnergyState {
    /// True when every part of the state is known, so a backwards scan can stop.
    pub fn is_complete(&self) -> bool {
        self.last_import.is_some() && self.last_export.is_some() && self.last_power.is_some()
    }

    /// Folds one older reading into a state being rebuilt backwards (newest first).
    pub fn absorb_older(&mut self, ts: TsMs, values: &Values) {
        if self.last_ts.is_none() {
            self.last_ts = Some(ts);
        }
        if self.last_import.is_none() {
            self.last_import = values.get(Quantity::Energy).map(|v| (ts, v));
        }
        if self.last_export.is_none() {
            self.last_export = values.get(Quantity::EnergyExport).map(|v| (ts, v));
        }
        if self.last_power.is_none() {
            self.last_power = values.get(Quantity::Power).map(|v| (ts, v));
        }
    }

    /// Accounts the energy between the previous readings and this one, then remembers it.
    pub fn observe(&mut self, ts: TsMs, values: &Values, cfg: &EnergyConfig) -> EnergyDelta {
        let mut delta = EnergyDelta::default();
        let power = values.get(Quantity::Power);
        let integrated = match (self.last_power, power) {
            (Some(prev), Some(p)) => integrate_power(prev, (ts, p), cfg),
            _ => (0.0, 0.0),
        };
        let (import, import_event) = Self::direction(
            &mut self.last_import,
            values.get(Quantity::Energy),
            ts,
            integrated.0,
            cfg,
        );
        let (export, export_event) = Self::direction(
            &mut self.last_export,
            values.get(Quantity::EnergyExport),
            ts,
            integrated.1,
            cfg,
        );
        delta.import_kwh = import;
        delta.export_kwh = export;
        delta.counter_event = import_event.or(export_event);
        if let Some(p) = power {
            self.last_power = Some((ts, p));
        }
        self.last_ts = Some(ts);
        delta
    }

    fn direction(
        last: &mut Option<(TsMs, f64)>,
        counter: Option<f64>,
        ts: TsMs,
        integrated: f64,
        cfg: &EnergyConfig,
    ) -> (f64, Option<CounterEvent>) {
        match (*last, counter) {
            (Some(prev), Some(c)) => {
                let step = counter_step(prev, (ts, c), cfg);
                if !matches!(step, CounterStep::Jitter) {
                    *last = Some((ts, c));
                }
                let event = match step {
                    CounterStep::Rollover(_) => Some(CounterEvent::Rollover),
                    CounterStep::Reset(_) => Some(CounterEvent::Reset),
                    CounterStep::Discontinuity => Some(CounterEvent::Discontinuity),
                    _ => None,
                };
                (step.kwh().unwrap_or(integrated), event)
            }
            (None, Some(c)) => {
                // First counter value: it is the baseline, not consumption.
                *last = Some((ts, c));
                (0.0, None)
            }
            // A series that reports this counter is accounted by it alone; readings without it
            // are covered by the next counter value.
            (Some(_), None) => (0.0, None),
            (None, None) => (integrated, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: i64 = 1000;
    fn t(s: i64) -> TsMs {
        TsMs(1_767_632_400_000 + s * S)
    }
    fn cfg() -> EnergyConfig {
        EnergyConfig::default()
    }

    #[test]
    fn counter_increase_counts() {
        assert_eq!(
            counter_step((t(0), 10.0), (t(60), 10.5), &cfg()),
            CounterStep::Increase(0.5)
        );
    }

    #[test]
    fn reset_to_zero_counts_from_zero() {
        assert_eq!(
            counter_step((t(0), 5230.2), (t(60), 0.3), &cfg()),
            CounterStep::Reset(0.3)
        );
    }

    #[test]
    fn six_digit_counter_rolls_over() {
        match counter_step((t(0), 999_999.5), (t(3600), 0.7), &cfg()) {
            CounterStep::Rollover(e) => assert!((e - 1.2).abs() < 1e-6, "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn replacement_meter_is_a_discontinuity_not_a_spike() {
        // New meter starts at 812 kWh one minute later: neither a reset nor plausible use.
        assert_eq!(
            counter_step((t(0), 5230.2), (t(60), 812.0), &cfg()),
            CounterStep::Discontinuity
        );
        // And a jump up by 50 MWh in a minute is not consumption either.
        assert_eq!(
            counter_step((t(0), 5230.2), (t(60), 55_230.2), &cfg()),
            CounterStep::Discontinuity
        );
    }

    #[test]
    fn small_drop_is_jitter_and_keeps_the_baseline() {
        let mut st = EnergyState::default();
        let v = |e: f64| Values::new().with(Quantity::Energy, e);
        st.observe(t(0), &v(100.02), &cfg());
        assert_eq!(st.observe(t(10), &v(100.01), &cfg()).import_kwh, 0.0);
        let d = st.observe(t(20), &v(100.05), &cfg());
        assert!((d.import_kwh - 0.03).abs() < 1e-9, "{d:?}");
    }

    #[test]
    fn discontinuity_falls_back_to_power() {
        let mut st = EnergyState::default();
        let v = |e: f64, p: f64| {
            Values::new()
                .with(Quantity::Energy, e)
                .with(Quantity::Power, p)
        };
        st.observe(t(0), &v(5000.0, 1200.0), &cfg());
        let d = st.observe(t(60), &v(900.0, 1200.0), &cfg());
        assert_eq!(d.counter_event, Some(CounterEvent::Discontinuity));
        assert!((d.import_kwh - 0.02).abs() < 1e-9, "{d:?}");
        // The new meter's counter is the baseline from now on.
        let d = st.observe(t(120), &v(900.02, 1200.0), &cfg());
        assert!((d.import_kwh - 0.02).abs() < 1e-9, "{d:?}");
    }

    #[test]
    fn power_integration_is_bounded_across_gaps() {
        let mut st = EnergyState::default();
        let p = |w: f64| Values::new().with(Quantity::Power, w);
        st.observe(t(0), &p(1000.0), &cfg());
        let d = st.observe(t(3600), &p(1000.0), &cfg());
        assert_eq!(d.import_kwh, 0.0, "a one-hour silence adds nothing");
        let d = st.observe(t(3660), &p(-600.0), &cfg());
        assert!((d.import_kwh - 1000.0 / 2.0 / 60.0 / 1000.0).abs() < 1e-12);
        assert!((d.export_kwh - 600.0 / 2.0 / 60.0 / 1000.0).abs() < 1e-12);
    }

    proptest! {
        /// Whatever a counter does, accounted energy is never negative and never more than the
        /// power ceiling allows; for a monotonic counter it equals last minus first.
        #[test]
        fn accounted_energy_is_never_negative(
            steps in proptest::collection::vec((1i64..600, -5000.0f64..1.0), 1..60),
            start in 0.0f64..1e6,
        ) {
            let mut st = EnergyState::default();
            let mut ts = 0;
            let mut value = start;
            st.observe(t(ts), &Values::new().with(Quantity::Energy, value), &cfg());
            let mut total = 0.0;
            let mut monotonic = true;
            for (dt, dv) in steps {
                ts += dt;
                if dv < 0.0 { monotonic = false; }
                value = (value + dv).max(0.0);
                let d = st.observe(t(ts), &Values::new().with(Quantity::Energy, value), &cfg());
                prop_assert!(d.import_kwh >= 0.0);
                total += d.import_kwh;
            }
            let c = cfg();
            prop_assert!(total <= c.max_power_w / 1000.0 * (ts as f64 / 3600.0)
                + c.counter_slack_kwh * 60.0 + 1e-6);
            if monotonic {
                prop_assert!((total - (value - start)).abs() < 1e-6 * value.max(1.0));
            }
        }
    }
}
