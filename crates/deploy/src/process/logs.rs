//! The process driver's log store: what services write (and the driver's own
//! notes) as JSON lines in `<root>/<deployment>/<service>.log`, rotated by size
//! into `<service>.log.1` … `.N`; reading them back with filters; and a broadcast
//! channel per deployment for followers. It also owns cutting a byte stream into
//! bounded lines ([`LineSplitter`]).

use std::collections::{HashMap, VecDeque};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::spec::{DriverError, LogLine, LogQuery};

/// The longest line kept, in bytes, the cut mark included.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Appended to a line that was longer than [`MAX_LINE_BYTES`].
pub const CUT_MARK: &str = " …[cut]";
/// `LogQuery::tail` when none is asked for.
pub const DEFAULT_TAIL: usize = 200;
/// The most lines one query returns.
pub const MAX_TAIL: usize = 10_000;
/// Lines a follower may fall behind before it misses some.
const FOLLOW_CAPACITY: usize = 1024;

/// The stored form of one line; the service is the file's name.
#[derive(Serialize)]
struct StoredLine<'a> {
    at: i64,
    stream: &'a str,
    line: &'a str,
}

/// [`StoredLine`] read back: owned, because a line with escapes (quotes,
/// control characters) cannot borrow from the file's bytes.
#[derive(Deserialize)]
struct ReadLine {
    at: i64,
    stream: String,
    line: String,
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A name used as one path component must not climb out of the log root.
pub fn check_name(kind: &str, name: &str) -> Result<(), DriverError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(DriverError::Failed(format!(
            "{kind} name {name:?} cannot name a log file (empty, `.`, `..`, or has `/` or NUL)"
        )));
    }
    Ok(())
}

struct OpenLog {
    file: File,
    size: u64,
}

/// One deployment's open files and its followers' channel.
struct DeploymentLogs {
    tx: broadcast::Sender<LogLine>,
    files: Mutex<HashMap<String, OpenLog>>,
}

/// Where logs go; shared by every supervisor of the driver.
pub struct LogStore {
    root: PathBuf,
    max_bytes: u64,
    keep: usize,
    deployments: Mutex<HashMap<String, Arc<DeploymentLogs>>>,
}

/// A poisoned lock only means another thread panicked while holding it; the
/// maps it guards stay usable, so carry on rather than spread the panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LogStore {
    /// `max_bytes`: a file is rotated before a line would take it past this;
    /// `keep`: how many rotated files are kept.
    pub fn new(root: PathBuf, max_bytes: u64, keep: usize) -> Self {
        Self {
            root,
            max_bytes: max_bytes.max(1),
            keep,
            deployments: Mutex::new(HashMap::new()),
        }
    }

    fn deployment(&self, name: &str) -> Arc<DeploymentLogs> {
        let mut map = lock(&self.deployments);
        map.entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(DeploymentLogs {
                    tx: broadcast::channel(FOLLOW_CAPACITY).0,
                    files: Mutex::new(HashMap::new()),
                })
            })
            .clone()
    }

    /// Lines of `deployment` written from now on (the channel is made on first
    /// use, so a follower may subscribe before the deployment starts).
    pub fn follow(&self, deployment: &str) -> broadcast::Receiver<LogLine> {
        self.deployment(deployment).tx.subscribe()
    }

    fn file_path(&self, deployment: &str, service: &str, generation: usize) -> PathBuf {
        let dir = self.root.join(deployment);
        if generation == 0 {
            dir.join(format!("{service}.log"))
        } else {
            dir.join(format!("{service}.log.{generation}"))
        }
    }

    /// Stores one line and hands it to followers. A line that cannot be
    /// stored (disk full, say) is still followed; the failure is traced, not
    /// returned, because a service must not stop over its log.
    pub fn write(&self, deployment: &str, service: &str, stream: &'static str, line: String) {
        let at = now_ms();
        let logs = self.deployment(deployment);
        {
            let mut files = lock(&logs.files);
            if let Err(e) = self.append(&mut files, deployment, service, at, stream, &line) {
                tracing::warn!(
                    deployment,
                    service,
                    error = %e,
                    "cannot write a log line under {}",
                    self.root.display()
                );
                // Reopen next time rather than keep writing to a file in an
                // unknown state.
                files.remove(service);
            }
        }
        // No follower is not an error.
        let _ = logs.tx.send(LogLine {
            at,
            service: service.to_string(),
            stream,
            line,
        });
    }

    fn append(
        &self,
        files: &mut HashMap<String, OpenLog>,
        deployment: &str,
        service: &str,
        at: i64,
        stream: &str,
        line: &str,
    ) -> std::io::Result<()> {
        let mut record =
            serde_json::to_vec(&StoredLine { at, stream, line }).map_err(std::io::Error::other)?;
        record.push(b'\n');
        let len = record.len() as u64;
        if !files.contains_key(service) {
            let open = self.open(deployment, service)?;
            files.insert(service.to_string(), open);
        }
        let needs_rotation = files
            .get(service)
            .is_some_and(|f| f.size > 0 && f.size + len > self.max_bytes);
        if needs_rotation {
            files.remove(service);
            self.rotate(deployment, service)?;
            let open = self.open(deployment, service)?;
            files.insert(service.to_string(), open);
        }
        let Some(open) = files.get_mut(service) else {
            return Err(std::io::Error::other("log file vanished from the table"));
        };
        open.file.write_all(&record)?;
        open.size += len;
        Ok(())
    }

    fn open(&self, deployment: &str, service: &str) -> std::io::Result<OpenLog> {
        let dir = self.root.join(deployment);
        // Logs may hold secrets a service prints: owner only.
        DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let path = self.file_path(deployment, service, 0);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        let size = file.metadata()?.len();
        Ok(OpenLog { file, size })
    }

    /// `s.log.(keep-1)` → `s.log.keep` … `s.log` → `s.log.1`; the oldest is
    /// dropped.
    fn rotate(&self, deployment: &str, service: &str) -> std::io::Result<()> {
        if self.keep == 0 {
            return remove_if_present(&self.file_path(deployment, service, 0));
        }
        remove_if_present(&self.file_path(deployment, service, self.keep))?;
        for generation in (0..self.keep).rev() {
            let from = self.file_path(deployment, service, generation);
            match std::fs::rename(&from, self.file_path(deployment, service, generation + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Stored lines of `deployment`, oldest first, filtered by `query`. Blocks
    /// on file reads: call it from a blocking thread.
    pub fn read(&self, deployment: &str, query: &LogQuery) -> Result<Vec<LogLine>, DriverError> {
        check_name("deployment", deployment)?;
        let tail = query.tail.unwrap_or(DEFAULT_TAIL).min(MAX_TAIL);
        let services = match &query.service {
            Some(service) => {
                check_name("service", service)?;
                vec![service.clone()]
            }
            None => self.services_with_logs(deployment)?,
        };
        let mut lines = Vec::new();
        for service in services {
            lines.extend(self.read_service(deployment, &service, query.since, tail)?);
        }
        // Each service's lines are in order already; a stable sort by time
        // interleaves them without reordering lines of one millisecond.
        lines.sort_by_key(|l| l.at);
        let skip = lines.len().saturating_sub(tail);
        lines.drain(..skip);
        Ok(lines)
    }

    fn services_with_logs(&self, deployment: &str) -> Result<Vec<String>, DriverError> {
        let dir = self.root.join(deployment);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(DriverError::Failed(format!(
                    "cannot list the logs in {}: {e}",
                    dir.display()
                )))
            }
        };
        let mut services = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(service) = name.strip_suffix(".log") {
                services.push(service.to_string());
            } else if let Some((service, generation)) = name.rsplit_once(".log.") {
                // A service whose current file is gone still has rotated ones.
                if generation.parse::<usize>().is_ok() {
                    services.push(service.to_string());
                }
            }
        }
        services.sort();
        services.dedup();
        Ok(services)
    }

    /// The newest `tail` lines of one service at or after `since`, reading the
    /// rotated files oldest first.
    fn read_service(
        &self,
        deployment: &str,
        service: &str,
        since: Option<i64>,
        tail: usize,
    ) -> Result<VecDeque<LogLine>, DriverError> {
        let mut out = VecDeque::with_capacity(tail.min(1024));
        if tail == 0 {
            return Ok(out);
        }
        for generation in (0..=self.keep).rev() {
            let path = self.file_path(deployment, service, generation);
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(DriverError::Failed(format!(
                        "cannot read the log {}: {e}",
                        path.display()
                    )))
                }
            };
            for raw in BufReader::new(file).split(b'\n') {
                let raw = raw.map_err(|e| {
                    DriverError::Failed(format!("cannot read the log {}: {e}", path.display()))
                })?;
                // A line torn by a crash mid-write is skipped, not an error.
                let Some(line) = parse_stored(&raw, service) else {
                    continue;
                };
                if since.is_some_and(|since| line.at < since) {
                    continue;
                }
                if out.len() == tail {
                    out.pop_front();
                }
                out.push_back(line);
            }
        }
        Ok(out)
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// One stored JSON line back into a [`LogLine`]; `None` if it is not one.
fn parse_stored(raw: &[u8], service: &str) -> Option<LogLine> {
    let stored: ReadLine = serde_json::from_slice(raw).ok()?;
    let stream = match stored.stream.as_str() {
        "stdout" => "stdout",
        "stderr" => "stderr",
        "fleetgate" => "fleetgate",
        _ => return None,
    };
    Some(LogLine {
        at: stored.at,
        service: service.to_string(),
        stream,
        line: stored.line,
    })
}

/// Cuts a byte stream into lines: at most [`MAX_LINE_BYTES`] each (a longer
/// one is cut and marked with [`CUT_MARK`], its rest dropped up to the next
/// newline), invalid UTF-8 replaced, a trailing `\r` removed. Memory is bounded
/// by the line limit whatever the stream holds.
#[derive(Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    /// The current line was cut; drop bytes until its newline.
    cutting: bool,
}

impl LineSplitter {
    /// Feeds bytes; returns the lines they complete.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let (chunk, rest, ends) = match newline {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            if !self.cutting {
                // Keep one byte more than fits, to know whether to cut.
                let room = (MAX_LINE_BYTES + 1).saturating_sub(self.buf.len());
                self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if self.buf.len() > MAX_LINE_BYTES {
                    lines.push(self.take_cut());
                    self.cutting = true;
                }
            }
            if ends {
                if self.cutting {
                    self.cutting = false;
                } else {
                    lines.push(self.take());
                }
            }
            bytes = rest;
        }
        lines
    }

    /// The last line, when the stream ended without a newline.
    pub fn finish(&mut self) -> Option<String> {
        if self.cutting || self.buf.is_empty() {
            self.cutting = false;
            self.buf.clear();
            return None;
        }
        Some(self.take())
    }

    fn take(&mut self) -> String {
        let mut bytes = std::mem::take(&mut self.buf);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let line = String::from_utf8_lossy(&bytes).into_owned();
        // Replacement characters take 3 bytes where a bad byte took 1: a line
        // under the limit may grow past it.
        if line.len() > MAX_LINE_BYTES {
            return cut(&line);
        }
        line
    }

    fn take_cut(&mut self) -> String {
        let bytes = std::mem::take(&mut self.buf);
        cut(&String::from_utf8_lossy(&bytes))
    }
}

/// `line` shortened at a character boundary so that it and the mark fit.
pub(crate) fn cut(line: &str) -> String {
    let mut end = MAX_LINE_BYTES - CUT_MARK.len();
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + CUT_MARK.len());
    out.push_str(&line[..end]);
    out.push_str(CUT_MARK);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_lines_across_chunks() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"ab"), Vec::<String>::new());
        assert_eq!(s.push(b"c\r\nd\n\ne"), vec!["abc", "d", ""]);
        assert_eq!(s.finish(), Some("e".to_string()));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn replaces_invalid_utf8() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\xffb\n"), vec!["a\u{fffd}b"]);
    }

    #[test]
    fn cuts_a_long_line_and_drops_its_rest() {
        let mut s = LineSplitter::default();
        let long = vec![b'x'; MAX_LINE_BYTES * 3];
        let mut lines = s.push(&long);
        lines.extend(s.push(b"yyy\nnext\n"));
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert!(lines[0].ends_with(CUT_MARK));
        assert_eq!(lines[1], "next");
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_kept_whole() {
        let mut s = LineSplitter::default();
        let mut line = vec![b'x'; MAX_LINE_BYTES];
        line.push(b'\n');
        let lines = s.push(&line);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert!(!lines[0].ends_with(CUT_MARK));
    }

    #[test]
    fn check_name_refuses_paths() {
        assert!(check_name("service", "web").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0"] {
            assert!(check_name("service", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn store_rotates_and_reads_across_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::new(dir.path().to_path_buf(), 200, 2);
        for i in 0..40 {
            store.write("app", "web", "stdout", format!("line {i}"));
        }
        let root = dir.path().join("app");
        assert!(root.join("web.log.1").exists());
        assert!(root.join("web.log.2").exists());
        assert!(!root.join("web.log.3").exists());
        for g in ["web.log", "web.log.1", "web.log.2"] {
            let len = std::fs::metadata(root.join(g)).expect("metadata").len();
            assert!(len <= 200, "{g} has {len} bytes");
        }
        let query = LogQuery {
            tail: Some(10_000),
            ..LogQuery::default()
        };
        let lines = store.read("app", &query).expect("read");
        // Older lines went with the dropped file; what is left is in order
        // and ends with the last one.
        assert!(lines.len() > 3 && lines.len() < 40);
        let numbers: Vec<usize> = lines
            .iter()
            .map(|l| l.line["line ".len()..].parse().expect("number"))
            .collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        assert_eq!(numbers.last(), Some(&39));
    }

    proptest! {
        // Streams built from runs of one byte (cheap to generate, yet long
        // lines, bad UTF-8, `\r` and empty lines all come up), fed in chunks
        // cut at arbitrary points.
        #[test]
        fn splitter_bounds_every_line(
            runs in proptest::collection::vec(
                (0usize..20_000, prop_oneof![Just(b'x'), Just(0xffu8), Just(b'\r'), Just(0xe2u8)], any::<bool>()),
                0..8,
            ),
            cuts in proptest::collection::vec(0usize..50_000, 0..6),
        ) {
            let mut stream = Vec::new();
            for (len, byte, newline) in &runs {
                stream.extend(std::iter::repeat_n(*byte, *len));
                if *newline {
                    stream.push(b'\n');
                }
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut s = LineSplitter::default();
            let mut lines = Vec::new();
            let mut from = 0;
            for cut in cuts {
                lines.extend(s.push(&stream[from..cut]));
                from = cut;
            }
            lines.extend(s.finish());
            for l in &lines {
                prop_assert!(l.len() <= MAX_LINE_BYTES);
                prop_assert!(!l.contains('\n'));
            }
            let newlines = stream.iter().filter(|&&b| b == b'\n').count();
            prop_assert!(lines.len() <= newlines + 1);
        }

        #[test]
        fn stored_lines_read_back_whatever_they_hold(line in ".{0,100}", at in any::<i64>()) {
            let json = serde_json::to_vec(&StoredLine { at, stream: "stderr", line: &line })
                .expect("serializes");
            let back = parse_stored(&json, "web").expect("parses");
            prop_assert_eq!(back.line, line);
            prop_assert_eq!(back.at, at);
            prop_assert_eq!(back.stream, "stderr");
        }

        #[test]
        fn parse_stored_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_stored(&raw, "web");
        }
    }
}
