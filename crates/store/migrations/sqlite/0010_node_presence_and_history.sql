-- Where nodes are connected, so that every manager replica sharing this database
-- answers the same: each replica records itself in manager_replicas and refreshes
-- seen_at every few seconds; node_presence names the replica holding a node's
-- connection. A presence row counts only while its replica is alive (seen
-- recently); rows of replicas that stopped are pruned.
CREATE TABLE manager_replicas (
    instance TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);
CREATE TABLE node_presence (
    node_id TEXT PRIMARY KEY,
    replica TEXT NOT NULL,
    conn_id BIGINT NOT NULL,
    connected_at BIGINT NOT NULL,
    peer TEXT NOT NULL,
    protocol_version BIGINT
);
CREATE INDEX node_presence_replica ON node_presence (replica);
-- Downsampled stats and health of nodes: one row per node, resolution (seconds)
-- and interval start (Unix ms); `metrics` is a JSON object of
-- {"<name>": {"avg", "min", "max", "last", "n"}}.
CREATE TABLE node_samples (
    node_id TEXT NOT NULL,
    resolution INTEGER NOT NULL,
    ts BIGINT NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (node_id, resolution, ts)
);
CREATE INDEX node_samples_age ON node_samples (resolution, ts);
