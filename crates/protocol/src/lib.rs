//! What passes between Fleetgate's manager and its data planes, in one place: the
//! configuration a data plane serves ([`DataPlaneConfig`]) and the status it
//! reports back ([`DataPlaneStatus`]).
//!
//! A data plane has exactly one input, a watch channel of [`DataPlaneConfig`]: the
//! built-in gateway of `fleetgate serve` gets it in-process from the manager, an
//! edge gets the same value over the node protocol, and a Flecto agent fills in the
//! rules it syncs. Every part carries its own version so that a data plane rebuilds
//! only what changed. The data plane answers on a status channel; whoever holds
//! the [`StatusLink`] (the manager for its in-process gateway, the node connection
//! for an edge) reads it the same way.

pub mod ai;
pub mod delta;
pub mod node;
pub mod sync;
pub mod tunnel;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleetgate_core::gateway::{BreakerStatus, TargetHealth};
use fleetgate_core::metrics::TrafficCounters;
use fleetgate_core::redirects::{Page, Redirect};
use fleetgate_core::tls::TlsBundle;
use fleetgate_core::ConfigDocument;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

/// Everything a data plane serves. Cheap to clone: every part is shared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataPlaneConfig {
    /// The configuration revision `gateway` is; 0 before the first change.
    pub revision: u64,
    /// Routes, upstreams and settings of that revision, exactly as committed.
    pub gateway: Arc<ConfigDocument>,
    /// Certificates the TLS listener serves, by SNI name.
    pub certificates: Arc<Certificates>,
    /// Published redirect and page sets of the manager's projects.
    pub sites: Arc<Sites>,
    /// Rules synced from a Flecto-compatible manager (a Flecto agent's input),
    /// answered for hosts no project claims.
    pub synced: Option<Arc<Site>>,
    /// How route rate limits behave when their shared counter cannot be reached.
    pub rate_limits: RateLimitSettings,
    /// ACME HTTP-01 answers pending right now, served on
    /// `/.well-known/acme-challenge/<token>` for any host. They travel with the
    /// rest of the input so that an edge answers them as the built-in gateway does
    /// (the CA may reach either); absent in inputs from older managers.
    #[serde(default)]
    pub challenges: Arc<AcmeChallenges>,
    /// The version of the objects the data plane's own host merged into
    /// `gateway` on top of revision `revision` (an edge's deployments, see
    /// `fleetgate_edge::deployments`); 0 when none were. A data plane compiles
    /// `gateway` again when this changes, the revision staying the same. Never
    /// set by a manager (and left out of the JSON while 0, so that the
    /// snapshots' digests do not change).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub local: u64,
    /// The AI gateway's providers (keys opened), callers and budgets. Never
    /// serialized: provider keys stay in the manager's process, so only the
    /// built-in gateway of `fleetgate serve` serves `ai` routes (see [`ai`]).
    #[serde(skip)]
    pub ai: Arc<ai::AiGatewayInput>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl DataPlaneConfig {
    /// The versions of every part, as a data plane reports having applied them.
    pub fn versions(&self) -> AppliedVersions {
        AppliedVersions {
            revision: self.revision,
            certificates: self.certificates.version,
            sites: self.sites.version,
            synced: self.synced.as_ref().map(|s| s.version),
            challenges: self.challenges.version,
            local: self.local,
            ai: self.ai.version,
        }
    }
}

/// Pending ACME HTTP-01 challenges: token → key authorization. `version` changes
/// whenever the set does. Key authorizations are not secrets (the CA fetches them
/// over plain HTTP); they are only useful while their order is pending.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeChallenges {
    pub version: u64,
    pub answers: BTreeMap<String, String>,
}

/// A certificate set; `version` changes whenever the set does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificates {
    pub version: u64,
    pub bundles: Vec<TlsBundle>,
}

/// The published rule sets of every project; `version` changes whenever any set,
/// or the hosts a project answers, does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sites {
    pub version: u64,
    pub sites: Vec<Arc<Site>>,
}

/// One published set of redirects and pages, answered for `hosts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// The project's id (or, for synced rules, where they came from).
    pub id: String,
    /// A readable name for logs (`namespace/project`).
    pub label: String,
    /// The published version of the set; a data plane recompiles a site only
    /// when its version (or its hosts) changes.
    pub version: i64,
    /// Hosts answered with this set: lower case, no port.
    pub hosts: Vec<String>,
    pub redirects: Vec<Redirect>,
    pub pages: Vec<Page>,
}

/// Rate-limit behaviour that is the same for every route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitSettings {
    /// With the shared counter unreachable, admit requests on limited routes
    /// (true) or refuse them (false).
    pub fail_open: bool,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self { fail_open: true }
    }
}

/// The versions of the parts of a [`DataPlaneConfig`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppliedVersions {
    pub revision: u64,
    pub certificates: u64,
    pub sites: u64,
    pub synced: Option<i64>,
    /// The ACME challenge set answered (0 before any).
    #[serde(default)]
    pub challenges: u64,
    /// The version of the host's own objects merged into the revision served
    /// (see [`DataPlaneConfig::local`]).
    #[serde(default)]
    pub local: u64,
    /// The AI gateway input applied (0 before any).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ai: u64,
}

/// Requests a data plane answered with each rule of one published set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteHits {
    /// The published version counted (the [`Site::version`] served).
    pub version: i64,
    /// By position in [`Site::redirects`].
    pub redirects: Vec<u64>,
    /// By position in [`Site::pages`].
    pub pages: Vec<u64>,
}

/// A breaker closed by hand: the state it was in, and how it reads now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerReset {
    /// `closed`, `open` or `half_open` before the reset.
    pub was: String,
    pub breaker: BreakerStatus,
}

/// What the manager may ask of a data plane in its own process, beyond its config
/// and status: answered at once, never through the config feed.
pub trait DataPlaneControl: Send + Sync {
    /// Closes the circuit breaker of `upstream`; `None` when the data plane has no
    /// such upstream.
    fn reset_breaker(&self, upstream: &str) -> Option<BreakerReset>;
    /// The hit counts of the published set `site_id` (a project's id); `None` when
    /// the data plane serves no such set.
    fn site_hits(&self, site_id: &str) -> Option<SiteHits>;
}

/// What a data plane reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DataPlaneStatus {
    /// Report number, rising: a reader asking for a fresh report waits for a higher one.
    pub seq: u64,
    /// When the report was made, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// What the data plane serves now.
    pub applied: AppliedVersions,
    /// Routes in the table served.
    pub routes: usize,
    /// Inputs the data plane refused (newest last, a few kept); it went on serving
    /// what it had.
    pub errors: Vec<ConfigFault>,
    /// Each upstream's targets and breaker, by name.
    pub upstreams: Vec<UpstreamStatus>,
    pub limiter: LimiterStatus,
    /// Cumulative traffic counters since the data plane started.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub traffic: TrafficCounters,
}

impl DataPlaneStatus {
    /// The targets of `upstream`, or `None` when the data plane has no such upstream.
    pub fn upstream_health(&self, upstream: &str) -> Option<&[TargetHealth]> {
        self.upstreams
            .iter()
            .find(|u| u.name == upstream)
            .map(|u| u.targets.as_slice())
    }

    /// Every upstream's breaker, by upstream name.
    pub fn breakers(&self) -> Vec<BreakerStatus> {
        self.upstreams.iter().map(|u| u.breaker.clone()).collect()
    }
}

/// An input a data plane could not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigFault {
    /// `revision`, `certificates`, `sites` or `synced`.
    pub part: String,
    /// The refused version of that part.
    pub version: i64,
    pub message: String,
    pub at_ms: i64,
}

/// One upstream as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpstreamStatus {
    pub name: String,
    pub targets: Vec<TargetHealth>,
    pub breaker: BreakerStatus,
}

/// State of the route rate limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LimiterStatus {
    /// Windows counted in this process.
    pub local_keys: usize,
    /// Whether counters are shared through Redis.
    pub shared: bool,
    /// Whether the shared counter answered its last request.
    pub shared_reachable: bool,
    /// Requests refused by route limits since start.
    pub rejected: u64,
}

/// The writing end of a data plane's input. Each part is replaced on its own; the
/// data plane sees one value with every part current.
#[derive(Clone)]
pub struct ConfigFeed {
    tx: Arc<watch::Sender<Arc<DataPlaneConfig>>>,
}

impl Default for ConfigFeed {
    fn default() -> Self {
        Self::new(DataPlaneConfig::default())
    }
}

impl ConfigFeed {
    pub fn new(initial: DataPlaneConfig) -> Self {
        Self {
            tx: Arc::new(watch::channel(Arc::new(initial)).0),
        }
    }

    /// A data plane's input.
    pub fn subscribe(&self) -> watch::Receiver<Arc<DataPlaneConfig>> {
        self.tx.subscribe()
    }

    /// The value data planes see now.
    pub fn current(&self) -> Arc<DataPlaneConfig> {
        self.tx.borrow().clone()
    }

    /// Publishes revision `revision` of the gateway configuration unless a newer
    /// one is out. Returns whether it was published.
    pub fn publish_revision(&self, revision: u64, document: Arc<ConfigDocument>) -> bool {
        self.tx.send_if_modified(|cur| {
            // Before the first revision the number cannot tell documents apart.
            let first = revision == 0 && cur.revision == 0 && *cur.gateway != *document;
            if revision > cur.revision || first {
                let next = Arc::make_mut(cur);
                next.revision = revision;
                next.gateway = document.clone();
                true
            } else {
                false
            }
        })
    }

    /// Publishes a certificate set if it differs from the one out; its version is
    /// the next number.
    pub fn publish_certificates(&self, bundles: Vec<TlsBundle>) -> bool {
        self.tx.send_if_modified(|cur| {
            if cur.certificates.bundles == bundles {
                return false;
            }
            let version = cur.certificates.version + 1;
            Arc::make_mut(cur).certificates = Arc::new(Certificates { version, bundles });
            true
        })
    }

    /// Publishes the pending ACME HTTP-01 answers if they differ from those out;
    /// returns the version data planes report once they answer them.
    pub fn publish_challenges(&self, answers: BTreeMap<String, String>) -> u64 {
        self.tx.send_if_modified(|cur| {
            if cur.challenges.answers == answers {
                return false;
            }
            let version = cur.challenges.version + 1;
            Arc::make_mut(cur).challenges = Arc::new(AcmeChallenges { version, answers });
            true
        });
        self.current().challenges.version
    }

    /// Publishes the sites (published rule sets) if any differs from those out.
    pub fn publish_sites(&self, mut sites: Vec<Arc<Site>>) -> bool {
        sites.sort_by(|a, b| a.id.cmp(&b.id));
        self.tx.send_if_modified(|cur| {
            if cur.sites.sites == sites {
                return false;
            }
            let version = cur.sites.version + 1;
            Arc::make_mut(cur).sites = Arc::new(Sites { version, sites });
            true
        })
    }

    /// Publishes the synced rules (or withdraws them with `None`).
    pub fn publish_synced(&self, site: Option<Arc<Site>>) -> bool {
        self.tx.send_if_modified(|cur| {
            if cur.synced == site {
                return false;
            }
            Arc::make_mut(cur).synced = site;
            true
        })
    }

    /// Takes a whole configuration made elsewhere (an edge's manager): the revision,
    /// its document, its local version and the rate-limit behaviour as given; the
    /// certificates and the sites get this feed's own version numbers, moved on
    /// only when their contents differ (the sender numbers its parts its own way).
    /// Synced rules are kept.
    /// The data plane is always told, and skips what it already serves. Returns
    /// the versions the data plane reports once it serves the result.
    pub fn adopt(&self, incoming: &DataPlaneConfig) -> AppliedVersions {
        self.tx.send_modify(|cur| {
            let next = Arc::make_mut(cur);
            next.revision = incoming.revision;
            next.gateway = incoming.gateway.clone();
            if next.certificates.bundles != incoming.certificates.bundles {
                next.certificates = Arc::new(Certificates {
                    version: next.certificates.version + 1,
                    bundles: incoming.certificates.bundles.clone(),
                });
            }
            if next.sites.sites != incoming.sites.sites {
                next.sites = Arc::new(Sites {
                    version: next.sites.version + 1,
                    sites: incoming.sites.sites.clone(),
                });
            }
            if next.challenges.answers != incoming.challenges.answers {
                next.challenges = Arc::new(AcmeChallenges {
                    version: next.challenges.version + 1,
                    answers: incoming.challenges.answers.clone(),
                });
            }
            next.rate_limits = incoming.rate_limits;
            next.local = incoming.local;
        });
        self.current().versions()
    }

    /// Publishes the AI gateway input if it differs from the one out; its
    /// version is the next number.
    pub fn publish_ai(&self, mut input: ai::AiGatewayInput) -> bool {
        self.tx.send_if_modified(|cur| {
            input.version = cur.ai.version;
            if *cur.ai == input {
                return false;
            }
            input.version += 1;
            Arc::make_mut(cur).ai = Arc::new(input);
            true
        })
    }

    /// Sets the rate-limit behaviour.
    pub fn publish_rate_limits(&self, settings: RateLimitSettings) -> bool {
        self.tx.send_if_modified(|cur| {
            if cur.rate_limits == settings {
                return false;
            }
            Arc::make_mut(cur).rate_limits = settings;
            true
        })
    }
}

/// The two ends of a status link: the data plane's [`StatusReporter`] and the
/// reader's [`StatusLink`].
pub fn status_link() -> (StatusReporter, StatusLink) {
    let (tx, rx) = watch::channel(Arc::new(DataPlaneStatus::default()));
    let ask = Arc::new(Notify::new());
    (
        StatusReporter {
            tx,
            ask: ask.clone(),
        },
        StatusLink { rx, ask },
    )
}

/// The data plane's end: publishes reports, learns when a fresh one is wanted.
pub struct StatusReporter {
    tx: watch::Sender<Arc<DataPlaneStatus>>,
    ask: Arc<Notify>,
}

impl StatusReporter {
    /// Publishes `report`, numbering it after the previous one.
    pub fn publish(&self, mut report: DataPlaneStatus) {
        report.seq = self.tx.borrow().seq + 1;
        self.tx.send_replace(Arc::new(report));
    }

    /// Resolves when a reader asks for a fresh report.
    pub async fn asked(&self) {
        self.ask.notified().await;
    }

    /// True once every [`StatusLink`] is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The reader's end of a data plane's status.
#[derive(Clone)]
pub struct StatusLink {
    rx: watch::Receiver<Arc<DataPlaneStatus>>,
    ask: Arc<Notify>,
}

impl StatusLink {
    /// The newest report, however old.
    pub fn latest(&self) -> Arc<DataPlaneStatus> {
        self.rx.borrow().clone()
    }

    /// Asks for a report made now and waits for it up to `wait`; the newest one
    /// when none comes in time.
    pub async fn fresh(&self, wait: Duration) -> Arc<DataPlaneStatus> {
        let mut rx = self.rx.clone();
        let seen = rx.borrow_and_update().seq;
        self.ask.notify_one();
        let _ = tokio::time::timeout(wait, rx.wait_for(|r| r.seq > seen)).await;
        let latest = rx.borrow().clone();
        latest
    }

    /// Resolves when a new report is published; `false` once the data plane is gone.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_is_published_once_and_never_replaced_by_an_older_one() {
        let feed = ConfigFeed::default();
        let mut rx = feed.subscribe();
        let doc = Arc::new(ConfigDocument::default());
        assert!(feed.publish_revision(3, doc.clone()));
        assert!(rx.has_changed().unwrap_or(false));
        rx.borrow_and_update();
        assert!(
            !feed.publish_revision(3, doc.clone()),
            "same revision again"
        );
        assert!(!feed.publish_revision(2, doc), "older revision");
        assert!(!rx.has_changed().unwrap_or(true));
        assert_eq!(feed.current().revision, 3);
    }

    #[test]
    fn parts_change_alone_and_carry_their_own_versions() {
        let feed = ConfigFeed::default();
        feed.publish_revision(7, Arc::new(ConfigDocument::default()));
        let bundle = TlsBundle {
            name: "a.test".into(),
            cert_pem: "c".into(),
            key_pem: "k".into(),
        };
        assert!(feed.publish_certificates(vec![bundle.clone()]));
        assert!(!feed.publish_certificates(vec![bundle]), "same set");
        let site = Arc::new(Site {
            id: "p1".into(),
            version: 4,
            hosts: vec!["a.test".into()],
            ..Site::default()
        });
        assert!(feed.publish_sites(vec![site.clone()]));
        assert!(!feed.publish_sites(vec![site]));
        let v = feed.current().versions();
        assert_eq!(
            v,
            AppliedVersions {
                revision: 7,
                certificates: 1,
                sites: 1,
                synced: None,
                challenges: 0,
                local: 0,
                ai: 0,
            }
        );
    }

    #[test]
    fn an_adopted_configuration_keeps_this_feeds_part_numbers() {
        let feed = ConfigFeed::default();
        let mut from_manager = DataPlaneConfig {
            revision: 9,
            ..DataPlaneConfig::default()
        };
        from_manager.certificates = Arc::new(Certificates {
            version: 40,
            bundles: vec![TlsBundle {
                name: "a.test".into(),
                cert_pem: "c".into(),
                key_pem: "k".into(),
            }],
        });
        let v = feed.adopt(&from_manager);
        assert_eq!((v.revision, v.certificates, v.sites), (9, 1, 0));
        // The same contents under other numbers change nothing.
        Arc::make_mut(&mut from_manager.certificates).version = 2;
        let again = feed.adopt(&from_manager);
        assert_eq!(again, v);
    }

    #[test]
    fn challenges_are_published_adopted_and_optional_in_old_inputs() {
        let feed = ConfigFeed::default();
        let answers = BTreeMap::from([("tok".to_string(), "tok.thumb".to_string())]);
        assert_eq!(feed.publish_challenges(answers.clone()), 1);
        assert_eq!(feed.publish_challenges(answers.clone()), 1, "same set");
        assert_eq!(feed.current().versions().challenges, 1);
        let edge = ConfigFeed::default();
        assert_eq!(edge.adopt(&feed.current()).challenges, 1);
        assert_eq!(edge.current().challenges.answers, answers);
        assert_eq!(feed.publish_challenges(BTreeMap::new()), 2);
        assert_eq!(edge.adopt(&feed.current()).challenges, 2);
        // An input from a manager that knows nothing of challenges still parses.
        let mut old = serde_json::to_value(DataPlaneConfig::default()).expect("json");
        old.as_object_mut().expect("object").remove("challenges");
        let back: DataPlaneConfig = serde_json::from_value(old).expect("parse");
        assert!(back.challenges.answers.is_empty());
    }

    #[test]
    fn the_configuration_round_trips_through_json() {
        let feed = ConfigFeed::default();
        feed.publish_sites(vec![Arc::new(Site {
            id: "p1".into(),
            label: "ns/p".into(),
            version: 2,
            hosts: vec!["a.test".into()],
            redirects: vec![],
            pages: vec![],
        })]);
        let cfg = feed.current();
        let text = serde_json::to_string(&*cfg).expect("serialize");
        assert!(
            !text.contains("\"local\""),
            "no local version while 0: {text}"
        );
        let back: DataPlaneConfig = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, *cfg);
        let merged = DataPlaneConfig {
            local: 3,
            ..(*cfg).clone()
        };
        let text = serde_json::to_string(&merged).expect("serialize");
        let back: DataPlaneConfig = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.local, 3);
        let edge = ConfigFeed::default();
        assert_eq!(edge.adopt(&merged).local, 3);
    }

    #[tokio::test]
    async fn a_fresh_report_is_asked_for_and_awaited() {
        let (reporter, link) = status_link();
        let task = tokio::spawn(async move {
            reporter.asked().await;
            reporter.publish(DataPlaneStatus {
                routes: 5,
                ..DataPlaneStatus::default()
            });
            reporter
        });
        let r = link.fresh(Duration::from_secs(5)).await;
        assert_eq!((r.seq, r.routes), (1, 5));
        let _reporter = task.await.expect("reporter");
        // Nobody answers now: the newest report comes back after the wait.
        let r = link.fresh(Duration::from_millis(20)).await;
        assert_eq!(r.seq, 1);
    }
}
