-- What each gateway process was granted of a `block` or `throttle` budget's
-- period. A process spends only from its grants, and a grant never takes the
-- sum of a period's grants past the budget's limit, so processes sharing this
-- store never spend past it together. `holder` names one process for as long
-- as it runs; holder '' holds what the period had spent before its first grant.
CREATE TABLE ai_budget_allowances (
    budget_id TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    holder TEXT NOT NULL,
    granted_micros BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (budget_id, period_start, holder)
);
