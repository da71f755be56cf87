//! The fleet across manager replicas: which replica holds each node's connection
//! (presence, valid while that replica keeps announcing itself) and the nodes'
//! downsampled stats and health (one row per node, resolution and interval).

use async_trait::async_trait;
use serde_json::Value;
use sqlx::Row;

use crate::sql::{Arg, SqlStore};
use crate::{Result, StoreError};

/// A node's connection, as the replica holding it recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePresence {
    pub node_id: String,
    /// The instance id of the manager replica holding the connection.
    pub replica: String,
    /// Tells this connection from a later one of the same node on that replica.
    pub conn_id: i64,
    pub connected_at: i64,
    pub peer: String,
    pub protocol_version: Option<i64>,
}

/// One interval of a node's stats and health at one resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSample {
    pub node_id: String,
    /// Interval length in seconds.
    pub resolution: i64,
    /// Start of the interval, Unix ms.
    pub ts: i64,
    /// `{"<name>": {"avg", "min", "max", "last", "n"}}`.
    pub metrics: Value,
}

#[async_trait]
pub trait FleetStore: Send + Sync {
    /// Records that replica `instance` (started at `started_at`) is alive at `now`.
    async fn replica_alive(&self, instance: &str, started_at: i64, now: i64) -> Result<()>;
    /// Removes the replicas not seen since `before` and the presence rows naming
    /// them (or naming no recorded replica). Returns the presence rows removed.
    async fn prune_replicas(&self, before: i64) -> Result<u64>;
    /// The instance ids of the replicas seen since `alive_since`, sorted.
    async fn live_replicas(&self, alive_since: i64) -> Result<Vec<String>>;
    /// Records that `p.replica` holds the node's connection (replacing any other).
    async fn node_connected(&self, p: &NodePresence) -> Result<()>;
    /// Removes the presence of that connection; `false` when a later connection
    /// (on any replica) had replaced it.
    async fn node_disconnected(&self, node_id: &str, replica: &str, conn_id: i64) -> Result<bool>;
    /// Records in one transaction that `replica` holds the connections `connected`
    /// (replacing any other presence of those nodes) and none of the nodes `gone`.
    async fn record_presence(
        &self,
        replica: &str,
        connected: &[NodePresence],
        gone: &[String],
    ) -> Result<()>;
    /// The presence of the nodes `ids` (all nodes when `None`) held by replicas
    /// seen since `alive_since`.
    async fn node_presence(
        &self,
        ids: Option<&[String]>,
        alive_since: i64,
    ) -> Result<Vec<NodePresence>>;
    /// Writes samples, replacing those of the same node, resolution and interval.
    async fn record_node_samples(&self, samples: &[NodeSample]) -> Result<()>;
    /// Samples of one node and resolution with `from <= ts < to`, oldest first.
    async fn node_samples(
        &self,
        node_id: &str,
        resolution: i64,
        from: i64,
        to: i64,
    ) -> Result<Vec<NodeSample>>;
    /// Removes samples of `resolution` older than `before`; returns how many.
    async fn prune_node_samples(&self, resolution: i64, before: i64) -> Result<u64>;
}

fn presence_from_row(r: &sqlx::any::AnyRow) -> Result<NodePresence> {
    Ok(NodePresence {
        node_id: r.try_get("node_id")?,
        replica: r.try_get("replica")?,
        conn_id: r.try_get("conn_id")?,
        connected_at: r.try_get("connected_at")?,
        peer: r.try_get("peer")?,
        protocol_version: r.try_get("protocol_version")?,
    })
}

/// Rows per multi-row insert (four binds each, well under either database's limit).
const SAMPLE_CHUNK: usize = 200;

#[async_trait]
impl FleetStore for SqlStore {
    async fn replica_alive(&self, instance: &str, started_at: i64, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO manager_replicas (instance, started_at, seen_at) VALUES ($1, $2, $3) \
             ON CONFLICT (instance) DO UPDATE SET seen_at = excluded.seen_at",
        )
        .bind(instance.to_string())
        .bind(started_at)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn prune_replicas(&self, before: i64) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM manager_replicas WHERE seen_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        let gone = sqlx::query(
            "DELETE FROM node_presence WHERE replica NOT IN (SELECT instance FROM manager_replicas)",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(gone)
    }

    async fn live_replicas(&self, alive_since: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT instance FROM manager_replicas WHERE seen_at >= $1 ORDER BY instance",
        )
        .bind(alive_since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get("instance").map_err(StoreError::from))
            .collect()
    }

    async fn node_connected(&self, p: &NodePresence) -> Result<()> {
        sqlx::query(
            "INSERT INTO node_presence (node_id, replica, conn_id, connected_at, peer, protocol_version) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (node_id) DO UPDATE SET \
             replica = excluded.replica, conn_id = excluded.conn_id, \
             connected_at = excluded.connected_at, peer = excluded.peer, \
             protocol_version = excluded.protocol_version",
        )
        .bind(p.node_id.clone())
        .bind(p.replica.clone())
        .bind(p.conn_id)
        .bind(p.connected_at)
        .bind(p.peer.clone())
        .bind(p.protocol_version)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn node_disconnected(&self, node_id: &str, replica: &str, conn_id: i64) -> Result<bool> {
        let n = sqlx::query(
            "DELETE FROM node_presence WHERE node_id = $1 AND replica = $2 AND conn_id = $3",
        )
        .bind(node_id.to_string())
        .bind(replica.to_string())
        .bind(conn_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    async fn record_presence(
        &self,
        replica: &str,
        connected: &[NodePresence],
        gone: &[String],
    ) -> Result<()> {
        if connected.is_empty() && gone.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for chunk in connected.chunks(SAMPLE_CHUNK) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let b = i * 6;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, ${})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO node_presence (node_id, replica, conn_id, connected_at, peer, protocol_version) \
                 VALUES {} ON CONFLICT (node_id) DO UPDATE SET replica = excluded.replica, \
                 conn_id = excluded.conn_id, connected_at = excluded.connected_at, \
                 peer = excluded.peer, protocol_version = excluded.protocol_version",
                rows.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for p in chunk {
                q = q
                    .bind(p.node_id.clone())
                    .bind(p.replica.clone())
                    .bind(p.conn_id)
                    .bind(p.connected_at)
                    .bind(p.peer.clone())
                    .bind(p.protocol_version);
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in gone.chunks(SAMPLE_CHUNK) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "DELETE FROM node_presence WHERE replica = $1 AND node_id IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(replica.to_string());
            for id in chunk {
                q = q.bind(id.clone());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn node_presence(
        &self,
        ids: Option<&[String]>,
        alive_since: i64,
    ) -> Result<Vec<NodePresence>> {
        let mut args = vec![Arg::Int(alive_since)];
        let mut sql = String::from(
            "SELECT p.node_id, p.replica, p.conn_id, p.connected_at, p.peer, p.protocol_version \
             FROM node_presence p JOIN manager_replicas r ON r.instance = p.replica \
             WHERE r.seen_at >= $1",
        );
        if let Some(ids) = ids {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let marks: Vec<String> = ids
                .iter()
                .map(|id| {
                    args.push(Arg::Text(id.clone()));
                    format!("${}", args.len())
                })
                .collect();
            sql.push_str(&format!(" AND p.node_id IN ({})", marks.join(", ")));
        }
        sql.push_str(" ORDER BY p.node_id");
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = a.bind(q);
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(presence_from_row)
            .collect()
    }

    async fn record_node_samples(&self, samples: &[NodeSample]) -> Result<()> {
        if samples.is_empty() {
            return Ok(());
        }
        // A transaction per chunk: a configuration write waits for one chunk at
        // most, not for the whole fleet's samples.
        for chunk in samples.chunks(SAMPLE_CHUNK) {
            let mut tx = self.begin_write().await?;
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let b = i * 4;
                    format!("(${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4)
                })
                .collect();
            let sql = format!(
                "INSERT INTO node_samples (node_id, resolution, ts, metrics) VALUES {} \
                 ON CONFLICT (node_id, resolution, ts) DO UPDATE SET metrics = excluded.metrics",
                rows.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for s in chunk {
                q = q
                    .bind(s.node_id.clone())
                    .bind(s.resolution)
                    .bind(s.ts)
                    .bind(s.metrics.to_string());
            }
            q.execute(&mut *tx).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    async fn node_samples(
        &self,
        node_id: &str,
        resolution: i64,
        from: i64,
        to: i64,
    ) -> Result<Vec<NodeSample>> {
        let rows = sqlx::query(
            "SELECT node_id, resolution, ts, metrics FROM node_samples \
             WHERE node_id = $1 AND resolution = $2 AND ts >= $3 AND ts < $4 ORDER BY ts",
        )
        .bind(node_id.to_string())
        .bind(resolution)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let metrics: String = r.try_get("metrics")?;
                Ok(NodeSample {
                    node_id: r.try_get("node_id")?,
                    resolution: r.try_get("resolution")?,
                    ts: r.try_get("ts")?,
                    metrics: serde_json::from_str(&metrics)
                        .map_err(|e| StoreError::Corrupt(format!("node sample: {e}")))?,
                })
            })
            .collect()
    }

    async fn prune_node_samples(&self, resolution: i64, before: i64) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM node_samples WHERE resolution = $1 AND ts < $2")
                .bind(resolution)
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}
