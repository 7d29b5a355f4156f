//! Durations: `"500ms"`, `"30s"`, `"2m"`, each within a sane range.
//!
//! Sane ranges (SPEC §7: a value that passes `check` never panics or spins the daemon). A timer
//! period has a floor so it cannot burn a core; every duration has a ceiling far below what
//! `Instant` arithmetic can overflow. Each section keeps the ranges of its own keys.

use std::time::Duration;

use super::diagnostics::quote;
use super::Cx;
use crate::config::raw::Str;

pub(super) const SEC: Duration = Duration::from_secs(1);
pub(super) const HOUR: Duration = Duration::from_secs(3600);
pub(super) const DAY: Duration = Duration::from_secs(86_400);

impl Cx<'_> {
    /// A duration within `range` (inclusive); the default when absent or wrong.
    pub(super) fn duration(&mut self, key: &str, v: Option<&Str>, default: Duration, range: (Duration, Duration)) -> Duration {
        let Some(v) = v else { return default };
        let Some(s) = self.string(key, v) else { return default };
        let d = match humantime::parse_duration(s.trim()) {
            Ok(d) => d,
            Err(e) => {
                let hint = "write a number with a unit, like \"500ms\", \"30s\" or \"2m\"";
                self.error(
                    Some(v.span()),
                    format!("invalid duration \"{}\" for \"{key}\": {e}", quote(&s)),
                    Some(hint.into()),
                );
                return default;
            }
        };
        let (min, max) = range;
        if d < min || d > max {
            let show = |d: Duration| if d.is_zero() { "0s".to_string() } else { humantime::format_duration(d).to_string() };
            let why = if d < min && min > Duration::ZERO && min <= SEC { " (shorter would keep a core busy)" } else { "" };
            self.error(
                Some(v.span()),
                format!("\"{key}\" must be between {} and {}{why}, found \"{}\"", show(min), show(max), quote(s.trim())),
                Some(format!("use a duration from {} to {}", show(min), show(max))),
            );
            return default;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn bad_duration() {
        let e = one(
            "[supervisor]\nstop_timeout = \"30\"\n",
            2,
            16,
            "invalid duration \"30\" for \"stop_timeout\"",
        );
        assert!(e.hint.unwrap().contains("\"500ms\""));
        one(
            &format!("{JOB}backoff = {{ max = \"soon\" }}\n"),
            3,
            19,
            "invalid duration \"soon\" for \"max\"",
        );
    }

    #[test]
    fn zero_period() {
        one(
            "[supervisor]\nreap_interval = \"0s\"\n",
            2,
            17,
            "\"reap_interval\" must be between 1s and 1day (shorter would keep a core busy), found \"0s\"",
        );
    }

    #[test]
    fn every_duration_has_a_sane_range() {
        // Each of these passed `check` once and then burned a core or panicked the daemon.
        one("[supervisor]\nreap_interval = \"1ns\"\n", 2, 17, "\"reap_interval\" must be between 1s and 1day");
        let e = one(
            &format!("{JOB}backoff = {{ initial = \"18446744073709551615s\" }}\n"),
            3,
            23,
            "\"initial\" must be between 0s and 1h, found \"18446744073709551615s\"",
        );
        assert_eq!(e.hint.as_deref(), Some("use a duration from 0s to 1h"));
        let cases = [
            ("[supervisor]\nstop_timeout = \"2h\"\n", "stop_timeout"),
            (&format!("{JOB}stop_timeout = \"1000years\"\n"), "stop_timeout"),
            (&format!("{JOB}healthy_after = \"2h\"\n"), "healthy_after"),
            (&format!("{JOB}backoff = {{ max = \"2days\" }}\n"), "max"),
            ("[budget]\nrebalance_interval = \"1ms\"\n", "rebalance_interval"),
            ("[budget]\nidle_after = \"400days\"\n", "idle_after"),
            ("[budget]\nfleet_grace = \"400days\"\n", "fleet_grace"),
            ("[database]\nurl = \"host=u\"\nhealth_interval = \"10ms\"\n", "health_interval"),
            ("[database]\nurl = \"host=u\"\nhealth_timeout = \"1ms\"\n", "health_timeout"),
        ];
        for (text, key) in cases {
            let errs = errors(text);
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].message.starts_with(&format!("\"{key}\" must be between")), "{}", errs[0]);
            assert!(errs[0].line > 0, "{}", errs[0]);
        }
        // The edges are in.
        ok(&format!("[supervisor]\nreap_interval = \"1s\"\n{JOB}backoff = {{ initial = \"1h\", max = \"1day\" }}\n"));
    }
}
