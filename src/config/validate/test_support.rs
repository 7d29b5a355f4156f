//! What the tests of every part of validation share: a file name, an environment, and
//! helpers that build a manifest and expect a config or its errors at a position.

pub(super) use std::collections::BTreeMap;
pub(super) use std::path::Path;
pub(super) use std::time::Duration;

pub(super) use super::build;
pub(super) use crate::config::*;

pub(super) const FILE: &str = "/etc/corral/supervisor.toml";

pub(super) fn env(name: &str) -> Option<String> {
    match name {
        "DATABASE_URL" => Some("postgres://app:s3cret@db:5432/app".into()),
        "LEVEL" => Some("debug".into()),
        _ => None,
    }
}

pub(super) fn ok(text: &str) -> Config {
    match build(Path::new(FILE), text, &env) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

pub(super) fn errors(text: &str) -> Vec<Diagnostic> {
    match build(Path::new(FILE), text, &env) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(ConfigErrors(errors)) => errors,
    }
}

/// The single error, checked to be at `line:column` and to start with `message`.
#[track_caller]
pub(super) fn one(text: &str, line: usize, column: usize, message: &str) -> Diagnostic {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = errors.into_iter().next().unwrap();
    assert_eq!((e.line, e.column), (line, column), "{e}");
    assert!(
        e.message.starts_with(message),
        "message {:?} does not start with {message:?}",
        e.message
    );
    assert_eq!(e.file, Path::new(FILE));
    e
}

pub(super) const JOB: &str = "[jobs.web]\ncommand = [\"web\"]\n";
pub(super) const DB: &str = "[database]\nurl = \"${DATABASE_URL}\"\n";

