use serde::{Deserialize, Serialize};
use wattline_domain::{Agg, BucketTier, DeviceId, Point, SeriesId, SiteId, TsMs};

/// A site ingest token's public part; the secret is kept only as a hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestToken {
    pub id: String,
    pub site: SiteId,
    pub name: String,
    pub created_at: TsMs,
}

/// A vendor identity seen on MQTT, `(format, vendor_id)`, bound to a registered device: its
/// messages are stored as that device's readings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    /// The payload family (the MQTT adapter's name for it).
    pub format: String,
    /// The device's own identifier within that family, case-sensitive.
    pub vendor_id: String,
    pub device: DeviceId,
    pub created_at: TsMs,
}

/// A vendor identity seen on MQTT that no binding knows, awaiting an admin's decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingDevice {
    pub format: String,
    pub vendor_id: String,
    pub first_seen: TsMs,
    pub last_seen: TsMs,
    pub messages: u64,
    pub last_topic: String,
    /// The first bytes of the last payload as lossy UTF-8, at most 512 characters (the caller
    /// truncates). NUL characters are stored as U+FFFD.
    pub sample: String,
}

/// PostgreSQL `text` cannot hold NUL, and a payload sample may contain one. Both backends
/// store the same replacement so that they agree; the sample is for display only.
pub(crate) fn storable_sample(sample: &str) -> std::borrow::Cow<'_, str> {
    if sample.contains('\0') {
        sample.replace('\0', "\u{FFFD}").into()
    } else {
        sample.into()
    }
}

/// A (device, channel) series and how far its rollups are known to be complete.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesInfo {
    pub id: SeriesId,
    pub device: DeviceId,
    pub channel: String,
    /// Every raw point with `ts <= rollup_watermark` is reflected in the rollup tables.
    /// Points after it are re-aggregated from raw after a crash.
    pub rollup_watermark: Option<TsMs>,
}

/// New points of one series, ascending by unique timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPoints {
    pub series: SeriesId,
    pub points: Vec<Point>,
}

/// One rollup bucket of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupRow {
    pub series: SeriesId,
    pub bucket: TsMs,
    pub agg: Agg,
}

/// Rollup changes written together with the watermarks they justify.
#[derive(Debug, Clone, Default)]
pub struct RollupWrite {
    /// Rows merged into what is stored (`Agg::merge`): the incremental path.
    pub merge: Vec<(BucketTier, RollupRow)>,
    /// Rows that replace what is stored: recomputed buckets after late data.
    pub replace: Vec<(BucketTier, RollupRow)>,
    pub watermarks: Vec<(SeriesId, TsMs)>,
}

impl RollupWrite {
    pub fn is_empty(&self) -> bool {
        self.merge.is_empty() && self.replace.is_empty() && self.watermarks.is_empty()
    }
}

/// How long each tier is kept; `None` keeps it forever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retention {
    pub raw_days: Option<u32>,
    pub minute_days: Option<u32>,
    pub hour_days: Option<u32>,
    pub day_days: Option<u32>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            raw_days: Some(30),
            minute_days: Some(365),
            hour_days: None,
            day_days: None,
        }
    }
}

impl Retention {
    pub fn keep_days(&self, tier: BucketTier) -> Option<u32> {
        match tier {
            BucketTier::Raw => self.raw_days,
            BucketTier::Minute => self.minute_days,
            BucketTier::Hour => self.hour_days,
            BucketTier::Day => self.day_days,
        }
    }
}

/// What `maintain` did, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaintenanceReport {
    pub chunks_compacted: u64,
    pub partitions_created: u64,
}

/// Which audit events to list. Every filter is optional; `limit` is required so a listing is
/// always bounded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuditQuery {
    /// Only events with `ts >= from`.
    pub from: Option<TsMs>,
    /// Only events with `ts < to`.
    pub to: Option<TsMs>,
    /// Only events whose actor is exactly this.
    pub actor: Option<String>,
    /// Only events with this action.
    pub action: Option<String>,
    /// Only events with `id < before_id`: the next page of a newest-first listing.
    pub before_id: Option<i64>,
    pub limit: usize,
}
