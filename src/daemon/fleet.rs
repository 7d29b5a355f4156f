//! The fleet coordination task (`[budget] scope = "fleet"`, SPEC §5, §7).
//!
//! Owns the [`Coordinator`] (corral's second own connection). Every
//! `rebalance_interval`, or sooner when the actor asks, it asks the actor for a
//! snapshot of the local jobs, runs one fleet sync (heartbeat, expiry, the
//! fleet-wide allocation, single-instance locks) and sends the outcome back as
//! an event. It also carries out fleet-wide `reserve` and `release`. It never
//! touches jobs: the actor applies what a sync decided.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::supervisor::{Event, EventTx};
use crate::db::fleet::{Coordinator, SyncRequest, SyncResult};
use crate::protocol::{ErrorKind, Reply, Response};

/// Requests from the actor.
pub enum FleetCmd {
    /// Sync as soon as possible (a job waits for a grant or a lock).
    SyncNow,
    Reserve { name: String, count: u32, ttl: Option<Duration>, reply: oneshot::Sender<Response> },
    Release { name: String, reply: oneshot::Sender<Response> },
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
const MIN_SPACING: Duration = Duration::from_millis(100);

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
/// `after_sync`: the client's next `budget` must already see the change.
async fn serve(coord: &mut Coordinator, cmd: FleetCmd, timeout: Duration, after_sync: &mut Vec<(oneshot::Sender<Response>, Response)>) -> bool {
    match cmd {
        FleetCmd::SyncNow => {}
        FleetCmd::Reserve { name, count, ttl, reply } => {
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
        FleetCmd::Release { name, reply } => {
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

pub fn spawn(mut coord: Coordinator, interval: Duration, timeout: Duration, tx: EventTx) -> mpsc::UnboundedSender<FleetCmd> {
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
    tokio::task::spawn_local(async move {
        let mut next = Instant::now() + interval;
        let mut last = Instant::now();
        let mut failures: u32 = 0;
        loop {
            let cmd = tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => None,
                c = cmd_rx.recv() => match c { Some(c) => Some(c), None => return },
            };
            let mut replies = Vec::new();
            if let Some(c) = cmd {
                if !serve(&mut coord, c, timeout, &mut replies).await {
                    return;
                }
            }
            // Serve whatever else arrived meanwhile; any number of sync requests make one sync.
            while let Ok(c) = cmd_rx.try_recv() {
                if !serve(&mut coord, c, timeout, &mut replies).await {
                    return;
                }
            }
            let wait = MIN_SPACING.saturating_sub(last.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let (snap_tx, snap_rx) = oneshot::channel();
            if tx.send(Event::FleetSnapshot(snap_tx)).is_err() {
                return;
            }
            let Ok(req) = snap_rx.await else { return };
            let report = sync_once(&mut coord, &req, timeout).await;
            last = Instant::now();
            match &report.result {
                Ok(_) => {
                    if failures > 0 {
                        info!(failures, "fleet coordination restored");
                    }
                    failures = 0;
                    next = Instant::now() + interval;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        warn!("fleet sync failed (jobs keep their grants, none are raised): {e}");
                    }
                    // Retry sooner than the interval while failing, backing off to it.
                    let retry = Duration::from_millis(250u64 << failures.min(6)).min(interval);
                    next = Instant::now() + retry;
                }
            }
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
