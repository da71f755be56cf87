-- The AI gateway: budgets, one row per relayed request, hourly rollups and
-- each budget's spend per period.
--
-- Budgets cap what `ai` routes spend per period (`limit_micros`, integer
-- micro-USD); the data plane enforces them in memory and never reads these
-- tables. Usage rows and rollups are written in batches by the manager from
-- what the data plane reports, off the request path. One key's spend over a
-- window is a sum over `ai_usage_hourly` (at most 24 rows a day per route and
-- model), read through `ai_usage_hourly_key`.
CREATE TABLE ai_budgets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    period TEXT NOT NULL,
    limit_micros BIGINT NOT NULL,
    alert_threshold_pct BIGINT NOT NULL,
    action TEXT NOT NULL,
    api_key_id TEXT,
    description TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE ai_usage (
    id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    route_id TEXT NOT NULL,
    api_key_id TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    model TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    cache_write_input_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    status BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    latency_ms BIGINT NOT NULL,
    streamed BIGINT NOT NULL,
    estimated BIGINT NOT NULL
);
CREATE INDEX ai_usage_at ON ai_usage (at_ms);
CREATE INDEX ai_usage_key_at ON ai_usage (api_key_id, at_ms);
CREATE TABLE ai_usage_hourly (
    hour_ms BIGINT NOT NULL,
    api_key_id TEXT NOT NULL,
    route_id TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    model TEXT NOT NULL,
    requests BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    cache_write_input_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    estimated BIGINT NOT NULL,
    PRIMARY KEY (hour_ms, api_key_id, route_id, provider_id, model)
);
-- Covering: a key's window spend reads only this index.
CREATE INDEX ai_usage_hourly_key ON ai_usage_hourly (api_key_id, hour_ms, cost_micros);
CREATE TABLE ai_budget_spend (
    budget_id TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    spent_micros BIGINT NOT NULL,
    PRIMARY KEY (budget_id, period_start)
);
