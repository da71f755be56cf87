//! Deployments on a Fleetgate host: an app is a directory holding a compose-style
//! `compose.yml` (its services) and Fleetgate's `service.yml` (how it is reached:
//! domains, certificate, health check, rate limit). [`spec`] holds what both files
//! mean once checked; [`compose`] and [`meta`] check each file and [`check`] the
//! one against the other; a [`spec::Driver`] runs the services —
//! [`process::ProcessDriver`] as supervised processes on this host,
//! [`docker::DockerDriver`] as containers of a Docker engine — and [`host`]
//! keeps a host's deployments and their routes.

pub mod check;
pub mod compose;
pub mod docker;
pub mod duration;
pub mod host;
pub mod meta;
pub mod process;
pub mod rollout;
pub mod shell;
pub mod spec;
mod yaml;

pub use yaml::{load_json, pointer_field, JsonPositions};

pub use check::{cross_check, parse_files};
