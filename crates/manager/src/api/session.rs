//! Login, logout and who-am-I.

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_store::{Actor, AuditEvent, LoginAttempt, SessionRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::users::UserView;
use crate::auth::{
    decoy_hash, hash_token, random_token, verify_password, AuthContext, Credential, CSRF_COOKIE,
    SESSION_COOKIE,
};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ClientIp, JsonBody, RequestId};
use crate::AppState;

/// A user name and password (a session), or an API key (a short-lived token, as
/// FlatRun clients log in).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Trade this API key for a token valid one hour (send it as
    /// `Authorization: Bearer <token>`); no session is made.
    #[serde(default)]
    pub api_key: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// A JWT (HS256) standing for the API key.
    pub token: String,
    /// `Bearer`.
    pub token_type: &'static str,
    pub expires_in: i64,
    pub expires_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct ValidateResponse {
    pub valid: bool,
    pub role: Role,
    /// `session`, `api_key` or `token`.
    pub auth_method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
    /// When a token expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    pub user: UserView,
    /// Send this value as `X-CSRF-Token` on every mutation made with the session.
    pub csrf_token: String,
    pub expires_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct AuthStatus {
    /// Always true: every API endpoint but health and login needs credentials.
    pub auth_enabled: bool,
    /// `session` (cookie + CSRF) and `api_key` (Bearer).
    pub methods: Vec<String>,
    /// The caller, when the request carries a valid session or key; null otherwise
    /// (so a page can ask whether it is signed in without provoking a 401).
    pub me: Option<MeResponse>,
}

#[derive(Serialize, ToSchema)]
pub struct MeResponse {
    /// The signed-in user; null for the bootstrap API key, which has no user.
    pub user: Option<UserView>,
    pub role: Role,
    /// `session` or `api_key`.
    pub auth_method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
}

fn cookie_header(
    name: &str,
    value: &str,
    max_age: i64,
    http_only: bool,
    secure: bool,
) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/; SameSite=Lax; Max-Age={max_age}");
    if http_only {
        c.push_str("; HttpOnly");
    }
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, description = "With username and password: logged in, the session and csrf_token cookies set (LoginResponse). With api_key: a token (TokenResponse)", body = LoginResponse),
              (status = 400, description = "Neither username and password nor api_key, or both", body = crate::error::ErrorBody),
              (status = 401, description = "Wrong user name or password", body = crate::error::ErrorBody),
              (status = 429, description = "Too many failed attempts from this address", body = crate::error::ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    request_id: Option<axum::Extension<RequestId>>,
    JsonBody(body): JsonBody<LoginRequest>,
) -> ApiResult<Response> {
    let settings = state.settings();
    let now = now_ms();
    let window_ms = settings.security.login_window_secs as i64 * 1000;
    // The attempt is counted before the password is checked, in one atomic step
    // with the check of the limit: concurrent guesses cannot all slip under it.
    let limit_key = login_limit_key(&ip);
    let attempt = state
        .store
        .reserve_login_attempt(
            &limit_key,
            now,
            now - window_ms,
            i64::from(settings.security.login_max_failures),
        )
        .await?;
    let attempt_id = match attempt {
        LoginAttempt::Admitted { id } => id,
        LoginAttempt::Refused { oldest } => {
            // Rounded up, so a client that waits this long is admitted; never more
            // than the window (a concurrent attempt may be stamped after `now`).
            let wait_ms = (oldest + window_ms - now).clamp(1, window_ms);
            let retry = ((wait_ms + 999) / 1000) as u64;
            return Err(ApiError::too_many(
                format!("too many failed logins from {limit_key}; retry in {retry} s"),
                retry,
            ));
        }
    };
    let (username, password) = match (body.username, body.password, body.api_key) {
        (Some(u), Some(p), None) => (u, p),
        (None, None, Some(key)) => {
            let request_id = request_id.map(|r| r.0 .0.clone());
            return token_login(&state, ip, request_id, attempt_id, &key, now).await;
        }
        _ => {
            state.store.release_login_attempt(attempt_id).await?;
            return Err(ApiError::bad_request(
                "api_key",
                "send username and password, or api_key alone",
            ));
        }
    };
    let user = if username.len() <= 64 {
        state.store.get_user_by_username(&username).await?
    } else {
        None
    };
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| decoy_hash().to_string());
    let matches = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .map_err(|e| ApiError::internal("password check task failed", e))?;
    let request_id = request_id.map(|r| r.0 .0.clone());
    let user = match user {
        Some(u) if matches && !u.disabled => u,
        _ => {
            // The attempt reserved above stays counted as this failure.
            state.emit(
                fleetgate_core::events::NewEvent::new(
                    "auth.login_failed",
                    fleetgate_core::events::Severity::Warning,
                    format!("failed login for {:?} from {ip}", username.chars().take(64).collect::<String>()),
                )
                .details(serde_json::json!({"username": username.chars().take(64).collect::<String>(), "client_ip": ip})),
            );
            let actor = Actor {
                name: username.chars().take(64).collect(),
                id: None,
                role: Role::Viewer,
                client_ip: Some(ip.clone()),
                request_id,
            };
            state
                .store
                .append_audit(
                    &actor,
                    AuditEvent::new("auth.login_failed", "session", None),
                )
                .await?;
            return Err(ApiError::unauthorized("wrong user name or password"));
        }
    };
    // A success forgets only its own attempt: the failures before it (perhaps
    // someone else's guesses from the same address) keep counting.
    state.store.release_login_attempt(attempt_id).await?;
    let token = random_token(32);
    let csrf = random_token(24);
    let ttl = settings.security.session_ttl_secs as i64;
    let session = SessionRecord {
        token_hash: hash_token(&token),
        user_id: user.id.clone(),
        csrf_token: csrf.clone(),
        client_ip: Some(ip.clone()),
        created_at: now,
        expires_at: now + ttl * 1000,
    };
    let actor = Actor {
        name: user.username.clone(),
        id: Some(user.id.clone()),
        role: user.role,
        client_ip: Some(ip),
        request_id,
    };
    state.store.create_session(&actor, &session).await?;
    state.store.record_login(&user.id, now).await?;
    let secure = state.options.secure_cookies;
    let mut resp = Json(LoginResponse {
        user: UserView::from(&user),
        csrf_token: csrf.clone(),
        expires_at: crate::api::rfc3339(session.expires_at),
    })
    .into_response();
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        cookie_header(SESSION_COOKIE, &token, ttl, true, secure),
    );
    h.append(
        header::SET_COOKIE,
        cookie_header(CSRF_COOKIE, &csrf, ttl, false, secure),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The API-key half of login: the key is checked under the same limit of failed
/// attempts as passwords, and traded for a token.
async fn token_login(
    state: &AppState,
    ip: String,
    request_id: Option<String>,
    attempt_id: i64,
    key: &str,
    now: i64,
) -> ApiResult<Response> {
    let found = if key.len() <= 256 {
        state.store.find_api_key_by_hash(&hash_token(key)).await?
    } else {
        None
    };
    let owner = match &found {
        Some(k) => crate::auth::key_owner(state.store.as_ref(), k).await?,
        None => None,
    };
    let (Some(k), Some((_, role))) = (found, owner) else {
        state.emit(
            fleetgate_core::events::NewEvent::new(
                "auth.login_failed",
                fleetgate_core::events::Severity::Warning,
                format!("failed API key login from {ip}"),
            )
            .details(serde_json::json!({"client_ip": ip, "method": "api_key"})),
        );
        let actor = Actor {
            name: "api_key".into(),
            id: None,
            role: Role::Viewer,
            client_ip: Some(ip),
            request_id,
        };
        state
            .store
            .append_audit(
                &actor,
                AuditEvent::new("auth.login_failed", "session", None),
            )
            .await?;
        return Err(ApiError::unauthorized("invalid API key"));
    };
    state.store.release_login_attempt(attempt_id).await?;
    let (token, claims) = state.tokens.issue(&k.id, now / 1000);
    let actor = Actor {
        name: format!("api_key:{}", k.name),
        id: Some(k.id.clone()),
        role,
        client_ip: Some(ip),
        request_id,
    };
    state
        .store
        .append_audit(
            &actor,
            AuditEvent::new("auth.token_issued", "api_key", Some(&k.id))
                .after(serde_json::json!({"expires_at": claims.exp})),
        )
        .await?;
    let mut resp = Json(TokenResponse {
        token,
        token_type: "Bearer",
        expires_in: claims.exp - claims.iat,
        expires_at: crate::api::rfc3339(claims.exp * 1000),
    })
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[utoipa::path(get, path = "/api/v1/auth/validate", tag = "auth",
    responses((status = 200, description = "The credential sent (session, API key or token) is valid; what it acts as", body = ValidateResponse),
              (status = 401, description = "It is not (expired, revoked, malformed)", body = crate::error::ErrorBody)))]
pub async fn validate(
    State(state): State<AppState>,
    auth: AuthContext,
    parts: Parts,
) -> Json<ValidateResponse> {
    let me = me_of(&auth);
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .map(|(_, t)| t.trim().to_string());
    let token = bearer
        .filter(|t| crate::api_tokens::looks_like_token(t))
        .and_then(|t| state.tokens.check(&t, now_ms() / 1000).ok());
    Json(ValidateResponse {
        valid: true,
        role: auth.role,
        auth_method: if token.is_some() {
            "token".into()
        } else {
            me.auth_method
        },
        api_key_id: me.api_key_id,
        expires_at: token.map(|c| crate::api::rfc3339(c.exp * 1000)),
    })
}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204, description = "The session is revoked and its cookies cleared")))]
pub async fn logout(State(state): State<AppState>, auth: AuthContext) -> ApiResult<Response> {
    if let Credential::Session { token_hash } = &auth.credential {
        state.store.delete_session(&auth.actor, token_hash).await?;
    }
    let secure = state.options.secure_cookies;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        cookie_header(SESSION_COOKIE, "", 0, true, secure),
    );
    h.append(
        header::SET_COOKIE,
        cookie_header(CSRF_COOKIE, "", 0, false, secure),
    );
    Ok(resp)
}

#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, description = "The caller", body = MeResponse)))]
pub async fn me(auth: AuthContext) -> Json<MeResponse> {
    Json(me_of(&auth))
}

fn me_of(auth: &AuthContext) -> MeResponse {
    let (method, key) = match &auth.credential {
        Credential::Session { .. } => ("session", None),
        Credential::ApiKey(k) => ("api_key", Some(k.id.clone())),
    };
    MeResponse {
        user: auth.user.as_ref().map(UserView::from),
        role: auth.role,
        auth_method: method.into(),
        api_key_id: key,
    }
}

#[utoipa::path(get, path = "/api/v1/auth/status", tag = "auth",
    responses((status = 200, description = "Whether authentication is enabled, and who the caller is if signed in", body = AuthStatus)))]
pub async fn status(State(state): State<AppState>, parts: Parts) -> Json<AuthStatus> {
    // Credentials that do not check out simply mean "not signed in" here.
    let me = match crate::auth::authenticate(&state, &parts).await {
        Ok(Some(ctx)) => Some(me_of(&ctx)),
        _ => None,
    };
    Json(AuthStatus {
        auth_enabled: true,
        methods: vec!["session".into(), "api_key".into()],
        me,
    })
}

/// What the login limit counts attempts by: the client's IPv4 address, or the /64
/// network of an IPv6 client (one host usually holds a whole /64 and could
/// otherwise guess from a fresh address every time). IPv4-mapped IPv6 addresses
/// count as the IPv4 address they carry.
pub fn login_limit_key(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4.to_string(),
        Ok(std::net::IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        },
        Err(_) => ip.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::login_limit_key;

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        assert_eq!(login_limit_key("203.0.113.7"), "203.0.113.7");
        assert_eq!(
            login_limit_key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            login_limit_key("2001:db8:1:2::1"),
            login_limit_key("2001:db8:1:2:ffff::9")
        );
        assert_ne!(
            login_limit_key("2001:db8:1:2::1"),
            login_limit_key("2001:db8:1:3::1")
        );
        assert_eq!(login_limit_key("::ffff:198.51.100.1"), "198.51.100.1");
        assert_eq!(login_limit_key("::1"), "::/64");
        assert_eq!(login_limit_key("unknown"), "unknown");
    }
}
