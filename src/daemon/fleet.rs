//! The fleet coordination task (`[budget] scope = "fleet"`, SPEC §5, §7).
//!
//! Two halves. The task owns the [`Coordinator`] (sharing corral's one own connection):
//! it runs one fleet sync (heartbeat, expiry, the fleet-wide allocation, single-instance
//! locks) for each [`FleetCmd::Sync`] the actor pushes, with the local jobs' request in
//! the command, and sends the outcome back as an event. It also carries out fleet-wide
//! `reserve` and `release` (each followed by a sync with the request that came with it).
//! It never touches jobs and never asks the actor anything.
//!
//! [`Link`] is the actor's side: the channel, what the last sync reported, and [`Schedule`],
//! when the next sync is due (every `rebalance_interval`, sooner while failing or when a job
//! waits for the fleet), at most one in flight, back-to-back syncs spaced by [`MIN_SPACING`].
//! The schedule is pure: it is told the time.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::budget::Budget;
use super::jobs::JobTable;
use super::event::{Event, EventTx};
use crate::db::fleet::{Coordinator, SyncRequest, SyncResult};
use crate::protocol::{ErrorKind, Reply, Response};

/// Requests from the actor. Every one that syncs carries the request to sync with.
pub enum FleetCmd {
    /// Sync now with the local jobs as the actor sees them.
    Sync(Box<SyncRequest>),
    Reserve { name: String, count: u32, ttl: Option<Duration>, reply: oneshot::Sender<Response>, then: Box<SyncRequest> },
    Release { name: String, reply: oneshot::Sender<Response>, then: Box<SyncRequest> },
    /// Shutdown: give our grants and locks back, then end.
    Leave { done: oneshot::Sender<()> },
}

/// The outcome of one sync, for the actor.
#[derive(Debug)]
pub struct FleetReport {
    /// When the snapshot was taken.
    pub started: Instant,
    pub result: Result<SyncResult, String>,
}

/// Back-to-back syncs requested by waiting jobs are spaced at least this much.
pub const MIN_SPACING: Duration = Duration::from_millis(100);

/// When the actor sends the next sync (the fleet concern's own state).
#[derive(Debug, Default)]
pub struct Schedule {
    /// A sync was sent and its report has not come back.
    in_flight: bool,
    /// Asked for while one was in flight: send right after its report.
    wanted: bool,
    /// Failed syncs in a row (retried sooner, backing off to the interval).
    failures: u32,
    last_done: Option<Instant>,
    /// Bumped by every sync sent: a due timer from before is stale.
    pub epoch: u64,
}

/// What the actor does about a wanted sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Build the request and send it now (then call [`Schedule::sent`]).
    SendNow,
    /// Ask again after this delay, with this epoch (spacing).
    After(Duration, u64),
    /// One is in flight: it is sent when that one's report comes back.
    Later,
}

impl Schedule {
    /// A sync is wanted (a job waits, a reading changed what the fleet knows, a timer is due).
    pub fn want(&mut self, now: Instant) -> Next {
        if self.in_flight {
            self.wanted = true;
            return Next::Later;
        }
        let wait = self.last_done.map_or(Duration::ZERO, |t| MIN_SPACING.saturating_sub(now.duration_since(t)));
        if wait.is_zero() {
            Next::SendNow
        } else {
            Next::After(wait, self.epoch)
        }
    }

    pub fn sent(&mut self) {
        self.in_flight = true;
        self.wanted = false;
        self.epoch += 1;
    }

    /// A report came back. Returns the delay of the next periodic sync (with its epoch), and
    /// whether one was asked for meanwhile (send it now).
    pub fn done(&mut self, ok: bool, interval: Duration, now: Instant) -> (Duration, u64, bool) {
        self.in_flight = false;
        self.last_done = Some(now);
        if ok {
            if self.failures > 0 {
                info!(failures = self.failures, "fleet coordination restored");
            }
            self.failures = 0;
        } else {
            self.failures += 1;
        }
        // Retry sooner than the interval while failing, backing off to it.
        let next = if ok { interval } else { Duration::from_millis(250u64 << self.failures.min(6)).min(interval) };
        (next, self.epoch, std::mem::take(&mut self.wanted))
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// What a reading reports to the fleet of each local job: its wants and occupancy.
pub type Signature = Vec<(String, crate::budget::allocate::Wants, u32)>;

/// The actor's end of fleet coordination: the coordinator until the task is started, then
/// the task's channel; when the next sync goes out ([`Schedule`]); what the last one reported.
/// Built from the budget and the jobs it is handed; the only thing it gives back to the actor
/// is a timer to arm.
#[derive(Default)]
pub struct Link {
    coordinator: Option<Coordinator>,
    cmd: Option<mpsc::UnboundedSender<FleetCmd>>,
    schedule: Schedule,
    reported: Signature,
}

/// A fleet timer the actor arms: `Event::FleetDue { epoch }` after the delay.
pub type Due = (Duration, u64);

impl Link {
    pub fn new(coordinator: Coordinator) -> Link {
        Link { coordinator: Some(coordinator), ..Link::default() }
    }

    /// The fleet task runs (commands can be sent).
    pub fn active(&self) -> bool {
        self.cmd.is_some()
    }

    /// Join the fleet before any job starts (the autostart jobs ask for their grants and locks
    /// in this first sync), then hand the coordinator to its task. The report is the actor's.
    pub async fn join(&mut self, first: &SyncRequest, timeout: Duration, tx: EventTx) -> Option<FleetReport> {
        let mut coord = self.coordinator.take()?;
        let report = sync_once(&mut coord, first, timeout).await;
        self.cmd = Some(spawn(coord, timeout, tx));
        Some(report)
    }

    /// The request a sync carries now: remembers what it reports of our jobs.
    pub fn request(&mut self, budget: &Budget, jobs: &JobTable, now: Instant) -> Box<SyncRequest> {
        self.reported = budget.reading_signature(jobs, now);
        self.schedule.sent();
        Box::new(budget.fleet_request(jobs, now))
    }

    /// A sync is wanted: sent now, or after the spacing (the timer returned), or right after
    /// the one in flight.
    pub fn want(&mut self, budget: &Budget, jobs: &JobTable, now: Instant) -> Option<Due> {
        if !self.active() {
            return None;
        }
        match self.schedule.want(now) {
            Next::SendNow => {
                let req = self.request(budget, jobs, now);
                self.send(FleetCmd::Sync(req));
                None
            }
            Next::After(delay, epoch) => Some((delay, epoch)),
            Next::Later => None,
        }
    }

    /// A due timer fired: still current unless a sync went out since it was armed.
    pub fn is_current(&self, epoch: u64) -> bool {
        epoch == self.schedule.epoch
    }

    /// A reading changed what the fleet knows of our jobs (connections closed, a job turned
    /// idle or active): worth a sync at once instead of at the next interval.
    pub fn reading_changed(&self, budget: &Budget, jobs: &JobTable, now: Instant) -> bool {
        budget.reading_signature(jobs, now) != self.reported
    }

    /// A sync's report came back: the next periodic sync's timer, and whether one was asked
    /// for meanwhile (want it now).
    pub fn done(&mut self, report: &FleetReport, interval: Duration, now: Instant) -> (Due, bool) {
        let (next, epoch, wanted) = self.schedule.done(report.result.is_ok(), interval, now);
        if let Err(e) = &report.result {
            if self.schedule.failures() == 1 {
                warn!("fleet sync failed (jobs keep their grants, none are raised): {e}");
            }
        }
        ((next, epoch), wanted)
    }

    /// Send a command; a reserve or release that cannot go out is answered here.
    pub fn send(&self, cmd: FleetCmd) {
        let Some(c) = &self.cmd else { return };
        if let Err(e) = c.send(cmd) {
            if let FleetCmd::Reserve { reply, .. } | FleetCmd::Release { reply, .. } = e.0 {
                let _ = reply.send(Response::err(ErrorKind::Refused, "fleet coordination has stopped"));
            }
        }
    }

    /// Shutdown: the channel to say goodbye on (`shutdown::leave_fleet`).
    pub fn leave(&mut self) -> Option<mpsc::UnboundedSender<FleetCmd>> {
        self.cmd.take()
    }
}

/// A single-instance job runs only while its fleet-wide lock is confirmed ours: the running
/// ones whose lock was not for `rebalance_interval + health_timeout + fleet_grace`
/// (coordination lost, or another corral holds it) must stop and wait for it again.
pub fn unconfirmed_locks(budget: &Budget, jobs: &JobTable, now: Instant) -> Vec<String> {
    let Some(f) = budget.fleet.as_ref() else { return Vec::new() };
    let hold_for = budget.fleet_hold();
    jobs.iter()
        .filter(|(n, j)| j.cfg.single_instance && j.m.pid.is_some() && j.m.state.wants_to_run() && !f.holds(n, hold_for, now))
        .map(|(n, _)| n.clone())
        .collect()
}

/// One sync with the request the actor gave, bounded by `timeout`.
pub async fn sync_once(coord: &mut Coordinator, req: &SyncRequest, timeout: Duration) -> FleetReport {
    let started = Instant::now();
    let result = match tokio::time::timeout(timeout, coord.sync(req)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => {
            // The transaction may still be open on the server: start over on a new connection.
            coord.disconnect();
            Err(format!("fleet sync timed out after {timeout:?}"))
        }
    };
    FleetReport { started, result }
}

/// Carry out one command; false after `Leave`. Replies to reserve/release wait in
/// `after_sync`: the client's next `budget` must already see the change. The request to
/// sync with next goes to `sync`.
async fn serve(
    coord: &mut Coordinator,
    cmd: FleetCmd,
    timeout: Duration,
    after_sync: &mut Vec<(oneshot::Sender<Response>, Response)>,
    sync: &mut Option<Box<SyncRequest>>,
) -> bool {
    match cmd {
        FleetCmd::Sync(req) => *sync = Some(req),
        FleetCmd::Reserve { name, count, ttl, reply, then } => {
            *sync = Some(then);
            let resp = match tokio::time::timeout(timeout, coord.reserve(&name, count, ttl)).await {
                Ok(Ok(Ok(()))) => {
                    info!(reservation = %name, count, ?ttl, "fleet-wide reservation added");
                    Response::ok(Reply::Done { message: format!("reserved {count} connection(s) as {name} (fleet-wide)") })
                }
                Ok(Ok(Err(why))) => Response::err(ErrorKind::Refused, why),
                Ok(Err(e)) => Response::err(ErrorKind::Refused, format!("fleet coordination unavailable: {e}")),
                Err(_) => {
                    coord.disconnect();
                    Response::err(ErrorKind::Refused, "fleet coordination timed out")
                }
            };
            after_sync.push((reply, resp));
        }
        FleetCmd::Release { name, reply, then } => {
            *sync = Some(then);
            let resp = match tokio::time::timeout(timeout, coord.release(&name)).await {
                Ok(Ok(Some(n))) => {
                    info!(reservation = %name, count = n, "fleet-wide reservation released");
                    Response::ok(Reply::Done { message: format!("released {name} ({n} connections, fleet-wide)") })
                }
                Ok(Ok(None)) => Response::err(ErrorKind::Refused, format!("no reservation named {name:?}")),
                Ok(Err(e)) => Response::err(ErrorKind::Refused, format!("fleet coordination unavailable: {e}")),
                Err(_) => {
                    coord.disconnect();
                    Response::err(ErrorKind::Refused, "fleet coordination timed out")
                }
            };
            after_sync.push((reply, resp));
        }
        FleetCmd::Leave { done } => {
            let _ = tokio::time::timeout(timeout, coord.leave()).await;
            let _ = done.send(());
            return false;
        }
    }
    true
}

pub fn spawn(mut coord: Coordinator, timeout: Duration, tx: EventTx) -> mpsc::UnboundedSender<FleetCmd> {
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
    tokio::task::spawn_local(async move {
        loop {
            let Some(cmd) = cmd_rx.recv().await else { return };
            let (mut replies, mut sync) = (Vec::new(), None);
            if !serve(&mut coord, cmd, timeout, &mut replies, &mut sync).await {
                return;
            }
            // Serve whatever else arrived meanwhile; any number of sync requests make one
            // sync, with the newest request.
            while let Ok(c) = cmd_rx.try_recv() {
                if !serve(&mut coord, c, timeout, &mut replies, &mut sync).await {
                    return;
                }
            }
            let Some(req) = sync else { continue };
            let report = sync_once(&mut coord, &req, timeout).await;
            if tx.send(Event::Fleet(report)).is_err() {
                return;
            }
            for (reply, resp) in replies {
                let _ = reply.send(resp);
            }
        }
    });
    cmd_tx
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(2);

    #[test]
    fn one_sync_in_flight_and_the_wanted_one_follows_its_report() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        assert_eq!(s.want(t0), Next::SendNow);
        s.sent();
        // Asked again while in flight: once, after the report.
        assert_eq!(s.want(t0), Next::Later);
        assert_eq!(s.want(t0), Next::Later);
        let (next, epoch, wanted) = s.done(true, INTERVAL, t0);
        assert_eq!((next, epoch, wanted), (INTERVAL, 1, true));
        // Right after a report, the next one waits out the spacing (with the current epoch).
        assert_eq!(s.want(t0 + Duration::from_millis(30)), Next::After(Duration::from_millis(70), 1));
        assert_eq!(s.want(t0 + MIN_SPACING), Next::SendNow);
        s.sent();
        // A due timer armed before this send is stale now.
        assert_eq!(s.epoch, 2);
    }

    #[test]
    fn failures_retry_sooner_backing_off_to_the_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        let mut delays = Vec::new();
        for _ in 0..6 {
            s.sent();
            delays.push(s.done(false, INTERVAL, t0).0);
        }
        assert_eq!(delays.iter().map(|d| d.as_millis()).collect::<Vec<_>>(), vec![500, 1000, 2000, 2000, 2000, 2000]);
        assert_eq!(s.failures(), 6);
        s.sent();
        assert_eq!(s.done(true, INTERVAL, t0).0, INTERVAL);
        assert_eq!(s.failures(), 0);
    }
}
