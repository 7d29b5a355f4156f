//! What reaches the actor: every task, timer and signal handler sends one of these through
//! the one channel (SPEC §7: only the actor reads or changes jobs).

use tokio::sync::{mpsc, oneshot};

use super::fleet::FleetReport;
use super::health::DbReport;
use crate::config::{self, Config};
use crate::job::TimerKind;
use crate::protocol::{Request, Response};

pub enum Event {
    Request(Request, oneshot::Sender<Response>),
    Timer { job: String, kind: TimerKind, epoch: u64 },
    /// SIGKILL leftovers of a process group, if it still exists and is not a live job's.
    KillGroup { pgid: i32 },
    KillPids { pids: Vec<i32> },
    ConfigFileChanged,
    /// A database reading from the probe task.
    Db(DbReport),
    /// Answer `corral health` (sent by the probe task after a fresh check).
    HealthAnswer(oneshot::Sender<Response>),
    /// Status, budget, last health (and history) in one turn: `/metrics`, the status task.
    Snapshot { history: bool, reply: oneshot::Sender<Box<super::ask::Snapshot>> },
    /// Reservations may have expired: rebalance.
    SweepBudget,
    /// Sweep now (on demand), without re-arming the periodic timer.
    SweepNow,
    ReloadDebounced { generation: u64 },
    /// The config file as read and validated off the actor (SPEC §8).
    ConfigLoaded(Box<Result<Config, config::ConfigErrors>>),
    Sweep,
    /// The next fleet sync may be due (stale when `epoch` is not the schedule's).
    FleetDue { epoch: u64 },
    /// The outcome of a fleet sync.
    Fleet(FleetReport),
    /// Fleet-wide locks may have gone unconfirmed for `fleet_grace`.
    FleetCheck,
    /// A `quota_signal` held back for a young process is due.
    QuotaSignalDue { job: String, pid: i32 },
    /// A scheduled job's wake (SPEC §2): re-check its schedule against the wall clock.
    ScheduleWake { job: String, gen: u64 },
    /// The alert command worker: spawn or kill an alert command (`alerts::command`).
    Alert(crate::alerts::ActorCmd),
    /// A run's watch (probes, stall timer, memory sampler) found something.
    Watch { job: String, pid: i32, msg: super::watching::WatchMsg },
    /// One walk of the jobs' process trees (while some job has `memory_max`).
    MemorySamples(Vec<(String, crate::watchdog::memory::Sample)>),
}

pub type EventTx = mpsc::UnboundedSender<Event>;
