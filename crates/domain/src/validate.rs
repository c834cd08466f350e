//! Plausibility limits: values no meter can report are refused at the boundary, naming the
//! field, so one broken sensor cannot poison rollups, bills and forecasts.

use crate::quantity::{Quantity, Values};
use crate::time::TsMs;

/// Why a value was refused. `code()` is the stable machine code API clients and metrics see.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("{field} is not a finite number")]
    NotFinite { field: &'static str },
    #[error("{field} = {value} is outside what a meter can report ({min} ..= {max} {unit})")]
    OutOfRange {
        field: &'static str,
        value: f64,
        min: f64,
        max: f64,
        unit: &'static str,
    },
    #[error("timestamp {ts} is before 2000-01-01")]
    TooOld { ts: TsMs },
    #[error("timestamp {ts} is more than a day ahead of the server clock")]
    InFuture { ts: TsMs },
    #[error("a reading needs at least one quantity")]
    NoValues,
}

impl ValueError {
    pub fn code(&self) -> &'static str {
        match self {
            ValueError::NotFinite { .. } => "not_finite",
            ValueError::OutOfRange { .. } => "out_of_range",
            ValueError::TooOld { .. } => "timestamp_too_old",
            ValueError::InFuture { .. } => "timestamp_in_future",
            ValueError::NoValues => "no_values",
        }
    }
}

/// The range each quantity may take. The defaults cover a household plug up to a utility
/// feeder; anything outside is a sensor fault or a unit mistake (Wh sent as kWh, mV as V).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    ranges: [(f64, f64); Quantity::COUNT],
    /// Readings from before this instant are refused (meters before NTP sync send 1970).
    pub earliest: TsMs,
    /// How far ahead of the server clock a meter's clock may run.
    pub max_ahead_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        let mut ranges = [(0.0, 0.0); Quantity::COUNT];
        for q in Quantity::ALL {
            ranges[q.index()] = match q {
                Quantity::Voltage => (0.0, 1_000_000.0),
                Quantity::Current => (-100_000.0, 100_000.0),
                Quantity::Power => (-1e9, 1e9),
                Quantity::ApparentPower => (0.0, 1e9),
                Quantity::ReactivePower => (-1e9, 1e9),
                Quantity::PowerFactor => (-1.0, 1.0),
                Quantity::Frequency => (1.0, 1000.0),
                Quantity::Energy | Quantity::EnergyExport => (0.0, 1e12),
            };
        }
        Limits {
            ranges,
            earliest: TsMs(946_684_800_000), // 2000-01-01T00:00:00Z
            max_ahead_ms: TsMs::DAY,
        }
    }
}

impl Limits {
    pub fn range(&self, q: Quantity) -> (f64, f64) {
        self.ranges[q.index()]
    }

    pub fn check_value(&self, q: Quantity, value: f64) -> Result<(), ValueError> {
        if !value.is_finite() {
            return Err(ValueError::NotFinite { field: q.field() });
        }
        let (min, max) = self.range(q);
        if value < min || value > max {
            return Err(ValueError::OutOfRange {
                field: q.field(),
                value,
                min,
                max,
                unit: q.unit(),
            });
        }
        Ok(())
    }

    pub fn check_ts(&self, ts: TsMs, now: TsMs) -> Result<(), ValueError> {
        if ts < self.earliest {
            return Err(ValueError::TooOld { ts });
        }
        if ts.0 > now.0 + self.max_ahead_ms {
            return Err(ValueError::InFuture { ts });
        }
        Ok(())
    }

    pub fn check(&self, ts: TsMs, values: &Values, now: TsMs) -> Result<(), ValueError> {
        if values.is_empty() {
            return Err(ValueError::NoValues);
        }
        self.check_ts(ts, now)?;
        for (q, v) in values.iter() {
            self.check_value(q, v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_no_meter_reports() {
        let l = Limits::default();
        let now = TsMs(1_767_632_400_000);
        let ok = Values::new()
            .with(Quantity::Voltage, 230.0)
            .with(Quantity::PowerFactor, 0.97);
        assert!(l.check(now, &ok, now).is_ok());
        let neg_v = Values::new().with(Quantity::Voltage, -1.0);
        assert_eq!(
            l.check(now, &neg_v, now).unwrap_err().code(),
            "out_of_range"
        );
        let pf = Values::new().with(Quantity::PowerFactor, 1.2);
        let err = l.check(now, &pf, now).unwrap_err();
        assert!(err.to_string().contains("power_factor = 1.2"), "{err}");
        let nan = Values::new().with(Quantity::Power, f64::NAN);
        assert_eq!(l.check(now, &nan, now).unwrap_err().code(), "not_finite");
        assert_eq!(
            l.check(TsMs(0), &ok, now).unwrap_err().code(),
            "timestamp_too_old"
        );
        let ahead = TsMs(now.0 + TsMs::DAY + 1);
        assert_eq!(
            l.check(ahead, &ok, now).unwrap_err().code(),
            "timestamp_in_future"
        );
        assert_eq!(
            l.check(now, &Values::new(), now).unwrap_err().code(),
            "no_values"
        );
    }
}
