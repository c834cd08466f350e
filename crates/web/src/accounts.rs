//! Accounts: login and sessions, users and their sites, API tokens, the audit log.

use std::collections::BTreeSet;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use wattline_domain::account::check_password;
use wattline_domain::{
    ApiToken, Email, Principal, Role, Session, SiteId, TokenScope, TsMs, User, UserId,
};
use wattline_storage::AuditQuery;

use crate::admin::parse_body;
use crate::auth::{
    audit, csrf_token, hash_password_blocking, hash_token, new_token, verify_password_blocking,
    Caller, ClientAddress, SESSION_COOKIE, SESSION_IDLE_MS,
};
use crate::error::{ApiError, ApiPath, ApiQuery, ApiResult};
use crate::throttle::Refusal;
use crate::AppState;

/// A login against an unknown e-mail still runs argon2 against this, so the answer takes as
/// long as for a real account and does not reveal which e-mails exist.
fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| crate::auth::hash_password(&new_token("dummy")))
        .clone()
}

pub fn user_json(user: &User) -> Value {
    json!({
        "id": user.id, "email": user.email, "role": user.role,
        "sites": user.sites, "disabled": user.disabled,
        "created_at": user.created_at.to_string(),
    })
}

fn parse_email(s: &str) -> ApiResult<Email> {
    Email::parse(s).map_err(|e| ApiError::bad_request("bad_email", e.to_string()))
}

fn parse_role(s: &str) -> ApiResult<Role> {
    Role::parse(s).map_err(|e| ApiError::bad_request("bad_role", e))
}

fn parse_user_id(s: &str) -> ApiResult<UserId> {
    UserId::parse(s).map_err(|e| ApiError::bad_request("bad_id", e.to_string()))
}

fn check_new_password(password: &str, email: &Email) -> ApiResult<()> {
    check_password(password, email)
        .map_err(|e| ApiError::bad_request("weak_password", e.to_string()))
}

fn parse_sites(sites: &[String]) -> ApiResult<BTreeSet<SiteId>> {
    sites
        .iter()
        .map(|s| crate::admin::parse_site_id(s))
        .collect()
}

fn conflict_email(e: wattline_storage::StoreError, email: &Email) -> ApiError {
    match e {
        wattline_storage::StoreError::Conflict(_) => ApiError::new(
            StatusCode::CONFLICT,
            "duplicate_email",
            format!("a user with e-mail {email} already exists"),
        ),
        wattline_storage::StoreError::Invalid(msg) => ApiError::bad_request("unknown_site", msg),
        other => other.into(),
    }
}

fn session_cookie(state: &AppState, value: &str, max_age_s: i64) -> HeaderValue {
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    ))
    .expect("cookie text is ASCII")
}

// ---- login, logout, me, password

/// An e-mail and a password of at most 1024 bytes fit with room to spare; anything larger is
/// not a login and is refused before parsing or hashing.
const MAX_LOGIN_BODY: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    email: String,
    password: String,
}

pub async fn login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    if body.len() > MAX_LOGIN_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("a login body is at most {MAX_LOGIN_BODY} bytes"),
        ));
    }
    let login: LoginBody = parse_body(&body)?;
    let account = login.email.trim().to_lowercase();
    if let Err(refusal) = state.throttle.check(&account, &address, Instant::now()) {
        audit(
            &state,
            "anonymous",
            &address,
            "login_throttled",
            &format!("email:{account}"),
            json!({}),
        )
        .await;
        let secs = refusal.retry_after().as_secs().max(1);
        let why = match refusal {
            Refusal::Address { .. } => "too many failed logins from your address",
            Refusal::Account { .. } => "too many failed logins for this account",
        };
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!("{why}; try again in {secs} s"),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Ok(response);
    }
    let store = state.engine.store();
    let found = match Email::parse(&login.email) {
        Ok(email) => store.user_by_email(&email).await?,
        Err(_) => None,
    };
    let phc = match &found {
        Some((_, hash)) => hash.clone(),
        None => tokio::task::spawn_blocking(dummy_hash).await.map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?,
    };
    let matches = verify_password_blocking(login.password, phc).await?;
    let user = match found {
        Some((user, _)) if matches && !user.disabled => user,
        found => {
            state.throttle.failed(&account, &address, Instant::now());
            let reason = match found {
                Some((u, _)) if u.disabled && matches => "disabled",
                Some(_) => "wrong_password",
                None => "unknown_email",
            };
            audit(
                &state,
                "anonymous",
                &address,
                "login_failed",
                &format!("email:{account}"),
                json!({"reason": reason}),
            )
            .await;
            return Err(ApiError::unauthorized(
                "wrong e-mail or password, or the account is disabled",
            ));
        }
    };
    state.throttle.succeeded(&account, &address, Instant::now());
    let session_id = new_token("wls");
    let now = TsMs::now();
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    let session = Session {
        id_hash: hash_token(&session_id),
        user: user.id.clone(),
        created_at: now,
        last_seen_at: now,
        expires_at: TsMs(now.0 + SESSION_IDLE_MS),
        address: address.clone(),
        user_agent,
    };
    store.create_session(&session).await?;
    audit(
        &state,
        &Principal::User(wattline_domain::UserAccess::new(
            &user,
            TokenScope::Write,
            None,
            true,
        ))
        .actor(),
        &address,
        "login",
        &format!("user:{}", user.id),
        json!({}),
    )
    .await;
    let mut response = Json(json!({
        "user": user_json(&user),
        "csrf_token": csrf_token(&session_id),
        "expires_at": session.expires_at.to_string(),
    }))
    .into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&state, &session_id, SESSION_IDLE_MS / 1000),
    );
    Ok(response)
}

/// The session id of a request authenticated by its cookie.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    if headers.contains_key(header::AUTHORIZATION) {
        return None;
    }
    crate::auth::cookie(headers, SESSION_COOKIE)
}

pub async fn logout(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Some(id) = session_id(&headers) else {
        return Err(ApiError::bad_request(
            "not_a_session",
            "logout ends a browser session; revoke an API token with DELETE /api/v1/tokens/{id}",
        ));
    };
    state.engine.store().delete_session(&hash_token(id)).await?;
    caller.audit(&state, "logout", "", json!({})).await;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&state, "", 0));
    Ok(response)
}

pub async fn me(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let via = match &caller.principal {
        Principal::Admin => return Ok(Json(json!({"via": "admin_token", "role": "admin"}))),
        Principal::Site(site) => {
            return Ok(Json(json!({"via": "site_token", "site": site})));
        }
        Principal::Device(device) => {
            return Ok(Json(json!({"via": "device_token", "device": device})));
        }
        Principal::User(u) if u.session => "session",
        Principal::User(_) => "api_token",
    };
    let Principal::User(access) = &caller.principal else {
        unreachable!("handled above")
    };
    let (user, _) = state
        .engine
        .store()
        .get_user(&access.user)
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown user"))?;
    let mut body = json!({"via": via, "user": user_json(&user), "can_write": access.can_write});
    if let Some(id) = session_id(&headers).filter(|_| via == "session") {
        body["csrf_token"] = json!(csrf_token(id));
    }
    Ok(Json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// Changes the caller's own password; every other session of the user ends.
pub async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let Principal::User(access) = &caller.principal else {
        return Err(ApiError::bad_request(
            "not_a_user",
            "only a user has a password; log in as one",
        ));
    };
    let change: PasswordChange = parse_body(&body)?;
    let store = state.engine.store();
    let (user, phc) = store
        .get_user(&access.user)
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown user"))?;
    if !verify_password_blocking(change.current_password, phc).await? {
        caller
            .audit(
                &state,
                "password_change_failed",
                &format!("user:{}", user.id),
                json!({"reason": "wrong_current_password"}),
            )
            .await;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_password",
            "the current password is wrong",
        ));
    }
    check_new_password(&change.new_password, &user.email)?;
    let hash = hash_password_blocking(change.new_password).await?;
    store.set_user_password(&user.id, &hash).await?;
    let keep = session_id(&headers).map(hash_token);
    let ended = store
        .delete_user_sessions(&user.id, keep.as_deref())
        .await?;
    caller
        .audit(
            &state,
            "password_changed",
            &format!("user:{}", user.id),
            json!({"other_sessions_ended": ended}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

// ---- users (admin)

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    email: String,
    password: String,
    role: String,
    #[serde(default)]
    sites: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    email: Option<String>,
    role: Option<String>,
    sites: Option<Vec<String>>,
    disabled: Option<bool>,
    /// An administrator's reset; the user's sessions end.
    password: Option<String>,
}

/// Creates a user (for the API and `wattline user add`). Checks everything before hashing.
pub async fn create_user_record(
    store: &wattline_storage::DynStore,
    email: &str,
    password: String,
    role: &str,
    sites: &[String],
) -> ApiResult<User> {
    let email = parse_email(email)?;
    let role = parse_role(role)?;
    let sites = parse_sites(sites)?;
    check_new_password(&password, &email)?;
    let user = User {
        id: UserId::parse(crate::admin::generated_id("usr")).expect("generated ids are valid"),
        email,
        role,
        sites,
        disabled: false,
        created_at: TsMs::now(),
    };
    let hash = hash_password_blocking(password).await?;
    store
        .create_user(&user, &hash)
        .await
        .map_err(|e| conflict_email(e, &user.email))?;
    Ok(user)
}

pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    caller.require_admin(true)?;
    let new: NewUser = parse_body(&body)?;
    let user = create_user_record(
        state.engine.store(),
        &new.email,
        new.password,
        &new.role,
        &new.sites,
    )
    .await?;
    caller
        .audit(
            &state,
            "user_created",
            &format!("user:{}", user.id),
            json!({"email": user.email, "role": user.role, "sites": user.sites}),
        )
        .await;
    Ok((StatusCode::CREATED, Json(user_json(&user))).into_response())
}

pub async fn list_users(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin(false)?;
    let users = state.engine.store().list_users().await?;
    Ok(Json(Value::Array(users.iter().map(user_json).collect())))
}

async fn user_or_404(state: &AppState, id: &str) -> ApiResult<User> {
    let id = parse_user_id(id)?;
    state
        .engine
        .store()
        .get_user(&id)
        .await?
        .map(|(u, _)| u)
        .ok_or_else(|| ApiError::not_found(format!("user {id}")))
}

pub async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin(false)?;
    Ok(Json(user_json(&user_or_404(&state, &id).await?)))
}

/// Refuses a change that would leave no enabled admin user: the installation must stay
/// manageable by a person even if the admin token is lost.
async fn keep_an_admin(state: &AppState, user: &User, after: &User) -> ApiResult<()> {
    let was_admin = user.role == Role::Admin && !user.disabled;
    let stays_admin = after.role == Role::Admin && !after.disabled;
    if !was_admin || stays_admin {
        return Ok(());
    }
    let others = state
        .engine
        .store()
        .list_users()
        .await?
        .iter()
        .filter(|u| u.id != user.id && u.role == Role::Admin && !u.disabled)
        .count();
    if others == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "last_admin",
            format!(
                "{} is the last enabled admin; make another user admin first",
                user.email
            ),
        ));
    }
    Ok(())
}

pub async fn patch_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    caller.require_admin(true)?;
    let patch: UserPatch = parse_body(&body)?;
    let user = user_or_404(&state, &id).await?;
    let mut after = user.clone();
    if let Some(email) = &patch.email {
        after.email = parse_email(email)?;
    }
    if let Some(role) = &patch.role {
        after.role = parse_role(role)?;
    }
    if let Some(sites) = &patch.sites {
        after.sites = parse_sites(sites)?;
    }
    if let Some(disabled) = patch.disabled {
        after.disabled = disabled;
    }
    if let Some(password) = &patch.password {
        check_new_password(password, &after.email)?;
    }
    keep_an_admin(&state, &user, &after).await?;
    let store = state.engine.store();
    if after != user {
        store
            .update_user(&after)
            .await
            .map_err(|e| conflict_email(e, &after.email))?;
    }
    let mut ended = 0;
    if let Some(password) = patch.password.clone() {
        let hash = hash_password_blocking(password).await?;
        store.set_user_password(&after.id, &hash).await?;
        ended += store.delete_user_sessions(&after.id, None).await?;
    }
    if after.disabled && !user.disabled {
        ended += store.delete_user_sessions(&after.id, None).await?;
    }
    let mut changed: Vec<&str> = Vec::new();
    for (field, differs) in [
        ("email", after.email != user.email),
        ("role", after.role != user.role),
        ("sites", after.sites != user.sites),
        ("disabled", after.disabled != user.disabled),
        ("password", patch.password.is_some()),
    ] {
        if differs {
            changed.push(field);
        }
    }
    caller
        .audit(
            &state,
            "user_updated",
            &format!("user:{}", after.id),
            json!({"changed": changed, "role": after.role, "sites": after.sites,
               "disabled": after.disabled, "sessions_ended": ended}),
        )
        .await;
    Ok(Json(user_json(&after)))
}

pub async fn delete_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin(true)?;
    let user = user_or_404(&state, &id).await?;
    let gone = User {
        disabled: true,
        ..user.clone()
    };
    keep_an_admin(&state, &user, &gone).await?;
    state.engine.store().delete_user(&user.id).await?;
    caller
        .audit(
            &state,
            "user_deleted",
            &format!("user:{}", user.id),
            json!({"email": user.email}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends every session of a user (a lost phone, a shared computer).
pub async fn end_user_sessions(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin(true)?;
    let user = user_or_404(&state, &id).await?;
    let ended = state
        .engine
        .store()
        .delete_user_sessions(&user.id, None)
        .await?;
    caller
        .audit(
            &state,
            "sessions_ended",
            &format!("user:{}", user.id),
            json!({"ended": ended}),
        )
        .await;
    Ok(Json(json!({"ended": ended})))
}

// ---- API tokens

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewApiToken {
    name: String,
    scope: String,
    sites: Option<Vec<String>>,
    /// Lifetime in days; none means until revoked.
    expires_in_days: Option<u32>,
}

fn token_json(t: &ApiToken) -> Value {
    json!({
        "id": t.id, "user": t.user, "name": t.name, "scope": t.scope, "sites": t.sites,
        "created_at": t.created_at.to_string(),
        "expires_at": t.expires_at.map(|e| e.to_string()),
        "last_used_at": t.last_used_at.map(|e| e.to_string()),
    })
}

fn user_of(caller: &Caller) -> ApiResult<&wattline_domain::UserAccess> {
    match &caller.principal {
        Principal::User(u) => Ok(u),
        _ => Err(ApiError::bad_request(
            "not_a_user",
            "API tokens belong to users; log in as a user (the admin token needs none)",
        )),
    }
}

pub async fn create_api_token(
    State(state): State<AppState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let access = user_of(&caller)?;
    let new: NewApiToken = parse_body(&body)?;
    crate::admin::check_name(&new.name)?;
    let scope = TokenScope::parse(&new.scope).map_err(|e| ApiError::bad_request("bad_scope", e))?;
    if scope == TokenScope::Write && !access.can_write {
        return Err(ApiError::forbidden(
            "a read-only user or token cannot create a write token",
        ));
    }
    let sites = new.sites.as_deref().map(parse_sites).transpose()?;
    if let Some(sites) = &sites {
        if let Some(s) = sites.iter().find(|s| !caller.principal.may_read_site(s)) {
            return Err(ApiError::bad_request(
                "unknown_site",
                format!("site {s} does not exist"),
            ));
        }
    }
    if new.expires_in_days == Some(0) || new.expires_in_days.is_some_and(|d| d > 3650) {
        return Err(ApiError::bad_request(
            "bad_expiry",
            "expires_in_days must be 1 to 3650",
        ));
    }
    let now = TsMs::now();
    let secret = new_token("wlt");
    let token = ApiToken {
        id: crate::admin::generated_id("tok"),
        user: access.user.clone(),
        name: new.name,
        scope,
        sites,
        created_at: now,
        expires_at: new
            .expires_in_days
            .map(|d| TsMs(now.0 + i64::from(d) * TsMs::DAY)),
        last_used_at: None,
    };
    state
        .engine
        .store()
        .create_api_token(&token, &hash_token(&secret))
        .await?;
    caller
        .audit(
            &state,
            "api_token_created",
            &format!("token:{}", token.id),
            json!({"scope": token.scope, "sites": token.sites}),
        )
        .await;
    let mut body = token_json(&token);
    body["token"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize)]
pub struct TokenListParams {
    /// Admins list everyone's tokens with `all=true`.
    all: Option<bool>,
}

pub async fn list_api_tokens(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<TokenListParams>,
) -> ApiResult<Json<Value>> {
    let store = state.engine.store();
    let tokens = if params.all == Some(true) {
        caller.require_admin(false)?;
        store.list_api_tokens(None).await?
    } else {
        store.list_api_tokens(Some(&user_of(&caller)?.user)).await?
    };
    Ok(Json(Value::Array(tokens.iter().map(token_json).collect())))
}

/// Revokes a token: its owner or an admin. Someone else's token is "not found".
pub async fn delete_api_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let store = state.engine.store();
    let token = store.get_api_token(&id).await?;
    let allowed = token.as_ref().is_some_and(|t| {
        caller.principal.is_admin(true)
            || matches!(&caller.principal, Principal::User(u) if u.user == t.user)
    });
    if !allowed {
        return Err(ApiError::not_found(format!("API token {id}")));
    }
    store.delete_api_token(&id).await?;
    caller
        .audit(
            &state,
            "api_token_revoked",
            &format!("token:{id}"),
            json!({}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

// ---- audit log (admin)

#[derive(Deserialize)]
pub struct AuditParams {
    from: Option<String>,
    to: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    /// The `id` of the last event of the previous page.
    before: Option<i64>,
    limit: Option<usize>,
}

pub async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> ApiResult<Json<Value>> {
    caller.require_admin(false)?;
    let time = |s: &Option<String>, what: &str| {
        s.as_deref()
            .map(|s| {
                TsMs::parse_api(s)
                    .map_err(|e| ApiError::bad_request("bad_time", format!("{what}: {e}")))
            })
            .transpose()
    };
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_limit",
            "limit must be 1 to 1000",
        ));
    }
    let events = state
        .engine
        .store()
        .list_audit(&AuditQuery {
            from: time(&params.from, "from")?,
            to: time(&params.to, "to")?,
            actor: params.actor,
            action: params.action,
            before_id: params.before,
            limit,
        })
        .await?;
    Ok(Json(Value::Array(
        events
            .iter()
            .map(|e| {
                json!({
                    "id": e.id, "ts": e.ts.to_string(), "actor": e.actor, "action": e.action,
                    "target": e.target, "address": e.address,
                    "detail": serde_json::from_str::<Value>(&e.detail).unwrap_or(Value::Null),
                })
            })
            .collect(),
    )))
}
