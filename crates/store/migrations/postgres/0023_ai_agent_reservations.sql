-- What a model call of an agent holds of the agent's budget while it is under
-- way: its worst-case cost, reserved (under the agent's row lock) only when
-- the period's spend plus every live reservation plus it fits the limit, and
-- deleted when the call settles to its real cost or fails. A reservation whose
-- `expires_at` (the call's timeout, and a grace) has passed belongs to a call
-- that can no longer be running (its replica stopped): it is counted no more
-- and deleted by the next reservation of the agent.
CREATE TABLE ai_agent_reservations (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    amount_micro_usd BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX ai_agent_reservations_agent ON ai_agent_reservations (agent_id, expires_at);
