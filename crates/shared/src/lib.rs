//! Parts the gateway (`fleetgate-proxy`) and the manager share that cannot live
//! in `fleetgate-core`, which does no I/O and links no TLS library: the Redis
//! counter behind their cluster-wide rate limits, loading TLS keys, and the
//! OpenTelemetry trace exporter.

pub mod otel;
pub mod redis_counter;
pub mod tls;

pub use redis_counter::{RedisCounter, RedisCounterError};
