//! What the overview and devices pages show, added up on the server: `GET
//! /api/v1/sites/{id}/summary` and `GET /api/v1/device-stats`.
//!
//! A browser adding a site up itself needs a request per device; at a thousand devices that is
//! seconds of round trips. Here the latest values come from memory and each device costs a
//! rollup read or two, run a few at a time.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use wattline_domain::time::local_month;
use wattline_domain::{BucketTier, Device, Quantity, SeriesId, SiteId, TsMs};

use crate::auth::Caller;
use crate::error::{ApiError, ApiPath, ApiQuery, ApiResult};
use crate::AppState;

/// Rollup reads in flight at once: enough to hide the store's latency, few enough that one
/// overview does not starve the ingest path of storage readers.
const CONCURRENT_READS: usize = 8;
const DEFAULT_TOP: usize = 50;
/// Enough for the overview to ask for every online device of a large site, so that live
/// updates can replace each device's power in a complete list.
const MAX_TOP: usize = 10_000;
/// Offline devices listed by name; the count covers all of them.
const OFFLINE_LISTED: usize = 200;
/// The chart of the site's total power covers this much, per minute.
const HISTORY_MS: i64 = TsMs::HOUR;

#[derive(Debug, Deserialize)]
pub struct SummaryParams {
    /// How many of the most consuming devices to list.
    top: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct DeviceNow {
    id: String,
    name: String,
    /// Watts now, or null when the device reports no power.
    power_w: Option<f64>,
    last_seen: Option<String>,
    online: bool,
    /// Imported energy since local midnight, to rank by consumption today.
    energy_today_kwh: f64,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    site: String,
    name: String,
    timezone: String,
    /// When this was computed (ms since the epoch).
    now: i64,
    /// Sum of the online devices' power now.
    power_w: f64,
    devices: usize,
    online: usize,
    /// Imported energy since local midnight and since the first of the local month.
    energy_today_kwh: f64,
    energy_month_kwh: f64,
    /// The site's total power per minute over the last hour: minute starts (ms) and watts
    /// (the sum of each device's mean power in that minute).
    history: History,
    /// Devices by power now, highest first.
    top: Vec<DeviceNow>,
    offline_count: usize,
    /// Offline devices, most recently seen first.
    offline: Vec<DeviceNow>,
}

#[derive(Debug, Serialize, Default)]
pub struct History {
    t: Vec<i64>,
    power_w: Vec<f64>,
}

/// The series that measure a device as a whole: a `total` (or `main`) channel when the meter
/// reports one beside its phases or circuits (adding those too would count twice), otherwise
/// every channel.
pub fn whole_device_series(channels: &[(String, SeriesId)]) -> Vec<SeriesId> {
    if channels.len() > 1 {
        if let Some((_, s)) = channels.iter().find(|(c, _)| c == "total" || c == "main") {
            return vec![*s];
        }
    }
    channels.iter().map(|(_, s)| *s).collect()
}

/// Per device: what the minute and day rollups add up to.
#[derive(Default)]
struct DeviceSums {
    today_kwh: f64,
    month_kwh: f64,
    /// Minute start → mean watts, summed over the device's counted series.
    minutes: BTreeMap<i64, f64>,
}

/// The registered devices that `keep` accepts.
async fn devices_where(
    state: &AppState,
    keep: impl Fn(&Device) -> bool,
) -> Result<Vec<Device>, wattline_storage::StoreError> {
    let mut devices = state.engine.store().list_devices().await?;
    devices.retain(|d| keep(d));
    Ok(devices)
}

pub async fn site_summary(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<SummaryParams>,
) -> ApiResult<Json<Summary>> {
    let id = SiteId::parse(&id).map_err(|e| ApiError::bad_request("bad_id", e.to_string()))?;
    let site = caller.readable_site(&state, &id).await?;
    let top_n = p.top.unwrap_or(DEFAULT_TOP);
    if top_n > MAX_TOP {
        return Err(ApiError::bad_request(
            "bad_top",
            format!("top must be at most {MAX_TOP}"),
        ));
    }
    let tz = wattline_domain::time::parse_zone(&site.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    let now = TsMs::now();
    let day_start = BucketTier::Day.bucket_start(now, &tz);
    let month_start = local_month(now, &tz).0;
    let history_start = TsMs(now.0 - HISTORY_MS).minute_start();

    let devices = devices_where(&state, |d| d.site == site.id).await?;

    let mut rows = Vec::with_capacity(devices.len());
    let mut counted: Vec<Vec<SeriesId>> = Vec::with_capacity(devices.len());
    for d in &devices {
        let series = whole_device_series(&state.engine.registry().device_series(&d.id));
        let mut power: Option<f64> = None;
        for s in &series {
            if let Some(v) = state
                .engine
                .latest_of(*s)
                .and_then(|p| p.values.get(Quantity::Power))
            {
                *power.get_or_insert(0.0) += v;
            }
        }
        let availability = state.hub.availability(&d.id, now);
        rows.push(DeviceNow {
            id: d.id.to_string(),
            name: d.name.clone(),
            power_w: power,
            last_seen: availability.last_seen.map(|t| t.to_string()),
            online: availability.online,
            energy_today_kwh: 0.0,
        });
        counted.push(series);
    }

    let engine = &state.engine;
    let sums: Vec<DeviceSums> = futures::stream::iter(counted)
        .map(|series| async move {
            let mut sums = DeviceSums::default();
            for s in series {
                for row in engine.rollups(BucketTier::Day, s, month_start, now).await? {
                    sums.month_kwh += row.agg.energy_import_kwh;
                    if row.bucket >= day_start {
                        sums.today_kwh += row.agg.energy_import_kwh;
                    }
                }
                for row in engine
                    .rollups(BucketTier::Minute, s, history_start, now)
                    .await?
                {
                    if let Some(avg) = row.agg.stat(Quantity::Power).avg() {
                        *sums.minutes.entry(row.bucket.0).or_default() += avg;
                    }
                }
            }
            Ok::<_, wattline_ingest::EngineError>(sums)
        })
        .buffered(CONCURRENT_READS)
        .try_collect()
        .await?;

    let mut minutes: BTreeMap<i64, f64> = BTreeMap::new();
    let (mut today, mut month) = (0.0, 0.0);
    for (row, s) in rows.iter_mut().zip(sums) {
        row.energy_today_kwh = s.today_kwh;
        today += s.today_kwh;
        month += s.month_kwh;
        for (m, w) in s.minutes {
            *minutes.entry(m).or_default() += w;
        }
    }
    let power_w = rows
        .iter()
        .filter(|r| r.online)
        .filter_map(|r| r.power_w)
        .sum();
    let online = rows.iter().filter(|r| r.online).count();
    let (on, mut off): (Vec<DeviceNow>, Vec<DeviceNow>) = rows.into_iter().partition(|r| r.online);
    let offline_count = off.len();
    // RFC 3339 UTC strings of one format sort as their instants do.
    off.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then_with(|| a.id.cmp(&b.id)));
    off.truncate(OFFLINE_LISTED);
    let mut top = on;
    top.sort_by(|a, b| {
        b.power_w
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&a.power_w.unwrap_or(f64::NEG_INFINITY))
            .then_with(|| a.id.cmp(&b.id))
    });
    top.truncate(top_n);
    Ok(Json(Summary {
        site: site.id.to_string(),
        name: site.name,
        timezone: site.timezone,
        now: now.0,
        power_w,
        devices: devices.len(),
        online,
        energy_today_kwh: today,
        energy_month_kwh: month,
        history: History {
            t: minutes.keys().copied().collect(),
            power_w: minutes.values().copied().collect(),
        },
        top,
        offline_count,
        offline: off,
    }))
}

#[derive(Debug, Deserialize)]
pub struct DeviceStatsParams {
    from: Option<String>,
    to: Option<String>,
    /// Only this site's devices.
    site: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PowerStats {
    avg: f64,
    min: f64,
    max: f64,
}

#[derive(Debug, Serialize)]
pub struct DeviceStats {
    device: String,
    /// Null when the device reported no power in the range.
    power: Option<PowerStats>,
    energy_import_kwh: f64,
}

#[derive(Debug, Serialize)]
pub struct DeviceStatsList {
    from: String,
    to: String,
    /// The rollup tier the figures come from; the range is widened to whole buckets of it.
    tier: &'static str,
    devices: Vec<DeviceStats>,
}

/// Ranges up to this long are read per minute; longer ones per hour (a day of minutes for a
/// thousand devices is already 1.4 million rows).
const MINUTE_TIER_UP_TO: i64 = 2 * TsMs::DAY;

/// `GET /api/v1/device-stats`: power avg/min/max and energy of every device the caller may
/// read (or one site's), over a range, in one request for the devices table.
///
/// A device measured by one series gets that series' exact figures. A device measured by
/// several (phases) gets the sum of their averages, and as min and max the extremes of the
/// per-bucket sums of their means: the phases' own extremes need not coincide, so adding them
/// would overstate the swing.
pub async fn device_stats(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<DeviceStatsParams>,
) -> ApiResult<Json<DeviceStatsList>> {
    caller.require_reader()?;
    let (from, to) = crate::query::parse_span(p.from.as_deref(), p.to.as_deref(), TsMs::DAY)?;
    let site = match p.site.as_deref() {
        Some(s) => {
            let id =
                SiteId::parse(s).map_err(|e| ApiError::bad_request("bad_id", e.to_string()))?;
            Some(caller.readable_site(&state, &id).await?.id)
        }
        None => None,
    };
    let tier = if to.0 - from.0 <= MINUTE_TIER_UP_TO {
        BucketTier::Minute
    } else {
        BucketTier::Hour
    };
    let devices = devices_where(&state, |d| {
        caller.principal.may_read_site(&d.site) && site.as_ref().is_none_or(|s| *s == d.site)
    })
    .await?;
    let engine = &state.engine;
    let rows: Vec<DeviceStats> = futures::stream::iter(devices)
        .map(|d| async move {
            let series = whole_device_series(&engine.registry().device_series(&d.id));
            let tz = engine.registry().device_zone(&d.id);
            let start = tier.bucket_start(from, &tz);
            let mut energy = 0.0;
            // Per series: its merged figures; per bucket: the sum of the series' means.
            let mut merged = Vec::with_capacity(series.len());
            let mut buckets: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
            for s in &series {
                let mut agg = wattline_domain::Agg::default();
                for row in engine.rollups(tier, *s, start, to).await? {
                    energy += row.agg.energy_import_kwh;
                    if let Some(avg) = row.agg.stat(Quantity::Power).avg() {
                        let b = buckets.entry(row.bucket.0).or_default();
                        b.0 += avg;
                        b.1 += 1;
                    }
                    agg.merge(&row.agg);
                }
                merged.push(agg);
            }
            let power = match merged.as_slice() {
                [one] => {
                    let s = one.stat(Quantity::Power);
                    s.avg().map(|avg| PowerStats {
                        avg,
                        min: s.min,
                        max: s.max,
                    })
                }
                many => {
                    let avgs: Vec<f64> = many
                        .iter()
                        .filter_map(|a| a.stat(Quantity::Power).avg())
                        .collect();
                    let whole: Vec<f64> = buckets
                        .values()
                        .filter(|(_, n)| *n == avgs.len())
                        .map(|(sum, _)| *sum)
                        .collect();
                    (!avgs.is_empty() && !whole.is_empty()).then(|| PowerStats {
                        avg: avgs.iter().sum(),
                        min: whole.iter().copied().fold(f64::INFINITY, f64::min),
                        max: whole.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    })
                }
            };
            Ok::<_, wattline_ingest::EngineError>(DeviceStats {
                device: d.id.to_string(),
                power,
                energy_import_kwh: energy,
            })
        })
        .buffered(CONCURRENT_READS)
        .try_collect()
        .await?;
    Ok(Json(DeviceStatsList {
        from: from.to_string(),
        to: to.to_string(),
        tier: tier.name(),
        devices: rows,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_total_channel_stands_for_its_phases() {
        let s = |n| SeriesId(n);
        let phases = vec![
            ("L1".into(), s(1)),
            ("L2".into(), s(2)),
            ("L3".into(), s(3)),
        ];
        assert_eq!(whole_device_series(&phases), vec![s(1), s(2), s(3)]);
        let mut with_total = phases.clone();
        with_total.push(("total".into(), s(4)));
        assert_eq!(whole_device_series(&with_total), vec![s(4)]);
        assert_eq!(whole_device_series(&[("total".into(), s(9))]), vec![s(9)]);
        assert!(whole_device_series(&[]).is_empty());
    }
}
