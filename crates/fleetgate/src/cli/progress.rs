//! Progress of the CLI's long work (uploads, downloads, the manager's work on
//! them), always on standard error so that standard output keeps only the
//! result: a bar when standard error is a terminal, plain lines otherwise
//! (`uploading 3.20 MB of 12.00 MB`, at most one a second), which read well in
//! a log or a CI job.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{DecimalBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Plain lines are written at most this often while bytes move.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

/// Where progress goes.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` when standard error is not a terminal: plain lines then.
    bar: Option<ProgressBar>,
    plain: Mutex<Plain>,
    /// Where plain lines (and a bar's closing line) go: standard error.
    out: Mutex<Box<dyn std::io::Write + Send>>,
}

struct Plain {
    /// What moves (`uploading`), its past (`uploaded`) and the whole, if known.
    verb: &'static str,
    done_verb: &'static str,
    total: Option<u64>,
    moved: u64,
    last_line: Option<Instant>,
}

/// `3.20 MB`.
pub fn bytes(n: u64) -> String {
    DecimalBytes(n).to_string()
}

/// The plain line for bytes moved so far: `uploading 3.20 MB of 12.00 MB`.
pub fn moving_line(verb: &str, moved: u64, total: Option<u64>) -> String {
    match total {
        Some(t) => format!("{verb} {} of {}", bytes(moved), bytes(t)),
        None => format!("{verb} {}", bytes(moved)),
    }
}

impl Progress {
    /// Progress on standard error, drawn as a bar when it is a terminal.
    pub fn stderr() -> Progress {
        // Hidden until its first style is set (the default one would flash).
        let bar = std::io::stderr().is_terminal().then(ProgressBar::hidden);
        Progress::new(bar, Box::new(std::io::stderr()))
    }

    fn new(bar: Option<ProgressBar>, out: Box<dyn std::io::Write + Send>) -> Progress {
        Progress {
            inner: Arc::new(Inner {
                bar,
                plain: Mutex::new(Plain {
                    verb: "",
                    done_verb: "",
                    total: None,
                    moved: 0,
                    last_line: None,
                }),
                out: Mutex::new(out),
            }),
        }
    }

    fn line(&self, text: &str) {
        if let Ok(mut out) = self.inner.out.lock() {
            // Progress is best effort: a closed standard error stops nothing.
            let _ = writeln!(out, "{text}");
        }
    }

    /// A step without a measure (`the manager is importing 100000 rows`): a
    /// spinner on a terminal, one line otherwise.
    pub fn step(&self, message: impl Into<String>) {
        let message = message.into();
        match &self.inner.bar {
            Some(b) => {
                b.reset();
                b.set_length(0);
                b.set_style(
                    ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b.set_message(message);
                b.enable_steady_tick(Duration::from_millis(120));
            }
            None => self.line(&message),
        }
    }

    /// Starts counting bytes: `verb` while they move, `done_verb` once all did.
    pub fn start_bytes(&self, verb: &'static str, done_verb: &'static str, total: Option<u64>) {
        if let Ok(mut p) = self.inner.plain.lock() {
            *p = Plain {
                verb,
                done_verb,
                total,
                moved: 0,
                last_line: None,
            };
        }
        if let Some(b) = &self.inner.bar {
            b.disable_steady_tick();
            let style = match total {
                Some(_) => "{msg} [{bar:30}] {decimal_bytes}/{decimal_total_bytes} ({eta})",
                None => "{spinner} {msg} {decimal_bytes} ({decimal_bytes_per_sec})",
            };
            b.set_style(
                ProgressStyle::with_template(style)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.reset();
            b.set_length(total.unwrap_or(0));
            b.set_message(verb);
            b.set_draw_target(ProgressDrawTarget::stderr());
        }
    }

    /// `n` more bytes moved.
    pub fn advance(&self, n: u64) {
        if let Some(b) = &self.inner.bar {
            b.inc(n);
            return;
        }
        let Ok(mut p) = self.inner.plain.lock() else {
            return;
        };
        p.moved += n;
        let now = Instant::now();
        // The first line once something moved, then one a second; the last
        // one is `finish_bytes`'s.
        let due = p
            .last_line
            .is_none_or(|t| now.duration_since(t) >= PLAIN_EVERY);
        if due && p.total.is_none_or(|t| p.moved < t) {
            p.last_line = Some(now);
            let text = moving_line(p.verb, p.moved, p.total);
            drop(p);
            self.line(&text);
        }
    }

    /// All bytes moved: `uploaded 12.00 MB`.
    pub fn finish_bytes(&self) {
        let (done_verb, moved) = match self.inner.plain.lock() {
            Ok(p) => (p.done_verb, p.moved),
            Err(_) => return,
        };
        match &self.inner.bar {
            Some(b) => {
                let moved = b.position();
                b.finish_and_clear();
                self.line(&format!("{done_verb} {}", bytes(moved)));
            }
            None => self.line(&format!("{done_verb} {}", bytes(moved))),
        }
    }

    /// Clears a spinner or bar still drawn (before the result is printed).
    pub fn clear(&self) {
        if let Some(b) = &self.inner.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_name_what_moved_and_of_how_much() {
        assert_eq!(
            moving_line("uploading", 3_200_000, Some(12_000_000)),
            "uploading 3.20 MB of 12.00 MB"
        );
        assert_eq!(moving_line("downloading", 512, None), "downloading 512 B");
    }

    /// A sink the test reads back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_lines_come_at_most_once_a_second_then_the_total_and_the_steps() {
        let sink = Sink::default();
        let p = Progress::new(None, Box::new(sink.clone()));
        p.start_bytes("uploading", "uploaded", Some(1_000_000));
        // Many chunks within a second: one line, the first.
        for _ in 0..9 {
            p.advance(100_000);
        }
        p.advance(100_000);
        p.finish_bytes();
        p.step("the manager is importing the rows");
        // A download of unknown length.
        p.start_bytes("downloading", "downloaded", None);
        p.advance(2_500);
        p.finish_bytes();
        let text = String::from_utf8(sink.0.lock().expect("sink").clone()).expect("utf-8");
        assert_eq!(
            text,
            "uploading 100.00 kB of 1.00 MB\nuploaded 1.00 MB\nthe manager is importing the rows\n\
             downloading 2.50 kB\ndownloaded 2.50 kB\n"
        );
    }
}
