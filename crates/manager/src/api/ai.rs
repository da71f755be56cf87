//! AI providers (`/api/v1/ai/providers`), their health (`/api/v1/ai/health`)
//! and each caller's model preferences (`/api/v1/ai/preferences`). Keys are
//! stored sealed, shown masked (`sk-…abcd`), and never returned, logged or
//! audited in clear; every change is audited.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use fleetgate_ai::{mask_key, ProviderKind};
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_store::{AiPreferencesRecord, AiProviderRecord};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::rfc3339;
use crate::ai::{self, ProviderHealth};
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::{json_with_etag, IfMatch, JsonBody, ListEnvelope, QueryParams};
use crate::AppState;

/// Generation defaults of a new provider.
pub(crate) const DEFAULT_MAX_TOKENS: i64 = 1024;
pub(crate) const DEFAULT_TEMPERATURE: f64 = 0.2;
pub(crate) const DEFAULT_TIMEOUT_MS: i64 = 60_000;

/// The kind of a provider, as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KindName {
    Openai,
    Anthropic,
    Gemini,
    OpenaiCompatible,
}

impl From<KindName> for ProviderKind {
    fn from(k: KindName) -> Self {
        match k {
            KindName::Openai => ProviderKind::OpenAi,
            KindName::Anthropic => ProviderKind::Anthropic,
            KindName::Gemini => ProviderKind::Gemini,
            KindName::OpenaiCompatible => ProviderKind::OpenAiCompatible,
        }
    }
}

/// `null` and absent told apart: `Some(None)` is an explicit `null`.
pub(crate) fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderInput {
    /// 1 to 100 characters (surrounding spaces are trimmed), no control
    /// characters; unique among providers.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    pub kind: KindName,
    /// The provider's endpoint: required for `openai_compatible` (e.g.
    /// `http://127.0.0.1:11434/v1`), otherwise the vendor's public endpoint is
    /// used when absent or null. http or https, no credentials, query or fragment.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 2048)]
    pub base_url: Option<Option<String>>,
    /// The API key, 1 to 512 visible ASCII characters. Stored sealed, never
    /// returned. On update: absent keeps the key, null removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 512, pattern = r"^[!-~]+$")]
    pub api_key: Option<Option<String>>,
    /// The model asked for when neither the request nor the caller's
    /// preferences name one; defaults to the vendor's small current model
    /// (required for `openai_compatible`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, pattern = r"^[A-Za-z0-9._:/@+-]+$")]
    pub default_model: Option<String>,
    /// Most tokens a call generates by default (1 to 1,000,000; default 1024).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub max_tokens: Option<i64>,
    /// Sampling temperature by default (0 to 2; default 0.2).
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// How long a call may take, in ms (1000 to 600000; default 60000).
    #[serde(default)]
    #[schema(minimum = 1000, maximum = 600_000)]
    pub timeout_ms: Option<i64>,
    /// Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Whether this is the installation's default provider (at most one is;
    /// setting it takes the mark from the previous default). Default false.
    #[serde(default)]
    pub is_default: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct ProviderView {
    pub id: String,
    pub name: String,
    pub kind: String,
    /// The base URL set for this provider; null when it uses the vendor's.
    pub base_url: Option<String>,
    /// Where requests go (the base URL, or the vendor's endpoint).
    pub endpoint: Option<String>,
    /// Whether a key is stored.
    pub api_key_set: bool,
    /// The key masked (`sk-…abcd`); the key itself is never shown.
    pub api_key_masked: Option<String>,
    pub default_model: String,
    pub max_tokens: i64,
    pub temperature: f64,
    pub timeout_ms: i64,
    pub enabled: bool,
    pub is_default: bool,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

pub(crate) fn view(p: &AiProviderRecord) -> ProviderView {
    let endpoint = p.base_url.clone().or_else(|| {
        p.kind
            .parse::<ProviderKind>()
            .ok()
            .and_then(|k| k.default_base_url())
            .map(str::to_string)
    });
    ProviderView {
        id: p.id.clone(),
        name: p.name.clone(),
        kind: p.kind.clone(),
        base_url: p.base_url.clone(),
        endpoint,
        api_key_set: p.api_key_sealed.is_some(),
        api_key_masked: p.api_key_hint.clone(),
        default_model: p.default_model.clone(),
        max_tokens: p.max_tokens,
        temperature: p.temperature,
        timeout_ms: p.timeout_ms,
        enabled: p.enabled,
        is_default: p.is_default,
        version: p.version,
        created_at: rfc3339(p.created_at),
        updated_at: rfc3339(p.updated_at),
    }
}

fn respond(status: StatusCode, p: &AiProviderRecord) -> Response {
    json_with_etag(status, p.version, view(p))
}

/// A provider name: trimmed, 1 to 100 characters, no control characters.
pub(crate) fn check_name(name: &str) -> ApiResult<String> {
    let long = name.chars().count() > 100;
    let name = name.trim();
    if name.is_empty() || long || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "name",
            "must be 1 to 100 characters without control characters",
        ));
    }
    Ok(name.to_string())
}

/// An API key: 1 to 512 visible ASCII characters (it goes in a header).
pub(crate) fn check_key(field: &str, key: &str) -> ApiResult<()> {
    if key.is_empty() || key.len() > 512 || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(ApiError::bad_request(
            field,
            "must be 1 to 512 visible ASCII characters (no spaces)",
        ));
    }
    Ok(())
}

/// A model id: 1 to 200 of letters, digits and `._:/@+-`; for Gemini, one that
/// can go in its URL.
pub(crate) fn check_model(field: &str, model: &str, kind: Option<ProviderKind>) -> ApiResult<()> {
    let ok = !model.is_empty()
        && model.len() <= 200
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/@+-".contains(&b));
    if !ok {
        return Err(ApiError::bad_request(
            field,
            "must be 1 to 200 characters of letters, digits and . _ : / @ + -",
        ));
    }
    if kind == Some(ProviderKind::Gemini) {
        let id = model.strip_prefix("models/").unwrap_or(model);
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(ApiError::bad_request(
                field,
                "a Gemini model id has only letters, digits, '-', '.' and '_' (after an optional models/)",
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_base_url(url: &str) -> ApiResult<String> {
    if url.len() > 2048 {
        return Err(ApiError::bad_request(
            "base_url",
            "must be at most 2048 characters",
        ));
    }
    fleetgate_ai::check_base_url(url).map_err(|e| ApiError::bad_request("base_url", e))
}

pub(crate) fn check_max_tokens(field: &str, n: i64) -> ApiResult<i64> {
    if !(1..=1_000_000).contains(&n) {
        return Err(ApiError::bad_request(field, "must be 1 to 1000000"));
    }
    Ok(n)
}

pub(crate) fn check_temperature(field: &str, t: f64) -> ApiResult<f64> {
    if !(0.0..=2.0).contains(&t) {
        return Err(ApiError::bad_request(field, "must be 0 to 2"));
    }
    Ok(t)
}

/// Seals a key and makes its hint.
pub(crate) fn seal_key(state: &AppState, key: &str) -> (String, String) {
    (state.secrets.seal(key.as_bytes()), mask_key(key))
}

/// Applies the input to `p` (a new record or the stored one), validated.
fn apply(state: &AppState, p: &mut AiProviderRecord, body: &ProviderInput) -> ApiResult<()> {
    let kind = ProviderKind::from(body.kind);
    p.name = check_name(&body.name)?;
    p.kind = kind.as_str().to_string();
    match &body.base_url {
        Some(Some(u)) => p.base_url = Some(check_base_url(u)?),
        Some(None) => p.base_url = None,
        // Absent on update keeps the stored one, absent on create is none.
        None => {}
    }
    if p.base_url.is_none() && kind.default_base_url().is_none() {
        return Err(ApiError::bad_request(
            "base_url",
            "an openai_compatible provider needs its base URL (e.g. http://127.0.0.1:11434/v1)",
        ));
    }
    match &body.api_key {
        Some(Some(k)) => {
            check_key("api_key", k)?;
            let (sealed, hint) = seal_key(state, k);
            p.api_key_sealed = Some(sealed);
            p.api_key_hint = Some(hint);
        }
        Some(None) => {
            p.api_key_sealed = None;
            p.api_key_hint = None;
        }
        None => {}
    }
    match (&body.default_model, kind.default_model()) {
        (Some(m), _) => {
            check_model("default_model", m, Some(kind))?;
            p.default_model = m.clone();
        }
        (None, Some(d)) if p.default_model.is_empty() => p.default_model = d.to_string(),
        (None, None) if p.default_model.is_empty() => {
            return Err(ApiError::bad_request(
                "default_model",
                "an openai_compatible provider needs the model to ask for",
            ))
        }
        (None, _) => check_model("default_model", &p.default_model, Some(kind))?,
    }
    if let Some(n) = body.max_tokens {
        p.max_tokens = check_max_tokens("max_tokens", n)?;
    }
    if let Some(t) = body.temperature {
        p.temperature = check_temperature("temperature", t)?;
    }
    if let Some(ms) = body.timeout_ms {
        if !(1000..=600_000).contains(&ms) {
            return Err(ApiError::bad_request(
                "timeout_ms",
                "must be 1000 to 600000",
            ));
        }
        p.timeout_ms = ms;
    }
    if let Some(e) = body.enabled {
        p.enabled = e;
    }
    if let Some(d) = body.is_default {
        p.is_default = d;
    }
    Ok(())
}

/// A fresh record with the defaults, for `apply` to fill.
pub(crate) fn new_record() -> AiProviderRecord {
    let now = now_ms();
    AiProviderRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name: String::new(),
        kind: String::new(),
        base_url: None,
        api_key_sealed: None,
        api_key_hint: None,
        default_model: String::new(),
        max_tokens: DEFAULT_MAX_TOKENS,
        temperature: DEFAULT_TEMPERATURE,
        timeout_ms: DEFAULT_TIMEOUT_MS,
        enabled: true,
        is_default: false,
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

pub(crate) async fn provider(state: &AppState, id: &str) -> ApiResult<AiProviderRecord> {
    state
        .store
        .get_ai_provider(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("AI provider {id}")))
}

#[utoipa::path(get, path = "/api/v1/ai/providers", operation_id = "list_ai_providers", tag = "ai",
    responses((status = 200, description = "AI providers, oldest first (keys masked)", body = ListEnvelope<ProviderView>)))]
pub async fn list(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<axum::Json<ListEnvelope<ProviderView>>> {
    let items: Vec<ProviderView> = state
        .store
        .list_ai_providers()
        .await?
        .iter()
        .map(view)
        .collect();
    Ok(axum::Json(ListEnvelope::whole(items)))
}

#[utoipa::path(post, path = "/api/v1/ai/providers", operation_id = "create_ai_provider", tag = "ai", request_body = ProviderInput,
    responses((status = 201, description = "Created (the key is stored sealed and shown masked)", body = ProviderView)))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<ProviderInput>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    let mut p = new_record();
    apply(&state, &mut p, &body)?;
    state.store.create_ai_provider(&auth.actor, &p).await?;
    state.refresh_ai().await;
    Ok(respond(StatusCode::CREATED, &p))
}

#[utoipa::path(get, path = "/api/v1/ai/providers/{id}", operation_id = "get_ai_provider", tag = "ai",
    params(("id" = String, Path, description = "Provider id")),
    responses((status = 200, description = "The provider (key masked)", body = ProviderView)))]
pub async fn get(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let p = provider(&state, &id).await?;
    Ok(respond(StatusCode::OK, &p))
}

#[utoipa::path(put, path = "/api/v1/ai/providers/{id}", operation_id = "update_ai_provider", tag = "ai",
    params(("id" = String, Path, description = "Provider id")), request_body = ProviderInput,
    responses((status = 200, description = "Updated; fields left out keep their values, `api_key: null` removes the key", body = ProviderView)))]
pub async fn update(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<ProviderInput>,
) -> ApiResult<Response> {
    auth.require(Role::Admin)?;
    let mut p = provider(&state, &id).await?;
    if ProviderKind::from(body.kind).as_str() != p.kind && body.default_model.is_none() {
        // Another vendor's model id means nothing to this one.
        p.default_model.clear();
    }
    apply(&state, &mut p, &body)?;
    p.updated_at = now_ms();
    let p = state
        .store
        .update_ai_provider(&auth.actor, &p, expected)
        .await?;
    state.refresh_ai().await;
    Ok(respond(StatusCode::OK, &p))
}

#[utoipa::path(delete, path = "/api/v1/ai/providers/{id}", operation_id = "delete_ai_provider", tag = "ai",
    params(("id" = String, Path, description = "Provider id")),
    responses((status = 204, description = "Deleted, with every preference that named it")))]
pub async fn delete(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require(Role::Admin)?;
    state.store.delete_ai_provider(&auth.actor, &id).await?;
    state.refresh_ai().await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    pub provider_id: String,
    /// The model ids the provider offers, as it lists them.
    pub models: Vec<String>,
}

/// The error answer of a failed provider call: 502 (the provider refused or
/// answered badly), 504 (it did not answer in time) or 409 (the provider
/// cannot be called as configured).
pub(crate) fn provider_failure(e: &fleetgate_ai::AiError) -> ApiError {
    use fleetgate_ai::AiError;
    let code = ai::error_code(e);
    let (status, api_code) = match e {
        AiError::Config(_) => (StatusCode::CONFLICT, "AI_PROVIDER_NOT_CONFIGURED"),
        AiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "AI_PROVIDER_TIMEOUT"),
        _ => (StatusCode::BAD_GATEWAY, "AI_PROVIDER_ERROR"),
    };
    ApiError::new(status, api_code, e.to_string())
        .with_details(serde_json::json!({ "reason": code }))
}

#[utoipa::path(get, path = "/api/v1/ai/providers/{id}/models", operation_id = "list_ai_provider_models", tag = "ai",
    params(("id" = String, Path, description = "Provider id")),
    responses(
        (status = 200, description = "The models the provider lists now", body = ModelList),
        (status = 502, description = "The provider refused the call or answered badly (AI_PROVIDER_ERROR; details.reason: AUTH, UNREACHABLE, PROVIDER_ERROR, MALFORMED)", body = crate::error::ErrorBody),
        (status = 504, description = "The provider did not answer in time (AI_PROVIDER_TIMEOUT)", body = crate::error::ErrorBody),
    ))]
pub async fn models(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<ModelList>> {
    let p = provider(&state, &id).await?;
    let client = ai::client_for(&state, &p).map_err(|e| provider_failure(&e))?;
    let models = client
        .list_models()
        .await
        .map_err(|e| provider_failure(&e))?;
    Ok(axum::Json(ModelList {
        provider_id: p.id,
        models,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct AiHealth {
    /// `ok` (every enabled provider answered), `degraded` (some did), `down`
    /// (none did) or `unconfigured` (no enabled provider).
    pub status: String,
    pub checked_at: String,
    pub providers: Vec<ProviderHealth>,
}

#[utoipa::path(get, path = "/api/v1/ai/health", operation_id = "ai_health", tag = "ai",
    params(("timeout_ms" = Option<i64>, Query, description = "Longest wait per provider, 100 to 30000 ms (default 5000)")),
    responses((status = 200, description = "Each provider checked at once with its cheapest call (listing its models); disabled ones are not called", body = AiHealth)))]
pub async fn health(
    State(state): State<AppState>,
    _auth: AuthContext,
    query: QueryParams,
) -> ApiResult<axum::Json<AiHealth>> {
    let timeout_ms = query.int("timeout_ms")?.unwrap_or(5000);
    if !(100..=30_000).contains(&timeout_ms) {
        return Err(ApiError::bad_request("timeout_ms", "must be 100 to 30000"));
    }
    let timeout = Duration::from_millis(timeout_ms as u64);
    let providers = state.store.list_ai_providers().await?;
    let checks = providers.iter().map(|p| ai::check(&state, p, timeout));
    let results = futures::future::join_all(checks).await;
    let called: Vec<&ProviderHealth> = results.iter().filter(|h| h.status != "disabled").collect();
    let ok = called.iter().filter(|h| h.status == "ok").count();
    let status = if called.is_empty() {
        "unconfigured"
    } else if ok == called.len() {
        "ok"
    } else if ok == 0 {
        "down"
    } else {
        "degraded"
    };
    Ok(axum::Json(AiHealth {
        status: status.into(),
        checked_at: rfc3339(now_ms()),
        providers: results,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreferencesInput {
    /// The provider used when a request names none (null: the default provider).
    #[serde(default)]
    pub provider_id: Option<String>,
    /// The model to ask `provider_id` for (sets `models[provider_id]`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, pattern = r"^[A-Za-z0-9._:/@+-]+$")]
    pub model: Option<String>,
    /// The model to ask each provider for, by provider id (at most 100).
    #[serde(default)]
    pub models: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, ToSchema)]
pub struct Effective {
    pub provider_id: String,
    pub provider_name: String,
    pub kind: String,
    pub model: String,
}

#[derive(Serialize, ToSchema)]
pub struct PreferencesView {
    pub provider_id: Option<String>,
    /// The preferred model of `provider_id`, if set.
    pub model: Option<String>,
    pub models: BTreeMap<String, String>,
    /// 0 until first saved.
    pub version: i64,
    /// Where the caller's AI requests go when they name no provider: the
    /// preferred provider, else the default one, else the only enabled one;
    /// null when none can be chosen.
    pub effective: Option<Effective>,
}

async fn preferences_view(
    state: &AppState,
    prefs: &AiPreferencesRecord,
) -> ApiResult<PreferencesView> {
    let providers = state.store.list_ai_providers().await?;
    let effective = ai::resolve(&providers, prefs, None)?.map(|r| Effective {
        provider_id: r.provider.id,
        provider_name: r.provider.name,
        kind: r.provider.kind,
        model: r.model,
    });
    Ok(PreferencesView {
        provider_id: prefs.provider_id.clone(),
        model: prefs
            .provider_id
            .as_ref()
            .and_then(|id| prefs.models.get(id))
            .cloned(),
        models: prefs.models.clone(),
        version: prefs.version,
        effective,
    })
}

#[utoipa::path(get, path = "/api/v1/ai/preferences", operation_id = "get_ai_preferences", tag = "ai",
    responses((status = 200, description = "The caller's model preferences and where their requests go", body = PreferencesView)))]
pub async fn get_preferences(
    State(state): State<AppState>,
    auth: AuthContext,
) -> ApiResult<Response> {
    let prefs = state.store.get_ai_preferences(&ai::owner_of(&auth)).await?;
    let v = preferences_view(&state, &prefs).await?;
    Ok(json_with_etag(StatusCode::OK, prefs.version, v))
}

#[utoipa::path(put, path = "/api/v1/ai/preferences", operation_id = "put_ai_preferences", tag = "ai", request_body = PreferencesInput,
    responses((status = 200, description = "Saved, replacing the caller's previous preferences (any role but viewer, who changes nothing)", body = PreferencesView)))]
pub async fn put_preferences(
    State(state): State<AppState>,
    auth: AuthContext,
    IfMatch(expected): IfMatch,
    JsonBody(body): JsonBody<PreferencesInput>,
) -> ApiResult<Response> {
    let providers = state.store.list_ai_providers().await?;
    let kind_of = |id: &str| {
        providers
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.kind.parse::<ProviderKind>().ok())
    };
    if let Some(id) = &body.provider_id {
        if kind_of(id).is_none() {
            return Err(ApiError::bad_request(
                "provider_id",
                format!("there is no AI provider with id {id:?}"),
            ));
        }
    }
    let mut models = body.models.clone().unwrap_or_default();
    if models.len() > 100 {
        return Err(ApiError::bad_request("models", "at most 100 entries"));
    }
    for (id, model) in &models {
        let field = format!("models.{id}");
        let Some(kind) = kind_of(id) else {
            return Err(ApiError::bad_request(
                &field,
                format!("there is no AI provider with id {id:?}"),
            ));
        };
        check_model(&field, model, kind)?;
    }
    if let Some(model) = &body.model {
        let Some(id) = &body.provider_id else {
            return Err(ApiError::bad_request(
                "model",
                "needs provider_id: the model is that provider's",
            ));
        };
        check_model("model", model, kind_of(id).flatten())?;
        models.insert(id.clone(), model.clone());
    }
    let prefs = AiPreferencesRecord {
        owner_id: ai::owner_of(&auth),
        provider_id: body.provider_id.clone(),
        models,
        version: 0,
        updated_at: now_ms(),
    };
    let saved = state
        .store
        .put_ai_preferences(&auth.actor, &prefs, expected)
        .await?;
    let v = preferences_view(&state, &saved).await?;
    Ok(json_with_etag(StatusCode::OK, saved.version, v))
}
