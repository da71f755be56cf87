//! Fleetgate's domain: users and roles, settings, the configuration document that
//! revisions and export/import carry, JSON diffs and validation errors.
//!
//! Nothing here performs I/O; the store, the manager and the data plane all build on
//! these types.

pub mod ai_gateway;
pub mod alerts;
pub mod breaker;
pub mod config;
pub mod diff;
pub mod error;
pub mod events;
pub mod gateway;
pub mod h1;
pub mod metrics;
pub mod prom;
pub mod ratelimit;
pub mod redact;
pub mod redirects;
pub mod request_target;
pub mod routing;
pub mod settings;
pub mod time;
pub mod tls;
pub mod trace_context;
pub mod user;

pub use config::{ConfigDocument, ResourceSet};
pub use error::{FieldError, ValidationError};
pub use settings::Settings;
pub use user::{Role, UserName};
