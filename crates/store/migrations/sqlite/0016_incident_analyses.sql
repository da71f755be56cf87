-- AI analyses of incidents, newest last: what the model said (summary, probable
-- cause, suggested actions), which provider and model said it, the tokens it
-- took and a description of the context it was given (counts and the names of
-- the routes and upstreams involved; never the context itself, which may be
-- large). The newest analysis is also kept on the incident (`incidents.analysis`)
-- so that reading an incident shows it without another query.
CREATE TABLE incident_analyses (
    id TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    summary TEXT NOT NULL,
    probable_cause TEXT NOT NULL,
    suggested_actions TEXT NOT NULL,
    provider_id TEXT,
    provider_name TEXT NOT NULL,
    model TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    context_json TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX incident_analyses_incident ON incident_analyses (incident_id, created_at);
