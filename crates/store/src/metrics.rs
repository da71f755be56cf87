//! Traffic series: 10-second readings of the data planes, added at write time to
//! the rows of their interval at each resolution (10 s, 1 min, 1 h), read back
//! summed over sources and pruned per resolution by age.

use async_trait::async_trait;
use sqlx::Row;

use crate::sql::SqlStore;
use crate::Result;

/// Interval lengths, in seconds, at which series are kept.
pub const RESOLUTIONS: [i64; 3] = [10, 60, 3600];

/// One interval of one scope (all traffic, a route or an upstream).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricPoint {
    /// Start of the interval, Unix ms.
    pub ts: i64,
    /// `""` for all traffic, `route:<id>` or `upstream:<name>`.
    pub scope: String,
    /// The data plane that measured it; empty in read results (summed over sources).
    pub source: String,
    pub requests: i64,
    /// 5xx answers of a route, or failed attempts of an upstream.
    pub errors: i64,
    /// 4xx answers.
    pub client_errors: i64,
    pub rate_limited: i64,
    pub timeouts: i64,
    pub retries: i64,
    /// Requests the weighted quantiles describe.
    pub latency_count: i64,
    /// Latency quantiles in ms, each multiplied by `latency_count`.
    pub p50_weighted: f64,
    pub p95_weighted: f64,
    pub p99_weighted: f64,
}

impl MetricPoint {
    fn add(&mut self, o: &MetricPoint) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.client_errors += o.client_errors;
        self.rate_limited += o.rate_limited;
        self.timeouts += o.timeouts;
        self.retries += o.retries;
        self.latency_count += o.latency_count;
        self.p50_weighted += o.p50_weighted;
        self.p95_weighted += o.p95_weighted;
        self.p99_weighted += o.p99_weighted;
    }

    /// Adds the points of one interval into bins of `step_ms` starting at their
    /// floor; the result is ordered by time.
    pub fn bin(points: &[MetricPoint], step_ms: i64) -> Vec<MetricPoint> {
        let mut out: std::collections::BTreeMap<i64, MetricPoint> = Default::default();
        for p in points {
            let t = p.ts - p.ts.rem_euclid(step_ms.max(1));
            let e = out.entry(t).or_insert_with(|| MetricPoint {
                ts: t,
                scope: p.scope.clone(),
                ..Default::default()
            });
            e.add(p);
        }
        out.into_values().collect()
    }
}

/// Storage of traffic series.
#[async_trait]
pub trait MetricStore: Send + Sync {
    /// Adds 10-second readings (their `ts` aligned on 10 s) to every resolution.
    async fn record_metric_points(&self, points: &[MetricPoint]) -> Result<()>;
    /// Rows of one scope and resolution with `from <= ts < to`, summed over sources,
    /// oldest first.
    async fn metric_points(
        &self,
        resolution: i64,
        scope: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<MetricPoint>>;
    /// Deletes rows of `resolution` that start before `before`; returns how many.
    async fn prune_metric_points(&self, resolution: i64, before: i64) -> Result<u64>;
}

/// Rows per INSERT statement (14 parameters each).
const CHUNK: usize = 200;

#[async_trait]
impl MetricStore for SqlStore {
    async fn record_metric_points(&self, points: &[MetricPoint]) -> Result<()> {
        // One row per interval, scope and source at each resolution: readings that
        // fall in one interval are added here, since one statement may not update a
        // row twice.
        let mut merged: std::collections::BTreeMap<(i64, i64, &str, &str), MetricPoint> =
            Default::default();
        for p in points {
            for r in RESOLUTIONS {
                let ts = p.ts - p.ts.rem_euclid(r * 1000);
                merged
                    .entry((r, ts, p.scope.as_str(), p.source.as_str()))
                    .or_insert_with(|| MetricPoint {
                        ts,
                        scope: p.scope.clone(),
                        source: p.source.clone(),
                        ..Default::default()
                    })
                    .add(p);
            }
        }
        let rows: Vec<(i64, MetricPoint)> = merged.into_iter().map(|((r, ..), p)| (r, p)).collect();
        let mut tx = self.begin_write().await?;
        for chunk in rows.chunks(CHUNK) {
            let mut sql = String::from(
                "INSERT INTO metric_points (resolution, ts, scope, source, requests, errors, \
                 client_errors, rate_limited, timeouts, retries, latency_count, p50_weighted, \
                 p95_weighted, p99_weighted) VALUES ",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                let b = i * 14;
                sql.push('(');
                sql.push_str(
                    &(1..=14)
                        .map(|k| format!("${}", b + k))
                        .collect::<Vec<_>>()
                        .join(", "),
                );
                sql.push(')');
            }
            sql.push_str(
                " ON CONFLICT (resolution, scope, ts, source) DO UPDATE SET \
                 requests = metric_points.requests + excluded.requests, \
                 errors = metric_points.errors + excluded.errors, \
                 client_errors = metric_points.client_errors + excluded.client_errors, \
                 rate_limited = metric_points.rate_limited + excluded.rate_limited, \
                 timeouts = metric_points.timeouts + excluded.timeouts, \
                 retries = metric_points.retries + excluded.retries, \
                 latency_count = metric_points.latency_count + excluded.latency_count, \
                 p50_weighted = metric_points.p50_weighted + excluded.p50_weighted, \
                 p95_weighted = metric_points.p95_weighted + excluded.p95_weighted, \
                 p99_weighted = metric_points.p99_weighted + excluded.p99_weighted",
            );
            let mut q = sqlx::query(&sql);
            for (resolution, p) in chunk {
                q = q
                    .bind(*resolution)
                    .bind(p.ts)
                    .bind(p.scope.clone())
                    .bind(p.source.clone())
                    .bind(p.requests)
                    .bind(p.errors)
                    .bind(p.client_errors)
                    .bind(p.rate_limited)
                    .bind(p.timeouts)
                    .bind(p.retries)
                    .bind(p.latency_count)
                    .bind(p.p50_weighted)
                    .bind(p.p95_weighted)
                    .bind(p.p99_weighted);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn metric_points(
        &self,
        resolution: i64,
        scope: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<MetricPoint>> {
        let rows = sqlx::query(
            "SELECT ts, CAST(SUM(requests) AS BIGINT), CAST(SUM(errors) AS BIGINT), \
             CAST(SUM(client_errors) AS BIGINT), CAST(SUM(rate_limited) AS BIGINT), \
             CAST(SUM(timeouts) AS BIGINT), CAST(SUM(retries) AS BIGINT), \
             CAST(SUM(latency_count) AS BIGINT), SUM(p50_weighted), SUM(p95_weighted), \
             SUM(p99_weighted) \
             FROM metric_points WHERE resolution = $1 AND scope = $2 AND ts >= $3 AND ts < $4 \
             GROUP BY ts ORDER BY ts",
        )
        .bind(resolution)
        .bind(scope.to_string())
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MetricPoint {
                    ts: r.try_get(0)?,
                    scope: scope.to_string(),
                    source: String::new(),
                    requests: r.try_get(1)?,
                    errors: r.try_get(2)?,
                    client_errors: r.try_get(3)?,
                    rate_limited: r.try_get(4)?,
                    timeouts: r.try_get(5)?,
                    retries: r.try_get(6)?,
                    latency_count: r.try_get(7)?,
                    p50_weighted: r.try_get(8)?,
                    p95_weighted: r.try_get(9)?,
                    p99_weighted: r.try_get(10)?,
                })
            })
            .collect()
    }

    async fn prune_metric_points(&self, resolution: i64, before: i64) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM metric_points WHERE resolution = $1 AND ts < $2")
                .bind(resolution)
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}
