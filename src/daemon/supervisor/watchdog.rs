//! The actor's side of the watchdog (SPEC §2, §4): it starts each run's watch, takes the
//! watch's reports (checked against the job's current process) into the state machine, holds
//! a start back until its dependencies hold, and stops jobs in reverse dependency order.
//!
//! The decisions are pure (`watchdog::verdict`, `job::machine`) or a concern's
//! (`daemon/dependencies.rs`); this file executes what they decide.

use std::rc::Rc;
use std::sync::Arc;

use tracing::{info, warn};

use super::{now_wall, Event, Supervisor};
use crate::config::watch::format_size;
use crate::daemon::dependencies;
use crate::daemon::history::Kind;
use crate::job::machine::Cause;
use crate::job::{Input, State, TimerKind};
use crate::watchdog::memory::Sample;
use crate::watchdog::{verdict, LineWatch, Report};

/// What a watch sends to the actor about one run.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchMsg {
    Report(Report),
    /// The tree's RSS is above `memory_max`.
    Memory { rss: u64, processes: u32, max: u64 },
}

impl Supervisor {
    /// A walk of the process trees: keep each job's RSS for status, and restart the trees
    /// above their `memory_max` (decided by `verdict::over_memory`).
    pub(super) fn on_memory(&mut self, samples: Vec<(String, Sample)>) {
        let mut over = Vec::new();
        for (name, s) in samples {
            let Some(j) = self.jobs.get_mut(&name) else { continue };
            if j.m.pid != Some(s.pid) {
                continue;
            }
            j.rss = Some((s.pid, s.rss));
            if let Some(max) = j.cfg.watch.memory_max.filter(|m| verdict::over_memory(s.rss, Some(*m))) {
                over.push((name, s, max));
            }
        }
        for (name, s, max) in over {
            self.on_watch(name, s.pid, WatchMsg::Memory { rss: s.rss, processes: s.processes, max });
        }
    }
}

impl Supervisor {
    /// A run of `name` began with `pid`: start what watches it; the output readers get the
    /// returned line watch.
    pub(super) fn watch_spawned(&mut self, name: &str, pid: i32, extra_env: &[(String, String)]) -> Option<Arc<LineWatch>> {
        let job = self.jobs.get(name)?;
        if job.cfg.watch.memory_max.is_some() {
            let tx = self.tx.clone();
            self.watchdog.ensure_sampler(Rc::new(move |samples| {
                let _ = tx.send(Event::MemorySamples(samples));
            }));
        }
        let tx = self.tx.clone();
        let job_name = name.to_string();
        let send: Rc<dyn Fn(Report)> = Rc::new(move |report| {
            let _ = tx.send(Event::Watch { job: job_name.clone(), pid, msg: WatchMsg::Report(report) });
        });
        self.watchdog.start_run(&job.cfg, pid, extra_env, send)
    }

    pub(super) fn on_watch(&mut self, name: String, pid: i32, msg: WatchMsg) {
        // About a process that is gone, or a run that was replaced: stale.
        let current = self.jobs.get(&name).is_some_and(|j| j.m.pid == Some(pid) && j.m.state != State::Stopping);
        if !current || !self.watchdog.is_current(&name, pid) {
            return;
        }
        match msg {
            WatchMsg::Report(Report::Ready) => {
                info!(job = %name, pid, "ready");
                self.feed(&name, Input::Ready);
            }
            WatchMsg::Report(Report::LivenessFailed { count, detail }) => {
                warn!(job = %name, pid, count, "liveness probe failed: {detail}");
                self.watchdog.set_failing(&name, true);
                self.after_feed();
            }
            WatchMsg::Report(Report::LivenessRecovered) => {
                info!(job = %name, pid, "liveness probe passes again");
                self.watchdog.set_failing(&name, false);
                self.after_feed();
            }
            WatchMsg::Report(Report::Unhealthy { detail }) => self.force(&name, Cause::Unhealthy, detail),
            WatchMsg::Report(Report::Stalled { idle }) => {
                let idle = humantime::format_duration(std::time::Duration::from_secs(idle.as_secs().max(1)));
                self.force(&name, Cause::Stalled, format!("no output line for {idle} (stall_after)"))
            }
            WatchMsg::Memory { rss, processes, max } => {
                let detail = format!("process tree RSS {} in {processes} process(es) is above memory_max {}", format_size(rss), format_size(max));
                self.force(&name, Cause::Memory, detail)
            }
        }
    }

    /// The one place a watchdog restart begins (alerts hook here: `cause` is typed).
    fn force(&mut self, name: &str, cause: Cause, detail: String) {
        warn!(job = %name, reason = cause.as_str(), "{detail}: restarting the job");
        self.history.event(now_wall(), Kind::Restart, Some(name), format!("{cause}: {detail}"));
        let kind = match cause {
            Cause::Unhealthy => crate::alerts::EventKind::Unhealthy,
            Cause::Stalled => crate::alerts::EventKind::Stalled,
            Cause::Memory => crate::alerts::EventKind::Memory,
        };
        self.alerts.alert(crate::alerts::Alert::new(kind, Some(name), format!("{detail}: restarted")));
        self.feed(name, Input::Force { cause, detail });
    }

    // ----- depends_on (daemon/dependencies.rs decides) -----

    /// Why `name` may not start yet: the first dependency whose condition does not hold.
    pub(super) fn dependency_hold(&self, name: &str) -> Option<String> {
        dependencies::hold(&self.jobs, &self.watchdog, name)
    }

    /// After inputs were fed: release dependents whose dependencies changed, and stops whose
    /// dependents are gone.
    pub(super) fn after_feed(&mut self) {
        if !dependencies::any(&self.jobs) {
            return;
        }
        self.release_stops();
        for name in self.deps.released(&self.jobs, &self.watchdog) {
            let Some(epoch) = self.jobs.get(&name).map(|j| j.m.epoch) else { continue };
            self.feed(&name, Input::Timer { kind: TimerKind::RetryWait, epoch });
        }
    }

    /// Stop `names`, dependents before what they depend on (SPEC §2: jobs stop in the reverse
    /// order of `depends_on`); without dependencies, all at once.
    pub(super) fn stop_in_order(&mut self, names: &[String]) {
        if !dependencies::any(&self.jobs) {
            for name in names {
                self.feed(name, Input::Stop);
            }
            return;
        }
        for name in names {
            if let Some(j) = self.jobs.get_mut(name) {
                j.stop_pending = true;
            }
        }
        self.release_stops();
    }

    fn release_stops(&mut self) {
        loop {
            let go = dependencies::next_stops(&mut self.jobs);
            if go.is_empty() {
                return;
            }
            for name in go {
                self.feed(&name, Input::Stop);
            }
        }
    }
}
