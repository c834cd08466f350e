//! Administration: sites, devices and their tokens. Admin token only, until user accounts.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use wattline_domain::time::parse_zone;
use wattline_domain::{Device, DeviceId, Site, SiteId, TsMs};
use wattline_storage::IngestToken;

use crate::auth::{hash_token, new_token, require_admin};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

pub fn parse_device_id(id: &str) -> ApiResult<DeviceId> {
    DeviceId::parse(id).map_err(|e| ApiError::bad_request("bad_id", e.to_string()))
}

pub fn parse_site_id(id: &str) -> ApiResult<SiteId> {
    SiteId::parse(id).map_err(|e| ApiError::bad_request("bad_id", e.to_string()))
}

fn check_zone(tz: &str) -> ApiResult<()> {
    parse_zone(tz)
        .map(|_| ())
        .map_err(|e| ApiError::bad_request("bad_timezone", e))
}

fn check_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(ApiError::bad_request(
            "bad_name",
            "name must be 1 to 200 characters",
        ));
    }
    Ok(())
}

async fn site_or_404(state: &AppState, id: &SiteId) -> ApiResult<Site> {
    state
        .engine
        .store()
        .get_site(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("site {id}")))
}

async fn device_or_404(state: &AppState, id: &DeviceId) -> ApiResult<Device> {
    state
        .engine
        .store()
        .get_device(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("device {id}")))
}

/// A JSON body, with a clear error when it is not the expected shape.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("request body: {e}")))
}

/// A random identifier for objects created without one.
fn generated_id(prefix: &str) -> String {
    let token = new_token(prefix);
    token[..prefix.len() + 13].to_owned()
}

// ---- sites

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSite {
    id: Option<String>,
    name: String,
    timezone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SitePatch {
    name: Option<String>,
    timezone: Option<String>,
}

pub async fn create_site(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    require_admin(&state, &headers).await?;
    let new: NewSite = parse_body(&body)?;
    check_name(&new.name)?;
    let timezone = new
        .timezone
        .unwrap_or_else(|| state.default_timezone.clone());
    check_zone(&timezone)?;
    let id = parse_site_id(&new.id.unwrap_or_else(|| generated_id("site")))?;
    let site = Site {
        id,
        name: new.name,
        timezone,
        created_at: TsMs::now(),
    };
    state.engine.store().create_site(&site).await?;
    state.engine.registry().put_site(&site);
    Ok((StatusCode::CREATED, Json(site_json(&site))).into_response())
}

fn site_json(site: &Site) -> Value {
    json!({"id": site.id, "name": site.name, "timezone": site.timezone, "created_at": site.created_at.to_string()})
}

pub async fn list_sites(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    require_admin(&state, &headers).await?;
    let sites = state.engine.store().list_sites().await?;
    Ok(Json(Value::Array(sites.iter().map(site_json).collect())))
}

pub async fn get_site(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    require_admin(&state, &headers).await?;
    let id = parse_site_id(&id)?;
    let site = site_or_404(&state, &id).await?;
    Ok(Json(site_json(&site)))
}

pub async fn patch_site(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    require_admin(&state, &headers).await?;
    let id = parse_site_id(&id)?;
    let patch: SitePatch = parse_body(&body)?;
    let store = state.engine.store();
    let mut site = site_or_404(&state, &id).await?;
    if let Some(name) = patch.name {
        check_name(&name)?;
        site.name = name;
    }
    if let Some(tz) = patch.timezone {
        check_zone(&tz)?;
        site.timezone = tz;
    }
    store.update_site(&site).await?;
    state.engine.registry().put_site(&site);
    Ok(Json(site_json(&site)))
}

pub async fn delete_site(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_admin(&state, &headers).await?;
    let id = parse_site_id(&id)?;
    let store = state.engine.store();
    site_or_404(&state, &id).await?;
    match store.delete_site(&id).await {
        Ok(_) => {
            state.engine.registry().remove_site(&id);
            Ok(StatusCode::NO_CONTENT)
        }
        Err(wattline_storage::StoreError::InUse(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "site_not_empty",
            format!("site {id} still has devices; delete or move them first"),
        )),
        Err(e) => Err(e.into()),
    }
}

// ---- site ingest tokens

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewIngestToken {
    name: Option<String>,
}

pub async fn create_ingest_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(site): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    require_admin(&state, &headers).await?;
    let site = parse_site_id(&site)?;
    let new: NewIngestToken = if body.is_empty() {
        NewIngestToken { name: None }
    } else {
        parse_body(&body)?
    };
    let store = state.engine.store();
    site_or_404(&state, &site).await?;
    let secret = new_token("wls");
    let token = IngestToken {
        id: generated_id("tok"),
        site,
        name: new.name.unwrap_or_else(|| "ingest".into()),
        created_at: TsMs::now(),
    };
    store
        .create_ingest_token(&token, &hash_token(&secret))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": token.id, "site": token.site, "name": token.name, "token": secret,
                    "created_at": token.created_at.to_string()}),
        ),
    )
        .into_response())
}

pub async fn list_ingest_tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(site): Path<String>,
) -> ApiResult<Json<Value>> {
    require_admin(&state, &headers).await?;
    let site = parse_site_id(&site)?;
    let store = state.engine.store();
    site_or_404(&state, &site).await?;
    let tokens = store.list_ingest_tokens(&site).await?;
    Ok(Json(Value::Array(
        tokens
            .iter()
            .map(|t| json!({"id": t.id, "site": t.site, "name": t.name, "created_at": t.created_at.to_string()}))
            .collect(),
    )))
}

pub async fn delete_ingest_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((site, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    require_admin(&state, &headers).await?;
    let site = parse_site_id(&site)?;
    let store = state.engine.store();
    let owned = store
        .list_ingest_tokens(&site)
        .await?
        .iter()
        .any(|t| t.id == id);
    if !owned || !store.delete_ingest_token(&id).await? {
        return Err(ApiError::not_found(format!(
            "ingest token {id} of site {site}"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---- devices

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    id: Option<String>,
    name: String,
    site: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// The vendor topic identity this device publishes as (Tasmota topic, Shelly id...).
    binding: Option<crate::mqtt::BindingBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicePatch {
    name: Option<String>,
    site: Option<String>,
    kind: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

pub fn device_json(device: &Device) -> Value {
    json!({
        "id": device.id, "name": device.name, "site": device.site, "kind": device.kind,
        "labels": device.labels, "created_at": device.created_at.to_string(),
    })
}

pub async fn existing_site(state: &AppState, site: &str) -> ApiResult<SiteId> {
    let site = parse_site_id(site)?;
    if state.engine.store().get_site(&site).await?.is_none() {
        return Err(ApiError::bad_request(
            "unknown_site",
            format!("site {site} does not exist"),
        ));
    }
    Ok(site)
}

pub async fn create_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    require_admin(&state, &headers).await?;
    let new: NewDevice = parse_body(&body)?;
    check_name(&new.name)?;
    let id = parse_device_id(&new.id.unwrap_or_else(|| generated_id("dev")))?;
    let site = existing_site(&state, new.site.as_deref().unwrap_or(&state.default_site)).await?;
    let device = Device {
        id,
        name: new.name,
        site,
        kind: new.kind.unwrap_or_else(|| "meter".into()),
        labels: new.labels,
        created_at: TsMs::now(),
    };
    let identity = new.binding.as_ref().map(|b| b.identity()).transpose()?;
    let mut body = create_device_record(&state, &device).await?;
    if let Some(identity) = identity {
        let binding = crate::mqtt::bind(&state, &identity, &device.id).await?;
        body["bindings"] = json!([{"format": binding.format, "id": binding.vendor_id}]);
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Stores a new device with its HTTP token and MQTT credential; the answer shows both secrets
/// (once).
pub async fn create_device_record(state: &AppState, device: &Device) -> ApiResult<Value> {
    let token = new_token("wld");
    state
        .engine
        .store()
        .create_device(device, &hash_token(&token))
        .await?;
    state.engine.registry().put_device(device);
    let mqtt = crate::mqtt::issue_credential(state, &device.id).await?;
    tracing::info!(device = %device.id, site = %device.site, "device created");
    let mut body = device_json(device);
    body["token"] = json!(token);
    body["mqtt"] = mqtt;
    Ok(body)
}

pub async fn get_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    require_admin(&state, &headers).await?;
    let id = parse_device_id(&id)?;
    let device = device_or_404(&state, &id).await?;
    let mut body = device_json(&device);
    crate::query::add_latest(&state, &device.id, &mut body);
    crate::mqtt::add_mqtt_view(&state, &device, &mut body).await?;
    Ok(Json(body))
}

pub async fn patch_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    require_admin(&state, &headers).await?;
    let id = parse_device_id(&id)?;
    let patch: DevicePatch = parse_body(&body)?;
    let store = state.engine.store();
    let mut device = device_or_404(&state, &id).await?;
    if let Some(name) = patch.name {
        check_name(&name)?;
        device.name = name;
    }
    if let Some(site) = patch.site {
        device.site = existing_site(&state, &site).await?;
    }
    if let Some(kind) = patch.kind {
        device.kind = kind;
    }
    if let Some(labels) = patch.labels {
        device.labels = labels;
    }
    store.update_device(&device).await?;
    state.engine.registry().put_device(&device);
    Ok(Json(device_json(&device)))
}

pub async fn delete_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_admin(&state, &headers).await?;
    let id = parse_device_id(&id)?;
    // Pending rollups of the device must not be flushed after its rows are gone.
    state.engine.flush().await?;
    if !state.engine.store().delete_device(&id).await? {
        return Err(ApiError::not_found(format!("device {id}")));
    }
    state.engine.forget_device(&id);
    state.hub.forget_device(&id);
    tracing::info!(device = %id, "device deleted with its readings");
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a new token for a device; the old one stops working at once.
pub async fn rotate_device_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    require_admin(&state, &headers).await?;
    let id = parse_device_id(&id)?;
    let token = new_token("wld");
    if !state
        .engine
        .store()
        .set_device_token(&id, &hash_token(&token))
        .await?
    {
        return Err(ApiError::not_found(format!("device {id}")));
    }
    tracing::info!(device = %id, "device token rotated");
    Ok(Json(json!({"id": id, "token": token})))
}
