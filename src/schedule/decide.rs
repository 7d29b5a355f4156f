//! The decisions of a scheduled job: `step(tracker, config, clock, input) -> actions`.
//!
//! Pure. The actor reports what the job's state machine is doing ([`Activity`]), when a wake
//! it asked for fires, and the verbs people send; it executes the [`Action`]s: feed the job's
//! machine a start, stop or restart, sleep until a wall-clock time (monotonic sleeps, at most
//! a minute each, then [`Input::Wake`] re-checks against the wall clock), and persist the
//! latest occurrence handled.
//!
//! The rules that keep a schedule honest:
//! - An occurrence at or before `last_due` is never started again, so a clock that jumps back
//!   (or a wake that comes early) never fires a run twice. Only a clock set back by more than
//!   [`CLOCK_RESET`] re-bases the schedule on the new time (else it would sleep until then).
//! - Whatever passed at once (a clock jump forward, corral down, a stalled host) starts at
//!   most one run, the latest occurrence; the others are counted missed. After corral was
//!   down, `catch_up = false` starts none of them.
//! - A run that cannot start (budget, lock) within `starting_deadline` of its time is missed;
//!   without a deadline it waits until the next occurrence takes its place.
//! - Retries of a failed run (the restart policy) go on until the deadline or the next
//!   occurrence, whichever comes first; a successful run is never repeated.

use std::time::Duration;

use super::spec::Wall;
use super::{Concurrency, ScheduleConfig};

/// A clock set back by more than this re-bases the schedule on the new time.
pub const CLOCK_RESET: Duration = Duration::from_secs(86_400);
/// At most this many missed occurrences are counted at once (an every-second schedule after a
/// month down would be millions of steps); the latest is always exact.
pub const MISSED_COUNT_CAP: u64 = 10_000;

/// "Now", twice: the wall clock decides which occurrence is due, the monotonic one measures
/// how long a run lasted (a clock jump must not make a run last an hour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub wall: Wall,
    /// Since any fixed origin.
    pub mono: Duration,
}

/// What the job's state machine is doing, as the schedule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// No process and none wanted (stopped, exited, fatal).
    Idle,
    /// A start is under way but nothing runs yet: held back for budget or lock, or spawning.
    Pending,
    /// A process lives (starting, running, stopping).
    Running,
    /// Between the attempts of a failed run (backoff).
    Retrying,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed(String),
    /// Stopped by a person, a shutdown or the budget.
    Stopped,
    /// Never started before its deadline.
    Missed,
    /// Stopped for the next run (`concurrency = "replace"`).
    Replaced,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed(_) => "failed",
            Outcome::Stopped => "stopped",
            Outcome::Missed => "missed",
            Outcome::Replaced => "replaced",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Start following the schedule. `last_due`: the latest occurrence handled before (read
    /// back after a restart of corral); occurrences after it that have passed were missed while
    /// corral was down. None: start from now, nothing missed.
    Arm { last_due: Option<Wall> },
    /// Stop following the schedule (`corral stop`, shutdown). A run in progress is the
    /// machine's to stop.
    Disarm,
    /// A wake asked for by [`Action::WakeAt`] fired (maybe early, maybe late: re-check).
    Wake,
    /// `corral start`: run now, outside the schedule.
    RunNow,
    /// The machine's activity, after any change; `Outcome` when it became idle.
    Observe(Activity, Option<Outcome>),
    /// A reload changed the schedule settings: keep any run, re-plan from now.
    Replan,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start the job for the run due at `scheduled_at` (CORRAL_SCHEDULED_AT).
    Start { scheduled_at: Wall },
    /// Stop the job: its run is missed or its retries are over.
    Stop,
    /// Stop the running run and start the one due at `scheduled_at`.
    Replace { scheduled_at: Wall },
    /// Wake (send [`Input::Wake`]) at this wall-clock time.
    WakeAt(Wall),
    /// Remember that occurrences up to this one are handled (survives a restart of corral).
    Persist(Wall),
    /// `count` occurrences were missed, the latest at `latest`.
    Missed { count: u64, latest: Wall, why: &'static str },
    /// The run due at `scheduled_at` was skipped: the previous run still lives (`forbid`).
    Skipped { scheduled_at: Wall },
}

/// A finished run, for `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub scheduled_at: Wall,
    /// Started by `corral start` (or a restart), not by the schedule.
    pub manual: bool,
    /// When its first process started; None if it never did.
    pub started: Option<Wall>,
    pub duration: Option<Duration>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// Runs that started a process.
    pub runs: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub missed: u64,
    pub skipped: u64,
    /// Sum of the durations of finished runs that started.
    pub run_seconds: f64,
    pub max_run_seconds: f64,
}

/// The run in progress: from the start asked for until the machine is idle again.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    scheduled_at: Wall,
    manual: bool,
    started: Option<(Wall, Duration)>,
    /// Set when the schedule itself ends the run (missed, retries over): that is its outcome.
    ending: Option<Outcome>,
}

impl Run {
    fn new(scheduled_at: Wall, manual: bool) -> Run {
        Run { scheduled_at, manual, started: None, ending: None }
    }
}

/// One scheduled job's state. Only [`step`] changes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tracker {
    armed: bool,
    /// The next occurrence not yet handled.
    next: Option<Wall>,
    /// Occurrences at or before this are handled (started, skipped or missed).
    last_due: Option<Wall>,
    run: Option<Run>,
    /// `allow`: the occurrence due while the previous run lived.
    queued: Option<Wall>,
    activity: Option<Activity>,
    pub counters: Counters,
    pub last: Option<RunRecord>,
}

impl Tracker {
    pub fn armed(&self) -> bool {
        self.armed
    }

    /// The next run, while the schedule is followed.
    pub fn next_run(&self) -> Option<Wall> {
        self.next.filter(|_| self.armed)
    }

    /// The time the run in progress was due (CORRAL_SCHEDULED_AT).
    pub fn scheduled_at(&self) -> Option<Wall> {
        self.run.as_ref().map(|r| r.scheduled_at)
    }

    /// Between runs, following the schedule: the job's state is `scheduled`.
    pub fn between_runs(&self) -> bool {
        self.armed && self.run.is_none() && self.activity() == Activity::Idle
    }

    pub fn last_due(&self) -> Option<Wall> {
        self.last_due
    }

    fn activity(&self) -> Activity {
        self.activity.unwrap_or(Activity::Idle)
    }
}

/// Advance `t` by one input at `now`.
pub fn step(t: &mut Tracker, cfg: &ScheduleConfig, now: Clock, input: Input) -> Vec<Action> {
    let mut fx = Vec::new();
    let mut arming = false;
    match input {
        Input::Arm { last_due } => {
            arming = true;
            let was_armed = t.armed;
            t.armed = true;
            let known = match (t.last_due, last_due) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            match known {
                // Armed again while armed: nothing changes.
                Some(_) if was_armed => arming = false,
                Some(l) => t.last_due = Some(l),
                None => {
                    t.last_due = Some(now.wall);
                    fx.push(Action::Persist(now.wall));
                }
            }
            t.next = t.last_due.and_then(|l| cfg.spec.next_after(l));
        }
        Input::Disarm => {
            t.armed = false;
            t.next = None;
            t.queued = None;
        }
        Input::Wake => {}
        Input::RunNow => {
            if t.run.is_none() && t.activity() == Activity::Idle {
                t.run = Some(Run::new(now.wall, true));
                fx.push(Action::Start { scheduled_at: now.wall });
            }
        }
        Input::Observe(a, outcome) => observe(t, cfg, now, a, outcome, &mut fx),
        Input::Replan => {
            if t.armed {
                // Occurrences of the new schedule before now were never its to run.
                let base = t.last_due.map_or(now.wall, |l| l.max(now.wall));
                t.last_due = Some(base);
                t.next = cfg.spec.next_after(base);
                fx.push(Action::Persist(base));
            }
        }
    }
    evaluate(t, cfg, now, arming, &mut fx);
    fx
}

fn observe(t: &mut Tracker, cfg: &ScheduleConfig, now: Clock, a: Activity, outcome: Option<Outcome>, fx: &mut Vec<Action>) {
    let prev = t.activity();
    t.activity = Some(a);
    if a != Activity::Idle && t.run.is_none() {
        // Started outside the schedule (`restart`, a reload's restart): a run all the same.
        t.run = Some(Run::new(now.wall, true));
    }
    if a == Activity::Running && prev != Activity::Running {
        if let Some(run) = t.run.as_mut().filter(|r| r.started.is_none()) {
            run.started = Some((now.wall, now.mono));
            t.counters.runs += 1;
        }
    }
    if a == Activity::Idle && prev != Activity::Idle {
        if let Some(mut run) = t.run.take() {
            let outcome = run.ending.take().or(outcome).unwrap_or(Outcome::Stopped);
            finish(t, run, outcome, now);
        }
        if let Some(q) = t.queued.take() {
            if t.armed && !past_deadline(cfg, q, now.wall) {
                t.run = Some(Run::new(q, false));
                fx.push(Action::Start { scheduled_at: q });
            } else if t.armed {
                t.counters.missed += 1;
                fx.push(Action::Missed { count: 1, latest: q, why: "the previous run outlived its starting_deadline" });
            }
        }
    }
}

fn finish(t: &mut Tracker, run: Run, outcome: Outcome, now: Clock) {
    let duration = run.started.map(|(_, mono)| now.mono.saturating_sub(mono));
    match &outcome {
        Outcome::Succeeded => t.counters.succeeded += 1,
        Outcome::Failed(_) => t.counters.failed += 1,
        Outcome::Stopped | Outcome::Missed | Outcome::Replaced => {}
    }
    if let Some(d) = duration {
        t.counters.run_seconds += d.as_secs_f64();
        t.counters.max_run_seconds = t.counters.max_run_seconds.max(d.as_secs_f64());
    }
    t.last = Some(RunRecord { scheduled_at: run.scheduled_at, manual: run.manual, started: run.started.map(|(w, _)| w), duration, outcome });
}

fn deadline(cfg: &ScheduleConfig, at: Wall) -> Option<Wall> {
    let d = chrono::Duration::from_std(cfg.starting_deadline?).ok()?;
    at.checked_add_signed(d)
}

fn past_deadline(cfg: &ScheduleConfig, at: Wall, now: Wall) -> bool {
    deadline(cfg, at).is_some_and(|d| now > d)
}

fn evaluate(t: &mut Tracker, cfg: &ScheduleConfig, now: Clock, arming: bool, fx: &mut Vec<Action>) {
    if !t.armed {
        return;
    }
    // A clock set far back: re-base on it rather than wait for the old time to come again.
    if let Some(l) = t.last_due {
        if chrono::Duration::from_std(CLOCK_RESET).is_ok_and(|reset| now.wall + reset < l) {
            t.last_due = Some(now.wall);
            t.next = cfg.spec.next_after(now.wall);
            fx.push(Action::Persist(now.wall));
        }
    }
    // A run that has not started (or is between retries) when its deadline passes ends.
    let activity = t.activity();
    if let Some(run) = t.run.as_mut() {
        let waiting = matches!(activity, Activity::Pending | Activity::Retrying);
        if waiting && run.ending.is_none() && !run.manual && past_deadline(cfg, run.scheduled_at, now.wall) {
            if activity == Activity::Pending {
                run.ending = Some(Outcome::Missed);
                t.counters.missed += 1;
                fx.push(Action::Missed { count: 1, latest: run.scheduled_at, why: "it could not start before its starting_deadline" });
            } else {
                run.ending = Some(Outcome::Failed("failed; no retry after its starting_deadline".into()));
            }
            fx.push(Action::Stop);
        }
    }
    // Occurrences that have come.
    if let (Some(next), Some(last)) = (t.next, t.last_due) {
        if next <= now.wall {
            let (count, latest) = cfg.spec.passed(last, now.wall, MISSED_COUNT_CAP);
            let latest = latest.unwrap_or(next);
            t.last_due = Some(latest);
            t.next = cfg.spec.next_after(latest);
            fx.push(Action::Persist(latest));
            let mut missed = count.max(1) - 1;
            // After corral was down, catch_up decides about what passed meanwhile.
            let expired = past_deadline(cfg, latest, now.wall) || (arming && !cfg.catch_up && latest < now.wall);
            if expired {
                missed += 1;
            }
            if missed > 0 {
                t.counters.missed += missed;
                let why = if arming { "corral was not running" } else { "they passed at once (clock jump or stalled host)" };
                fx.push(Action::Missed { count: missed, latest, why });
            }
            if !expired {
                due(t, cfg, latest, now, fx);
            }
        }
    }
    // The next wake: the next occurrence, or the deadline of a run still waiting to start.
    let mut wake = t.next;
    if let Some(run) = t.run.as_ref().filter(|r| r.ending.is_none() && !r.manual) {
        if matches!(t.activity(), Activity::Pending | Activity::Retrying) {
            if let Some(d) = deadline(cfg, run.scheduled_at) {
                // Just past the deadline, so the wake finds it passed.
                let d = d + chrono::Duration::milliseconds(1);
                wake = Some(wake.map_or(d, |w| w.min(d)));
            }
        }
    }
    if let Some(w) = wake {
        fx.push(Action::WakeAt(w));
    }
}

/// The occurrence `at` is due now.
fn due(t: &mut Tracker, cfg: &ScheduleConfig, at: Wall, now: Clock, fx: &mut Vec<Action>) {
    let activity = t.activity();
    match (activity, t.run.as_mut()) {
        (Activity::Idle, None) => {
            t.run = Some(Run::new(at, false));
            fx.push(Action::Start { scheduled_at: at });
        }
        // Being stopped by the schedule (missed, retries over): the new run follows it.
        (_, Some(run)) if run.ending.is_some() => {
            if let Some(q) = t.queued.replace(at) {
                t.counters.skipped += 1;
                fx.push(Action::Skipped { scheduled_at: q });
            }
        }
        // Still waiting to start: the new occurrence takes its place (the old one is missed).
        (Activity::Idle | Activity::Pending, Some(run)) => {
            if !run.manual {
                t.counters.missed += 1;
                fx.push(Action::Missed { count: 1, latest: run.scheduled_at, why: "it was still waiting to start when the next run was due" });
            }
            run.scheduled_at = at;
            run.manual = false;
        }
        (Activity::Running, _) => match cfg.concurrency {
            Concurrency::Forbid => {
                t.counters.skipped += 1;
                fx.push(Action::Skipped { scheduled_at: at });
            }
            Concurrency::Replace => {
                if let Some(old) = t.run.take() {
                    finish(t, old, Outcome::Replaced, now);
                }
                t.run = Some(Run::new(at, false));
                fx.push(Action::Replace { scheduled_at: at });
            }
            Concurrency::Allow => {
                if let Some(q) = t.queued.replace(at) {
                    t.counters.skipped += 1;
                    fx.push(Action::Skipped { scheduled_at: q });
                }
            }
        },
        // A failed run between retries: its retries end, the new run starts.
        (Activity::Retrying, _) => {
            if let Some(old) = t.run.take() {
                finish(t, old, Outcome::Failed("failed; retries ended when the next run was due".into()), now);
            }
            t.run = Some(Run::new(at, false));
            fx.push(Action::Start { scheduled_at: at });
        }
        (Activity::Pending, None) => {
            t.run = Some(Run::new(at, false));
        }
    }
}

#[cfg(test)]
mod tests;
