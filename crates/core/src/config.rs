//! The configuration document: everything an operator configures, as one value.
//!
//! Revisions store it, export returns it, import and rollback replace the live
//! configuration with one, and the data plane receives it as a [`ConfigSnapshot`].
//! Its serialized form is deterministic, so export → import → export is stable.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Settings, ValidationError};

/// The document format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// All configuration of one Fleetgate installation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigDocument {
    /// Always 1 for this release.
    pub format_version: u32,
    #[serde(default)]
    pub settings: Settings,
}

impl Default for ConfigDocument {
    fn default() -> Self {
        Self {
            format_version: FORMAT_VERSION,
            settings: Settings::default(),
        }
    }
}

impl ConfigDocument {
    /// Validates the whole document; field paths are relative to its root.
    pub fn validate(&self) -> Result<(), ValidationError> {
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
        e.into_result()
    }
}

/// A revision of the configuration as the data plane receives it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigSnapshot {
    /// The revision number; 0 before the first change.
    pub revision: u64,
    pub document: ConfigDocument,
}
