//! TCP socket meters: whether a site enrolls meters that ask for an id (admin).

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::{parse_body, parse_site_id};
use crate::auth::require_admin;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Enrollment {
    open: bool,
}

/// `PUT /api/v1/sites/{id}/tcp-enrollment` with `{"open": true|false}`.
pub async fn set_enrollment(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    require_admin(&state, &headers).await?;
    let site = parse_site_id(&id)?;
    let Enrollment { open } = parse_body(&body)?;
    if !state.engine.store().set_tcp_enrollment(&site, open).await? {
        return Err(ApiError::not_found(format!("site {site}")));
    }
    tracing::info!(site = %site, open, "TCP meter enrollment changed");
    Ok(Json(json!({"site": site, "open": open})))
}

/// `GET /api/v1/sites/{id}/tcp-enrollment`.
pub async fn get_enrollment(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    require_admin(&state, &headers).await?;
    let site = parse_site_id(&id)?;
    let store = state.engine.store();
    if store.get_site(&site).await?.is_none() {
        return Err(ApiError::not_found(format!("site {site}")));
    }
    let open = store.tcp_enrollment_sites().await?.contains(&site);
    Ok(Json(json!({"site": site, "open": open})))
}
