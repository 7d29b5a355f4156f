//! Signal names: `"SIGTERM"`, `"term"`, `"sigusr1"`.

use super::diagnostics::{did_you_mean, quote};
use super::Cx;
use crate::config::raw::Str;

/// Signals a config may name, with or without "SIG", in any case.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("SYS", libc::SIGSYS),
];

impl Cx<'_> {
    pub(super) fn signal(&mut self, key: &str, v: &Str) -> Option<i32> {
        let s = self.string(key, v)?;
        let upper = s.trim().to_ascii_uppercase();
        let short = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some((_, number)) = SIGNALS.iter().find(|(name, _)| *name == short) {
            return Some(*number);
        }
        let names: Vec<String> = SIGNALS.iter().map(|(n, _)| format!("SIG{n}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
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

    #[test]
    fn signals_in_any_spelling() {
        for (name, number) in [
            ("SIGTERM", libc::SIGTERM),
            ("TERM", libc::SIGTERM),
            ("sigusr1", libc::SIGUSR1),
            ("kill", libc::SIGKILL),
        ] {
            let c = ok(&format!("{JOB}stop_signal = \"{name}\"\n"));
            assert_eq!(c.jobs["web"].stop_signal, number, "{name}");
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
