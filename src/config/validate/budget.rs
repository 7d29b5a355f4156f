//! `[budget]`: how the connection budget is shared (one host or a fleet).

use std::time::Duration;

use toml::{Spanned, Value};

use super::durations::{DAY, HOUR};
use super::Cx;
use crate::config::raw::RawBudget;
use crate::config::{BudgetConfig, Scope};

// Defaults. The README documents these; keep the two in step.
const DEFAULT_SCOPE: Scope = Scope::Local;
const DEFAULT_SERVICE: &str = "corral";
const DEFAULT_IDLE_AFTER: Duration = Duration::from_secs(60);
const DEFAULT_REBALANCE_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_WARN_AT: f64 = 0.8;
const DEFAULT_FLEET_GRACE: Duration = Duration::from_secs(60);

const SCOPES: &[(&str, Scope)] = &[("local", Scope::Local), ("fleet", Scope::Fleet)];

const IDLE_AFTER_RANGE: (Duration, Duration) = (Duration::ZERO, DAY);
const REBALANCE_INTERVAL_RANGE: (Duration, Duration) = (Duration::from_millis(100), HOUR);
const FLEET_GRACE_RANGE: (Duration, Duration) = (Duration::ZERO, DAY);

impl Cx<'_> {
    pub(super) fn budget(&mut self, raw: &RawBudget, has_database: bool) -> BudgetConfig {
        let scope = self.choice("scope", raw.scope.as_ref(), SCOPES, DEFAULT_SCOPE);
        if let (Scope::Fleet, false, Some(v)) = (scope, has_database, &raw.scope) {
            let hint = "a fleet budget is shared through the database: add a [database] section with its url, or use scope = \"local\"";
            self.error(
                Some(v.span()),
                "scope = \"fleet\" needs a [database] section",
                Some(hint.into()),
            );
        }
        BudgetConfig {
            scope,
            service: raw
                .service
                .as_ref()
                .and_then(|v| self.name("service", v))
                .unwrap_or_else(|| DEFAULT_SERVICE.into()),
            idle_after: self.duration("idle_after", raw.idle_after.as_ref(), DEFAULT_IDLE_AFTER, IDLE_AFTER_RANGE),
            rebalance_interval: self.duration(
                "rebalance_interval",
                raw.rebalance_interval.as_ref(),
                DEFAULT_REBALANCE_INTERVAL,
                REBALANCE_INTERVAL_RANGE,
            ),
            warn_at: raw
                .warn_at
                .as_ref()
                .and_then(|v| self.warn_at(v))
                .unwrap_or(DEFAULT_WARN_AT),
            fleet_grace: self.duration("fleet_grace", raw.fleet_grace.as_ref(), DEFAULT_FLEET_GRACE, FLEET_GRACE_RANGE),
        }
    }

    pub(super) fn warn_at(&mut self, v: &Spanned<Value>) -> Option<f64> {
        let share = match v.get_ref() {
            Value::Float(f) => *f,
            Value::Integer(n) => *n as f64,
            other => {
                let message = format!("\"warn_at\" must be a number, found {}", other.type_str());
                self.error(
                    Some(v.span()),
                    message,
                    Some("write a share of the usable budget, like warn_at = 0.8".into()),
                );
                return None;
            }
        };
        if share > 0.0 && share <= 1.0 {
            Some(share)
        } else {
            let hint = "warn_at is a share of the usable budget: 0.8 warns at 80%";
            self.error(
                Some(v.span()),
                format!("warn_at must be above 0 and at most 1, found {share}"),
                Some(hint.into()),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn warn_at_range() {
        one(
            "[budget]\nwarn_at = 0\n",
            2,
            11,
            "warn_at must be above 0 and at most 1, found 0",
        );
        one(
            "[budget]\nwarn_at = 1.5\n",
            2,
            11,
            "warn_at must be above 0 and at most 1, found 1.5",
        );
        one(
            "[budget]\nwarn_at = \"80%\"\n",
            2,
            11,
            "\"warn_at\" must be a number, found string",
        );
    }

    #[test]
    fn fleet_scope_needs_a_database() {
        one(
            "[budget]\nscope = \"fleet\"\n",
            2,
            9,
            "scope = \"fleet\" needs a [database] section",
        );
    }
}
