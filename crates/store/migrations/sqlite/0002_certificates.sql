-- TLS certificates served by the gateway. The private key is stored encrypted
-- (ChaCha20-Poly1305 with the installation's secret key), never in clear.
CREATE TABLE certificates (
    name TEXT PRIMARY KEY,
    cert_pem TEXT NOT NULL,
    key_encrypted TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
