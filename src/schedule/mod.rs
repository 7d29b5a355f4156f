//! Scheduled jobs (SPEC §2, §3, §4): a job with `schedule` runs when its schedule says, holds
//! its connections only while a run lives, and is `scheduled` in between.
//!
//! - `spec`    parse `schedule` and `timezone` (croner, chrono-tz); occurrences of a schedule.
//! - `decide`  the per-job [`decide::Tracker`] and its pure `step`: which occurrence is due,
//!             what a due run does while the previous one lives (`concurrency`), when a run
//!             that cannot start is missed (`starting_deadline`), what was missed while corral
//!             was down (`catch_up`), and when to wake next. The clock is an input.
//!
//! Nothing here does I/O or reads a clock; `daemon::schedule` executes the decisions (a wake
//! per job, a file with the last occurrence handled) and the actor feeds the job's state
//! machine. A run is an ordinary start of the job: it waits for its budget minimum like any
//! job, and the restart policy applies within it.

pub mod decide;
pub mod spec;

use std::time::Duration;

pub use decide::{Action, Activity, Clock, Input, Outcome, Tracker};
pub use spec::{rfc3339, Spec, SpecError, Wall};

/// What a due run does while the previous run of the job still lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// The due run is skipped (counted as skipped).
    Forbid,
    /// The running run is stopped and the due run starts.
    Replace,
    /// The due run starts as soon as the previous one exits (a job is one process group
    /// with one lock and one grant, so runs never overlap); at most one waits.
    Allow,
}

impl Concurrency {
    pub fn as_str(self) -> &'static str {
        match self {
            Concurrency::Forbid => "forbid",
            Concurrency::Replace => "replace",
            Concurrency::Allow => "allow",
        }
    }
}

/// A job's schedule settings, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    pub spec: Spec,
    pub concurrency: Concurrency,
    /// A due run that has not started this long after its time is missed. None: it may wait
    /// until the next run is due.
    pub starting_deadline: Option<Duration>,
    /// After corral was down: start the latest missed run (true), or none (false).
    pub catch_up: bool,
}
