//! Shutdown's own state (SPEC §7, §9): whether corral is stopping, who waits for the end,
//! and what happens after the last job stopped (the final sweep, leaving the fleet). The
//! actor stops the jobs; this module decides when it is over and does the last steps.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::fleet::FleetCmd;
use super::jobs::JobTable;
use crate::config::OrphanPolicy;
use crate::process::init;
use crate::process::scan::Snapshot;
use crate::protocol::{Reply, Response};

/// How long leftovers of an exited job or sweep get between SIGTERM and SIGKILL.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(3);

#[derive(Default)]
pub struct Shutdown {
    /// Stopping: nothing starts any more, verbs are refused.
    pub requested: bool,
    /// `corral shutdown` clients, answered once every job stopped.
    waiters: Vec<oneshot::Sender<Response>>,
}

impl Shutdown {
    /// True the first time: the actor stops every job.
    pub fn begin(&mut self) -> bool {
        !std::mem::replace(&mut self.requested, true)
    }

    pub fn wait(&mut self, reply: oneshot::Sender<Response>) {
        self.waiters.push(reply);
    }

    /// Requested, and no job has a process any more.
    pub fn over(&self, jobs: &JobTable) -> bool {
        self.requested && jobs.values().all(|j| !j.m.state.is_live())
    }

    /// Every job stopped: sweep what is left (the whole namespace as PID 1, adopted orphans
    /// as subreaper), then answer the waiters.
    pub fn finish(&mut self, orphans: OrphanPolicy, own_pid: i32) {
        if init::is_pid1() {
            let (reaped, killed) = init::final_sweep(Duration::from_secs(3));
            info!(reaped, sigkill_needed = killed, "final sweep of the namespace done");
        } else if orphans == OrphanPolicy::Kill {
            // Orphans adopted as subreaper would otherwise pass to init and live on.
            let strays = Snapshot::take().stray_children(own_pid, &HashSet::new(), &HashSet::new());
            if !strays.is_empty() {
                let killed = init::terminate_pids(&strays, ORPHAN_GRACE);
                info!(orphans = strays.len(), sigkill_needed = killed, "terminated adopted orphans before exit");
            }
        }
        for reply in self.waiters.drain(..) {
            let _ = reply.send(Response::ok(Reply::Done { message: "all jobs stopped; supervisor exiting".into() }));
        }
        info!("all jobs stopped; exiting");
    }
}

/// Give our grants and locks back now rather than after three missed heartbeats.
pub async fn leave_fleet(cmd: mpsc::UnboundedSender<FleetCmd>) {
    let (done, wait) = oneshot::channel();
    if cmd.send(FleetCmd::Leave { done }).is_ok() && tokio::time::timeout(Duration::from_secs(3), wait).await.is_err() {
        warn!("could not leave the fleet in time: the others expire this corral after three intervals");
    }
}
