-- Events raised by the gateway and the manager; ids are their global order (the SSE
-- Last-Event-ID). Kept for a retention period and up to a maximum count.
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    event_type TEXT NOT NULL,
    severity TEXT NOT NULL,
    category TEXT NOT NULL,
    message TEXT NOT NULL,
    details TEXT NOT NULL,
    source TEXT NOT NULL,
    route_id TEXT,
    upstream TEXT,
    node_id TEXT,
    flow_id TEXT,
    created_at BIGINT NOT NULL,
    acknowledged_by TEXT,
    acknowledged_at BIGINT
);
CREATE INDEX events_created ON events (created_at);
CREATE INDEX events_unacked ON events (acknowledged_at, severity);
CREATE INDEX events_type ON events (event_type, id);
