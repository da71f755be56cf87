//! Users and roles.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::ValidationError;

/// What a user or API key may do. Ordered from least to most privileged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything, changes nothing.
    Viewer,
    /// Changes gateway and fleet configuration.
    Operator,
    /// Also manages users, API keys, settings, imports and backups.
    Admin,
    /// Everything, including other super admins.
    SuperAdmin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::Admin, Role::SuperAdmin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::SuperAdmin => "super_admin",
        }
    }

    /// Whether this role may make any change at all.
    pub fn can_mutate(self) -> bool {
        self >= Role::Operator
    }

    /// Whether this role administers users, API keys, settings and backups.
    pub fn is_admin(self) -> bool {
        self >= Role::Admin
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?}: expected one of super_admin, admin, operator, viewer")
            })
    }
}

/// A validated user name: 1–64 characters of `[A-Za-z0-9_.@-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 64 {
            return Err("must be 1 to 64 characters".into());
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-'))
        {
            return Err("may contain only letters, digits and _ . @ -".into());
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Minimum rules for a password chosen by an operator.
pub fn validate_password(field: &str, password: &str, errors: &mut ValidationError) {
    let chars = password.chars().count();
    if chars < 8 {
        errors.push(field, "must be at least 8 characters");
    } else if chars > 256 {
        errors.push(field, "must be at most 256 characters");
    }
}

/// Node ids a user may be limited to: each 1–128 characters, no control characters.
pub fn validate_node_ids(field: &str, ids: &[String], errors: &mut ValidationError) {
    if ids.len() > 10_000 {
        errors.push(field, "at most 10000 node ids");
    }
    for (i, id) in ids.iter().enumerate() {
        if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
            errors.push(
                format!("{field}[{i}]"),
                "must be 1 to 128 characters without control characters",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_by_privilege() {
        assert!(Role::SuperAdmin > Role::Admin);
        assert!(Role::Admin > Role::Operator);
        assert!(Role::Operator > Role::Viewer);
        assert!(!Role::Viewer.can_mutate());
        assert!(Role::Operator.can_mutate());
        assert!(!Role::Operator.is_admin());
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn user_names() {
        assert!(UserName::parse("admin").is_ok());
        assert!(UserName::parse("ops.team@example-1").is_ok());
        assert!(UserName::parse("").is_err());
        assert!(UserName::parse("a b").is_err());
        assert!(UserName::parse("x'; DROP TABLE users;--").is_err());
        assert!(UserName::parse(&"a".repeat(65)).is_err());
    }
}
