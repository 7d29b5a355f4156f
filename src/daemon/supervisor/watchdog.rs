//! The actor's side of the watchdog (SPEC §2, §4): it starts each run's watch, carries out
//! what a report means (`daemon/watching.rs` checks it against the job's current process and
//! decides), holds a start back until its dependencies hold, and stops jobs in reverse
//! dependency order (`daemon/dependencies.rs` decides).

use std::rc::Rc;
use std::sync::Arc;

use tracing::warn;

use super::{now_wall, Event, Supervisor};
use crate::daemon::dependencies;
use crate::daemon::history::Kind;
use crate::daemon::watching::{self, Action, WatchMsg};
use crate::job::machine::Cause;
use crate::job::{Input, TimerKind};
use crate::watchdog::memory::Sample;
use crate::watchdog::{LineWatch, Report};

impl Supervisor {
    /// A walk of the process trees (`watching::memory` keeps the RSS and picks the trees
    /// above their `memory_max`).
    pub(super) fn on_memory(&mut self, samples: Vec<(String, Sample)>) {
        for (name, pid, msg) in watching::memory(&mut self.jobs, samples) {
            self.on_watch(name, pid, msg);
        }
    }

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
        match watching::judge(&self.jobs, &self.watchdog, &name, pid, msg) {
            None => {}
            Some(Action::Ready) => self.feed(&name, Input::Ready),
            Some(Action::Failing(failing)) => {
                self.watchdog.set_failing(&name, failing);
                self.after_feed();
            }
            Some(Action::Force(cause, detail)) => self.force(&name, cause, detail),
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
