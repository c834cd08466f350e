//! Query routes: latest values, series at the right resolution, statistics, energy per
//! bucket in the site's zone, and streamed CSV export.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use wattline_domain::time::local_month;
use wattline_domain::{Agg, BucketTier, ChannelName, DeviceId, Point, Quantity, SeriesId, TsMs};

use crate::auth::Caller;
use crate::error::{ApiError, ApiPath, ApiQuery, ApiResult};
use crate::AppState;

const DEFAULT_MAX_POINTS: usize = 1000;
const MAX_MAX_POINTS: usize = 100_000;

fn point_json(p: &Point) -> Value {
    let mut m = Map::new();
    m.insert("ts".into(), json!(p.ts.to_string()));
    for (q, v) in p.values.iter() {
        m.insert(q.field().into(), json!(v));
    }
    Value::Object(m)
}

/// Adds `last_seen` and `latest` (per channel) to a device's JSON.
pub fn add_latest(state: &AppState, device: &DeviceId, body: &mut Value) {
    let mut latest = Map::new();
    let mut last_seen: Option<TsMs> = None;
    for (channel, series) in state.engine.registry().device_series(device) {
        if let Some(p) = state.engine.latest_of(series) {
            last_seen = last_seen.max(Some(p.ts));
            latest.insert(channel, point_json(&p));
        }
    }
    body["last_seen"] = last_seen.map_or(Value::Null, |t| json!(t.to_string()));
    body["latest"] = Value::Object(latest);
}

/// One point as `{"ts": RFC 3339, "<quantity>": value, …}`, serialized without building a
/// `Value` tree.
struct PointFields(Point);

impl serde::Serialize for PointFields {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("ts", &self.0.ts.to_string())?;
        for (q, v) in self.0.values.iter() {
            map.serialize_entry(q.field(), &v)?;
        }
        map.end()
    }
}

/// One device of `GET /api/v1/devices`, serialized straight to the body: a `Value` tree per
/// device was most of the route's time at 1,000 devices.
#[derive(serde::Serialize)]
struct DeviceRow<'a> {
    id: &'a DeviceId,
    name: &'a str,
    site: &'a wattline_domain::SiteId,
    kind: &'a str,
    labels: &'a BTreeMap<String, String>,
    created_at: String,
    availability: wattline_mqtt::Availability,
    last_seen: Option<String>,
    latest: BTreeMap<String, PointFields>,
}

pub async fn list_devices(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    caller.require_reader()?;
    let devices = state.engine.store().list_devices().await?;
    let now = wattline_domain::TsMs::now();
    let rows: Vec<DeviceRow> = devices
        .iter()
        .filter(|d| caller.principal.may_read_site(&d.site))
        .map(|d| {
            let mut latest = BTreeMap::new();
            let mut last_seen: Option<TsMs> = None;
            for (channel, series) in state.engine.registry().device_series(&d.id) {
                if let Some(p) = state.engine.latest_of(series) {
                    last_seen = last_seen.max(Some(p.ts));
                    latest.insert(channel, PointFields(p));
                }
            }
            DeviceRow {
                id: &d.id,
                name: &d.name,
                site: &d.site,
                kind: &d.kind,
                labels: &d.labels,
                created_at: d.created_at.to_string(),
                availability: state.hub.availability(&d.id, now),
                last_seen: last_seen.map(|t| t.to_string()),
                latest,
            }
        })
        .collect();
    Ok(Json(rows).into_response())
}

#[derive(Debug, Deserialize)]
pub struct RangeParams {
    from: Option<String>,
    to: Option<String>,
    quantity: Option<String>,
    channel: Option<String>,
    max_points: Option<usize>,
    interval: Option<String>,
}

fn parse_range(p: &RangeParams, default_span_ms: i64) -> ApiResult<(TsMs, TsMs)> {
    parse_span(p.from.as_deref(), p.to.as_deref(), default_span_ms)
}

/// `from` and `to` as the API takes them (RFC 3339 or ms); `to` defaults to now and `from` to
/// `default_span_ms` before it.
pub(crate) fn parse_span(
    from: Option<&str>,
    to: Option<&str>,
    default_span_ms: i64,
) -> ApiResult<(TsMs, TsMs)> {
    let to = match to {
        Some(t) => {
            TsMs::parse_api(t).map_err(|e| ApiError::bad_request("bad_time", format!("to: {e}")))?
        }
        None => TsMs(TsMs::now().0 + 1),
    };
    let from = match from {
        Some(t) => TsMs::parse_api(t)
            .map_err(|e| ApiError::bad_request("bad_time", format!("from: {e}")))?,
        None => TsMs(to.0 - default_span_ms),
    };
    if from >= to {
        return Err(ApiError::bad_request("bad_range", "from must be before to"));
    }
    Ok((from, to))
}

/// The device, when it exists and the caller may read its site; 404 alike otherwise.
fn readable_device(state: &AppState, caller: &Caller, id: &str) -> ApiResult<DeviceId> {
    let id = DeviceId::parse(id).map_err(|e| ApiError::bad_request("bad_id", e.to_string()))?;
    match state.engine.registry().device_site(&id) {
        Some(site) if caller.principal.may_read_site(&site) => Ok(id),
        _ => Err(ApiError::not_found(format!("device {id}"))),
    }
}

/// The series a query means: the named channel, or the device's only (or `main`) channel.
fn pick_series(
    state: &AppState,
    device: &DeviceId,
    channel: Option<&str>,
) -> ApiResult<Option<(String, SeriesId)>> {
    let all = state.engine.registry().device_series(device);
    if let Some(c) = channel {
        let c = ChannelName::parse(c)
            .map_err(|e| ApiError::bad_request("bad_channel", e.to_string()))?;
        return all
            .into_iter()
            .find(|(name, _)| name == c.as_str())
            .map(Some)
            .ok_or_else(|| ApiError::not_found(format!("channel {c} of device {device}")));
    }
    match all.len() {
        0 => Ok(None),
        1 => Ok(all.into_iter().next()),
        _ => all
            .iter()
            .find(|(name, _)| name == ChannelName::DEFAULT)
            .cloned()
            .map(Some)
            .ok_or_else(|| {
                let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
                ApiError::bad_request(
                    "channel_required",
                    format!("device {device} has channels {names:?}; name one with ?channel="),
                )
            }),
    }
}

/// `GET /api/v1/devices/{id}/series`: the finest tier whose points fit `max_points`.
pub async fn series(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<RangeParams>,
) -> ApiResult<Json<Value>> {
    let device = readable_device(&state, &caller, &id)?;
    let (from, to) = parse_range(&p, TsMs::DAY)?;
    let quantity = match p.quantity.as_deref() {
        None => Quantity::Power,
        Some(q) => Quantity::from_field(q).ok_or_else(|| {
            let known: Vec<&str> = Quantity::ALL.iter().map(|q| q.field()).collect();
            ApiError::bad_request(
                "bad_quantity",
                format!("quantity {q:?} is not one of {known:?}"),
            )
        })?,
    };
    let max_points = p.max_points.unwrap_or(DEFAULT_MAX_POINTS);
    if max_points == 0 || max_points > MAX_MAX_POINTS {
        return Err(ApiError::bad_request(
            "bad_max_points",
            format!("max_points must be 1..={MAX_MAX_POINTS}"),
        ));
    }
    let Some((channel, series)) = pick_series(&state, &device, p.channel.as_deref())? else {
        return Ok(Json(
            json!({"tier": "raw", "quantity": quantity.field(), "unit": quantity.unit(),
                              "channel": null, "t": [], "avg": [], "min": [], "max": []}),
        ));
    };
    let span = to.0.saturating_sub(from.0);
    let (mut t, mut avg, mut min, mut max) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut tier = None;
    // Raw readings when they fit: read one more than allowed to learn whether they do.
    if span / TsMs::MINUTE <= max_points as i64 {
        let points = state
            .engine
            .store()
            .read_raw(series, from, to, max_points + 1)
            .await?;
        if points.len() <= max_points {
            for pt in points.iter() {
                if let Some(v) = pt.values.get(quantity) {
                    t.push(pt.ts.0);
                    avg.push(v);
                    min.push(v);
                    max.push(v);
                }
            }
            tier = Some(BucketTier::Raw);
        }
    }
    let tier = match tier {
        Some(t) => t,
        None => {
            let tier = [BucketTier::Minute, BucketTier::Hour, BucketTier::Day]
                .into_iter()
                .find(|t| span / t.nominal_ms() <= max_points as i64)
                .unwrap_or(BucketTier::Day);
            for row in state.engine.rollups(tier, series, from, to).await? {
                let s = row.agg.stat(quantity);
                if let Some(a) = s.avg() {
                    t.push(row.bucket.0);
                    avg.push(a);
                    min.push(s.min);
                    max.push(s.max);
                }
            }
            tier
        }
    };
    Ok(Json(json!({
        "tier": tier.name(), "quantity": quantity.field(), "unit": quantity.unit(), "channel": channel,
        "t": t, "avg": avg, "min": min, "max": max,
    })))
}

/// The rollup rows that cover `[from, to)`: minutes for spans up to 31 days, hours beyond.
/// Ranges are widened to whole buckets of the tier used.
async fn covering_rows(
    state: &AppState,
    series: SeriesId,
    from: TsMs,
    to: TsMs,
) -> ApiResult<Vec<wattline_storage::RollupRow>> {
    let tz = state.engine.registry().series_zone(series);
    let tier = if to.0 - from.0 <= 31 * TsMs::DAY {
        BucketTier::Minute
    } else {
        BucketTier::Hour
    };
    let start = tier.bucket_start(from, &tz);
    Ok(state.engine.rollups(tier, series, start, to).await?)
}

fn stats_json(agg: &Agg) -> Value {
    let mut m = Map::new();
    for q in Quantity::ALL {
        let s = agg.stat(q);
        if let Some(avg) = s.avg() {
            m.insert(
                q.field().into(),
                json!({"avg": avg, "min": s.min, "max": s.max, "last": s.last, "n": s.n}),
            );
        }
    }
    m.insert("energy_import_kwh".into(), json!(agg.energy_import_kwh));
    m.insert("energy_export_kwh".into(), json!(agg.energy_export_kwh));
    Value::Object(m)
}

/// `GET /api/v1/devices/{id}/stats`: per channel, and energy summed over channels.
pub async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<RangeParams>,
) -> ApiResult<Json<Value>> {
    let device = readable_device(&state, &caller, &id)?;
    let (from, to) = parse_range(&p, TsMs::DAY)?;
    let mut channels = Map::new();
    let (mut import, mut export) = (0.0, 0.0);
    for (channel, series) in state.engine.registry().device_series(&device) {
        if p.channel.as_deref().is_some_and(|c| c != channel) {
            continue;
        }
        let mut agg = Agg::default();
        for row in covering_rows(&state, series, from, to).await? {
            agg.merge(&row.agg);
        }
        import += agg.energy_import_kwh;
        export += agg.energy_export_kwh;
        channels.insert(channel, stats_json(&agg));
    }
    Ok(Json(json!({
        "device": device, "from": from.to_string(), "to": to.to_string(),
        "energy_import_kwh": import, "energy_export_kwh": export, "channels": channels,
    })))
}

/// `GET /api/v1/devices/{id}/energy`: kWh per hour, day or month in the site's zone.
pub async fn energy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<RangeParams>,
) -> ApiResult<Json<Value>> {
    let device = readable_device(&state, &caller, &id)?;
    let interval = p.interval.as_deref().unwrap_or("day");
    let (tier, default_span) = match interval {
        "hour" => (BucketTier::Hour, TsMs::DAY),
        "day" => (BucketTier::Day, 31 * TsMs::DAY),
        "month" => (BucketTier::Day, 366 * TsMs::DAY),
        other => {
            return Err(ApiError::bad_request(
                "bad_interval",
                format!("interval {other:?} is not hour, day or month"),
            ))
        }
    };
    let (from, to) = parse_range(&p, default_span)?;
    let tz = state.engine.registry().device_zone(&device);
    let mut buckets: BTreeMap<TsMs, (f64, f64)> = BTreeMap::new();
    for (channel, series) in state.engine.registry().device_series(&device) {
        if p.channel.as_deref().is_some_and(|c| c != channel) {
            continue;
        }
        let start = tier.bucket_start(from, &tz);
        for row in state.engine.rollups(tier, series, start, to).await? {
            let key = if interval == "month" {
                local_month(row.bucket, &tz).0
            } else {
                row.bucket
            };
            let e = buckets.entry(key).or_default();
            e.0 += row.agg.energy_import_kwh;
            e.1 += row.agg.energy_export_kwh;
        }
    }
    let rows: Vec<Value> = buckets
        .into_iter()
        .map(|(t, (imp, exp))| {
            let local = t.to_timestamp().to_zoned(tz.clone());
            json!({"t": t.0, "start": local.to_string(), "import_kwh": imp, "export_kwh": exp})
        })
        .collect();
    Ok(Json(json!({
        "device": device, "interval": interval,
        "timezone": tz.iana_name().unwrap_or("UTC"), "buckets": rows,
    })))
}

#[derive(Debug, Deserialize)]
pub struct ExportParams {
    device: Option<String>,
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
}

/// `GET /api/v1/export`: raw readings as CSV, streamed a day of one series at a time so that
/// memory stays flat whatever the range.
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<ExportParams>,
) -> ApiResult<Response> {
    caller.require_reader()?;
    if let Some(f) = p.format.as_deref() {
        if f != "csv" {
            return Err(ApiError::bad_request(
                "bad_format",
                format!("format {f:?} is not supported; use csv"),
            ));
        }
    }
    let range = RangeParams {
        from: p.from,
        to: p.to,
        quantity: None,
        channel: None,
        max_points: None,
        interval: None,
    };
    let (from, to) = parse_range(&range, TsMs::DAY)?;
    let devices: Vec<DeviceId> = match p.device {
        Some(d) => vec![readable_device(&state, &caller, &d)?],
        None => state
            .engine
            .store()
            .list_devices()
            .await?
            .into_iter()
            .filter(|d| caller.principal.may_read_site(&d.site))
            .map(|d| d.id)
            .collect(),
    };
    let mut series = Vec::new();
    for d in devices {
        for (channel, s) in state.engine.registry().device_series(&d) {
            series.push((d.clone(), channel, s));
        }
    }
    let store = state.engine.store().clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut header = String::from("device,channel,ts");
        for q in Quantity::ALL {
            header.push(',');
            header.push_str(q.field());
        }
        header.push('\n');
        if tx.send(Ok(header.into())).await.is_err() {
            return;
        }
        for (device, channel, s) in series {
            let mut start = from;
            while start < to {
                let end = TsMs(start.0.saturating_add(TsMs::DAY).min(to.0));
                let points = match store.read_raw(s, start, end, usize::MAX).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "export read failed");
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                };
                if !points.is_empty() {
                    let mut chunk = String::with_capacity(points.len() * 80);
                    for pt in &points {
                        use std::fmt::Write as _;
                        let _ = write!(chunk, "{device},{channel},{}", pt.ts);
                        for q in Quantity::ALL {
                            chunk.push(',');
                            if let Some(v) = pt.values.get(q) {
                                let _ = write!(chunk, "{v}");
                            }
                        }
                        chunk.push('\n');
                    }
                    if tx.send(Ok(chunk.into())).await.is_err() {
                        return;
                    }
                }
                start = end;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"wattline-export.csv\"",
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `GET /api/v1/rejected-readings`: the most recent readings refused over HTTP, MQTT and TCP,
/// newest first (administrators; kept in memory, per node).
pub async fn rejected_readings(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    caller.require_admin(false)?;
    let list: Vec<Value> = state
        .engine
        .rejections()
        .recent()
        .into_iter()
        .map(|r| {
            json!({"ts": r.ts.to_string(), "transport": r.transport, "actor": r.actor,
                   "code": r.code, "message": r.message})
        })
        .collect();
    Ok(Json(json!({ "rejected": list })))
}
