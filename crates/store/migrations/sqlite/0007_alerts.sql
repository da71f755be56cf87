-- Alert rules and the incidents they open (or operators open by hand), each with a
-- timeline of related events, status changes and notes. An incident is active while
-- it is open or acknowledged; a rule has at most one active incident at a time, which
-- the partial unique index enforces even with several managers on one database.
-- Version 0006 belongs to the metrics series.
CREATE TABLE alert_rules (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    severity TEXT NOT NULL,
    condition_json TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE incidents (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    status TEXT NOT NULL,
    severity TEXT NOT NULL,
    rule_id TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    acknowledged_by TEXT,
    acknowledged_at INTEGER,
    resolved_by TEXT,
    resolved_at INTEGER,
    -- Reserved for AI analysis of the incident (JSON); not written yet.
    analysis TEXT,
    version INTEGER NOT NULL
);
CREATE UNIQUE INDEX incidents_one_active_per_rule ON incidents (rule_id)
    WHERE rule_id IS NOT NULL AND status <> 'resolved';
CREATE INDEX incidents_created ON incidents (created_at);
CREATE INDEX incidents_status ON incidents (status, created_at);

CREATE TABLE incident_timeline (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    actor TEXT,
    event_id INTEGER,
    event_type TEXT,
    status TEXT
);
CREATE INDEX incident_timeline_incident ON incident_timeline (incident_id, id);
-- An event is linked to an incident once, however many managers see it.
CREATE UNIQUE INDEX incident_timeline_event ON incident_timeline (incident_id, event_id)
    WHERE event_id IS NOT NULL;
