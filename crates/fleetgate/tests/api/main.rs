//! The manager API, tested through the real server: `fleetgate::start` on port 0,
//! real HTTP, a real database (SQLite in a temp dir; PostgreSQL in its own schema
//! where a case says so and `FLEETGATE_TEST_POSTGRES_URL` is set). One binary.

mod acme;
mod agents;
mod ai;
mod ai_gateway;
mod ai_insight;
mod ai_ops;
mod alerts;
mod auth;
mod cluster;
mod config;
mod config_path;
mod conventions;
mod dashboard_nodes;
mod databases;
mod declarative;
mod deployments;
mod docker;
mod edge_deployments;
mod edge_sync;
mod ergonomics;
mod events;
mod flows;
mod gateway;
mod hardening;
mod health;
mod manager_hardening;
mod manager_role;
mod mcp;
mod metrics;
mod nodes;
mod otel;
mod process;
mod redirects;
mod releases;
mod scale_out;
mod support;
mod tls;
mod tunnel_fleet;
mod tunnels;
mod upstream;
mod users;
mod webhooks;
