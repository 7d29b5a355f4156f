//! Everything that touches OS processes: spawning, the one reaper, signals,
//! PID-1 duties, job output, single-instance locks and process scans.
//!
//! Only `reaper` calls `waitpid`. Nothing here decides *when* to act: that is
//! the job state machine's and the supervisor actor's business.

pub mod init;
pub mod kill;
pub mod lock;
pub mod output;
pub mod reaper;
pub mod scan;
pub mod spawn;
