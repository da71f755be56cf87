//! The seeds' own spellings of AI provider settings, answered from the same
//! provider records as `/api/v1/ai/providers`:
//!
//! - `/api/v1/ai/keys` (list, store, delete a provider's key by vendor name:
//!   `{provider, api_key, model_preference}`). A vendor's key lives on the
//!   provider named after the vendor (`openai`, `anthropic`, `gemini`), or on
//!   the only provider of that kind; storing a key creates that provider when
//!   there is none. `model_preference` is the caller's own preference.
//! - `/api/v1/settings/ai` (the default provider, in camelCase:
//!   `{provider, apiKey, model, maxTokens, temperature}`; the key is never
//!   sent back, `hasApiKey` says whether one is set).

use axum::extract::State;
use axum::Json;
use fleetgate_ai::ProviderKind;
use fleetgate_core::time::now_ms;
use fleetgate_core::user::Role;
use fleetgate_store::AiProviderRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ai::{
    check_key, check_max_tokens, check_model, check_temperature, new_record, seal_key,
};
use super::rfc3339;
use crate::ai::owner_of;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::AppState;

/// A vendor as the seeds name it. An OpenAI-compatible server needs a base
/// URL, which these shapes cannot carry: it is made at /api/v1/ai/providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Vendor {
    Openai,
    Anthropic,
    /// Anthropic, as some clients call it.
    Claude,
    Gemini,
    /// Gemini, as some clients call it.
    Google,
}

impl From<Vendor> for ProviderKind {
    fn from(v: Vendor) -> Self {
        match v {
            Vendor::Openai => ProviderKind::OpenAi,
            Vendor::Anthropic | Vendor::Claude => ProviderKind::Anthropic,
            Vendor::Gemini | Vendor::Google => ProviderKind::Gemini,
        }
    }
}

/// The provider that holds `kind`'s key for these endpoints: the one named
/// after the vendor, else the only one of that kind. Several of that kind and
/// none named so: a conflict naming them.
fn keyholder(
    providers: &[AiProviderRecord],
    kind: ProviderKind,
) -> ApiResult<Option<&AiProviderRecord>> {
    let of_kind: Vec<&AiProviderRecord> = providers
        .iter()
        .filter(|p| p.kind == kind.as_str())
        .collect();
    if let Some(p) = of_kind.iter().find(|p| p.name == kind.as_str()) {
        return Ok(Some(p));
    }
    match of_kind.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => Err(ApiError::conflict(format!(
            "there are {} {kind} providers ({}) and none is named {kind}: change the one you mean at /api/v1/ai/providers/{{id}}",
            many.len(),
            many.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// A new provider for `kind` with the vendor's defaults, named after it.
fn vendor_record(kind: ProviderKind) -> AiProviderRecord {
    let mut p = new_record();
    p.name = kind.as_str().to_string();
    p.kind = kind.as_str().to_string();
    p.default_model = kind.default_model().unwrap_or_default().to_string();
    p
}

/// Saves a provider, new (version 0 until stored) or changed.
async fn save(
    state: &AppState,
    auth: &AuthContext,
    p: AiProviderRecord,
    is_new: bool,
) -> ApiResult<AiProviderRecord> {
    let saved = if is_new {
        state.store.create_ai_provider(&auth.actor, &p).await?;
        p
    } else {
        let mut p = p;
        p.updated_at = now_ms();
        state
            .store
            .update_ai_provider(&auth.actor, &p, None)
            .await?
    };
    state.refresh_ai().await;
    Ok(saved)
}

#[derive(Serialize, ToSchema)]
pub struct KeyView {
    /// The provider's id.
    pub id: String,
    /// The vendor: `openai`, `anthropic`, `gemini` or `openai_compatible`.
    pub provider: String,
    /// The provider's name.
    pub name: String,
    /// The caller's preferred model of this provider, if set.
    pub model_preference: Option<String>,
    /// Whether a key is stored.
    pub configured: bool,
    /// The key masked (`sk-…abcd`).
    pub api_key_masked: Option<String>,
    pub is_default: bool,
    pub updated_at: String,
}

#[utoipa::path(get, path = "/api/v1/ai/keys", operation_id = "list_ai_keys", tag = "ai",
    responses((status = 200, description = "Every provider's key, masked, with the caller's model preference (the providers of /api/v1/ai/providers)", body = Vec<KeyView>)))]
pub async fn list_keys(
    State(state): State<AppState>,
    auth: AuthContext,
) -> ApiResult<Json<Vec<KeyView>>> {
    let prefs = state.store.get_ai_preferences(&owner_of(&auth)).await?;
    let keys = state
        .store
        .list_ai_providers()
        .await?
        .into_iter()
        .map(|p| KeyView {
            model_preference: prefs.models.get(&p.id).cloned(),
            configured: p.api_key_sealed.is_some(),
            api_key_masked: p.api_key_hint.clone(),
            is_default: p.is_default,
            updated_at: rfc3339(p.updated_at),
            provider: p.kind,
            name: p.name,
            id: p.id,
        })
        .collect();
    Ok(Json(keys))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreKeyInput {
    pub provider: Vendor,
    /// 1 to 512 visible ASCII characters; stored sealed, never returned.
    #[schema(min_length = 1, max_length = 512, pattern = r"^[!-~]+$")]
    pub api_key: String,
    /// The caller's preferred model of this provider.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, pattern = r"^[A-Za-z0-9._:/@+-]+$")]
    pub model_preference: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct StoredKey {
    pub success: bool,
    /// The provider holding the key.
    pub id: String,
    pub provider: String,
    pub name: String,
    /// Whether the provider was created for this key.
    pub created: bool,
    pub api_key_masked: Option<String>,
    pub model_preference: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/ai/keys", operation_id = "store_ai_key", tag = "ai", request_body = StoreKeyInput,
    responses((status = 200, description = "Stored sealed on the vendor's provider (created when there is none); a model preference is saved as the caller's", body = StoredKey)))]
pub async fn store_key(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<StoreKeyInput>,
) -> ApiResult<Json<StoredKey>> {
    auth.require(Role::Admin)?;
    let kind = ProviderKind::from(body.provider);
    check_key("api_key", &body.api_key)?;
    if let Some(m) = &body.model_preference {
        check_model("model_preference", m, Some(kind))?;
    }
    let providers = state.store.list_ai_providers().await?;
    let (mut p, is_new) = match keyholder(&providers, kind)? {
        Some(p) => (p.clone(), false),
        None => (vendor_record(kind), true),
    };
    let (sealed, hint) = seal_key(&state, &body.api_key);
    p.api_key_sealed = Some(sealed);
    p.api_key_hint = Some(hint);
    let p = save(&state, &auth, p, is_new).await?;
    if let Some(model) = &body.model_preference {
        let mut prefs = state.store.get_ai_preferences(&owner_of(&auth)).await?;
        prefs.models.insert(p.id.clone(), model.clone());
        prefs.updated_at = now_ms();
        state
            .store
            .put_ai_preferences(&auth.actor, &prefs, Some(prefs.version))
            .await?;
    }
    Ok(Json(StoredKey {
        success: true,
        id: p.id.clone(),
        provider: p.kind.clone(),
        name: p.name.clone(),
        created: is_new,
        api_key_masked: p.api_key_hint.clone(),
        model_preference: body.model_preference,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteKeyInput {
    pub provider: Vendor,
}

#[derive(Serialize, ToSchema)]
pub struct DeletedKey {
    pub success: bool,
    /// The provider removed with its key.
    pub id: String,
}

#[utoipa::path(delete, path = "/api/v1/ai/keys", operation_id = "delete_ai_key", tag = "ai", request_body = DeleteKeyInput,
    responses((status = 200, description = "The vendor's provider is removed with its key (and the preferences that named it)", body = DeletedKey)))]
pub async fn delete_key(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<DeleteKeyInput>,
) -> ApiResult<Json<DeletedKey>> {
    auth.require(Role::Admin)?;
    let kind = ProviderKind::from(body.provider);
    let providers = state.store.list_ai_providers().await?;
    let Some(p) = keyholder(&providers, kind)? else {
        return Err(ApiError::not_found(format!("an {kind} key")));
    };
    state.store.delete_ai_provider(&auth.actor, &p.id).await?;
    state.refresh_ai().await;
    Ok(Json(DeletedKey {
        success: true,
        id: p.id.clone(),
    }))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AvailableProvider {
    /// The vendor name to send as `provider`.
    pub id: String,
    pub name: String,
    pub default_model: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AiSettingsView {
    pub success: bool,
    /// The default provider's vendor; null when there is no default provider.
    pub provider: Option<String>,
    pub provider_id: Option<String>,
    pub provider_name: Option<String>,
    /// Always empty: the key is never sent back.
    pub api_key: String,
    pub has_api_key: bool,
    /// The key masked (`sk-…abcd`).
    pub api_key_masked: Option<String>,
    /// Always false: a key can be replaced at any time (by an admin).
    pub api_key_locked: bool,
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    /// True when the default provider has no key (or there is none).
    pub demo_mode: bool,
    pub available_providers: Vec<AvailableProvider>,
}

fn settings_view(default: Option<&AiProviderRecord>) -> AiSettingsView {
    let has_key = default.is_some_and(|p| p.api_key_sealed.is_some());
    AiSettingsView {
        success: true,
        provider: default.map(|p| p.kind.clone()),
        provider_id: default.map(|p| p.id.clone()),
        provider_name: default.map(|p| p.name.clone()),
        api_key: String::new(),
        has_api_key: has_key,
        api_key_masked: default.and_then(|p| p.api_key_hint.clone()),
        api_key_locked: false,
        model: default.map(|p| p.default_model.clone()),
        max_tokens: default.map(|p| p.max_tokens),
        temperature: default.map(|p| p.temperature),
        demo_mode: !has_key,
        available_providers: [
            ProviderKind::OpenAi,
            ProviderKind::Anthropic,
            ProviderKind::Gemini,
        ]
        .into_iter()
        .map(|k| AvailableProvider {
            id: k.as_str().into(),
            name: k.display_name().into(),
            default_model: k.default_model().map(str::to_string),
        })
        .collect(),
    }
}

async fn default_provider(
    state: &AppState,
) -> ApiResult<(Vec<AiProviderRecord>, Option<AiProviderRecord>)> {
    let providers = state.store.list_ai_providers().await?;
    let default = providers.iter().find(|p| p.is_default).cloned();
    Ok((providers, default))
}

#[utoipa::path(get, path = "/api/v1/settings/ai", operation_id = "get_ai_settings", tag = "ai",
    responses((status = 200, description = "The default AI provider in the settings shape (the key never sent back)", body = AiSettingsView)))]
pub async fn get_settings(
    State(state): State<AppState>,
    _auth: AuthContext,
) -> ApiResult<Json<AiSettingsView>> {
    let (_, default) = default_provider(&state).await?;
    Ok(Json(settings_view(default.as_ref())))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AiSettingsInput {
    /// The vendor of the default provider: `openai`, `anthropic` (or
    /// `claude`), `gemini` (or `google`). Naming another vendor than the
    /// current default's makes that vendor's provider (created if need be)
    /// the default.
    #[serde(default)]
    pub provider: Option<Vendor>,
    /// A new key (empty or absent: keep the stored one).
    #[serde(default, alias = "api_key")]
    #[schema(max_length = 512, pattern = r"^[!-~]*$")]
    pub api_key: Option<String>,
    /// The default model.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, pattern = r"^[A-Za-z0-9._:/@+-]+$")]
    pub model: Option<String>,
    /// 1 to 1,000,000.
    #[serde(default, alias = "max_tokens")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub max_tokens: Option<i64>,
    /// 0 to 2.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// Accepted for compatibility and ignored: demo mode is simply having no key.
    #[serde(default, alias = "demo_mode")]
    #[allow(dead_code)]
    pub demo_mode: Option<bool>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AiSettingsConfig {
    pub provider: Option<String>,
    pub has_api_key: bool,
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub demo_mode: bool,
}

#[derive(Serialize, ToSchema)]
pub struct AiSettingsSaved {
    pub success: bool,
    pub message: String,
    pub config: AiSettingsConfig,
}

async fn save_settings(
    state: &AppState,
    auth: &AuthContext,
    body: &AiSettingsInput,
) -> ApiResult<AiSettingsSaved> {
    auth.require(Role::Admin)?;
    let kind = body.provider.map(ProviderKind::from);
    let key = body.api_key.as_deref().filter(|k| !k.is_empty());
    if let Some(k) = key {
        check_key("apiKey", k)?;
    }
    let (providers, default) = default_provider(state).await?;
    let (mut p, is_new) = match (kind, default) {
        (Some(k), Some(d)) if d.kind == k.as_str() => (d, false),
        (None, Some(d)) => (d, false),
        (Some(k), _) => match keyholder(&providers, k)? {
            Some(p) => (p.clone(), false),
            None => (vendor_record(k), true),
        },
        (None, None) => {
            return Err(ApiError::bad_request(
                "provider",
                "is required while there is no default AI provider",
            ))
        }
    };
    let kind = p.kind.parse::<ProviderKind>().ok();
    if let Some(m) = &body.model {
        check_model("model", m, kind)?;
        p.default_model = m.clone();
    }
    if let Some(n) = body.max_tokens {
        p.max_tokens = check_max_tokens("maxTokens", n)?;
    }
    if let Some(t) = body.temperature {
        p.temperature = check_temperature("temperature", t)?;
    }
    if let Some(k) = key {
        let (sealed, hint) = seal_key(state, k);
        p.api_key_sealed = Some(sealed);
        p.api_key_hint = Some(hint);
    }
    p.is_default = true;
    let p = save(state, auth, p, is_new).await?;
    let v = settings_view(Some(&p));
    Ok(AiSettingsSaved {
        success: true,
        message: "AI configuration updated".into(),
        config: AiSettingsConfig {
            provider: v.provider,
            has_api_key: v.has_api_key,
            model: v.model,
            max_tokens: v.max_tokens,
            temperature: v.temperature,
            demo_mode: v.demo_mode,
        },
    })
}

#[utoipa::path(put, path = "/api/v1/settings/ai", operation_id = "put_ai_settings", tag = "ai", request_body = AiSettingsInput,
    responses((status = 200, description = "The default provider updated (created for the named vendor when there is none)", body = AiSettingsSaved)))]
pub async fn put_settings(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<AiSettingsInput>,
) -> ApiResult<Json<AiSettingsSaved>> {
    save_settings(&state, &auth, &body).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/settings/ai", operation_id = "post_ai_settings", tag = "ai", request_body = AiSettingsInput,
    responses((status = 200, description = "As PUT (for clients that POST their settings)", body = AiSettingsSaved)))]
pub async fn post_settings(
    State(state): State<AppState>,
    auth: AuthContext,
    JsonBody(body): JsonBody<AiSettingsInput>,
) -> ApiResult<Json<AiSettingsSaved>> {
    save_settings(&state, &auth, &body).await.map(Json)
}
