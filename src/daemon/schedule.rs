//! The schedule concern of the actor (SPEC §2, §4): one [`Tracker`] per scheduled job, fed
//! with the wall and monotonic clocks and the job machine's activity; its decisions come back
//! as [`Do`]s the actor executes (feed the machine a start, stop or restart; arm a wake).
//!
//! Owns the wakes (one pending per job, a monotonic sleep of at most [`MAX_SLEEP`], after
//! which the wall clock is read again, so a clock change is noticed within a minute and never
//! fires a run twice) and the file that remembers the latest occurrence handled, so that what
//! passed while corral was down is known after a restart (`catch_up`). The decisions are
//! `crate::schedule::decide`'s; nothing here blocks (one small file write per occurrence).
//! Never changes a job: only the actor does, with the `Do`s returned.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::{Config, JobConfig};
use crate::job::machine::describe_exit;
use crate::job::{Exit, Job, Policy, State};
use crate::protocol::{JobStatus, LastRun, ScheduleStatus};
use crate::schedule::decide::{self, RunRecord};
use crate::schedule::{rfc3339, Action, Activity, Clock, Input, Outcome, ScheduleConfig, Tracker, Wall};

/// The longest a wake sleeps before the wall clock is read again.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// What the actor does for a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Do {
    /// Feed the job `Input::Start`, as a deliberate start (duplicates are checked).
    Start(String),
    /// Feed `Input::Stop`.
    Stop(String),
    /// Feed `Input::Restart` (concurrency = "replace").
    Restart(String),
    /// Send `Event::ScheduleWake { job, gen }` after `after`.
    Wake { job: String, after: Duration, gen: u64 },
    /// Due runs that never started: the `schedule_missed` alert (SPEC §9).
    Missed { job: String, count: u64, why: String },
}

struct Entry {
    cfg: ScheduleConfig,
    t: Tracker,
    /// The generation of the one wake that counts; older ones are ignored when they fire.
    gen: u64,
    wake_at: Option<Wall>,
    activity: Activity,
}

pub struct Schedules {
    entries: BTreeMap<String, Entry>,
    /// Where the latest occurrence handled of each job is kept.
    dir: PathBuf,
    dir_ready: Option<Result<(), String>>,
    origin: Instant,
}

impl Schedules {
    pub fn new(config: &Config) -> Schedules {
        let mut s = Schedules {
            entries: BTreeMap::new(),
            dir: state_dir(config),
            dir_ready: None,
            origin: Instant::now(),
        };
        for job in config.jobs.values() {
            s.insert(job);
        }
        s
    }

    fn insert(&mut self, job: &JobConfig) {
        if let Some(cfg) = job.schedule.clone() {
            let entry = Entry { cfg, t: Tracker::default(), gen: 0, wake_at: None, activity: Activity::Idle };
            self.entries.insert(job.name.clone(), entry);
        }
    }

    pub fn contains(&self, job: &str) -> bool {
        self.entries.contains_key(job)
    }

    fn clock(&self) -> Clock {
        Clock { wall: chrono::Utc::now(), mono: self.origin.elapsed() }
    }

    /// Follow the job's schedule. `resume`: take up where corral left off (occurrences missed
    /// while it was down count, and `catch_up` applies); else start from now.
    pub fn arm(&mut self, job: &str, resume: bool) -> Vec<Do> {
        let last_due = if resume { self.read_last_due(job) } else { None };
        self.step(job, Input::Arm { last_due })
    }

    pub fn disarm(&mut self, job: &str) {
        self.step(job, Input::Disarm);
    }

    pub fn disarm_all(&mut self) {
        let names: Vec<String> = self.entries.keys().cloned().collect();
        for name in names {
            self.disarm(&name);
        }
    }

    /// `corral start JOB`: run it now, and follow the schedule again if it was stopped.
    pub fn run_now(&mut self, job: &str) -> Vec<Do> {
        let mut dos = Vec::new();
        if self.entries.get(job).is_some_and(|e| !e.t.armed()) {
            dos.extend(self.step(job, Input::Arm { last_due: None }));
        }
        dos.extend(self.step(job, Input::RunNow));
        dos
    }

    /// `corral restart JOB`: follow the schedule again if it was stopped (the restart itself
    /// is a run, outside the schedule).
    pub fn ensure_armed(&mut self, job: &str) -> Vec<Do> {
        if self.entries.get(job).is_some_and(|e| !e.t.armed()) {
            return self.step(job, Input::Arm { last_due: None });
        }
        Vec::new()
    }

    /// A wake fired; stale generations are ignored.
    pub fn wake(&mut self, job: &str, gen: u64) -> Vec<Do> {
        match self.entries.get_mut(job) {
            Some(e) if e.gen == gen => e.wake_at = None,
            _ => return Vec::new(),
        }
        self.step(job, Input::Wake)
    }

    /// After every step of the job's machine: tell the tracker when its activity changed.
    pub fn observe(&mut self, job: &str, m: &Job, policy: &Policy) -> Vec<Do> {
        let activity = activity(m);
        match self.entries.get_mut(job) {
            Some(e) if e.activity != activity => e.activity = activity,
            _ => return Vec::new(),
        }
        let outcome = (activity == Activity::Idle).then(|| outcome(m, policy));
        self.step(job, Input::Observe(activity, outcome))
    }

    /// The time the job's run in progress was due (CORRAL_SCHEDULED_AT).
    pub fn scheduled_at(&self, job: &str) -> Option<String> {
        self.entries.get(job).and_then(|e| e.t.scheduled_at()).map(rfc3339)
    }

    /// The state `status` shows for a scheduled job, when it is not the machine's: `scheduled`
    /// between runs, `stopped` once it no longer follows its schedule and no run lives (the
    /// last run's result is in its `schedule.last_run`).
    pub fn shown_state(&self, job: &str) -> Option<State> {
        let e = self.entries.get(job)?;
        if e.t.between_runs() {
            Some(State::Scheduled)
        } else if !e.t.armed() && e.activity == Activity::Idle {
            Some(State::Stopped)
        } else {
            None
        }
    }

    /// A job's `status` line with what its schedule adds (SPEC §4): the shown state, no
    /// reason between runs (the last run's is in `schedule.last_run`), `next_run`, `schedule`.
    pub fn annotate(&self, mut s: JobStatus) -> JobStatus {
        if let Some(state) = self.shown_state(&s.name) {
            s.state = state;
            s.reason = None;
        }
        s.next_run = self.next_run(&s.name);
        s.schedule = self.status(&s.name);
        s
    }

    pub fn next_run(&self, job: &str) -> Option<String> {
        self.entries.get(job).and_then(|e| e.t.next_run()).map(rfc3339)
    }

    pub fn status(&self, job: &str) -> Option<ScheduleStatus> {
        let e = self.entries.get(job)?;
        let c = &e.t.counters;
        Some(ScheduleStatus {
            schedule: e.cfg.spec.text.clone(),
            timezone: e.cfg.spec.tz.name().to_string(),
            concurrency: e.cfg.concurrency.as_str().to_string(),
            starting_deadline_s: e.cfg.starting_deadline.map(|d| d.as_secs_f64()),
            catch_up: e.cfg.catch_up,
            armed: e.t.armed(),
            next_run: e.t.next_run().map(rfc3339),
            scheduled_at: e.t.scheduled_at().map(rfc3339),
            last_run: e.t.last.as_ref().map(last_run),
            runs: c.runs,
            succeeded: c.succeeded,
            failures: c.failed,
            missed: c.missed,
            skipped: c.skipped,
            run_seconds_total: millis(c.run_seconds),
            max_run_s: millis(c.max_run_seconds),
        })
    }

    /// A reload was applied: new scheduled jobs follow their schedule (resumed, if corral ran
    /// them before), removed ones are forgotten, and changed schedules re-plan from now. A run
    /// in progress is never stopped for a schedule change.
    pub fn reload(&mut self, config: &Config) -> Vec<Do> {
        self.dir = state_dir(config);
        self.entries.retain(|name, _| config.jobs.get(name).is_some_and(|j| j.schedule.is_some()));
        let mut dos = Vec::new();
        for job in config.jobs.values() {
            let Some(cfg) = &job.schedule else { continue };
            match self.entries.get_mut(&job.name) {
                Some(e) if e.cfg == *cfg => {}
                Some(e) => {
                    e.cfg = cfg.clone();
                    // A wake armed for the old schedule no longer counts.
                    e.wake_at = None;
                    dos.extend(self.step(&job.name, Input::Replan));
                }
                None => {
                    self.insert(job);
                    if job.autostart {
                        dos.extend(self.arm(&job.name, true));
                    }
                }
            }
        }
        dos
    }

    fn step(&mut self, job: &str, input: Input) -> Vec<Do> {
        let clock = self.clock();
        let asked = input == Input::RunNow;
        let Some(e) = self.entries.get_mut(job) else { return Vec::new() };
        let actions = decide::step(&mut e.t, &e.cfg, clock, input);
        let mut dos = Vec::new();
        let mut persist = None;
        for action in actions {
            match action {
                Action::Start { scheduled_at } if asked => {
                    info!(job, scheduled_at = %rfc3339(scheduled_at), "run asked for (corral start): starting");
                    dos.push(Do::Start(job.to_string()));
                }
                Action::Start { scheduled_at } => {
                    info!(job, scheduled_at = %rfc3339(scheduled_at), "scheduled run due: starting");
                    dos.push(Do::Start(job.to_string()));
                }
                Action::Replace { scheduled_at } => {
                    info!(job, scheduled_at = %rfc3339(scheduled_at), "scheduled run due while the previous one runs: replacing it (concurrency = \"replace\")");
                    dos.push(Do::Restart(job.to_string()));
                }
                Action::Stop => dos.push(Do::Stop(job.to_string())),
                Action::WakeAt(at) => {
                    if e.wake_at == Some(at) {
                        continue;
                    }
                    e.gen += 1;
                    e.wake_at = Some(at);
                    dos.push(Do::Wake { job: job.to_string(), after: sleep_for(at, clock.wall), gen: e.gen });
                }
                Action::Persist(at) => persist = Some(at),
                Action::Missed { count, latest, why } => {
                    warn!(job, count, latest = %rfc3339(latest), "schedule_missed: {count} scheduled run(s) missed: {why}");
                    dos.push(Do::Missed { job: job.to_string(), count, why: why.to_string() });
                }
                Action::Skipped { scheduled_at } => {
                    info!(job, scheduled_at = %rfc3339(scheduled_at), "scheduled run skipped: the previous run is still running (concurrency = \"forbid\")");
                }
            }
        }
        if let Some(at) = persist {
            self.write_last_due(job, at);
        }
        dos
    }

    fn path(&self, job: &str) -> PathBuf {
        self.dir.join(format!("{job}.last"))
    }

    fn read_last_due(&mut self, job: &str) -> Option<Wall> {
        if self.ready().is_err() {
            return None;
        }
        let text = std::fs::read_to_string(self.path(job)).ok()?;
        chrono::DateTime::parse_from_rfc3339(text.trim()).ok().map(|d| d.with_timezone(&chrono::Utc))
    }

    fn write_last_due(&mut self, job: &str, at: Wall) {
        // An unusable directory was said once, when first tried: runs go on, only catch-up
        // after a restart of corral is lost.
        if self.ready().is_err() {
            return;
        }
        let path = self.path(job);
        if let Err(e) = write_atomic(&path, &format!("{}\n", rfc3339(at))) {
            warn!(job, "cannot record the last scheduled run in {}: {e}", path.display());
        }
    }

    fn ready(&mut self) -> Result<(), String> {
        if self.dir_ready.is_none() {
            let r = crate::process::lock::private_dir(&self.dir).map_err(|e| e.to_string());
            if let Err(e) = &r {
                warn!("schedule state directory unusable ({e}): runs missed while corral is down will not be caught up");
            }
            self.dir_ready = Some(r);
        }
        self.dir_ready.clone().unwrap_or(Ok(()))
    }
}

/// Beside the lock directory: `/run/corral/schedule` for `/run/corral/locks`.
fn state_dir(config: &Config) -> PathBuf {
    config.supervisor.lock_dir.with_file_name("schedule")
}

/// How long to sleep for a wake at `at`: rounded up to the millisecond (a timer that fires a
/// hair early would only re-arm), at most [`MAX_SLEEP`].
fn sleep_for(at: Wall, now: Wall) -> Duration {
    let ms = (at - now).num_milliseconds().max(0) as u64 + 1;
    Duration::from_millis(ms).min(MAX_SLEEP)
}

fn activity(m: &Job) -> Activity {
    match m.state {
        State::Stopped | State::Exited | State::Fatal | State::Scheduled => Activity::Idle,
        State::Backoff => Activity::Retrying,
        State::Waiting => Activity::Pending,
        State::Starting | State::Running | State::Stopping if m.pid.is_some() => Activity::Running,
        State::Starting | State::Running | State::Stopping => Activity::Pending,
    }
}

fn outcome(m: &Job, policy: &Policy) -> Outcome {
    match m.state {
        State::Exited => match m.last_exit {
            Some(Exit::Code(c)) if policy.success_codes.contains(&c) => Outcome::Succeeded,
            Some(e) => Outcome::Failed(describe_exit(e)),
            None => Outcome::Succeeded,
        },
        State::Fatal => Outcome::Failed(m.reason.clone().unwrap_or_else(|| "failed".into())),
        _ => Outcome::Stopped,
    }
}

fn last_run(r: &RunRecord) -> LastRun {
    LastRun {
        scheduled_at: rfc3339(r.scheduled_at),
        started_at: r.started.map(rfc3339),
        result: r.outcome.as_str().to_string(),
        reason: match &r.outcome {
            Outcome::Failed(why) => Some(why.clone()),
            _ => None,
        },
        duration_s: r.duration.map(|d| millis(d.as_secs_f64())),
        manual: r.manual,
    }
}

fn millis(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_are_capped_and_never_early() {
        let now = chrono::Utc::now();
        assert_eq!(sleep_for(now + chrono::Duration::milliseconds(250), now), Duration::from_millis(251));
        assert_eq!(sleep_for(now - chrono::Duration::seconds(5), now), Duration::from_millis(1));
        assert_eq!(sleep_for(now + chrono::Duration::days(1), now), MAX_SLEEP);
    }

    #[test]
    fn machine_states_map_to_activities() {
        let j = |state, pid| Job { state, pid, ..Job::default() };
        assert_eq!(activity(&j(State::Exited, None)), Activity::Idle);
        assert_eq!(activity(&j(State::Fatal, None)), Activity::Idle);
        assert_eq!(activity(&j(State::Waiting, None)), Activity::Pending);
        assert_eq!(activity(&j(State::Starting, None)), Activity::Pending);
        assert_eq!(activity(&j(State::Starting, Some(4))), Activity::Running);
        assert_eq!(activity(&j(State::Stopping, Some(4))), Activity::Running);
        assert_eq!(activity(&j(State::Backoff, None)), Activity::Retrying);
    }
}
