//! The OpenAPI 3.1 document, generated from the handlers' annotations, and the
//! offline docs page that renders it (no CDN: everything is in the binary).

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Spec, Ref, ResponseBuilder};
use utoipa::OpenApi;

use crate::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Fleetgate manager API",
        description = "Admin API of Fleetgate: users, API keys, audit log, revisions, settings, backup, export/import and health.",
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "health", description = "Probes and metrics (no authentication)"),
        (name = "auth", description = "Sessions and the caller"),
        (name = "users", description = "User accounts (admins)"),
        (name = "api-keys", description = "API keys for clients"),
        (name = "audit", description = "Who changed what"),
        (name = "revisions", description = "Configuration history, diff and rollback"),
        (name = "settings", description = "Runtime settings and backups"),
        (name = "config", description = "Export and import of the whole configuration"),
        (name = "gateway", description = "Upstreams, routes, target health and circuit breakers"),
        (name = "certificates", description = "TLS certificates served by the gateway"),
        (name = "events", description = "Events of the gateway and the manager: listing, acknowledgement and live SSE streams"),
        (name = "metrics", description = "Traffic metrics: the live snapshot, stored series and the snapshot stream"),
        (name = "webhooks", description = "Signed event deliveries to HTTP endpoints, with retries and a delivery log"),
        (name = "alerts", description = "Alert rules: event counts in a window or metric thresholds held for a duration; a firing rule opens an incident"),
        (name = "incidents", description = "Incidents opened by alert rules or by hand: status, timeline of related events, notes"),
        (name = "redirects", description = "Namespaces and projects of redirects and pages: drafts, publishing, import/export, agent tokens and agents. Agents sync through Flecto's own API under /api/namespace/… (not described here)"),
        (name = "troubleshooting", description = "Probes of upstreams and reports of every connection"),
        (name = "nodes", description = "Fleet nodes (edges and relays): registration tokens, commands and cached configuration. Nodes connect to /ws/node on the node listener (TLS)"),
    )
)]
pub struct ApiDoc;

/// Status codes every operation may answer with the error envelope.
const COMMON_ERRORS: &[(&str, &str, bool)] = &[
    (
        "400",
        "Invalid input; `details.field` names the field",
        true,
    ),
    ("401", "Missing or invalid credentials", false),
    (
        "403",
        "Not allowed for this role, or missing CSRF token",
        false,
    ),
    ("404", "Not found", true),
    ("405", "Method not allowed on this path", true),
    ("409", "Conflicts with the current state", true),
    ("412", "If-Match does not match the current version", true),
    ("413", "Request body too large", true),
    ("415", "The body must be JSON", true),
    ("429", "Rate limited; see Retry-After", true),
    ("503", "The store is unavailable", true),
];

fn error_response(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

fn add_errors(op: &mut Operation, public: bool) {
    for (code, description, always) in COMMON_ERRORS {
        if !always && public {
            continue;
        }
        op.responses
            .responses
            .entry(code.to_string())
            .or_insert_with(|| error_response(description));
    }
}

/// Operations whose JSON body may be left out (utoipa marks a body required
/// unless its type is an `Option`, which would also document `null` as valid).
const OPTIONAL_BODIES: &[(&str, &str)] = &[("post", "/api/v1/settings/backup")];

/// Adds security schemes, the shared error responses and the server-side facts
/// the annotations do not carry.
pub fn finish(mut spec: Spec) -> serde_json::Value {
    let components = spec.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("An API key"))
                .build(),
        ),
    );
    components.add_security_scheme(
        "session",
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            "session",
            "Browser session; mutations also need X-CSRF-Token",
        ))),
    );
    for (path, item) in spec.paths.paths.iter_mut() {
        // The metrics are public only when manager.metrics_public says so.
        let public = path.starts_with("/health")
            || path == "/api/v1/auth/login"
            || path == "/api/v1/auth/status";
        for (method, optional_path) in OPTIONAL_BODIES {
            let op = match *method {
                "post" => item.post.as_mut(),
                "put" => item.put.as_mut(),
                _ => None,
            };
            if let Some(body) = op
                .filter(|_| path == optional_path)
                .and_then(|op| op.request_body.as_mut())
            {
                body.required = Some(utoipa::openapi::Required::False);
            }
        }
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            add_errors(op, public);
            if !public {
                let mut bearer =
                    utoipa::openapi::security::SecurityRequirement::new::<_, _, &str>("bearer", []);
                let session = utoipa::openapi::security::SecurityRequirement::new::<_, _, &str>(
                    "session",
                    [],
                );
                bearer = bearer.add::<_, _, &str>("bearer", []);
                op.security = Some(vec![bearer, session]);
            }
        }
    }
    spec.info.version = env!("CARGO_PKG_VERSION").to_string();
    serde_json::to_value(&spec).unwrap_or(serde_json::Value::Null)
}

/// The offline API docs page.
pub async fn docs_page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../assets/docs.html"),
    )
}
