//! MQTT administration: device credentials, topic bindings (owners of the device's site), pending
//! devices (admins: accepting one places a device in a site).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use wattline_decode::mqtt::{Format, TopicIdentity};
use wattline_domain::{Device, DeviceId, TsMs};
use wattline_mqtt::hash_secret;
use wattline_storage::{Binding, PendingDevice, StoreError};

use crate::admin::{parse_body, parse_device_id};
use crate::auth::{new_token, Caller};
use crate::error::{ApiError, ApiPath, ApiResult};
use crate::AppState;

/// `"binding": {"format": "tasmota", "id": "plug1"}` in a device body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingBody {
    pub format: String,
    pub id: String,
}

impl BindingBody {
    pub fn identity(&self) -> ApiResult<TopicIdentity> {
        let format = Format::parse(&self.format)
            .filter(|f| *f != Format::Native)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "bad_binding",
                    format!(
                        "binding format {:?} is not one of tasmota, shelly, emoncms, esp32, clemap",
                        self.format
                    ),
                )
            })?;
        // Vendor ids are single topic levels: no wildcards, no separators.
        let valid = !self.id.is_empty()
            && self.id.len() <= 128
            && !self.id.contains(['/', '+', '#', '\0'])
            && !self.id.chars().any(char::is_whitespace);
        if !valid {
            return Err(ApiError::bad_request(
                "bad_binding",
                format!("binding id {:?} must be one MQTT topic level (no / + # or spaces, at most 128 characters)", self.id),
            ));
        }
        Ok(TopicIdentity::new(format, self.id.clone()))
    }
}

fn binding_json(b: &Binding) -> Value {
    json!({"format": b.format, "id": b.vendor_id, "device": b.device, "created_at": b.created_at.to_string()})
}

/// Issues (or replaces) a device's MQTT credential: username = device id, a new random
/// password that is shown once. Connections with the old one are closed.
pub async fn issue_credential(state: &AppState, device: &DeviceId) -> ApiResult<Value> {
    let password = new_token("wlm");
    let username = device.as_str();
    if !state
        .engine
        .store()
        .set_mqtt_credential(device, username, &hash_secret(&password))
        .await?
    {
        return Err(ApiError::not_found(format!("device {device}")));
    }
    state.hub.disconnect_device(device);
    Ok(json!({"username": username, "password": password}))
}

/// Binds a vendor identity to a device, in storage and in the live directory.
pub async fn bind(
    state: &AppState,
    identity: &TopicIdentity,
    device: &DeviceId,
) -> ApiResult<Binding> {
    let binding = Binding {
        format: identity.format.as_str().to_owned(),
        vendor_id: identity.id.clone(),
        device: device.clone(),
        created_at: TsMs::now(),
    };
    match state.engine.store().bind_device(&binding).await {
        Ok(true) => {}
        Ok(false) => return Err(ApiError::not_found(format!("device {device}"))),
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "binding_taken",
                format!("{identity} is already bound to another device; unbind it there first"),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    state.hub.put_binding(identity.clone(), device.clone());
    let store = state.engine.store();
    store
        .delete_pending(identity.format.as_str(), &identity.id)
        .await?;
    store
        .set_rejected(identity.format.as_str(), &identity.id, false)
        .await?;
    tracing::info!(identity = %identity, device = %device, "topic identity bound");
    Ok(binding)
}

/// `POST /api/v1/devices/{id}/mqtt`: a new MQTT password (the old one stops working and its
/// connections are closed).
pub async fn rotate_credential(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_device_id(&id)?;
    let device = caller.manageable_device(&state, &id).await?;
    let mqtt = issue_credential(&state, &id).await?;
    tracing::info!(device = %id, "MQTT credential rotated");
    crate::admin::audit_device(&state, &caller, "mqtt_credential_rotated", &device).await;
    Ok(Json(json!({"id": id, "mqtt": mqtt})))
}

/// `DELETE /api/v1/devices/{id}/mqtt`: revokes the credential and disconnects the device.
pub async fn revoke_credential(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id = parse_device_id(&id)?;
    let device = caller.manageable_device(&state, &id).await?;
    if !state.engine.store().delete_mqtt_credential(&id).await? {
        return Err(ApiError::not_found(format!(
            "MQTT credential of device {id}"
        )));
    }
    let closed = state.hub.disconnect_device(&id);
    tracing::info!(device = %id, connections_closed = closed, "MQTT credential revoked");
    crate::admin::audit_device(&state, &caller, "mqtt_credential_revoked", &device).await;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_bindings(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_device_id(&id)?;
    caller.readable_device(&state, &id).await?;
    let list = state.engine.store().device_bindings(&id).await?;
    Ok(Json(
        json!({"bindings": list.iter().map(binding_json).collect::<Vec<_>>()}),
    ))
}

pub async fn add_binding(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let id = parse_device_id(&id)?;
    let device = caller.manageable_device(&state, &id).await?;
    let body: BindingBody = parse_body(&body)?;
    let binding = bind(&state, &body.identity()?, &id).await?;
    crate::admin::audit_device(&state, &caller, "binding_added", &device).await;
    Ok((StatusCode::CREATED, Json(binding_json(&binding))).into_response())
}

pub async fn delete_binding(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, format, vendor_id)): ApiPath<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let id = parse_device_id(&id)?;
    let device = caller.manageable_device(&state, &id).await?;
    let identity = BindingBody {
        format,
        id: vendor_id,
    }
    .identity()?;
    let bound = state.engine.store().device_bindings(&id).await?;
    if !bound
        .iter()
        .any(|b| b.format == identity.format.as_str() && b.vendor_id == identity.id)
    {
        return Err(ApiError::not_found(format!(
            "binding {identity} of device {id}"
        )));
    }
    state
        .engine
        .store()
        .unbind_device(identity.format.as_str(), &identity.id)
        .await?;
    state.hub.remove_binding(&identity);
    crate::admin::audit_device(&state, &caller, "binding_removed", &device).await;
    Ok(StatusCode::NO_CONTENT)
}

fn pending_json(p: &PendingDevice) -> Value {
    json!({
        "format": p.format, "id": p.vendor_id, "first_seen": p.first_seen.to_string(),
        "last_seen": p.last_seen.to_string(), "messages": p.messages,
        "last_topic": p.last_topic, "sample": p.sample,
    })
}

/// `GET /api/v1/pending-devices`: identities seen on MQTT that no device is bound to.
pub async fn list_pending(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin(false)?;
    // What arrived in the last seconds is listed too, not only what the flusher stored.
    state.hub.flush_pending().await?;
    let list = state.engine.store().list_pending().await?;
    Ok(Json(
        json!({"pending": list.iter().map(pending_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptBody {
    /// Id of the device to create; default `<format>-<vendor id>`.
    device: Option<String>,
    name: Option<String>,
    site: Option<String>,
    kind: Option<String>,
}

/// `POST /api/v1/pending-devices/{format}/{id}/accept`: creates the device, binds the
/// identity to it and issues its credentials: plugging in a new plug takes one click.
pub async fn accept_pending(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((format, vendor_id)): ApiPath<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    caller.require_admin(true)?;
    let identity = BindingBody {
        format,
        id: vendor_id,
    }
    .identity()?;
    let accept: AcceptBody = if body.is_empty() {
        AcceptBody::default()
    } else {
        parse_body(&body)?
    };
    let store = state.engine.store();
    if store
        .get_pending(identity.format.as_str(), &identity.id)
        .await?
        .is_none()
    {
        state.hub.flush_pending().await?;
        if store
            .get_pending(identity.format.as_str(), &identity.id)
            .await?
            .is_none()
        {
            return Err(ApiError::not_found(format!("pending device {identity}")));
        }
    }
    let default_id: String = format!("{}-{}", identity.format, identity.id)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':') {
                c
            } else {
                '_'
            }
        })
        .take(DeviceId::MAX_LEN)
        .collect();
    let id = parse_device_id(accept.device.as_deref().unwrap_or(&default_id))?;
    let site = crate::admin::existing_site(
        &state,
        accept.site.as_deref().unwrap_or(&state.default_site),
    )
    .await?;
    let device = Device {
        id,
        name: accept
            .name
            .unwrap_or_else(|| format!("{} {}", identity.format, identity.id)),
        site,
        kind: accept.kind.unwrap_or_else(|| match identity.format {
            Format::Clemap => "three_phase".into(),
            Format::Tasmota | Format::Shelly => "plug".into(),
            _ => "meter".into(),
        }),
        labels: [(
            "mqtt_format".to_owned(),
            identity.format.as_str().to_owned(),
        )]
        .into(),
        created_at: TsMs::now(),
    };
    let mut body = crate::admin::create_device_record(&state, &device).await?;
    let binding = bind(&state, &identity, &device.id).await?;
    body["bindings"] = json!([binding_json(&binding)]);
    tracing::info!(identity = %identity, device = %device.id, "pending device accepted");
    crate::admin::audit_device(&state, &caller, "pending_device_accepted", &device).await;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /api/v1/pending-devices/{format}/{id}/reject`: its messages are dropped from now on
/// and it is not listed again (until bound or accepted).
pub async fn reject_pending(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((format, vendor_id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin(true)?;
    let identity = BindingBody {
        format,
        id: vendor_id,
    }
    .identity()?;
    let store = state.engine.store();
    store
        .set_rejected(identity.format.as_str(), &identity.id, true)
        .await?;
    state.hub.set_rejected(identity.clone(), true);
    store
        .delete_pending(identity.format.as_str(), &identity.id)
        .await?;
    tracing::info!(identity = %identity, "pending device rejected");
    let target = format!("identity:{identity}");
    caller
        .audit(&state, "pending_device_rejected", &target, json!({}))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds availability and bindings to a device's JSON.
pub async fn add_mqtt_view(state: &AppState, device: &Device, body: &mut Value) -> ApiResult<()> {
    body["availability"] = json!(state.hub.availability(&device.id, TsMs::now()));
    let bindings = state.engine.store().device_bindings(&device.id).await?;
    body["bindings"] = json!(bindings.iter().map(binding_json).collect::<Vec<_>>());
    body["mqtt_username"] = json!(state.engine.store().mqtt_username(&device.id).await?);
    Ok(())
}
