//! Who is asking: the admin, a site's ingest token, or a device's token.
//!
//! Tokens are long random strings, so a plain SHA-256 of them is enough to make the stored
//! hash useless to whoever reads the database (no dictionary to try); only the hash is kept.

use axum::http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
pub use wattline_domain::Principal;

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// A new random token with a readable prefix saying what it is for.
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
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

/// Resolves the caller; anonymous requests and unknown tokens are refused.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    query_password: Option<&str>,
) -> ApiResult<Principal> {
    let token = token_from(headers, query_password)?.ok_or_else(|| {
        ApiError::unauthorized("authentication required: send 'Authorization: Token <token>'")
    })?;
    let hash = hash_token(&token);
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
    Err(ApiError::unauthorized("unknown or revoked token"))
}

pub async fn require_admin(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    match authenticate(state, headers, None).await? {
        Principal::Admin => Ok(()),
        _ => Err(ApiError::forbidden("this route needs the admin token")),
    }
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
}
