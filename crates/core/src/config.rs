//! The configuration document: everything an operator configures, as one value.
//!
//! Revisions store it, export returns it, import and rollback replace the live
//! configuration with one, and the data plane receives it with its revision number.
//! Its serialized form is deterministic, so export → import → export is stable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::gateway::{Route, Upstream};
use crate::{Settings, ValidationError};

/// The document format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// All configuration of one Fleetgate installation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ConfigDocument {
    /// Always 1 for this release.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1))]
    pub format_version: u32,
    #[serde(default)]
    pub settings: Settings,
    /// Upstream pools, by name.
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    /// Routes, by id.
    #[serde(default)]
    pub routes: Vec<Route>,
}

impl Default for ConfigDocument {
    fn default() -> Self {
        Self {
            format_version: FORMAT_VERSION,
            settings: Settings::default(),
            upstreams: Vec::new(),
            routes: Vec::new(),
        }
    }
}

impl ConfigDocument {
    /// Puts upstreams and routes in their canonical order (by name, by id).
    pub fn normalize(&mut self) {
        self.upstreams.sort_by(|a, b| a.name.cmp(&b.name));
        self.routes.sort_by(|a, b| a.id.cmp(&b.id));
    }

    /// Validates the whole document; field paths are relative to its root.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_objects()?;
        // Routes valid one by one can still fail together (their regexes are
        // compiled as one set per host): a document is valid only if the gateway
        // can build its route table.
        self.check_compiles()
    }

    /// Validates every object and the references between them, short of compiling
    /// the route table (which the data plane does anyway when it applies one).
    pub fn validate_objects(&self) -> Result<(), ValidationError> {
        self.validate_objects_since(None)
    }

    /// [`ConfigDocument::validate_objects`] for a document that replaces
    /// `previous`, itself valid: an upstream or route equal to the one of the same
    /// name there is not validated again (a route's own regex is compiled to
    /// validate it, which a data plane applying one change to a thousand routes
    /// should not repeat); duplicates and references are checked across all.
    pub fn validate_objects_since(
        &self,
        previous: Option<&ConfigDocument>,
    ) -> Result<(), ValidationError> {
        let old_upstreams: std::collections::HashMap<&str, &Upstream> = previous
            .map(|p| p.upstreams.iter().map(|u| (u.name.as_str(), u)).collect())
            .unwrap_or_default();
        let old_routes: std::collections::HashMap<&str, &Route> = previous
            .map(|p| p.routes.iter().map(|r| (r.id.as_str(), r)).collect())
            .unwrap_or_default();
        let mut e = ValidationError::new();
        if self.format_version != FORMAT_VERSION {
            e.push(
                "format_version",
                format!(
                    "unsupported format version {}: expected {FORMAT_VERSION}",
                    self.format_version
                ),
            );
        }
        if let Err(s) = self.settings.validate() {
            e.extend_prefixed("settings", s);
        }
        let mut names = std::collections::HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let known = old_upstreams.get(u.name.as_str()).is_some_and(|o| *o == u);
            if let Err(err) = if known { Ok(()) } else { u.validate() } {
                e.extend_prefixed(&format!("upstreams[{i}]"), err);
            }
            if !names.insert(u.name.as_str()) {
                e.push(
                    format!("upstreams[{i}].name"),
                    format!("upstream {:?} is defined twice", u.name),
                );
            }
        }
        let mut ids = std::collections::HashSet::new();
        let mut keys = std::collections::HashMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            let known = old_routes.get(r.id.as_str()).is_some_and(|o| *o == r);
            if let Err(err) = if known { Ok(()) } else { r.validate() } {
                e.extend_prefixed(&format!("routes[{i}]"), err);
            }
            if !ids.insert(r.id.as_str()) {
                e.push(
                    format!("routes[{i}].id"),
                    format!("route {:?} is defined twice", r.id),
                );
            }
            e.extend_prefixed(
                &format!("routes[{i}]"),
                self.check_route_refs(r, keys.get(&r.match_key()).copied()),
            );
            keys.entry(r.match_key()).or_insert(r.id.as_str());
        }
        e.into_result()
    }

    /// Whether the gateway can compile this document: its routes build one route
    /// table and every route's upstream exists. The errors name the routes.
    pub fn check_compiles(&self) -> Result<(), ValidationError> {
        let mut e = ValidationError::new();
        for (i, r) in self.routes.iter().enumerate() {
            if r.ai.is_none()
                && !r.upstream.contains("://")
                && !self.upstreams.iter().any(|u| u.name == r.upstream)
            {
                e.push(
                    format!("routes[{i}].upstream"),
                    format!("route {:?}: no upstream named {:?}", r.id, r.upstream),
                );
            }
        }
        if let Err(err) = crate::routing::RouteTable::build(&self.routes) {
            e.errors.extend(err.errors);
        }
        e.into_result()
    }

    /// Checks what a route refers to within this document: its upstream exists and
    /// no other route (`twin`) matches exactly the same requests.
    pub fn check_route_refs(&self, r: &Route, twin: Option<&str>) -> ValidationError {
        let mut e = ValidationError::new();
        if r.ai.is_none()
            && !r.upstream.contains("://")
            && !self.upstreams.iter().any(|u| u.name == r.upstream)
        {
            e.push("upstream", format!("no upstream named {:?}", r.upstream));
        }
        if let Some(other) = twin {
            if other != r.id {
                e.push(
                    "path",
                    format!("route {other:?} already matches the same hosts, path and methods"),
                );
            }
        }
        e
    }
}

/// All configuration objects as stored, keyed by kind then name. Deterministically ordered.
pub type ResourceSet = BTreeMap<String, BTreeMap<String, Value>>;

/// Kind and name under which the settings object is stored.
pub const SETTINGS_KIND: &str = "settings";
pub const SETTINGS_NAME: &str = "global";
/// Kind of upstream objects, stored by name.
pub const UPSTREAM_KIND: &str = "upstream";
/// Kind of route objects, stored by id.
pub const ROUTE_KIND: &str = "route";

impl ConfigDocument {
    /// Builds the document from stored objects; missing objects take their defaults.
    pub fn from_resources(set: &ResourceSet) -> Result<Self, ValidationError> {
        let mut doc = ConfigDocument::default();
        let mut e = ValidationError::new();
        for (kind, objects) in set {
            match kind.as_str() {
                SETTINGS_KIND => {
                    for (name, body) in objects {
                        if name != SETTINGS_NAME {
                            e.push(format!("settings.{name}"), "unknown settings object");
                            continue;
                        }
                        match Settings::deserialize(body) {
                            Ok(s) => doc.settings = s,
                            Err(err) => e.push("settings", err.to_string()),
                        }
                    }
                }
                UPSTREAM_KIND => {
                    for (name, body) in objects {
                        match Upstream::deserialize(body) {
                            Ok(u) => doc.upstreams.push(u),
                            Err(err) => e.push(format!("upstreams.{name}"), err.to_string()),
                        }
                    }
                }
                ROUTE_KIND => {
                    for (id, body) in objects {
                        match Route::deserialize(body) {
                            Ok(r) => doc.routes.push(r),
                            Err(err) => e.push(format!("routes.{id}"), err.to_string()),
                        }
                    }
                }
                other => e.push(other.to_string(), "unknown configuration kind"),
            }
        }
        e.into_result().map(|()| doc)
    }

    /// The stored objects that make up this document.
    pub fn to_resources(&self) -> ResourceSet {
        let mut set = ResourceSet::new();
        let settings = serde_json::to_value(&self.settings).unwrap_or(Value::Null);
        set.entry(SETTINGS_KIND.to_string())
            .or_default()
            .insert(SETTINGS_NAME.to_string(), settings);
        for u in &self.upstreams {
            set.entry(UPSTREAM_KIND.to_string()).or_default().insert(
                u.name.clone(),
                serde_json::to_value(u).unwrap_or(Value::Null),
            );
        }
        for r in &self.routes {
            set.entry(ROUTE_KIND.to_string())
                .or_default()
                .insert(r.id.clone(), serde_json::to_value(r).unwrap_or(Value::Null));
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_validated_again_only_when_they_changed() {
        let doc = |routes: serde_json::Value| ConfigDocument {
            upstreams: serde_json::from_value(
                serde_json::json!([{"name": "u", "targets": [{"url": "http://127.0.0.1:1"}]}]),
            )
            .expect("upstreams"),
            routes: serde_json::from_value(routes).expect("routes"),
            ..ConfigDocument::default()
        };
        let good = serde_json::json!({"id": "a", "path": "/a", "upstream": "u"});
        let previous = doc(serde_json::json!([good.clone()]));
        assert!(previous.validate_objects_since(None).is_ok());
        assert!(previous.validate_objects_since(Some(&previous)).is_ok());
        // A new route is validated, as is a changed one; both fail here.
        let bad = serde_json::json!({"id": "b", "path": "no-slash", "upstream": "u"});
        let e = doc(serde_json::json!([good, bad]))
            .validate_objects_since(Some(&previous))
            .expect_err("new route");
        assert!(e.to_string().contains("routes[1].path"), "{e}");
        let changed = serde_json::json!({"id": "a", "path": "a", "upstream": "u"});
        let e = doc(serde_json::json!([changed]))
            .validate_objects_since(Some(&previous))
            .expect_err("changed route");
        assert!(e.to_string().contains("routes[0].path"), "{e}");
        // References are checked across all routes, changed or not.
        let orphan = serde_json::json!({"id": "a", "path": "/a", "upstream": "gone"});
        let mut d = doc(serde_json::json!([orphan]));
        d.upstreams.clear();
        assert!(d.validate_objects_since(Some(&previous)).is_err());
    }

    #[test]
    fn resources_round_trip() {
        let mut doc = ConfigDocument::default();
        doc.settings.api.rate_limit_per_minute = 7;
        let back = ConfigDocument::from_resources(&doc.to_resources()).expect("valid");
        assert_eq!(back, doc);
        assert_eq!(
            ConfigDocument::from_resources(&ResourceSet::new()).expect("empty"),
            ConfigDocument::default()
        );
        let mut bad = ResourceSet::new();
        bad.entry("nonsense".into())
            .or_default()
            .insert("x".into(), Value::Null);
        assert!(ConfigDocument::from_resources(&bad).is_err());
    }
}
