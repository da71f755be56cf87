//! A deployment's files come from whoever uploads the app: any bytes given as
//! compose.yml, service.yml, or both at once (split at the first NUL byte)
//! must give a result or problems, never a panic, and every problem must point
//! inside the file it names.

#![no_main]

use fleetgate_deploy::spec::Problem;
use fleetgate_deploy::{compose, meta, parse_files};
use libfuzzer_sys::fuzz_target;

fn check(text: &str, problems: &[Problem]) {
    // Lines as YAML counts them: a lone CR ends one too.
    let lines = text
        .split('\n')
        .flat_map(|l| l.strip_suffix('\r').unwrap_or(l).split('\r'))
        .count()
        + 1;
    for p in problems {
        assert!(p.line <= lines, "{p:?} past the end");
        assert!(p.line >= 1 || p.field.is_empty(), "{p:?} without a line");
        assert!(!p.message.is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(p) = compose::parse(&text) {
        check(&text, &p);
    }
    if let Err(p) = meta::parse(&text) {
        check(&text, &p);
    }
    let (a, b) = text.split_once('\0').unwrap_or((&text, ""));
    if let Err(problems) = parse_files(a, b) {
        for p in &problems {
            check(
                if p.file == "compose.yml" { a } else { b },
                std::slice::from_ref(p),
            );
        }
    }
});
