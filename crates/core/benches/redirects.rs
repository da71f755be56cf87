//! The redirect matcher at 1,000 and 100,000 rules: 70% BASIC, 20% BASIC_HOST, 10%
//! REGEX with literal prefixes, plus 1,000 regexes without one.
//!
//! Criterion times each case; then, since criterion reports no tail, every case is also
//! timed call by call over varied inputs (the timer's own cost subtracted) for a median
//! and p99, and a counting allocator measures the set's memory and the allocations of
//! an exact hit. `bench/matcher.sh` runs this and records the summary in BENCHMARKS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use fleetgate_core::redirects::matcher::RuleSet;
use fleetgate_core::redirects::{Page, Redirect};

// dhat counts heap bytes and blocks while a profiler runs (and only forwards to the
// system allocator otherwise, so the timed runs are not slowed).
#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

/// Live heap bytes and blocks allocated so far, while `_p` runs.
fn heap(_p: &dhat::Profiler) -> (usize, u64) {
    let s = dhat::HeapStats::get();
    (s.curr_bytes, s.total_blocks)
}

const HOST: &str = "bench.test";
const NO_PREFIX: usize = 1000;

/// The sync API's JSON for `n` mixed rules (rule `i`'s kind is fixed by `i`).
fn rules_json(n: usize) -> String {
    let mut items = Vec::with_capacity(n);
    let prefixed = n - NO_PREFIX.min(n / 10);
    for i in 0..prefixed {
        let v = match i % 10 {
            0..=6 => {
                serde_json::json!({"type": "BASIC", "source": format!("/page-{i}/index.html?ref=news"), "target": format!("/new/{i}"), "status": "MOVED_PERMANENT"})
            }
            7 | 8 => {
                serde_json::json!({"type": "BASIC_HOST", "source": format!("{HOST}/shop-{i}/item"), "target": format!("https://shop.example.com/{i}"), "status": "FOUND"})
            }
            _ => {
                serde_json::json!({"type": "REGEX", "source": format!("^/blog-{i}/(\\d+)/(.*)$"), "target": format!("/articles/{i}/$1?slug=$2"), "status": "PERMANENT_REDIRECT"})
            }
        };
        items.push(v);
    }
    for j in 0..(n - prefixed) {
        let source = if j % 2 == 1 {
            format!("(?i)^/legacy-{j}/(.*)$")
        } else {
            format!(".*/file-{j}\\.php$")
        };
        items.push(serde_json::json!({"type": "REGEX", "source": source, "target": format!("/modern/{j}/$1"), "status": "FOUND"}));
    }
    serde_json::json!({"items": items, "total": n, "limit": n, "offset": 0}).to_string()
}

#[derive(serde::Deserialize)]
struct Envelope {
    items: Vec<Redirect>,
}

fn build(json: &str) -> RuleSet {
    let env: Envelope = serde_json::from_str(json).expect("valid JSON");
    RuleSet::build(env.items, Vec::<Page>::new())
}

/// Inputs of one case: 1,000 different keys spread over the set.
fn inputs(n: usize, case: &str) -> Vec<String> {
    let prefixed = n - NO_PREFIX.min(n / 10);
    (0..1000)
        .map(|k| {
            let base = (k * (prefixed / 1000).max(10)) / 10 * 10 % prefixed.max(10);
            match case {
                "exact" => format!("/page-{}/index.html?ref=news", base),
                "exact_host" => format!("/shop-{}/item", base + 7),
                "miss" => format!("/nothing-{k}/here/at-all?q=1"),
                "regex" => format!("/blog-{}/2024/hello-world-{k}", base + 9),
                // The prefix-less regexes: `(?i)^/legacy-{j}/(.*)$` (odd j) and
                // `.*/file-{j}\.php$` (even j).
                "regex_noprefix" => {
                    let j = k % NO_PREFIX.min(n / 10);
                    if j % 2 == 1 {
                        format!("/LEGACY-{j}/old/page-{k}")
                    } else {
                        format!("/downloads/{k}/file-{j}.php")
                    }
                }
                _ => unreachable!(),
            }
        })
        .collect()
}

fn check(set: &RuleSet, case: &str, uri: &str) {
    let hit = set.lookup(HOST, uri).is_some();
    assert_eq!(hit, case != "miss", "{case} {uri}");
}

/// Median and p99 of single calls, in ns, with the timer's cost removed.
fn distribution(set: &RuleSet, keys: &[String], rounds: usize) -> (f64, f64) {
    let mut overhead: Vec<u64> = (0..10_000)
        .map(|_| {
            let t = Instant::now();
            black_box(());
            t.elapsed().as_nanos() as u64
        })
        .collect();
    overhead.sort_unstable();
    let timer = overhead[overhead.len() / 2] as f64;
    let mut samples = Vec::with_capacity(rounds * keys.len());
    for _ in 0..rounds {
        for k in keys {
            let t = Instant::now();
            black_box(set.lookup(black_box(HOST), black_box(k)));
            samples.push(t.elapsed().as_nanos() as u64);
        }
    }
    samples.sort_unstable();
    let at = |q: f64| (samples[((samples.len() - 1) as f64 * q) as usize] as f64 - timer).max(0.0);
    (at(0.5), at(0.99))
}

/// Heap bytes per rule after a build and once every regex has been compiled by a hit,
/// and heap allocations per lookup of each case (after one warm-up pass).
fn memory(n: usize, json: &str) -> (usize, usize, Vec<f64>) {
    let profiler = dhat::Profiler::builder().testing().build();
    let set = build(json);
    let after_build = heap(&profiler).0;
    let no_prefix = NO_PREFIX.min(n / 10);
    for j in 0..no_prefix {
        let uri = if j % 2 == 1 {
            format!("/LEGACY-{j}/x")
        } else {
            format!("/a/file-{j}.php")
        };
        black_box(set.lookup(HOST, &uri));
    }
    for i in (9..n - no_prefix).step_by(10) {
        black_box(set.lookup(HOST, &format!("/blog-{i}/1/x")));
    }
    let all_compiled = heap(&profiler).0;
    let mut allocs = Vec::new();
    for case in CASES {
        let keys = inputs(n, case);
        for k in &keys {
            black_box(set.lookup(HOST, k));
        }
        let before = heap(&profiler).1;
        for k in &keys {
            black_box(set.lookup(HOST, k));
        }
        allocs.push((heap(&profiler).1 - before) as f64 / keys.len() as f64);
    }
    drop(set);
    drop(profiler);
    (after_build / n, all_compiled / n, allocs)
}

const CASES: [&str; 5] = ["exact", "exact_host", "miss", "regex", "regex_noprefix"];

/// Median and p99 of the first hit of 1,000 different regexes on a fresh set: the
/// lookup that compiles the regex.
fn first_hits(json: &str, n: usize) -> (f64, f64) {
    let set = build(json);
    let keys = inputs(n, "regex");
    let mut samples: Vec<u64> = Vec::with_capacity(keys.len());
    let mut seen = std::collections::HashSet::new();
    for k in &keys {
        // One sample per regex: its first hit.
        let rule = k.split('/').nth(1).unwrap_or_default().to_string();
        if !seen.insert(rule) {
            continue;
        }
        let t = Instant::now();
        black_box(set.lookup(HOST, k));
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize] as f64;
    (at(0.5), at(0.99))
}

fn bench(c: &mut Criterion) {
    let mut summary = Vec::new();
    for n in [1_000usize, 100_000] {
        let json = rules_json(n);
        let (per_rule_built, per_rule_compiled, allocs) = memory(n, &json);
        let set = build(&json);
        let mut g = c.benchmark_group(format!("redirects_{n}"));
        // Kept short: the call-by-call distributions below are the tail figures.
        g.sample_size(10);
        g.warm_up_time(Duration::from_millis(500));
        g.measurement_time(Duration::from_secs(if n > 10_000 { 3 } else { 1 }));
        g.bench_function("build_with_json_decode", |b| {
            b.iter(|| build(black_box(&json)))
        });
        for (case, allocs) in CASES.iter().zip(allocs) {
            let keys = inputs(n, case);
            for k in &keys {
                check(&set, case, k);
            }
            let mut i = 0;
            g.bench_function(*case, |b| {
                b.iter(|| {
                    i = (i + 1) % keys.len();
                    black_box(set.lookup(HOST, &keys[i]))
                })
            });
            let (median, p99) = distribution(&set, &keys, 200);
            summary.push(format!(
                "| {n} | {case} | {median:.0} | {p99:.0} | {allocs:.2} |"
            ));
        }
        g.finish();
        let mut builds: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                drop(black_box(build(&json)));
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        builds.sort_by(f64::total_cmp);
        let (first_median, first_p99) = first_hits(&json, n);
        summary.push(format!(
            "| {n} | regex, first hit (compiles the regex) | {first_median:.0} | {first_p99:.0} | |"
        ));
        summary.push(format!(
            "| {n} | memory and build | after build: {per_rule_built} B/rule | every regex compiled: {per_rule_compiled} B/rule | build incl. JSON decode, median of 5: {:.0} ms |",
            builds[2]
        ));
    }
    println!("\nredirect matcher summary (ns per lookup, timer cost removed):");
    println!("| rules | case | median ns | p99 ns | allocations/lookup |");
    println!("|---|---|---|---|---|");
    for l in summary {
        println!("{l}");
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
