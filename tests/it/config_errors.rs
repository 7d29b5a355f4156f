//! Config errors through the real binary (SPEC §1, §2): `corral check` and
//! `corral run` exit 2 on a bad manifest, naming file:line:col and a hint.
//!
//! The manifests here are written byte for byte (no harness header) so the
//! expected line and column are exactly what the test shows.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::harness::*;

/// An undefined variable: removed from corral's environment below.
const UNDEFINED: &str = "CORRAL_IT_SURELY_UNDEFINED_VAR";

fn write(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("corral-it-cfg-").tempdir().unwrap();
    let path = dir.path().join("supervisor.toml");
    std::fs::write(&path, body).unwrap();
    (dir, path)
}

fn check(body: &str) -> Output {
    let (dir, path) = write(body);
    Command::new(bin()).arg("check").arg("-c").arg(&path).env_remove(UNDEFINED).current_dir(dir.path()).output().unwrap()
}

/// `corral check` exits 2 and reports `supervisor.toml:{at}: ...{message}...`
/// followed by a hint.
fn assert_error(body: &str, at: &str, message: &str, hint: &str) {
    let out = check(body);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "check should exit 2; stderr:\n{err}\nconfig:\n{body}");
    let needle = format!("supervisor.toml:{at}: ");
    let line = err.lines().find(|l| l.contains(&needle)).unwrap_or_else(|| panic!("no {needle:?} in stderr:\n{err}"));
    assert!(line.starts_with("error: "), "{line}");
    assert!(line.contains(message), "expected {message:?} in {line:?}");
    let after: Vec<&str> = err.lines().skip_while(|l| *l != line).skip(1).take(1).collect();
    let hint_line = after.first().copied().unwrap_or("");
    assert!(hint_line.trim_start().starts_with("hint: ") && hint_line.contains(hint), "expected hint {hint:?} after {line:?}, got {hint_line:?}");
}

#[test]
fn unknown_key_typo_names_line_column_and_the_right_key() {
    assert_error(
        "[jobs.web]\ncommand = [\"sleep\", \"1\"]\nrestrat = \"always\"\n",
        "3:1",
        "unknown key \"restrat\" (did you mean \"restart\"?)",
        "restart",
    );
}

#[test]
fn wrong_type_points_at_the_value() {
    assert_error(
        "[jobs.web]\ncommand = [\"sleep\", \"1\"]\nstart_retries = \"five\"\n",
        "3:17",
        "\"start_retries\" must be an integer",
        "integer",
    );
}

#[test]
fn empty_command_is_an_error() {
    assert_error("[jobs.web]\n  command = []\n", "2:13", "\"command\" is empty", "command = [");
}

#[test]
fn duplicate_job_names_point_at_the_second_table() {
    assert_error(
        "[jobs.web]\ncommand = [\"sleep\", \"1\"]\n\n[jobs.other]\ncommand = [\"sleep\", \"2\"]\n\n[jobs.web]\ncommand = [\"sleep\", \"3\"]\n",
        "7:1",
        "duplicate job \"web\"",
        "[jobs.web] appears twice",
    );
}

#[test]
fn undefined_variable_without_default_is_an_error() {
    assert_error(
        &format!("[jobs.web]\ncommand = [\"sleep\", \"1\"]\nenv = {{ TOKEN = \"${{{UNDEFINED}}}\" }}\n"),
        "3:17",
        &format!("undefined variable \"{UNDEFINED}\""),
        &format!("${{{UNDEFINED}:-"),
    );
}

#[test]
fn a_default_makes_an_undefined_variable_fine() {
    let out = check(&format!("[jobs.web]\ncommand = [\"sleep\", \"${{{UNDEFINED}:-7}}\"]\n"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("sleep 7"), "{}", stdout(&out));
}

#[test]
fn bad_duration_is_an_error() {
    assert_error(
        "[supervisor]\nstop_timeout = \"10s\"\n\n[jobs.web]\ncommand = [\"sleep\", \"1\"]\nstop_timeout = \"ten seconds\"\n",
        "6:16",
        "invalid duration \"ten seconds\" for \"stop_timeout\"",
        "\"500ms\"",
    );
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let body = "[supervisor]\norphans = \"kil\"\n\n[jobs.a]\ncommand = [\"sleep\", \"1\"]\nstop_signal = \"SIGTREM\"\nrestart = \"sometimes\"\n";
    let out = check(body);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for (at, msg) in [("2:11", "did you mean \"kill\""), ("6:15", "did you mean \"SIGTERM\""), ("7:11", "invalid value \"sometimes\"")] {
        assert!(err.contains(&format!("supervisor.toml:{at}: ")) && err.contains(msg), "missing {at} {msg}:\n{err}");
    }
    assert_eq!(err.lines().filter(|l| l.starts_with("error: ")).count(), 3, "{err}");
}

#[test]
fn a_valid_config_checks_ok_and_lists_the_jobs() {
    let out = check(
        "[supervisor]\nstop_timeout = \"5s\"\n\n[jobs.alpha]\ncommand = [\"sleep\", \"100\"]\n\n[jobs.beta]\ncommand = [\"sh\", \"-c\", \"exit 0\"]\nrestart = \"never\"\n",
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{text}\nstderr:\n{}", stderr(&out));
    assert!(text.contains("2 job(s)"), "{text}");
    assert!(text.lines().any(|l| l.contains("alpha") && l.contains("sleep 100")), "{text}");
    assert!(text.lines().any(|l| l.contains("beta") && l.contains("never")), "{text}");
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn run_with_a_bad_config_exits_2_without_starting() {
    let (dir, path) = write("[supervisor]\nsocket = \"sock\"\n\n[jobs.web]\ncommand = [\"sleep\", \"1\"]\nrestrat = \"always\"\n");
    let mut child = Command::new(bin())
        .arg("run")
        .arg("-c")
        .arg(&path)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    let exited = poll(Duration::from_secs(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("corral run kept running on a bad config");
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.unwrap().code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("supervisor.toml:6:1: unknown key \"restrat\""), "{err}");
    assert!(!dir.path().join("sock").exists(), "a socket was bound for a config that is invalid");
}
