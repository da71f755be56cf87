//! AI providers as the manager uses them: a stored provider made into a
//! [`ProviderClient`] (its key opened only for the call), health checks, and
//! which provider and model a caller's request goes to (the request's own
//! choice, else the caller's preferences, else the default provider).
//!
//! Keys are sealed with the installation's secret key (`FLEETGATE_SECRET_KEY`,
//! also read as `FLEETGATE_MASTER_KEY`, or `<data_dir>/secret.key`) and shown
//! only masked.

use std::time::{Duration, Instant};

use fleetgate_ai::{AiError, ProviderClient, ProviderConfig, ProviderKind};
use fleetgate_store::{AiPreferencesRecord, AiProviderRecord};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Whose preferences a caller's are: the user's, or, for an API key that
/// belongs to no user (the bootstrap key), the key's own.
pub fn owner_of(auth: &AuthContext) -> String {
    match (auth.user_id(), auth.actor.id.as_deref()) {
        (Some(user), _) => user.to_string(),
        (None, Some(key)) => format!("key:{key}"),
        (None, None) => auth.actor.name.clone(),
    }
}

/// The stored kind, read back.
pub fn kind_of(p: &AiProviderRecord) -> Result<ProviderKind, AiError> {
    p.kind
        .parse()
        .map_err(|e: String| AiError::Config(format!("stored provider {}: {e}", p.name)))
}

/// A client for `p`, its key opened for it. A key that does not open (the
/// secret key changed) is a configuration error naming the provider.
pub fn client_for(state: &AppState, p: &AiProviderRecord) -> Result<ProviderClient, AiError> {
    let api_key = match &p.api_key_sealed {
        Some(sealed) => {
            let bytes = state.secrets.open(sealed).map_err(|e| {
                AiError::Config(format!(
                    "the API key of provider {} cannot be opened: {e}",
                    p.name
                ))
            })?;
            Some(String::from_utf8(bytes).map_err(|_| {
                AiError::Config(format!("the API key of provider {} is not text", p.name))
            })?)
        }
        None => None,
    };
    ProviderClient::new(
        state.ai_http.clone(),
        ProviderConfig {
            kind: kind_of(p)?,
            base_url: p.base_url.clone(),
            api_key,
            timeout: Duration::from_millis(p.timeout_ms.max(1) as u64),
        },
    )
}

/// The answer of one provider to a health check.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProviderHealth {
    pub id: String,
    pub name: String,
    pub kind: String,
    /// `ok`, `error`, `disabled` (not checked) or `unconfigured` (no key, or a
    /// configuration that cannot work; not checked).
    pub status: String,
    /// Why it is not `ok`, e.g. `AUTH` (the key was refused), `TIMEOUT`,
    /// `UNREACHABLE`, `PROVIDER_ERROR`, `MALFORMED`, `CONFIG`.
    pub code: Option<String>,
    pub error: Option<String>,
    /// How long the check took.
    pub latency_ms: Option<i64>,
    /// How many models the provider listed.
    pub models: Option<i64>,
    pub is_default: bool,
}

/// The machine code of a provider failure.
pub fn error_code(e: &AiError) -> &'static str {
    match e {
        AiError::Config(_) => "CONFIG",
        e if e.is_auth() => "AUTH",
        AiError::Timeout(_) => "TIMEOUT",
        AiError::Transport(_) => "UNREACHABLE",
        AiError::Provider { .. } => "PROVIDER_ERROR",
        AiError::Malformed(_) | AiError::Truncated => "MALFORMED",
    }
}

/// Checks one provider with its cheapest call (listing its models), within
/// `timeout` (or the provider's own timeout, if shorter).
pub async fn check(state: &AppState, p: &AiProviderRecord, timeout: Duration) -> ProviderHealth {
    let mut out = ProviderHealth {
        id: p.id.clone(),
        name: p.name.clone(),
        kind: p.kind.clone(),
        status: "ok".into(),
        code: None,
        error: None,
        latency_ms: None,
        models: None,
        is_default: p.is_default,
    };
    if !p.enabled {
        out.status = "disabled".into();
        return out;
    }
    let client = match client_for(state, p) {
        Ok(c) => c,
        Err(e) => {
            out.status = "unconfigured".into();
            out.code = Some(error_code(&e).into());
            out.error = Some(e.to_string());
            return out;
        }
    };
    let started = Instant::now();
    let limit = timeout.min(Duration::from_millis(p.timeout_ms.max(1) as u64));
    let result = match tokio::time::timeout(limit, client.list_models()).await {
        Ok(r) => r,
        Err(_) => Err(AiError::Timeout(limit)),
    };
    out.latency_ms = Some(started.elapsed().as_millis() as i64);
    match result {
        Ok(models) => out.models = Some(models.len() as i64),
        Err(e) => {
            out.status = "error".into();
            out.code = Some(error_code(&e).into());
            out.error = Some(e.to_string());
        }
    }
    out
}

/// Where a caller's AI request goes.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub provider: AiProviderRecord,
    pub model: String,
}

/// The provider and model for a request of `owner`: the provider the request
/// names (by id or name), else the owner's preferred one, else the default
/// provider, else the only enabled one; the model is the owner's preference
/// for that provider, else the provider's default model. `Ok(None)` when no
/// provider can be chosen.
pub fn resolve(
    providers: &[AiProviderRecord],
    prefs: &AiPreferencesRecord,
    requested: Option<&str>,
) -> ApiResult<Option<Resolved>> {
    let provider = match requested {
        Some(r) => Some(
            providers
                .iter()
                .find(|p| p.id == r || p.name == r)
                .ok_or_else(|| {
                    ApiError::bad_request("provider", format!("there is no AI provider {r:?}"))
                })?,
        ),
        None => {
            let enabled: Vec<&AiProviderRecord> = providers.iter().filter(|p| p.enabled).collect();
            prefs
                .provider_id
                .as_deref()
                .and_then(|id| enabled.iter().find(|p| p.id == id))
                .or_else(|| enabled.iter().find(|p| p.is_default))
                .or_else(|| (enabled.len() == 1).then(|| &enabled[0]))
                .copied()
        }
    };
    Ok(provider.map(|p| Resolved {
        model: prefs
            .models
            .get(&p.id)
            .cloned()
            .unwrap_or_else(|| p.default_model.clone()),
        provider: p.clone(),
    }))
}

/// Object keys whose values are never sent to a model: keys, tokens,
/// passwords, sealed values and the like.
fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "key"
        || n.ends_with("_key")
        || n.ends_with("-key")
        || n.ends_with("key_pem")
        || [
            "password",
            "passwd",
            "secret",
            "token",
            "apikey",
            "api_key",
            "private",
            "sealed",
            "authorization",
            "credential",
            "cookie",
            "signature",
        ]
        .iter()
        .any(|s| n.contains(s))
}

/// The credentials of a URL (`scheme://user:pass@host`) replaced.
fn strip_userinfo(s: &str) -> Option<String> {
    let start = s.find("://")? + 3;
    let rest = &s[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..end].rfind('@')?;
    Some(format!("{}[redacted]{}", &s[..start], &rest[at..]))
}

/// Removes from `v` everything that must not reach a model: the values of
/// secret-named fields (and of `{name, value}` pairs with a secret name, such
/// as an `Authorization` header) and the credentials of URLs.
pub fn strip_secrets(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let pair_is_secret = map
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(secret_name);
            for (k, val) in map.iter_mut() {
                let secret = secret_name(k) || (pair_is_secret && k == "value");
                if secret && !val.is_null() && *val != Value::Bool(false) {
                    *val = Value::String("[redacted]".into());
                } else {
                    strip_secrets(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_secrets),
        Value::String(s) => {
            if let Some(clean) = strip_userinfo(s) {
                *s = clean;
            }
        }
        _ => {}
    }
}

/// The JSON object a model answered with: the whole text, or one fenced
/// code block that is the whole text. `Err` says what is wrong with it.
pub fn answer_object(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|r| r.strip_suffix("```"))
        .map(str::trim)
        .unwrap_or(t);
    if t.is_empty() {
        return Err("the answer is empty".into());
    }
    match serde_json::from_str::<serde_json::Value>(t) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err("the answer is JSON but not an object".into()),
        Err(e) => Err(format!("the answer is not JSON ({e})")),
    }
}

/// At most `n` characters of `s`, for error details.
pub fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A provider's answer that is not what was asked for: 502 naming what is
/// wrong, with the start of the answer.
pub fn invalid_answer(what: impl Into<String>, raw: &str) -> ApiError {
    let what = what.into();
    ApiError::new(
        axum::http::StatusCode::BAD_GATEWAY,
        "AI_ANSWER_INVALID",
        format!("the AI provider's answer was refused: {what}"),
    )
    .with_details(serde_json::json!({ "reason": what, "raw_response": clip(raw, 2000) }))
}

/// One model call made for a caller.
pub struct Asked {
    pub resolved: Resolved,
    pub completion: fleetgate_ai::Completion,
}

/// Asks the provider the caller's request goes to (see [`resolve`]; `model`
/// overrides the chosen model) for a JSON answer to `prompt`.
pub async fn ask(
    state: &AppState,
    auth: &AuthContext,
    provider: Option<&str>,
    model: Option<&str>,
    system: &str,
    prompt: String,
) -> ApiResult<Asked> {
    let providers = state.store.list_ai_providers().await?;
    let prefs = state.store.get_ai_preferences(&owner_of(auth)).await?;
    let Some(mut resolved) = resolve(&providers, &prefs, provider)? else {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "AI_PROVIDER_NOT_CONFIGURED",
            "no AI provider can be chosen: add one at /api/v1/ai/providers (or mark one as the default)",
        ));
    };
    if !resolved.provider.enabled {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "AI_PROVIDER_NOT_CONFIGURED",
            format!("AI provider {} is disabled", resolved.provider.name),
        ));
    }
    if let Some(m) = model {
        crate::api::ai::check_model("model", m, kind_of(&resolved.provider).ok())?;
        resolved.model = m.to_string();
    }
    let client =
        client_for(state, &resolved.provider).map_err(|e| crate::api::ai::provider_failure(&e))?;
    let p = &resolved.provider;
    let req = fleetgate_ai::ChatRequest::new(resolved.model.clone(), prompt)
        .system(system)
        .json_output()
        .max_tokens(p.max_tokens.clamp(1, u32::MAX as i64) as u32)
        .temperature(p.temperature as f32);
    let completion = client
        .complete(&req)
        .await
        .map_err(|e| crate::api::ai::provider_failure(&e))?;
    tracing::info!(provider = %p.name, model = %resolved.model, input_tokens = completion.usage.input_tokens,
        output_tokens = completion.usage.output_tokens, actor = %auth.actor.name, "AI provider answered");
    Ok(Asked {
        resolved,
        completion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str, enabled: bool, is_default: bool) -> AiProviderRecord {
        AiProviderRecord {
            id: id.into(),
            name: format!("name-{id}"),
            kind: "openai".into(),
            base_url: None,
            api_key_sealed: None,
            api_key_hint: None,
            default_model: format!("model-{id}"),
            max_tokens: 1024,
            temperature: 0.0,
            timeout_ms: 1000,
            enabled,
            is_default,
            version: 1,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn secrets_are_stripped() {
        let mut v = serde_json::json!({
            "id": "r1", "upstream": "api", "api_key": "sk-1", "jwt_secret": "s",
            "auth": {"password": "p", "users": [{"name": "a", "password_hash": "h"}]},
            "headers": [{"name": "Authorization", "value": "Bearer x"}, {"name": "X-Trace", "value": "1"}],
            "targets": ["http://user:pw@10.0.0.1:80/x", "http://10.0.0.2"],
            "tls": {"key_pem": "-----BEGIN", "cert_pem": "c"}, "keepalive": 5,
        });
        strip_secrets(&mut v);
        let text = v.to_string();
        for secret in ["sk-1", "\"s\"", "\"p\"", "Bearer", "pw@", "BEGIN", "\"h\""] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(v["headers"][1]["value"], "1");
        assert_eq!(v["targets"][0], "http://[redacted]@10.0.0.1:80/x");
        assert_eq!(
            (v["keepalive"].as_i64(), v["upstream"].as_str()),
            (Some(5), Some("api"))
        );
    }

    #[test]
    fn answers_are_json_objects() {
        assert!(answer_object("{\"a\": 1}").is_ok());
        assert!(answer_object("```json\n{\"a\": 1}\n```").is_ok());
        assert!(answer_object("sure! {\"a\": 1}")
            .expect_err("refused")
            .contains("not JSON"));
        assert!(answer_object("[1]")
            .expect_err("refused")
            .contains("not an object"));
        assert!(answer_object("  ").expect_err("refused").contains("empty"));
    }

    #[test]
    fn requests_then_preferences_then_the_default() {
        let all = [
            p("a", true, false),
            p("b", true, true),
            p("c", false, false),
        ];
        let mut prefs = AiPreferencesRecord::default();
        let pick = |prefs: &AiPreferencesRecord, r: Option<&str>| {
            resolve(&all, prefs, r)
                .expect("resolves")
                .map(|r| (r.provider.id, r.model))
        };
        assert_eq!(pick(&prefs, None), Some(("b".into(), "model-b".into())));
        prefs.provider_id = Some("a".into());
        prefs.models.insert("a".into(), "custom".into());
        assert_eq!(pick(&prefs, None), Some(("a".into(), "custom".into())));
        assert_eq!(
            pick(&prefs, Some("name-b")),
            Some(("b".into(), "model-b".into()))
        );
        // A disabled preferred provider falls back to the default.
        prefs.provider_id = Some("c".into());
        assert_eq!(pick(&prefs, None), Some(("b".into(), "model-b".into())));
        assert!(resolve(&all, &prefs, Some("zzz")).is_err());
        // No default: the only enabled provider, or none.
        let one = [p("a", true, false), p("c", false, false)];
        assert_eq!(
            resolve(&one, &AiPreferencesRecord::default(), None)
                .expect("ok")
                .map(|r| r.provider.id),
            Some("a".into())
        );
        let two = [p("a", true, false), p("b", true, false)];
        assert!(resolve(&two, &AiPreferencesRecord::default(), None)
            .expect("ok")
            .is_none());
    }
}
