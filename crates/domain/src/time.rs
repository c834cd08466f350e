//! Time: instants in unix milliseconds, and the rollup buckets they fall in.
//!
//! Minute buckets are UTC-aligned (every zone's offset is a whole number of minutes). Hour
//! and day buckets follow the site's zone: an hour starts where local time shows `:00`, a day
//! where it shows midnight, so a day can last 23 or 25 hours across a DST change.

use std::fmt;

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};

/// An instant as unix milliseconds: the resolution Wattline stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TsMs(pub i64);

impl TsMs {
    pub const MINUTE: i64 = 60_000;
    pub const HOUR: i64 = 3_600_000;
    pub const DAY: i64 = 86_400_000;

    pub fn from_timestamp(ts: Timestamp) -> Self {
        TsMs(ts.as_millisecond())
    }

    pub fn to_timestamp(self) -> Timestamp {
        Timestamp::from_millisecond(self.0).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    pub fn now() -> Self {
        Self::from_timestamp(Timestamp::now())
    }

    /// Parses RFC 3339 text or unix milliseconds, the two forms the API takes.
    pub fn parse_api(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(ms) = s.parse::<i64>() {
            return Ok(TsMs(ms));
        }
        s.parse::<Timestamp>()
            .map(Self::from_timestamp)
            .map_err(|e| format!("{s:?} is neither RFC 3339 nor unix milliseconds: {e}"))
    }

    pub fn minute_start(self) -> TsMs {
        TsMs(self.0.div_euclid(Self::MINUTE).saturating_mul(Self::MINUTE))
    }
}

impl fmt::Display for TsMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_timestamp())
    }
}

/// The stored resolutions, finest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BucketTier {
    #[serde(rename = "raw")]
    Raw,
    #[serde(rename = "1m")]
    Minute,
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "1d")]
    Day,
}

impl BucketTier {
    pub const ROLLUPS: [BucketTier; 3] = [BucketTier::Minute, BucketTier::Hour, BucketTier::Day];

    pub const fn name(self) -> &'static str {
        match self {
            BucketTier::Raw => "raw",
            BucketTier::Minute => "1m",
            BucketTier::Hour => "1h",
            BucketTier::Day => "1d",
        }
    }

    /// Nominal width, used to estimate how many points a range yields; real hour and day
    /// buckets can be shorter or longer around DST changes.
    pub const fn nominal_ms(self) -> i64 {
        match self {
            BucketTier::Raw => 1_000,
            BucketTier::Minute => TsMs::MINUTE,
            BucketTier::Hour => TsMs::HOUR,
            BucketTier::Day => TsMs::DAY,
        }
    }

    /// Start of the bucket of this tier that holds `ts`, in `tz`.
    pub fn bucket_start(self, ts: TsMs, tz: &TimeZone) -> TsMs {
        match self {
            BucketTier::Raw => ts,
            BucketTier::Minute => ts.minute_start(),
            BucketTier::Hour => local_hour_start(ts, tz),
            BucketTier::Day => local_day_start(ts, tz),
        }
    }

    /// The bucket of this tier that holds `ts`: its start and its (exclusive) end.
    pub fn bucket(self, ts: TsMs, tz: &TimeZone) -> (TsMs, TsMs) {
        match self {
            BucketTier::Raw => (ts, TsMs(ts.0 + 1)),
            BucketTier::Minute => {
                let s = ts.minute_start();
                (s, TsMs(s.0 + TsMs::MINUTE))
            }
            BucketTier::Hour => {
                let s = local_hour_start(ts, tz);
                // The next local hour starts at the first instant whose local hour differs:
                // usually +1 h, but an offset change inside the hour moves it.
                let probe = TsMs(s.0 + TsMs::HOUR);
                let next = local_hour_start(probe, tz);
                (s, if next > s { next } else { probe })
            }
            BucketTier::Day => {
                let s = local_day_start(ts, tz);
                (s, next_local_day(s, tz))
            }
        }
    }
}

/// Start of the local hour holding `ts`: the offset in force at `ts` decides where `:00` is, so
/// the two 01:xx hours of a fall-back night stay two buckets.
pub fn local_hour_start(ts: TsMs, tz: &TimeZone) -> TsMs {
    let offset_ms = i64::from(tz.to_offset(ts.to_timestamp()).seconds()) * 1000;
    TsMs((ts.0 + offset_ms).div_euclid(TsMs::HOUR) * TsMs::HOUR - offset_ms)
}

/// Start of the local day holding `ts` (midnight, or the first instant of the day where a zone
/// skips midnight).
pub fn local_day_start(ts: TsMs, tz: &TimeZone) -> TsMs {
    let zoned = ts.to_timestamp().to_zoned(tz.clone());
    match zoned.start_of_day() {
        Ok(z) => TsMs::from_timestamp(z.timestamp()),
        Err(_) => TsMs(ts.0.div_euclid(TsMs::DAY) * TsMs::DAY),
    }
}

/// Start of the local day after the one starting at `day_start`.
pub fn next_local_day(day_start: TsMs, tz: &TimeZone) -> TsMs {
    let zoned = day_start.to_timestamp().to_zoned(tz.clone());
    zoned
        .date()
        .checked_add(1.day())
        .ok()
        .and_then(|d| d.to_zoned(tz.clone()).ok())
        .map(|z| TsMs::from_timestamp(z.timestamp()))
        .unwrap_or(TsMs(day_start.0 + TsMs::DAY))
}

/// Start of the local month holding `ts`, and of the month after it.
pub fn local_month(ts: TsMs, tz: &TimeZone) -> (TsMs, TsMs) {
    let date = ts
        .to_timestamp()
        .to_zoned(tz.clone())
        .date()
        .first_of_month();
    let start = date
        .to_zoned(tz.clone())
        .map(|z| TsMs::from_timestamp(z.timestamp()))
        .unwrap_or(ts);
    let end = date
        .checked_add(1.month())
        .ok()
        .and_then(|d| d.to_zoned(tz.clone()).ok())
        .map(|z| TsMs::from_timestamp(z.timestamp()))
        .unwrap_or(TsMs(start.0 + 31 * TsMs::DAY));
    (start, end)
}

/// Looks a zone up by its IANA name, the form sites store.
pub fn parse_zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|e| format!("unknown time zone {name:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> TsMs {
        TsMs::parse_api(s).unwrap()
    }

    #[test]
    fn parses_rfc3339_and_millis() {
        assert_eq!(ts("1767632400000"), TsMs(1_767_632_400_000));
        assert_eq!(ts("2026-01-05T17:00:00Z"), TsMs(1_767_632_400_000));
        assert_eq!(ts("2026-01-05T18:00:00+01:00"), TsMs(1_767_632_400_000));
        assert!(TsMs::parse_api("yesterday").is_err());
    }

    #[test]
    fn spring_forward_day_lasts_23_hours() {
        let tz = parse_zone("Europe/Zurich").unwrap();
        let (s, e) = BucketTier::Day.bucket(ts("2026-03-29T12:00:00+02:00"), &tz);
        assert_eq!(s, ts("2026-03-29T00:00:00+01:00"));
        assert_eq!(e.0 - s.0, 23 * TsMs::HOUR);
    }

    #[test]
    fn fall_back_day_lasts_25_hours_and_keeps_both_one_oclock_hours() {
        let tz = parse_zone("Europe/Zurich").unwrap();
        let (s, e) = BucketTier::Day.bucket(ts("2026-10-25T12:00:00+01:00"), &tz);
        assert_eq!(e.0 - s.0, 25 * TsMs::HOUR);
        let first = BucketTier::Hour.bucket_start(ts("2026-10-25T02:30:00+02:00"), &tz);
        let second = BucketTier::Hour.bucket_start(ts("2026-10-25T02:30:00+01:00"), &tz);
        assert_eq!(second.0 - first.0, TsMs::HOUR);
    }

    #[test]
    fn half_hour_zone_hours_start_at_half_past_utc() {
        let tz = parse_zone("Asia/Kolkata").unwrap();
        let h = BucketTier::Hour.bucket_start(ts("2026-01-05T10:10:00Z"), &tz);
        assert_eq!(h, ts("2026-01-05T09:30:00Z"));
    }

    #[test]
    fn months_follow_the_zone() {
        let tz = parse_zone("America/New_York").unwrap();
        let (s, e) = local_month(ts("2026-03-01T03:00:00Z"), &tz);
        assert_eq!(s, ts("2026-02-01T00:00:00-05:00"));
        assert_eq!(e, ts("2026-03-01T00:00:00-05:00"));
    }
}
