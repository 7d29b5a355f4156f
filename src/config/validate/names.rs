//! Names: job and service names, which become lock file names and parts of `application_name`.

use super::diagnostics::quote;
use super::Cx;
use crate::config::name_problem;
use crate::config::raw::Str;

/// PostgreSQL keeps this many bytes of an application_name (`corral/<service>/<job>`).
const MAX_APPLICATION_NAME: usize = crate::db::MAX_APPLICATION_NAME_BYTES;

/// What job, service and reservation names may be, for hints.
const NAME_RULE: &str = "a name is 1 to 64 letters, digits, \"_\", \".\" and \"-\", starting with a letter, digit or \"_\"";

impl Cx<'_> {
    /// A job's name (the key of `[jobs.NAME]`). Only reports: the job is checked under it anyway.
    pub(super) fn job_name(&mut self, name: &Str, has_connections: bool, service: &str) {
        let job_name = name.get_ref();
        if let Some(problem) = name_problem(job_name) {
            let hint = format!("{NAME_RULE} (the name becomes a lock file name)");
            self.error(Some(name.span()), format!("invalid job name \"{}\": {problem}", quote(job_name)), Some(hint));
        } else if job_name == "all" {
            let hint = "`corral start all` means every job: rename this one";
            self.error(Some(name.span()), "\"all\" cannot be a job name", Some(hint.into()));
        } else if has_connections {
            // Its connections are told apart by application_name, which PostgreSQL truncates.
            let app = crate::budget::env::application_name(service, job_name);
            if app.len() > MAX_APPLICATION_NAME {
                let room = MAX_APPLICATION_NAME - (app.len() - job_name.len());
                let message = format!(
                    "job name \"{job_name}\" is too long for a job with connections: its application_name \"{app}\" has {} bytes, PostgreSQL keeps {MAX_APPLICATION_NAME}",
                    app.len()
                );
                let hint = format!("shorten the job name to at most {room} bytes, or the [budget] service");
                self.error(Some(name.span()), message, Some(hint));
            }
        }
    }

    /// A name used in lock files, environment values and application_name.
    pub(super) fn name(&mut self, key: &str, v: &Str) -> Option<String> {
        let s = self.string(key, v)?;
        if let Some(problem) = name_problem(&s) {
            self.error(Some(v.span()), format!("invalid {key} \"{}\": {problem}", quote(&s)), Some(NAME_RULE.into()));
            return None;
        }
        let own = crate::budget::env::application_name(&s, crate::db::OWN_JOB);
        if key == "service" && own.len() > MAX_APPLICATION_NAME {
            let room = MAX_APPLICATION_NAME - (own.len() - s.len());
            let message = format!("service \"{s}\" is too long: corral's own application_name \"{own}\" would exceed the {MAX_APPLICATION_NAME} bytes PostgreSQL keeps");
            self.error(Some(v.span()), message, Some(format!("use a service name of at most {room} bytes")));
            return None;
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn job_names_follow_the_name_rules() {
        let long = "a".repeat(65_536);
        let e = one(&format!("[jobs.{long}]\ncommand = [\"x\"]\n"), 1, 7, "invalid job name \"aaaa");
        assert!(e.message.contains("it has 65536 bytes, at most 64"), "{}", e.message);
        assert!(e.message.len() < 200, "a long name is quoted short: {}", e.message.len());
        one(&format!("[jobs.{}]\ncommand = [\"x\"]\n", "b".repeat(256)), 1, 7, "invalid job name");
        one("[jobs.\".\"]\ncommand = [\"x\"]\n", 1, 7, "invalid job name \".\": it must start with");
        one("[jobs.\"..\"]\ncommand = [\"x\"]\n", 1, 7, "invalid job name \"..\"");
        one("[jobs.-x]\ncommand = [\"x\"]\n", 1, 7, "invalid job name \"-x\"");
        one("[jobs.\"a\\nb\"]\ncommand = [\"x\"]\n", 1, 7, "invalid job name");
        one("[jobs.all]\ncommand = [\"x\"]\n", 1, 7, "\"all\" cannot be a job name");
        ok(&format!("[jobs.{}]\ncommand = [\"x\"]\n", "c".repeat(64)));
    }

    #[test]
    fn names_must_fit_in_application_name() {
        // corral/corral/<job> must fit in PostgreSQL's 63 bytes for a job with connections.
        let name = "j".repeat(50);
        let e = one(&format!("{DB}[jobs.{name}]\ncommand = [\"x\"]\nconnections = 1\n"), 3, 7, "job name");
        assert!(e.message.contains("has 64 bytes, PostgreSQL keeps 63"), "{}", e.message);
        assert_eq!(e.hint.as_deref(), Some("shorten the job name to at most 49 bytes, or the [budget] service"));
        ok(&format!("{DB}[jobs.{}]\ncommand = [\"x\"]\nconnections = 1\n", "j".repeat(49)));
        // Without connections the name never reaches the database.
        ok(&format!("{DB}[jobs.{name}]\ncommand = [\"x\"]\n"));
        one(&format!("[budget]\nservice = \"{}\"\n", "s".repeat(49)), 2, 11, "service \"sss");
    }

    #[test]
    fn bad_names() {
        one(
            "[jobs.\"my job\"]\ncommand = [\"x\"]\n",
            1,
            7,
            "invalid job name \"my job\"",
        );
        one("[budget]\nservice = \"a/b\"\n", 2, 11, "invalid service \"a/b\"");
        one(
            &format!("{JOB}env = {{ \"A=B\" = \"1\" }}\n"),
            3,
            9,
            "invalid environment variable name \"A=B\"",
        );
        one(&format!("{JOB}user = \"\"\n"), 3, 8, "\"user\" is empty");
    }
}
