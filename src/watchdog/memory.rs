//! The RSS of each job's whole process tree (SPEC §2 `memory_max`): a scraper's memory is in
//! its browser's children, not in the wrapper corral started.
//!
//! One sampler for all jobs: one walk of `/proc` (each process's `stat`: parent, group, RSS)
//! on a blocking thread, off the actor, then each job's tree is its main process, every
//! descendant and every member of its process group. The walk runs only while some job has a
//! `memory_max`, at a bounded rate: every `interval`, stretched so that walking takes at most
//! 2% of one core. Jobs over their limit are reported to the actor, which stops and restarts
//! them (reason `memory`); the last sample of every job is shown by `status --json` and
//! `/metrics`.
//!
//! RSS counts pages shared between processes once per process (what `ps` and `top` add up),
//! so a tree of forks sharing memory reads higher than it costs.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A job's tree, as the actor registers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    pub pid: i32,
    pub max: Option<u64>,
}

/// Where one walk's samples go: (job, sample) for every tracked run.
pub type SampleSink = Rc<dyn Fn(Vec<(String, Sample)>)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub pid: i32,
    pub rss: u64,
    pub processes: u32,
}

/// The runs to measure, shared between the actor (which registers and drops runs) and the
/// sampler. Samples go back to the actor as messages; it keeps them and decides.
#[derive(Clone, Default)]
pub struct Memory {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    tracked: BTreeMap<String, Tracked>,
    /// Walks done and their total time (the cost figures).
    walks: u64,
    walk_time: Duration,
}

impl Memory {
    pub fn track(&self, job: &str, pid: i32, max: Option<u64>) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.tracked.insert(job.to_string(), Tracked { pid, max });
    }

    pub fn untrack(&self, job: &str) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).tracked.remove(job);
    }

    pub fn walks(&self) -> (u64, Duration) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (g.walks, g.walk_time)
    }

    /// Sample every `interval` while some job has a limit; `report` gets every tracked run's
    /// sample of one walk.
    pub async fn run(self, interval: Duration, report: SampleSink) {
        let mut delay = interval;
        loop {
            tokio::time::sleep(delay).await;
            let tracked: Vec<(String, Tracked)> = {
                let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                if !g.tracked.values().any(|t| t.max.is_some()) {
                    delay = interval;
                    continue;
                }
                g.tracked.iter().map(|(k, v)| (k.clone(), *v)).collect()
            };
            let started = Instant::now();
            let roots: Vec<i32> = tracked.iter().map(|(_, t)| t.pid).collect();
            let Ok(trees) = tokio::task::spawn_blocking(move || tree_rss(&read_proc(), &roots)).await else { continue };
            let took = started.elapsed();
            // At most 2% of a core: a walk of 5 ms allows one every 250 ms.
            delay = interval.max(took * 50);
            {
                let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                g.walks += 1;
                g.walk_time += took;
            }
            let samples = tracked.into_iter().zip(trees).map(|((job, t), (rss, processes))| (job, Sample { pid: t.pid, rss, processes })).collect();
            report(samples);
        }
    }
}

/// One process as `/proc/PID/stat` has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub rss_bytes: u64,
}

/// Every process of this namespace (blocking: a thread of its own calls it).
pub fn read_proc() -> Vec<Proc> {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096).max(4096) as u64;
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        if let Some(p) = parse_stat(pid, &stat, page) {
            out.push(p);
        }
    }
    out
}

/// `pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime
/// stime cutime cstime priority nice threads itrealvalue starttime vsize rss ...`
pub fn parse_stat(pid: i32, stat: &str, page: u64) -> Option<Proc> {
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] = state, f[1] = ppid, f[2] = pgrp, f[21] = rss (pages)
    Some(Proc { pid, ppid: f.get(1)?.parse().ok()?, pgrp: f.get(2)?.parse().ok()?, rss_bytes: f.get(21)?.parse::<u64>().ok()? * page })
}

/// For each root: (RSS bytes, process count) of the root, its descendants and the members of
/// its process group (a job's group is its main pid). Pure.
pub fn tree_rss(procs: &[Proc], roots: &[i32]) -> Vec<(u64, u32)> {
    let mut children: HashMap<i32, Vec<usize>> = HashMap::new();
    let mut groups: HashMap<i32, Vec<usize>> = HashMap::new();
    let mut by_pid: HashMap<i32, usize> = HashMap::new();
    for (i, p) in procs.iter().enumerate() {
        children.entry(p.ppid).or_default().push(i);
        groups.entry(p.pgrp).or_default().push(i);
        by_pid.insert(p.pid, i);
    }
    roots
        .iter()
        .map(|root| {
            let mut seen = std::collections::HashSet::new();
            let mut stack: Vec<usize> = by_pid.get(root).copied().into_iter().collect();
            stack.extend(groups.get(root).into_iter().flatten().copied());
            let (mut rss, mut n) = (0u64, 0u32);
            while let Some(i) = stack.pop() {
                if !seen.insert(i) {
                    continue;
                }
                rss += procs[i].rss_bytes;
                n += 1;
                stack.extend(children.get(&procs[i].pid).into_iter().flatten().copied());
            }
            (rss, n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_names() {
        let s = "4242 (chrome (renderer) x) S 4200 4100 4100 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 9 0 12345 1000000 2560 18446744073709551615";
        assert_eq!(parse_stat(4242, s, 4096), Some(Proc { pid: 4242, ppid: 4200, pgrp: 4100, rss_bytes: 2560 * 4096 }));
        assert_eq!(parse_stat(1, "garbage", 4096), None);
    }

    #[test]
    fn a_tree_is_descendants_and_group_members() {
        let p = |pid, ppid, pgrp, rss| Proc { pid, ppid, pgrp, rss_bytes: rss };
        let procs = [
            p(10, 1, 10, 100),   // job main
            p(11, 10, 10, 200),  // child
            p(12, 11, 12, 400),  // grandchild that left the group (chrome zygote)
            p(13, 1, 10, 800),   // reparented orphan still in the group
            p(20, 1, 20, 1600),  // another job
            p(21, 20, 20, 3200), // its child
        ];
        assert_eq!(tree_rss(&procs, &[10, 20, 99]), vec![(1500, 4), (4800, 2), (0, 0)]);
    }
}
