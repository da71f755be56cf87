//! A finished span as the gateway and the manager record it, and the ids and
//! sampling decisions that go with it.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;

/// Who recorded a span: its instrumentation scope in the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The HTTP gateway (`fleetgate_proxy`): one span per proxied request.
    Gateway,
    /// The manager's API: one span per API request.
    Manager,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Gateway => "fleetgate.gateway",
            Scope::Manager => "fleetgate.manager",
        }
    }
}

/// OTLP's span kinds that Fleetgate records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A request Fleetgate served (the gateway's and the manager's spans).
    Server = 2,
    /// A request Fleetgate made.
    Client = 3,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Static(&'static str),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for Value {
    fn from(v: &'static str) -> Self {
        Value::Static(v)
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<u16> for Value {
    fn from(v: u16) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

/// One attribute; keys are OpenTelemetry's semantic-convention names or
/// `fleetgate.*`.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyValue {
    pub key: &'static str,
    pub value: Value,
}

/// A finished span, ready for export.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub scope: Scope,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zeros for the root of a trace.
    pub parent_span_id: [u8; 8],
    /// The parent is the caller's span (from its `traceparent`), not one of ours.
    pub remote_parent: bool,
    /// The caller's `tracestate`, kept with the trace.
    pub trace_state: Option<String>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<KeyValue>,
    /// `Some(message)` sets the span's status to error.
    pub error: Option<String>,
}

impl Span {
    /// Adds an attribute.
    pub fn attr(&mut self, key: &'static str, value: impl Into<Value>) {
        self.attributes.push(KeyValue {
            key,
            value: value.into(),
        });
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A new trace id: random, never all zeros.
pub fn new_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    let mut rng = rand::thread_rng();
    while id == [0; 16] {
        rng.fill_bytes(&mut id);
    }
    id
}

/// A new span id: random, never all zeros.
pub fn new_span_id() -> [u8; 8] {
    let mut id = [0u8; 8];
    let mut rng = rand::thread_rng();
    while id == [0; 8] {
        rng.fill_bytes(&mut id);
    }
    id
}

/// A sample ratio (0.0–1.0) as the bound a random `u64` is compared with:
/// 0 samples nothing, `u64::MAX` everything.
pub fn ratio_threshold(ratio: f64) -> u64 {
    if ratio.is_nan() || ratio <= 0.0 {
        0
    } else if ratio >= 1.0 {
        u64::MAX
    } else {
        // Exact enough: 2^64 · ratio, below u64::MAX since ratio < 1.
        (ratio * 18_446_744_073_709_551_616.0) as u64
    }
}

/// Whether a new trace starts under `threshold` (see [`ratio_threshold`]): no
/// random number is drawn for 0 or for everything.
#[inline]
pub fn sample_root(threshold: u64) -> bool {
    match threshold {
        0 => false,
        u64::MAX => true,
        t => rand::thread_rng().next_u64() < t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_cover_the_ends_and_the_middle() {
        assert_eq!(ratio_threshold(0.0), 0);
        assert_eq!(ratio_threshold(-1.0), 0);
        assert_eq!(ratio_threshold(f64::NAN), 0);
        assert_eq!(ratio_threshold(1.0), u64::MAX);
        assert_eq!(ratio_threshold(0.5), 1 << 63);
        assert!(!sample_root(0));
        assert!(sample_root(u64::MAX));
        let half = ratio_threshold(0.5);
        let n = (0..10_000).filter(|_| sample_root(half)).count();
        assert!((4_000..6_000).contains(&n), "{n} of 10000 sampled at 0.5");
    }

    #[test]
    fn ids_are_never_zero() {
        for _ in 0..100 {
            assert_ne!(new_trace_id(), [0; 16]);
            assert_ne!(new_span_id(), [0; 8]);
        }
    }
}
