//! Single-instance locks (SPEC §7): an exclusive `flock` on
//! `<lock_dir>/<job>.lock`, holding the pid of the job's process.
//!
//! The job's process inherits the locked descriptor (see `spawn`), so the lock
//! lives as long as the job does, even when corral itself is SIGKILLed. Corral
//! keeps its own copy across restarts and drops it when the job is stopped.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

#[derive(Debug)]
pub struct JobLock {
    file: File,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock {path} is held by pid {}", holder.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into()))]
    Held { path: PathBuf, holder: Option<i32> },
    #[error("cannot open lock {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl JobLock {
    pub fn acquire(lock_dir: &Path, job: &str) -> Result<JobLock, LockError> {
        let path = lock_dir.join(format!("{job}.lock"));
        let io = |source| LockError::Io { path: path.clone(), source };
        std::fs::create_dir_all(lock_dir).map_err(io)?;
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        // SAFETY: plain flock(2) on a descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        match if rc == 0 { Ok(()) } else { Err(Errno::last()) } {
            Ok(()) => Ok(JobLock { file, path }),
            Err(Errno::EWOULDBLOCK) => {
                let mut s = String::new();
                let _ = file.read_to_string(&mut s);
                Err(LockError::Held { path, holder: s.trim().parse().ok() })
            }
            Err(e) => Err(io(e.into())),
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
