//! One API key's AI spend over a window, with 10 million usage rows stored:
//! the read a budget or a usage report makes, never the request path's (the
//! gateway decides in memory). The spend is summed over hourly rollups through
//! a covering index, never over usage rows.
//!
//! The first run fills a SQLite file under the target directory (and, with
//! `FLEETGATE_BENCH_POSTGRES_URL`, the schema `bench_ai_spend` of that
//! database) with 10 million usage rows of 100 API keys over 30 days, each key
//! calling 4 routes and 3 models, and their hourly rollups built from the rows
//! by the same grouping the usage writer keeps; later runs reuse them. Before
//! measuring, each store's rollup sum is checked against a sum over the rows,
//! and PostgreSQL's rollup table is vacuumed as autovacuum would (without its
//! visibility map, the index is followed by a visit of every heap page it
//! names: 11.4 ms instead of the figure in BENCHMARKS.md for 30 days).
//!
//! `cargo bench -p fleetgate-store --bench ai_spend`

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use fleetgate_store::{AiGatewayStore, SqlStore, StoreOptions};

const ROWS: i64 = 10_000_000;
const KEYS: i64 = 100;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// The rows start at a whole day and span 30 days.
const START: i64 = 1_780_000_000_000 / DAY * DAY;
const STEP: i64 = 30 * DAY / ROWS;

/// Fills the store unless it holds the rows already.
async fn fill(store: &SqlStore, numbers: &str) {
    let have = store
        .ai_usage_totals(START, START + 31 * DAY, None)
        .await
        .expect("totals")
        .first()
        .map_or(0, |t| t.requests);
    if have == ROWS {
        return;
    }
    assert_eq!(
        have, 0,
        "a partly filled bench store: remove it and run again"
    );
    let started = Instant::now();
    store
        .execute_raw(&format!(
            "{numbers} INSERT INTO ai_usage (id, at_ms, route_id, api_key_id, provider_id, model, \
             input_tokens, output_tokens, cached_input_tokens, cache_write_input_tokens, \
             reasoning_tokens, cost_micros, status, outcome, latency_ms, streamed, estimated) \
             SELECT 'u' || i, {START} + i * {STEP}, 'r' || ((i / {KEYS}) % 4), 'k' || (i % {KEYS}), \
             'p1', 'm' || ((i / {KEYS} / 4) % 3), 500 + i % 100, 1000, 0, 0, 0, 100 + i % 50, \
             200, 'ok', 20, 0, 0 FROM n"
        ))
        .await
        .expect("usage rows");
    store
        .execute_raw(&format!(
            "INSERT INTO ai_usage_hourly (hour_ms, api_key_id, route_id, provider_id, model, \
             requests, input_tokens, output_tokens, cached_input_tokens, cache_write_input_tokens, \
             reasoning_tokens, cost_micros, estimated) \
             SELECT (at_ms / {HOUR}) * {HOUR}, api_key_id, route_id, provider_id, model, COUNT(*), \
             SUM(input_tokens), SUM(output_tokens), SUM(cached_input_tokens), \
             SUM(cache_write_input_tokens), SUM(reasoning_tokens), SUM(cost_micros), SUM(estimated) \
             FROM ai_usage GROUP BY (at_ms / {HOUR}) * {HOUR}, api_key_id, route_id, provider_id, model"
        ))
        .await
        .expect("hourly rollups");
    store.execute_raw("ANALYZE").await.expect("analyze");
    eprintln!("filled with {ROWS} usage rows in {:?}", started.elapsed());
}

/// The rollup sum of one key over whole hours equals what its rows cost
/// (each row `i` of key `i % KEYS` costs `100 + i % 50`).
async fn check(store: &SqlStore, from: i64, to: i64) {
    let spent = store.ai_key_spend("k7", from, to).await.expect("spend");
    let expected: i64 = (0..ROWS)
        .skip(7)
        .step_by(KEYS as usize)
        .filter(|i| (from..to).contains(&(START + i * STEP)))
        .map(|i| 100 + i % 50)
        .sum();
    assert_eq!(spent, expected, "k7's spend over [{from}, {to})");
}

async fn open(url: &str) -> SqlStore {
    let mut options = StoreOptions::new(url);
    options.max_connections = 2;
    SqlStore::open_and_migrate(&options).await.expect("open")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-data");
    std::fs::create_dir_all(&dir).expect("bench data dir");
    let mut stores = vec![(
        "sqlite",
        format!("sqlite://{}?mode=rwc", dir.join("ai-spend.db").display()),
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 9999999)",
    )];
    if let Ok(base) = std::env::var("FLEETGATE_BENCH_POSTGRES_URL") {
        rt.block_on(async {
            let admin = open(&base).await;
            admin
                .execute_raw("CREATE SCHEMA IF NOT EXISTS bench_ai_spend")
                .await
                .expect("schema");
        });
        let sep = if base.contains('?') { '&' } else { '?' };
        stores.push((
            "postgres",
            format!("{base}{sep}options=-c%20search_path%3Dbench_ai_spend"),
            "WITH n(i) AS (SELECT generate_series(0, 9999999)::BIGINT)",
        ));
    } else {
        eprintln!("PostgreSQL not measured: FLEETGATE_BENCH_POSTGRES_URL is not set");
    }
    let end = START + 30 * DAY;
    for (name, url, numbers) in stores {
        let store = rt.block_on(async {
            let store = open(&url).await;
            fill(&store, numbers).await;
            if name == "postgres" {
                // As autovacuum leaves a table only inserted into (and
                // rollups of past hours are never written again): the
                // visibility map set, so the covering index is read alone.
                store
                    .execute_raw("VACUUM (ANALYZE) ai_usage_hourly")
                    .await
                    .expect("vacuum");
            }
            check(&store, end - DAY, end).await;
            check(&store, START, end).await;
            store
        });
        let mut g = c.benchmark_group(format!("ai_key_spend/{name}"));
        for (window, from) in [("1 day", end - DAY), ("30 days", START)] {
            g.bench_function(window, |b| {
                b.iter(|| {
                    rt.block_on(store.ai_key_spend("k7", from, end))
                        .expect("spend")
                })
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = bench
}
criterion_main!(benches);
