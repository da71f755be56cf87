//! Who is calling: browser sessions (an httpOnly `session` cookie plus a
//! `csrf_token` cookie echoed in `X-CSRF-Token` on mutations) and API keys
//! (`Authorization: Bearer`). Passwords are hashed with argon2id; session tokens
//! and API keys are stored only as SHA-256 hashes.

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_store::{Actor, ApiKeyRecord, UserRecord};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::extract::{client_ip, RequestId};
use crate::AppState;

pub const SESSION_COOKIE: &str = "session";
pub const CSRF_COOKIE: &str = "csrf_token";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How the caller proved who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    Session { token_hash: String },
    ApiKey(ApiKeyRecord),
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct AuthContext {
    pub actor: Actor,
    pub role: Role,
    /// The user behind the session or API key (none for the bootstrap key).
    pub user: Option<UserRecord>,
    pub credential: Credential,
}

impl AuthContext {
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {role} role or higher; you have {}",
                self.role
            )))
        }
    }

    pub fn user_id(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.id.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AuthContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Arc<AuthContext>>()
            .map(|a| (**a).clone())
            .ok_or_else(|| ApiError::unauthorized("authentication required"))
    }
}

/// SHA-256 hex of a secret token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A random URL-safe token with `bytes` bytes of entropy.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// argon2id hash of a password (PHC string). CPU heavy: call off the async runtime.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::internal("password hashing failed", e))
}

/// Whether `password` matches the PHC `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Hashes a password on the blocking pool.
pub async fn hash_password_blocking(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| ApiError::internal("password hashing task failed", e))?
}

/// A fixed hash verified against when the user does not exist, so that a login
/// for an unknown name costs as much as one for a known name.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("fleetgate-decoy-password").unwrap_or_default())
}

/// Value of one cookie in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn is_mutation(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Constant-time comparison of two short secrets.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why an API key whose owner may no longer act is refused.
pub const OWNER_GONE: &str = "the owner of this API key is disabled or gone";

/// The user behind an API key and the role the key acts with, or `None` when the
/// key belongs to a user who is disabled or deleted. A key never acts above its
/// owner's current role: demoting a user demotes the keys they made. Every surface
/// that accepts API keys (`/api/v1`, the Flecto sync API) goes through this, so a
/// disabled user's keys stop working everywhere at once.
pub async fn key_owner(
    store: &dyn fleetgate_store::Store,
    key: &ApiKeyRecord,
) -> Result<Option<(Option<UserRecord>, Role)>, fleetgate_store::StoreError> {
    let Some(id) = &key.user_id else {
        // The bootstrap key has no user: its own role is all there is.
        return Ok(Some((None, key.role)));
    };
    Ok(match store.get_user(id).await? {
        Some(u) if !u.disabled => {
            let role = key.role.min(u.role);
            Some((Some(u), role))
        }
        _ => None,
    })
}

/// Resolves the caller from a bearer key or a session cookie, or `None`.
pub async fn authenticate(
    state: &AppState,
    parts: &Parts,
) -> Result<Option<AuthContext>, ApiError> {
    let ip = client_ip(parts);
    let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone());
    let now = now_ms();
    if let Some(token) = bearer(&parts.headers) {
        let found = if crate::api_tokens::looks_like_token(token) {
            // A token traded for an API key stands for that key, as long as the
            // key exists.
            let claims = state
                .tokens
                .check(token, now / 1000)
                .map_err(|e| ApiError::unauthorized(e.to_string()))?;
            state.store.get_api_key(&claims.sub).await?
        } else {
            state.store.find_api_key_by_hash(&hash_token(token)).await?
        };
        let Some(key) = found else {
            return Err(ApiError::unauthorized("invalid API key"));
        };
        let Some((user, role)) = key_owner(state.store.as_ref(), &key).await? else {
            return Err(ApiError::unauthorized(OWNER_GONE));
        };
        // Write last-use at most once a minute per key.
        if key.last_used_at.is_none_or(|t| now - t > 60_000) {
            state.store.touch_api_key(&key.id, now).await?;
        }
        let actor = Actor {
            name: format!("api_key:{}", key.name),
            id: Some(key.id.clone()),
            role,
            client_ip: Some(ip),
            request_id,
        };
        return Ok(Some(AuthContext {
            actor,
            role,
            user,
            credential: Credential::ApiKey(key),
        }));
    }
    let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let token_hash = hash_token(token);
    let Some((session, user)) = state.store.get_session(&token_hash, now).await? else {
        return Err(ApiError::unauthorized(
            "the session has expired; log in again",
        ));
    };
    if user.disabled {
        return Err(ApiError::unauthorized("this account is disabled"));
    }
    if is_mutation(&parts.method) {
        let sent = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        let cookie_value = cookie(&parts.headers, CSRF_COOKIE);
        let ok = matches!((sent, cookie_value), (Some(h), Some(c))
            if same_secret(h, c) && same_secret(h, &session.csrf_token));
        if !ok {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "CSRF_FAILED",
                "missing or wrong X-CSRF-Token: send the value of the csrf_token cookie",
            ));
        }
    }
    let actor = Actor {
        name: user.username.clone(),
        id: Some(user.id.clone()),
        role: user.role,
        client_ip: Some(ip),
        request_id,
    };
    Ok(Some(AuthContext {
        actor,
        role: user.role,
        user: Some(user),
        credential: Credential::Session { token_hash },
    }))
}

/// Middleware of every protected route: 401 without credentials, 403 for a
/// viewer's mutation, otherwise the [`AuthContext`] goes into the extensions.
pub async fn require_auth(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let ctx = match parts.extensions.get::<Arc<AuthContext>>() {
        Some(c) => (**c).clone(),
        None => authenticate(&state, &parts).await?.ok_or_else(|| {
            ApiError::unauthorized(
                "authentication required: log in or send Authorization: Bearer <api key>",
            )
        })?,
    };
    let logout = parts.uri.path() == "/api/v1/auth/logout";
    if is_mutation(&parts.method) && !ctx.role.can_mutate() && !logout {
        return Err(ApiError::forbidden("viewers cannot change anything"));
    }
    crate::middleware::TraceActor::note(&parts.extensions, &ctx);
    parts.extensions.insert(Arc::new(ctx));
    Ok(next.run(Request::from_parts(parts, body)).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_cookies_among_many() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            "a=1; session=abc; csrf_token=x=y".parse().expect("header"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, CSRF_COOKIE), Some("x=y"));
        assert_eq!(cookie(&h, "missing"), None);
        h.insert(
            header::AUTHORIZATION,
            "bearer  tok ".parse().expect("header"),
        );
        assert_eq!(bearer(&h), Some("tok"));
    }

    #[test]
    fn passwords_verify_only_against_their_hash() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("correct horse", "not a phc string"));
    }

    proptest! {
        #[test]
        fn header_parsing_never_panics(c in "[ -~]{0,120}", a in "[ -~]{0,120}") {
            let mut h = HeaderMap::new();
            if let Ok(v) = c.parse() { h.insert(header::COOKIE, v); }
            if let Ok(v) = a.parse() { h.insert(header::AUTHORIZATION, v); }
            let _ = cookie(&h, SESSION_COOKIE);
            let _ = bearer(&h);
        }

        #[test]
        fn same_secret_is_equality(a in "[a-z]{0,8}", b in "[a-z]{0,8}") {
            prop_assert_eq!(same_secret(&a, &b), a == b);
        }
    }
}
