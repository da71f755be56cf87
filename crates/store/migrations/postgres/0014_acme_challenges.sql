-- Pending ACME HTTP-01 challenge answers, shared by every manager on this
-- database: the manager placing an order writes one row per challenge before
-- telling the CA to validate, every manager serves the live rows through its
-- gateway (the CA may reach any of them), and the row goes when the order
-- finishes. A row past `expires_at` (its manager stopped mid-order) is never
-- served and is pruned. Key authorizations are not secrets: the CA fetches them
-- over plain HTTP, and they are of use only while their order is pending.
CREATE TABLE acme_challenges (
    token TEXT PRIMARY KEY,
    key_authorization TEXT NOT NULL,
    identifier TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX acme_challenges_expiry ON acme_challenges (expires_at);
