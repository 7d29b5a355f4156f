//! `depends_on` in the actor (SPEC §2): a start is held until its dependencies' conditions
//! hold, the jobs waiting for them are released when those change, and a stop takes the
//! dependents first. The decisions are `watchdog::deps`' (pure); this concern reads their
//! inputs from the job table and the watchdog and returns the jobs the actor feeds.

use std::collections::{BTreeMap, BTreeSet};

use super::jobs::JobTable;
use crate::config::watch::Condition;
use crate::job::{Exit, State};
use crate::protocol::WaitReason;
use crate::watchdog::{deps, Watchdog};

/// What the last look at the conditions saw.
#[derive(Default)]
pub struct Dependencies {
    /// Which conditions held for each job after the last input: a change releases the jobs
    /// waiting for a dependency at once instead of at their next retry.
    signature: Vec<(String, [bool; 4])>,
}

/// Some job has `depends_on` (otherwise there is nothing to order).
pub fn any(jobs: &JobTable) -> bool {
    jobs.values().any(|j| !j.cfg.watch.depends_on.is_empty())
}

fn view(jobs: &JobTable, watchdog: &Watchdog, name: &str) -> Option<deps::View> {
    let j = jobs.get(name)?;
    Some(deps::View {
        state: j.m.state,
        live_pid: j.m.pid.is_some(),
        ready: j.m.ready,
        alive: watchdog.alive(name),
        last_ok: matches!(j.m.last_exit, Some(Exit::Code(c)) if j.cfg.success_codes.contains(&c)),
    })
}

fn bases(jobs: &JobTable) -> BTreeMap<String, Option<String>> {
    jobs.iter().map(|(n, j)| (n.clone(), j.cfg.watch.instance.as_ref().map(|i| i.base.clone()))).collect()
}

/// Why `name` may not start yet: the first dependency whose condition does not hold.
pub fn hold(jobs: &JobTable, watchdog: &Watchdog, name: &str) -> Option<String> {
    let job = jobs.get(name)?;
    if job.cfg.watch.depends_on.is_empty() {
        return None;
    }
    deps::hold(&job.cfg.watch.depends_on, &bases(jobs), &|n| view(jobs, watchdog, n))
}

impl Dependencies {
    /// After inputs were fed: when some job's conditions changed, the jobs waiting for a
    /// dependency, to retry now.
    pub fn released(&mut self, jobs: &JobTable, watchdog: &Watchdog) -> Vec<String> {
        let signature: Vec<(String, [bool; 4])> = jobs
            .keys()
            .map(|n| {
                let v = view(jobs, watchdog, n);
                (n.clone(), Condition::ALL.map(|c| v.is_some_and(|v| deps::satisfied(c, &v))))
            })
            .collect();
        if signature == self.signature {
            return Vec::new();
        }
        self.signature = signature;
        jobs.iter()
            .filter(|(_, j)| j.m.state == State::Waiting && matches!(j.hold, Some(WaitReason::Dependency(_))))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Of the jobs asked to stop (`stop_pending`), those whose dependents are all down: they stop
/// now (their mark is cleared). Called again after each batch is fed, until it is empty.
pub fn next_stops(jobs: &mut JobTable) -> Vec<String> {
    let pending: BTreeSet<String> = jobs.iter().filter(|(_, j)| j.stop_pending).map(|(n, _)| n.clone()).collect();
    if pending.is_empty() {
        return Vec::new();
    }
    let b = bases(jobs);
    let resolved: BTreeMap<String, BTreeSet<String>> = jobs
        .iter()
        .map(|(n, j)| (n.clone(), j.cfg.watch.depends_on.keys().flat_map(|d| deps::resolve(d, &b)).map(str::to_string).collect()))
        .collect();
    let dependents = deps::dependents(&resolved);
    let live = |n: &str| jobs.get(n).is_some_and(|j| j.m.state.is_live() && (j.stop_pending || j.m.state == State::Stopping));
    let go = deps::stoppable(&pending, &dependents, &live);
    for name in &go {
        if let Some(j) = jobs.get_mut(name) {
            j.stop_pending = false;
        }
    }
    go
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::jobs::testing;

    fn table(jobs: &str) -> JobTable {
        testing::table(&testing::config(jobs))
    }

    const CHAIN: &str = "[jobs.db]\ncommand = [\"db\"]\n[jobs.api]\ncommand = [\"api\"]\ndepends_on = [\"db\"]\n\
                         [jobs.web]\ncommand = [\"web\"]\ndepends_on = [\"api\"]\n";

    fn run(jobs: &mut JobTable, name: &str, pid: i32) {
        let j = jobs.get_mut(name).unwrap();
        j.m.state = State::Running;
        j.m.pid = Some(pid);
    }

    #[test]
    fn a_stop_takes_dependents_first_one_layer_at_a_time() {
        let mut jobs = table(CHAIN);
        for (i, n) in ["db", "api", "web"].iter().enumerate() {
            run(&mut jobs, n, 100 + i as i32);
            jobs.get_mut(*n).unwrap().stop_pending = true;
        }
        assert_eq!(next_stops(&mut jobs), vec!["web"]);
        // web is stopping: api waits until it is down.
        jobs.get_mut("web").unwrap().m.state = State::Stopping;
        assert!(next_stops(&mut jobs).is_empty());
        jobs.get_mut("web").unwrap().m.state = State::Stopped;
        assert_eq!(next_stops(&mut jobs), vec!["api"]);
        jobs.get_mut("api").unwrap().m.state = State::Stopped;
        assert_eq!(next_stops(&mut jobs), vec!["db"]);
        assert!(next_stops(&mut jobs).is_empty());
        assert!(jobs.values().all(|j| !j.stop_pending));
    }

    #[test]
    fn waiting_dependents_are_released_when_a_condition_changes_and_only_then() {
        let mut jobs = table(CHAIN);
        let watchdog = Watchdog::default();
        assert!(hold(&jobs, &watchdog, "api").is_some_and(|why| why.contains("db")));
        assert_eq!(hold(&jobs, &watchdog, "db"), None);
        let api = jobs.get_mut("api").unwrap();
        api.m.state = State::Waiting;
        api.hold = Some(WaitReason::Dependency("dependency db not started".into()));
        let mut d = Dependencies::default();
        assert_eq!(d.released(&jobs, &watchdog), vec!["api"], "the first look is a change");
        assert!(d.released(&jobs, &watchdog).is_empty(), "nothing changed");
        run(&mut jobs, "db", 100);
        assert_eq!(d.released(&jobs, &watchdog), vec!["api"]);
        // A job waiting for the budget is not released by a dependency.
        jobs.get_mut("api").unwrap().hold = Some(WaitReason::Budget("budget: 0 of 10 usable".into()));
        jobs.get_mut("db").unwrap().m.state = State::Stopped;
        assert!(d.released(&jobs, &watchdog).is_empty());
    }
}
