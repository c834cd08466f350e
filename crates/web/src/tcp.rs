//! TCP socket meters: whether a site enrolls meters that ask for an id (the site's managers).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::{parse_body, parse_site_id};
use crate::auth::Caller;
use crate::error::{ApiError, ApiPath, ApiResult};
use crate::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Enrollment {
    open: bool,
}

/// `PUT /api/v1/sites/{id}/tcp-enrollment` with `{"open": true|false}`.
pub async fn set_enrollment(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let site = parse_site_id(&id)?;
    caller.manageable_site(&state, &site).await?;
    let Enrollment { open } = parse_body(&body)?;
    if !state.engine.store().set_tcp_enrollment(&site, open).await? {
        return Err(ApiError::not_found(format!("site {site}")));
    }
    tracing::info!(site = %site, open, "TCP meter enrollment changed");
    let target = format!("site:{site}");
    caller
        .audit(
            &state,
            "tcp_enrollment_changed",
            &target,
            json!({"open": open}),
        )
        .await;
    Ok(Json(json!({"site": site, "open": open})))
}

/// `GET /api/v1/sites/{id}/tcp-enrollment`.
pub async fn get_enrollment(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let site = parse_site_id(&id)?;
    caller.readable_site(&state, &site).await?;
    let open = state
        .engine
        .store()
        .tcp_enrollment_sites()
        .await?
        .contains(&site);
    Ok(Json(json!({"site": site, "open": open})))
}
