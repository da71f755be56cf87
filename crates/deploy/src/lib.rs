//! Deployments on a Fleetgate host: an app is a directory holding a compose-style
//! `compose.yml` (its services) and Fleetgate's `service.yml` (how it is reached:
//! domains, certificate, health check, rate limit). [`spec`] holds what both files
//! mean once checked; a [`spec::Driver`] runs the services —
//! [`process::ProcessDriver`] as supervised processes on this host.

pub mod process;
pub mod spec;
