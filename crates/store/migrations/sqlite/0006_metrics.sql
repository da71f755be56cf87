-- Traffic series at three resolutions (10 s, 1 min, 1 h): each 10 s reading of a data
-- plane is added to the row of its interval at every resolution, so coarser rows are
-- kept longer without a separate roll-up. Scope '' is all traffic, 'route:<id>' and
-- 'upstream:<name>' one route or upstream. Quantiles are stored as sums weighted by
-- the requests they describe, so rows add up.
CREATE TABLE metric_points (
    resolution INTEGER NOT NULL,
    ts BIGINT NOT NULL,
    scope TEXT NOT NULL,
    source TEXT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    client_errors BIGINT NOT NULL,
    rate_limited BIGINT NOT NULL,
    timeouts BIGINT NOT NULL,
    retries BIGINT NOT NULL,
    latency_count BIGINT NOT NULL,
    p50_weighted REAL NOT NULL,
    p95_weighted REAL NOT NULL,
    p99_weighted REAL NOT NULL,
    PRIMARY KEY (resolution, scope, ts, source)
);
CREATE INDEX metric_points_age ON metric_points (resolution, ts);
