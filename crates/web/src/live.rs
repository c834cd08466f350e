//! `GET /api/v1/live`: readings as they are committed, as Server-Sent Events.
//!
//! The engine publishes each durable commit once, as one shared batch; every stream filters
//! that batch for its caller on its own task, so a hundred dashboards cost the writer one
//! broadcast per commit. A stream that falls behind skips batches (and says so with a
//! `lagged` event, so the page can refetch) rather than slowing ingest down.

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::broadcast::error::RecvError;
use wattline_domain::{DeviceId, Principal, Reading, SiteId};
use wattline_ingest::{LiveBatch, Registry};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Proxies and browsers drop connections that stay silent; a comment this often keeps the
/// stream open and lets the server notice a client that has gone.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Most devices one stream may name; a site or no filter covers more.
const MAX_DEVICES: usize = 1000;

/// Which readings a stream carries.
enum Filter {
    Devices(HashSet<DeviceId>),
    Site(SiteId),
    /// Everything the caller may read.
    Readable(Principal),
}

impl Filter {
    fn wants(&self, registry: &Registry, r: &Reading) -> bool {
        match self {
            Filter::Devices(set) => set.contains(&r.device),
            Filter::Site(site) => registry.device_site(&r.device).as_ref() == Some(site),
            Filter::Readable(p) => registry
                .device_site(&r.device)
                .is_some_and(|s| p.may_read_site(&s)),
        }
    }
}

fn reading_json(r: &Reading) -> String {
    let mut values = Map::new();
    for (q, v) in r.values.iter() {
        values.insert(q.field().into(), json!(v));
    }
    json!({"device": r.device, "channel": r.channel.as_str(), "ts": r.ts.0, "values": Value::Object(values)})
        .to_string()
}

/// Parses `device=a&device=b`, `device=a,b` and `site=s`.
fn parse_query(query: Option<&str>) -> ApiResult<(Vec<DeviceId>, Option<SiteId>)> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::bad_request("bad_query", e.to_string()))?;
    let (mut devices, mut site) = (Vec::new(), None);
    for (k, v) in pairs {
        match k.as_str() {
            "device" => {
                for id in v.split(',').filter(|s| !s.is_empty()) {
                    devices.push(
                        DeviceId::parse(id)
                            .map_err(|e| ApiError::bad_request("bad_id", e.to_string()))?,
                    );
                }
            }
            "site" => {
                site = Some(
                    SiteId::parse(v).map_err(|e| ApiError::bad_request("bad_id", e.to_string()))?,
                )
            }
            _ => {}
        }
    }
    if site.is_some() && !devices.is_empty() {
        return Err(ApiError::bad_request(
            "bad_query",
            "name devices or a site, not both",
        ));
    }
    if devices.len() > MAX_DEVICES {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("at most {MAX_DEVICES} devices per stream; use site= for more"),
        ));
    }
    Ok((devices, site))
}

/// `GET /api/v1/live`: authorised like the reads it mirrors (a device or site the caller may
/// not read is a 404 before any event is sent).
pub async fn live(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    caller.require_reader()?;
    let (devices, site) = parse_query(query.as_deref())?;
    let filter = if let Some(site) = site {
        Filter::Site(caller.readable_site(&state, &site).await?.id)
    } else if !devices.is_empty() {
        let mut set = HashSet::new();
        for d in &devices {
            set.insert(caller.readable_device(&state, d).await?.id);
        }
        Filter::Devices(set)
    } else {
        Filter::Readable(caller.principal.clone())
    };
    let Some(rx) = state.engine.subscribe_live() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ));
    };
    let stream = events(state.engine.clone(), rx, filter);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

fn events(
    engine: wattline_ingest::Engine,
    rx: tokio::sync::broadcast::Receiver<LiveBatch>,
    filter: Filter,
) -> impl Stream<Item = Result<Event, Infallible>> {
    // Ends when the engine closes the channel (shutdown); otherwise lives as long as the
    // client stays connected, which axum notices on the next write (keep-alive included).
    futures::stream::unfold((rx, filter), move |(mut rx, filter)| {
        let engine = engine.clone();
        async move {
            let events: Vec<Event> = match rx.recv().await {
                Ok(batch) => batch
                    .iter()
                    .filter(|r| filter.wants(engine.registry(), r))
                    .map(|r| Event::default().event("reading").data(reading_json(r)))
                    .collect(),
                Err(RecvError::Lagged(n)) => vec![Event::default()
                    .event("lagged")
                    .data(json!({"missed_commits": n}).to_string())],
                Err(RecvError::Closed) => return None,
            };
            Some((events, (rx, filter)))
        }
    })
    .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_repeat_or_come_as_a_list() {
        let (d, s) = parse_query(Some("device=a&device=b,c")).unwrap();
        let ids: Vec<&str> = d.iter().map(|d| d.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(s.is_none());
        let (d, s) = parse_query(Some("site=home")).unwrap();
        assert!(d.is_empty());
        assert_eq!(s.unwrap().as_str(), "home");
        assert!(parse_query(Some("site=a&device=b")).is_err());
        assert!(parse_query(Some("device=bad%20id")).is_err());
        assert!(parse_query(None).unwrap().0.is_empty());
    }
}
