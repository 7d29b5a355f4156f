//! Signals to jobs' process groups and to single processes.
//! A group that is already gone (ESRCH) counts as success: that is the goal.

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

pub fn signal_group(pgid: i32, signal: Signal) -> std::io::Result<()> {
    if pgid <= 1 {
        // Never let a bookkeeping bug turn into kill(-1) or kill(0).
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("refusing to signal pgid {pgid}")));
    }
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub fn signal_pid(pid: i32, signal: Signal) -> std::io::Result<()> {
    if pid <= 1 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("refusing to signal pid {pid}")));
    }
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether a process group still has members.
pub fn group_alive(pgid: i32) -> bool {
    pgid > 1 && killpg(Pid::from_raw(pgid), None).is_ok()
}

/// Whether `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 || kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}
