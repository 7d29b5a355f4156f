//! `[jobs.NAME]`: one job, its command and its connection needs.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use toml::{Spanned, Value};

use super::database::MAX_CONNECTION_COUNT;
use super::diagnostics::{quote, unknown_key_message};
use super::durations::{DAY, HOUR};
use super::supervisor::STOP_TIMEOUT_RANGE;
use super::Cx;
use crate::config::raw::{RawBackoff, RawJob, Str};
use crate::config::{Backoff, Connections, JobConfig, OnDuplicate, RestartPolicy, SupervisorConfig};

// Defaults. The README documents these; keep the two in step.
// [jobs.NAME]; stop_timeout defaults to [supervisor] stop_timeout.
const DEFAULT_AUTOSTART: bool = true;
const DEFAULT_RESTART: RestartPolicy = RestartPolicy::OnFailure;
const DEFAULT_SUCCESS_CODES: &[i32] = &[0];
const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
const DEFAULT_HEALTHY_AFTER: Duration = Duration::from_secs(1);
const DEFAULT_START_RETRIES: u32 = 3;
const DEFAULT_STOP_SIGNAL: Signal = Signal::SIGTERM;
const DEFAULT_SINGLE_INSTANCE: bool = true;
const DEFAULT_ON_DUPLICATE: OnDuplicate = OnDuplicate::Refuse;
const DEFAULT_PRIORITY: i32 = 0;
const DEFAULT_CONNECTIONS_MIN: u32 = 1;
const DEFAULT_CONNECTIONS_OVERFLOW: u32 = 0;

const RESTART_POLICIES: &[(&str, RestartPolicy)] = &[
    ("always", RestartPolicy::Always),
    ("on-failure", RestartPolicy::OnFailure),
    ("never", RestartPolicy::Never),
];
const ON_DUPLICATE: &[(&str, OnDuplicate)] = &[
    ("refuse", OnDuplicate::Refuse),
    ("kill", OnDuplicate::Kill),
    ("ignore", OnDuplicate::Ignore),
];
const CONNECTIONS_KEYS: &[&str] = &["min", "max", "overflow"];
const HEALTHY_AFTER_RANGE: (Duration, Duration) = (Duration::ZERO, HOUR);
const BACKOFF_INITIAL_RANGE: (Duration, Duration) = (Duration::ZERO, HOUR);
const BACKOFF_MAX_RANGE: (Duration, Duration) = (Duration::ZERO, DAY);
const START_RETRIES_MAX: i64 = 10_000;
const PRIORITY_RANGE: (i64, i64) = (-1_000_000, 1_000_000);

impl Cx<'_> {
    pub(super) fn job(&mut self, name: &Str, raw: &RawJob, supervisor: &SupervisorConfig, has_database: bool, service: &str) -> (JobConfig, Option<u32>) {
        let job_name = name.get_ref();
        self.job_name(name, raw.connections.is_some(), service);
        let command = match &raw.command {
            Some(v) => self.command(v),
            None => {
                let hint = "add command = [\"program\", \"arg\", ...]";
                self.error(
                    Some(name.span()),
                    format!("job \"{}\" has no \"command\"", quote(job_name)),
                    Some(hint.into()),
                );
                Vec::new()
            }
        };
        // env_file first: `env` overrides it.
        let mut env = self.env_file(raw);
        for (key, value) in &raw.env {
            let k = key.get_ref();
            if k.is_empty() || k.contains(['=', '\0']) {
                let hint = "environment variable names must be non-empty and contain no \"=\"";
                self.error(
                    Some(key.span()),
                    format!("invalid environment variable name \"{}\"", quote(k)),
                    Some(hint.into()),
                );
            } else if let Some(v) = self.string(k, value) {
                env.insert(k.clone(), v);
            }
        }
        let backoff = self.backoff(raw.backoff.as_ref());
        let connections = raw.connections.as_ref().and_then(|v| {
            if !has_database {
                let hint = "add a [database] section with its url, or remove \"connections\" from this job";
                let message = format!("job \"{}\" sets \"connections\" but there is no [database] section", quote(job_name));
                self.error(Some(v.span()), message, Some(hint.into()));
            }
            self.connections(v)
        });
        let (watch, instances) = self.watch(name, raw);
        let job = JobConfig {
            name: job_name.clone(),
            command,
            cwd: raw.cwd.as_ref().and_then(|v| self.path("cwd", v)),
            env,
            user: raw.user.as_ref().and_then(|v| self.nonempty("user", v)),
            autostart: raw.autostart.unwrap_or(DEFAULT_AUTOSTART),
            restart: self.choice("restart", raw.restart.as_ref(), RESTART_POLICIES, DEFAULT_RESTART),
            success_codes: match &raw.success_codes {
                Some(codes) => codes
                    .get_ref()
                    .iter()
                    .filter_map(|c| self.int("success_codes", c, 0, 255))
                    .map(|c| c as i32)
                    .collect(),
                None => DEFAULT_SUCCESS_CODES.to_vec(),
            },
            backoff,
            healthy_after: self.duration("healthy_after", raw.healthy_after.as_ref(), DEFAULT_HEALTHY_AFTER, HEALTHY_AFTER_RANGE),
            start_retries: self.count("start_retries", raw.start_retries.as_ref(), DEFAULT_START_RETRIES, START_RETRIES_MAX),
            stop_signal: raw
                .stop_signal
                .as_ref()
                .and_then(|v| self.signal("stop_signal", v))
                .unwrap_or(DEFAULT_STOP_SIGNAL),
            stop_timeout: self.duration("stop_timeout", raw.stop_timeout.as_ref(), supervisor.stop_timeout, STOP_TIMEOUT_RANGE),
            single_instance: raw.single_instance.unwrap_or(DEFAULT_SINGLE_INSTANCE),
            on_duplicate: self.choice(
                "on_duplicate",
                raw.on_duplicate.as_ref(),
                ON_DUPLICATE,
                DEFAULT_ON_DUPLICATE,
            ),
            priority: raw
                .priority
                .as_ref()
                .and_then(|v| self.int("priority", v, PRIORITY_RANGE.0, PRIORITY_RANGE.1))
                .map_or(DEFAULT_PRIORITY, |p| p as i32),
            connections,
            quota_signal: raw.quota_signal.as_ref().and_then(|v| self.signal("quota_signal", v)),
            schedule: self.schedule(name, raw),
            watch,
        };
        (job, instances)
    }

    // ---- values with more than one form ----

    pub(super) fn command(&mut self, v: &Spanned<Value>) -> Vec<String> {
        let example = "command = [\"python\", \"app.py\", \"--all\"]";
        match v.get_ref() {
            Value::String(s) => {
                // Show their own command in array form: the fix is then a copy-paste.
                let words: Vec<String> = s.split_whitespace().map(|w| format!("{w:?}")).collect();
                let hint = if words.is_empty() {
                    example.to_string()
                } else {
                    format!("command = [{}]", words.join(", "))
                };
                let message = "\"command\" must be an array of strings, not a string (corral runs no shell)";
                self.error(Some(v.span()), message, Some(format!("write it as {hint}")));
                Vec::new()
            }
            Value::Array(items) if items.is_empty() => {
                self.error(
                    Some(v.span()),
                    "\"command\" is empty",
                    Some(format!("name the program to run: {example}")),
                );
                Vec::new()
            }
            Value::Array(items) => {
                let mut argv = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => match self.expand(s) {
                            Ok(arg) if i == 0 && arg.trim().is_empty() => {
                                let hint = format!("the first element is the program to run: {example}");
                                self.error(Some(v.span()), "the program in \"command\" is empty", Some(hint));
                            }
                            Ok(arg) => argv.push(arg),
                            Err(e) => {
                                let (message, hint) = e.describe(true);
                                self.error(Some(v.span()), format!("{message} in \"command\""), Some(hint));
                            }
                        },
                        other => {
                            let message = format!(
                                "\"command\" must hold only strings, found {} at index {i}",
                                other.type_str()
                            );
                            self.error(
                                Some(v.span()),
                                message,
                                Some(format!("quote every argument: {example}")),
                            );
                        }
                    }
                }
                argv
            }
            other => {
                let message = format!("\"command\" must be an array of strings, found {}", other.type_str());
                self.error(Some(v.span()), message, Some(format!("write it as {example}")));
                Vec::new()
            }
        }
    }

    pub(super) fn backoff(&mut self, raw: Option<&RawBackoff>) -> Backoff {
        let Some(raw) = raw else {
            return Backoff {
                initial: DEFAULT_BACKOFF_INITIAL,
                max: DEFAULT_BACKOFF_MAX,
            };
        };
        let initial = self.duration("initial", raw.initial.as_ref(), DEFAULT_BACKOFF_INITIAL, BACKOFF_INITIAL_RANGE);
        let max = self.duration("max", raw.max.as_ref(), DEFAULT_BACKOFF_MAX, BACKOFF_MAX_RANGE);
        if initial > max {
            // Point at whichever of the two was written (the other is a default).
            let span = raw.max.as_ref().or(raw.initial.as_ref()).map(|v| v.span());
            let message = format!(
                "backoff initial ({}) is longer than max ({})",
                humantime::format_duration(initial),
                humantime::format_duration(max)
            );
            self.error(span, message, Some("make initial at most max".into()));
        }
        Backoff { initial, max }
    }

    pub(super) fn connections(&mut self, v: &Spanned<Value>) -> Option<Connections> {
        let example = "connections = { min = 1, max = 4 } or connections = 4";
        let span = v.span();
        let (min, max, overflow) = match v.get_ref() {
            Value::Integer(n) => (*n, *n, 0),
            Value::Table(table) => {
                let mut ints = BTreeMap::new();
                for (key, value) in table {
                    if !CONNECTIONS_KEYS.contains(&key.as_str()) {
                        let (message, hint) =
                            unknown_key_message(key, CONNECTIONS_KEYS, "connections holds min, max and overflow");
                        self.error(Some(span.clone()), format!("{message} in \"connections\""), Some(hint));
                    } else if let Value::Integer(n) = value {
                        ints.insert(key.as_str(), *n);
                    } else {
                        let message = format!("connections \"{key}\" must be an integer, found {}", value.type_str());
                        self.error(Some(span.clone()), message, Some(example.into()));
                        return None;
                    }
                }
                let Some(&max) = ints.get("max") else {
                    let hint = format!("give the most connections this job may use: {example}");
                    self.error(Some(span), "\"connections\" needs \"max\"", Some(hint));
                    return None;
                };
                let min = ints.get("min").copied().unwrap_or(DEFAULT_CONNECTIONS_MIN.into());
                (
                    min,
                    max,
                    ints.get("overflow")
                        .copied()
                        .unwrap_or(DEFAULT_CONNECTIONS_OVERFLOW.into()),
                )
            }
            other => {
                let message = format!(
                    "\"connections\" must be an integer or a table, found {}",
                    other.type_str()
                );
                self.error(Some(span), message, Some(format!("write {example}")));
                return None;
            }
        };
        let problem = if min < 1 {
            Some((
                format!("connections min must be at least 1, found {min}"),
                "omit \"connections\" for a job that uses no database",
            ))
        } else if min > max {
            Some((
                format!("connections min ({min}) is greater than max ({max})"),
                "make min at most max",
            ))
        } else if overflow < 0 || overflow > max {
            Some((
                format!("connections overflow ({overflow}) must be between 0 and max ({max})"),
                "overflow is the part of the quota given as DB_MAX_OVERFLOW, so it cannot exceed max",
            ))
        } else if max > MAX_CONNECTION_COUNT {
            Some((
                format!("connections max ({max}) must be at most {MAX_CONNECTION_COUNT}"),
                "use a realistic connection count (PostgreSQL allows at most 262143 connections)",
            ))
        } else {
            None
        };
        if let Some((message, hint)) = problem {
            self.error(Some(span), message, Some(hint.into()));
            return None;
        }
        // All three are within 0..=max <= u32::MAX, checked above.
        Some(Connections {
            min: min as u32,
            max: max as u32,
            overflow: overflow as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn job_stop_timeout_defaults_to_the_supervisors() {
        let c = ok(&format!("[supervisor]\nstop_timeout = \"3s\"\n{JOB}"));
        assert_eq!(c.jobs["web"].stop_timeout, Duration::from_secs(3));
    }

    #[test]
    fn connections_forms() {
        let c = ok(&format!(
            "{DB}{JOB}connections = 4\n[jobs.x]\ncommand = [\"x\"]\nconnections = {{ max = 3 }}\n"
        ));
        assert_eq!(
            c.jobs["web"].connections,
            Some(Connections {
                min: 4,
                max: 4,
                overflow: 0
            })
        );
        assert_eq!(
            c.jobs["x"].connections,
            Some(Connections {
                min: 1,
                max: 3,
                overflow: 0
            })
        );
    }

    #[test]
    fn zero_durations_are_valid_where_not_a_period() {
        let c = ok(&format!(
            "{JOB}stop_timeout = \"0s\"\nhealthy_after = \"0s\"\nbackoff = {{ initial = \"0s\" }}\n"
        ));
        assert_eq!(c.jobs["web"].stop_timeout, Duration::ZERO);
    }

    #[test]
    fn missing_command() {
        let e = one("[jobs.web]\npriority = 1\n", 1, 7, "job \"web\" has no \"command\"");
        assert!(e.hint.unwrap().contains("command = ["));
        // A job made only of dotted keys has no header: the name locates it.
        one("jobs.web.priority = 1\n", 1, 6, "job \"web\" has no \"command\"");
    }

    #[test]
    fn empty_command() {
        one("[jobs.web]\ncommand = []\n", 2, 11, "\"command\" is empty");
        one(
            "[jobs.web]\ncommand = [\"\"]\n",
            2,
            11,
            "the program in \"command\" is empty",
        );
        one(
            "[jobs.web]\ncommand = [\"x\", 1]\n",
            2,
            11,
            "\"command\" must hold only strings, found integer at index 1",
        );
    }

    #[test]
    fn command_as_a_string_gets_the_array_form() {
        let e = one(
            "[jobs.web]\ncommand = \"python app.py --all\"\n",
            2,
            11,
            "\"command\" must be an array of strings",
        );
        assert_eq!(
            e.hint.as_deref(),
            Some("write it as command = [\"python\", \"app.py\", \"--all\"]")
        );
    }

    #[test]
    fn backoff_initial_above_max() {
        one(
            &format!("{JOB}backoff = {{ initial = \"2m\", max = \"1m\" }}\n"),
            3,
            35,
            "backoff initial (2m) is longer than max (1m)",
        );
        one(
            &format!("{JOB}backoff = {{ initial = \"2m\" }}\n"),
            3,
            23,
            "backoff initial (2m) is longer than max (1m)",
        );
    }

    #[test]
    fn connections_min_above_max() {
        one(
            &format!("{DB}{JOB}connections = {{ min = 5, max = 3 }}\n"),
            5,
            15,
            "connections min (5) is greater than max (3)",
        );
    }

    #[test]
    fn connections_zero() {
        one(
            &format!("{DB}{JOB}connections = {{ min = 0, max = 3 }}\n"),
            5,
            15,
            "connections min must be at least 1",
        );
        one(
            &format!("{DB}{JOB}connections = 0\n"),
            5,
            15,
            "connections min must be at least 1, found 0",
        );
    }

    #[test]
    fn connections_overflow_and_shape() {
        one(
            &format!("{DB}{JOB}connections = {{ max = 3, overflow = 4 }}\n"),
            5,
            15,
            "connections overflow (4) must be between 0 and max (3)",
        );
        one(
            &format!("{DB}{JOB}connections = {{ min = 2 }}\n"),
            5,
            15,
            "\"connections\" needs \"max\"",
        );
        one(
            &format!("{DB}{JOB}connections = \"3\"\n"),
            5,
            15,
            "\"connections\" must be an integer or a table, found string",
        );
    }

    #[test]
    fn connections_without_database() {
        let e = one(
            &format!("{JOB}connections = 2\n"),
            3,
            15,
            "job \"web\" sets \"connections\" but there is no [database] section",
        );
        assert!(e.hint.unwrap().contains("[database]"));
    }
}
