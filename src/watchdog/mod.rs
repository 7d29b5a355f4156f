//! The watchdog (SPEC §2, §4): what tells a hung job from a working one, and what starts jobs
//! in order.
//!
//! - `task`     one task per run: the stall timer (fed by the output readers through
//!              [`task::LineWatch`]), the ready probe and the liveness probe.
//! - `probe`    running one http / tcp / command probe with its timeout; probe commands are
//!              spawned like jobs and reaped by the one reaper ([`probe::ProbeProcs`]).
//! - `memory`   the RSS of each job's process tree, one bounded-rate `/proc` walk for all jobs.
//! - `verdict`  pure: consecutive liveness failures → restart, memory over the limit.
//! - `deps`     pure: dependency conditions, start order, reverse stop order.
//!
//! Nothing here runs on or blocks the actor, and nothing here changes job state: findings go
//! back to the actor as messages, and it feeds the state machine (`Input::Force`,
//! `Input::Ready`) after checking they are about the job's current process.

pub mod deps;
pub mod memory;
pub mod probe;
pub mod task;
pub mod verdict;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::config::watch::Check;
use crate::config::JobConfig;

pub use task::{LineWatch, Report};

/// How often tree memory is sampled while some job has a `memory_max` (the sampler stretches
/// it when a walk is slow).
pub const MEMORY_INTERVAL: Duration = Duration::from_secs(1);

/// The actor's handle on the watchdog: one watch task per run, the probe processes, the
/// memory sampler.
#[derive(Default)]
pub struct Watchdog {
    pub procs: probe::ProbeProcs,
    pub memory: memory::Memory,
    runs: HashMap<String, Run>,
    sampler: bool,
}

struct Run {
    pid: i32,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The liveness probe is failing (for `depends_on = { x = "healthy" }`).
    failing: bool,
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Watchdog {
    /// A run of `job` began with process `pid`: start what watches it. Returns what the
    /// output readers feed (None when no check needs the output). `send` delivers reports.
    pub fn start_run(&mut self, cfg: &JobConfig, pid: i32, extra_env: &[(String, String)], send: Rc<dyn Fn(Report)>) -> Option<Arc<LineWatch>> {
        let w = &cfg.watch;
        if w.memory_max.is_some() {
            self.memory.track(&cfg.name, pid, w.memory_max);
        } else {
            self.memory.untrack(&cfg.name);
        }
        if !w.needs_task() {
            self.runs.insert(cfg.name.clone(), Run { pid, task: None, failing: false });
            return None;
        }
        let regex = match w.ready.as_ref().map(|p| &p.check) {
            Some(Check::Log(re)) => regex::Regex::new(re).ok(),
            _ => None,
        };
        let wants_lines = w.stall_after.is_some() || regex.is_some();
        let lines = Arc::new(LineWatch::new(regex));
        let spec = task::Spec {
            watch: w.clone(),
            lines: lines.clone(),
            procs: self.procs.clone(),
            env: probe::ProbeEnv { cwd: cfg.cwd.clone(), env: cfg.env.clone(), extra_env: extra_env.to_vec(), user: cfg.user.clone() },
        };
        let needs_task = w.stall_after.is_some() || w.ready.is_some() || w.liveness.is_some();
        let task = needs_task.then(|| tokio::task::spawn_local(task::run(spec, send)));
        self.runs.insert(cfg.name.clone(), Run { pid, task, failing: false });
        wants_lines.then_some(lines)
    }

    /// Start the memory sampler once (it idles while no job has a limit).
    pub fn ensure_sampler(&mut self, report: memory::SampleSink) {
        if !self.sampler {
            self.sampler = true;
            tokio::task::spawn_local(self.memory.clone().run(MEMORY_INTERVAL, report));
        }
    }

    /// The run of `job` ended (its process was reaped, or the job was removed).
    pub fn end_run(&mut self, job: &str) {
        self.runs.remove(job);
        self.memory.untrack(job);
    }

    /// Whether `pid` is the process of the run being watched for `job`.
    pub fn is_current(&self, job: &str, pid: i32) -> bool {
        self.runs.get(job).is_some_and(|r| r.pid == pid)
    }

    pub fn set_failing(&mut self, job: &str, failing: bool) {
        if let Some(r) = self.runs.get_mut(job) {
            r.failing = failing;
        }
    }

    /// The liveness probe of `job`'s current run is not failing.
    pub fn alive(&self, job: &str) -> bool {
        self.runs.get(job).is_none_or(|r| !r.failing)
    }
}
