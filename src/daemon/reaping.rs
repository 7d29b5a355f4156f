//! Whose exit a reaped pid is, and the orphan sweep's decision (SPEC §7). corral reaps with
//! `waitpid(-1)` (`process::reaper`, through the probes' reaper); this keeps the pid → job map
//! and the counters `status` shows.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::config::OrphanPolicy;
use crate::job::Exit;

pub struct Reaping {
    by_pid: HashMap<i32, String>,
    pub zombies_reaped: u64,
    pub orphans_killed: u64,
    last_sweep: Instant,
    pub own_pid: i32,
}

impl Default for Reaping {
    fn default() -> Reaping {
        Reaping { by_pid: HashMap::new(), zombies_reaped: 0, orphans_killed: 0, last_sweep: Instant::now(), own_pid: std::process::id() as i32 }
    }
}

impl Reaping {
    /// A run of `name` began with `pid`.
    pub fn spawned(&mut self, pid: i32, name: &str) {
        self.by_pid.insert(pid, name.to_string());
    }

    /// `pid` is a live job's main process.
    pub fn is_job(&self, pid: i32) -> bool {
        self.by_pid.contains_key(&pid)
    }

    /// The live jobs' main processes (their groups share the pid).
    pub fn job_pids(&self) -> HashSet<i32> {
        self.by_pid.keys().copied().collect()
    }

    /// The jobs' exits among what `waitpid` returned, in order. `other` claims the rest it
    /// knows (alert commands); what nobody claims is a zombie reaped.
    pub fn exits(&mut self, reaped: Vec<(i32, Exit)>, mut other: impl FnMut(i32, Exit) -> bool) -> Vec<(String, i32, Exit)> {
        let mut exits = Vec::new();
        for (pid, exit) in reaped {
            match self.by_pid.remove(&pid) {
                Some(name) => exits.push((name, pid, exit)),
                None if other(pid, exit) => {}
                None => self.zombies_reaped += 1,
            }
        }
        exits
    }

    /// A sweep found `strays` (reparented to corral, no live job's): which to terminate.
    pub fn sweep(&mut self, strays: &[i32], orphans: OrphanPolicy, now: Instant) -> Vec<i32> {
        self.last_sweep = now;
        if orphans != OrphanPolicy::Kill {
            return Vec::new();
        }
        self.orphans_killed += strays.len() as u64;
        strays.to_vec()
    }

    /// An on-demand sweep is worth it only once the last one's strays had their grace.
    pub fn swept_within(&self, grace: Duration, now: Instant) -> bool {
        now.saturating_duration_since(self.last_sweep) < grace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_go_to_their_jobs_then_to_alert_commands_and_the_rest_are_zombies() {
        let mut r = Reaping::default();
        r.spawned(10, "a");
        r.spawned(11, "b");
        let reaped = vec![(11, Exit::Code(0)), (12, Exit::Code(1)), (13, Exit::Signal(9)), (10, Exit::Code(2))];
        let exits = r.exits(reaped, |pid, _| pid == 12);
        assert_eq!(exits, [("b".to_string(), 11, Exit::Code(0)), ("a".to_string(), 10, Exit::Code(2))]);
        assert_eq!(r.zombies_reaped, 1);
        assert!(!r.is_job(10) && r.job_pids().is_empty());
        assert!(r.exits(vec![(10, Exit::Code(0))], |_, _| false).is_empty(), "a pid is a job's once");
        assert_eq!(r.zombies_reaped, 2);
    }

    #[test]
    fn the_sweep_terminates_strays_only_when_orphans_are_killed() {
        let mut r = Reaping::default();
        let t0 = Instant::now();
        assert!(r.sweep(&[5, 6], OrphanPolicy::Keep, t0).is_empty());
        assert_eq!(r.orphans_killed, 0);
        assert_eq!(r.sweep(&[5, 6], OrphanPolicy::Kill, t0), [5, 6]);
        assert_eq!(r.orphans_killed, 2);
        assert!(r.swept_within(Duration::from_secs(5), t0 + Duration::from_secs(4)));
        assert!(!r.swept_within(Duration::from_secs(5), t0 + Duration::from_secs(5)));
    }
}
