//! Process table scans (sysinfo): duplicates of a job started outside corral
//! (SPEC §7 `on_duplicate`) and stray orphans reparented to corral.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

/// A snapshot of the process table: pid, parent, process group and argv.
pub struct Snapshot {
    procs: Vec<Proc>,
}

struct Proc {
    pid: i32,
    ppid: Option<i32>,
    cmd: Vec<String>,
}

/// A snapshot reused while it is younger than `ttl`, so starting 500 jobs scans the process
/// table once, not 500 times.
pub struct CachedScan {
    ttl: Duration,
    last: Option<(Instant, Snapshot)>,
}

impl CachedScan {
    pub fn new(ttl: Duration) -> CachedScan {
        CachedScan { ttl, last: None }
    }

    /// Processes running `command` outside corral (`own_pid`'s tree), from a fresh enough scan.
    pub fn duplicates(&mut self, command: &[String], own_pid: i32) -> Vec<i32> {
        if self.last.as_ref().is_none_or(|(t, _)| t.elapsed() >= self.ttl) {
            self.last = Some((Instant::now(), Snapshot::take()));
        }
        self.last.as_ref().map(|(_, s)| s.duplicates(command, own_pid)).unwrap_or_default()
    }

    /// Something was killed: the next question scans again.
    pub fn invalidate(&mut self) {
        self.last = None;
    }
}

impl Snapshot {
    pub fn take() -> Snapshot {
        let mut sys = System::new();
        sys.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().with_cmd(UpdateKind::Always),
        );
        let procs = sys
            .processes()
            .values()
            // Threads show up as tasks of their process; only whole processes count.
            .filter(|p| p.thread_kind().is_none())
            .map(|p| Proc {
                pid: p.pid().as_u32() as i32,
                ppid: p.parent().map(|pp: Pid| pp.as_u32() as i32),
                cmd: p.cmd().iter().map(|s| s.to_string_lossy().into_owned()).collect(),
            })
            .collect();
        Snapshot { procs }
    }

    /// Processes running `command` that are not corral's descendants.
    pub fn duplicates(&self, command: &[String], own_pid: i32) -> Vec<i32> {
        let mut out: Vec<i32> =
            self.procs.iter().filter(|p| same_command(&p.cmd, command) && !self.descends_from(p.pid, own_pid)).map(|p| p.pid).collect();
        out.sort_unstable();
        out
    }

    /// Direct children of corral whose pid is not one of `jobs` (the main pids):
    /// orphans reparented to us, or leftovers of exited jobs. `group_of` lets the
    /// caller keep processes that still belong to a live job's process group.
    pub fn stray_children(&self, own_pid: i32, jobs: &HashSet<i32>, job_groups: &HashSet<i32>) -> Vec<i32> {
        let mut out: Vec<i32> = self
            .procs
            .iter()
            .filter(|p| p.ppid == Some(own_pid) && !jobs.contains(&p.pid))
            .filter(|p| !job_groups.contains(&pgid_of(p.pid).unwrap_or(-1)))
            .map(|p| p.pid)
            .collect();
        out.sort_unstable();
        out
    }

    fn descends_from(&self, mut pid: i32, ancestor: i32) -> bool {
        for _ in 0..64 {
            if pid == ancestor {
                return true;
            }
            match self.procs.iter().find(|p| p.pid == pid).and_then(|p| p.ppid) {
                Some(pp) if pp != pid && pp > 0 => pid = pp,
                _ => return false,
            }
        }
        false
    }
}

/// Same argv; the program may be named by path or by name (`python` vs `/usr/bin/python`).
fn same_command(running: &[String], wanted: &[String]) -> bool {
    if running.len() != wanted.len() || running.is_empty() {
        return false;
    }
    let base = |s: &str| Path::new(s).file_name().map(|f| f.to_owned());
    base(&running[0]) == base(&wanted[0]) && running[1..] == wanted[1..]
}

pub fn pgid_of(pid: i32) -> Option<i32> {
    nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).ok().map(|p| p.as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_match_ignores_program_path() {
        let w = vec!["python".to_string(), "x.py".into()];
        assert!(same_command(&["/usr/bin/python".into(), "x.py".into()], &w));
        assert!(!same_command(&["python".into(), "y.py".into()], &w));
        assert!(!same_command(&["python".into()], &w));
    }
}
