//! Signal names: `"SIGTERM"`, `"term"`, `"sigusr1"`.

use nix::sys::signal::Signal;

use super::diagnostics::{did_you_mean, quote};
use super::Cx;
use crate::config::raw::Str;

/// `HUP`, `SIGHUP` or `sighup`: a signal's name, with or without "SIG", in any case.
pub fn parse_signal_name(s: &str) -> Option<Signal> {
    let upper = s.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<Signal>().ok()
}

impl Cx<'_> {
    /// A signal's name, with or without "SIG", in any case: the names nix knows on this platform,
    /// the same that `corral signal` takes.
    pub(super) fn signal(&mut self, key: &str, v: &Str) -> Option<Signal> {
        let s = self.string(key, v)?;
        if let Some(signal) = parse_signal_name(&s) {
            return Some(signal);
        }
        let upper = s.trim().to_ascii_uppercase();
        let short = upper.strip_prefix("SIG").unwrap_or(&upper);
        let names: Vec<&str> = Signal::iterator().map(Signal::as_str).collect();
        let message = match did_you_mean(&format!("SIG{short}"), &names) {
            Some(m) => format!("unknown signal \"{}\" for \"{key}\" (did you mean \"{m}\"?)", quote(&s)),
            None => format!("unknown signal \"{}\" for \"{key}\"", quote(&s)),
        };
        let hint = "use a signal name like \"SIGTERM\", \"SIGINT\", \"SIGHUP\", \"SIGQUIT\" or \"SIGUSR1\"";
        self.error(Some(v.span()), message, Some(hint.into()));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use nix::sys::signal::Signal;

    #[test]
    fn signals_in_any_spelling() {
        for (name, signal) in [
            ("SIGTERM", Signal::SIGTERM),
            ("TERM", Signal::SIGTERM),
            ("sigusr1", Signal::SIGUSR1),
            ("kill", Signal::SIGKILL),
            (" Hup ", Signal::SIGHUP),
        ] {
            let c = ok(&format!("{JOB}stop_signal = \"{name}\"\n"));
            assert_eq!(c.jobs["web"].stop_signal, signal, "{name}");
        }
    }

    #[test]
    fn bad_signal() {
        let e = one(
            &format!("{JOB}stop_signal = \"SIGTREM\"\n"),
            3,
            15,
            "unknown signal \"SIGTREM\" for \"stop_signal\" (did you mean \"SIGTERM\"?)",
        );
        assert!(e.hint.is_some());
        one(
            &format!("{JOB}quota_signal = \"BOGUS\"\n"),
            3,
            16,
            "unknown signal \"BOGUS\" for \"quota_signal\"",
        );
    }
}
