//! Request paths and `Host` values as clients send them: the canonical form must
//! never panic, must be a fixed point (normalising it again changes nothing), and
//! must hold no `.`/`..`/empty segment nor an encoded separator.

#![no_main]

use fleetgate_core::request_target::{normalize_host, normalize_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = normalize_path(text) {
        assert!(p.starts_with('/'));
        assert_eq!(normalize_path(&p).as_deref(), Ok(&*p));
        assert!(!p.contains("//") && !p.contains("/./") && !p.contains("/../"));
        assert!(!p.ends_with("/.") && !p.ends_with("/.."));
        let upper = p.to_ascii_uppercase();
        assert!(!upper.contains("%2F") && !upper.contains("%5C") && !upper.contains("%00"));
    }
    if let Ok(h) = normalize_host(text) {
        assert_eq!(normalize_host(&h).as_deref(), Ok(&*h));
        assert!(!h.contains('/') && !h.contains('@') && !h.is_empty());
    }
});
