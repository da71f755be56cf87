//! Fleet nodes: edges and relays the manager knows, with their registration token
//! and node secret kept only as SHA-256 hashes. Registration consumes the token in
//! the same transaction that records the secret, so a token registers one node once
//! even when two connections race with it.

use async_trait::async_trait;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{check_version, Arg, SqlStore};
use crate::{Actor, AuditEvent, Page, PageRequest, Result, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    /// `edge` or `relay`.
    pub device_type: String,
    /// SHA-256 hex of the node secret; `None` until the node registered.
    pub secret_hash: Option<String>,
    /// SHA-256 hex of the current registration token, if one was issued.
    pub token_hash: Option<String>,
    /// The token's first characters: the key of the registration lockout.
    pub token_prefix: Option<String>,
    pub token_expires_at: Option<i64>,
    /// When the current token registered the node (it is single use).
    pub token_used_at: Option<i64>,
    /// After this instant the node may no longer register or reconnect.
    pub expires_at: Option<i64>,
    /// Operator's free-form data (a JSON object).
    pub metadata: Value,
    pub software_version: Option<String>,
    pub protocol_version: Option<i64>,
    pub registered_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl NodeRecord {
    /// What the audit log keeps of a node: never a hash of its credentials.
    fn audit_view(&self) -> Value {
        json!({"id": self.id, "name": self.name, "description": self.description,
               "device_type": self.device_type, "expires_at": self.expires_at,
               "metadata": self.metadata, "token_expires_at": self.token_expires_at,
               "registered": self.secret_hash.is_some()})
    }

    /// Whether the registration token is issued, unused and not expired at `now`.
    pub fn token_usable(&self, now: i64) -> bool {
        self.token_hash.is_some()
            && self.token_used_at.is_none()
            && self.token_expires_at.is_none_or(|t| t > now)
    }
}

/// Which nodes a listing shows.
#[derive(Debug, Clone, Default)]
pub struct NodeFilter {
    pub device_type: Option<String>,
    /// Only these ids (a caller limited to some nodes); `None` shows all.
    pub ids: Option<Vec<String>>,
}

#[async_trait]
pub trait NodeStore: Send + Sync {
    async fn create_node(&self, actor: &Actor, node: &NodeRecord) -> Result<()>;
    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>>;
    async fn list_nodes(&self, filter: &NodeFilter, page: PageRequest) -> Result<Page<NodeRecord>>;
    /// Saves name, description, expiry and metadata.
    async fn update_node(
        &self,
        actor: &Actor,
        node: &NodeRecord,
        expected_version: Option<i64>,
    ) -> Result<NodeRecord>;
    async fn delete_node(&self, actor: &Actor, id: &str) -> Result<()>;
    /// Issues a new registration token (replacing any other, used or not).
    async fn set_node_token(
        &self,
        actor: &Actor,
        id: &str,
        token_hash: &str,
        token_prefix: &str,
        token_expires_at: Option<i64>,
    ) -> Result<NodeRecord>;
    async fn find_node_by_token(&self, token_hash: &str) -> Result<Option<NodeRecord>>;
    /// Consumes the registration token `token_hash` of node `id` and stores the new
    /// secret's hash. `Conflict` when the token is no longer usable at `now`.
    async fn register_node(
        &self,
        actor: &Actor,
        id: &str,
        token_hash: &str,
        secret_hash: &str,
        now: i64,
    ) -> Result<NodeRecord>;
    /// Records that the node was seen (not audited: nobody changed anything).
    async fn node_seen(
        &self,
        id: &str,
        at: i64,
        software_version: Option<&str>,
        protocol_version: Option<i64>,
    ) -> Result<()>;
    /// [`NodeStore::node_seen`] for many nodes, in as few writes as the store can.
    async fn nodes_seen(&self, seen: &[NodeSeen]) -> Result<()> {
        for n in seen {
            self.node_seen(
                &n.id,
                n.at,
                n.software_version.as_deref(),
                n.protocol_version,
            )
            .await?;
        }
        Ok(())
    }
}

/// That a node was seen at `at` (Unix ms), with the versions it reported, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSeen {
    pub id: String,
    pub at: i64,
    pub software_version: Option<String>,
    pub protocol_version: Option<i64>,
}

/// Rows of [`NodeStore::nodes_seen`] per statement (4 parameters each): each holds
/// SQLite's write lock only briefly, so that configuration writes wait little
/// behind it.
const SEEN_PER_WRITE: usize = 500;

const NODE_SEEN_SQL: &str = "UPDATE nodes SET last_seen_at = $1, \
     software_version = COALESCE($2, software_version), \
     protocol_version = COALESCE($3, protocol_version) WHERE id = $4";

const NODE_COLS: &str = "id, name, description, device_type, secret_hash, token_hash, \
     token_prefix, token_expires_at, token_used_at, expires_at, metadata, software_version, \
     protocol_version, registered_at, last_seen_at, version, created_at, updated_at";

fn node_from_row(r: &AnyRow) -> Result<NodeRecord> {
    let metadata: String = r.try_get("metadata")?;
    Ok(NodeRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        device_type: r.try_get("device_type")?,
        secret_hash: r.try_get("secret_hash")?,
        token_hash: r.try_get("token_hash")?,
        token_prefix: r.try_get("token_prefix")?,
        token_expires_at: r.try_get("token_expires_at")?,
        token_used_at: r.try_get("token_used_at")?,
        expires_at: r.try_get("expires_at")?,
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        software_version: r.try_get("software_version")?,
        protocol_version: r.try_get("protocol_version")?,
        registered_at: r.try_get("registered_at")?,
        last_seen_at: r.try_get("last_seen_at")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

async fn locked(conn: &mut sqlx::AnyConnection, id: &str) -> Result<NodeRecord> {
    sqlx::query(&format!("SELECT {NODE_COLS} FROM nodes WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(node_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("node {id}")))
}

async fn write_all(conn: &mut sqlx::AnyConnection, n: &NodeRecord) -> Result<()> {
    sqlx::query(
        "UPDATE nodes SET name = $1, description = $2, secret_hash = $3, token_hash = $4, \
         token_prefix = $5, token_expires_at = $6, token_used_at = $7, expires_at = $8, \
         metadata = $9, registered_at = $10, version = $11, updated_at = $12 WHERE id = $13",
    )
    .bind(n.name.clone())
    .bind(n.description.clone())
    .bind(n.secret_hash.clone())
    .bind(n.token_hash.clone())
    .bind(n.token_prefix.clone())
    .bind(n.token_expires_at)
    .bind(n.token_used_at)
    .bind(n.expires_at)
    .bind(n.metadata.to_string())
    .bind(n.registered_at)
    .bind(n.version)
    .bind(n.updated_at)
    .bind(n.id.clone())
    .execute(conn)
    .await?;
    Ok(())
}

#[async_trait]
impl NodeStore for SqlStore {
    async fn create_node(&self, actor: &Actor, n: &NodeRecord) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        sqlx::query(&format!(
            "INSERT INTO nodes ({NODE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, $13, $14, $15, $16, $17, $18)"
        ))
        .bind(n.id.clone())
        .bind(n.name.clone())
        .bind(n.description.clone())
        .bind(n.device_type.clone())
        .bind(n.secret_hash.clone())
        .bind(n.token_hash.clone())
        .bind(n.token_prefix.clone())
        .bind(n.token_expires_at)
        .bind(n.token_used_at)
        .bind(n.expires_at)
        .bind(n.metadata.to_string())
        .bind(n.software_version.clone())
        .bind(n.protocol_version)
        .bind(n.registered_at)
        .bind(n.last_seen_at)
        .bind(n.version)
        .bind(n.created_at)
        .bind(n.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if crate::sql::is_unique_violation(&e) {
                StoreError::Conflict(format!("node {} already exists", n.id))
            } else {
                e.into()
            }
        })?;
        tx.commit(
            actor,
            &AuditEvent::new("node.create", "node", Some(&n.id)).after(n.audit_view()),
        )
        .await
    }

    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>> {
        sqlx::query(&format!("SELECT {NODE_COLS} FROM nodes WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(node_from_row)
            .transpose()
    }

    async fn list_nodes(&self, filter: &NodeFilter, page: PageRequest) -> Result<Page<NodeRecord>> {
        let mut clauses = Vec::new();
        let mut args = Vec::new();
        if let Some(t) = &filter.device_type {
            args.push(Arg::Text(t.clone()));
            clauses.push(format!("device_type = ${}", args.len()));
        }
        if let Some(ids) = &filter.ids {
            if ids.is_empty() {
                return Ok(Page {
                    items: Vec::new(),
                    total: 0,
                });
            }
            let mut marks = Vec::new();
            for id in ids {
                args.push(Arg::Text(id.clone()));
                marks.push(format!("${}", args.len()));
            }
            clauses.push(format!("id IN ({})", marks.join(", ")));
        }
        let filter_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let total = self
            .count(&format!("SELECT COUNT(*) FROM nodes {filter_sql}"), &args)
            .await?;
        let n = args.len();
        let sql = format!(
            "SELECT {NODE_COLS} FROM nodes {filter_sql} ORDER BY created_at, id LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        );
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = a.bind(q);
        }
        let rows = q
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(&self.pool)
            .await?;
        let items = rows.iter().map(node_from_row).collect::<Result<_>>()?;
        Ok(Page { items, total })
    }

    async fn update_node(
        &self,
        actor: &Actor,
        n: &NodeRecord,
        expected_version: Option<i64>,
    ) -> Result<NodeRecord> {
        let mut tx = self.begin_audited().await?;
        let before = locked(&mut tx, &n.id).await?;
        check_version(expected_version, before.version)?;
        let after = NodeRecord {
            name: n.name.clone(),
            description: n.description.clone(),
            expires_at: n.expires_at,
            metadata: n.metadata.clone(),
            version: before.version + 1,
            updated_at: n.updated_at,
            ..before.clone()
        };
        write_all(&mut tx, &after).await?;
        tx.commit(
            actor,
            &AuditEvent::new("node.update", "node", Some(&n.id))
                .before(before.audit_view())
                .after(after.audit_view()),
        )
        .await?;
        Ok(after)
    }

    async fn delete_node(&self, actor: &Actor, id: &str) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let before = locked(&mut tx, id).await?;
        for table in [
            "DELETE FROM nodes WHERE id = $1",
            "DELETE FROM node_presence WHERE node_id = $1",
            "DELETE FROM node_samples WHERE node_id = $1",
        ] {
            sqlx::query(table)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit(
            actor,
            &AuditEvent::new("node.delete", "node", Some(id)).before(before.audit_view()),
        )
        .await
    }

    async fn set_node_token(
        &self,
        actor: &Actor,
        id: &str,
        token_hash: &str,
        token_prefix: &str,
        token_expires_at: Option<i64>,
    ) -> Result<NodeRecord> {
        let mut tx = self.begin_audited().await?;
        let before = locked(&mut tx, id).await?;
        let after = NodeRecord {
            token_hash: Some(token_hash.to_string()),
            token_prefix: Some(token_prefix.to_string()),
            token_expires_at,
            token_used_at: None,
            version: before.version + 1,
            updated_at: fleetgate_core::time::now_ms(),
            ..before.clone()
        };
        write_all(&mut tx, &after).await?;
        tx.commit(
            actor,
            &AuditEvent::new("node.token", "node", Some(id))
                .after(json!({"token_expires_at": token_expires_at})),
        )
        .await?;
        Ok(after)
    }

    async fn find_node_by_token(&self, token_hash: &str) -> Result<Option<NodeRecord>> {
        sqlx::query(&format!(
            "SELECT {NODE_COLS} FROM nodes WHERE token_hash = $1"
        ))
        .bind(token_hash.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(node_from_row)
        .transpose()
    }

    async fn register_node(
        &self,
        actor: &Actor,
        id: &str,
        token_hash: &str,
        secret_hash: &str,
        now: i64,
    ) -> Result<NodeRecord> {
        let mut tx = self.begin_audited().await?;
        let before = locked(&mut tx, id).await?;
        if before.token_hash.as_deref() != Some(token_hash) || !before.token_usable(now) {
            return Err(StoreError::Conflict(
                "the registration token is no longer usable".into(),
            ));
        }
        let after = NodeRecord {
            secret_hash: Some(secret_hash.to_string()),
            token_used_at: Some(now),
            registered_at: Some(now),
            version: before.version + 1,
            updated_at: now,
            ..before.clone()
        };
        write_all(&mut tx, &after).await?;
        tx.commit(
            actor,
            &AuditEvent::new("node.register", "node", Some(id)).after(after.audit_view()),
        )
        .await?;
        Ok(after)
    }

    async fn node_seen(
        &self,
        id: &str,
        at: i64,
        software_version: Option<&str>,
        protocol_version: Option<i64>,
    ) -> Result<()> {
        sqlx::query(NODE_SEEN_SQL)
            .bind(at)
            .bind(software_version.map(str::to_string))
            .bind(protocol_version)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn nodes_seen(&self, seen: &[NodeSeen]) -> Result<()> {
        // One statement per chunk: a statement per node costs the store's writer
        // (SQLite's only one) a round trip each, and configuration writes wait
        // behind them.
        for chunk in seen.chunks(SEEN_PER_WRITE) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p = 4 * i;
                    format!("(${}, ${}, ${}, ${})", p + 1, p + 2, p + 3, p + 4)
                })
                .collect();
            let sql = format!(
                "UPDATE nodes SET last_seen_at = v.column2, \
                 software_version = COALESCE(v.column3, nodes.software_version), \
                 protocol_version = COALESCE(v.column4, nodes.protocol_version) \
                 FROM (VALUES {}) AS v WHERE nodes.id = v.column1",
                rows.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for n in chunk {
                q = q
                    .bind(n.id.clone())
                    .bind(n.at)
                    .bind(n.software_version.clone())
                    .bind(n.protocol_version);
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }
}
