//! The schedule keys of a job (SPEC §2): `schedule`, `timezone`, `concurrency`,
//! `starting_deadline`, `catch_up`. Parsing is `crate::schedule::spec`'s (croner, chrono-tz);
//! this part only says where in the file a value is wrong and what to write instead.

use std::time::Duration;

use super::Cx;
use crate::config::raw::{RawJob, Str};
use crate::schedule::{spec, Concurrency, ScheduleConfig};

const CONCURRENCY: &[(&str, Concurrency)] = &[
    ("forbid", Concurrency::Forbid),
    ("replace", Concurrency::Replace),
    ("allow", Concurrency::Allow),
];
const DEFAULT_CONCURRENCY: Concurrency = Concurrency::Forbid;
const DEFAULT_CATCH_UP: bool = true;
const STARTING_DEADLINE_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(366 * 86_400));

impl Cx<'_> {
    /// The job's schedule, or None for an ordinary job. The other schedule keys without
    /// `schedule` are errors (they would silently do nothing).
    pub(super) fn schedule(&mut self, name: &Str, raw: &RawJob) -> Option<ScheduleConfig> {
        let Some(text) = &raw.schedule else {
            let lone: [(&str, Option<std::ops::Range<usize>>); 4] = [
                ("timezone", raw.timezone.as_ref().map(|v| v.span())),
                ("concurrency", raw.concurrency.as_ref().map(|v| v.span())),
                ("starting_deadline", raw.starting_deadline.as_ref().map(|v| v.span())),
                ("catch_up", raw.catch_up.as_ref().map(|v| v.span())),
            ];
            for (key, span) in lone {
                if let Some(span) = span {
                    let message = format!("\"{key}\" only applies to a scheduled job, and job \"{}\" has no \"schedule\"", name.get_ref());
                    self.error(Some(span), message, Some(format!("add schedule = \"*/15 * * * *\" (or \"@hourly\", \"@every 10m\"), or remove \"{key}\"")));
                }
            }
            return None;
        };
        if let Some(restart) = &raw.restart {
            if restart.get_ref().trim() == "always" {
                let message = "a scheduled job cannot have restart = \"always\": a successful run would start again at once";
                self.error(Some(restart.span()), message, Some("use \"on-failure\" (a failed run is retried until its deadline) or \"never\"".into()));
            }
        }
        let tz = match &raw.timezone {
            Some(v) => {
                let name = self.string("timezone", v)?;
                match spec::parse_tz(&name) {
                    Ok(tz) => tz,
                    Err(e) => {
                        self.error(Some(v.span()), e.message, Some(e.hint));
                        return None;
                    }
                }
            }
            None => chrono_tz::UTC,
        };
        let concurrency = self.choice("concurrency", raw.concurrency.as_ref(), CONCURRENCY, DEFAULT_CONCURRENCY);
        let starting_deadline = raw
            .starting_deadline
            .as_ref()
            .map(|v| self.duration("starting_deadline", Some(v), STARTING_DEADLINE_RANGE.0, STARTING_DEADLINE_RANGE));
        let catch_up = raw.catch_up.as_ref().map_or(DEFAULT_CATCH_UP, |v| *v.get_ref());
        let text_value = self.string("schedule", text)?;
        match spec::parse(&text_value, tz) {
            Ok(spec) => Some(ScheduleConfig { spec, concurrency, starting_deadline, catch_up }),
            Err(e) => {
                self.error(Some(text.span()), e.message, Some(e.hint));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{parse, Config, ConfigError};
    use crate::schedule::Concurrency;

    fn env(_: &str) -> Option<String> {
        None
    }

    fn ok(text: &str) -> Config {
        parse(Path::new("f.toml"), text, &env).unwrap_or_else(|e| panic!("{e}"))
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        parse(Path::new("f.toml"), text, &env).unwrap_err().0
    }

    #[test]
    fn schedule_keys_and_their_defaults() {
        let c = ok("[jobs.a]\ncommand = [\"x\"]\nschedule = \"*/15 * * * *\"\n");
        let s = c.jobs["a"].schedule.clone().unwrap();
        assert_eq!((s.spec.text.as_str(), s.spec.tz, s.concurrency, s.starting_deadline, s.catch_up), ("*/15 * * * *", chrono_tz::UTC, Concurrency::Forbid, None, true));
        let c = ok("[jobs.a]\ncommand = [\"x\"]\nschedule = \"@every 10m\"\ntimezone = \"Europe/Berlin\"\nconcurrency = \"replace\"\nstarting_deadline = \"5m\"\ncatch_up = false\n");
        let s = c.jobs["a"].schedule.clone().unwrap();
        assert_eq!(s.spec.tz, chrono_tz::Europe::Berlin);
        assert_eq!((s.concurrency, s.starting_deadline, s.catch_up), (Concurrency::Replace, Some(std::time::Duration::from_secs(300)), false));
        assert!(ok("[jobs.a]\ncommand = [\"x\"]\n").jobs["a"].schedule.is_none());
    }

    #[test]
    fn a_bad_schedule_points_at_its_value() {
        let e = errors("[jobs.a]\ncommand = [\"x\"]\nschedule = \"61 * * * *\"\n");
        assert_eq!((e[0].line, e[0].column), (3, 12), "{e:?}");
        assert!(e[0].message.contains("invalid schedule \"61 * * * *\""), "{}", e[0].message);
        assert!(e[0].hint.as_deref().unwrap().contains("@every 10m"));
        let e = errors("[jobs.a]\ncommand = [\"x\"]\nschedule = \"@hourly\"\ntimezone = \"Europe/Berln\"\n");
        assert_eq!((e[0].line, e[0].column), (4, 12));
        assert!(e[0].message.contains("unknown time zone \"Europe/Berln\""));
        let e = errors("[jobs.a]\ncommand = [\"x\"]\nschedule = \"@hourly\"\nconcurrency = \"queue\"\nstarting_deadline = \"0s\"\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].message.contains("invalid value \"queue\" for \"concurrency\""));
        assert!(e[1].message.contains("\"starting_deadline\" must be between 1s"));
    }

    #[test]
    fn schedule_keys_without_a_schedule_are_errors() {
        let e = errors("[jobs.a]\ncommand = [\"x\"]\ntimezone = \"UTC\"\ncatch_up = false\n");
        assert_eq!(e.len(), 2);
        assert!(e[0].message.contains("\"timezone\" only applies to a scheduled job"), "{}", e[0].message);
        assert_eq!((e[1].line, e[1].column), (4, 12));
    }

    #[test]
    fn a_scheduled_job_cannot_restart_always() {
        let e = errors("[jobs.a]\ncommand = [\"x\"]\nschedule = \"@daily\"\nrestart = \"always\"\n");
        assert_eq!((e[0].line, e[0].column), (4, 11));
        assert!(e[0].message.contains("cannot have restart = \"always\""));
        ok("[jobs.a]\ncommand = [\"x\"]\nschedule = \"@daily\"\nrestart = \"never\"\n");
    }
}
