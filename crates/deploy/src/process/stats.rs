//! Resource use of a service's processes, read from `/proc`: the parsing of
//! `/proc/<pid>/stat` and `/proc/<pid>/statm` as pure functions, and the scan
//! that finds every process of a process group. Nothing here keeps state; the
//! driver keeps the previous CPU reading.

use std::collections::HashMap;
use std::path::Path;

/// What the driver needs of `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    /// The state letter (`R`, `S`, `Z`…).
    pub state: char,
    pub pgrp: i32,
    /// User and system time, in clock ticks.
    pub utime: u64,
    pub stime: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and
/// may itself hold spaces and parentheses, so fields are counted from the last
/// `)`. `None` for anything that is not such a line.
pub fn parse_stat(contents: &str) -> Option<ProcStat> {
    let open = contents.find('(')?;
    let close = contents.rfind(')')?;
    if close < open {
        return None;
    }
    let pid = contents[..open].trim().parse().ok()?;
    // After the name: state ppid pgrp session tty_nr tpgid flags minflt
    // cminflt majflt cmajflt utime stime … (fields 3, 4, 5 … of proc(5)).
    let mut fields = contents[close + 1..].split_ascii_whitespace();
    let state = {
        let field = fields.next()?;
        let mut chars = field.chars();
        let c = chars.next()?;
        if chars.next().is_some() {
            return None;
        }
        c
    };
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    let mut fields = fields.skip(8);
    let utime = fields.next()?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some(ProcStat {
        pid,
        state,
        pgrp,
        utime,
        stime,
    })
}

/// Resident pages: the second field of `/proc/<pid>/statm`.
pub fn parse_statm_resident(contents: &str) -> Option<u64> {
    contents.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// The processes of one group, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupUsage {
    /// Live (not zombie) processes.
    pub processes: u32,
    /// User + system clock ticks of those processes.
    pub cpu_ticks: u64,
    pub resident_pages: u64,
}

/// Scans `<proc_root>/*/stat` once for the processes of the groups `pgids`.
/// Processes that exit during the scan are skipped. Blocks on file reads.
pub fn usage_by_group(proc_root: &Path, pgids: &[i32]) -> HashMap<i32, GroupUsage> {
    let mut usage: HashMap<i32, GroupUsage> = pgids
        .iter()
        .map(|&pgid| (pgid, GroupUsage::default()))
        .collect();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return usage;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let dir = proc_root.join(pid);
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let Some(stat) = parse_stat(&stat) else {
            continue;
        };
        // A zombie has exited: it holds neither memory nor a running thread.
        if matches!(stat.state, 'Z' | 'X' | 'x') {
            continue;
        }
        let Some(group) = usage.get_mut(&stat.pgrp) else {
            continue;
        };
        group.processes += 1;
        group.cpu_ticks = group
            .cpu_ticks
            .saturating_add(stat.utime.saturating_add(stat.stime));
        if let Some(pages) = std::fs::read_to_string(dir.join("statm"))
            .ok()
            .and_then(|s| parse_statm_resident(&s))
        {
            group.resident_pages = group.resident_pages.saturating_add(pages);
        }
    }
    usage
}

/// Percent of one core used between two readings of the same group.
pub fn cpu_percent(prev_ticks: u64, ticks: u64, ticks_per_sec: u64, elapsed_secs: f64) -> f64 {
    if elapsed_secs <= 0.0 || ticks_per_sec == 0 {
        return 0.0;
    }
    // Ticks of processes that exited since the last reading are gone from the
    // sum; the difference never goes below zero.
    let used = ticks.saturating_sub(prev_ticks) as f64 / ticks_per_sec as f64;
    used / elapsed_secs * 100.0
}

/// Clock ticks per second for `/proc` times; 100 (Linux's USER_HZ everywhere
/// in practice) if the system does not say.
pub fn ticks_per_sec() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|&v| v > 0)
        .unwrap_or(100)
}

/// Bytes in a memory page; 4096 if the system does not say.
pub fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|&v| v > 0)
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "4242 (sh) S 1 4242 4242 0 -1 4194560 120 0 0 0 17 5 0 0 20 0 1 0 \
                          123456 2400000 200 18446744073709551615 1 1 0 0 0 0 0 0 65536 0 0 0 \
                          17 1 0 0 0 0 0\n";

    #[test]
    fn parses_a_stat_line() {
        assert_eq!(
            parse_stat(SAMPLE),
            Some(ProcStat {
                pid: 4242,
                state: 'S',
                pgrp: 4242,
                utime: 17,
                stime: 5
            })
        );
    }

    #[test]
    fn a_name_with_spaces_and_parentheses() {
        let line = "77 (a) b (c)) R 1 70 70 0 -1 0 0 0 0 0 300 11 0 0";
        let stat = parse_stat(line).expect("parsed");
        assert_eq!((stat.pid, stat.state, stat.pgrp), (77, 'R', 70));
        assert_eq!((stat.utime, stat.stime), (300, 11));
    }

    #[test]
    fn refuses_truncated_or_garbled_lines() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_stat(") 12 (x S 1 2 3 4 5 6 7 8 9 10 11 12"), None);
        assert_eq!(parse_stat("x (y) S 1 2 3 4 5 6 7 8 9 10 11 12"), None);
        assert_eq!(parse_stat("1 (y) SS 1 2 3 4 5 6 7 8 9 10 11 12"), None);
    }

    #[test]
    fn parses_statm() {
        assert_eq!(
            parse_statm_resident("2500 391 300 200 0 150 0\n"),
            Some(391)
        );
        assert_eq!(parse_statm_resident("2500"), None);
        assert_eq!(parse_statm_resident("a b"), None);
    }

    #[test]
    fn cpu_percent_of_one_core() {
        assert_eq!(cpu_percent(100, 150, 100, 1.0), 50.0);
        assert_eq!(cpu_percent(150, 100, 100, 1.0), 0.0);
        assert_eq!(cpu_percent(0, 100, 100, 0.0), 0.0);
    }

    #[test]
    fn reads_this_process_group() {
        let pgid = nix::unistd::getpgrp().as_raw();
        let usage = usage_by_group(Path::new("/proc"), &[pgid]);
        let usage = usage.get(&pgid).copied().unwrap_or_default();
        assert!(usage.processes >= 1);
        assert!(usage.resident_pages > 0);
    }

    proptest! {
        #[test]
        fn parse_stat_never_panics(s in ".{0,200}") {
            let _ = parse_stat(&s);
        }

        #[test]
        fn parse_stat_finds_fields_whatever_the_name(
            name in "[^\n]{0,40}", pid in 1i32..1_000_000, pgrp in 1i32..1_000_000,
            utime in any::<u64>(), stime in any::<u64>(),
        ) {
            let line = format!("{pid} ({name}) S 1 {pgrp} 1 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20");
            let stat = parse_stat(&line);
            prop_assert_eq!(stat, Some(ProcStat { pid, state: 'S', pgrp, utime, stime }));
        }

        #[test]
        fn parse_statm_never_panics(s in ".{0,100}") {
            let _ = parse_statm_resident(&s);
        }
    }
}
