//! What the watchdog's reports mean for a job (SPEC §2, §4): a watch (probes, stall timer)
//! or the memory sampler reports about one run; this concern checks the report against the
//! job's current process and says what the actor does. Pure over the job table and the
//! watchdog's run records; the verdicts themselves are `watchdog::verdict`'s.

use std::rc::Rc;
use std::sync::Arc;

use tracing::{info, warn};

use super::event::{Event, EventTx};
use super::jobs::JobTable;
use crate::config::JobConfig;
use crate::config::watch::format_size;
use crate::job::machine::Cause;
use crate::job::State;
use crate::watchdog::memory::Sample;
use crate::watchdog::{verdict, LineWatch, Report, Watchdog};

/// What a watch sends to the actor about one run.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchMsg {
    Report(Report),
    /// The tree's RSS is above `memory_max`.
    Memory { rss: u64, processes: u32, max: u64 },
}

/// What the actor does about a report.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The ready probe passed: `Input::Ready`.
    Ready,
    /// The liveness probe started (true) or stopped (false) failing: mark the run, and let
    /// the jobs that depend on it being healthy see the change.
    Failing(bool),
    /// Restart the job for `cause` (`Input::Force`).
    Force(Cause, String),
}

/// A run of `name` began with `pid`: start what watches it (probes, stall timer, the memory
/// sampler while some job has `memory_max`), reporting to the actor through `tx`. The output
/// readers get the returned line watch.
pub fn start(watchdog: &mut Watchdog, tx: &EventTx, name: &str, pid: i32, env: &[(String, String)], cfg: Option<&JobConfig>) -> Option<Arc<LineWatch>> {
    let cfg = cfg?;
    if cfg.watch.memory_max.is_some() {
        let tx = tx.clone();
        watchdog.ensure_sampler(Rc::new(move |samples| {
            let _ = tx.send(Event::MemorySamples(samples));
        }));
    }
    let tx = tx.clone();
    let job = name.to_string();
    let send: Rc<dyn Fn(Report)> = Rc::new(move |report| {
        let _ = tx.send(Event::Watch { job: job.clone(), pid, msg: WatchMsg::Report(report) });
    });
    watchdog.start_run(cfg, pid, env, send)
}

/// The action for `msg` about `pid` of `name`; none when the report is stale (the process is
/// gone or stopping, or its run was replaced).
pub fn judge(jobs: &JobTable, watchdog: &Watchdog, name: &str, pid: i32, msg: WatchMsg) -> Option<Action> {
    let current = jobs.get(name).is_some_and(|j| j.m.pid == Some(pid) && j.m.state != State::Stopping);
    if !current || !watchdog.is_current(name, pid) {
        return None;
    }
    Some(match msg {
        WatchMsg::Report(Report::Ready) => {
            info!(job = %name, pid, "ready");
            Action::Ready
        }
        WatchMsg::Report(Report::LivenessFailed { count, detail }) => {
            warn!(job = %name, pid, count, "liveness probe failed: {detail}");
            Action::Failing(true)
        }
        WatchMsg::Report(Report::LivenessRecovered) => {
            info!(job = %name, pid, "liveness probe passes again");
            Action::Failing(false)
        }
        WatchMsg::Report(Report::Unhealthy { detail }) => Action::Force(Cause::Unhealthy, detail),
        WatchMsg::Report(Report::Stalled { idle }) => {
            let idle = humantime::format_duration(std::time::Duration::from_secs(idle.as_secs().max(1)));
            Action::Force(Cause::Stalled, format!("no output line for {idle} (stall_after)"))
        }
        WatchMsg::Memory { rss, processes, max } => {
            let detail = format!("process tree RSS {} in {processes} process(es) is above memory_max {}", format_size(rss), format_size(max));
            Action::Force(Cause::Memory, detail)
        }
    })
}

/// A walk of the process trees: each job's RSS is kept for status (`JobRt::rss`); the trees
/// above their `memory_max` come back as reports about their run.
pub fn memory(jobs: &mut JobTable, samples: Vec<(String, Sample)>) -> Vec<(String, i32, WatchMsg)> {
    let mut over = Vec::new();
    for (name, s) in samples {
        let Some(j) = jobs.get_mut(&name).filter(|j| j.m.pid == Some(s.pid)) else { continue };
        j.rss = Some((s.pid, s.rss));
        if let Some(max) = j.cfg.watch.memory_max.filter(|m| verdict::over_memory(s.rss, Some(*m))) {
            over.push((name, s.pid, WatchMsg::Memory { rss: s.rss, processes: s.processes, max }));
        }
    }
    over
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::jobs::testing;

    fn running(sections: &str) -> JobTable {
        let mut jobs = testing::table(&testing::config(sections));
        let j = jobs.get_mut("a").unwrap();
        j.m.state = State::Running;
        j.m.pid = Some(100);
        jobs
    }

    #[test]
    fn trees_over_memory_max_are_reported_and_every_sample_is_kept() {
        let mut jobs = running("[jobs.a]\ncommand = [\"a\"]\nmemory_max = \"64MiB\"\n[jobs.b]\ncommand = [\"b\"]\n");
        let sample = |pid, rss| Sample { pid, rss, processes: 2 };
        // Under the limit: kept, nothing to do. A sample of an old pid is ignored.
        assert!(memory(&mut jobs, vec![("a".into(), sample(100, 10 << 20)), ("b".into(), sample(7, 1 << 30))]).is_empty());
        assert_eq!(jobs["a"].rss, Some((100, 10 << 20)));
        assert_eq!(jobs["b"].rss, None);
        let over = memory(&mut jobs, vec![("a".into(), sample(100, 65 << 20))]);
        assert_eq!(over, vec![("a".into(), 100, WatchMsg::Memory { rss: 65 << 20, processes: 2, max: 64 << 20 })]);
    }

    #[test]
    fn reports_about_a_process_that_is_not_the_current_run_are_stale() {
        let mut jobs = running("[jobs.a]\ncommand = [\"a\"]\n");
        let watchdog = Watchdog::default();
        // No run recorded by the watchdog: stale, whatever the job table says.
        assert_eq!(judge(&jobs, &watchdog, "a", 100, WatchMsg::Report(Report::Ready)), None);
        assert_eq!(judge(&jobs, &watchdog, "nope", 100, WatchMsg::Report(Report::Ready)), None);
        let mut watchdog = watchdog;
        assert!(watchdog.start_run(&jobs["a"].cfg, 100, &[], std::rc::Rc::new(|_| {})).is_none());
        assert_eq!(judge(&jobs, &watchdog, "a", 100, WatchMsg::Report(Report::Ready)), Some(Action::Ready));
        let stalled = WatchMsg::Report(Report::Stalled { idle: std::time::Duration::from_millis(4_700) });
        assert_eq!(judge(&jobs, &watchdog, "a", 100, stalled.clone()), Some(Action::Force(Cause::Stalled, "no output line for 4s (stall_after)".into())));
        // An earlier process of the job, and a job on its way down: stale.
        assert_eq!(judge(&jobs, &watchdog, "a", 99, stalled.clone()), None);
        jobs.get_mut("a").unwrap().m.state = State::Stopping;
        assert_eq!(judge(&jobs, &watchdog, "a", 100, stalled), None);
    }
}
