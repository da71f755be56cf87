//! Route lookup with large tables: 10,000 routes mixing exact hosts, wildcard
//! hosts, host-less prefixes, exact paths and a few regexes.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use fleetgate_core::gateway::Route;
use fleetgate_core::routing::{Lookup, RouteTable};
use serde_json::json;

fn routes(n: usize) -> Vec<Route> {
    (0..n)
        .map(|i| {
            let v = match i % 10 {
                0..=4 => json!({"id": format!("p{i}"), "path": format!("/svc{i}/api")}),
                5 | 6 => json!({"id": format!("h{i}"), "path": format!("/v{}", i % 7), "hosts": [format!("host{i}.example.com")]}),
                7 => json!({"id": format!("w{i}"), "path": "/", "hosts": [format!("*.tenant{i}.example.com")]}),
                8 => json!({"id": format!("e{i}"), "path": format!("/exact/{i}"), "match": "exact", "methods": ["GET", "POST"]}),
                _ if i % 100 == 9 => json!({"id": format!("r{i}"), "path": format!("^/re{i}/[0-9]+$"), "match": "regex"}),
                _ => json!({"id": format!("q{i}"), "path": format!("/q{i}")}),
            };
            let mut v = v;
            v["upstream"] = json!("http://127.0.0.1:9000");
            serde_json::from_value(v).expect("route")
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    for n in [1_000usize, 10_000] {
        let rs = routes(n);
        let table = RouteTable::build(&rs).expect("build");
        let base = n / 2 - (n / 2) % 10;
        let re = base - base % 100 + 9;
        let prefix = format!("/svc{base}/api/users/42");
        let host = format!("host{}.example.com", base + 5);
        let host_path = format!("/v{}/items", (base + 5) % 7);
        let wild = format!("a.tenant{}.example.com", base + 7);
        let exact = format!("/exact/{}", base + 8);
        let regex = format!("/re{re}/123");
        let cases = [
            ("prefix_hit", "gw.example.com", prefix.as_str()),
            ("host_hit", host.as_str(), host_path.as_str()),
            ("wildcard_hit", wild.as_str(), "/anything"),
            ("exact_hit", "gw.example.com", exact.as_str()),
            ("regex_hit", "gw.example.com", regex.as_str()),
            ("miss", "gw.example.com", "/nothing/matches/this/path"),
        ];
        for (name, host, path) in cases {
            let found = matches!(table.lookup(host, path, "GET"), Lookup::Found(_));
            assert_eq!(found, name != "miss", "{name}");
            c.bench_function(&format!("lookup_{n}_{name}"), |b| {
                b.iter(|| table.lookup(black_box(host), black_box(path), black_box("GET")))
            });
        }
        if n == 10_000 {
            c.bench_function("build_10000", |b| {
                b.iter(|| RouteTable::build(black_box(&rs)).expect("build"))
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
