//! Wattline's HTTP API. [`serve`] takes a bound listener and a shutdown signal, so tests and
//! the binary start it the same way, on any port.

pub mod admin;
pub mod auth;
pub mod error;
pub mod ingest;
pub mod mqtt;
pub mod openapi;
pub mod query;
pub mod ratelimit;
pub mod security;
pub mod tcp;
pub mod tls;

pub use tls::serve_tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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
    /// Per-client-address limit on the ingest routes.
    pub ingest_limiter: Arc<ratelimit::RateLimiter>,
}

pub fn router(state: AppState) -> Router {
    let ingest_limit =
        axum::middleware::from_fn_with_state(state.ingest_limiter.clone(), ratelimit::limit);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route(
            "/api/v1/readings",
            post(ingest::write_json).layer(ingest_limit.clone()),
        )
        .route(
            "/write",
            post(ingest::write_line_protocol).layer(ingest_limit.clone()),
        )
        .route(
            "/api/v2/write",
            post(ingest::write_line_protocol).layer(ingest_limit),
        )
        .route(
            "/api/v1/sites",
            get(admin::list_sites).post(admin::create_site),
        )
        .route(
            "/api/v1/sites/{id}",
            get(admin::get_site)
                .patch(admin::patch_site)
                .delete(admin::delete_site),
        )
        .route(
            "/api/v1/sites/{id}/tcp-enrollment",
            get(tcp::get_enrollment).put(tcp::set_enrollment),
        )
        .route(
            "/api/v1/sites/{id}/tokens",
            get(admin::list_ingest_tokens).post(admin::create_ingest_token),
        )
        .route(
            "/api/v1/sites/{id}/tokens/{token_id}",
            axum::routing::delete(admin::delete_ingest_token),
        )
        .route(
            "/api/v1/devices",
            get(query::list_devices).post(admin::create_device),
        )
        .route(
            "/api/v1/devices/{id}",
            get(admin::get_device)
                .patch(admin::patch_device)
                .delete(admin::delete_device),
        )
        .route(
            "/api/v1/devices/{id}/token",
            post(admin::rotate_device_token),
        )
        .route(
            "/api/v1/devices/{id}/mqtt",
            post(mqtt::rotate_credential).delete(mqtt::revoke_credential),
        )
        .route(
            "/api/v1/devices/{id}/bindings",
            get(mqtt::list_bindings).post(mqtt::add_binding),
        )
        .route(
            "/api/v1/devices/{id}/bindings/{format}/{vendor_id}",
            axum::routing::delete(mqtt::delete_binding),
        )
        .route("/api/v1/pending-devices", get(mqtt::list_pending))
        .route(
            "/api/v1/pending-devices/{format}/{vendor_id}/accept",
            post(mqtt::accept_pending),
        )
        .route(
            "/api/v1/pending-devices/{format}/{vendor_id}/reject",
            post(mqtt::reject_pending),
        )
        .route("/api/v1/devices/{id}/series", get(query::series))
        .route("/api/v1/devices/{id}/stats", get(query::stats))
        .route("/api/v1/devices/{id}/energy", get(query::energy))
        .route("/api/v1/export", get(query::export))
        .fallback(not_found)
        .with_state(state)
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

async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], {
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
        .into_response()
}

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
    let app = security::apply(router(state), false);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
