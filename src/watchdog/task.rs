//! The watch task of one run (one process of one job): its stall timer, ready probe and
//! liveness probe, each a loop in this task, never on the actor. What they find goes back to
//! the actor as [`Report`]s through `send`; the actor checks the pid is still the job's and
//! feeds the state machine. The actor aborts the task when the run ends.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use regex::Regex;
use tokio::sync::Notify;

use super::probe::{self, ProbeEnv, ProbeProcs};
use super::verdict::{Liveness, Verdict};
use crate::config::watch::{Check, Probe, Watch};

/// What a run's watch found.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// The ready probe passed (or the log regex matched).
    Ready,
    /// A liveness probe failed (`count` in a row so far); not yet a restart.
    LivenessFailed { count: u32, detail: String },
    /// A liveness probe passed after failures.
    LivenessRecovered,
    /// Restart it: the liveness probe failed `failures` times in a row.
    Unhealthy { detail: String },
    /// Restart it: no output line for this long.
    Stalled { idle: Duration },
}

/// Fed by the job's output readers (`process::output`): the time of the last line and, for a
/// `ready = { log = "..." }` probe, whether a line matched. Lock-free; a line costs a clock
/// read and, until the first match, one regex search.
pub struct LineWatch {
    start: Instant,
    /// Milliseconds after `start` of the last line.
    last_ms: AtomicU64,
    ready: Option<Regex>,
    matched: AtomicBool,
    wake: Notify,
}

impl LineWatch {
    pub fn new(ready: Option<Regex>) -> LineWatch {
        LineWatch { start: Instant::now(), last_ms: AtomicU64::new(0), ready, matched: AtomicBool::new(false), wake: Notify::new() }
    }

    pub fn line(&self, text: &str) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        if let Some(re) = &self.ready {
            if !self.matched.load(Ordering::Relaxed) && re.is_match(text) {
                self.matched.store(true, Ordering::Relaxed);
                self.wake.notify_one();
            }
        }
    }

    /// When the last line was written (the start of the run before the first line).
    pub fn last_line(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Everything one run's watch needs.
pub struct Spec {
    pub watch: Watch,
    pub lines: Arc<LineWatch>,
    pub procs: ProbeProcs,
    pub env: ProbeEnv,
}

/// Watch one run until every check is done (or the actor aborts the task).
pub async fn run(spec: Spec, send: Rc<dyn Fn(Report)>) {
    let Spec { watch, lines, procs, env } = spec;
    let stall = async {
        let Some(after) = watch.stall_after else { return };
        loop {
            let due = lines.last_line() + after;
            tokio::time::sleep_until(due.into()).await;
            let idle = lines.last_line().elapsed();
            if idle >= after {
                send(Report::Stalled { idle });
                return;
            }
        }
    };
    let ready = async {
        let Some(p) = &watch.ready else { return };
        if let Check::Log(_) = p.check {
            while !lines.matched.load(Ordering::Relaxed) {
                lines.wake.notified().await;
            }
            send(Report::Ready);
            return;
        }
        // The first probe at once: a job that is ready quickly is released quickly.
        loop {
            if probe::run(&p.check, p.timeout, &procs, &env).await.is_ok() {
                send(Report::Ready);
                return;
            }
            tokio::time::sleep(p.interval).await;
        }
    };
    let live = async {
        let Some(p) = &watch.liveness else { return };
        liveness(p, &procs, &env, &*send).await;
    };
    tokio::join!(stall, ready, live);
}

async fn liveness(p: &Probe, procs: &ProbeProcs, env: &ProbeEnv, send: &dyn Fn(Report)) {
    tokio::time::sleep(p.initial_delay).await;
    let mut state = Liveness::default();
    let mut next = tokio::time::Instant::now();
    loop {
        let result = probe::run(&p.check, p.timeout, procs, env).await;
        match state.observe(result, p.failures) {
            Verdict::Fine => {}
            Verdict::Recovered => send(Report::LivenessRecovered),
            Verdict::Failing { count, detail } => send(Report::LivenessFailed { count, detail }),
            Verdict::Restart { detail } => {
                send(Report::Unhealthy { detail });
                return;
            }
        }
        // Probes start every interval (a slow probe does not stretch the period), never two
        // at once.
        next += p.interval;
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
        tokio::time::sleep_until(next).await;
    }
}
