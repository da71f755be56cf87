//! Fleetgate as a Flecto agent: polls a Flecto-compatible manager (Flecto itself, or
//! another Fleetgate) for one project's published redirects and pages and serves them
//! from this gateway for every host no local project claims.
//!
//! Each cycle asks for the project's version; when it differs from the loaded one the
//! whole set is fetched page by page, handed to the data-plane input (the gateway
//! compiles it and swaps it in at once) and reported
//! (`POST …/agents` with the load duration); otherwise a heartbeat is sent (`PATCH
//! …/agents/{name}/hit`). A failed fetch keeps the last good set serving and reports
//! the error. Nothing is kept on disk: an agent that starts while the manager is down
//! serves no rules until a fetch succeeds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use fleetgate_core::redirects::{
    Page, PageContentType, PageType, Redirect, RedirectStatus, RedirectType,
};
use fleetgate_protocol::{ConfigFeed, Site};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::config::FlectoSection;

/// Rows asked for per page (servers may answer with fewer; the reply's own `limit`
/// is what the next offset follows).
const PAGE_LIMIT: usize = 1000;
/// Time allowed to one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A redirect item as Flecto agents read it: an unknown status means 302; an item
/// without a known type or a source is dropped.
fn redirect_of(v: &Value) -> Option<Redirect> {
    Some(Redirect {
        kind: RedirectType::parse(text(v, "type")?)?,
        source: text(v, "source")?.to_string(),
        target: text(v, "target").unwrap_or_default().to_string(),
        status: text(v, "status")
            .and_then(RedirectStatus::parse)
            .unwrap_or(RedirectStatus::Found),
    })
}

/// A page item as Flecto agents read it: `contentType` (camelCase only) decides the
/// media type, anything else is served as text/plain.
fn page_of(v: &Value) -> Option<Page> {
    Some(Page {
        kind: PageType::parse(text(v, "type")?)?,
        path: text(v, "path")?.to_string(),
        content: text(v, "content").unwrap_or_default().to_string(),
        content_type: text(v, "contentType")
            .and_then(PageContentType::parse)
            .unwrap_or_default(),
    })
}

/// The agent's view of what it serves.
pub struct Agent {
    cfg: FlectoSection,
    base: String,
    http: reqwest::Client,
    /// The data-plane input the synced rules go into.
    feed: ConfigFeed,
    /// Version of the set being served; 0 before the first successful load.
    loaded: i64,
}

impl Agent {
    pub fn new(cfg: FlectoSection, feed: ConfigFeed) -> anyhow::Result<Self> {
        let url = cfg
            .url
            .clone()
            .ok_or_else(|| anyhow!("flecto.url is not set"))?;
        let base = format!(
            "{}/api/namespace/{}/project/{}",
            url.trim_end_matches('/'),
            cfg.namespace,
            cfg.project
        );
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("fleetgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the Flecto HTTP client")?;
        Ok(Self {
            cfg,
            base,
            http,
            feed,
            loaded: 0,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header(
                self.cfg.auth_header.as_str(),
                format!("Bearer {}", self.cfg.token.as_deref().unwrap_or_default()),
            )
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let r = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = r.status();
        let body = r
            .bytes()
            .await
            .with_context(|| format!("GET {path}: reading the body"))?;
        if status != reqwest::StatusCode::OK {
            bail!(
                "GET {path}: {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        serde_json::from_slice(&body).with_context(|| format!("GET {path}: unexpected body"))
    }

    async fn version(&self) -> anyhow::Result<i64> {
        self.get::<i64>("/version").await
    }

    /// Every page of `what`, following the `total` and `limit` the server reports.
    async fn fetch_all<T: DeserializeOwned>(&self, what: &str) -> anyhow::Result<Vec<T>> {
        let mut out = Vec::new();
        let mut offset = 0usize;
        loop {
            let page: Value = self
                .get(&format!("/{what}?limit={PAGE_LIMIT}&offset={offset}"))
                .await?;
            // Flecto writes capitalised keys (`Items`, `Total`); match them in any case.
            let field = |name: &str| {
                page.as_object().and_then(|o| {
                    o.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.clone())
                })
            };
            let items: Vec<T> = match field("items") {
                Some(Value::Null) | None => Vec::new(),
                Some(v) => serde_json::from_value(v)
                    .with_context(|| format!("{what} at offset {offset}: unexpected items"))?,
            };
            let total = field("total").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
            let limit = field("limit")
                .and_then(|v| v.as_u64())
                .filter(|l| *l > 0)
                .map_or(PAGE_LIMIT, |l| l as usize);
            let got = items.len();
            out.extend(items);
            offset += limit.min(got.max(1));
            if got == 0 || offset >= total {
                return Ok(out);
            }
        }
    }

    async fn report(&self, version: i64, duration: Duration, error: Option<&str>) {
        let body = json!({
            "name": self.cfg.agent_name,
            "status": if error.is_some() { "error" } else { "success" },
            "type": "fleetgate",
            "version": version.max(1),
            "load_duration": (duration.as_nanos() as i64).max(1),
            "error": error.unwrap_or(""),
        });
        let sent = self
            .request(reqwest::Method::POST, "/agents")
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == reqwest::StatusCode::OK => {}
            Ok(r) => {
                tracing::warn!(status = %r.status(), "Flecto manager refused the agent report")
            }
            Err(e) => tracing::warn!(error = %e, "could not send the agent report"),
        }
    }

    async fn heartbeat(&self) {
        let path = format!("/agents/{}/hit", self.cfg.agent_name);
        match self.request(reqwest::Method::PATCH, &path).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::OK => {}
            Ok(r) => tracing::warn!(status = %r.status(), "Flecto manager refused the heartbeat"),
            Err(e) => tracing::warn!(error = %e, "could not send the heartbeat"),
        }
    }

    /// One cycle: reload when the version changed, heartbeat otherwise.
    pub async fn cycle(&mut self) {
        let version = match self.version().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "Flecto manager unreachable; serving the last loaded rules");
                return;
            }
        };
        if version == self.loaded || version == 0 {
            if self.loaded != 0 {
                self.heartbeat().await;
            }
            return;
        }
        let started = Instant::now();
        match self.load().await {
            Ok(site) => {
                let elapsed = started.elapsed();
                let version = site.version;
                tracing::info!(
                    version,
                    redirects = site.redirects.len(),
                    pages = site.pages.len(),
                    ms = elapsed.as_millis() as u64,
                    "loaded rules from the Flecto manager"
                );
                self.feed.publish_synced(Some(Arc::new(site)));
                self.loaded = version;
                self.report(version, elapsed, None).await;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::warn!(error = %msg, "reload from the Flecto manager failed; serving the last loaded rules");
                self.report(version, started.elapsed(), Some(&msg)).await;
            }
        }
    }

    /// Fetches the project's rules as one set for the data plane (which compiles
    /// it, skipping and logging rules it cannot run).
    async fn load(&self) -> anyhow::Result<Site> {
        let version = self.version().await?;
        let redirects: Vec<Redirect> = self
            .fetch_all::<Value>("redirects")
            .await?
            .iter()
            .filter_map(redirect_of)
            .collect();
        let pages: Vec<Page> = self
            .fetch_all::<Value>("pages")
            .await?
            .iter()
            .filter_map(page_of)
            .collect();
        Ok(Site {
            id: format!("flecto:{}/{}", self.cfg.namespace, self.cfg.project),
            label: format!("{}/{}", self.cfg.namespace, self.cfg.project),
            version,
            hosts: Vec::new(),
            redirects,
            pages,
        })
    }

    /// Runs cycles every `interval_ms` until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.cfg.interval_ms);
        loop {
            self.cycle().await;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_read_as_flecto_agents_read_them() {
        let r = redirect_of(
            &json!({"type": "BASIC", "source": "/a", "target": "/b", "status": "SEE_OTHER"}),
        )
        .expect("redirect");
        assert_eq!(r.status, RedirectStatus::Found);
        assert!(redirect_of(&json!({"type": "PREFIX", "source": "/a", "target": "/b"})).is_none());
        let p = page_of(
            &json!({"type": "BASIC", "path": "/s", "content": "<a/>", "content_type": "XML"}),
        )
        .expect("page");
        assert_eq!(
            p.content_type,
            PageContentType::TextPlain,
            "snake_case is not read"
        );
        let p = page_of(
            &json!({"type": "BASIC", "path": "/s", "content": "<a/>", "contentType": "XML"}),
        )
        .expect("page");
        assert_eq!(p.content_type, PageContentType::Xml);
    }
}
