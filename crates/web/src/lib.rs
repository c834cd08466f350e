//! Wattline's HTTP API. [`serve`] takes a bound listener and a shutdown signal, so tests and
//! the binary start it the same way, on any port.

pub mod accounts;
pub mod admin;
pub mod auth;
pub mod error;
pub mod ingest;
pub mod live;
pub mod mqtt;
pub mod openapi;
pub mod query;
pub mod ratelimit;
pub mod security;
pub mod summary;
pub mod tcp;
pub mod throttle;
pub mod tls;
pub mod ui;

pub use tls::serve_tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use wattline_domain::Limits;
use wattline_ingest::Engine;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    /// MQTT: bindings, pending devices, availability, disconnecting revoked devices.
    pub hub: Arc<wattline_mqtt::Hub>,
    /// The built-in broker's metrics, when it runs.
    pub broker_metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// The TCP socket-meter listener's metrics, when it runs.
    pub tcp_metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// SHA-256 of the admin token; the token itself is not kept in memory longer than startup.
    pub admin_token_hash: Arc<str>,
    pub limits: Arc<Limits>,
    /// Largest request body accepted (after decompression).
    pub max_body_bytes: usize,
    /// Site that devices created without one join.
    pub default_site: Arc<str>,
    /// Zone given to sites created without one.
    pub default_timezone: String,
    /// Failed-login bookkeeping (per account and per address).
    pub throttle: Arc<throttle::LoginThrottle>,
    /// Session cookies get `Secure` when the API is served over HTTPS.
    pub secure_cookies: bool,
    /// Per-client-address limit on the ingest routes.
    pub ingest_limiter: Arc<ratelimit::RateLimiter>,
}

/// One route of the API. The router, the OpenAPI check and the authorization test all read
/// [`routes`], so a route cannot be served without being documented and access-tested.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    handler: MethodRouter<AppState>,
    /// Ingest routes are limited per client address (`ingest_rate_limit`).
    pub rate_limited: bool,
}

impl Route {
    fn rate_limited(mut self) -> Route {
        self.rate_limited = true;
        self
    }
}

fn route<H, T>(method: Method, path: &'static str, handler: H) -> Route
where
    H: axum::handler::Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("routes use standard methods");
    Route {
        method,
        path,
        handler: axum::routing::on(filter, handler),
        rate_limited: false,
    }
}

/// Every route, with its method.
pub fn routes() -> Vec<Route> {
    use Method as M;
    vec![
        // the dashboard
        route(M::GET, "/", ui::index),
        route(M::GET, "/assets/{*path}", ui::assets),
        route(M::GET, "/healthz", healthz),
        route(M::GET, "/metrics", metrics),
        route(M::GET, "/api/v1/openapi.json", openapi::document),
        // ingest
        route(M::POST, "/api/v1/readings", ingest::write_json).rate_limited(),
        route(M::POST, "/write", ingest::write_line_protocol).rate_limited(),
        route(M::POST, "/api/v2/write", ingest::write_line_protocol).rate_limited(),
        // login and the caller's own account
        route(M::POST, "/api/v1/auth/login", accounts::login),
        route(M::POST, "/api/v1/auth/logout", accounts::logout),
        route(M::GET, "/api/v1/auth/me", accounts::me),
        route(M::POST, "/api/v1/auth/password", accounts::change_password),
        route(M::GET, "/api/v1/tokens", accounts::list_api_tokens),
        route(M::POST, "/api/v1/tokens", accounts::create_api_token),
        route(M::DELETE, "/api/v1/tokens/{id}", accounts::delete_api_token),
        // users and the audit log (admins)
        route(M::GET, "/api/v1/users", accounts::list_users),
        route(M::POST, "/api/v1/users", accounts::create_user),
        route(M::GET, "/api/v1/users/{id}", accounts::get_user),
        route(M::PATCH, "/api/v1/users/{id}", accounts::patch_user),
        route(M::DELETE, "/api/v1/users/{id}", accounts::delete_user),
        route(
            M::DELETE,
            "/api/v1/users/{id}/sessions",
            accounts::end_user_sessions,
        ),
        route(M::GET, "/api/v1/audit", accounts::list_audit),
        // sites
        route(M::GET, "/api/v1/sites", admin::list_sites),
        route(M::POST, "/api/v1/sites", admin::create_site),
        route(M::GET, "/api/v1/sites/{id}", admin::get_site),
        route(M::PATCH, "/api/v1/sites/{id}", admin::patch_site),
        route(M::DELETE, "/api/v1/sites/{id}", admin::delete_site),
        route(M::GET, "/api/v1/sites/{id}/summary", summary::site_summary),
        route(
            M::GET,
            "/api/v1/sites/{id}/tcp-enrollment",
            tcp::get_enrollment,
        ),
        route(
            M::PUT,
            "/api/v1/sites/{id}/tcp-enrollment",
            tcp::set_enrollment,
        ),
        route(
            M::GET,
            "/api/v1/sites/{id}/tokens",
            admin::list_ingest_tokens,
        ),
        route(
            M::POST,
            "/api/v1/sites/{id}/tokens",
            admin::create_ingest_token,
        ),
        route(
            M::DELETE,
            "/api/v1/sites/{id}/tokens/{token_id}",
            admin::delete_ingest_token,
        ),
        // devices
        route(M::GET, "/api/v1/devices", query::list_devices),
        route(M::GET, "/api/v1/device-stats", summary::device_stats),
        route(M::POST, "/api/v1/devices", admin::create_device),
        route(M::GET, "/api/v1/devices/{id}", admin::get_device),
        route(M::PATCH, "/api/v1/devices/{id}", admin::patch_device),
        route(M::DELETE, "/api/v1/devices/{id}", admin::delete_device),
        route(
            M::POST,
            "/api/v1/devices/{id}/token",
            admin::rotate_device_token,
        ),
        route(
            M::DELETE,
            "/api/v1/devices/{id}/token",
            admin::revoke_device_token,
        ),
        route(
            M::POST,
            "/api/v1/devices/{id}/mqtt",
            mqtt::rotate_credential,
        ),
        route(
            M::DELETE,
            "/api/v1/devices/{id}/mqtt",
            mqtt::revoke_credential,
        ),
        route(M::GET, "/api/v1/devices/{id}/bindings", mqtt::list_bindings),
        route(M::POST, "/api/v1/devices/{id}/bindings", mqtt::add_binding),
        route(
            M::DELETE,
            "/api/v1/devices/{id}/bindings/{format}/{vendor_id}",
            mqtt::delete_binding,
        ),
        route(M::GET, "/api/v1/pending-devices", mqtt::list_pending),
        route(
            M::POST,
            "/api/v1/pending-devices/{format}/{vendor_id}/accept",
            mqtt::accept_pending,
        ),
        route(
            M::POST,
            "/api/v1/pending-devices/{format}/{vendor_id}/reject",
            mqtt::reject_pending,
        ),
        // queries
        route(M::GET, "/api/v1/devices/{id}/series", query::series),
        route(M::GET, "/api/v1/devices/{id}/stats", query::stats),
        route(M::GET, "/api/v1/devices/{id}/energy", query::energy),
        route(M::GET, "/api/v1/export", query::export),
        route(M::GET, "/api/v1/live", live::live),
        route(
            M::GET,
            "/api/v1/rejected-readings",
            query::rejected_readings,
        ),
    ]
}

pub fn router(state: AppState) -> Router {
    let ingest_limit =
        axum::middleware::from_fn_with_state(state.ingest_limiter.clone(), ratelimit::limit);
    routes()
        .into_iter()
        .fold(Router::new(), |router, r| {
            let handler = if r.rate_limited {
                r.handler.layer(ingest_limit.clone())
            } else {
                r.handler
            };
            router.route(r.path, handler)
        })
        .fallback(not_found)
        .layer(axum::middleware::from_fn(close_if_body_unread))
        .with_state(state)
}

/// Answers given before the request body was read to its end (a refused token, a missing
/// right, a body over the limit, a rate limit) say `Connection: close`. The unread rest makes
/// the connection unusable, and a client that reused it would see its next request fail
/// with a reset instead of getting an answer. Which answers those are is learnt by watching
/// the body, not by listing status codes: any route with a body can refuse early.
async fn close_if_body_unread(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use http_body::Body as _;
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let body = axum::body::Body::new(WatchedBody {
        inner: body,
        finished: Arc::clone(&finished),
    });
    let mut response = next
        .run(axum::extract::Request::from_parts(parts, body))
        .await;
    if !finished.load(std::sync::atomic::Ordering::Relaxed) {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// A request body that notes when it has been read to its end.
struct WatchedBody {
    inner: axum::body::Body,
    finished: Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for WatchedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.finished
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.engine.store().list_sites().await {
        Ok(_) => {
            Json(json!({"status": "ok", "storage": state.engine.store().backend()})).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "error": e.to_string()})),
        )
            .into_response(),
    }
}

/// Prometheus metrics: for administrators (a scraper sends the admin token or an admin's
/// read token), since they reveal the installation's size and activity.
async fn metrics(State(state): State<AppState>, caller: auth::Caller) -> ApiResultResponse {
    caller.require_admin(false)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], {
        let mut text = state.engine.metrics().render();
        text.push_str(&state.hub.render_metrics());
        if let Some(broker) = &state.broker_metrics {
            text.push_str(&broker());
        }
        if let Some(tcp) = &state.tcp_metrics {
            text.push_str(&tcp());
        }
        text.push_str(&state.ingest_limiter.render());
        text
    })
        .into_response())
}

type ApiResultResponse = error::ApiResult<Response>;

async fn not_found() -> error::ApiError {
    error::ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such route; see /api/v1/openapi.json",
    )
}

/// Serves the API on `listener` until `shutdown` completes, then finishes in-flight requests.
/// [`serve_tls`] is the HTTPS twin.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shutdown = close_live_on(shutdown, &state);
    let app = security::apply(router(state), false);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Live streams never end on their own: close them when shutdown starts, or the graceful
/// shutdown would wait for every open dashboard.
pub(crate) fn close_live_on(
    shutdown: impl Future<Output = ()> + Send + 'static,
    state: &AppState,
) -> impl Future<Output = ()> + Send + 'static {
    let engine = state.engine.clone();
    async move {
        shutdown.await;
        engine.close_live();
    }
}
