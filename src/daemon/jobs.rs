//! The job table: the one record per job that the actor owns (SPEC §4, §7). Only the actor
//! holds a `JobTable`; concerns get it by reference and return what to change.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use super::admission::Awaiting;
use super::budget::{Budget, JobBudget};
use crate::config::JobConfig;
use crate::job::{Exit, Job, Policy, State};
use crate::process::lock::JobLock;
use crate::process::output::LogStore;
use crate::protocol::{ExitInfo, JobStatus, WaitReason};

/// Every job by name (sorted: `status` lists them in name order).
pub type JobTable = BTreeMap<String, JobRt>;

pub struct JobRt {
    pub cfg: JobConfig,
    pub policy: Policy,
    pub m: Job,
    pub lock: Option<JobLock>,
    pub started_at: Option<Instant>,
    /// Removed from the config: delete the entry once stopped.
    pub removed: bool,
    /// Next spawn is a deliberate start (not a crash restart): check for duplicates.
    pub check_duplicates: bool,
    /// Duplicates we already sent SIGTERM to (next time: SIGKILL).
    pub dup_termed: HashSet<i32>,
    /// The waiting reason last logged (to log each wait once).
    pub last_wait_logged: Option<String>,
    /// About to be started (autostart, reload): counted as wanting budget so
    /// the first jobs started do not take everything before the others ask.
    pub start_pending: bool,
    /// Held back until the next database answer: a fleet sync (grant or lock), or a
    /// usage reading (the previous run's connections closing). `start` waits for it.
    pub awaiting: Awaiting,
    /// Held back only until connections being given back are confirmed free: `start` waits
    /// for it (up to QUEUED_START_WAIT), then says it is queued rather than failed.
    pub queued: bool,
    /// A quota change reached this process before it could have installed its
    /// `quota_signal` handler: the signal is sent once it is old enough.
    pub signal_due: Option<i32>,
    /// Why admission held the job back last (current while the job is `waiting`, the only
    /// way into which is a hold): decides what may release it.
    pub hold: Option<WaitReason>,
    /// Asked to stop, waiting for the jobs that depend on it to stop first (`depends_on`).
    pub stop_pending: bool,
    /// The last tree-memory sample of the current process: (pid, RSS bytes).
    pub rss: Option<(i32, u64)>,
    /// The budget's bookkeeping of this job (grant, process occupancy, last reading), once
    /// the budget has seen it; changed only by `Budget`'s methods (SPEC §5).
    pub ledger: Option<JobBudget>,
}

impl JobRt {
    pub fn new(cfg: JobConfig) -> JobRt {
        JobRt {
            policy: Policy::from(&cfg),
            cfg,
            m: Job::default(),
            lock: None,
            started_at: None,
            removed: false,
            check_duplicates: true,
            dup_termed: HashSet::new(),
            last_wait_logged: None,
            start_pending: false,
            awaiting: Awaiting::Nothing,
            queued: false,
            signal_due: None,
            hold: None,
            stop_pending: false,
            rss: None,
            ledger: None,
        }
    }

    /// Running or about to start, as the budget counts it (a removed job wants nothing).
    pub fn wants_to_run(&self) -> bool {
        (self.m.state.wants_to_run() || self.start_pending) && !self.removed
    }

    /// A process exists.
    pub fn live(&self) -> bool {
        self.m.pid.is_some()
    }

    /// A transition from `from` to the machine's current state: the reason to log it with, or
    /// None when it is not worth a line. A held-back job retries every second, so each wait
    /// is logged once per reason, and the retry's own `waiting -> starting` not at all.
    pub fn note_transition(&mut self, from: State, to: State) -> Option<String> {
        let reason = self.m.reason.clone().unwrap_or_default();
        if from == State::Waiting && to == State::Starting && self.m.pid.is_none() {
            return None;
        }
        if to == State::Waiting {
            if self.last_wait_logged.as_deref() == Some(reason.as_str()) {
                return None;
            }
            self.last_wait_logged = Some(reason.clone());
        } else if self.m.pid.is_some() || to != State::Starting {
            self.last_wait_logged = None;
        }
        Some(reason)
    }
}

/// One job's line of `status` (SPEC §4).
pub fn job_status(jobs: &JobTable, budget: Option<&Budget>, logs: &LogStore, name: &str) -> Option<JobStatus> {
        let j = jobs.get(name)?;
        let live = j.m.state.is_live() && j.m.pid.is_some();
        Some(JobStatus {
            name: name.to_string(),
            state: j.m.state,
            pid: j.m.pid,
            uptime_s: if live { j.started_at.map(|t| (t.elapsed().as_secs_f64() * 10.0).round() / 10.0) } else { None },
            restarts: j.m.restarts,
            last_exit: j.m.last_exit.map(|e| match e {
                Exit::Code(c) => ExitInfo { code: Some(c), signal: None },
                Exit::Signal(s) => ExitInfo { code: None, signal: Some(s) },
            }),
            quota: budget.filter(|_| j.cfg.connections.is_some() && j.m.state.wants_to_run()).and(j.ledger.as_ref()).map(|b| b.grant),
            connections: budget.filter(|_| j.cfg.connections.is_some()).and(j.ledger.as_ref()).and_then(|b| b.live),
            reason: match j.m.state {
                State::Fatal | State::Waiting | State::Backoff => j.m.reason.clone(),
                State::Stopping if j.m.forced.is_some() => j.m.reason.clone(),
                _ => None,
            },
            output_dropped: logs.dropped(name),
            // Filled in for scheduled jobs by `daemon::schedule::Schedules::annotate`.
            next_run: None,
            schedule: None,
            ready: j.m.ready,
            restart_reason: j.m.cause.map(|c| c.as_str().to_string()),
            rss_bytes: j.rss.filter(|(pid, _)| Some(*pid) == j.m.pid).map(|(_, b)| b),
        })
    }


/// Job tables for the concerns' unit tests.
#[cfg(test)]
pub mod testing {
    use super::{JobRt, JobTable};
    use crate::config::Config;

    /// A config of `sections` (jobs and more) under a minimal `[supervisor]`.
    pub fn config(sections: &str) -> Config {
        let text = format!("[supervisor]\nsocket = \"/run/corral.sock\"\n{sections}");
        crate::config::parse(std::path::Path::new("/etc/corral/supervisor.toml"), &text, &|_| None).unwrap()
    }

    /// Every job of `config`, stopped.
    pub fn table(config: &Config) -> JobTable {
        config.jobs.values().map(|j| (j.name.clone(), JobRt::new(j.clone()))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{config, table};
    use super::*;

    #[test]
    fn a_wait_is_noted_once_per_reason_and_its_retries_not_at_all() {
        let mut jobs = table(&config("[jobs.a]\ncommand = [\"a\"]\n"));
        let j = jobs.get_mut("a").unwrap();
        j.m.reason = Some("lock: held".into());
        assert_eq!(j.note_transition(State::Starting, State::Waiting).as_deref(), Some("lock: held"));
        assert_eq!(j.note_transition(State::Waiting, State::Starting), None, "the retry");
        assert_eq!(j.note_transition(State::Starting, State::Waiting), None, "the same wait again");
        j.m.reason = Some("budget: none left".into());
        assert_eq!(j.note_transition(State::Starting, State::Waiting).as_deref(), Some("budget: none left"));
        j.m.pid = Some(42);
        j.m.reason = None;
        assert_eq!(j.note_transition(State::Waiting, State::Starting).as_deref(), Some(""), "a spawn is noted");
        assert_eq!(j.last_wait_logged, None, "and the next wait is noted again");
    }
}
