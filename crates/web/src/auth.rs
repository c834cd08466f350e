//! Who is asking: the admin token, a site's ingest token, a device's token, a user's API
//! token, or a user's browser session; and the checks every route makes with the answer.
//!
//! Tokens are long random strings, so a plain SHA-256 of them is enough to make the stored
//! hash useless to whoever reads the database (no dictionary to try); only the hash is kept.
//! Passwords are chosen by people, so they get argon2id, which makes guessing expensive.

use std::net::SocketAddr;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use wattline_domain::{Device, DeviceId, Site, SiteId, TokenScope, TsMs, UserAccess};

pub use wattline_domain::Principal;

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// The browser session cookie. `__Host-` would pin it to HTTPS, which a LAN install on plain
/// HTTP does not have; the attributes below give the same protection where they can.
pub const SESSION_COOKIE: &str = "wattline_session";
/// The header a browser must echo on state-changing requests (the value `/auth/me` and the
/// login answer give). A cross-site form cannot set it, and a cross-site script cannot read it.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session ends after this long unused...
pub const SESSION_IDLE_MS: i64 = 7 * TsMs::DAY;
/// ...and after this long in any case.
pub const SESSION_MAX_MS: i64 = 30 * TsMs::DAY;
/// Uses closer together than this do not rewrite the session row.
const SESSION_TOUCH_MS: i64 = TsMs::MINUTE;

/// A new random token with a readable prefix saying what it is for.
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The CSRF token of a session: derived from the session id, so it needs no storage and is
/// known only to whoever holds the cookie (and to the page it was given to).
pub fn csrf_token(session_id: &str) -> String {
    hex::encode(Sha256::digest(
        format!("wattline-csrf:{session_id}").as_bytes(),
    ))
}

/// An argon2id PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`) with a random salt. Takes tens
/// of milliseconds of CPU by design: call it off the async runtime.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt length");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any password")
        .to_string()
}

/// Whether `password` matches the PHC string. A malformed stored hash matches nothing.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// [`hash_password`] / [`verify_password`] on the blocking pool.
pub async fn hash_password_blocking(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| internal(format!("password hashing task failed: {e}")))
}

pub async fn verify_password_blocking(password: String, phc: String) -> ApiResult<bool> {
    tokio::task::spawn_blocking(move || verify_password(&password, &phc))
        .await
        .map_err(|e| internal(format!("password check task failed: {e}")))
}

fn internal(message: String) -> ApiError {
    tracing::error!(%message, "internal error");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; see the server log",
    )
}

/// The token a request carries: `Authorization: Token T` or `Bearer T` (InfluxDB 2 clients,
/// Telegraf), HTTP Basic with the token as password or `?p=T` (InfluxDB 1 clients).
pub fn token_from(headers: &HeaderMap, query_password: Option<&str>) -> ApiResult<Option<String>> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("Authorization header is not text"))?
            .trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        return match scheme.to_ascii_lowercase().as_str() {
            "token" | "bearer" if !rest.is_empty() => Ok(Some(rest.to_owned())),
            "basic" => {
                let decoded = decode_base64(rest)
                    .ok_or_else(|| ApiError::unauthorized("Basic credentials are not base64"))?;
                let (_, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| ApiError::unauthorized("Basic credentials lack a ':'"))?;
                Ok(Some(password.to_owned()))
            }
            _ => Err(ApiError::unauthorized(
                "Authorization must be 'Token <token>', 'Bearer <token>' or Basic",
            )),
        };
    }
    Ok(query_password.filter(|p| !p.is_empty()).map(str::to_owned))
}

fn decode_base64(s: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        bits = (bits << 6) | v;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Tokens are printable ASCII without spaces; anything else is refused before any lookup, with
/// a message that says so rather than "unknown token".
fn check_token_shape(token: &str) -> ApiResult<()> {
    if token.len() > 512 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "malformed_token",
            "malformed token: expected printable ASCII without spaces, at most 512 bytes",
        ));
    }
    Ok(())
}

/// The value of one cookie.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Resolves a bearer-style token: the admin token, a device's, a site's, or a user's API
/// token. Unknown tokens are refused.
async fn principal_from_token(
    state: &AppState,
    token: &str,
    method: &Method,
) -> ApiResult<Principal> {
    check_token_shape(token)?;
    let hash = hash_token(token);
    if bool::from(hash.as_bytes().ct_eq(state.admin_token_hash.as_bytes())) {
        return Ok(Principal::Admin);
    }
    let store = state.engine.store();
    if let Some(device) = store.device_by_token(&hash).await? {
        return Ok(Principal::Device(device));
    }
    if let Some(site) = store.ingest_token_site(&hash).await? {
        return Ok(Principal::Site(site));
    }
    if let Some(token) = store.api_token_by_hash(&hash).await? {
        let now = TsMs::now();
        if token.expires_at.is_some_and(|e| e <= now) {
            return Err(ApiError::unauthorized("this API token has expired"));
        }
        if token.scope == TokenScope::Read && !is_safe(method) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "read_only_token",
                "this API token is read-only; create a token with scope \"write\" to change things",
            ));
        }
        let (user, _) = store
            .get_user(&token.user)
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked token"))?;
        if user.disabled {
            return Err(ApiError::unauthorized("the token's user is disabled"));
        }
        if token
            .last_used_at
            .is_none_or(|t| now.0 - t.0 > SESSION_TOUCH_MS)
        {
            store.touch_api_token(&token.id, now).await?;
        }
        return Ok(Principal::User(UserAccess::new(
            &user,
            token.scope,
            token.sites.as_ref(),
            false,
        )));
    }
    Err(ApiError::unauthorized("unknown or revoked token"))
}

/// Resolves a browser session cookie; state-changing requests must carry its CSRF token.
async fn principal_from_session(
    state: &AppState,
    session_id: &str,
    headers: &HeaderMap,
    method: &Method,
) -> ApiResult<Principal> {
    check_token_shape(session_id)?;
    let store = state.engine.store();
    let id_hash = hash_token(session_id);
    let expired = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "session_expired",
            "the session has ended; log in again",
        )
    };
    let session = store.get_session(&id_hash).await?.ok_or_else(expired)?;
    let now = TsMs::now();
    if session.expires_at <= now {
        return Err(expired());
    }
    if !is_safe(method) {
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let expected = csrf_token(session_id);
        if !bool::from(sent.as_bytes().ct_eq(expected.as_bytes())) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                format!("a state-changing request from a browser session must send the {CSRF_HEADER} header that login and /api/v1/auth/me give"),
            ));
        }
    }
    let (user, _) = store.get_user(&session.user).await?.ok_or_else(expired)?;
    if user.disabled {
        return Err(ApiError::unauthorized("this account is disabled"));
    }
    if now.0 - session.last_seen_at.0 > SESSION_TOUCH_MS {
        let expires = TsMs((now.0 + SESSION_IDLE_MS).min(session.created_at.0 + SESSION_MAX_MS));
        store.touch_session(&id_hash, now, expires).await?;
    }
    Ok(Principal::User(UserAccess::new(
        &user,
        TokenScope::Write,
        None,
        true,
    )))
}

/// Resolves the caller from a token (header or InfluxDB `?p=`) or else the session cookie;
/// anonymous requests and unknown credentials are refused.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    query_password: Option<&str>,
    method: &Method,
) -> ApiResult<Principal> {
    if let Some(token) = token_from(headers, query_password)? {
        return principal_from_token(state, &token, method).await;
    }
    if let Some(session) = cookie(headers, SESSION_COOKIE) {
        return principal_from_session(state, session, headers, method).await;
    }
    Err(ApiError::unauthorized(
        "authentication required: send 'Authorization: Token <token>' or log in",
    ))
}

/// The client's address as the socket saw it, for throttling and the audit log.
pub fn client_address(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string())
        .unwrap_or_default()
}

/// The client's address, for routes that authenticate by other means (login).
pub struct ClientAddress(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(client_address(parts)))
    }
}

/// An authenticated request: who, and from where. Extracting it refuses anonymous requests
/// (401), unknown credentials (401), session requests without their CSRF token (403) and
/// writes with a read-only token (403).
pub struct Caller {
    pub principal: Principal,
    pub address: String,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // InfluxDB 1.x clients put the password in the query string.
        let query_password = parts.uri.query().and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "p")
                .map(|(_, v)| v.to_owned())
        });
        let principal = authenticate(
            state,
            &parts.headers,
            query_password.as_deref(),
            &parts.method,
        )
        .await?;
        Ok(Caller {
            principal,
            address: client_address(parts),
        })
    }
}

fn not_found_site(id: &SiteId) -> ApiError {
    ApiError::not_found(format!("site {id}"))
}

fn not_found_device(id: &DeviceId) -> ApiError {
    ApiError::not_found(format!("device {id}"))
}

fn read_only() -> ApiError {
    ApiError::forbidden("your access to this site is read-only")
}

impl Caller {
    /// Admin-only routes (users, sites, pending devices, audit). `write` routes also refuse
    /// an admin's read-only token.
    pub fn require_admin(&self, write: bool) -> ApiResult<()> {
        if self.principal.is_admin(write) {
            return Ok(());
        }
        Err(ApiError::forbidden(
            if write && self.principal.is_admin(false) {
                "this token is read-only"
            } else {
                "this route is for administrators"
            },
        ))
    }

    /// The site, when this caller may read it; 404 otherwise, so that a site the caller may
    /// not see looks the same as one that does not exist.
    pub async fn readable_site(&self, state: &AppState, id: &SiteId) -> ApiResult<Site> {
        if !self.principal.may_read_site(id) {
            return Err(not_found_site(id));
        }
        state
            .engine
            .store()
            .get_site(id)
            .await?
            .ok_or_else(|| not_found_site(id))
    }

    /// The site, when this caller may change it: 404 when it may not even see it, 403 when
    /// it may only read it.
    pub async fn manageable_site(&self, state: &AppState, id: &SiteId) -> ApiResult<Site> {
        let site = self.readable_site(state, id).await?;
        if !self.principal.may_manage_site(id) {
            return Err(read_only());
        }
        Ok(site)
    }

    pub async fn readable_device(&self, state: &AppState, id: &DeviceId) -> ApiResult<Device> {
        let device = state
            .engine
            .store()
            .get_device(id)
            .await?
            .ok_or_else(|| not_found_device(id))?;
        if !self.principal.may_read_site(&device.site) {
            return Err(not_found_device(id));
        }
        Ok(device)
    }

    pub async fn manageable_device(&self, state: &AppState, id: &DeviceId) -> ApiResult<Device> {
        let device = self.readable_device(state, id).await?;
        if !self.principal.may_manage_site(&device.site) {
            return Err(read_only());
        }
        Ok(device)
    }

    /// Checks a site named in a request body (a device's new site): it must exist and be
    /// manageable by the caller; otherwise a 400 that does not reveal whether it exists.
    pub async fn target_site(&self, state: &AppState, id: &SiteId) -> ApiResult<SiteId> {
        let exists = state.engine.store().get_site(id).await?.is_some();
        if !exists || !self.principal.may_read_site(id) {
            return Err(ApiError::bad_request(
                "unknown_site",
                format!("site {id} does not exist"),
            ));
        }
        if !self.principal.may_manage_site(id) {
            return Err(read_only());
        }
        Ok(id.clone())
    }

    /// Refuses ingest credentials (device and site tokens) on routes that read: they exist to
    /// write readings and see nothing, not even an empty list.
    pub fn require_reader(&self) -> ApiResult<()> {
        match self.principal {
            Principal::Site(_) | Principal::Device(_) => Err(ApiError::forbidden(
                "device and site ingest tokens only write readings",
            )),
            _ => Ok(()),
        }
    }

    pub fn actor(&self) -> String {
        self.principal.actor()
    }

    /// Records something this caller did in the audit log.
    pub async fn audit(
        &self,
        state: &AppState,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) {
        audit(state, &self.actor(), &self.address, action, target, detail).await;
    }
}

/// Appends an entry to the audit log. A failure to record is logged, not shown to the
/// caller: the action itself has already happened.
pub async fn audit(
    state: &AppState,
    actor: &str,
    address: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) {
    let event = wattline_domain::AuditEvent {
        id: 0,
        ts: TsMs::now(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        address: address.to_owned(),
        detail: detail.to_string(),
    };
    if let Err(e) = state.engine.store().append_audit(&event).await {
        tracing::error!(error = %e, action, target, "audit log write failed");
    }
    tracing::info!(actor, action, target, address, "audit");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_token_form() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Token abc".parse().unwrap());
        assert_eq!(token_from(&h, None).unwrap().as_deref(), Some("abc"));
        h.insert("authorization", "Bearer xyz".parse().unwrap());
        assert_eq!(token_from(&h, None).unwrap().as_deref(), Some("xyz"));
        // "user:secret" in base64.
        h.insert("authorization", "Basic dXNlcjpzZWNyZXQ=".parse().unwrap());
        assert_eq!(token_from(&h, None).unwrap().as_deref(), Some("secret"));
        h.insert("authorization", "Digest foo".parse().unwrap());
        assert!(token_from(&h, None).is_err());
        assert_eq!(
            token_from(&HeaderMap::new(), Some("q")).unwrap().as_deref(),
            Some("q")
        );
        assert_eq!(token_from(&HeaderMap::new(), None).unwrap(), None);
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (new_token("wld"), new_token("wld"));
        assert_ne!(a, b);
        assert!(a.starts_with("wld_") && a.len() == 4 + 48);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), a);
    }

    #[test]
    fn passwords_are_argon2id_with_a_fresh_salt() {
        let a = hash_password("correct horse battery");
        let b = hash_password("correct horse battery");
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(verify_password("correct horse battery", &a));
        assert!(!verify_password("correct horse battery!", &a));
        assert!(!verify_password("anything", "not a phc string"));
    }

    #[test]
    fn malformed_tokens_are_named() {
        let e = check_token_shape("abc def").unwrap_err();
        assert_eq!(e.code, "malformed_token");
        assert!(check_token_shape(&"a".repeat(513)).is_err());
        assert!(check_token_shape("wld_0123abcd").is_ok());
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            "a=1; wattline_session=s3cr3t ; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("s3cr3t"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn csrf_tokens_follow_the_session() {
        assert_eq!(csrf_token("s1"), csrf_token("s1"));
        assert_ne!(csrf_token("s1"), csrf_token("s2"));
        assert_ne!(
            csrf_token("s1"),
            hash_token("s1"),
            "not the stored session hash"
        );
    }
}
