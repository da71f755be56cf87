//! Parts the gateway (`fleetgate-proxy`) and the manager share that cannot live
//! in `fleetgate-core`, which does no I/O: the Redis counter behind their
//! cluster-wide rate limits.

pub mod redis_counter;

pub use redis_counter::{RedisCounter, RedisCounterError};
