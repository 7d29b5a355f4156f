//! Single-instance locks (SPEC §7): an exclusive `flock` on
//! `<lock_dir>/<job>.lock`, holding the pid of the job's process.
//!
//! The job's process inherits the locked descriptor (see `spawn`), so the lock
//! lives as long as the job does, even when corral itself is SIGKILLed. Corral
//! keeps its own copy across restarts and drops it when the job is stopped.
//!
//! SPEC §10: nobody else may be able to hold a job back. The lock directory is 0700 and the
//! lock files 0600, both owned by corral's user; a directory or file owned by another user is
//! refused rather than used. When a lock is held anyway, the reason names the process that
//! really holds it (the recorded pid when it still has the file open, else the one
//! `/proc/locks` names), not a pid that is long gone.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct JobLock {
    file: File,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock {path} is held by {}", holder.as_ref().map(|h| h.to_string()).unwrap_or_else(|| "another process".into()))]
    Held {
        path: PathBuf,
        /// The process found holding it, when one can be found.
        holder: Option<Holder>,
        /// The pid written in the file is gone although the lock is held: something it
        /// forked (or a stranger) holds it.
        recorded_gone: bool,
    },
    #[error("cannot open lock {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Unsafe(String),
}

/// A process holding a lock, for messages: `pid 4242 (python3)`, with its uid when it is not
/// corral's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: i32,
    pub name: Option<String>,
    pub foreign_uid: Option<u32>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {}", self.pid)?;
        match (&self.name, self.foreign_uid) {
            (Some(n), Some(u)) => write!(f, " ({n}, uid {u})"),
            (Some(n), None) => write!(f, " ({n})"),
            (None, Some(u)) => write!(f, " (uid {u})"),
            (None, None) => Ok(()),
        }
    }
}

impl JobLock {
    pub fn acquire(lock_dir: &Path, job: &str) -> Result<JobLock, LockError> {
        let path = lock_dir.join(format!("{job}.lock"));
        let io = |source| LockError::Io { path: path.clone(), source };
        private_dir(lock_dir)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            // A symlink planted in place of the lock would point our lock anywhere.
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io)?;
        private_file(&file, &path)?;
        // flock(2) on Linux (LOCK_EX | LOCK_NB): the lock belongs to the open file, so the job's
        // inherited descriptor keeps it after ours is closed.
        match file.try_lock() {
            Ok(()) => Ok(JobLock { file, path }),
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut s = String::new();
                let _ = file.read_to_string(&mut s);
                let recorded = s.trim().parse::<i32>().ok().filter(|p| *p > 0);
                let (holder, recorded_gone) = find_holder(&file, recorded);
                Err(LockError::Held { path, holder, recorded_gone })
            }
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }

    /// Record the job's pid so a second corral can say who holds the lock.
    pub fn write_pid(&mut self, pid: i32) {
        let _ = self.file.set_len(0);
        let _ = self.file.seek(SeekFrom::Start(0));
        let _ = writeln!(self.file, "{pid}");
    }

    /// The descriptor the job's process inherits.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Make `dir` a directory only corral's user can use (0700), creating it (and, with the
/// default mode, its parents). A directory owned by someone else is refused: its owner could
/// hold or replace what corral puts there.
pub fn private_dir(dir: &Path) -> Result<(), LockError> {
    secure_dir(dir, 0o700)
}

/// Like [`private_dir`] with another mode (e.g. 0711 so jobs running as another user can reach
/// a file inside by name, without listing or writing the directory).
pub fn secure_dir(dir: &Path, mode: u32) -> Result<(), LockError> {
    let io = |source| LockError::Io { path: dir.to_path_buf(), source };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    let meta = std::fs::metadata(dir).map_err(io)?;
    if !meta.is_dir() {
        return Err(LockError::Unsafe(format!("{} is not a directory", dir.display())));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(LockError::Unsafe(format!(
            "{} belongs to uid {}, not to corral (uid {me}): its owner could hold a job back; give corral a directory of its own (lock_dir)",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o7777 != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    Ok(())
}

/// A lock (or quota) file corral opened: it must be corral's, and nobody else's to open.
fn private_file(file: &File, path: &Path) -> Result<(), LockError> {
    let io = |source| LockError::Io { path: path.to_path_buf(), source };
    let meta = file.metadata().map_err(io)?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(LockError::Unsafe(format!(
            "{} belongs to uid {}, not to corral (uid {me}): remove it",
            path.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

/// Who holds `file`'s lock: the recorded pid when it is alive and has the file open, else
/// the live process `/proc/locks` names for it. Also whether the recorded pid is gone.
fn find_holder(file: &File, recorded: Option<i32>) -> (Option<Holder>, bool) {
    let Ok(meta) = file.metadata() else { return (None, false) };
    let (dev, ino) = (meta.dev(), meta.ino());
    let recorded_alive = recorded.filter(|p| crate::process::kill::pid_alive(*p));
    if let Some(pid) = recorded_alive.filter(|p| has_open(*p, dev, ino) != Some(false)) {
        return (Some(holder(pid)), false);
    }
    let listed = std::fs::read_to_string("/proc/locks")
        .ok()
        .and_then(|text| flock_owner(&text, dev, ino))
        .filter(|p| crate::process::kill::pid_alive(*p));
    (listed.map(holder), recorded.is_some() && recorded_alive.is_none())
}

fn holder(pid: i32) -> Holder {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string());
    let uid = std::fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid());
    let me = nix::unistd::geteuid().as_raw();
    Holder { pid, name, foreign_uid: uid.filter(|u| *u != me) }
}

/// Whether `pid` has the file (dev, ino) open; None when its descriptors cannot be read.
fn has_open(pid: i32, dev: u64, ino: u64) -> Option<bool> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(fds.flatten().any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino)))
}

/// The pid `/proc/locks` gives for a FLOCK on (dev, ino). Lines read
/// `1: FLOCK  ADVISORY  WRITE 4242 fe:00:5357923 0 EOF` (device in hex).
fn flock_owner(text: &str, dev: u64, ino: u64) -> Option<i32> {
    let want = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // A blocked waiter's line starts with "->": skip it, it holds nothing.
        (f.len() >= 6 && f[1] == "FLOCK" && f[5] == want).then(|| f[4].parse().ok()).flatten().filter(|p: &i32| *p > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines() {
        let text = "1: FLOCK  ADVISORY  WRITE 32532 fe:00:5357923 0 EOF\n1: -> FLOCK  ADVISORY  WRITE 77 fe:00:42 0 EOF\n2: FLOCK  ADVISORY  WRITE 4242 fe:00:42 0 EOF\n3: POSIX  ADVISORY  WRITE 9 fe:00:43 0 EOF\n";
        let dev = libc::makedev(0xfe, 0);
        assert_eq!(flock_owner(text, dev, 42), Some(4242));
        assert_eq!(flock_owner(text, dev, 43), None);
        assert_eq!(flock_owner(text, libc::makedev(8, 1), 42), None);
    }

    #[test]
    fn the_directory_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("run/locks");
        let lock = JobLock::acquire(&locks, "a").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&locks), 0o700);
        assert_eq!(mode(lock.path()), 0o600);
        drop(lock);
        // Left wide open by an older corral: tightened on the next acquire.
        std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(locks.join("a.lock"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let lock = JobLock::acquire(&locks, "a").unwrap();
        assert_eq!((mode(&locks), mode(lock.path())), (0o700, 0o600));
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        private_dir(&locks).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), locks.join("a.lock")).unwrap();
        assert!(matches!(JobLock::acquire(&locks, "a"), Err(LockError::Io { .. })));
        assert!(!dir.path().join("elsewhere").exists());
    }

    #[test]
    fn a_held_lock_names_the_live_holder_not_the_recorded_dead_pid() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        let mut first = JobLock::acquire(&locks, "a").unwrap();
        // The file names a pid that is long gone; we (this test process) hold the flock.
        first.write_pid(i32::MAX - 1);
        match JobLock::acquire(&locks, "a") {
            Err(LockError::Held { holder: Some(h), recorded_gone: true, .. }) => {
                assert_eq!(h.pid, std::process::id() as i32);
                assert_eq!(h.foreign_uid, None);
            }
            other => panic!("{other:?}"),
        }
        // A recorded pid that is alive and has the file open is named as it is.
        first.write_pid(std::process::id() as i32);
        match JobLock::acquire(&locks, "a") {
            Err(LockError::Held { holder: Some(h), recorded_gone: false, .. }) => assert_eq!(h.pid, std::process::id() as i32),
            other => panic!("{other:?}"),
        }
    }
}
