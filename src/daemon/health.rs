//! The database probe task (SPEC §6): every `health_interval` a full check
//! (connect, `SELECT 1` under `health_timeout`, server limits, usage), and
//! every `rebalance_interval` a cheaper usage reading, all on corral's one
//! kept connection. With a PgBouncer admin console, each reading also asks it
//! (its sizes, and live use per job from SHOW CLIENTS). Results go to the actor
//! as events; a failed check is retried with backoff and never touches jobs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::supervisor::{Event, EventTx};
use crate::db::pooler::{PgBouncerAdmin, PgBouncerReading};
use crate::db::tls::TlsInfo;
use crate::db::{Health, Probe, ServerLimits, Usage};

#[derive(Debug)]
pub struct DbReport {
    /// When the reading started: usage taken before a quota was told cannot confirm it.
    pub started: Instant,
    /// Present for full checks.
    pub health: Option<Result<(Health, ServerLimits), String>>,
    /// From PgBouncer's SHOW CLIENTS when its admin console answered, else pg_stat_activity.
    pub usage: Result<Usage, String>,
    /// The admin console's answer, when one is configured.
    pub pooler: Option<Result<PgBouncerReading, String>>,
    /// The TLS of corral's connection (None: plaintext).
    pub tls: Option<TlsInfo>,
}

/// The database corral reads, and the PgBouncer admin console in front of it, if any.
#[derive(Clone)]
pub struct Readers {
    pub probe: Arc<Probe>,
    pub admin: Option<Arc<PgBouncerAdmin>>,
}

impl Readers {
    /// Live use: PgBouncer's clients by application_name when the console answers (through a
    /// pooler the server sees the pooler's connections), else pg_stat_activity.
    async fn usage(&self, timeout: Duration) -> (Result<Usage, String>, Option<Result<PgBouncerReading, String>>) {
        let Some(admin) = &self.admin else {
            return (self.probe.usage(timeout).await.map_err(|e| e.to_string()), None);
        };
        match admin.read(timeout).await {
            Ok(r) => {
                let own = self.probe.backend_pid().await.unwrap_or(0);
                (Ok(r.usage(own)), Some(Ok(r)))
            }
            Err(e) => (self.probe.usage(timeout).await.map_err(|e| e.to_string()), Some(Err(e.to_string()))),
        }
    }
}

pub enum ProbeCmd {
    /// Run a full check now; send `then` to the actor after the report.
    CheckNow { then: oneshot::Sender<crate::protocol::Response> },
    /// Read usage now: a restarting job waits for its previous run's backends to close.
    UsageNow,
}

/// The shortest time between two on-demand usage readings.
const USAGE_SPACING: Duration = Duration::from_millis(50);

pub async fn full_check(r: &Readers, timeout: Duration) -> DbReport {
    let started = Instant::now();
    let probe = &r.probe;
    let health = async {
        let h = probe.health(timeout).await.map_err(|e| e.to_string())?;
        let l = probe.server_limits(timeout).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((h, l))
    }
    .await;
    let (usage, pooler) = match &health {
        Ok(_) => r.usage(timeout).await,
        // The console may answer while the server does not (and tell the pooler's sizes).
        Err(e) => (Err(e.clone()), match &r.admin {
            Some(a) => Some(a.read(timeout).await.map_err(|e| e.to_string())),
            None => None,
        }),
    };
    DbReport { started, health: Some(health), usage, pooler, tls: probe.tls().await }
}

pub fn spawn(readers: Readers, health_interval: Duration, rebalance: Duration, timeout: Duration, tx: EventTx) -> mpsc::UnboundedSender<ProbeCmd> {
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut failures: u32 = 0;
        let mut next_full = Instant::now() + health_interval;
        let mut next_usage = Instant::now() + rebalance;
        let mut last_reading = Instant::now().checked_sub(USAGE_SPACING).unwrap_or_else(Instant::now);
        loop {
            let wake = next_full.min(next_usage);
            let cmd = tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => None,
                c = cmd_rx.recv() => match c { Some(c) => Some(c), None => return },
            };
            // Several usage requests queued up are answered by one reading, and requests
            // are not answered more often than every USAGE_SPACING (a restart waiting for
            // lingering backends asks again after every reading).
            let cmd = match cmd {
                Some(ProbeCmd::UsageNow) => {
                    let since = last_reading.elapsed();
                    if since < USAGE_SPACING {
                        tokio::time::sleep(USAGE_SPACING - since).await;
                    }
                    let mut c = None;
                    while let Ok(next) = cmd_rx.try_recv() {
                        if let ProbeCmd::CheckNow { .. } = next {
                            c = Some(next);
                            break;
                        }
                    }
                    c
                }
                other => other,
            };
            let now = Instant::now();
            let full = cmd.is_some() || now >= next_full;
            let report = if full {
                full_check(&readers, timeout).await
            } else {
                let started = Instant::now();
                let (usage, pooler) = readers.usage(timeout).await;
                DbReport { started, health: None, usage, pooler, tls: readers.probe.tls().await }
            };
            last_reading = Instant::now();
            let failed = report.usage.is_err();
            if full {
                failures = if failed { failures + 1 } else { 0 };
                // A failing database is re-checked sooner, backing off up to health_interval.
                let retry = Duration::from_secs(1u64 << failures.min(8)).min(health_interval);
                next_full = Instant::now() + if failed { retry } else { health_interval };
            }
            next_usage = Instant::now() + rebalance;
            if tx.send(Event::Db(report)).is_err() {
                return;
            }
            if let Some(ProbeCmd::CheckNow { then }) = cmd {
                let _ = tx.send(Event::HealthAnswer(then));
            }
        }
    });
    cmd_tx
}
