//! PID-1 and subreaper duties (SPEC §7).
//!
//! As PID 1 the kernel reparents every orphan in the namespace to us; otherwise
//! we ask for the same with PR_SET_CHILD_SUBREAPER so a job's double-forked
//! grandchildren become our children and get reaped instead of lingering.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub fn is_pid1() -> bool {
    std::process::id() == 1
}

pub fn become_subreaper() -> std::io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)
}

/// The last act of PID 1: SIGTERM every process left in the namespace, wait
/// up to `grace` while reaping, then SIGKILL the rest, so `docker stop` never
/// ends in the kernel's kill. Returns (reaped, killed) counts.
pub fn final_sweep(grace: Duration) -> (usize, bool) {
    let mut reaped = super::reaper::reap().len();
    if !super::reaper::has_children() {
        return (reaped, false);
    }
    // kill(-1) from PID 1 reaches every process in the namespace but us.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        reaped += super::reaper::reap().len();
        if !super::reaper::has_children() {
            return (reaped, false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(1);
    while super::reaper::has_children() && Instant::now() < deadline {
        reaped += super::reaper::reap().len();
        std::thread::sleep(Duration::from_millis(5));
    }
    (reaped, true)
}

/// SIGTERM `pids` (our children), reap them for up to `grace`, SIGKILL the
/// rest. Returns whether SIGKILL was needed.
pub fn terminate_pids(pids: &[i32], grace: Duration) -> bool {
    for &p in pids {
        let _ = super::kill::signal_pid(p, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    loop {
        super::reaper::reap();
        let alive: Vec<i32> = pids.iter().copied().filter(|&p| super::kill::pid_alive(p)).collect();
        if alive.is_empty() {
            return false;
        }
        if Instant::now() >= deadline {
            for p in alive {
                let _ = super::kill::signal_pid(p, Signal::SIGKILL);
            }
            super::reaper::reap();
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
