//! Tunnels between edges (through a relay, or direct). A tunnel's secrets are
//! stored sealed by the manager (`secrets_sealed`, opaque here) and never reach
//! the audit log. Each leg records whether its configuration reached its node.

use async_trait::async_trait;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{check_version, SqlStore};
use crate::{Actor, AuditEvent, Page, PageRequest, Result, StoreError};

/// Where a leg's configuration is: `pending`, `pushed` or `failed` (with why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegState {
    pub status: String,
    pub error: Option<String>,
}

impl LegState {
    pub fn pending() -> Self {
        Self {
            status: "pending".into(),
            error: None,
        }
    }
}

/// The three parts of a tunnel that are told about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// The edge where traffic enters (it listens).
    Ingress,
    /// The edge where traffic leaves (it forwards).
    Egress,
    /// The relay between them (relay mode).
    Relay,
}

impl Leg {
    fn column(self) -> &'static str {
        match self {
            Leg::Ingress => "ingress",
            Leg::Egress => "egress",
            Leg::Relay => "relay",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TunnelRecord {
    pub id: String,
    pub name: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `relay` or `direct`.
    pub mode: String,
    pub ingress_node_id: String,
    pub ingress_listen_port: i64,
    pub egress_node_id: String,
    pub egress_forward_addr: String,
    /// Direct mode: the QUIC address of the exit edge the entry edge connects to.
    pub egress_peer_addr: Option<String>,
    /// Relay mode: the relay's QUIC address the edges connect to.
    pub relay_addr: Option<String>,
    pub relay_node_id: Option<String>,
    pub enabled: bool,
    pub associated_flow_ids: Value,
    /// The tunnel's secrets, sealed by the manager.
    pub secrets_sealed: String,
    pub ingress: LegState,
    pub egress: LegState,
    /// `None` in direct mode.
    pub relay: Option<LegState>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl TunnelRecord {
    /// What the audit log keeps: never the secrets.
    fn audit_view(&self) -> Value {
        json!({"id": self.id, "name": self.name, "protocol": self.protocol, "mode": self.mode,
               "ingress_node_id": self.ingress_node_id,
               "ingress_listen_port": self.ingress_listen_port,
               "egress_node_id": self.egress_node_id,
               "egress_forward_addr": self.egress_forward_addr,
               "egress_peer_addr": self.egress_peer_addr, "relay_addr": self.relay_addr,
               "relay_node_id": self.relay_node_id, "enabled": self.enabled,
               "associated_flow_ids": self.associated_flow_ids})
    }

    /// The ports the tunnel listens on, as (node, protocol, port): the entry
    /// edge's listener and, in direct mode, the exit edge's QUIC listener (UDP).
    /// No two tunnels may share one.
    pub fn listens(&self) -> Vec<(String, &'static str, i64)> {
        let proto = if self.protocol == "udp" { "udp" } else { "tcp" };
        let mut v = vec![(
            self.ingress_node_id.clone(),
            proto,
            self.ingress_listen_port,
        )];
        if let Some(p) = self.egress_peer_addr.as_deref().and_then(port_of) {
            v.push((self.egress_node_id.clone(), "udp", i64::from(p)));
        }
        v
    }

    /// The nodes taking part: the entry edge, the exit edge, the relay if any.
    pub fn node_ids(&self) -> impl Iterator<Item = &String> {
        [
            Some(&self.ingress_node_id),
            Some(&self.egress_node_id),
            self.relay_node_id.as_ref(),
        ]
        .into_iter()
        .flatten()
    }
}

/// The port of a `host:port` (1 to 65535), whatever the host (`[::1]:443` too).
pub fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok().filter(|p| *p != 0)
}

#[async_trait]
pub trait TunnelStore: Send + Sync {
    /// Saves a new tunnel. [`StoreError::Conflict`] when one of its
    /// [listens](TunnelRecord::listens) is another tunnel's, naming that tunnel.
    async fn create_tunnel(&self, actor: &Actor, t: &TunnelRecord) -> Result<()>;
    async fn get_tunnel(&self, id: &str) -> Result<Option<TunnelRecord>>;
    /// Tunnels, oldest first.
    async fn list_tunnels(&self, page: PageRequest) -> Result<Page<TunnelRecord>>;
    /// Every tunnel `node_id` takes part in.
    async fn tunnels_of_node(&self, node_id: &str) -> Result<Vec<TunnelRecord>>;
    /// Saves everything but the id and creation time; the version goes up by one.
    /// A listen clash is a [`StoreError::Conflict`], as on create.
    async fn update_tunnel(
        &self,
        actor: &Actor,
        t: &TunnelRecord,
        expected_version: Option<i64>,
    ) -> Result<TunnelRecord>;
    /// Removes the tunnel and returns it as it was.
    async fn delete_tunnel(&self, actor: &Actor, id: &str) -> Result<TunnelRecord>;
    /// Records where a leg's configuration is (not audited: nobody changed the
    /// tunnel). Nothing happens when the tunnel is gone.
    async fn set_tunnel_leg(&self, id: &str, leg: Leg, state: &LegState) -> Result<()>;
}

const COLS: &str = "id, name, protocol, mode, ingress_node_id, ingress_listen_port, \
     egress_node_id, egress_forward_addr, egress_peer_addr, relay_addr, relay_node_id, enabled, \
     associated_flow_ids, secrets_sealed, ingress_push_status, ingress_push_error, \
     egress_push_status, egress_push_error, relay_push_status, relay_push_error, version, \
     created_at, updated_at";

fn from_row(r: &AnyRow) -> Result<TunnelRecord> {
    let flows: String = r.try_get("associated_flow_ids")?;
    let enabled: i64 = r.try_get("enabled")?;
    let leg = |status: &str, error: &str| -> Result<Option<LegState>> {
        let status: Option<String> = r.try_get(status)?;
        Ok(status.map(|status| LegState {
            status,
            error: r.try_get(error).ok().flatten(),
        }))
    };
    Ok(TunnelRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        protocol: r.try_get("protocol")?,
        mode: r.try_get("mode")?,
        ingress_node_id: r.try_get("ingress_node_id")?,
        ingress_listen_port: r.try_get("ingress_listen_port")?,
        egress_node_id: r.try_get("egress_node_id")?,
        egress_forward_addr: r.try_get("egress_forward_addr")?,
        egress_peer_addr: r.try_get("egress_peer_addr")?,
        relay_addr: r.try_get("relay_addr")?,
        relay_node_id: r.try_get("relay_node_id")?,
        enabled: enabled != 0,
        associated_flow_ids: serde_json::from_str(&flows)
            .map_err(|e| StoreError::Corrupt(format!("tunnel flows: {e}")))?,
        secrets_sealed: r.try_get("secrets_sealed")?,
        ingress: leg("ingress_push_status", "ingress_push_error")?
            .unwrap_or_else(LegState::pending),
        egress: leg("egress_push_status", "egress_push_error")?.unwrap_or_else(LegState::pending),
        relay: leg("relay_push_status", "relay_push_error")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds the columns after `id`, in [`COLS`] order.
fn bind_fields<'q>(q: Query<'q>, t: &TunnelRecord) -> Query<'q> {
    q.bind(t.name.clone())
        .bind(t.protocol.clone())
        .bind(t.mode.clone())
        .bind(t.ingress_node_id.clone())
        .bind(t.ingress_listen_port)
        .bind(t.egress_node_id.clone())
        .bind(t.egress_forward_addr.clone())
        .bind(t.egress_peer_addr.clone())
        .bind(t.relay_addr.clone())
        .bind(t.relay_node_id.clone())
        .bind(i64::from(t.enabled))
        .bind(t.associated_flow_ids.to_string())
        .bind(t.secrets_sealed.clone())
        .bind(t.ingress.status.clone())
        .bind(t.ingress.error.clone())
        .bind(t.egress.status.clone())
        .bind(t.egress.error.clone())
        .bind(t.relay.as_ref().map(|l| l.status.clone()))
        .bind(t.relay.as_ref().and_then(|l| l.error.clone()))
        .bind(t.version)
        .bind(t.created_at)
        .bind(t.updated_at)
}

async fn locked(conn: &mut sqlx::AnyConnection, id: &str) -> Result<TunnelRecord> {
    sqlx::query(&format!("SELECT {COLS} FROM tunnels WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("tunnel {id}")))
}

/// Claims the ports `t` listens on (after giving back the ones it held). A port
/// held by another tunnel fails the statement; the caller's transaction is then
/// dead and [`clash`] names the holder.
async fn claim_listens(conn: &mut sqlx::AnyConnection, t: &TunnelRecord) -> Result<bool> {
    sqlx::query("DELETE FROM tunnel_listens WHERE tunnel_id = $1")
        .bind(t.id.clone())
        .execute(&mut *conn)
        .await?;
    for (node, proto, port) in t.listens() {
        let r = sqlx::query(
            "INSERT INTO tunnel_listens (node_id, protocol, port, tunnel_id) VALUES ($1, $2, $3, $4)",
        )
        .bind(node)
        .bind(proto)
        .bind(port)
        .bind(t.id.clone())
        .execute(&mut *conn)
        .await;
        match r {
            Ok(_) => {}
            Err(e) if crate::sql::is_unique_violation(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

impl SqlStore {
    /// The conflict to report when `t` could not claim its ports: which node,
    /// port and tunnel hold one.
    async fn clash(&self, t: &TunnelRecord) -> StoreError {
        for (node, proto, port) in t.listens() {
            let holder = sqlx::query(
                "SELECT l.tunnel_id, t.name FROM tunnel_listens l JOIN tunnels t ON t.id = l.tunnel_id \
                 WHERE l.node_id = $1 AND l.protocol = $2 AND l.port = $3 AND l.tunnel_id <> $4",
            )
            .bind(node.clone())
            .bind(proto)
            .bind(port)
            .bind(t.id.clone())
            .fetch_optional(&self.pool)
            .await;
            match holder {
                Ok(Some(row)) => {
                    let id: String = row.try_get("tunnel_id").unwrap_or_default();
                    let name: String = row.try_get("name").unwrap_or_default();
                    return StoreError::Conflict(format!(
                        "node {node} already listens on {proto} port {port} for tunnel {name} ({id})"
                    ));
                }
                Ok(None) => {}
                Err(e) => return e.into(),
            }
        }
        // The holder went away between the failed claim and this look.
        StoreError::Conflict(format!(
            "another tunnel claimed a port of tunnel {} at the same time; retry",
            t.name
        ))
    }
}

#[async_trait]
impl TunnelStore for SqlStore {
    async fn create_tunnel(&self, actor: &Actor, t: &TunnelRecord) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let marks: Vec<String> = (1..=23).map(|i| format!("${i}")).collect();
        let sql = format!("INSERT INTO tunnels ({COLS}) VALUES ({})", marks.join(", "));
        bind_fields(sqlx::query(&sql).bind(t.id.clone()), t)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if crate::sql::is_unique_violation(&e) {
                    StoreError::Conflict(format!("tunnel {} already exists", t.id))
                } else {
                    e.into()
                }
            })?;
        if !claim_listens(&mut tx, t).await? {
            drop(tx);
            return Err(self.clash(t).await);
        }
        tx.commit(
            actor,
            &AuditEvent::new("tunnel.create", "tunnel", Some(&t.id)).after(t.audit_view()),
        )
        .await
    }

    async fn get_tunnel(&self, id: &str) -> Result<Option<TunnelRecord>> {
        sqlx::query(&format!("SELECT {COLS} FROM tunnels WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    async fn list_tunnels(&self, page: PageRequest) -> Result<Page<TunnelRecord>> {
        let total = self.count("SELECT COUNT(*) FROM tunnels", &[]).await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM tunnels ORDER BY created_at, id LIMIT $1 OFFSET $2"
        ))
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(from_row).collect::<Result<_>>()?;
        Ok(Page { items, total })
    }

    async fn tunnels_of_node(&self, node_id: &str) -> Result<Vec<TunnelRecord>> {
        sqlx::query(&format!(
            "SELECT {COLS} FROM tunnels WHERE ingress_node_id = $1 OR egress_node_id = $1 \
             OR relay_node_id = $1 ORDER BY created_at, id"
        ))
        .bind(node_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(from_row)
        .collect()
    }

    async fn update_tunnel(
        &self,
        actor: &Actor,
        t: &TunnelRecord,
        expected_version: Option<i64>,
    ) -> Result<TunnelRecord> {
        let mut tx = self.begin_audited().await?;
        let before = locked(&mut tx, &t.id).await?;
        check_version(expected_version, before.version)?;
        let after = TunnelRecord {
            version: before.version + 1,
            created_at: before.created_at,
            ..t.clone()
        };
        let sets: Vec<String> = COLS
            .split(", ")
            .skip(1)
            .enumerate()
            .map(|(i, c)| format!("{} = ${}", c.trim(), i + 1))
            .collect();
        let sql = format!("UPDATE tunnels SET {} WHERE id = $23", sets.join(", "));
        bind_fields(sqlx::query(&sql), &after)
            .bind(after.id.clone())
            .execute(&mut *tx)
            .await?;
        if !claim_listens(&mut tx, &after).await? {
            drop(tx);
            return Err(self.clash(&after).await);
        }
        tx.commit(
            actor,
            &AuditEvent::new("tunnel.update", "tunnel", Some(&t.id))
                .before(before.audit_view())
                .after(after.audit_view()),
        )
        .await?;
        Ok(after)
    }

    async fn delete_tunnel(&self, actor: &Actor, id: &str) -> Result<TunnelRecord> {
        let mut tx = self.begin_audited().await?;
        let before = locked(&mut tx, id).await?;
        sqlx::query("DELETE FROM tunnel_listens WHERE tunnel_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM tunnels WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit(
            actor,
            &AuditEvent::new("tunnel.delete", "tunnel", Some(id)).before(before.audit_view()),
        )
        .await?;
        Ok(before)
    }

    async fn set_tunnel_leg(&self, id: &str, leg: Leg, state: &LegState) -> Result<()> {
        let c = leg.column();
        sqlx::query(&format!(
            "UPDATE tunnels SET {c}_push_status = $1, {c}_push_error = $2 WHERE id = $3"
        ))
        .bind(state.status.clone())
        .bind(state.error.clone())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
