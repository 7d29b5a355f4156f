//! Dependency decisions (SPEC §2 `depends_on`, §4 `waiting: dependency <name>`), pure.
//!
//! Owns: whether a dependency's condition holds, which dependency holds a job back, the start
//! order and which pending stops may go now (reverse dependency order). Must not: look at
//! clocks, processes or the actor; the actor passes [`View`]s of its jobs.
//!
//! Readiness is re-evaluated from the jobs' current views at every start attempt and every
//! change, never latched: a dependency whose readiness drops and comes back releases its
//! dependents then (process-compose #544 skipped them).

use std::collections::{BTreeMap, BTreeSet};

use crate::config::watch::Condition;
use crate::job::State;

/// What the dependency decisions need to know of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub state: State,
    /// A process is tracked.
    pub live_pid: bool,
    /// Its ready probe passed for the current process (without one: healthy_after passed).
    pub ready: bool,
    /// Its liveness probe is not failing (true without one).
    pub alive: bool,
    /// The last run ended with a success code.
    pub last_ok: bool,
}

/// Whether `cond` holds for a dependency in `v`.
pub fn satisfied(cond: Condition, v: &View) -> bool {
    let running = v.live_pid && matches!(v.state, State::Starting | State::Running);
    match cond {
        Condition::Started => running || (v.state == State::Exited && v.last_ok),
        Condition::Ready => running && v.ready,
        Condition::Healthy => v.live_pid && v.state == State::Running && v.ready && v.alive,
        Condition::Completed => v.state == State::Exited && v.last_ok,
    }
}

/// The jobs a dependency name stands for: the job itself, or every instance of a job with
/// `instances` (`bases` maps each job to its base name, if it is an instance).
pub fn resolve<'a>(name: &str, bases: &'a BTreeMap<String, Option<String>>) -> Vec<&'a str> {
    if let Some((k, _)) = bases.get_key_value(name) {
        return vec![k.as_str()];
    }
    bases.iter().filter(|(_, b)| b.as_deref() == Some(name)).map(|(k, _)| k.as_str()).collect()
}

/// Names as a verb got them, with `NAME` of a job with `instances` replaced by all of its
/// instances (`NAME.i` and plain job names stay as they are).
pub fn expand_instances(names: &[String], bases: &BTreeMap<String, Option<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for n in names {
        let targets = resolve(n, bases);
        if targets.is_empty() {
            out.push(n.clone());
        } else {
            out.extend(targets.into_iter().map(str::to_string));
        }
    }
    out
}

/// The first dependency of `deps` whose condition does not hold, as the waiting reason
/// (`dependency <name> (...)`), or None when the job may start.
pub fn hold(deps: &BTreeMap<String, Condition>, bases: &BTreeMap<String, Option<String>>, view: &dyn Fn(&str) -> Option<View>) -> Option<String> {
    for (name, cond) in deps {
        let targets = resolve(name, bases);
        if targets.is_empty() {
            return Some(format!("dependency {name} (not in the config)"));
        }
        for t in targets {
            let ok = view(t).is_some_and(|v| satisfied(*cond, &v));
            if !ok {
                let state = view(t).map(|v| describe(&v)).unwrap_or("gone");
                let shown = if t == name { String::new() } else { format!(" ({t})") };
                return Some(format!("dependency {name}{shown}: needs {}, is {state}", cond.as_str()));
            }
        }
    }
    None
}

fn describe(v: &View) -> &'static str {
    match v.state {
        State::Running | State::Starting if v.live_pid && !v.ready => "not ready",
        State::Exited if !v.last_ok => "exited with failure",
        s => s.as_str(),
    }
}

/// Jobs in an order where every job comes after what it depends on (names ordered within a
/// level). Cycles are rejected by the config; any left over are appended in name order.
pub fn start_order(deps: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    loop {
        let level: Vec<&str> = deps
            .iter()
            .filter(|(n, _)| !done.contains(n.as_str()))
            .filter(|(_, d)| d.iter().all(|x| done.contains(x.as_str()) || !deps.contains_key(x)))
            .map(|(n, _)| n.as_str())
            .collect();
        if level.is_empty() {
            break;
        }
        for n in level {
            done.insert(n);
            out.push(n.to_string());
        }
    }
    out.extend(deps.keys().filter(|n| !done.contains(n.as_str())).cloned());
    out
}

/// Of the jobs waiting to be stopped, those that may be stopped now: none of the jobs that
/// depend on them (`dependents`) is still live and itself waiting or stopping. Stops go in
/// the reverse of the start order: dependents first.
pub fn stoppable(pending: &BTreeSet<String>, dependents: &BTreeMap<String, BTreeSet<String>>, live: &dyn Fn(&str) -> bool) -> Vec<String> {
    pending
        .iter()
        .filter(|job| dependents.get(*job).is_none_or(|ds| ds.iter().all(|d| !live(d))))
        .cloned()
        .collect()
}

/// Invert job → dependencies (after resolving instances) into job → dependents.
pub fn dependents(deps: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (job, ds) in deps {
        for d in ds {
            out.entry(d.clone()).or_default().insert(job.clone());
        }
    }
    out
}

/// Order names of a job's instances for stopping: highest index first (SPEC §2 `instances`:
/// a reload that lowers N stops the highest ones).
pub fn highest_index_first(names: &mut [String]) {
    let key = |n: &String| -> (String, i64) {
        match n.rsplit_once('.') {
            Some((base, i)) if i.parse::<u32>().is_ok() => (base.to_string(), -(i.parse::<i64>().unwrap_or(0))),
            _ => (n.clone(), 0),
        }
    };
    names.sort_by_key(key);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views() -> Vec<View> {
        let mut out = Vec::new();
        for state in State::ALL {
            for live_pid in [false, true] {
                if live_pid && !state.is_live() {
                    continue;
                }
                for ready in [false, true] {
                    for alive in [false, true] {
                        for last_ok in [false, true] {
                            out.push(View { state, live_pid, ready, alive, last_ok });
                        }
                    }
                }
            }
        }
        out
    }

    /// Every (condition, view) pair: the conditions nest as documented.
    #[test]
    fn every_condition_against_every_view() {
        for v in views() {
            let s = |c| satisfied(c, &v);
            // healthy implies ready implies started
            if s(Condition::Healthy) {
                assert!(s(Condition::Ready), "{v:?}");
            }
            if s(Condition::Ready) {
                assert!(s(Condition::Started), "{v:?}");
            }
            // completed: only an exited, successful job; never one with a process
            assert_eq!(s(Condition::Completed), v.state == State::Exited && v.last_ok, "{v:?}");
            // nothing holds for a stopped, fatal, waiting or backoff job
            if matches!(v.state, State::Stopped | State::Fatal | State::Waiting | State::Backoff | State::Stopping) {
                for c in Condition::ALL {
                    assert!(!s(c), "{c:?} {v:?}");
                }
            }
            // ready needs a live process that is ready
            assert_eq!(s(Condition::Ready), v.live_pid && v.ready && matches!(v.state, State::Starting | State::Running), "{v:?}");
            // a failing liveness probe is not healthy
            if !v.alive {
                assert!(!s(Condition::Healthy));
            }
        }
    }

    fn bases(names: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        names.iter().map(|(n, b)| (n.to_string(), b.map(str::to_string))).collect()
    }

    #[test]
    fn instances_stand_for_all_copies() {
        let b = bases(&[("web.0", Some("web")), ("web.1", Some("web")), ("api", None)]);
        assert_eq!(resolve("web", &b), vec!["web.0", "web.1"]);
        assert_eq!(resolve("web.1", &b), vec!["web.1"]);
        assert_eq!(resolve("api", &b), vec!["api"]);
        assert!(resolve("nope", &b).is_empty());
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(expand_instances(&names(&["web", "api", "nope", "web.1"]), &b), names(&["web.0", "web.1", "api", "nope", "web.1"]));
    }

    #[test]
    fn hold_names_the_first_unmet_dependency_and_readiness_is_never_latched() {
        let b = bases(&[("migrate", None), ("api", None), ("web", None)]);
        let deps: BTreeMap<String, Condition> = [("api".to_string(), Condition::Ready), ("migrate".to_string(), Condition::Completed)].into();
        let running = View { state: State::Running, live_pid: true, ready: true, alive: true, last_ok: false };
        let exited_ok = View { state: State::Exited, live_pid: false, ready: false, alive: true, last_ok: true };
        let mut api = View { ready: false, ..running };
        let mut migrate = running;
        let check = |api: View, migrate: View| {
            hold(&deps, &b, &|n| match n {
                "api" => Some(api),
                "migrate" => Some(migrate),
                _ => None,
            })
        };
        assert_eq!(check(api, migrate).as_deref(), Some("dependency api: needs ready, is not ready"));
        api.ready = true;
        assert_eq!(check(api, migrate).as_deref(), Some("dependency migrate: needs completed, is running"));
        migrate = exited_ok;
        assert_eq!(check(api, migrate), None);
        // api restarts: not ready again, the dependent waits again; ready again: released.
        api.ready = false;
        assert!(check(api, migrate).is_some());
        api.ready = true;
        assert_eq!(check(api, migrate), None);
    }

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        edges.iter().map(|(j, d)| (j.to_string(), d.iter().map(|s| s.to_string()).collect())).collect()
    }

    #[test]
    fn start_order_puts_dependencies_first() {
        let g = graph(&[("web", &["api", "migrate"]), ("api", &["migrate"]), ("migrate", &[]), ("other", &[])]);
        assert_eq!(start_order(&g), vec!["migrate", "other", "api", "web"]);
    }

    /// Every subset of pending jobs in a chain migrate <- api <- web, with every liveness:
    /// a job is stoppable exactly when none of its live dependents remain.
    #[test]
    fn stops_go_dependents_first_in_every_combination() {
        let g = graph(&[("web", &["api"]), ("api", &["migrate"]), ("migrate", &[])]);
        let dependents = dependents(&g);
        let names = ["migrate", "api", "web"];
        for pmask in 0..8u32 {
            for lmask in 0..8u32 {
                let pending: BTreeSet<String> = names.iter().enumerate().filter(|(i, _)| pmask & (1 << i) != 0).map(|(_, n)| n.to_string()).collect();
                let live = |n: &str| names.iter().position(|x| *x == n).is_some_and(|i| lmask & (1 << i) != 0);
                let got = stoppable(&pending, &dependents, &live);
                for n in &pending {
                    let blocked = dependents.get(n).is_some_and(|ds| ds.iter().any(|d| live(d)));
                    assert_eq!(got.contains(n), !blocked, "{pending:?} live {lmask:b}: {n}");
                }
                assert!(got.iter().all(|n| pending.contains(n)));
            }
        }
    }

    #[test]
    fn instances_stop_highest_first() {
        let mut n: Vec<String> = ["w.0", "w.10", "w.2", "a", "w.1"].iter().map(|s| s.to_string()).collect();
        highest_index_first(&mut n);
        assert_eq!(n, vec!["a", "w.10", "w.2", "w.1", "w.0"]);
    }
}
