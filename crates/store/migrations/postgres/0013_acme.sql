-- ACME: where a certificate came from, the names it is renewed for, and the
-- outcome of its last renewal; and the ACME accounts, one per directory URL,
-- whose credentials (the account key) are stored encrypted with the
-- installation's secret key, never in clear.
ALTER TABLE certificates ADD COLUMN source TEXT NOT NULL DEFAULT 'upload';
ALTER TABLE certificates ADD COLUMN acme_domains TEXT NOT NULL DEFAULT '[]';
ALTER TABLE certificates ADD COLUMN renewal_error TEXT;
ALTER TABLE certificates ADD COLUMN renewal_error_at BIGINT;
CREATE TABLE acme_accounts (
    directory_url TEXT PRIMARY KEY,
    email TEXT,
    credentials_encrypted TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
