//! One reading of one channel, as the simulator logs it and every protocol sends it.
//!
//! The log line (one per record, the group file's "SD card" format):
//!
//! ```text
//! device,channel,ts_ms,voltage,current,power,power_factor,energy_kwh,energy_raw
//! sim-000042,main,1767632400000,231.4,2.513,561.3,0.965,12345.678901,444444444440000
//! ```
//!
//! `energy_raw` is the counter in units of 0.1 W × 1 ms (1e-4 J), exact: the simulator
//! resumes a device's integration from it after a restart, so a resumed run goes on with the
//! same counter an uninterrupted one would have. `energy_kwh` is what is sent (rounded to
//! 1 mWh). Values are printed with Rust's shortest round-trip float formatting, as Wattline's
//! export does, so the two compare as text.

use std::fmt::Write as _;

use crate::profile::CHANNEL_NAMES;

/// Raw energy units per kWh: 3.6e6 J / 1e-4 J.
pub const RAW_PER_KWH: f64 = 3.6e10;

pub const CSV_HEADER: &str =
    "device,channel,ts_ms,voltage,current,power,power_factor,energy_kwh,energy_raw\n";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record {
    pub device: u32,
    /// Index into [`CHANNEL_NAMES`].
    pub channel: u8,
    /// Unix milliseconds.
    pub ts: i64,
    pub voltage: f64,
    pub current: f64,
    pub power: f64,
    pub pf: f64,
    pub energy_raw: u64,
}

/// Why a log line could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("log line {line:?}: {what}")]
pub struct ParseError {
    pub line: String,
    pub what: &'static str,
}

impl Record {
    pub fn channel_name(&self) -> &'static str {
        CHANNEL_NAMES[usize::from(self.channel)]
    }

    /// The counter in kWh, rounded to 1 mWh.
    pub fn energy_kwh(&self) -> f64 {
        (self.energy_raw as f64 / (RAW_PER_KWH / 1e6)).round() / 1e6
    }

    /// Apparent power (VA) from power and power factor.
    pub fn apparent_power(&self) -> f64 {
        if self.pf > 0.0 {
            round_to(self.power / self.pf, 10.0)
        } else {
            self.power
        }
    }

    /// Reactive power (var), inductive.
    pub fn reactive_power(&self) -> f64 {
        let s = self.power / self.pf.max(1e-9);
        round_to((s * s - self.power * self.power).max(0.0).sqrt(), 10.0)
    }

    pub fn write_csv(&self, prefix: &str, out: &mut String) {
        let _ = writeln!(
            out,
            "{prefix}{:06},{},{},{},{},{},{},{},{}",
            self.device,
            self.channel_name(),
            self.ts,
            self.voltage,
            self.current,
            self.power,
            self.pf,
            self.energy_kwh(),
            self.energy_raw
        );
    }

    /// Reads a line written by [`Record::write_csv`] (without its newline).
    pub fn parse_csv(line: &str, prefix: &str) -> Result<Record, ParseError> {
        let fail = |what| ParseError {
            line: line.to_owned(),
            what,
        };
        let mut f = line.split(',');
        let mut next = |what| f.next().ok_or_else(|| fail(what));
        let device = next("no device")?
            .strip_prefix(prefix)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| fail("device is not <prefix><number>"))?;
        let channel_name = next("no channel")?;
        let channel = CHANNEL_NAMES
            .iter()
            .position(|c| *c == channel_name)
            .ok_or_else(|| fail("unknown channel"))? as u8;
        let num = |s: Result<&str, ParseError>| -> Result<f64, ParseError> {
            s?.parse().map_err(|_| fail("bad number"))
        };
        let ts = next("no ts")?.parse().map_err(|_| fail("bad ts"))?;
        let voltage = num(next("no voltage"))?;
        let current = num(next("no current"))?;
        let power = num(next("no power"))?;
        let pf = num(next("no power factor"))?;
        let _kwh = num(next("no energy"))?;
        let energy_raw = next("no raw energy")?
            .parse()
            .map_err(|_| fail("bad raw energy"))?;
        if f.next().is_some() {
            return Err(fail("too many fields"));
        }
        Ok(Record {
            device,
            channel,
            ts,
            voltage,
            current,
            power,
            pf,
            energy_raw,
        })
    }
}

/// `x` rounded to `1/per` (e.g. `per = 10` keeps one decimal).
pub fn round_to(x: f64, per: f64) -> f64 {
    (x * per).round() / per
}

/// The device name for an index: `<prefix><index, 6 digits>`.
pub fn device_name(prefix: &str, index: u32) -> String {
    format!("{prefix}{index:06}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trip() {
        let r = Record {
            device: 42,
            channel: 2,
            ts: 1_767_632_400_123,
            voltage: 231.4,
            current: 2.513,
            power: 561.3,
            pf: 0.965,
            energy_raw: 444_444_444_440_000,
        };
        let mut s = String::new();
        r.write_csv("sim-", &mut s);
        assert_eq!(
            s,
            "sim-000042,L2,1767632400123,231.4,2.513,561.3,0.965,12345.679012,444444444440000\n"
        );
        assert_eq!(Record::parse_csv(s.trim_end(), "sim-").unwrap(), r);
        assert!(Record::parse_csv("sim-000042,L2,1", "sim-").is_err());
        assert!(Record::parse_csv(s.trim_end(), "other-").is_err());
    }
}
