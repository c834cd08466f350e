//! `GET /api/v1/live`: readings as they are committed, as Server-Sent Events.
//!
//! The engine publishes each durable commit once, as one shared batch; every stream picks
//! its readings out of that batch on its own task, through an index by device that the first
//! stream builds for all, so a hundred dashboards cost the writer one broadcast per commit and
//! each other a look-up per device. A stream that falls behind skips batches (and says so with a
//! `lagged` event, so the page can refetch) rather than slowing ingest down.

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use wattline_domain::{DeviceId, Principal, Quantity, Reading, SiteId};
use wattline_ingest::live::DeviceIndex;
use wattline_ingest::{LiveBatch, Registry, RegistryView};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::summary::whole_device_series;
use crate::AppState;

/// Proxies and browsers drop connections that stay silent; a comment this often keeps the
/// stream open and lets the server notice a client that has gone.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Most devices one stream may name; a site or no filter covers more.
const MAX_DEVICES: usize = 1000;
/// How often an open stream checks that its caller may still read what it shows: a logout,
/// a disabled account, a revoked token or a changed site assignment ends it within this.
const RECHECK: Duration = Duration::from_secs(10);

/// How often a `latest=1` stream sends what changed: an overview of a thousand meters wants
/// each meter's power about once a second, not every reading of every meter.
const LATEST_EVERY: Duration = Duration::from_secs(1);

/// Which readings a stream carries.
enum Filter {
    Devices(HashSet<DeviceId>),
    Site(SiteId),
    /// Everything the caller may read.
    Readable(Principal),
}

impl Filter {
    /// Whether `principal` may still read everything this filter shows; a `Readable` filter
    /// takes the new principal, so changed site assignments apply from now on.
    fn still_allowed(&mut self, registry: &Registry, principal: Principal) -> bool {
        match self {
            Filter::Devices(set) => set.iter().all(|d| {
                registry
                    .device_site(d)
                    .is_some_and(|s| principal.may_read_site(&s))
            }),
            Filter::Site(site) => principal.may_read_site(site),
            Filter::Readable(p) => {
                *p = principal;
                true
            }
        }
    }

    /// Whether a device's readings belong on this stream, looked up in a view taken once per
    /// commit: a lock and a cloned site id per reading and stream was most of what a hundred
    /// streams cost at full ingest.
    fn wants_device(&self, registry: &RegistryView<'_>, device: &DeviceId) -> bool {
        match self {
            Filter::Devices(set) => set.contains(device),
            Filter::Site(site) => registry.device_site(device) == Some(site),
            Filter::Readable(p) => registry
                .device_site(device)
                .is_some_and(|s| p.may_read_site(s)),
        }
    }

    /// The devices of a commit this stream carries: a device page looks its own devices up
    /// in the commit's shared index; a site or everything looks at each device of the commit
    /// once, never at each reading.
    fn devices_in<'c>(
        &'c self,
        registry: &RegistryView<'_>,
        index: &'c DeviceIndex,
    ) -> Vec<&'c DeviceId> {
        match self {
            Filter::Devices(set) => set.iter().filter(|d| index.contains(d)).collect(),
            _ => index
                .devices()
                .filter(|d| self.wants_device(registry, d))
                .collect(),
        }
    }
}

fn reading_json(r: &Reading) -> String {
    struct Values<'a>(&'a wattline_domain::Values);
    impl serde::Serialize for Values<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = serializer.serialize_map(None)?;
            for (q, v) in self.0.iter() {
                map.serialize_entry(q.field(), &v)?;
            }
            map.end()
        }
    }
    #[derive(serde::Serialize)]
    struct Row<'a> {
        device: &'a str,
        channel: &'a str,
        ts: i64,
        values: Values<'a>,
    }
    serde_json::to_string(&Row {
        device: r.device.as_str(),
        channel: r.channel.as_str(),
        ts: r.ts.0,
        values: Values(&r.values),
    })
    .expect("a reading serializes")
}

/// What a stream was asked for.
#[derive(Debug, Default)]
struct LiveQuery {
    devices: Vec<DeviceId>,
    site: Option<SiteId>,
    mode: Mode,
}

/// How a stream sends what it carries.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum Mode {
    /// An event `reading` per reading.
    #[default]
    Each,
    /// `batch=1`: an event `readings` per commit, with the commit's readings for this stream
    /// as an array: a device page at a busy meter gets one event per commit, not hundreds.
    Batch,
    /// `latest=1`: once a second, the power now of each device that sent something.
    Latest,
}

/// `1`/`true` or `0`/`false`.
fn flag(name: &str, v: &str) -> ApiResult<bool> {
    match v {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(ApiError::bad_request(
            "bad_query",
            format!("{name} must be 1 or 0, not {v:?}"),
        )),
    }
}

/// Parses `device=a&device=b`, `device=a,b`, `site=s`, `batch=1` and `latest=1`.
fn parse_query(query: Option<&str>) -> ApiResult<LiveQuery> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::bad_request("bad_query", e.to_string()))?;
    let (mut devices, mut site, mut latest, mut batch) = (Vec::new(), None, false, false);
    for (k, v) in pairs {
        match k.as_str() {
            "latest" => latest = flag("latest", &v)?,
            "batch" => batch = flag("batch", &v)?,
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
    let mode = match (latest, batch) {
        (true, true) => {
            return Err(ApiError::bad_request(
                "bad_query",
                "latest=1 and batch=1 do not go together",
            ))
        }
        (true, false) => Mode::Latest,
        (false, true) => Mode::Batch,
        (false, false) => Mode::Each,
    };
    Ok(LiveQuery {
        devices,
        site,
        mode,
    })
}

/// `GET /api/v1/live`: authorised like the reads it mirrors (a device or site the caller may
/// not read is a 404 before any event is sent).
pub async fn live(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    caller.require_reader()?;
    let asked = parse_query(query.as_deref())?;
    let filter = if let Some(site) = asked.site {
        Filter::Site(caller.readable_site(&state, &site).await?.id)
    } else if !asked.devices.is_empty() {
        let mut set = HashSet::new();
        for d in &asked.devices {
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
    let credentials = Credentials {
        headers,
        query_password: query_password(query.as_deref()),
    };
    let stream = events(state, rx, filter, credentials, asked.mode);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// What the request authenticated with, to check again while the stream is open.
struct Credentials {
    headers: HeaderMap,
    query_password: Option<String>,
}

/// InfluxDB-style `?p=` token, as the `Caller` extractor reads it.
fn query_password(query: Option<&str>) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query.unwrap_or(""))
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "p")
        .map(|(_, v)| v)
}

struct StreamState {
    state: AppState,
    rx: tokio::sync::broadcast::Receiver<LiveBatch>,
    filter: Filter,
    credentials: Credentials,
    recheck: tokio::time::Interval,
    /// `latest=1`: what to send once a second instead of every reading.
    coalesced: Option<Coalesced>,
    /// `batch=1`: one event per commit.
    batch: bool,
}

struct Coalesced {
    /// Devices with a new reading since the last send.
    changed: HashSet<DeviceId>,
    every: tokio::time::Interval,
}

impl Coalesced {
    /// One `latest` event: each changed device's power now (as the site summary counts it)
    /// and its newest reading's time, or no event when nothing came.
    fn take(&mut self, state: &AppState) -> Option<Event> {
        if self.changed.is_empty() {
            return None;
        }
        let engine = &state.engine;
        let rows: Vec<Value> = self
            .changed
            .drain()
            .map(|device| {
                let series = whole_device_series(&engine.registry().device_series(&device));
                let (mut power, mut ts) = (None::<f64>, None);
                for p in series.iter().filter_map(|s| engine.latest_of(*s)) {
                    ts = ts.max(Some(p.ts.0));
                    if let Some(v) = p.values.get(Quantity::Power) {
                        *power.get_or_insert(0.0) += v;
                    }
                }
                json!({"device": device, "ts": ts, "power_w": power})
            })
            .collect();
        Some(
            Event::default()
                .event("latest")
                .data(Value::Array(rows).to_string()),
        )
    }
}

/// The next `latest` event of a coalescing stream; never, for a stream of every reading.
async fn next_send(coalesced: &mut Option<Coalesced>, state: &AppState) -> Option<Event> {
    match coalesced {
        Some(c) => {
            c.every.tick().await;
            c.take(state)
        }
        None => std::future::pending().await,
    }
}

fn events(
    state: AppState,
    rx: tokio::sync::broadcast::Receiver<LiveBatch>,
    filter: Filter,
    credentials: Credentials,
    mode: Mode,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let coalesced = (mode == Mode::Latest).then(|| {
        let mut every = tokio::time::interval(LATEST_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Coalesced {
            changed: HashSet::new(),
            every,
        }
    });
    let s = StreamState {
        state,
        rx,
        filter,
        credentials,
        recheck,
        coalesced,
        batch: mode == Mode::Batch,
    };
    // Ends when the engine closes the channel (shutdown) or the caller loses access;
    // otherwise lives as long as the client stays connected, which axum notices on the next
    // write (keep-alive included).
    futures::stream::unfold(s, |mut s| async move {
        let events: Vec<Event> = tokio::select! {
            received = s.rx.recv() => match received {
                Ok(commit) => {
                    let index = commit.index().await;
                    let devices = {
                        let registry = s.state.engine.registry().view();
                        s.filter.devices_in(&registry, index)
                    };
                    match &mut s.coalesced {
                        Some(c) => {
                            for d in devices {
                                if !c.changed.contains(d) {
                                    c.changed.insert(d.clone());
                                }
                            }
                            Vec::new()
                        }
                        None if s.batch => {
                            let mut data = String::from("[");
                            for r in devices.into_iter().flat_map(|d| commit.of_device(index, d)) {
                                if data.len() > 1 {
                                    data.push(',');
                                }
                                data.push_str(&reading_json(r));
                            }
                            data.push(']');
                            if data.len() > 2 {
                                vec![Event::default().event("readings").data(data)]
                            } else {
                                Vec::new()
                            }
                        }
                        None => devices
                            .into_iter()
                            .flat_map(|d| commit.of_device(index, d))
                            .map(|r| Event::default().event("reading").data(reading_json(r)))
                            .collect(),
                    }
                }
                Err(RecvError::Lagged(n)) => vec![Event::default()
                    .event("lagged")
                    .data(json!({"missed_commits": n}).to_string())],
                Err(RecvError::Closed) => return None,
            },
            event = next_send(&mut s.coalesced, &s.state) => event.into_iter().collect(),
            _ = s.recheck.tick() => {
                let principal = crate::auth::authenticate(
                    &s.state,
                    &s.credentials.headers,
                    s.credentials.query_password.as_deref(),
                    &Method::GET,
                )
                .await
                .ok()?;
                if !s.filter.still_allowed(s.state.engine.registry(), principal) {
                    return None;
                }
                Vec::new()
            }
        };
        Some((events, s))
    })
    .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_repeat_or_come_as_a_list() {
        let q = parse_query(Some("device=a&device=b,c")).unwrap();
        let ids: Vec<&str> = q.devices.iter().map(|d| d.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(q.site.is_none());
        assert_eq!(q.mode, Mode::Each);
        let q = parse_query(Some("site=home&latest=1")).unwrap();
        assert!(q.devices.is_empty());
        assert_eq!(q.site.unwrap().as_str(), "home");
        assert_eq!(q.mode, Mode::Latest);
        assert_eq!(
            parse_query(Some("device=a&batch=1")).unwrap().mode,
            Mode::Batch
        );
        assert!(parse_query(Some("device=a&batch=1&latest=1")).is_err());
        assert!(parse_query(Some("site=a&device=b")).is_err());
        assert!(parse_query(Some("device=bad%20id")).is_err());
        assert!(parse_query(Some("latest=yes")).is_err());
        assert!(parse_query(None).unwrap().devices.is_empty());
    }
}
