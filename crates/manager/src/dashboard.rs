//! The operator dashboard: a page and its scripts and styles, compiled into the
//! binary and served at `/` and `/assets/…`. It is written against the admin API
//! (browser session + CSRF), renders in the browser without any build step, loads
//! nothing from outside (no CDN, no web font), and gets live data from
//! `/ws/dashboard`.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

struct Asset {
    path: &'static str,
    body: &'static [u8],
    content_type: &'static str,
}

macro_rules! assets {
    ($($path:literal => $ct:expr),* $(,)?) => {
        &[$(Asset {
            path: $path,
            body: include_bytes!(concat!("../assets/", $path)),
            content_type: $ct,
        }),*]
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every dashboard file under `assets/` (a test checks that none is missing).
static ASSETS: &[Asset] = assets![
    "index.html" => "text/html; charset=utf-8",
    "app.css" => "text/css; charset=utf-8",
    "favicon.svg" => "image/svg+xml",
    "js/api.js" => JS,
    "js/app.js" => JS,
    "js/chart.js" => JS,
    "js/history.js" => JS,
    "js/search.js" => JS,
    "js/live.js" => JS,
    "js/ui.js" => JS,
    "js/pages/alert-rules.js" => JS,
    "js/pages/incidents.js" => JS,
    "js/pages/overview.js" => JS,
    // Operations views (ui-ops).
    "js/widgets.js" => JS,
    "js/pages/events.js" => JS,
    "js/pages/keys.js" => JS,
    "js/pages/redirects.js" => JS,
    "js/pages/settings.js" => JS,
    "js/pages/users.js" => JS,
    "js/pages/webhooks.js" => JS,
    // Gateway views (ui-gw).
    "js/forms.js" => JS,
    "js/diff.js" => JS,
    "js/pages/routes.js" => JS,
    "js/pages/upstreams.js" => JS,
    "js/pages/breakers.js" => JS,
    // Administration pages.
    "js/pages/certificates.js" => JS,
    "js/pages/audit.js" => JS,
    "js/pages/backups.js" => JS,
    "js/pages/revisions.js" => JS,
    // Fleet views.
    "js/pages/nodes.js" => JS,
    "js/pages/tunnels.js" => JS,
    // Deployments (compose.yml + service.yml apps on this host).
    "js/code.js" => JS,
    "js/pages/deployments.js" => JS,
    // AI: providers, budgets, usage, prices and agents.
    "js/pages/ai.js" => JS,
    "js/pages/agents.js" => JS,
];

/// Content Security Policy of the dashboard: only its own scripts, styles and
/// connections; never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", &hex::encode(Sha256::digest(a.body))[..20]))
            .collect()
    })
}

fn serve(i: usize, headers: &HeaderMap) -> Response {
    let a = &ASSETS[i];
    let etag = &etags()[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    // Revalidated on every load: a new binary's files are picked up at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// `GET /`: the dashboard page (its views are addressed by the URL fragment).
pub async fn index(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

/// `GET /assets/{path}`.
pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .position(|a| a.path == path && a.path != "index.html")
        .map(|i| serve(i, &headers))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format!("no dashboard file {path:?}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("read assets") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                files(&p, base, out);
            } else {
                let rel = p.strip_prefix(base).expect("relative");
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }

    #[test]
    fn every_asset_file_is_served() {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
        let mut on_disk = Vec::new();
        files(&base, &base, &mut on_disk);
        // The API reference page, served at /api/v1/docs.
        on_disk.retain(|f| f != "docs.html");
        on_disk.sort();
        let mut listed: Vec<String> = ASSETS.iter().map(|a| a.path.to_string()).collect();
        listed.sort();
        assert_eq!(
            on_disk, listed,
            "assets! must list every file under assets/"
        );
    }

    #[test]
    fn scripts_import_only_served_files() {
        // An ES module import of a file the binary does not serve would break the
        // page only in a browser; catch it here.
        for a in ASSETS.iter().filter(|a| a.path.ends_with(".js")) {
            let text = std::str::from_utf8(a.body).expect("utf-8");
            let dir = a.path.rsplit_once('/').map_or("", |(d, _)| d);
            // Static imports, and the view modules the shell loads on demand.
            let imports = text.lines().filter(|l| {
                let l = l.trim_start();
                l.starts_with("import ") || l.contains("module: './")
            });
            for line in imports {
                let spec = if line.contains("module: '") {
                    line.split("module: '")
                        .nth(1)
                        .and_then(|r| r.split('\'').next())
                } else {
                    line.split(['\'', '"']).nth(1)
                };
                let Some(spec) = spec else {
                    continue;
                };
                let mut parts: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
                for seg in spec.split('/') {
                    match seg {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        s => parts.push(s),
                    }
                }
                let target = parts.join("/");
                assert!(
                    ASSETS.iter().any(|x| x.path == target),
                    "{} imports {spec} ({target}), which is not served",
                    a.path
                );
            }
        }
    }
}
