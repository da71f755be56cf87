//! Configuration revisions: the one path from a change to every data plane.
//!
//! A change ([`AppState::change_config`]) is one store transaction that takes the
//! next revision number (the lock every configuration write takes, on every manager
//! sharing the store), reads the configuration, applies the edit, judges the
//! resulting document — the object's own rules, references, and the whole route
//! table compiled as the gateway will compile it — and writes the rows, the
//! revision and its audit entry. The document judged is the document committed, and
//! it is what gets published on the data-plane input ([`fleetgate_protocol::ConfigFeed`])
//! as that revision: nothing is read again after the commit.
//!
//! Whole-document changes (import, rollback: [`AppState::replace_config`]) and
//! diffs between revisions live here too.
//!
//! Other managers learn of a revision through NATS (`fleetgate.config.<cluster>`,
//! when configured) or by polling the store, and publish exactly that revision's
//! stored document ([`AppState::follow_store`]). The same loop keeps the other
//! parts of the input current: the published redirect and page sets of every
//! project (each with its published version), the certificates, and the pending
//! ACME challenge answers of every manager's orders (see [`crate::acme`]; the
//! loop also wakes when the soonest of those expires, to withdraw it).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fleetgate_core::diff::{diff, Change};
use fleetgate_core::events::{NewEvent, Severity};
use fleetgate_core::redirects::{
    Page, PageContentType, PageType, Redirect, RedirectStatus, RedirectType,
};
use fleetgate_core::time::now_ms;
use fleetgate_core::{ConfigDocument, ValidationError};
use fleetgate_protocol::Site;
use fleetgate_store::{
    Actor, CommittedRevision, ConfigCheck, ConfigEdit, PageRequest, ResourceSet, RevisionRecord,
    RuleData, RuleTable, Store, StoreError, Verdict,
};
use tokio::sync::watch;

use crate::AppState;

/// The whole configuration a stored revision holds.
pub fn revision_document(r: &RevisionRecord) -> Result<ConfigDocument, StoreError> {
    ConfigDocument::from_resources(r.snapshot.as_ref().unwrap_or(&Default::default()))
        .map_err(|e| StoreError::Corrupt(format!("revision {} does not validate: {e}", r.number)))
}

/// Frees what a configuration change replaced (the whole configuration of the
/// revision before it: a thousand routes take a few milliseconds to free) on a
/// blocking thread, after the answer instead of before it.
pub fn drop_later<T: Send + 'static>(value: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(move || drop(value));
        }
        Err(_) => drop(value),
    }
}

/// A document as the API shows it, for diffs.
pub fn document_value(doc: &ConfigDocument) -> serde_json::Value {
    serde_json::to_value(doc).unwrap_or(serde_json::Value::Null)
}

/// A check a change adds to the standard ones, given the configuration it replaces
/// (as stored: cheap to look up in) and the document it produces (say, that an
/// upstream still in use is not deleted).
pub type ExtraCheck<'a> =
    &'a (dyn Fn(&ResourceSet, &ConfigDocument) -> Result<(), StoreError> + Send + Sync);

/// Revisions looked back at, at most, for one that compiles when the newest does
/// not (only revisions written before writes were checked can fail).
const FALLBACK_SEARCH: i64 = 100;

/// How often the store is polled for changes made elsewhere: without NATS, and as a
/// safety net for a missed NATS message.
pub(crate) const POLL_WITHOUT_NATS: Duration = Duration::from_secs(1);
const POLL_WITH_NATS: Duration = Duration::from_secs(30);

/// Rows read per query while loading a published rule set.
const LOAD_BATCH: i64 = 5000;

/// The standard judgement of a configuration change, run inside its transaction.
struct Judge<'a> {
    extra: Option<ExtraCheck<'a>>,
    /// A whole-document replacement: one that changes nothing in the document
    /// (as the API shows it) is no change at all.
    replace: bool,
    /// The document judged good, kept to be published once committed.
    judged: Mutex<Option<ConfigDocument>>,
}

/// A whole document that replaces the configuration, each object validated on
/// its own (a regex route's own regex is compiled) off the runtime, normalized.
/// The route table of the whole document is compiled by the write's check, once.
async fn validated_whole(doc: &ConfigDocument) -> Result<ConfigDocument, StoreError> {
    let doc = doc.clone();
    tokio::task::spawn_blocking(move || doc.validate_objects().map(|()| doc))
        .await
        .map_err(|e| StoreError::Invalid(format!("configuration check failed: {e}")))?
        .map_err(rejected)
        .map(|mut d| {
            d.normalize();
            d
        })
}

fn rejected(e: ValidationError) -> StoreError {
    StoreError::Rejected(e)
}

#[async_trait]
impl ConfigCheck for Judge<'_> {
    async fn check(
        &self,
        before: &ResourceSet,
        after: &ResourceSet,
    ) -> Result<Verdict, StoreError> {
        let doc = ConfigDocument::from_resources(after).map_err(rejected)?;
        if let Some(extra) = self.extra {
            extra(before, &doc)?;
        }
        if self.replace {
            let mut before = ConfigDocument::from_resources(before).map_err(|e| {
                StoreError::Corrupt(format!("stored configuration does not validate: {e}"))
            })?;
            let mut normalized = doc.clone();
            normalized.normalize();
            before.normalize();
            if before == normalized {
                return Ok(Verdict::Unchanged);
            }
        }
        // Compiling many regex routes takes a while: off the async runtime.
        let doc = tokio::task::spawn_blocking(move || doc.check_compiles().map(|()| doc))
            .await
            .map_err(|e| StoreError::Invalid(format!("configuration check failed: {e}")))?
            .map_err(rejected)?;
        *self.judged.lock().unwrap_or_else(|p| p.into_inner()) = Some(doc);
        Ok(Verdict::Write)
    }
}

impl AppState {
    /// Applies one configuration change as one revision (see the module notes) and
    /// publishes the committed document. `extra` adds a check of the change's own.
    pub async fn change_config(
        &self,
        actor: &Actor,
        edit: ConfigEdit<'_>,
        message: &str,
        extra: Option<ExtraCheck<'_>>,
    ) -> Result<CommittedRevision, StoreError> {
        let judge = Judge {
            extra,
            replace: matches!(edit, ConfigEdit::Replace { .. }),
            judged: Mutex::new(None),
        };
        let committed = self
            .store
            .write_config(actor, edit, message, &judge)
            .await?;
        if !committed.written {
            return Ok(committed);
        }
        self.publish_judged(actor, committed.number, judge)?;
        Ok(committed)
    }

    /// Publishes the document `judge` passed as revision `number`, which was
    /// just committed: to this process's data plane, to the other managers, and
    /// as a `config.changed` event.
    fn publish_judged(
        &self,
        actor: &Actor,
        number: i64,
        judge: Judge<'_>,
    ) -> Result<(), StoreError> {
        let document = judge
            .judged
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .ok_or_else(|| StoreError::Invalid("a written revision was not judged".into()))?;
        self.feed
            .publish_revision(number as u64, Arc::new(document));
        self.peers.announce(number);
        self.emit(
            NewEvent::new(
                "config.changed",
                Severity::Info,
                format!("{} made revision {number}", actor.name),
            )
            .details(serde_json::json!({"revision": number, "actor": actor.name})),
        );
        Ok(())
    }

    /// Replaces the whole configuration with `doc` (import, rollback) as one
    /// revision, after validating it whole; `action` names the audit entry. Returns
    /// what changed and the new revision (`None` when nothing did).
    pub async fn replace_config(
        &self,
        actor: &Actor,
        doc: &ConfigDocument,
        action: &str,
        message: &str,
    ) -> Result<(Vec<Change>, Option<i64>), StoreError> {
        let doc = validated_whole(doc).await?;
        let set = doc.to_resources();
        let edit = ConfigEdit::Replace { set: &set, action };
        let committed = self.change_config(actor, edit, message, None).await?;
        let before = ConfigDocument::from_resources(&committed.before).map_err(|e| {
            StoreError::Corrupt(format!("stored configuration does not validate: {e}"))
        })?;
        let changes = diff(&document_value(&before), &document_value(&doc));
        Ok((changes, committed.written.then_some(committed.number)))
    }

    /// A declarative apply ([`fleetgate_store::Declaration`]): the whole
    /// configuration `doc` (validated whole, judged as an import is) and the
    /// redirect `projects`, in one transaction, against `expected_revision` when
    /// given. Publishes what was committed. Returns what changed in the
    /// configuration and what the store did.
    #[allow(clippy::too_many_arguments)]
    pub async fn declare_config(
        &self,
        actor: &Actor,
        doc: Option<&ConfigDocument>,
        projects: Option<&[fleetgate_store::DeclaredProject]>,
        expected_revision: Option<i64>,
        action: &str,
        message: &str,
        dry_run: bool,
    ) -> Result<(Vec<Change>, fleetgate_store::Declared), StoreError> {
        let doc = match doc {
            Some(doc) => Some(validated_whole(doc).await?),
            None => None,
        };
        let set = doc.as_ref().map(ConfigDocument::to_resources);
        let judge = Judge {
            extra: None,
            replace: true,
            judged: Mutex::new(None),
        };
        let declaration = fleetgate_store::Declaration {
            set: set.as_ref(),
            projects,
            expected_revision,
            action,
            dry_run,
        };
        let declared = self
            .store
            .declare(actor, declaration, message, &judge)
            .await?;
        let changes = match &doc {
            Some(doc) => {
                let before =
                    ConfigDocument::from_resources(&declared.committed.before).map_err(|e| {
                        StoreError::Corrupt(format!("stored configuration does not validate: {e}"))
                    })?;
                diff(&document_value(&before), &document_value(doc))
            }
            None => Vec::new(),
        };
        if dry_run {
            return Ok((changes, declared));
        }
        if declared.committed.written {
            self.publish_judged(actor, declared.committed.number, judge)?;
        }
        if !declared.projects.is_empty() {
            self.refresh_data_plane();
        }
        Ok((changes, declared))
    }

    /// What changed from revision `against` to revision `n` (0: the empty
    /// configuration).
    pub async fn revision_diff(&self, n: i64, against: i64) -> Result<Vec<Change>, StoreError> {
        let missing = |r: i64| StoreError::NotFound(format!("revision {r}"));
        let to = self.document_at(n).await?.ok_or_else(|| missing(n))?;
        let from = self
            .document_at(against)
            .await?
            .ok_or_else(|| missing(against))?;
        Ok(diff(&document_value(&from), &document_value(&to)))
    }

    /// Puts the configuration of revision `n` back in force, as a new revision;
    /// `None` when there is no revision `n`.
    pub async fn rollback(
        &self,
        actor: &Actor,
        n: i64,
    ) -> Result<Option<(Vec<Change>, Option<i64>)>, StoreError> {
        let Some(doc) = self.document_at(n).await? else {
            return Ok(None);
        };
        let message = format!("rollback to revision {n}");
        self.replace_config(actor, &doc, "config.rollback", &message)
            .await
            .map(Some)
    }

    /// The document of revision `n`; revision 0 is the configuration before any change.
    pub async fn document_at(&self, n: i64) -> Result<Option<ConfigDocument>, StoreError> {
        if n == 0 {
            return Ok(Some(ConfigDocument::default()));
        }
        let Some(r) = self.store.get_revision(n).await? else {
            return Ok(None);
        };
        revision_document(&r).map(Some)
    }

    /// Publishes the newest stored revision if it is newer than the one published:
    /// exactly that revision's document, as stored with it. Revisions are written
    /// only after their document compiled, but one stored by an earlier version may
    /// not: it is never published (a critical `config.revision_refused` event names
    /// it and the routes at fault), the one in force keeps serving — or, when
    /// nothing is published yet, the newest earlier revision that compiles.
    pub async fn publish_latest(&self) -> Result<(), StoreError> {
        let revision = self.store.latest_revision().await?;
        let published = self.feed.current().revision;
        if revision as u64 <= published {
            return Ok(());
        }
        if self.refused_revision.load(Ordering::Relaxed) == revision {
            return Ok(());
        }
        let Some(document) = self.document_at(revision).await? else {
            return Ok(());
        };
        let checked = document.clone();
        let compiles = tokio::task::spawn_blocking(move || checked.check_compiles())
            .await
            .map_err(|e| StoreError::Invalid(format!("configuration check failed: {e}")))?;
        let e = match compiles {
            Ok(()) => {
                self.feed
                    .publish_revision(revision as u64, Arc::new(document));
                return Ok(());
            }
            Err(e) => e,
        };
        self.refused_revision.store(revision, Ordering::Relaxed);
        let fallback = if published == 0 {
            self.newest_compiling_before(revision).await?
        } else {
            None
        };
        let served = match fallback {
            Some((n, doc)) => {
                self.feed.publish_revision(n, Arc::new(doc));
                Some(n)
            }
            None => (published != 0).then_some(published),
        };
        let serving = match served {
            Some(n) => format!("revision {n} keeps serving"),
            None => "no earlier revision compiles; the gateway serves no routes".into(),
        };
        self.emit(
            NewEvent::new(
                "config.revision_refused",
                Severity::Critical,
                format!("revision {revision} cannot be compiled by the gateway ({e}); {serving}"),
            )
            .details(serde_json::json!({
                "revision": revision,
                "serving_revision": served,
                "errors": e.errors,
            })),
        );
        Ok(())
    }

    /// The newest revision before `revision` whose document compiles, looking back
    /// at most [`FALLBACK_SEARCH`] revisions.
    async fn newest_compiling_before(
        &self,
        revision: i64,
    ) -> Result<Option<(u64, ConfigDocument)>, StoreError> {
        let oldest = (revision - FALLBACK_SEARCH).max(1);
        for n in (oldest..revision).rev() {
            let Ok(Some(document)) = self.document_at(n).await else {
                continue;
            };
            let checked = document.clone();
            let ok = tokio::task::spawn_blocking(move || checked.check_compiles().is_ok())
                .await
                .unwrap_or(false);
            if ok {
                return Ok(Some((n as u64, document)));
            }
        }
        Ok(None)
    }

    /// Loads and decrypts every certificate and publishes the set if it changed.
    /// A certificate whose key does not decrypt is left out and logged.
    pub async fn publish_certificates(&self) -> Result<(), StoreError> {
        let records = self.store.list_certificates().await?;
        let seen: Vec<(String, i64)> = records
            .iter()
            .map(|r| (r.name.clone(), r.version))
            .collect();
        {
            let mut last = self
                .certificates_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.as_ref() == Some(&seen) {
                return Ok(());
            }
            *last = Some(seen);
        }
        let mut set = Vec::new();
        for rec in records {
            match self.secrets.open(&rec.key_encrypted).map(String::from_utf8) {
                Ok(Ok(key_pem)) => set.push(fleetgate_core::tls::TlsBundle {
                    name: rec.name,
                    cert_pem: rec.cert_pem,
                    key_pem,
                }),
                Ok(Err(_)) => {
                    tracing::error!(certificate = %rec.name, "stored key is not text; not served")
                }
                Err(e) => {
                    tracing::error!(certificate = %rec.name, error = %e, "certificate key does not decrypt; not served")
                }
            }
        }
        self.feed.publish_certificates(set);
        Ok(())
    }

    /// Publishes every project's published rule set, loading only those whose
    /// published version (or hosts) changed.
    pub async fn publish_sites(&self) -> Result<(), StoreError> {
        let projects = self.store.all_projects().await?;
        let mut cache = self.sites.lock().await;
        let mut next: HashMap<String, Arc<Site>> = HashMap::with_capacity(projects.len());
        for p in projects {
            let site = match cache.get(&p.id) {
                Some(s) if s.version == p.published_version && s.hosts == p.hosts => s.clone(),
                Some(s) if s.version == p.published_version => Arc::new(Site {
                    hosts: p.hosts.clone(),
                    ..Site::clone(s)
                }),
                _ => {
                    let redirects =
                        load_all(self.store.as_ref(), RuleTable::Redirects, &p.id).await?;
                    let pages = load_all(self.store.as_ref(), RuleTable::Pages, &p.id).await?;
                    Arc::new(Site {
                        id: p.id.clone(),
                        label: format!("{}/{}", p.namespace, p.name),
                        version: p.published_version,
                        hosts: p.hosts.clone(),
                        redirects: redirects.into_iter().filter_map(redirect_of).collect(),
                        pages: pages.into_iter().filter_map(page_of).collect(),
                    })
                }
            };
            next.insert(p.id, site);
        }
        self.feed.publish_sites(next.values().cloned().collect());
        *cache = next;
        Ok(())
    }

    /// After a change made here to projects, published sets or certificates: the
    /// follower looks at the store now, and the other managers are told to.
    pub fn refresh_data_plane(&self) {
        self.store_changed.notify_one();
        self.peers.announce(0);
    }

    /// Keeps the data-plane input in step with the store: after each change made
    /// here, on word from another manager (NATS), and by polling. Ends when
    /// `shutdown` turns true.
    pub fn follow_store(&self, mut shutdown: watch::Receiver<bool>) {
        let state = self.clone();
        let poll = if self.peers.enabled() {
            POLL_WITH_NATS
        } else {
            POLL_WITHOUT_NATS
        };
        tokio::spawn(async move {
            loop {
                if let Err(e) = state.publish_latest().await {
                    tracing::warn!(error = %e, "could not read the latest revision");
                }
                if let Err(e) = state.publish_sites().await {
                    tracing::warn!(error = %e, "could not load published redirect and page sets");
                }
                if let Err(e) = state.publish_certificates().await {
                    tracing::warn!(error = %e, "could not load certificates");
                }
                if let Err(e) = state.publish_ai().await {
                    tracing::warn!(error = %e, "could not load the AI gateway input");
                }
                let mut wait = poll;
                match state.acme.publish_challenges(&state).await {
                    Ok((_, Some(expiry))) => {
                        let left = u64::try_from(expiry - now_ms()).unwrap_or(0);
                        wait = wait.min(Duration::from_millis(left + 1));
                    }
                    Ok((_, None)) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "could not load the ACME challenge answers")
                    }
                }
                tokio::select! {
                    () = state.store_changed.notified() => {}
                    () = state.peers.changed() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
                if *shutdown.borrow() {
                    return;
                }
            }
        });
    }
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

/// A stored redirect row as a rule; rows of an unknown type are left out.
pub fn redirect_of(d: RuleData) -> Option<Redirect> {
    Some(Redirect {
        kind: RedirectType::parse(&d.kind)?,
        source: d.key,
        target: d.value,
        status: RedirectStatus::parse(&d.flavor).unwrap_or_default(),
    })
}

/// A stored page row as a page; rows of an unknown type are left out.
pub fn page_of(d: RuleData) -> Option<Page> {
    Some(Page {
        kind: PageType::parse(&d.kind)?,
        path: d.key,
        content: d.value,
        content_type: PageContentType::parse(&d.flavor).unwrap_or_default(),
    })
}

/// Word between managers sharing a store that a revision was written, over NATS.
#[derive(Default)]
pub struct Peers {
    /// The NATS client, the cluster id and the revision subject.
    client: std::sync::OnceLock<(async_nats::Client, String, String)>,
    wake: Arc<tokio::sync::Notify>,
}

impl Peers {
    /// Whether word from other managers arrives (NATS configured).
    pub fn enabled(&self) -> bool {
        self.client.get().is_some()
    }

    /// Connects to NATS (in the background: an unreachable server is retried) and
    /// listens on `fleetgate.config.<cluster>`; word from any manager wakes the
    /// follower. Listening ends with `shutdown`.
    pub async fn attach(
        &self,
        url: &str,
        cluster: &str,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), String> {
        use futures::StreamExt;
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url)
            .await
            .map_err(|e| e.to_string())?;
        let subject = format!("fleetgate.config.{cluster}");
        let mut sub = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| e.to_string())?;
        let _ = self.client.set((client, cluster.to_string(), subject));
        let wake = self.wake.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    msg = sub.next() => match msg {
                        Some(_) => wake.notify_one(),
                        None => return,
                    },
                    _ = shutdown.changed() => return,
                }
            }
        });
        Ok(())
    }

    /// Tells the other managers that revision `number` was written (0: that
    /// something else in the data-plane input changed).
    pub fn announce(&self, number: i64) {
        if let Some((client, _, subject)) = self.client.get() {
            let client = client.clone();
            let subject = subject.clone();
            tokio::spawn(async move {
                if let Err(e) = client.publish(subject, number.to_string().into()).await {
                    tracing::warn!(error = %e, "could not announce the revision over NATS");
                }
            });
        }
    }

    /// The NATS client and the cluster id, once attached.
    pub fn client(&self) -> Option<(&async_nats::Client, &str)> {
        self.client
            .get()
            .map(|(c, cluster, _)| (c, cluster.as_str()))
    }

    /// Resolves when another manager announces a change.
    pub async fn changed(&self) {
        self.wake.notified().await;
    }
}
