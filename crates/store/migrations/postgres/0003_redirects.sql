-- Redirects and pages (Flecto's model): namespaces hold projects; a project holds
-- redirect and page rules, its published version, its agent tokens and the agents
-- that report to it.
CREATE TABLE namespaces (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL REFERENCES namespaces (name),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    -- JSON array of the hosts the built-in gateway answers for this project.
    hosts TEXT NOT NULL,
    -- The published version served to agents: 0 until the first publish.
    published_version BIGINT NOT NULL,
    published_at BIGINT,
    -- Version of the project record itself (ETag / If-Match).
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (namespace, name)
);

-- Each rule row holds its working copy (kind, source, ...: what operators edit) and
-- its published copy (pub_*: what agents are served, NULL until first published).
-- pending = 1 while the two differ or the row awaits deletion (deleted = 1).
-- Row ids give agents their stable order, from when a rule was first created.
CREATE TABLE redirects (
    id BIGSERIAL PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    pub_kind TEXT,
    pub_source TEXT,
    pub_target TEXT,
    pub_status TEXT,
    deleted BIGINT NOT NULL,
    pending BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX redirects_source ON redirects (project_id, source);
CREATE INDEX redirects_pending ON redirects (project_id, pending);

CREATE TABLE pages (
    id BIGSERIAL PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    content TEXT NOT NULL,
    content_type TEXT NOT NULL,
    pub_kind TEXT,
    pub_path TEXT,
    pub_content TEXT,
    pub_content_type TEXT,
    deleted BIGINT NOT NULL,
    pending BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX pages_path ON pages (project_id, path);
CREATE INDEX pages_pending ON pages (project_id, pending);

-- One row per publish: what changed, for the version history.
CREATE TABLE project_versions (
    project_id TEXT NOT NULL REFERENCES projects (id),
    version BIGINT NOT NULL,
    published_at BIGINT NOT NULL,
    author TEXT NOT NULL,
    summary TEXT NOT NULL,
    PRIMARY KEY (project_id, version)
);

-- Agent tokens: only the SHA-256 of the token is kept.
CREATE TABLE project_tokens (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    preview TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    last_used_at BIGINT
);
CREATE INDEX project_tokens_project ON project_tokens (project_id);

CREATE TABLE project_agents (
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    loaded_version BIGINT NOT NULL,
    status TEXT NOT NULL,
    error TEXT NOT NULL,
    load_duration_ns BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_hit_at BIGINT NOT NULL,
    PRIMARY KEY (project_id, name)
);
