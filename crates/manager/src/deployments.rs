//! Deployments on this host: the directory-backed deployments and their drivers
//! live in [`fleetgate_deploy::host`] (shared with `fleetgate edge`); the API
//! over them is `crate::api::deployments`.

pub use fleetgate_deploy::host::*;
