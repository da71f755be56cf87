//! The agent sync API, path for path and byte for byte what Flecto agents (its Go
//! client and Traefik middleware) expect from a Flecto manager:
//!
//! - `GET /api/namespace/{ns}/project/{p}/version` → 200, the published version as a
//!   bare JSON integer (`42`, never `"42"`);
//! - `GET .../redirects?limit&offset` and `GET .../pages?limit&offset` → the published
//!   rules in creation order in `{"items","total","limit","offset"}` (default limit
//!   500; `limit=0` means every row, and no limit is capped, as with Flecto: its
//!   client pages on by the limit it asked for, so a capped page would silently skip
//!   rows);
//! - `POST .../agents` (a status report) and `PATCH .../agents/{name}/hit` (heartbeat)
//!   → exactly 200 with an empty body.
//!
//! Authentication is `Bearer <token>` in the header named by the setting
//! `redirects.agent_auth_header`: a project token (`flecto_…`, checked against its
//! scopes) or a Fleetgate API key (viewers may read, other roles may also write). A bad
//! token is 401, a missing scope 403 with an empty body, an unknown project 404; error
//! bodies are `{"message": …}` as Flecto's.
//!
//! Rate limit: these routes are outside the admin API's per-IP limit, because a fleet
//! of agents often reaches the manager from one address (a NAT, a load balancer) and
//! would starve itself. They count per token instead, against the setting
//! `redirects.agent_rate_limit_per_minute` (default 600); requests whose token is
//! missing or unknown count per client IP against the same number, so guessing tokens
//! stays limited. Over the limit: 429 with `Retry-After` and `{"message": …}`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::Router;
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_store::{Actor, AgentRecord, PageRequest, ProjectRecord, RuleTable};
use serde_json::{json, Value};

use crate::auth::hash_token;
use crate::extract::{ClientIp, QueryParams};
use crate::AppState;

/// Default page size of the rule listings (Flecto's).
pub const DEFAULT_LIMIT: i64 = 500;
/// Longest agent error text kept (Flecto's column size).
const MAX_AGENT_ERROR: usize = 500;
/// A token's last use is written at most this often.
const TOUCH_EVERY_MS: i64 = 60_000;

/// The sync API's routes; they authenticate themselves.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/namespace/{ns}/project/{project}/version",
            get(version),
        )
        .route(
            "/api/namespace/{ns}/project/{project}/redirects",
            get(redirects),
        )
        .route("/api/namespace/{ns}/project/{project}/pages", get(pages))
        .route("/api/namespace/{ns}/project/{project}/agents", post(report))
        .route(
            "/api/namespace/{ns}/project/{project}/agents/{name}/hit",
            patch(hit),
        )
}

/// The path prefix of every sync route; the admin API's rate limit leaves it alone.
pub const SYNC_PREFIX: &str = "/api/namespace/";

/// A failure answered in Flecto's shape.
#[derive(Debug)]
struct SyncError(StatusCode, Option<String>, Option<Limited>);

/// What a 429 tells the client about the limit it hit.
#[derive(Debug)]
struct Limited {
    limit: u32,
    reset: i64,
    retry_after: i64,
}

impl SyncError {
    fn msg(status: StatusCode, m: impl Into<String>) -> Self {
        Self(status, Some(m.into()), None)
    }

    fn bare(status: StatusCode) -> Self {
        Self(status, None, None)
    }
}

impl IntoResponse for SyncError {
    fn into_response(self) -> Response {
        let mut resp = match self.1 {
            Some(m) => (self.0, axum::Json(json!({ "message": m }))).into_response(),
            None => self.0.into_response(),
        };
        if let Some(l) = self.2 {
            let h = resp.headers_mut();
            for (name, value) in [
                ("retry-after", l.retry_after.to_string()),
                ("x-ratelimit-limit", l.limit.to_string()),
                ("x-ratelimit-remaining", "0".to_string()),
                ("x-ratelimit-reset", l.reset.to_string()),
            ] {
                if let Ok(v) = header::HeaderValue::from_str(&value) {
                    h.insert(header::HeaderName::from_static(name), v);
                }
            }
        }
        resp
    }
}

impl From<fleetgate_store::StoreError> for SyncError {
    fn from(e: fleetgate_store::StoreError) -> Self {
        if e.is_unavailable() {
            tracing::error!(error = %e, "store unavailable");
            return Self::msg(
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable; retry later",
            );
        }
        tracing::error!(error = %e, "sync API store error");
        Self::msg(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

type SyncResult<T> = Result<T, SyncError>;

/// Who is calling and what it may do.
enum Caller {
    Token(fleetgate_store::ProjectTokenRecord),
    Key {
        name: String,
        id: String,
        role: Role,
    },
}

impl Caller {
    fn grants(&self, ns: &str, project: &str, resource: Option<&str>, action: &str) -> bool {
        match self {
            Caller::Token(t) => t
                .scopes
                .iter()
                .any(|s| s.grants(ns, project, resource, action)),
            Caller::Key { role, .. } => action == "read" || role.can_mutate(),
        }
    }

    /// The rate-limit bucket of this caller: its token (or API key), not its address.
    fn limit_key(&self) -> String {
        match self {
            Caller::Token(t) => format!("agent:token:{}", t.id),
            Caller::Key { id, .. } => format!("agent:key:{id}"),
        }
    }

    fn actor(&self, headers: &HeaderMap, ip: String) -> Actor {
        let request_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match self {
            Caller::Token(t) => Actor {
                name: format!("agent_token:{}", t.name),
                id: Some(t.id.clone()),
                role: Role::Operator,
                client_ip: Some(ip),
                request_id,
            },
            Caller::Key { name, id, role } => Actor {
                name: format!("api_key:{name}"),
                id: Some(id.clone()),
                role: *role,
                client_ip: Some(ip),
                request_id,
            },
        }
    }
}

/// Counts one request in `key`'s bucket of the agent limit; 429 once it is spent.
async fn spend(state: &AppState, key: &str) -> SyncResult<()> {
    let limit = state.settings().redirects.agent_rate_limit_per_minute;
    if limit == 0 {
        return Ok(());
    }
    let now = now_ms();
    let d = state.limiter.check(key, limit, now).await;
    if d.allowed {
        return Ok(());
    }
    let retry_after = (d.reset - now / 1000).max(1);
    Err(SyncError(
        StatusCode::TOO_MANY_REQUESTS,
        Some(format!(
            "rate limit of {limit} requests per minute exceeded; retry in {retry_after} s"
        )),
        Some(Limited {
            limit,
            reset: d.reset,
            retry_after,
        }),
    ))
}

/// Resolves the caller and counts the request against the agent limit: per token
/// when the token is good, per client IP when it is missing or unknown.
async fn authenticate(state: &AppState, headers: &HeaderMap, ip: &str) -> SyncResult<Caller> {
    match resolve_caller(state, headers).await {
        Ok(caller) => {
            spend(state, &caller.limit_key()).await?;
            Ok(caller)
        }
        Err(e) if e.0 == StatusCode::UNAUTHORIZED => {
            spend(state, &format!("agent:ip:{ip}")).await?;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

async fn resolve_caller(state: &AppState, headers: &HeaderMap) -> SyncResult<Caller> {
    let header_name = state.settings().redirects.agent_auth_header;
    let missing = || {
        SyncError::msg(
            StatusCode::UNAUTHORIZED,
            format!("missing or invalid {header_name} header"),
        )
    };
    let raw = headers
        .get(header_name.as_str())
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?;
    let token = raw
        .strip_prefix("Bearer ")
        .filter(|t| !t.is_empty())
        .ok_or_else(missing)?;
    let hash = hash_token(token);
    let now = now_ms();
    if token.starts_with("flecto_") {
        let t = state
            .store
            .find_project_token(&hash)
            .await?
            .filter(|t| t.expires_at.is_none_or(|e| e > now))
            .ok_or_else(|| SyncError::msg(StatusCode::UNAUTHORIZED, "invalid API token"))?;
        if t.last_used_at.is_none_or(|at| now - at > TOUCH_EVERY_MS) {
            state.store.touch_project_token(&t.id, now).await?;
        }
        return Ok(Caller::Token(t));
    }
    let key = state
        .store
        .find_api_key_by_hash(&hash)
        .await?
        .ok_or_else(|| SyncError::msg(StatusCode::UNAUTHORIZED, "invalid API token"))?;
    // The same owner checks as /api/v1: a disabled owner's key is refused, a
    // demoted owner's key acts with the owner's current role.
    let (_, role) = crate::auth::key_owner(state.store.as_ref(), &key)
        .await?
        .ok_or_else(|| SyncError::msg(StatusCode::UNAUTHORIZED, crate::auth::OWNER_GONE))?;
    Ok(Caller::Key {
        name: key.name,
        id: key.id,
        role,
    })
}

/// Authenticates, checks the scope (403 with an empty body), then finds the project.
async fn authorize(
    state: &AppState,
    (headers, ip): (&HeaderMap, &str),
    (ns, project): (&str, &str),
    resource: Option<&str>,
    action: &str,
) -> SyncResult<(Caller, ProjectRecord)> {
    let caller = authenticate(state, headers, ip).await?;
    if !caller.grants(ns, project, resource, action) {
        return Err(SyncError::bare(StatusCode::FORBIDDEN));
    }
    let p = state.store.get_project(ns, project).await?.ok_or_else(|| {
        SyncError::msg(
            StatusCode::NOT_FOUND,
            format!("project {ns}/{project} not found"),
        )
    })?;
    Ok((caller, p))
}

fn json_body(v: &Value) -> Response {
    // A trailing newline, as Flecto's encoder writes.
    let mut text = v.to_string();
    text.push('\n');
    (
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        text,
    )
        .into_response()
}

async fn version(
    State(state): State<AppState>,
    Path((ns, project)): Path<(String, String)>,
    headers: HeaderMap,
    ClientIp(ip): ClientIp,
) -> SyncResult<Response> {
    let (_, p) = authorize(&state, (&headers, &ip), (&ns, &project), None, "read").await?;
    Ok(json_body(&json!(p.published_version)))
}

/// `limit` and `offset` as Flecto's server reads them: `limit=0` is every row, and
/// the limit asked for is honoured in full. The first value is the limit to echo.
fn page_of(q: &QueryParams) -> SyncResult<(i64, PageRequest)> {
    let int = |name: &str, default: i64| -> SyncResult<i64> {
        match q.text(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    SyncError::msg(
                        StatusCode::BAD_REQUEST,
                        format!("invalid {name} {v:?}: must be a non-negative integer"),
                    )
                }),
        }
    };
    let asked = int("limit", DEFAULT_LIMIT)?;
    let limit = if asked == 0 { i64::MAX } else { asked };
    Ok((
        asked,
        PageRequest {
            limit,
            offset: int("offset", 0)?,
        },
    ))
}

async fn list(
    state: &AppState,
    (ns, project): (&str, &str),
    who: (&HeaderMap, &str),
    q: &QueryParams,
    table: RuleTable,
) -> SyncResult<Response> {
    let (asked, page) = page_of(q)?;
    let (_, p) = authorize(state, who, (ns, project), Some(table.noun()), "read").await?;
    let rows = state.store.published_rules(table, &p.id, page).await?;
    let items: Vec<Value> = rows
        .items
        .iter()
        .map(|r| match table {
            RuleTable::Redirects => {
                json!({"type": r.kind, "source": r.key, "target": r.value, "status": r.flavor})
            }
            RuleTable::Pages => {
                json!({"type": r.kind, "path": r.key, "content": r.value, "contentType": r.flavor})
            }
        })
        .collect();
    Ok(json_body(&json!({
        "items": items,
        "total": rows.total,
        "limit": asked,
        "offset": page.offset,
    })))
}

async fn redirects(
    State(state): State<AppState>,
    Path((ns, project)): Path<(String, String)>,
    headers: HeaderMap,
    ClientIp(ip): ClientIp,
    q: QueryParams,
) -> SyncResult<Response> {
    list(
        &state,
        (&ns, &project),
        (&headers, &ip),
        &q,
        RuleTable::Redirects,
    )
    .await
}

async fn pages(
    State(state): State<AppState>,
    Path((ns, project)): Path<(String, String)>,
    headers: HeaderMap,
    ClientIp(ip): ClientIp,
    q: QueryParams,
) -> SyncResult<Response> {
    list(
        &state,
        (&ns, &project),
        (&headers, &ip),
        &q,
        RuleTable::Pages,
    )
    .await
}

/// Agent names as Flecto's client and server accept them.
pub fn valid_agent_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A status report as agents send it.
#[derive(Debug, PartialEq)]
struct Report {
    name: String,
    kind: String,
    version: i64,
    status: String,
    load_duration_ns: i64,
    error: String,
}

fn invalid(m: impl std::fmt::Display) -> SyncError {
    SyncError::msg(StatusCode::BAD_REQUEST, format!("invalid agent: {m}"))
}

fn parse_report(body: &[u8]) -> SyncResult<Report> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("malformed JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| invalid("expected a JSON object"))?;
    let text = |k: &str| -> SyncResult<String> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(invalid(format!("{k} must be a string"))),
        }
    };
    let name = text("name")?;
    if !valid_agent_name(&name) {
        return Err(invalid(
            "name must match ^[a-zA-Z0-9_-]+$ (at most 100 characters)",
        ));
    }
    let kind = text("type")?;
    if kind.is_empty()
        || kind.len() > 50
        || !kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(invalid(
            "type must be default, traefik or another short name",
        ));
    }
    let version = obj
        .get("version")
        .and_then(Value::as_i64)
        .filter(|v| *v >= 1)
        .ok_or_else(|| invalid("version must be an integer of at least 1"))?;
    let status = text("status")?;
    if !["", "success", "error"].contains(&status.as_str()) {
        return Err(invalid("status must be success or error"));
    }
    let load_duration_ns = match obj.get("load_duration") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|n| *n >= 0)
            .ok_or_else(|| invalid("load_duration must be non-negative nanoseconds"))?,
        Some(Value::String(s)) => parse_go_duration(s).ok_or_else(|| {
            invalid(format!(
                "load_duration {s:?} is not a duration such as 150ms"
            ))
        })?,
        Some(_) => {
            return Err(invalid(
                "load_duration must be nanoseconds or a duration string",
            ))
        }
    };
    let mut error = text("error")?;
    if error.chars().count() > MAX_AGENT_ERROR {
        error = error.chars().take(MAX_AGENT_ERROR).collect();
    }
    Ok(Report {
        name,
        kind,
        version,
        status,
        load_duration_ns,
        error,
    })
}

/// Parses a Go duration string (`150ms`, `1.5s`, `1h2m3s`, `300us`, `10ns`) into
/// nanoseconds; negative, overflowing or malformed values are `None`.
pub fn parse_go_duration(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    let mut rest = s;
    let mut total: f64 = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .bytes()
            .take_while(|b| !(b.is_ascii_digit() || *b == b'.'))
            .count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += value * scale;
    }
    (total.is_finite() && total < i64::MAX as f64).then_some(total as i64)
}

async fn report(
    State(state): State<AppState>,
    Path((ns, project)): Path<(String, String)>,
    headers: HeaderMap,
    ClientIp(ip): ClientIp,
    body: Bytes,
) -> SyncResult<StatusCode> {
    let (caller, p) = authorize(
        &state,
        (&headers, &ip),
        (&ns, &project),
        Some("agent"),
        "write",
    )
    .await?;
    let r = parse_report(&body)?;
    let now = now_ms();
    let exists = state
        .store
        .list_agents(&p.id)
        .await?
        .iter()
        .any(|a| a.name == r.name);
    if !exists && r.status.is_empty() {
        return Err(invalid("status is required when an agent registers"));
    }
    if !exists && r.load_duration_ns == 0 {
        return Err(invalid("load_duration is required when an agent registers"));
    }
    let rec = AgentRecord {
        project_id: p.id.clone(),
        name: r.name,
        kind: r.kind,
        loaded_version: r.version,
        status: r.status,
        error: r.error,
        load_duration_ns: r.load_duration_ns,
        created_at: now,
        updated_at: now,
        last_hit_at: now,
    };
    let actor = caller.actor(&headers, ip);
    state.store.report_agent(&actor, &rec).await?;
    Ok(StatusCode::OK)
}

async fn hit(
    State(state): State<AppState>,
    Path((ns, project, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    ClientIp(ip): ClientIp,
) -> SyncResult<StatusCode> {
    let (_, p) = authorize(
        &state,
        (&headers, &ip),
        (&ns, &project),
        Some("agent"),
        "write",
    )
    .await?;
    if !valid_agent_name(&name) {
        return Err(invalid(
            "name must match ^[a-zA-Z0-9_-]+$ (at most 100 characters)",
        ));
    }
    state.store.hit_agent(&p.id, &name, now_ms()).await?;
    Ok(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("150ms"), Some(150_000_000));
        assert_eq!(parse_go_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_go_duration("1h2m3s"), Some(3_723_000_000_000));
        assert_eq!(parse_go_duration("300us"), Some(300_000));
        assert_eq!(parse_go_duration("300µs"), Some(300_000));
        assert_eq!(parse_go_duration("0"), Some(0));
        for bad in ["", "ms", "5", "-5s", "5x", "1e3s", "99999999999h"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn reports_as_the_go_client_sends_them() {
        let r = parse_report(br#"{"name":"probe-agent","status":"success","type":"default","version":3,"load_duration":183712889,"error":""}"#)
            .expect("valid");
        assert_eq!(
            r,
            Report {
                name: "probe-agent".into(),
                kind: "default".into(),
                version: 3,
                status: "success".into(),
                load_duration_ns: 183_712_889,
                error: String::new(),
            }
        );
        let r =
            parse_report(br#"{"name":"t","type":"traefik","version":1,"load_duration":"150ms"}"#)
                .expect("duration string");
        assert_eq!(r.load_duration_ns, 150_000_000);
        for bad in [
            &br#"{"name":"a.b","type":"default","version":1}"#[..],
            br#"{"name":"a","type":"default","version":0}"#,
            br#"{"name":"a","type":"default","version":"1"}"#,
            br#"{"name":"a","type":"default","version":1,"status":"ok"}"#,
            br#"{"name":"a","type":"","version":1}"#,
            br#"[1]"#,
            b"{",
        ] {
            let err = parse_report(bad).expect_err("invalid");
            assert_eq!(err.0, StatusCode::BAD_REQUEST);
        }
        let long = format!(
            r#"{{"name":"a","type":"default","version":1,"error":"{}"}}"#,
            "x".repeat(900)
        );
        assert_eq!(
            parse_report(long.as_bytes())
                .expect("truncated")
                .error
                .len(),
            MAX_AGENT_ERROR
        );
    }

    proptest! {
        #[test]
        fn report_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_report(&body);
        }

        #[test]
        fn duration_parsing_never_panics(s in "\\PC{0,30}") {
            let _ = parse_go_duration(&s);
        }

        #[test]
        fn millisecond_durations_parse(ms in 0u32..1_000_000) {
            prop_assert_eq!(parse_go_duration(&format!("{ms}ms")), Some(i64::from(ms) * 1_000_000));
        }
    }
}
