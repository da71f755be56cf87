//! `config_delta`: a configuration change sent to an edge as what changed since
//! the snapshot it serves, instead of the whole snapshot.
//!
//! Payload: `{"revision", "digest", "base_digest", ...changes}` where the changes
//! are, each only when it changed: `settings` (the gateway's, whole), `upstreams`
//! and `routes` (`{"upsert": [...], "remove": ["<name or id>", ...]}`),
//! `certificates` (the set, whole), `sites` (`{"version", "upsert", "remove"}`, by
//! project id), `rate_limits` and `challenges` (the pending ACME HTTP-01 answers,
//! whole).
//!
//! An edge applies a delta only to the snapshot whose digest is `base_digest`,
//! and only if the result serializes to `digest` (the digest of the full snapshot
//! the manager holds). Otherwise it answers `config_status` with what it serves,
//! and the manager sends the whole snapshot. The manager makes a delta only when
//! applying it to the base gives exactly the new snapshot (lists are kept ordered
//! by their key, as the manager orders them).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use fleetgate_core::gateway::{Route, Upstream};
use fleetgate_core::settings::Settings;
use fleetgate_core::ConfigDocument;
use serde::{Deserialize, Serialize};

use crate::{AcmeChallenges, Certificates, DataPlaneConfig, RateLimitSettings, Site, Sites};

pub const CONFIG_DELTA: &str = "config_delta";

/// Items identified by a key.
pub trait Keyed {
    fn key(&self) -> &str;
}

impl Keyed for Route {
    fn key(&self) -> &str {
        &self.id
    }
}

impl Keyed for Upstream {
    fn key(&self) -> &str {
        &self.name
    }
}

impl Keyed for Arc<Site> {
    fn key(&self) -> &str {
        &self.id
    }
}

/// Items added or changed, and keys removed, of one keyed list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
pub struct Changes<T> {
    #[serde(default)]
    pub upsert: Vec<T>,
    #[serde(default)]
    pub remove: Vec<String>,
}

impl<T> Default for Changes<T> {
    fn default() -> Self {
        Self {
            upsert: Vec::new(),
            remove: Vec::new(),
        }
    }
}

impl<T> Changes<T> {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

impl<T: Keyed + Clone + PartialEq> Changes<T> {
    /// What turns `old` into `new`.
    pub fn between(old: &[T], new: &[T]) -> Self {
        let before: HashMap<&str, &T> = old.iter().map(|t| (t.key(), t)).collect();
        let after: HashMap<&str, &T> = new.iter().map(|t| (t.key(), t)).collect();
        Self {
            upsert: new
                .iter()
                .filter(|t| before.get(t.key()) != Some(t))
                .cloned()
                .collect(),
            remove: old
                .iter()
                .filter(|t| !after.contains_key(t.key()))
                .map(|t| t.key().to_string())
                .collect(),
        }
    }

    /// `base` with these changes, ordered by key.
    pub fn apply(&self, base: &[T]) -> Vec<T> {
        let mut by_key: BTreeMap<String, T> = base
            .iter()
            .map(|t| (t.key().to_string(), t.clone()))
            .collect();
        for k in &self.remove {
            by_key.remove(k);
        }
        for t in &self.upsert {
            by_key.insert(t.key().to_string(), t.clone());
        }
        by_key.into_values().collect()
    }
}

/// Changes of the published rule sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SitesDelta {
    pub version: u64,
    #[serde(flatten)]
    pub changes: Changes<Arc<Site>>,
}

/// A change of the data-plane input, relative to the snapshot `base_digest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigDelta {
    pub revision: u64,
    /// Digest of the whole snapshot the delta leads to.
    pub digest: String,
    /// Digest of the snapshot the delta applies to.
    pub base_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Settings>,
    #[serde(default, skip_serializing_if = "Changes::is_empty")]
    pub upstreams: Changes<Upstream>,
    #[serde(default, skip_serializing_if = "Changes::is_empty")]
    pub routes: Changes<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates: Option<Arc<Certificates>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sites: Option<SitesDelta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimitSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenges: Option<Arc<AcmeChallenges>>,
}

impl ConfigDelta {
    /// The delta from `old` (digest `old_digest`) to `new` (digest `new_digest`),
    /// or `None` when no delta gives exactly `new` (then the whole snapshot goes).
    pub fn between(
        old: &DataPlaneConfig,
        old_digest: &str,
        new: &DataPlaneConfig,
        new_digest: &str,
    ) -> Option<Self> {
        if old.synced != new.synced || old.gateway.format_version != new.gateway.format_version {
            return None;
        }
        let (og, ng) = (&old.gateway, &new.gateway);
        let delta = Self {
            revision: new.revision,
            digest: new_digest.to_string(),
            base_digest: old_digest.to_string(),
            settings: (og.settings != ng.settings).then(|| ng.settings.clone()),
            upstreams: Changes::between(&og.upstreams, &ng.upstreams),
            routes: Changes::between(&og.routes, &ng.routes),
            certificates: (old.certificates != new.certificates).then(|| new.certificates.clone()),
            sites: (old.sites != new.sites).then(|| SitesDelta {
                version: new.sites.version,
                changes: Changes::between(&old.sites.sites, &new.sites.sites),
            }),
            rate_limits: (old.rate_limits != new.rate_limits).then_some(new.rate_limits),
            challenges: (old.challenges != new.challenges).then(|| new.challenges.clone()),
        };
        (delta.apply(old) == *new).then_some(delta)
    }

    /// `base` with this delta applied (the caller checks the digests).
    pub fn apply(&self, base: &DataPlaneConfig) -> DataPlaneConfig {
        let gateway_changed =
            self.settings.is_some() || !self.upstreams.is_empty() || !self.routes.is_empty();
        let gateway = if gateway_changed {
            let g = &base.gateway;
            Arc::new(ConfigDocument {
                format_version: g.format_version,
                settings: self.settings.clone().unwrap_or_else(|| g.settings.clone()),
                upstreams: self.upstreams.apply(&g.upstreams),
                routes: self.routes.apply(&g.routes),
            })
        } else {
            base.gateway.clone()
        };
        DataPlaneConfig {
            revision: self.revision,
            gateway,
            certificates: self
                .certificates
                .clone()
                .unwrap_or_else(|| base.certificates.clone()),
            sites: match &self.sites {
                Some(s) => Arc::new(Sites {
                    version: s.version,
                    sites: s.changes.apply(&base.sites.sites),
                }),
                None => base.sites.clone(),
            },
            synced: base.synced.clone(),
            rate_limits: self.rate_limits.unwrap_or(base.rate_limits),
            challenges: self
                .challenges
                .clone()
                .unwrap_or_else(|| base.challenges.clone()),
            local: base.local,
            ai: base.ai.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::{digest, EncodedSnapshot};
    use proptest::prelude::*;
    use serde_json::json;

    fn route(id: &str, path: &str) -> Route {
        serde_json::from_value(json!({"id": id, "path": path, "upstream": "http://127.0.0.1:1"}))
            .expect("route")
    }

    fn upstream(name: &str, port: u16) -> Upstream {
        serde_json::from_value(
            json!({"name": name, "targets": [{"url": format!("http://127.0.0.1:{port}")}]}),
        )
        .expect("upstream")
    }

    /// A configuration as the manager publishes it: lists ordered by their key.
    fn config(
        revision: u64,
        routes: &BTreeMap<String, String>,
        ups: &BTreeMap<String, u16>,
    ) -> DataPlaneConfig {
        DataPlaneConfig {
            revision,
            gateway: Arc::new(ConfigDocument {
                routes: routes.iter().map(|(id, p)| route(id, p)).collect(),
                upstreams: ups.iter().map(|(n, p)| upstream(n, *p)).collect(),
                ..ConfigDocument::default()
            }),
            ..DataPlaneConfig::default()
        }
    }

    fn digest_of(c: &DataPlaneConfig) -> String {
        digest(&serde_json::to_string(c).expect("json"))
    }

    #[test]
    fn one_changed_route_of_many_travels_alone() {
        let mut routes: BTreeMap<String, String> = (0..1000)
            .map(|i| (format!("r{i:04}"), format!("/p/{i}")))
            .collect();
        let ups = BTreeMap::from([("u".to_string(), 80)]);
        let old = config(1, &routes, &ups);
        routes.insert("r0500".into(), "/changed".into());
        routes.remove("r0007");
        routes.insert("r9999".into(), "/new".into());
        let new = config(2, &routes, &ups);
        let enc =
            EncodedSnapshot::encode_after(&new, Some((&old, &digest_of(&old)))).expect("encode");
        let d = enc.delta.expect("a delta");
        assert!(
            d.frame.len() * 50 < enc.bytes,
            "{} vs {}",
            d.frame.len(),
            enc.bytes
        );
        let v: serde_json::Value = serde_json::from_str(&d.frame).expect("frame");
        assert_eq!(v["type"], CONFIG_DELTA);
        let delta: ConfigDelta = serde_json::from_value(v["payload"].clone()).expect("payload");
        assert_eq!(delta.routes.upsert.len(), 2);
        assert_eq!(delta.routes.remove, ["r0007"]);
        assert!(delta.upstreams.is_empty() && delta.settings.is_none() && delta.sites.is_none());
        let got = delta.apply(&old);
        assert_eq!(got, new);
        assert_eq!(digest_of(&got), enc.digest);
    }

    #[test]
    fn no_delta_when_it_cannot_give_the_new_snapshot() {
        let ups = BTreeMap::new();
        let old = config(1, &BTreeMap::from([("a".into(), "/a".into())]), &ups);
        // Not ordered by key: a delta would reorder it.
        let mut new = config(2, &BTreeMap::new(), &ups);
        Arc::make_mut(&mut new.gateway).routes = vec![route("b", "/b"), route("a", "/a")];
        assert!(ConfigDelta::between(&old, "d1", &new, "d2").is_none());
        // Synced rules are never part of a delta.
        let mut synced = old.clone();
        synced.synced = Some(Arc::new(Site::default()));
        assert!(ConfigDelta::between(&old, "d1", &synced, "d2").is_none());
    }

    #[test]
    fn sites_certificates_and_limits_change_on_their_own() {
        let old = DataPlaneConfig::default();
        let site = |id: &str, v: i64| {
            Arc::new(Site {
                id: id.into(),
                version: v,
                ..Site::default()
            })
        };
        let new = DataPlaneConfig {
            revision: 0,
            sites: Arc::new(Sites {
                version: 3,
                sites: vec![site("p1", 2), site("p2", 1)],
            }),
            rate_limits: RateLimitSettings { fail_open: false },
            ..DataPlaneConfig::default()
        };
        let d = ConfigDelta::between(&old, "a", &new, "b").expect("delta");
        assert!(d.routes.is_empty() && d.certificates.is_none());
        assert_eq!(d.sites.as_ref().map(|s| s.changes.upsert.len()), Some(2));
        assert_eq!(d.apply(&old), new);
        let text = serde_json::to_string(&d).expect("json");
        let back: ConfigDelta = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, d);
    }

    proptest! {
        /// Any change between two published configurations gives a delta that
        /// leads from the old one exactly to the new one, through its JSON form.
        #[test]
        fn deltas_lead_exactly_to_the_new_snapshot(
            a in proptest::collection::btree_map("[a-e]{1,2}", "/[a-c]{0,3}", 0..12),
            b in proptest::collection::btree_map("[a-e]{1,2}", "/[a-c]{0,3}", 0..12),
            ua in proptest::collection::btree_map("[x-z]", 1u16..4, 0..3),
            ub in proptest::collection::btree_map("[x-z]", 1u16..4, 0..3),
        ) {
            let old = config(1, &a, &ua);
            let new = config(2, &b, &ub);
            let d = ConfigDelta::between(&old, &digest_of(&old), &new, &digest_of(&new))
                .expect("ordered lists always have a delta");
            let text = serde_json::to_string(&d).expect("json");
            let parsed: ConfigDelta = serde_json::from_str(&text).expect("parse");
            let got = parsed.apply(&old);
            prop_assert_eq!(digest_of(&got), d.digest.clone());
            prop_assert_eq!(got, new);
        }
    }
}
