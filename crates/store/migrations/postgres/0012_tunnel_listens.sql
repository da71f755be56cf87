-- The ports tunnels listen on, one row each: the entry edge's listener (tcp or
-- udp) and, in direct mode, the exit edge's QUIC listener (udp). The primary key
-- makes two tunnels listening on the same port of the same node impossible, however
-- their writes interleave. Rows are kept for disabled tunnels too, so enabling one
-- again never finds its port taken.
CREATE TABLE tunnel_listens (
    node_id TEXT NOT NULL,
    protocol TEXT NOT NULL,
    port BIGINT NOT NULL,
    tunnel_id TEXT NOT NULL REFERENCES tunnels (id) ON DELETE CASCADE,
    PRIMARY KEY (node_id, protocol, port)
);
CREATE INDEX tunnel_listens_tunnel ON tunnel_listens (tunnel_id);
INSERT INTO tunnel_listens (node_id, protocol, port, tunnel_id)
    SELECT ingress_node_id, CASE WHEN protocol = 'udp' THEN 'udp' ELSE 'tcp' END,
           ingress_listen_port, id
    FROM tunnels ORDER BY created_at, id
    ON CONFLICT DO NOTHING;
-- The port is what follows the last ':' of egress_peer_addr.
INSERT INTO tunnel_listens (node_id, protocol, port, tunnel_id)
    SELECT egress_node_id, 'udp', substring(egress_peer_addr from ':([0-9]+)$')::bigint, id
    FROM tunnels WHERE egress_peer_addr ~ ':[0-9]+$' ORDER BY created_at, id
    ON CONFLICT DO NOTHING;
