-- AI providers (OpenAI, Anthropic, Gemini, OpenAI-compatible servers) and each
-- user's model preferences. A provider's API key is kept only sealed with the
-- installation's secret key (`api_key_sealed`), with a masked hint to tell keys
-- apart (`api_key_hint`, e.g. `sk-…abcd`); neither is ever the key in clear.
-- At most one provider is the default (`is_default`), kept so by the store.
CREATE TABLE ai_providers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    base_url TEXT,
    api_key_sealed TEXT,
    api_key_hint TEXT,
    default_model TEXT NOT NULL,
    max_tokens BIGINT NOT NULL,
    temperature REAL NOT NULL,
    timeout_ms BIGINT NOT NULL,
    enabled INTEGER NOT NULL,
    is_default INTEGER NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- A user's (or an ownerless API key's) preferences: the provider used when a
-- request names none, and per provider the model to ask for.
CREATE TABLE ai_preferences (
    owner_id TEXT PRIMARY KEY,
    provider_id TEXT,
    version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE ai_model_preferences (
    owner_id TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    model TEXT NOT NULL,
    PRIMARY KEY (owner_id, provider_id)
);
CREATE INDEX ai_model_preferences_provider ON ai_model_preferences (provider_id);
