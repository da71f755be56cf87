//! Keeps the gateway's compiled redirect and page rules in step with the store: every
//! project's published set is compiled off the async runtime and the whole
//! [`HostRules`] swapped at once, so lookups never wait for a rebuild. Runs after every
//! publish or project change in this process and once a second for changes made
//! through another manager replica.

use std::collections::HashMap;
use std::sync::Arc;

use fleetgate_core::redirects::matcher::RuleSet;
use fleetgate_core::redirects::{
    HostRules, Page, PageContentType, PageType, Redirect, RedirectStatus, RedirectType,
};
use fleetgate_store::{PageRequest, ProjectRecord, RuleData, RuleTable, Store, StoreError};

/// Rows read per query while loading a published set.
const LOAD_BATCH: i64 = 5000;

/// What a compiled project was built from; a change of any part rebuilds it.
#[derive(Clone, PartialEq, Eq)]
struct Built {
    published_version: i64,
    hosts: Vec<String>,
}

/// The compiler's memory between runs.
#[derive(Default)]
pub struct Compiler {
    built: HashMap<String, (Built, Arc<RuleSet>)>,
}

async fn load_all(
    store: &dyn Store,
    table: RuleTable,
    project_id: &str,
) -> Result<Vec<RuleData>, StoreError> {
    let mut out = Vec::new();
    loop {
        let page = store
            .published_rules(
                table,
                project_id,
                PageRequest {
                    limit: LOAD_BATCH,
                    offset: out.len() as i64,
                },
            )
            .await?;
        let n = page.items.len();
        out.extend(page.items);
        if n < LOAD_BATCH as usize || out.len() as i64 >= page.total {
            return Ok(out);
        }
    }
}

/// Builds a rule set from stored rows; rows that do not parse are skipped (and logged).
pub fn compile(project: &str, redirects: Vec<RuleData>, pages: Vec<RuleData>) -> RuleSet {
    let redirects: Vec<Redirect> = redirects
        .into_iter()
        .filter_map(|d| {
            Some(Redirect {
                kind: RedirectType::parse(&d.kind)?,
                source: d.key,
                target: d.value,
                status: RedirectStatus::parse(&d.flavor).unwrap_or_default(),
            })
        })
        .collect();
    let pages: Vec<Page> = pages
        .into_iter()
        .filter_map(|d| {
            Some(Page {
                kind: PageType::parse(&d.kind)?,
                path: d.key,
                content: d.value,
                content_type: PageContentType::parse(&d.flavor).unwrap_or_default(),
            })
        })
        .collect();
    let set = RuleSet::build(redirects, pages);
    for s in set.skipped() {
        tracing::warn!(project, kind = s.kind, index = s.index, reason = %s.message, "rule skipped");
    }
    set
}

impl Compiler {
    /// Rebuilds what changed since the last run; `None` when nothing did.
    pub async fn run(&mut self, store: &dyn Store) -> Result<Option<HostRules>, StoreError> {
        let projects: Vec<ProjectRecord> = store.all_projects().await?;
        let mut changed = projects.len() != self.built.len();
        let mut next = HashMap::with_capacity(projects.len());
        for p in projects {
            let want = Built {
                published_version: p.published_version,
                hosts: p.hosts.clone(),
            };
            let reuse = self
                .built
                .get(&p.id)
                .filter(|(b, _)| b.published_version == want.published_version)
                .map(|(b, set)| (b.clone(), set.clone()));
            let set = match reuse {
                Some((b, set)) => {
                    changed |= b != want;
                    set
                }
                None => {
                    changed = true;
                    let redirects = load_all(store, RuleTable::Redirects, &p.id).await?;
                    let pages = load_all(store, RuleTable::Pages, &p.id).await?;
                    let label = format!("{}/{}", p.namespace, p.name);
                    let started = std::time::Instant::now();
                    let set =
                        tokio::task::spawn_blocking(move || compile(&label, redirects, pages))
                            .await
                            .map_err(|e| {
                                StoreError::Invalid(format!("rule compilation failed: {e}"))
                            })?;
                    tracing::info!(
                        project = %format!("{}/{}", p.namespace, p.name),
                        version = p.published_version,
                        redirects = set.redirect_count(),
                        pages = set.page_count(),
                        ms = started.elapsed().as_millis() as u64,
                        "compiled published rules"
                    );
                    Arc::new(set)
                }
            };
            next.insert(p.id.clone(), (want, set));
        }
        self.built = next;
        if !changed {
            return Ok(None);
        }
        let mut rules = HostRules::default();
        for (built, set) in self.built.values() {
            for h in &built.hosts {
                rules.by_host.insert(h.clone(), set.clone());
            }
        }
        Ok(Some(rules))
    }
}
