//! AI providers and each user's model preferences. A provider's API key is
//! stored sealed by the manager (`api_key_sealed`, opaque here) with a masked
//! hint; neither the sealed key nor anything derived from it but the hint ever
//! reaches the audit log. At most one provider is the default: making one the
//! default takes the mark from the others in the same transaction.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{check_version, SqlStore};
use crate::{Actor, AuditEvent, Result, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct AiProviderRecord {
    pub id: String,
    /// Unique among providers.
    pub name: String,
    /// `openai`, `anthropic`, `gemini` or `openai_compatible`.
    pub kind: String,
    /// Overrides the vendor's endpoint; always set for `openai_compatible`.
    pub base_url: Option<String>,
    /// The API key, sealed by the manager.
    pub api_key_sealed: Option<String>,
    /// The key masked for display (`sk-…abcd`).
    pub api_key_hint: Option<String>,
    /// The model asked for when a request and the user's preferences name none.
    pub default_model: String,
    /// Generation defaults.
    pub max_tokens: i64,
    pub temperature: f64,
    /// How long a call may take.
    pub timeout_ms: i64,
    pub enabled: bool,
    pub is_default: bool,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl AiProviderRecord {
    /// What the audit log keeps: the hint, never the sealed key.
    fn audit_view(&self) -> Value {
        json!({"id": self.id, "name": self.name, "kind": self.kind, "base_url": self.base_url,
               "api_key_set": self.api_key_sealed.is_some(), "api_key_hint": self.api_key_hint,
               "default_model": self.default_model, "max_tokens": self.max_tokens,
               "temperature": self.temperature, "timeout_ms": self.timeout_ms,
               "enabled": self.enabled, "is_default": self.is_default})
    }
}

/// One owner's preferences: a user's id, or `key:<id>` for an API key that
/// belongs to no user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AiPreferencesRecord {
    pub owner_id: String,
    /// The provider used when a request names none.
    pub provider_id: Option<String>,
    /// The model to ask each provider for, by provider id.
    pub models: BTreeMap<String, String>,
    /// 0 until first saved.
    pub version: i64,
    pub updated_at: i64,
}

impl AiPreferencesRecord {
    fn audit_view(&self) -> Value {
        json!({"provider_id": self.provider_id, "models": self.models})
    }
}

#[async_trait]
pub trait AiStore: Send + Sync {
    /// Saves a new provider. [`StoreError::Conflict`] when the id or the name
    /// is taken. When it is the default, the previous default stops being one.
    async fn create_ai_provider(&self, actor: &Actor, p: &AiProviderRecord) -> Result<()>;
    async fn get_ai_provider(&self, id: &str) -> Result<Option<AiProviderRecord>>;
    /// Every provider, oldest first.
    async fn list_ai_providers(&self) -> Result<Vec<AiProviderRecord>>;
    /// Saves everything but the id and creation time; the version goes up by
    /// one. As on create, a taken name is a conflict and a new default takes
    /// the mark from the old one.
    async fn update_ai_provider(
        &self,
        actor: &Actor,
        p: &AiProviderRecord,
        expected_version: Option<i64>,
    ) -> Result<AiProviderRecord>;
    /// Removes the provider, and every preference that named it, and returns
    /// the provider as it was.
    async fn delete_ai_provider(&self, actor: &Actor, id: &str) -> Result<AiProviderRecord>;

    /// The owner's preferences (an empty record with version 0 when none are saved).
    async fn get_ai_preferences(&self, owner_id: &str) -> Result<AiPreferencesRecord>;
    /// Replaces the owner's preferences; the version goes up by one.
    /// [`StoreError::Invalid`] when they name a provider that does not exist.
    async fn put_ai_preferences(
        &self,
        actor: &Actor,
        prefs: &AiPreferencesRecord,
        expected_version: Option<i64>,
    ) -> Result<AiPreferencesRecord>;
}

const COLS: &str = "id, name, kind, base_url, api_key_sealed, api_key_hint, default_model, \
     max_tokens, temperature, timeout_ms, enabled, is_default, version, created_at, updated_at";

fn from_row(r: &AnyRow) -> Result<AiProviderRecord> {
    let enabled: i64 = r.try_get("enabled")?;
    let is_default: i64 = r.try_get("is_default")?;
    Ok(AiProviderRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        kind: r.try_get("kind")?,
        base_url: r.try_get("base_url")?,
        api_key_sealed: r.try_get("api_key_sealed")?,
        api_key_hint: r.try_get("api_key_hint")?,
        default_model: r.try_get("default_model")?,
        max_tokens: r.try_get("max_tokens")?,
        temperature: r.try_get("temperature")?,
        timeout_ms: r.try_get("timeout_ms")?,
        enabled: enabled != 0,
        is_default: is_default != 0,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds the columns after `id`, in [`COLS`] order.
fn bind_fields<'q>(q: Query<'q>, p: &AiProviderRecord) -> Query<'q> {
    q.bind(p.name.clone())
        .bind(p.kind.clone())
        .bind(p.base_url.clone())
        .bind(p.api_key_sealed.clone())
        .bind(p.api_key_hint.clone())
        .bind(p.default_model.clone())
        .bind(p.max_tokens)
        .bind(p.temperature)
        .bind(p.timeout_ms)
        .bind(i64::from(p.enabled))
        .bind(i64::from(p.is_default))
        .bind(p.version)
        .bind(p.created_at)
        .bind(p.updated_at)
}

async fn locked(conn: &mut sqlx::AnyConnection, id: &str) -> Result<AiProviderRecord> {
    // A no-op write takes the row's lock on PostgreSQL before it is read.
    sqlx::query("UPDATE ai_providers SET version = version WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("SELECT {COLS} FROM ai_providers WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("AI provider {id}")))
}

/// Takes the default mark from every provider but `id` (each one that loses
/// it changes, so its version goes up).
async fn clear_other_defaults(conn: &mut sqlx::AnyConnection, id: &str) -> Result<()> {
    sqlx::query(
        "UPDATE ai_providers SET is_default = 0, version = version + 1 \
         WHERE is_default <> 0 AND id <> $1",
    )
    .bind(id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

fn name_taken(e: sqlx::Error, p: &AiProviderRecord) -> StoreError {
    if crate::sql::is_unique_violation(&e) {
        StoreError::Conflict(format!(
            "an AI provider named {:?} (or with id {}) already exists",
            p.name, p.id
        ))
    } else {
        e.into()
    }
}

#[async_trait]
impl AiStore for SqlStore {
    async fn create_ai_provider(&self, actor: &Actor, p: &AiProviderRecord) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let marks: Vec<String> = (1..=15).map(|i| format!("${i}")).collect();
        let sql = format!(
            "INSERT INTO ai_providers ({COLS}) VALUES ({})",
            marks.join(", ")
        );
        bind_fields(sqlx::query(&sql).bind(p.id.clone()), p)
            .execute(&mut *tx)
            .await
            .map_err(|e| name_taken(e, p))?;
        if p.is_default {
            clear_other_defaults(&mut tx, &p.id).await?;
        }
        tx.commit(
            actor,
            &AuditEvent::new("ai_provider.create", "ai_provider", Some(&p.id))
                .after(p.audit_view()),
        )
        .await
    }

    async fn get_ai_provider(&self, id: &str) -> Result<Option<AiProviderRecord>> {
        sqlx::query(&format!("SELECT {COLS} FROM ai_providers WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    async fn list_ai_providers(&self) -> Result<Vec<AiProviderRecord>> {
        sqlx::query(&format!(
            "SELECT {COLS} FROM ai_providers ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(from_row)
        .collect()
    }

    async fn update_ai_provider(
        &self,
        actor: &Actor,
        p: &AiProviderRecord,
        expected_version: Option<i64>,
    ) -> Result<AiProviderRecord> {
        let mut tx = self.begin_audited().await?;
        let before = locked(&mut tx, &p.id).await?;
        check_version(expected_version, before.version)?;
        let after = AiProviderRecord {
            version: before.version + 1,
            created_at: before.created_at,
            ..p.clone()
        };
        let sets: Vec<String> = COLS
            .split(", ")
            .skip(1)
            .enumerate()
            .map(|(i, c)| format!("{} = ${}", c.trim(), i + 1))
            .collect();
        let sql = format!("UPDATE ai_providers SET {} WHERE id = $15", sets.join(", "));
        bind_fields(sqlx::query(&sql), &after)
            .bind(after.id.clone())
            .execute(&mut *tx)
            .await
            .map_err(|e| name_taken(e, &after))?;
        if after.is_default {
            clear_other_defaults(&mut tx, &after.id).await?;
        }
        let mut event = AuditEvent::new("ai_provider.update", "ai_provider", Some(&p.id))
            .before(before.audit_view())
            .after(after.audit_view());
        if before.api_key_sealed != after.api_key_sealed {
            // The hint may be the same for two keys; say that the key changed.
            if let Some(Value::Object(o)) = event.after.as_mut() {
                o.insert("api_key_changed".into(), Value::Bool(true));
            }
        }
        tx.commit(actor, &event).await?;
        Ok(after)
    }

    async fn delete_ai_provider(&self, actor: &Actor, id: &str) -> Result<AiProviderRecord> {
        let mut tx = self.begin_audited().await?;
        let before = locked(&mut tx, id).await?;
        for sql in [
            "DELETE FROM ai_model_preferences WHERE provider_id = $1",
            "UPDATE ai_preferences SET provider_id = NULL WHERE provider_id = $1",
            "DELETE FROM ai_providers WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit(
            actor,
            &AuditEvent::new("ai_provider.delete", "ai_provider", Some(id))
                .before(before.audit_view()),
        )
        .await?;
        Ok(before)
    }

    async fn get_ai_preferences(&self, owner_id: &str) -> Result<AiPreferencesRecord> {
        let mut conn = self.pool.acquire().await?;
        preferences_in(&mut conn, owner_id).await
    }

    async fn put_ai_preferences(
        &self,
        actor: &Actor,
        prefs: &AiPreferencesRecord,
        expected_version: Option<i64>,
    ) -> Result<AiPreferencesRecord> {
        let mut tx = self.begin_audited().await?;
        let owner = prefs.owner_id.clone();
        // Takes the owner's row lock (when there is a row) before reading.
        sqlx::query("UPDATE ai_preferences SET version = version WHERE owner_id = $1")
            .bind(owner.clone())
            .execute(&mut *tx)
            .await?;
        let before = preferences_in(&mut tx, &owner).await?;
        check_version(expected_version, before.version)?;
        for id in prefs.provider_id.iter().chain(prefs.models.keys()) {
            let found = sqlx::query("SELECT 1 FROM ai_providers WHERE id = $1")
                .bind(id.clone())
                .fetch_optional(&mut *tx)
                .await?;
            if found.is_none() {
                return Err(StoreError::Invalid(format!(
                    "there is no AI provider with id {id}"
                )));
            }
        }
        let after = AiPreferencesRecord {
            version: before.version + 1,
            ..prefs.clone()
        };
        if before.version == 0 {
            sqlx::query(
                "INSERT INTO ai_preferences (owner_id, provider_id, version, updated_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(owner.clone())
            .bind(after.provider_id.clone())
            .bind(after.version)
            .bind(after.updated_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                crate::sql::conflict_if_unique(e, || {
                    format!("the preferences of {owner} were saved at the same time; retry")
                })
            })?;
        } else {
            sqlx::query(
                "UPDATE ai_preferences SET provider_id = $2, version = $3, updated_at = $4 \
                 WHERE owner_id = $1",
            )
            .bind(owner.clone())
            .bind(after.provider_id.clone())
            .bind(after.version)
            .bind(after.updated_at)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM ai_model_preferences WHERE owner_id = $1")
            .bind(owner.clone())
            .execute(&mut *tx)
            .await?;
        for (provider_id, model) in &after.models {
            sqlx::query(
                "INSERT INTO ai_model_preferences (owner_id, provider_id, model) VALUES ($1, $2, $3)",
            )
            .bind(owner.clone())
            .bind(provider_id.clone())
            .bind(model.clone())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit(
            actor,
            &AuditEvent::new("ai_preferences.update", "ai_preferences", Some(&owner))
                .before(before.audit_view())
                .after(after.audit_view()),
        )
        .await?;
        Ok(after)
    }
}

async fn preferences_in(
    conn: &mut sqlx::AnyConnection,
    owner_id: &str,
) -> Result<AiPreferencesRecord> {
    let row = sqlx::query(
        "SELECT provider_id, version, updated_at FROM ai_preferences WHERE owner_id = $1",
    )
    .bind(owner_id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(AiPreferencesRecord {
            owner_id: owner_id.to_string(),
            ..Default::default()
        });
    };
    let models =
        sqlx::query("SELECT provider_id, model FROM ai_model_preferences WHERE owner_id = $1")
            .bind(owner_id.to_string())
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("provider_id")?, r.try_get("model")?)))
            .collect::<Result<BTreeMap<String, String>>>()?;
    Ok(AiPreferencesRecord {
        owner_id: owner_id.to_string(),
        provider_id: row.try_get("provider_id")?,
        models,
        version: row.try_get("version")?,
        updated_at: row.try_get("updated_at")?,
    })
}
