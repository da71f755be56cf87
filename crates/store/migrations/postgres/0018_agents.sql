-- AI agents: the agent (its lifecycle status, which version is promoted, the
-- history of promotions for rollback, an A/B split, a budget), its immutable
-- versions (provider, model, system prompt, tools), the HTTP tools agents may
-- call (header values sealed by the manager), runs with their step traces, and
-- schedules that start runs (claimed by compare-and-set on next_run_at, so one
-- replica runs each due schedule).
CREATE TABLE ai_agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    tags TEXT NOT NULL,
    status TEXT NOT NULL,
    promoted_version BIGINT NOT NULL,
    latest_version BIGINT NOT NULL,
    promotions TEXT NOT NULL,
    split TEXT,
    budget TEXT,
    max_steps BIGINT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE ai_agent_versions (
    agent_id TEXT NOT NULL,
    number BIGINT NOT NULL,
    provider_id TEXT,
    model TEXT NOT NULL,
    system_prompt TEXT NOT NULL,
    tools TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, number)
);
CREATE TABLE ai_agent_tools (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    url TEXT NOT NULL,
    method TEXT NOT NULL,
    input_schema TEXT NOT NULL,
    timeout_ms BIGINT NOT NULL,
    headers TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE ai_agent_runs (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    agent_version BIGINT NOT NULL,
    split_arm TEXT,
    run_key TEXT,
    trigger_kind TEXT NOT NULL,
    schedule_id TEXT,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    output TEXT,
    error TEXT,
    error_code TEXT,
    steps BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_micro_usd BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    created_by TEXT NOT NULL
);
CREATE INDEX ai_agent_runs_agent ON ai_agent_runs (agent_id, started_at);
CREATE TABLE ai_agent_run_steps (
    run_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    provider TEXT,
    model TEXT,
    call_id TEXT,
    input TEXT NOT NULL,
    output TEXT NOT NULL,
    error TEXT,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_micro_usd BIGINT NOT NULL,
    latency_ms BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE ai_agent_schedules (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    cron TEXT,
    interval_ms BIGINT,
    input TEXT NOT NULL,
    run_key TEXT,
    enabled INTEGER NOT NULL,
    next_run_at BIGINT,
    last_run_at BIGINT,
    last_run_id TEXT,
    last_status TEXT,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX ai_agent_schedules_due ON ai_agent_schedules (next_run_at);
