//! The one reaper (SPEC §7). The only `waitpid` caller in corral.
//!
//! The actor calls [`reap`] on every SIGCHLD and on each sweep. Because the
//! actor also registers every pid it spawns before it next calls `reap`, an
//! exit can never be collected before we know whose it is.

use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::job::Exit;

/// Collect every child that has exited so far, without blocking.
pub fn reap() -> Vec<(i32, Exit)> {
    let mut out = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => out.push((pid.as_raw(), Exit::Code(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => out.push((pid.as_raw(), Exit::Signal(sig as i32))),
            Ok(WaitStatus::StillAlive) => break,
            // Stopped/continued are not reported without WUNTRACED; keep draining.
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            // ECHILD: no children at all.
            Err(_) => break,
        }
    }
    out
}

/// Whether this process has any child left (used by the final PID-1 sweep).
/// `waitid`, not `waitpid`: wait4(2) rejects WNOWAIT/WEXITED with EINVAL,
/// which read as "children left" and made every final sweep wait its full
/// grace and SIGKILL an empty namespace. WNOWAIT leaves a zombie for `reap`.
pub fn has_children() -> bool {
    !matches!(
        waitid(Id::All, WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT | WaitPidFlag::WEXITED),
        Err(Errno::ECHILD)
    )
}
