//! The AI gateway's configuration: a route's `ai` block (which provider it
//! relays to, which models callers may ask for, which budgets its spend counts
//! against) and budgets (a spending cap per period, what happens past it).
//! Validation only; the data plane meters and enforces (`fleetgate_proxy::ai`).

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// A route's `ai` block: the route relays OpenAI-compatible requests
/// (`POST …/chat/completions`, `GET …/models`) to an AI provider instead of an
/// upstream of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AiRoute {
    /// The AI provider's name or id (see `/api/v1/ai/providers`).
    pub provider: String,
    /// Models callers may ask for; empty allows any model the price table knows.
    #[serde(default)]
    pub models: Vec<String>,
    /// Names of the budgets (`/api/v1/ai/budgets`) this route's spend counts against.
    #[serde(default)]
    pub budgets: Vec<String>,
    /// Output tokens reserved against budgets for a request that sets no
    /// `max_tokens` (the request is sent with this limit).
    #[serde(default = "default_max_tokens", alias = "defaultMaxTokens")]
    pub default_max_tokens: u32,
}

fn default_max_tokens() -> u32 {
    4096
}

/// Largest `max_tokens` a route may default to.
pub const MAX_DEFAULT_MAX_TOKENS: u32 = 1_000_000;

/// A budget name: 1–64 characters of `[A-Za-z0-9_.-]`.
pub fn valid_budget_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl AiRoute {
    /// Checks the block on its own; whether the provider and budgets exist is
    /// the manager's to check (they are not part of the revision).
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut e = ValidationError::new();
        let p = self.provider.trim();
        if p.is_empty() || p.len() > 128 || p.chars().any(char::is_control) {
            e.push(
                "provider",
                "must name an AI provider (its name or id, 1 to 128 characters)",
            );
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.is_empty() || m.len() > 128 || m.chars().any(|c| c.is_control() || c == ' ') {
                e.push(
                    format!("models[{i}]"),
                    "must be a model name (1 to 128 characters, no spaces)",
                );
            }
        }
        for (i, b) in self.budgets.iter().enumerate() {
            if !valid_budget_name(b) {
                e.push(
                    format!("budgets[{i}]"),
                    "must be a budget name (1 to 64 characters of letters, digits, _ - .)",
                );
            } else if self.budgets[..i].contains(b) {
                e.push(
                    format!("budgets[{i}]"),
                    format!("budget {b:?} is listed twice"),
                );
            }
        }
        if self.default_max_tokens == 0 || self.default_max_tokens > MAX_DEFAULT_MAX_TOKENS {
            e.push(
                "default_max_tokens",
                format!("must be between 1 and {MAX_DEFAULT_MAX_TOKENS}"),
            );
        }
        e.into_result()
    }

    /// Whether callers may ask for `model` on this route.
    pub fn allows(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m.eq_ignore_ascii_case(model))
    }
}

/// The period a budget's spend is counted over, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Hourly,
    Daily,
    /// Weeks start on Monday.
    Weekly,
    Monthly,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Hourly => "hourly",
            BudgetPeriod::Daily => "daily",
            BudgetPeriod::Weekly => "weekly",
            BudgetPeriod::Monthly => "monthly",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hourly" => Some(BudgetPeriod::Hourly),
            "daily" => Some(BudgetPeriod::Daily),
            "weekly" => Some(BudgetPeriod::Weekly),
            "monthly" => Some(BudgetPeriod::Monthly),
            _ => None,
        }
    }

    /// The period holding `now_ms`: `[start, end)` in milliseconds since the epoch.
    pub fn window(self, now_ms: i64) -> (i64, i64) {
        const HOUR: i64 = 3_600_000;
        const DAY: i64 = 24 * HOUR;
        match self {
            BudgetPeriod::Hourly => {
                let s = now_ms.div_euclid(HOUR) * HOUR;
                (s, s + HOUR)
            }
            BudgetPeriod::Daily => {
                let s = now_ms.div_euclid(DAY) * DAY;
                (s, s + DAY)
            }
            BudgetPeriod::Weekly => {
                // 1970-01-01 was a Thursday: Monday is 3 days later, minus 7.
                const MONDAY: i64 = -3 * DAY;
                let s = MONDAY + (now_ms - MONDAY).div_euclid(7 * DAY) * 7 * DAY;
                (s, s + 7 * DAY)
            }
            BudgetPeriod::Monthly => {
                let days = now_ms.div_euclid(DAY);
                let (y, m, _) = civil_from_days(days);
                let start = days_from_civil(y, m, 1) * DAY;
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (start, days_from_civil(ny, nm, 1) * DAY)
            }
        }
    }
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What happens to a request once its budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BudgetAction {
    /// A request whose worst-case cost does not fit in what is left is
    /// refused with 429 (`AI_BUDGET_EXCEEDED`, `Retry-After` until the period
    /// resets).
    Block,
    /// Past the alert threshold, one request at a time: others are refused
    /// with 429 (`AI_BUDGET_THROTTLED`, `Retry-After: 1`) while one is in
    /// flight. Past the limit, refused as `block` refuses.
    Throttle,
    /// Never refused; `ai.budget.threshold` and `ai.budget.exceeded` are
    /// raised as the spend passes them.
    AlertOnly,
}

impl BudgetAction {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetAction::Block => "block",
            BudgetAction::Throttle => "throttle",
            BudgetAction::AlertOnly => "alert_only",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "block" => Some(BudgetAction::Block),
            "throttle" => Some(BudgetAction::Throttle),
            "alert_only" | "alert-only" | "alert" => Some(BudgetAction::AlertOnly),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(y: i64, m: u32, d: u32, h: i64) -> i64 {
        days_from_civil(y, m, d) * 86_400_000 + h * 3_600_000
    }

    #[test]
    fn periods() {
        let now = ms(2026, 12, 7, 15) + 123;
        assert_eq!(
            BudgetPeriod::Hourly.window(now),
            (ms(2026, 12, 7, 15), ms(2026, 12, 7, 16))
        );
        assert_eq!(
            BudgetPeriod::Daily.window(now),
            (ms(2026, 12, 7, 0), ms(2026, 12, 8, 0))
        );
        // 2026-12-07 is a Monday.
        assert_eq!(
            BudgetPeriod::Weekly.window(now),
            (ms(2026, 12, 7, 0), ms(2026, 12, 14, 0))
        );
        assert_eq!(
            BudgetPeriod::Weekly.window(ms(2026, 12, 13, 23)),
            (ms(2026, 12, 7, 0), ms(2026, 12, 14, 0))
        );
        assert_eq!(
            BudgetPeriod::Monthly.window(now),
            (ms(2026, 12, 1, 0), ms(2027, 1, 1, 0))
        );
        assert_eq!(
            BudgetPeriod::Monthly.window(ms(2028, 2, 29, 5)),
            (ms(2028, 2, 1, 0), ms(2028, 3, 1, 0))
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn route_block_validation_names_fields() {
        let r = AiRoute {
            provider: " ".into(),
            models: vec!["gpt 4".into()],
            budgets: vec!["a".into(), "a".into(), "bad name".into()],
            default_max_tokens: 0,
        };
        let e = r.validate().expect_err("invalid");
        let fields: Vec<&str> = e.errors.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "provider",
                "models[0]",
                "budgets[1]",
                "budgets[2]",
                "default_max_tokens"
            ]
        );
        assert!(AiRoute {
            provider: "p".into(),
            models: vec![],
            budgets: vec!["team-a".into()],
            default_max_tokens: 10
        }
        .validate()
        .is_ok());
    }

    proptest::proptest! {
        /// Every instant lies in its own period, and periods follow each other.
        #[test]
        fn windows_hold_their_instant(now in -10_000_000_000_000i64..10_000_000_000_000i64) {
            for p in [BudgetPeriod::Hourly, BudgetPeriod::Daily, BudgetPeriod::Weekly, BudgetPeriod::Monthly] {
                let (s, e) = p.window(now);
                proptest::prop_assert!(s <= now && now < e);
                proptest::prop_assert_eq!(p.window(e).0, e);
            }
        }
    }
}
