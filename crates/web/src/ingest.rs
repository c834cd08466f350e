//! `POST /api/v1/readings` (JSON) and `POST /write`, `POST /api/v2/write` (line protocol).
//!
//! A batch with some bad lines is stored in part: every good reading is stored (durably, as
//! for any success) and the answer is `400 partial_write` listing the rejected lines, the way
//! InfluxDB answers a partial write. Telegraf and Influx clients then drop the bad lines
//! instead of retrying the batch forever. A batch whose every line is good gets 204 (line
//! protocol) or 200 with the count (JSON).

use std::collections::BTreeMap;
use std::io::Read;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use wattline_decode::{
    count_lines, parse_json_readings, parse_line_protocol, parse_line_protocol_into,
    readings_capacity, LineError, Outcome, Precision,
};

use wattline_domain::{Limits, TsMs};

use crate::auth::{authenticate, Principal};
use crate::error::{ApiError, ApiQuery, ApiResult};
use crate::AppState;

/// How many rejected lines an answer lists; the count covers all of them.
const MAX_LISTED_ERRORS: usize = 100;

#[derive(Debug, Deserialize)]
pub struct WriteParams {
    precision: Option<String>,
    /// InfluxDB 1.x clients send credentials as `u` and `p`.
    p: Option<String>,
}

/// Reads the body within the configured limit, gunzipping it when the client compressed it
/// (Telegraf's InfluxDB v2 output does by default).
async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> ApiResult<Bytes> {
    let limit = state.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than the limit of {limit} bytes; send smaller batches"),
        )
    };
    // A declared length over the limit is refused before reading a byte of the body.
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let raw = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    let gzip = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::bad_request("bad_gzip", format!("body is not valid gzip: {e}")))?;
    if out.len() > limit {
        return Err(too_large());
    }
    Ok(out.into())
}

/// Drops readings whose device does not exist or that the caller may not write. They are
/// reported once per device with a count: a gateway with one unregistered meter should see
/// one clear error, not thousands.
fn authorize(state: &AppState, principal: &Principal, outcome: &mut Outcome) {
    let mut refused: BTreeMap<wattline_domain::DeviceId, (&'static str, usize)> = BTreeMap::new();
    let verdicts: Vec<Option<&'static str>> = {
        // One registry lock for the batch; a look-up per reading costs about what a per-batch
        // map of verdicts did, without building one.
        let registry = state.engine.registry().view();
        let verdict = |r: &wattline_domain::Reading| match registry.device_site(&r.device) {
            None => Some("unknown_device"),
            // A user is not told that a device of someone else's site exists.
            Some(site)
                if matches!(principal, Principal::User(_)) && !principal.may_read_site(site) =>
            {
                Some("unknown_device")
            }
            Some(site) if !principal.may_write(&r.device, site) => Some("forbidden_device"),
            Some(_) => None,
        };
        if outcome.readings.iter().all(|r| verdict(r).is_none()) {
            return;
        }
        outcome.readings.iter().map(verdict).collect()
    };
    let mut verdict = verdicts.into_iter();
    outcome
        .readings
        .retain(|reading| match verdict.next().flatten() {
            None => true,
            Some(code) => {
                state.engine.metrics().reject(code, 1);
                refused.entry(reading.device.clone()).or_insert((code, 0)).1 += 1;
                false
            }
        });
    for (device, (code, n)) in refused {
        let why = if code == "unknown_device" {
            "is not registered (create it with POST /api/v1/devices)"
        } else {
            "may not be written with this token"
        };
        outcome.errors.push(LineError {
            line: 0,
            field: Some("device".into()),
            code,
            message: format!("device {:?} {why}: {n} reading(s) refused", device.as_str()),
        });
    }
}

/// Stores what is good and says what was not.
async fn store(
    state: &AppState,
    principal: Principal,
    mut outcome: Outcome,
    transport: &str,
) -> ApiResult<(usize, Outcome)> {
    let metrics = state.engine.metrics();
    for e in &outcome.errors {
        metrics.reject(e.code, 1);
    }
    authorize(state, &principal, &mut outcome);
    state.engine.rejections().note(
        transport,
        &principal.actor(),
        outcome.errors.iter().map(|e| (e.code, e.message.as_str())),
    );
    if !outcome.errors.is_empty() {
        let first = &outcome.errors[0];
        tracing::warn!(
            transport,
            rejected = outcome.errors.len(),
            first_code = first.code,
            first = %first.message,
            "rejected readings"
        );
    }
    let readings = std::mem::take(&mut outcome.readings);
    let accepted = state.engine.write(readings).await?;
    Ok((accepted, outcome))
}

fn partial_error(accepted: usize, outcome: &Outcome) -> ApiError {
    let listed: Vec<_> = outcome
        .errors
        .iter()
        .take(MAX_LISTED_ERRORS)
        .map(|e| json!({"line": e.line, "field": e.field, "code": e.code, "message": e.message}))
        .collect();
    let first = &outcome.errors[0];
    let (status, code) =
        if accepted == 0 && outcome.errors.iter().all(|e| e.code == "unknown_device") {
            (StatusCode::NOT_FOUND, "unknown_device")
        } else if accepted == 0 && outcome.errors.iter().all(|e| e.code == "forbidden_device") {
            (StatusCode::FORBIDDEN, "forbidden_device")
        } else if accepted == 0 {
            (StatusCode::BAD_REQUEST, first.code)
        } else {
            (StatusCode::BAD_REQUEST, "partial_write")
        };
    let message = format!(
        "{} of {} readings rejected, {accepted} stored; first: {}",
        outcome.errors.len(),
        outcome.errors.len() + accepted,
        first.message
    );
    ApiError::new(status, code, message).with_details(json!({
        "accepted": accepted,
        "rejected": outcome.errors.len(),
        "lines": listed,
    }))
}

pub async fn write_line_protocol(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<WriteParams>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let principal = authenticate(
        &state,
        &headers,
        params.p.as_deref(),
        &axum::http::Method::POST,
    )
    .await?;
    let precision = match params.precision.as_deref() {
        None | Some("") => Precision::Ns,
        Some(p) => Precision::parse(p).ok_or_else(|| {
            ApiError::bad_request(
                "bad_precision",
                format!("precision {p:?} is not one of ns, us, ms, s"),
            )
        })?,
    };
    let body = read_body(&state, &headers, body).await?;
    let now = TsMs::now();
    let limits = state.limits.clone();
    let outcome = parse_lp_parallel(body, precision, now, limits).await?;
    let (accepted, outcome) = store(&state, principal, outcome, "http-lp").await?;
    if outcome.errors.is_empty() {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(partial_error(accepted, &outcome))
    }
}

/// Bodies at least this large are parsed in two halves at once: parsing sits on the critical
/// path of every write, and a 5,000-line Telegraf batch takes milliseconds.
const PARALLEL_PARSE_BYTES: usize = 256 * 1024;

/// Parses line protocol off the async workers, in two halves when the body is large.
async fn parse_lp_parallel(
    body: Bytes,
    precision: Precision,
    now: TsMs,
    limits: Arc<Limits>,
) -> ApiResult<Outcome> {
    let failed = |_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "parser failed",
        )
    };
    let split = (body.len() >= PARALLEL_PARSE_BYTES)
        .then(|| {
            let mid = body.len() / 2;
            body[mid..]
                .iter()
                .position(|b| *b == b'\n')
                .map(|i| mid + i + 1)
        })
        .flatten();
    let Some(split) = split else {
        return tokio::task::spawn_blocking(move || {
            parse_line_protocol(&body, precision, now, &limits)
        })
        .await
        .map_err(failed);
    };
    let (head, tail) = (body.slice(..split), body.slice(split..));
    // The head ends with a newline, so this is the number of its lines.
    let head_lines = count_lines(&head);
    let (head_room, tail_room) = (readings_capacity(&head), readings_capacity(&tail));
    let tail_limits = limits.clone();
    let second = tokio::task::spawn_blocking(move || {
        let mut out = Outcome::default();
        out.readings.reserve_exact(tail_room);
        parse_line_protocol_into(&tail, precision, now, &tail_limits, &mut out);
        out
    });
    let first = tokio::task::spawn_blocking(move || {
        // Room for both halves, so that appending the second copies only its readings.
        let mut out = Outcome::default();
        out.readings.reserve_exact(head_room + tail_room);
        parse_line_protocol_into(&head, precision, now, &limits, &mut out);
        out
    });
    let (mut first, second) = (first.await.map_err(failed)?, second.await.map_err(failed)?);
    first.readings.extend(second.readings);
    first.lines += second.lines;
    first.unknown_fields.extend(second.unknown_fields);
    for mut e in second.errors {
        if e.line > 0 {
            // The second half counted its lines from 1; so do the messages.
            let old_prefix = format!("line {}:", e.line);
            e.line += head_lines;
            if let Some(rest) = e.message.strip_prefix(&old_prefix) {
                e.message = format!("line {}:{rest}", e.line);
            }
        }
        first.errors.push(e);
    }
    Ok(first)
}

pub async fn write_json(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let principal = authenticate(&state, &headers, None, &axum::http::Method::POST).await?;
    let body = read_body(&state, &headers, body).await?;
    let now = TsMs::now();
    let limits = state.limits.clone();
    let outcome = tokio::task::spawn_blocking(move || parse_json_readings(&body, now, &limits))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "parser failed",
            )
        })?;
    let (accepted, outcome) = store(&state, principal, outcome, "http-json").await?;
    if outcome.errors.is_empty() {
        Ok(Json(json!({
            "accepted": accepted,
            "unknown_fields": outcome.unknown_fields,
        }))
        .into_response())
    } else {
        Err(partial_error(accepted, &outcome))
    }
}
