-- MCP servers agents may use as a tool source. `transport` is `stdio` (a
-- command the manager starts, with its arguments and environment) or `http`
-- (a streamable-HTTP endpoint with its headers). Environment and header
-- values are sealed by the manager with the master key, as JSON pairs
-- [name, sealed value]. `allow` and `deny` are JSON lists of tool-name
-- patterns (`*` matches any run of characters): a tool is usable when it
-- matches an allow pattern and no deny pattern.
CREATE TABLE ai_mcp_servers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    transport TEXT NOT NULL,
    command TEXT NOT NULL,
    args TEXT NOT NULL,
    env TEXT NOT NULL,
    url TEXT NOT NULL,
    headers TEXT NOT NULL,
    allow_tools TEXT NOT NULL,
    deny_tools TEXT NOT NULL,
    timeout_ms BIGINT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
