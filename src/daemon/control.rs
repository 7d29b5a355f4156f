//! The control verbs' own state (SPEC §1): `start`, `stop` and `restart` answer once their
//! jobs have settled. [`Waiters::settle`] decides, from the job table, which answers are
//! ready; the actor sends them. Name checks live here too.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use nix::sys::signal::Signal;

use super::admission::Awaiting;
use super::jobs::JobTable;
use crate::job::{Input, State};
use crate::protocol::{ErrorKind, JobStatus, Reply, Request, Response};

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

/// Who gets `corral signal` (supervisorctl's): each named job's main process. With `all`, the
/// jobs that have a process; a named job without one is refused, the others signalled.
#[derive(Debug, PartialEq)]
pub struct SignalPlan {
    pub signal: Signal,
    /// (job, main pid) to signal.
    pub targets: Vec<(String, i32)>,
    /// Named jobs that have no process: "name: not running (state)".
    pub refused: Vec<String>,
}

#[allow(clippy::result_large_err)]
pub fn signal_plan(jobs: &JobTable, names: &[String], signal: &str) -> Result<SignalPlan, Response> {
    let Some(signal) = crate::job::machine::parse_signal(signal) else {
        return Err(Response::err(ErrorKind::BadRequest, format!("unknown signal {signal:?}")));
    };
    if names.is_empty() {
        return Err(Response::err(ErrorKind::BadRequest, "signal needs job names or `all`"));
    }
    let everyone = names.iter().any(|j| j == "all");
    let mut plan = SignalPlan { signal, targets: Vec::new(), refused: Vec::new() };
    for name in check_names(jobs, names)? {
        let j = &jobs[&name];
        match j.m.pid {
            Some(pid) => plan.targets.push((name, pid)),
            None if everyone => {}
            None => plan.refused.push(format!("{name}: not running ({})", j.m.state.as_str())),
        }
    }
    if plan.targets.is_empty() && plan.refused.is_empty() {
        return Err(Response::err(ErrorKind::Refused, "signal all: no job is running"));
    }
    Ok(plan)
}

/// The answer to `corral signal`: the signalled jobs' lines, and what failed.
pub fn signal_answer(failed: &[String], signalled: Vec<JobStatus>) -> Response {
    if failed.is_empty() {
        Response::ok(Reply::Actions { jobs: signalled })
    } else {
        Response::err_with(ErrorKind::Refused, format!("signal failed: {}", failed.join("; ")), Reply::Actions { jobs: signalled })
    }
}

/// What the daemon's state says about a request before any job is looked at: the answer when
/// it is refused (a verb while shutting down or without names, a reservation name that
/// breaks the job name rules, the budget verbs without a `[database]`, a ttl that is not
/// positive), or None to go on.
pub fn refusal(req: &Request, shutting_down: bool, has_budget: bool) -> Option<Response> {
    match req {
        Request::Start { jobs } | Request::Stop { jobs } | Request::Restart { jobs } => {
            if shutting_down {
                Some(Response::shutting_down())
            } else if jobs.is_empty() {
                Some(Response::err(ErrorKind::BadRequest, format!("{} needs job names or `all`", verb_name(req))))
            } else {
                None
            }
        }
        // Reservation names reach logs and the fleet's tables: the job name rules apply.
        Request::Reserve { name, .. } | Request::Release { name } if crate::config::name_problem(name).is_some() => {
            let problem = crate::config::name_problem(name).unwrap_or_default();
            let shown: String = name.chars().take(64).collect();
            Some(Response::err(ErrorKind::BadRequest, format!("invalid reservation name {shown:?}: {problem} (letters, digits, \"_\", \".\", \"-\")")))
        }
        Request::Budget | Request::Reserve { .. } | Request::Release { .. } if !has_budget => {
            Some(Response::err(ErrorKind::NoDatabase, "the connection budget needs a [database] section in the config"))
        }
        Request::Reserve { ttl_s: Some(t), .. } if !(t.is_finite() && *t > 0.0) => Some(Response::err(ErrorKind::BadRequest, "ttl must be positive")),
        _ => None,
    }
}

/// A reservation's ttl as given ([`refusal`] checked it is positive), capped at 1e9 s.
pub fn reservation_ttl(ttl_s: Option<f64>) -> Option<Duration> {
    ttl_s.and_then(|t| Duration::try_from_secs_f64(t.min(1e9)).ok())
}

fn verb_name(req: &Request) -> &'static str {
    match req {
        Request::Start { .. } => "start",
        Request::Stop { .. } => "stop",
        _ => "restart",
    }
}

pub fn unknown_job(names: &[String]) -> Response {
    Response::err(ErrorKind::UnknownJob, format!("no such job: {}", names.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::jobs::testing;

    fn table() -> JobTable {
        let c = testing::config("[jobs.a]\ncommand = [\"a\"]\n[jobs.b]\ncommand = [\"b\"]\n[jobs.w]\ncommand = [\"w\"]\ninstances = 2\n");
        let mut jobs = testing::table(&c);
        for (name, pid) in [("a", 10), ("w.0", 20), ("w.1", 21)] {
            let j = jobs.get_mut(name).unwrap();
            j.m.state = State::Running;
            j.m.pid = Some(pid);
        }
        jobs
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn signal_targets_main_processes_and_refuses_named_jobs_without_one() {
        let jobs = table();
        let plan = signal_plan(&jobs, &names(&["all"]), "HUP").unwrap();
        assert_eq!(plan.signal, Signal::SIGHUP);
        assert_eq!(plan.targets, vec![("a".into(), 10), ("w.0".into(), 20), ("w.1".into(), 21)]);
        assert!(plan.refused.is_empty(), "with all, a job without a process is skipped");
        // A base name stands for its instances; a named job without a process is refused.
        let plan = signal_plan(&jobs, &names(&["w", "b"]), "SIGUSR1").unwrap();
        assert_eq!(plan.targets, vec![("w.0".into(), 20), ("w.1".into(), 21)]);
        assert_eq!(plan.refused, vec!["b: not running (stopped)"]);
        assert_eq!(signal_plan(&jobs, &names(&["a"]), "15").unwrap().signal, Signal::SIGTERM);
    }

    #[test]
    fn bad_signal_requests_get_their_own_error() {
        let jobs = table();
        let err = |names: &[String], sig: &str| signal_plan(&jobs, names, sig).unwrap_err();
        assert_eq!(err(&names(&["a"]), "SIGNOPE").error.unwrap().kind, ErrorKind::BadRequest);
        assert_eq!(err(&[], "HUP").error.unwrap().kind, ErrorKind::BadRequest);
        assert_eq!(err(&names(&["nope"]), "HUP").error.unwrap().kind, ErrorKind::UnknownJob);
        let mut idle = table();
        idle.values_mut().for_each(|j| j.m.pid = None);
        let none = signal_plan(&idle, &names(&["all"]), "HUP").unwrap_err();
        assert_eq!(none.error.unwrap().message, "signal all: no job is running");
    }

    #[test]
    fn requests_the_state_refuses_before_any_job_is_looked_at() {
        let kind = |req: Request, shutting_down: bool, has_budget: bool| refusal(&req, shutting_down, has_budget).map(|r| r.error.unwrap().kind);
        let start = || Request::Start { jobs: names(&["a"]) };
        assert_eq!(kind(start(), false, false), None);
        assert_eq!(kind(start(), true, true), Some(ErrorKind::ShuttingDown));
        let empty = refusal(&Request::Stop { jobs: vec![] }, false, true).unwrap().error.unwrap();
        assert_eq!((empty.kind, empty.message.as_str()), (ErrorKind::BadRequest, "stop needs job names or `all`"));
        let reserve = |name: &str, ttl_s| Request::Reserve { name: name.into(), count: 1, ttl_s };
        assert_eq!(kind(reserve("../x", None), false, false), Some(ErrorKind::BadRequest), "the name is checked first");
        assert_eq!(kind(reserve("psql", None), false, false), Some(ErrorKind::NoDatabase));
        assert_eq!(kind(Request::Budget, false, false), Some(ErrorKind::NoDatabase));
        assert_eq!(kind(reserve("psql", Some(0.0)), false, true), Some(ErrorKind::BadRequest));
        assert_eq!(kind(reserve("psql", Some(f64::NAN)), false, true), Some(ErrorKind::BadRequest));
        assert_eq!(kind(reserve("psql", Some(30.0)), false, true), None);
        assert_eq!(kind(Request::Release { name: "psql".into() }, false, true), None);
        assert_eq!(kind(Request::Health, true, false), None, "health answers while shutting down");
    }
}
