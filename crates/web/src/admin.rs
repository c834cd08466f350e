//! Administration: sites, devices and their tokens. Admins manage everything; owners manage
//! the sites assigned to them and their devices; viewers only read.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use wattline_domain::time::parse_zone;
use wattline_domain::{Device, DeviceId, Site, SiteId, TsMs};
use wattline_storage::IngestToken;

use crate::auth::{hash_token, new_token, Caller};
use crate::error::{ApiError, ApiPath, ApiResult};
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

pub fn check_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(ApiError::bad_request(
            "bad_name",
            "name must be 1 to 200 characters",
        ));
    }
    Ok(())
}

/// A JSON body, with a clear error when it is not the expected shape.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("request body: {e}")))
}

/// A random identifier for objects created without one.
pub fn generated_id(prefix: &str) -> String {
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
    caller: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    caller.require_admin(true)?;
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
    audit_site(&state, &caller, "site_created", &site).await;
    Ok((StatusCode::CREATED, Json(site_json(&site))).into_response())
}

async fn audit_site(state: &AppState, caller: &Caller, action: &str, site: &Site) {
    let detail = json!({"name": site.name, "timezone": site.timezone});
    let target = format!("site:{}", site.id);
    caller.audit(state, action, &target, detail).await;
}

fn site_json(site: &Site) -> Value {
    json!({"id": site.id, "name": site.name, "timezone": site.timezone, "created_at": site.created_at.to_string()})
}

pub async fn list_sites(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_reader()?;
    let sites = state.engine.store().list_sites().await?;
    Ok(Json(Value::Array(
        sites
            .iter()
            .filter(|s| caller.principal.may_read_site(&s.id))
            .map(site_json)
            .collect(),
    )))
}

pub async fn get_site(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_site_id(&id)?;
    let site = caller.readable_site(&state, &id).await?;
    Ok(Json(site_json(&site)))
}

pub async fn patch_site(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let id = parse_site_id(&id)?;
    let mut site = caller.manageable_site(&state, &id).await?;
    let patch: SitePatch = parse_body(&body)?;
    let store = state.engine.store();
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
    audit_site(&state, &caller, "site_updated", &site).await;
    Ok(Json(site_json(&site)))
}

pub async fn delete_site(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id = parse_site_id(&id)?;
    let site = caller.readable_site(&state, &id).await?;
    caller.require_admin(true)?;
    let store = state.engine.store();
    match store.delete_site(&id).await {
        Ok(_) => {
            state.engine.registry().remove_site(&id);
            audit_site(&state, &caller, "site_deleted", &site).await;
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
    caller: Caller,
    ApiPath(site): ApiPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let site = parse_site_id(&site)?;
    caller.manageable_site(&state, &site).await?;
    let new: NewIngestToken = if body.is_empty() {
        NewIngestToken { name: None }
    } else {
        parse_body(&body)?
    };
    let store = state.engine.store();
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
    let target = format!("site:{}", token.site);
    let detail = json!({"token": token.id, "name": token.name});
    caller
        .audit(&state, "ingest_token_created", &target, detail)
        .await;
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
    caller: Caller,
    ApiPath(site): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let site = parse_site_id(&site)?;
    caller.manageable_site(&state, &site).await?;
    let store = state.engine.store();
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
    caller: Caller,
    ApiPath((site, id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let site = parse_site_id(&site)?;
    caller.manageable_site(&state, &site).await?;
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
    let target = format!("site:{site}");
    let detail = json!({"token": id});
    caller
        .audit(&state, "ingest_token_revoked", &target, detail)
        .await;
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
    caller: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let new: NewDevice = parse_body(&body)?;
    check_name(&new.name)?;
    let id = parse_device_id(&new.id.unwrap_or_else(|| generated_id("dev")))?;
    let site = match new.site.as_deref() {
        Some(site) => parse_site_id(site)?,
        None => default_site_for(&state, &caller)?,
    };
    let site = caller.target_site(&state, &site).await?;
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
    audit_device(&state, &caller, "device_created", &device).await;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Where a device created without a site goes: the default site, or, for a user who manages
/// exactly one site, that one.
fn default_site_for(state: &AppState, caller: &Caller) -> ApiResult<SiteId> {
    if let wattline_domain::Principal::User(u) = &caller.principal {
        if !u.all_sites && u.sites.len() == 1 {
            return Ok(u.sites.iter().next().expect("one site").clone());
        }
    }
    parse_site_id(&state.default_site)
}

pub async fn audit_device(state: &AppState, caller: &Caller, action: &str, device: &Device) {
    let detail = json!({"name": device.name, "site": device.site});
    let target = format!("device:{}", device.id);
    caller.audit(state, action, &target, detail).await;
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
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_device_id(&id)?;
    let device = caller.readable_device(&state, &id).await?;
    let mut body = device_json(&device);
    crate::query::add_latest(&state, &device.id, &mut body);
    crate::mqtt::add_mqtt_view(&state, &device, &mut body).await?;
    Ok(Json(body))
}

pub async fn patch_device(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let id = parse_device_id(&id)?;
    let mut device = caller.manageable_device(&state, &id).await?;
    let patch: DevicePatch = parse_body(&body)?;
    let store = state.engine.store();
    if let Some(name) = patch.name {
        check_name(&name)?;
        device.name = name;
    }
    if let Some(site) = patch.site {
        device.site = caller.target_site(&state, &parse_site_id(&site)?).await?;
    }
    if let Some(kind) = patch.kind {
        device.kind = kind;
    }
    if let Some(labels) = patch.labels {
        device.labels = labels;
    }
    store.update_device(&device).await?;
    state.engine.registry().put_device(&device);
    audit_device(&state, &caller, "device_updated", &device).await;
    Ok(Json(device_json(&device)))
}

pub async fn delete_device(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id = parse_device_id(&id)?;
    let device = caller.manageable_device(&state, &id).await?;
    // Pending rollups of the device must not be flushed after its rows are gone.
    state.engine.flush().await?;
    if !state.engine.store().delete_device(&id).await? {
        return Err(ApiError::not_found(format!("device {id}")));
    }
    state.engine.forget_device(&id);
    state.hub.forget_device(&id);
    tracing::info!(device = %id, "device deleted with its readings");
    audit_device(&state, &caller, "device_deleted", &device).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a new token for a device; the old one stops working at once.
pub async fn rotate_device_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_device_id(&id)?;
    let device = caller.manageable_device(&state, &id).await?;
    let token = new_token("wld");
    set_device_token(&state, &id, &token).await?;
    audit_device(&state, &caller, "device_token_rotated", &device).await;
    Ok(Json(json!({"id": id, "token": token})))
}

/// Revokes a device's HTTP token without issuing another: the device can no longer write over
/// HTTP until the token is rotated.
pub async fn revoke_device_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id = parse_device_id(&id)?;
    let device = caller.manageable_device(&state, &id).await?;
    // The stored hash becomes that of a secret nobody was ever given.
    set_device_token(&state, &id, &new_token("revoked")).await?;
    audit_device(&state, &caller, "device_token_revoked", &device).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_device_token(state: &AppState, id: &DeviceId, token: &str) -> ApiResult<()> {
    if !state
        .engine
        .store()
        .set_device_token(id, &hash_token(token))
        .await?
    {
        return Err(ApiError::not_found(format!("device {id}")));
    }
    tracing::info!(device = %id, "device token replaced");
    Ok(())
}
