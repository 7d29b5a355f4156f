//! The job state machine (SPEC §4): `step(job, policy, input) -> effects`.
//!
//! Pure: no clocks, no processes, no I/O. The supervisor actor feeds it inputs
//! (requests, exits from the reaper, timer expiries, outcomes of spawn
//! attempts) and executes the effects it returns. Timers carry the `epoch` they
//! were armed in; any transition that makes a pending timer meaningless bumps
//! the epoch, so stale expiries are ignored instead of cancelled.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::backoff;
use crate::config::{Backoff, JobConfig, RestartPolicy};

/// A job's state (SPEC §4). The serde names are the stable names of `status --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Stopped,
    Starting,
    Running,
    Backoff,
    Stopping,
    Exited,
    Fatal,
    Waiting,
    /// A scheduled job between runs (SPEC §4). Shown by `status`; the machine itself never
    /// enters it (an idle scheduled job's machine is stopped or exited): `daemon::schedule`
    /// shows it for a job that follows its schedule. The machine treats it as stopped.
    Scheduled,
}

impl State {
    pub const ALL: [State; 9] = [
        State::Stopped,
        State::Starting,
        State::Running,
        State::Backoff,
        State::Stopping,
        State::Exited,
        State::Fatal,
        State::Waiting,
        State::Scheduled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Stopping => "stopping",
            State::Exited => "exited",
            State::Fatal => "fatal",
            State::Waiting => "waiting",
            State::Scheduled => "scheduled",
        }
    }

    /// The state named `name` (as `as_str` writes it).
    pub fn parse(name: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// A process exists (or is about to) for this job.
    pub fn is_live(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Stopping)
    }

    /// The job wants to run: live, or about to be (re)started by corral.
    pub fn wants_to_run(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Backoff | State::Waiting)
    }
}

/// How a process ended, as the reaper saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// Why the watchdog ended a run that had not exited (SPEC §4): shown as the reason of the
/// restart, and what an alert names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The liveness probe failed `failures` times in a row.
    Unhealthy,
    /// No output line for `stall_after`.
    Stalled,
    /// The process tree's RSS went above `memory_max`.
    Memory,
}

impl Cause {
    pub const ALL: [Cause; 3] = [Cause::Unhealthy, Cause::Stalled, Cause::Memory];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Unhealthy => "unhealthy",
            Cause::Stalled => "stalled",
            Cause::Memory => "memory",
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The slice of the job's config the machine decides with.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub restart: RestartPolicy,
    pub success_codes: Vec<i32>,
    pub backoff: Backoff,
    pub healthy_after: Duration,
    pub start_retries: u32,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    /// A `ready` probe decides readiness; without one, `healthy_after` does.
    pub ready_probe: bool,
}

impl From<&JobConfig> for Policy {
    fn from(c: &JobConfig) -> Self {
        Policy {
            restart: c.restart,
            success_codes: c.success_codes.clone(),
            backoff: c.backoff,
            healthy_after: c.healthy_after,
            start_retries: c.start_retries,
            stop_signal: c.stop_signal,
            stop_timeout: c.stop_timeout,
            ready_probe: c.watch.ready.is_some(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerKind {
    /// `healthy_after` passed: starting → running, backoff reset.
    Healthy,
    /// Backoff delay over: spawn again.
    Backoff,
    /// `stop_timeout` passed: SIGKILL the group.
    StopTimeout,
    /// Retry a start held back by a lock, duplicate or the budget.
    RetryWait,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `corral start`, autostart, reload: clears fatal and the failure count.
    Start,
    Stop,
    /// Stop if live, then start again.
    Restart,
    /// The actor spawned the process.
    Spawned { pid: i32 },
    /// fork/exec failed (missing binary, bad cwd, unknown user).
    SpawnFailed { error: String },
    /// The start is held back (lock, duplicate, budget); retried later.
    Blocked { reason: String },
    /// The reaper collected the job's main process, which ran for `uptime`.
    /// Uptime (not only the Healthy timer) decides whether the start counted:
    /// under load the exit can be processed before the timer event.
    Exited(Exit, Duration),
    Timer { kind: TimerKind, epoch: u64 },
    /// Second Ctrl-C: no more grace.
    KillNow,
    /// The ready probe of the current process passed.
    Ready,
    /// The watchdog found the run hung, unhealthy or too big: stop it (stop_signal,
    /// stop_timeout), then restart it as after a crash, with `cause` as the reason.
    Force { cause: Cause, detail: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Acquire lock/budget, check duplicates, spawn; answer with Spawned, SpawnFailed or Blocked.
    Spawn,
    /// Send a signal to the process group `pgid`.
    Signal { pgid: i32, signal: Signal },
    ArmTimer { kind: TimerKind, after: Duration, epoch: u64 },
    /// The job no longer needs its lock and connection grant.
    Release,
    /// Kill what is left of the exited process's group (`orphans = "kill"`).
    ReapGroup { pgid: i32 },
}

/// Per-job runtime record: everything the machine decides from.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub state: State,
    pub pid: Option<i32>,
    /// Consecutive starts that ended before `healthy_after`.
    pub failures: u32,
    /// Automatic restarts since corral started the job.
    pub restarts: u32,
    pub last_exit: Option<Exit>,
    pub reason: Option<String>,
    pub epoch: u64,
    /// Set by `Restart` while stopping: start again once stopped.
    pub restart_after_stop: bool,
    /// The current process is ready (SPEC §2 `ready`); false without a process.
    pub ready: bool,
    /// A watchdog stop in progress: once the process is gone, restart as after a crash.
    pub forced: Option<Cause>,
    /// The cause of the last restart the watchdog forced (`restart_reason` in status).
    pub cause: Option<Cause>,
}

impl Default for Job {
    fn default() -> Self {
        Job {
            state: State::Stopped,
            pid: None,
            failures: 0,
            restarts: 0,
            last_exit: None,
            reason: None,
            epoch: 0,
            restart_after_stop: false,
            ready: false,
            forced: None,
            cause: None,
        }
    }
}

/// How often a start held back by a lock or duplicate is retried.
pub const RETRY_WAIT: Duration = Duration::from_secs(1);

/// Advance `job` by one input. `jitter` in `[0,1)` randomises backoff.
pub fn step(job: &mut Job, policy: &Policy, input: Input, jitter: f64) -> Vec<Effect> {
    let fx = transition(job, policy, input, jitter);
    // Readiness belongs to a process, a pending watchdog stop to a stopping one.
    if job.pid.is_none() {
        job.ready = false;
    }
    if job.state != State::Stopping {
        job.forced = None;
    }
    fx
}

fn transition(job: &mut Job, policy: &Policy, input: Input, jitter: f64) -> Vec<Effect> {
    let mut fx = Vec::new();
    match input {
        Input::Start => match job.state {
            State::Stopped | State::Exited | State::Fatal | State::Backoff | State::Waiting | State::Scheduled => {
                job.failures = 0;
                job.reason = None;
                begin_start(job, &mut fx);
            }
            State::Starting | State::Running => {}
            State::Stopping => job.restart_after_stop = true,
        },
        Input::Restart => match job.state {
            State::Starting | State::Running => {
                job.restart_after_stop = true;
                begin_stop(job, policy, &mut fx);
            }
            State::Stopping => job.restart_after_stop = true,
            _ => return transition(job, policy, Input::Start, jitter),
        },
        Input::Stop => {
            job.restart_after_stop = false;
            job.forced = None;
            match job.state {
                State::Starting | State::Running => begin_stop(job, policy, &mut fx),
                State::Backoff | State::Waiting => {
                    job.epoch += 1;
                    job.state = State::Stopped;
                    job.reason = None;
                    fx.push(Effect::Release);
                }
                State::Stopping | State::Stopped | State::Exited | State::Fatal | State::Scheduled => {}
            }
        }
        Input::KillNow => {
            if let (State::Stopping | State::Starting | State::Running, Some(pid)) = (job.state, job.pid) {
                fx.push(Effect::Signal { pgid: pid, signal: Signal::SIGKILL });
            }
        }
        Input::Spawned { pid } => {
            job.pid = Some(pid);
            job.reason = None;
            job.epoch += 1;
            job.ready = false;
            if policy.healthy_after.is_zero() {
                job.state = State::Running;
                job.failures = 0;
                job.ready = !policy.ready_probe;
            } else {
                job.state = State::Starting;
                fx.push(Effect::ArmTimer { kind: TimerKind::Healthy, after: policy.healthy_after, epoch: job.epoch });
            }
        }
        Input::SpawnFailed { error } => {
            job.pid = None;
            job.reason = Some(error);
            failed_start(job, policy, jitter, &mut fx);
        }
        Input::Blocked { reason } => {
            job.pid = None;
            job.epoch += 1;
            job.state = State::Waiting;
            job.reason = Some(reason);
            fx.push(Effect::ArmTimer { kind: TimerKind::RetryWait, after: RETRY_WAIT, epoch: job.epoch });
        }
        Input::Exited(exit, uptime) => {
            if job.state == State::Starting && job.pid.is_some() && uptime >= policy.healthy_after {
                job.state = State::Running;
                job.failures = 0;
            }
            job.ready = false;
            on_exit(job, policy, exit, jitter, &mut fx)
        }
        Input::Timer { kind, epoch } => {
            if epoch != job.epoch {
                return fx;
            }
            match (kind, job.state) {
                (TimerKind::Healthy, State::Starting) => {
                    job.state = State::Running;
                    job.failures = 0;
                    job.ready |= !policy.ready_probe && job.pid.is_some();
                }
                (TimerKind::Backoff, State::Backoff) | (TimerKind::RetryWait, State::Waiting) => {
                    begin_start(job, &mut fx);
                }
                (TimerKind::StopTimeout, State::Stopping) => {
                    if let Some(pid) = job.pid {
                        fx.push(Effect::Signal { pgid: pid, signal: Signal::SIGKILL });
                    }
                }
                _ => {}
            }
        }
        Input::Ready => {
            if matches!(job.state, State::Starting | State::Running) && job.pid.is_some() {
                job.ready = true;
            }
        }
        Input::Force { cause, detail } => {
            if matches!(job.state, State::Starting | State::Running) && job.pid.is_some() {
                job.forced = Some(cause);
                job.cause = Some(cause);
                job.reason = Some(format!("{cause}: {detail}"));
                job.restart_after_stop = false;
                begin_stop(job, policy, &mut fx);
            }
        }
    }
    fx
}

fn begin_start(job: &mut Job, fx: &mut Vec<Effect>) {
    job.epoch += 1;
    job.state = State::Starting;
    job.pid = None;
    fx.push(Effect::Spawn);
}

fn begin_stop(job: &mut Job, policy: &Policy, fx: &mut Vec<Effect>) {
    let Some(pid) = job.pid else {
        job.state = State::Stopped;
        fx.push(Effect::Release);
        return;
    };
    job.epoch += 1;
    job.state = State::Stopping;
    fx.push(Effect::Signal { pgid: pid, signal: policy.stop_signal });
    // A stopped (SIGSTOP, Ctrl-Z) group would only act on the stop signal when continued:
    // continue it, or every stop of a paused job waits for SIGKILL.
    if !matches!(policy.stop_signal, Signal::SIGKILL | Signal::SIGCONT) {
        fx.push(Effect::Signal { pgid: pid, signal: Signal::SIGCONT });
    }
    fx.push(Effect::ArmTimer { kind: TimerKind::StopTimeout, after: policy.stop_timeout, epoch: job.epoch });
}

fn on_exit(job: &mut Job, policy: &Policy, exit: Exit, jitter: f64, fx: &mut Vec<Effect>) {
    let Some(pid) = job.pid.take() else { return };
    job.last_exit = Some(exit);
    fx.push(Effect::ReapGroup { pgid: pid });
    match job.state {
        State::Stopping => {
            // Keep the epoch: the pending StopTimeout is harmless once pid is None.
            job.state = State::Stopped;
            let forced = job.forced.take();
            if std::mem::take(&mut job.restart_after_stop) {
                job.reason = None;
                job.failures = 0;
                begin_start(job, fx);
            } else if forced.is_some() && policy.restart != RestartPolicy::Never {
                // A watchdog restart counts as a restart after a crash: backoff, reason kept.
                job.restarts += 1;
                schedule_restart(job, policy, 1, jitter, fx);
            } else {
                fx.push(Effect::Release);
            }
        }
        State::Starting | State::Running => {
            let success = matches!(exit, Exit::Code(c) if policy.success_codes.contains(&c));
            let restart = match policy.restart {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !success,
                RestartPolicy::Never => false,
            };
            if !restart {
                job.epoch += 1;
                job.state = State::Exited;
                job.reason = None;
                fx.push(Effect::Release);
                return;
            }
            if job.state == State::Running {
                // A healthy run ended: start a fresh backoff series.
                job.failures = 0;
                job.restarts += 1;
                schedule_restart(job, policy, 1, jitter, fx);
            } else {
                job.reason = Some(format!("exited before healthy_after ({})", describe_exit(exit)));
                failed_start(job, policy, jitter, fx);
            }
        }
        // No process is tracked in these states; nothing to do.
        State::Stopped | State::Backoff | State::Exited | State::Fatal | State::Waiting | State::Scheduled => {}
    }
}

fn failed_start(job: &mut Job, policy: &Policy, jitter: f64, fx: &mut Vec<Effect>) {
    job.failures += 1;
    if job.failures > policy.start_retries {
        job.epoch += 1;
        job.state = State::Fatal;
        let last = job.reason.take().unwrap_or_default();
        job.reason = Some(format!("{} failed starts in a row; last: {last}", job.failures));
        fx.push(Effect::Release);
        return;
    }
    job.restarts += 1;
    schedule_restart(job, policy, job.failures, jitter, fx);
}

fn schedule_restart(job: &mut Job, policy: &Policy, attempt: u32, jitter: f64, fx: &mut Vec<Effect>) {
    let after = backoff::delay(policy.backoff.initial, policy.backoff.max, attempt, jitter);
    if after.is_zero() {
        begin_start(job, fx);
        return;
    }
    job.epoch += 1;
    job.state = State::Backoff;
    fx.push(Effect::ArmTimer { kind: TimerKind::Backoff, after, epoch: job.epoch });
}

pub fn describe_exit(exit: Exit) -> String {
    match exit {
        Exit::Code(c) => format!("exit code {c}"),
        Exit::Signal(s) => format!("killed by {}", signal_name(s)),
    }
}

pub fn signal_name(sig: i32) -> String {
    Signal::try_from(sig).map(|s| s.as_str().to_string()).unwrap_or_else(|_| format!("signal {sig}"))
}

/// `HUP`, `SIGHUP`, `sighup` or `1`, as `kill` takes them.
pub fn parse_signal(s: &str) -> Option<Signal> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    crate::config::parse_signal_name(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_as_kill_takes_them() {
        for s in ["HUP", "SIGHUP", "sighup", "1", " hup "] {
            assert_eq!(parse_signal(s), Some(Signal::SIGHUP), "{s}");
        }
        assert_eq!(parse_signal("USR1"), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        for s in ["", "SIG", "HUPP", "0", "999", "-1", "SIGRTMIN+1"] {
            assert_eq!(parse_signal(s), None, "{s}");
        }
        assert_eq!(parse_signal(&signal_name(libc::SIGTERM)), Some(Signal::SIGTERM));
    }

    fn policy() -> Policy {
        Policy {
            restart: RestartPolicy::OnFailure,
            success_codes: vec![0],
            backoff: Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(60) },
            healthy_after: Duration::from_secs(10),
            start_retries: 2,
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(5),
            ready_probe: false,
        }
    }

    fn started(p: &Policy) -> Job {
        let mut j = Job::default();
        assert_eq!(step(&mut j, p, Input::Start, 0.0), vec![Effect::Spawn]);
        step(&mut j, p, Input::Spawned { pid: 42 }, 0.0);
        j
    }

    #[test]
    fn crash_loop_backs_off_then_goes_fatal() {
        let p = policy();
        let mut j = started(&p);
        let mut delays = vec![];
        for _ in 0..2 {
            let fx = step(&mut j, &p, Input::Exited(Exit::Code(1), Duration::ZERO), 0.0);
            assert_eq!(j.state, State::Backoff);
            let (after, epoch) = fx
                .iter()
                .find_map(|e| match e {
                    Effect::ArmTimer { kind: TimerKind::Backoff, after, epoch } => Some((*after, *epoch)),
                    _ => None,
                })
                .unwrap();
            delays.push(after);
            assert_eq!(step(&mut j, &p, Input::Timer { kind: TimerKind::Backoff, epoch }, 0.0), vec![Effect::Spawn]);
            step(&mut j, &p, Input::Spawned { pid: 43 }, 0.0);
        }
        assert!(delays[1] > delays[0]);
        let fx = step(&mut j, &p, Input::Exited(Exit::Code(1), Duration::ZERO), 0.0);
        assert_eq!(j.state, State::Fatal);
        assert!(fx.contains(&Effect::Release));
        assert!(j.reason.as_deref().unwrap().contains("3 failed starts"));
        // start clears fatal
        assert_eq!(step(&mut j, &p, Input::Start, 0.0), vec![Effect::Spawn]);
        assert_eq!(j.failures, 0);
    }

    #[test]
    fn healthy_run_resets_failures() {
        let p = policy();
        let mut j = started(&p);
        step(&mut j, &p, Input::Exited(Exit::Code(1), Duration::ZERO), 0.0);
        let e = j.epoch;
        step(&mut j, &p, Input::Timer { kind: TimerKind::Backoff, epoch: e }, 0.0);
        step(&mut j, &p, Input::Spawned { pid: 7 }, 0.0);
        assert_eq!(j.failures, 1);
        let e = j.epoch;
        step(&mut j, &p, Input::Timer { kind: TimerKind::Healthy, epoch: e }, 0.0);
        assert_eq!((j.state, j.failures), (State::Running, 0));
        let fx = step(&mut j, &p, Input::Exited(Exit::Signal(libc::SIGSEGV), Duration::ZERO), 0.0);
        assert!(fx.contains(&Effect::ArmTimer { kind: TimerKind::Backoff, after: Duration::from_secs(1), epoch: j.epoch }));
    }

    #[test]
    fn success_code_under_on_failure_is_exited() {
        let mut p = policy();
        p.success_codes = vec![0, 3];
        let mut j = started(&p);
        step(&mut j, &p, Input::Exited(Exit::Code(3), Duration::ZERO), 0.0);
        assert_eq!(j.state, State::Exited);
        assert_eq!(j.failures, 0);
    }

    #[test]
    fn never_stays_exited_even_on_failure() {
        let mut p = policy();
        p.restart = RestartPolicy::Never;
        let mut j = started(&p);
        step(&mut j, &p, Input::Exited(Exit::Code(9), Duration::ZERO), 0.0);
        assert_eq!(j.state, State::Exited);
    }

    #[test]
    fn zero_backoff_respawns_immediately() {
        let mut p = policy();
        p.backoff.initial = Duration::ZERO;
        p.restart = RestartPolicy::Always;
        let mut j = started(&p);
        let fx = step(&mut j, &p, Input::Exited(Exit::Code(0), Duration::ZERO), 0.0);
        assert!(fx.contains(&Effect::Spawn));
        assert_eq!(j.state, State::Starting);
    }

    #[test]
    fn no_sigcont_after_sigkill_as_the_stop_signal() {
        let p = Policy { stop_signal: Signal::SIGKILL, ..policy() };
        let mut j = started(&p);
        let fx = step(&mut j, &p, Input::Stop, 0.0);
        assert!(!fx.contains(&Effect::Signal { pgid: 42, signal: Signal::SIGCONT }), "{fx:?}");
    }

    #[test]
    fn stop_signals_group_then_kills_after_timeout() {
        let p = policy();
        let mut j = started(&p);
        let fx = step(&mut j, &p, Input::Stop, 0.0);
        assert_eq!(fx[0], Effect::Signal { pgid: 42, signal: Signal::SIGTERM });
        // A group paused with SIGSTOP acts on the stop signal only once continued.
        assert_eq!(fx[1], Effect::Signal { pgid: 42, signal: Signal::SIGCONT });
        let e = j.epoch;
        let fx = step(&mut j, &p, Input::Timer { kind: TimerKind::StopTimeout, epoch: e }, 0.0);
        assert_eq!(fx, vec![Effect::Signal { pgid: 42, signal: Signal::SIGKILL }]);
        step(&mut j, &p, Input::Exited(Exit::Signal(libc::SIGKILL), Duration::ZERO), 0.0);
        assert_eq!(j.state, State::Stopped);
    }

    #[test]
    fn restart_stops_then_starts() {
        let p = policy();
        let mut j = started(&p);
        step(&mut j, &p, Input::Restart, 0.0);
        assert_eq!(j.state, State::Stopping);
        let fx = step(&mut j, &p, Input::Exited(Exit::Signal(libc::SIGTERM), Duration::ZERO), 0.0);
        assert!(fx.contains(&Effect::Spawn));
        assert_eq!(j.state, State::Starting);
    }

    #[test]
    fn stale_timers_are_ignored() {
        let p = policy();
        let mut j = started(&p);
        let old = j.epoch;
        step(&mut j, &p, Input::Stop, 0.0);
        step(&mut j, &p, Input::Exited(Exit::Code(0), Duration::ZERO), 0.0);
        assert!(step(&mut j, &p, Input::Timer { kind: TimerKind::Healthy, epoch: old }, 0.0).is_empty());
        assert_eq!(j.state, State::Stopped);
    }

    #[test]
    fn a_forced_stop_restarts_with_its_cause_and_backoff() {
        let p = policy();
        let mut j = started(&p);
        let fx = step(&mut j, &p, Input::Force { cause: Cause::Stalled, detail: "no output for 10m".into() }, 0.0);
        assert_eq!(fx[0], Effect::Signal { pgid: 42, signal: Signal::SIGTERM });
        assert!(fx.iter().any(|e| matches!(e, Effect::ArmTimer { kind: TimerKind::StopTimeout, .. })));
        assert_eq!(j.state, State::Stopping);
        let fx = step(&mut j, &p, Input::Exited(Exit::Signal(libc::SIGTERM), Duration::from_secs(700)), 0.0);
        assert_eq!(j.state, State::Backoff);
        assert_eq!((j.restarts, j.cause), (1, Some(Cause::Stalled)));
        assert_eq!(j.reason.as_deref(), Some("stalled: no output for 10m"));
        assert!(!fx.contains(&Effect::Release));
        // a user's stop during the forced stop wins
        let mut j = started(&p);
        step(&mut j, &p, Input::Force { cause: Cause::Memory, detail: "2 GiB".into() }, 0.0);
        step(&mut j, &p, Input::Stop, 0.0);
        step(&mut j, &p, Input::Exited(Exit::Signal(libc::SIGTERM), Duration::ZERO), 0.0);
        assert_eq!(j.state, State::Stopped);
        // restart = "never": the hung run is stopped, not restarted
        let p = Policy { restart: RestartPolicy::Never, ..policy() };
        let mut j = started(&p);
        step(&mut j, &p, Input::Force { cause: Cause::Unhealthy, detail: "3 failures".into() }, 0.0);
        let fx = step(&mut j, &p, Input::Exited(Exit::Signal(libc::SIGTERM), Duration::ZERO), 0.0);
        assert_eq!(j.state, State::Stopped);
        assert!(fx.contains(&Effect::Release));
    }

    #[test]
    fn ready_comes_from_the_probe_or_healthy_after() {
        let p = policy();
        let mut j = started(&p);
        assert!(!j.ready);
        let e = j.epoch;
        step(&mut j, &p, Input::Timer { kind: TimerKind::Healthy, epoch: e }, 0.0);
        assert!(j.ready);
        let p = Policy { ready_probe: true, ..policy() };
        let mut j = started(&p);
        let e = j.epoch;
        step(&mut j, &p, Input::Timer { kind: TimerKind::Healthy, epoch: e }, 0.0);
        assert!(!j.ready);
        step(&mut j, &p, Input::Ready, 0.0);
        assert!(j.ready);
        // readiness drops with the process
        step(&mut j, &p, Input::Exited(Exit::Code(1), Duration::from_secs(60)), 0.0);
        assert!(!j.ready);
    }

    /// Walk every (state, input) pair: nothing panics, and the machine's
    /// invariants hold after each step.
    #[test]
    fn every_state_input_pair_keeps_invariants() {
        let p = policy();
        let inputs = |epoch: u64| {
            vec![
                Input::Start,
                Input::Stop,
                Input::Restart,
                Input::Spawned { pid: 9 },
                Input::SpawnFailed { error: "ENOENT".into() },
                Input::Blocked { reason: "lock".into() },
                Input::Exited(Exit::Code(1), Duration::ZERO),
                Input::Exited(Exit::Code(0), Duration::ZERO),
                Input::Exited(Exit::Signal(9), Duration::ZERO),
                Input::KillNow,
                Input::Timer { kind: TimerKind::Healthy, epoch },
                Input::Timer { kind: TimerKind::Backoff, epoch },
                Input::Timer { kind: TimerKind::StopTimeout, epoch },
                Input::Timer { kind: TimerKind::RetryWait, epoch },
                Input::Ready,
                Input::Force { cause: Cause::Unhealthy, detail: "probe failed".into() },
                Input::Force { cause: Cause::Stalled, detail: "no output".into() },
                Input::Force { cause: Cause::Memory, detail: "2 GiB".into() },
            ]
        };
        let forced_states = [None, Some(Cause::Stalled)];
        for (state, pid, ready, forced, ready_probe) in State::ALL
            .into_iter()
            .flat_map(|s| [None, Some(5)].map(move |p| (s, p)))
            .flat_map(|(s, p)| [false, true].map(move |r| (s, p, r)))
            .flat_map(|(s, p, r)| forced_states.map(move |f| (s, p, r, f)))
            .flat_map(|(s, p, r, f)| [false, true].map(move |rp| (s, p, r, f, rp)))
        {
            // Reachable combinations only: a pid only while live, ready only with a pid,
            // a pending watchdog stop only while stopping.
            if (pid.is_some() && !state.is_live()) || (ready && pid.is_none()) || (forced.is_some() && state != State::Stopping) {
                continue;
            }
            let p = Policy { ready_probe, ..p.clone() };
            {
                for input in inputs(3) {
                    let mut j = Job { state, pid, ready, forced, epoch: 3, ..Job::default() };
                    let fx = step(&mut j, &p, input.clone(), 0.5);
                    // Ready only with a live process.
                    if j.ready {
                        assert!(j.pid.is_some() && matches!(j.state, State::Starting | State::Running | State::Stopping), "{state:?} {input:?} -> {j:?}");
                    }
                    // Without a ready probe nothing but healthy_after makes a job ready.
                    if input == Input::Ready && !ready {
                        assert_eq!(j.ready, pid.is_some() && matches!(state, State::Starting | State::Running), "{state:?}");
                    }
                    // A watchdog stop is pending only while stopping.
                    if j.forced.is_some() {
                        assert_eq!(j.state, State::Stopping, "{state:?} {input:?}");
                    }
                    // A forced stop signals the live group and says why.
                    if let Input::Force { cause, .. } = &input {
                        if pid.is_some() && matches!(state, State::Starting | State::Running) {
                            assert_eq!((j.state, j.forced, j.cause), (State::Stopping, Some(*cause), Some(*cause)));
                            assert!(j.reason.as_deref().is_some_and(|r| r.starts_with(cause.as_str())));
                            assert!(fx.contains(&Effect::Signal { pgid: 5, signal: p.stop_signal }));
                        } else {
                            assert!(fx.is_empty(), "{state:?} {pid:?} {input:?} {fx:?}");
                        }
                    }
                    // The exit of a forced stop restarts (backoff), never stays stopped.
                    if forced.is_some() && matches!(input, Input::Exited(..)) && pid.is_some() {
                        assert_eq!(j.state, State::Backoff, "{input:?} -> {j:?}");
                        assert_eq!(j.restarts, 1);
                    }
                    // A spawn is requested only from the starting state, without a pid.
                    if fx.contains(&Effect::Spawn) {
                        assert_eq!((j.state, j.pid), (State::Starting, None), "{state:?} {input:?}");
                    }
                    // Non-live states never track a process.
                    if matches!(j.state, State::Stopped | State::Exited | State::Fatal | State::Backoff | State::Waiting | State::Scheduled) {
                        assert_eq!(j.pid, None, "{state:?} {pid:?} {input:?} -> {j:?}");
                    }
                    // Fatal and waiting always say why.
                    if matches!(j.state, State::Fatal | State::Waiting) && j.state != state {
                        assert!(j.reason.is_some(), "{state:?} {input:?}");
                    }
                    // Signals only go to the tracked process group.
                    for e in &fx {
                        if let Effect::Signal { pgid, .. } = e {
                            assert_eq!(Some(*pgid), pid.or(j.pid));
                        }
                    }
                }
            }
        }
    }
}
