//! Route compilation and matching on untrusted input: the first line is a JSON
//! array of routes (as an API client could send them), every further line is a
//! `host path method` lookup. Nothing may panic, and every match must point at a
//! valid, enabled route whose methods allow the request.

#![no_main]

use fleetgate_core::gateway::Route;
use fleetgate_core::routing::{stripped_path, Lookup, RouteTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let Some(first) = lines.next() else { return };
    let Ok(routes) = serde_json::from_str::<Vec<Route>>(first) else { return };
    let routes: Vec<Route> = routes.into_iter().filter(|r| r.validate().is_ok()).collect();
    let Ok(table) = RouteTable::build(&routes) else { return };
    for line in lines {
        let mut parts = line.splitn(3, ' ');
        let (host, path, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"), parts.next().unwrap_or("GET"));
        if let Lookup::Found(m) = table.lookup(host, path, method) {
            let r = &routes[m.index];
            assert!(r.enabled);
            assert!(r.methods.is_empty() || r.methods.iter().any(|x| x.eq_ignore_ascii_case(method)));
            let _ = stripped_path(path, m.matched_len);
        }
    }
});
