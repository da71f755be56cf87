//! OpenTelemetry traces: the spans the gateway and the manager record, their
//! OTLP encoding, and the exporter that sends them to a collector. The W3C
//! `traceparent` they continue is read by `fleetgate_core::trace_context`.
//!
//! The few OTLP messages Fleetgate sends are encoded by hand ([`otlp`]) and sent
//! with the hyper client the workspace already builds, rather than through the
//! OpenTelemetry SDK and a gRPC stack: the data plane needs a queue that never
//! blocks and a span per request, nothing more.

mod export;
pub mod otlp;
mod span;

pub use export::{
    check_endpoint, check_headers, ExportStats, ExportTask, ExporterConfig, Protocol, Tracer,
};
pub use span::{
    new_span_id, new_trace_id, ratio_threshold, sample_root, unix_now_ns, KeyValue, Scope, Span,
    SpanKind, Value,
};
