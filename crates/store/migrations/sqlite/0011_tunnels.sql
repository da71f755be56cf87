-- Tunnels between two edges, through a relay or direct. The tunnel's secrets (the
-- end-to-end key, the relay bind secret, the direct-mode pre-shared key) are kept
-- only sealed with the manager's secret key (`secrets_sealed`). Each leg (the
-- entry edge, the exit edge, the relay) records whether its configuration reached
-- the node: pending, pushed or failed, with the node's error.
CREATE TABLE tunnels (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    protocol TEXT NOT NULL,
    mode TEXT NOT NULL,
    ingress_node_id TEXT NOT NULL,
    ingress_listen_port INTEGER NOT NULL,
    egress_node_id TEXT NOT NULL,
    egress_forward_addr TEXT NOT NULL,
    egress_peer_addr TEXT,
    relay_addr TEXT,
    relay_node_id TEXT,
    enabled INTEGER NOT NULL,
    associated_flow_ids TEXT NOT NULL,
    secrets_sealed TEXT NOT NULL,
    ingress_push_status TEXT NOT NULL,
    ingress_push_error TEXT,
    egress_push_status TEXT NOT NULL,
    egress_push_error TEXT,
    relay_push_status TEXT,
    relay_push_error TEXT,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX tunnels_ingress ON tunnels (ingress_node_id);
CREATE INDEX tunnels_egress ON tunnels (egress_node_id);
CREATE INDEX tunnels_relay ON tunnels (relay_node_id);
