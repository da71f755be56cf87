-- Fleet nodes (edges and relays). A node's secret and its registration token are
-- stored only as SHA-256 hashes of high-entropy random values; the token is single
-- use (token_used_at) and may expire (token_expires_at). `expires_at` ends the
-- node's right to connect at all. Presence (online/offline) is not stored here:
-- it belongs to the manager a node is connected to.
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    device_type TEXT NOT NULL,
    secret_hash TEXT,
    token_hash TEXT UNIQUE,
    token_prefix TEXT,
    token_expires_at INTEGER,
    token_used_at INTEGER,
    expires_at INTEGER,
    metadata TEXT NOT NULL,
    software_version TEXT,
    protocol_version INTEGER,
    registered_at INTEGER,
    last_seen_at INTEGER,
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX nodes_device_type ON nodes (device_type, created_at);
