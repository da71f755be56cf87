-- Alert rules and the incidents they open (or operators open by hand), each with a
-- timeline of related events, status changes and notes. An incident is active while
-- it is open or acknowledged; a rule has at most one active incident at a time, which
-- the partial unique index enforces even with several managers on one database.
-- Version 0006 belongs to the metrics series.
CREATE TABLE alert_rules (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    severity TEXT NOT NULL,
    condition_json TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE incidents (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    status TEXT NOT NULL,
    severity TEXT NOT NULL,
    rule_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    acknowledged_by TEXT,
    acknowledged_at BIGINT,
    resolved_by TEXT,
    resolved_at BIGINT,
    -- Reserved for AI analysis of the incident (JSON); not written yet.
    analysis TEXT,
    version BIGINT NOT NULL
);
CREATE UNIQUE INDEX incidents_one_active_per_rule ON incidents (rule_id)
    WHERE rule_id IS NOT NULL AND status <> 'resolved';
CREATE INDEX incidents_created ON incidents (created_at);
CREATE INDEX incidents_status ON incidents (status, created_at);

CREATE TABLE incident_timeline (
    id BIGSERIAL PRIMARY KEY,
    incident_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    actor TEXT,
    event_id BIGINT,
    event_type TEXT,
    status TEXT
);
CREATE INDEX incident_timeline_incident ON incident_timeline (incident_id, id);
-- An event is linked to an incident once, however many managers see it.
CREATE UNIQUE INDEX incident_timeline_event ON incident_timeline (incident_id, event_id)
    WHERE event_id IS NOT NULL;
