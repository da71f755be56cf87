//! The admin API's routes, assembled with their OpenAPI description.

pub mod agents;
pub mod ai;
pub mod ai_actions;
pub mod ai_compat;
pub mod ai_gateway;
pub mod ai_insight;
pub mod ai_prices;
pub mod alert_rules;
pub mod audit;
pub mod backup;
pub mod certificates;
pub mod config;
pub mod dashboard_ws;
pub mod databases;
pub mod deployments;
pub mod docker;
pub mod events;
pub mod flecto;
pub mod gateway;
pub mod health;
pub mod incidents;
pub mod keys;
pub mod mcp;
pub mod metrics;
pub mod node_deployments;
pub mod node_tls;
pub mod nodes;
pub mod redirects;
pub mod revisions;
pub mod session;
pub mod settings;
pub mod templates;
pub mod troubleshooting;
pub mod tunnels;
pub mod users;
pub mod webhooks;

use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::get;
use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::require_auth;
use crate::middleware::{
    method_not_allowed, not_found, rate_limit, request_id, response_envelope, trace_span,
    track_metrics,
};
use crate::openapi::ApiDoc;
use crate::AppState;

/// Largest redirect import accepted (about a million CSV rows).
const IMPORT_BODY_LIMIT: usize = 128 * 1024 * 1024;

/// Largest page create/update body: the largest page size setting plus JSON overhead.
const PAGE_BODY_LIMIT: usize = 17 * 1024 * 1024;

/// Every route of the manager, with middleware, state and the OpenAPI document.
pub fn router(state: AppState) -> Router {
    let (router, openapi) = api_router(state.clone()).split_for_parts();
    // Kept as its JSON text, made once: as a `serde_json::Value` tree the document
    // held megabytes of the process's memory (see BENCHMARKS.md, "Memory").
    let spec = axum::body::Bytes::from(crate::openapi::finish(openapi).to_string());
    router
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let spec = spec.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], spec) }
            }),
        )
        .route("/api/v1/docs", get(crate::openapi::docs_page))
        .route("/", get(crate::dashboard::index))
        .route("/assets/{*path}", get(crate::dashboard::asset))
        .route(
            "/ws/dashboard",
            get(dashboard_ws::dashboard)
                .route_layer(from_fn_with_state(state.clone(), require_auth)),
        )
        .merge(flecto::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn(response_envelope))
        .layer(from_fn_with_state(state.clone(), rate_limit))
        .layer(from_fn_with_state(state.clone(), trace_span))
        .layer(from_fn_with_state(state.clone(), track_metrics))
        .layer(from_fn(request_id))
        .layer(DefaultBodyLimit::max(state.options.max_body_bytes))
        .with_state(state)
}

/// The routes that carry OpenAPI descriptions.
pub fn api_router(state: AppState) -> OpenApiRouter<AppState> {
    let public = OpenApiRouter::new()
        .routes(routes!(health::health))
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(health::deep))
        .routes(routes!(health::ping))
        .routes(routes!(health::prometheus))
        .routes(routes!(health::metrics_alias))
        .routes(routes!(session::login))
        .routes(routes!(session::status));
    let protected = OpenApiRouter::new()
        .routes(routes!(session::logout))
        .routes(routes!(session::me))
        .routes(routes!(session::validate))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::get, users::update, users::delete))
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(keys::delete))
        .routes(routes!(audit::list))
        .routes(routes!(revisions::list))
        .routes(routes!(revisions::get))
        .routes(routes!(revisions::diff_revisions))
        .routes(routes!(revisions::rollback))
        .routes(routes!(settings::get, settings::put))
        .routes(routes!(settings::get_logging, settings::put_logging))
        .routes(routes!(node_tls::get))
        .routes(routes!(node_tls::upload))
        .routes(routes!(nodes::list, nodes::create))
        .routes(routes!(nodes::get, nodes::update, nodes::delete))
        .routes(routes!(nodes::regenerate_token))
        .routes(routes!(nodes::config))
        .routes(routes!(nodes::history))
        .routes(routes!(node_deployments::list, node_deployments::create))
        .routes(routes!(
            node_deployments::get,
            node_deployments::update,
            node_deployments::delete
        ))
        .routes(routes!(node_deployments::start))
        .routes(routes!(node_deployments::stop))
        .routes(routes!(node_deployments::restart))
        .routes(routes!(node_deployments::rollback))
        .routes(routes!(node_deployments::logs))
        .routes(routes!(node_deployments::releases))
        .routes(routes!(tunnels::list, tunnels::create))
        .routes(routes!(tunnels::get, tunnels::update, tunnels::delete))
        .routes(routes!(nodes::device_types))
        .routes(routes!(deployments::list, deployments::create))
        .routes(routes!(
            deployments::get,
            deployments::update,
            deployments::delete
        ))
        .routes(routes!(deployments::start))
        .routes(routes!(deployments::stop))
        .routes(routes!(deployments::restart))
        .routes(routes!(deployments::releases))
        .routes(routes!(deployments::release))
        .routes(routes!(deployments::rollback))
        .routes(routes!(deployments::logs))
        .routes(routes!(deployments::stats))
        .routes(routes!(deployments::proxy_status))
        .routes(routes!(deployments::proxy_setup))
        .routes(routes!(deployments::proxy_remove))
        .routes(routes!(deployments::proxy_vhosts))
        .routes(routes!(templates::list))
        .routes(routes!(templates::categories))
        .routes(routes!(templates::get))
        .routes(routes!(templates::compose))
        .routes(routes!(templates::refresh))
        .routes(routes!(docker::list_containers))
        .routes(routes!(docker::start_container))
        .routes(routes!(docker::stop_container))
        .routes(routes!(docker::restart_container))
        .routes(routes!(docker::delete_container))
        .routes(routes!(docker::container_logs))
        .routes(routes!(docker::list_images))
        .merge(
            // The tarball is streamed to the engine, counted against its own
            // limit (2 GiB), not the API's JSON body limit.
            OpenApiRouter::new()
                .routes(routes!(docker::import_image))
                .layer(DefaultBodyLimit::max(docker::IMPORT_LIMIT_BYTES as usize)),
        )
        .routes(routes!(docker::pull_image))
        .routes(routes!(docker::delete_image))
        .routes(routes!(docker::list_volumes, docker::create_volume))
        .routes(routes!(docker::delete_volume))
        .routes(routes!(docker::list_networks, docker::create_network))
        .routes(routes!(docker::delete_network))
        .routes(routes!(databases::test))
        .routes(routes!(databases::list))
        .routes(routes!(databases::tables))
        .routes(routes!(databases::query))
        .routes(routes!(databases::create))
        .routes(routes!(databases::create_user))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(nodes::command))
                .layer(DefaultBodyLimit::max(nodes::COMMAND_BODY_LIMIT)),
        )
        .routes(routes!(backup::create))
        .routes(routes!(backup::list))
        .routes(routes!(backup::download))
        .routes(routes!(config::export))
        .routes(routes!(config::import))
        .routes(routes!(config::declared))
        .routes(routes!(config::apply))
        .routes(routes!(gateway::list_upstreams, gateway::create_upstream))
        .routes(routes!(
            gateway::get_upstream,
            gateway::update_upstream,
            gateway::delete_upstream
        ))
        .routes(routes!(gateway::upstream_health))
        .routes(routes!(gateway::circuit_breakers))
        .routes(routes!(gateway::reset_circuit_breaker))
        .routes(routes!(gateway::data_plane))
        .routes(routes!(gateway::list_routes, gateway::create_route))
        .routes(routes!(certificates::list, certificates::create))
        .routes(routes!(certificates::request))
        .routes(routes!(certificates::renew))
        .routes(routes!(
            certificates::get,
            certificates::replace,
            certificates::delete
        ))
        .routes(routes!(troubleshooting::test_upstream))
        .routes(routes!(troubleshooting::connections))
        .routes(routes!(troubleshooting::health))
        .routes(routes!(events::list))
        .routes(routes!(events::count))
        .routes(routes!(events::get_one))
        .routes(routes!(events::ack))
        .routes(routes!(events::ack_many))
        .routes(routes!(events::stream_events))
        .routes(routes!(events::stream_alerts))
        .routes(routes!(metrics::snapshot))
        .routes(routes!(metrics::series))
        .routes(routes!(metrics::stream))
        .routes(routes!(webhooks::list, webhooks::create))
        .routes(routes!(webhooks::get, webhooks::update, webhooks::delete))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(webhooks::test))
        .routes(routes!(alert_rules::list, alert_rules::create))
        .routes(routes!(
            alert_rules::get,
            alert_rules::update,
            alert_rules::delete
        ))
        .routes(routes!(ai::list, ai::create))
        .routes(routes!(ai::get, ai::update, ai::delete))
        .routes(routes!(ai::models))
        .routes(routes!(ai_gateway::list, ai_gateway::create))
        .routes(routes!(
            ai_gateway::get,
            ai_gateway::update,
            ai_gateway::delete
        ))
        .routes(routes!(ai_gateway::usage))
        .routes(routes!(ai_prices::list))
        .routes(routes!(ai_prices::put, ai_prices::delete))
        .routes(routes!(ai::health))
        .routes(routes!(ai_actions::generate_config))
        .routes(routes!(ai_actions::apply))
        .routes(routes!(ai_insight::query))
        .routes(routes!(ai_insight::analyze))
        .routes(routes!(ai::get_preferences, ai::put_preferences))
        .routes(routes!(agents::list, agents::create))
        .routes(routes!(agents::get, agents::update, agents::delete))
        .routes(routes!(agents::lifecycle))
        .routes(routes!(agents::versions))
        .routes(routes!(agents::promote))
        .routes(routes!(agents::rollback))
        .routes(routes!(agents::put_split, agents::delete_split))
        .routes(routes!(agents::list_runs, agents::create_run))
        .routes(routes!(agents::get_run))
        .routes(routes!(agents::run_trace))
        .routes(routes!(agents::list_schedules, agents::create_schedule))
        .routes(routes!(
            agents::get_schedule,
            agents::update_schedule,
            agents::delete_schedule
        ))
        .routes(routes!(agents::list_tools, agents::create_tool))
        .routes(routes!(
            agents::get_tool,
            agents::update_tool,
            agents::delete_tool
        ))
        .routes(routes!(mcp::list, mcp::create))
        .routes(routes!(mcp::get, mcp::update, mcp::delete))
        .routes(routes!(mcp::tools))
        .routes(routes!(
            ai_compat::list_keys,
            ai_compat::store_key,
            ai_compat::delete_key
        ))
        .routes(routes!(
            ai_compat::get_settings,
            ai_compat::put_settings,
            ai_compat::post_settings
        ))
        .routes(routes!(incidents::list, incidents::create))
        .routes(routes!(
            incidents::get,
            incidents::update,
            incidents::delete
        ))
        .routes(routes!(incidents::add_note))
        .routes(routes!(incidents::link_event))
        .routes(routes!(incidents::analyze))
        .routes(routes!(incidents::analyses))
        .routes(routes!(
            gateway::get_route,
            gateway::update_route,
            gateway::delete_route
        ))
        .routes(routes!(
            redirects::list_namespaces,
            redirects::create_namespace
        ))
        .routes(routes!(
            redirects::get_namespace,
            redirects::update_namespace,
            redirects::delete_namespace
        ))
        .routes(routes!(redirects::list_projects, redirects::create_project))
        .routes(routes!(
            redirects::get_project,
            redirects::update_project,
            redirects::delete_project
        ))
        .routes(routes!(
            redirects::list_redirects,
            redirects::create_redirect
        ))
        .routes(routes!(
            redirects::get_redirect,
            redirects::update_redirect,
            redirects::delete_redirect
        ))
        .routes(routes!(redirects::export_redirects))
        .merge(
            // Pages may be as large as the page size setting allows (up to 16 MiB), so
            // that an oversized page is refused by validation naming the field.
            OpenApiRouter::new()
                .routes(routes!(redirects::list_pages, redirects::create_page))
                .routes(routes!(
                    redirects::get_page,
                    redirects::update_page,
                    redirects::delete_page
                ))
                .layer(DefaultBodyLimit::max(PAGE_BODY_LIMIT)),
        )
        .routes(routes!(redirects::drafts))
        .routes(routes!(redirects::publish))
        .routes(routes!(redirects::test_url))
        .routes(routes!(redirects::discard))
        .routes(routes!(redirects::versions))
        .routes(routes!(redirects::list_tokens, redirects::create_token))
        .routes(routes!(redirects::revoke_token))
        .routes(routes!(redirects::list_agents))
        .routes(routes!(redirects::delete_agent))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(redirects::import_redirects))
                .layer(DefaultBodyLimit::max(IMPORT_BODY_LIMIT)),
        )
        .route_layer(from_fn_with_state(state, require_auth));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(public)
        .merge(protected)
}

/// Pages through a listing in the API's envelope.
pub(crate) fn rfc3339(ms: i64) -> String {
    fleetgate_core::time::rfc3339(ms)
}
