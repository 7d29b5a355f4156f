//! Plain values: expanded strings, paths, integers, counts and choices from a fixed list.
//! Each helper reports its own error and returns None or the default.

use std::path::PathBuf;

use toml::Spanned;

use super::diagnostics::{did_you_mean, quote};
use super::{Cx, MAX_EXPANDED_TOTAL};
use crate::config::expand::expand;
use crate::config::raw::Str;

impl Cx<'_> {
    /// `${VAR}` expansion, with the file's total output bounded.
    pub(super) fn expand(&mut self, s: &str) -> Result<String, crate::config::expand::ExpandError> {
        if self.expanded > MAX_EXPANDED_TOTAL {
            return Err(crate::config::expand::ExpandError::TooLong);
        }
        let out = expand(s, self.env)?;
        self.expanded += out.len();
        if self.expanded > MAX_EXPANDED_TOTAL {
            return Err(crate::config::expand::ExpandError::TooLong);
        }
        Ok(out)
    }

    /// The expanded string.
    pub(super) fn string(&mut self, key: &str, v: &Str) -> Option<String> {
        match self.expand(v.get_ref()) {
            Ok(s) => Some(s),
            Err(e) => {
                let (message, hint) = e.describe(true);
                self.error(Some(v.span()), format!("{message} in \"{key}\""), Some(hint));
                None
            }
        }
    }

    pub(super) fn nonempty(&mut self, key: &str, v: &Str) -> Option<String> {
        let s = self.string(key, v)?;
        if s.trim().is_empty() {
            self.error(
                Some(v.span()),
                format!("\"{key}\" is empty"),
                Some(format!("give a value or remove \"{key}\"")),
            );
            return None;
        }
        Some(s)
    }

    /// A path, relative ones taken from the manifest's directory.
    pub(super) fn path(&mut self, key: &str, v: &Str) -> Option<PathBuf> {
        let s = self.nonempty(key, v)?;
        // Without "." parts, so `cwd = "."` reads as the directory itself.
        let path = self.base_dir.join(s);
        Some(
            path.components()
                .filter(|c| *c != std::path::Component::CurDir)
                .collect(),
        )
    }

    pub(super) fn choice<T: Copy>(&mut self, key: &str, v: Option<&Str>, options: &[(&str, T)], default: T) -> T {
        let Some(v) = v else { return default };
        let Some(s) = self.string(key, v) else { return default };
        if let Some((_, value)) = options.iter().find(|(name, _)| *name == s) {
            return *value;
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let message = match did_you_mean(&s, &names) {
            Some(m) => format!("invalid value \"{}\" for \"{key}\" (did you mean \"{m}\"?)", quote(&s)),
            None => format!("invalid value \"{}\" for \"{key}\"", quote(&s)),
        };
        let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        self.error(
            Some(v.span()),
            message,
            Some(format!("use one of {}", quoted.join(", "))),
        );
        default
    }

    pub(super) fn int(&mut self, key: &str, v: &Spanned<i64>, min: i64, max: i64) -> Option<i64> {
        let n = *v.get_ref();
        if (min..=max).contains(&n) {
            return Some(n);
        }
        let message = if n < min {
            format!("\"{key}\" must be at least {min}, found {n}")
        } else {
            format!("\"{key}\" must be at most {max}, found {n}")
        };
        self.error(Some(v.span()), message, None);
        None
    }

    /// A count from 0 to `max` (at most u32::MAX).
    pub(super) fn count(&mut self, key: &str, v: Option<&Spanned<i64>>, default: u32, max: i64) -> u32 {
        v.and_then(|v| self.int(key, v, 0, max.min(u32::MAX.into())))
            .map_or(default, |n| n as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn relative_paths_are_relative_to_the_manifest() {
        let c = ok("[supervisor]\nsocket = \"run/c.sock\"\nlock_dir = \"./locks\"\n[jobs.web]\ncommand = [\"w\"]\ncwd = \"app\"\n[jobs.x]\ncommand = [\"x\"]\ncwd = \".\"\n");
        assert_eq!(
            c.supervisor.socket.as_deref(),
            Some(Path::new("/etc/corral/run/c.sock"))
        );
        assert_eq!(c.supervisor.lock_dir, Path::new("/etc/corral/locks"));
        assert_eq!(c.jobs["web"].cwd.as_deref(), Some(Path::new("/etc/corral/app")));
        assert_eq!(c.jobs["x"].cwd.as_deref(), Some(Path::new("/etc/corral")));
    }

    #[test]
    fn undefined_variable() {
        let e = one(
            &format!("{JOB}cwd = \"/srv/${{APP_DIR}}\"\n"),
            3,
            7,
            "undefined variable \"APP_DIR\" in \"cwd\"",
        );
        assert!(e.hint.unwrap().contains("${APP_DIR:-value}"));
        one(
            "[jobs.web]\ncommand = [\"a\", \"${NOPE}\"]\n",
            2,
            11,
            "undefined variable \"NOPE\" in \"command\"",
        );
    }

    #[test]
    fn bad_enum_value() {
        let e = one(
            &format!("{JOB}restart = \"on_failure\"\n"),
            3,
            11,
            "invalid value \"on_failure\" for \"restart\" (did you mean \"on-failure\"?)",
        );
        assert_eq!(
            e.hint.as_deref(),
            Some("use one of \"always\", \"on-failure\", \"never\"")
        );
        one(
            "[supervisor]\nlog_format = \"yaml\"\n",
            2,
            14,
            "invalid value \"yaml\" for \"log_format\"",
        );
        one(
            "[database]\nurl = \"host=u\"\nenforce = \"kill\"\n",
            3,
            11,
            "invalid value \"kill\" for \"enforce\"",
        );
    }

    #[test]
    fn negative_counts() {
        one(
            "[database]\nurl = \"host=u\"\nadhoc_reserve = -1\n",
            3,
            17,
            "\"adhoc_reserve\" must be at least 0, found -1",
        );
        one(
            &format!("{JOB}success_codes = [256]\n"),
            3,
            18,
            "\"success_codes\" must be at most 255, found 256",
        );
        one(
            &format!("{JOB}priority = 3000000000\n"),
            3,
            12,
            "\"priority\" must be at most 1000000",
        );
    }

    #[test]
    fn every_number_has_a_sane_range() {
        one(&format!("{DB}{JOB}connections = 300000\n"), 5, 15, "connections max (300000) must be at most 262143");
        one("[database]\nurl = \"host=u\"\nmax_connections = 300000\n", 3, 19, "max_connections must be between 1 and 262143");
        one("[database]\nurl = \"host=u\"\nadhoc_reserve = 300000\n", 3, 17, "\"adhoc_reserve\" must be at most 262143");
        one("[database]\nurl = \"host=u\"\nprovider_reserve = 300000\n", 3, 20, "provider_reserve must be between 0 and 262143");
        one(&format!("{JOB}start_retries = 100000\n"), 3, 17, "\"start_retries\" must be at most 10000");
        one(&format!("{JOB}priority = -2000000\n"), 3, 12, "\"priority\" must be at least -1000000");
    }

    #[test]
    fn expanded_values_cannot_inject_toml() {
        let env = |name: &str| (name == "EVIL").then(|| "x\"]\n[jobs.evil]\ncommand = [\"rm".to_string());
        let c = build(Path::new(FILE), "[jobs.web]\ncommand = [\"echo\", \"${EVIL}\"]\n", &env).unwrap();
        assert_eq!(c.jobs.len(), 1);
        assert_eq!(c.jobs["web"].command[1], "x\"]\n[jobs.evil]\ncommand = [\"rm");
    }
}
