//! The control verbs' own state (SPEC §1): `start`, `stop` and `restart` answer once their
//! jobs have settled. [`Waiters::settle`] decides, from the job table, which answers are
//! ready; the actor sends them. Name checks live here too.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::admission::Awaiting;
use super::jobs::JobTable;
use crate::job::{Input, State};
use crate::protocol::{ErrorKind, JobStatus, Reply, Response};

enum WaitFor {
    /// Reply when none of these jobs is live or about to become live by a restart.
    Settled(Vec<String>),
}

struct Waiter {
    what: WaitFor,
    reply: oneshot::Sender<Response>,
    verb: &'static str,
    since: Instant,
}

/// How long `start`/`restart` wait for a job queued behind connections that are being given
/// back (a shrink not confirmed yet, the previous run's connections closing) before they answer
/// that it is queued.
const QUEUED_START_WAIT: Duration = Duration::from_secs(20);

/// The verbs waiting for their jobs to settle.
#[derive(Default)]
pub struct Waiters {
    waiting: Vec<Waiter>,
}

/// A control verb's input to the state machine, and whether the start checks for
/// duplicates (a deliberate start, not a crash restart).
pub fn verb_input(verb: &str) -> (Input, bool) {
    match verb {
        "start" => (Input::Start, true),
        "stop" => (Input::Stop, false),
        _ => (Input::Restart, true),
    }
}

impl Waiters {
    pub fn wait(&mut self, names: Vec<String>, reply: oneshot::Sender<Response>, verb: &'static str, now: Instant) {
        self.waiting.push(Waiter { what: WaitFor::Settled(names), reply, verb, since: now });
    }

    /// Answers for verbs whose jobs have settled (no longer stopping or about to hear from
    /// the database), with `status` for each job's line.
    pub fn settle(&mut self, jobs: &JobTable, now: Instant, status: impl Fn(&str) -> Option<JobStatus>) -> Vec<(oneshot::Sender<Response>, Response)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            let WaitFor::Settled(names) = &self.waiting[i].what;
            let patient = self.waiting[i].verb != "stop" && self.waiting[i].since + QUEUED_START_WAIT > now;
            let pending = names.iter().any(|n| {
                jobs.get(n).is_some_and(|j| {
                    j.stop_pending
                        || j.m.state == State::Stopping
                        || (j.m.state == State::Waiting && (j.awaiting != Awaiting::Nothing || (j.queued && patient)))
                })
            });
            if pending {
                i += 1;
                continue;
            }
            let w = self.waiting.swap_remove(i);
            let WaitFor::Settled(names) = w.what;
            let statuses: Vec<JobStatus> = names.iter().filter_map(|n| status(n)).collect();
            // Queued behind connections being given back is not a failure: it starts by itself.
            let queued = |name: &str| jobs.get(name).is_some_and(|j| j.m.state == State::Waiting && j.queued);
            let failed: Vec<String> = statuses
                .iter()
                .filter(|s| match w.verb {
                    "stop" => !matches!(s.state, State::Stopped | State::Exited | State::Fatal),
                    _ => matches!(s.state, State::Fatal | State::Waiting | State::Backoff) && !queued(&s.name),
                })
                .map(|s| format!("{}: {}{}", s.name, s.state.as_str(), s.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()))
                .collect();
            let resp = if failed.is_empty() {
                Response::ok(Reply::Actions { jobs: statuses })
            } else {
                Response::err_with(
                    ErrorKind::Refused,
                    format!("{} failed: {}", w.verb, failed.join("; ")),
                    Reply::Actions { jobs: statuses },
                )
            };
            out.push((w.reply, resp));
        }
        out
    }

}

/// No names or `all` means every job; unknown names are an error.
// The error is the reply itself, as in `protocol::decode_request`: boxing it buys nothing.
#[allow(clippy::result_large_err)]
pub fn check_names(jobs: &JobTable, names: &[String]) -> Result<Vec<String>, Response> {
    if names.is_empty() || names.iter().any(|j| j == "all") {
        return Ok(jobs.keys().cloned().collect());
    }
    // `NAME` of a job with `instances` stands for all of them (SPEC §2).
    let names = crate::watchdog::deps::expand_instances(names, &jobs.iter().map(|(n, j)| (n.clone(), j.cfg.watch.instance.as_ref().map(|i| i.base.clone()))).collect());
    let unknown: Vec<String> = names.iter().filter(|j| !jobs.contains_key(*j)).cloned().collect();
    if unknown.is_empty() {
        Ok(names)
    } else {
        Err(unknown_job(&unknown))
    }
}

pub fn unknown_job(names: &[String]) -> Response {
    Response::err(ErrorKind::UnknownJob, format!("no such job: {}", names.join(", ")))
}
