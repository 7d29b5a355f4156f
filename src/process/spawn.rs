//! Starting a job's process (SPEC §7).
//!
//! `std::process::Command`, never `tokio::process`: the one reaper must be the
//! only waiter. The child gets its own process group (so stopping a job stops
//! everything it forked), std's reset of the signal mask and SIGPIPE, and the
//! job's lock descriptor without close-on-exec so the lock outlives corral.
//! Nothing here needs `/dev` or NSS: stdin is an empty pipe, users come from
//! `/etc/passwd` (`lookup::users`).

use std::collections::BTreeMap;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub struct SpawnSpec<'a> {
    pub command: &'a [String],
    pub cwd: Option<&'a PathBuf>,
    pub env: &'a BTreeMap<String, String>,
    pub extra_env: &'a [(String, String)],
    pub user: Option<&'a str>,
    pub inherit_fd: Option<RawFd>,
    /// Inherited variables the job must not see (set again by `env`/`extra_env` if wanted).
    pub remove_env: &'a [&'a str],
}

pub struct Spawned {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

pub fn spawn(spec: &SpawnSpec<'_>) -> std::io::Result<Spawned> {
    let (program, args) = spec
        .command
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    for k in spec.remove_env {
        cmd.env_remove(k);
    }
    cmd.args(args)
        .envs(spec.env)
        .envs(spec.extra_env.iter().map(|(k, v)| (k, v)))
        .stdin(empty_stdin()?)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = spec.cwd {
        cmd.current_dir(cwd);
    }
    if let Some(user) = spec.user {
        // From /etc/passwd itself, not NSS: the binary is static (see `lookup::users`).
        let u = crate::lookup::users::user(user).map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e))?;
        if !nix::unistd::geteuid().is_root() && u.uid != nix::unistd::geteuid().as_raw() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("user = {user:?} needs corral to run as root"),
            ));
        }
        cmd.uid(u.uid).gid(u.gid);
        cmd.env("USER", &u.name).env("LOGNAME", &u.name).env("HOME", &u.home);
    }
    // The lock descriptor is inherited by clearing close-on-exec in corral for
    // the duration of this spawn (only the actor thread spawns, so no other
    // child can catch it), instead of a pre_exec hook: without hooks std uses
    // posix_spawn (vfork), several times faster than fork under a crash storm.
    let _inherit = spec.inherit_fd.map(InheritGuard::new).transpose()?;
    let mut child = cmd.spawn()?;
    drop(_inherit);
    let pid = child.id() as i32;
    let (Some(stdout), Some(stderr)) = (child.stdout.take().map(OwnedFd::from), child.stderr.take().map(OwnedFd::from)) else {
        // Both were set to piped above, so std always returns them; never leave an untracked
        // child behind if it did not (the reaper collects it).
        let _ = crate::process::kill::signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
        return Err(std::io::Error::other("the job's output pipes were not created"));
    };
    // Dropping `Child` neither waits nor kills: the reaper owns the exit.
    drop(child);
    Ok(Spawned { pid, stdout, stderr })
}

/// What `/dev/null` gives a reader, without needing `/dev` (an empty chroot, a bare image):
/// a pipe whose write end is already closed, so the job reads EOF at once.
fn empty_stdin() -> std::io::Result<Stdio> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    drop(write);
    Ok(Stdio::from(read))
}

/// Clears FD_CLOEXEC on a descriptor until dropped.
struct InheritGuard(RawFd);

impl InheritGuard {
    fn new(fd: RawFd) -> std::io::Result<InheritGuard> {
        set_cloexec(fd, false)?;
        Ok(InheritGuard(fd))
    }
}

impl Drop for InheritGuard {
    fn drop(&mut self) {
        let _ = set_cloexec(self.0, true);
    }
}

fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let mut flags = FdFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFD)?);
    flags.set(FdFlag::FD_CLOEXEC, on);
    fcntl(fd, FcntlArg::F_SETFD(flags))?;
    Ok(())
}
