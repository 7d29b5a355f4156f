//! The database probe task (SPEC §6): every `health_interval` a full check
//! (connect, `SELECT 1` under `health_timeout`, server limits, usage), and
//! every `rebalance_interval` a cheaper usage reading, all on corral's one
//! kept connection. With a PgBouncer admin console, each reading also asks it
//! (its sizes, and live use per job from SHOW CLIENTS). The actor asks for extra
//! readings when connections are about to be freed (an exit, a shrink); those are
//! spaced so that no number of events makes more than a few a second. Results go
//! to the actor as events; a failed check is retried with backoff and never
//! touches jobs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::event::{Event, EventTx};
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
    /// A usage reading is wanted at this time (at once when it has passed), or as soon after
    /// as the spacing allows: an exited job's backends closing, a restart waiting for them,
    /// a shrink to confirm (SPEC §5: freed connections are handed on within about a second).
    UsageAt(Instant),
}

/// On-demand readings start at least this long after the previous reading...
pub const READING_GAP: Duration = Duration::from_millis(50);
/// ...and at most this many start in any second, however many events ask for one.
pub const READINGS_PER_SECOND: usize = 5;

/// The earliest an on-demand reading may start at `now`, given when the last readings started
/// (oldest first; only the last [`READINGS_PER_SECOND`] matter).
pub fn earliest_reading(recent: &VecDeque<Instant>, now: Instant) -> Instant {
    let mut at = now;
    if let Some(last) = recent.back() {
        at = at.max(*last + READING_GAP);
    }
    if recent.len() >= READINGS_PER_SECOND {
        at = at.max(recent[recent.len() - READINGS_PER_SECOND] + Duration::from_secs(1));
    }
    at
}

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
        // The earliest on-demand reading asked for: any number of requests make one reading.
        let mut wanted: Option<Instant> = None;
        let mut recent: VecDeque<Instant> = VecDeque::with_capacity(READINGS_PER_SECOND + 1);
        loop {
            let demand = wanted.map(|w| w.max(earliest_reading(&recent, Instant::now())));
            let wake = demand.map_or(next_full.min(next_usage), |d| d.min(next_full).min(next_usage));
            let then = tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => None,
                c = cmd_rx.recv() => match c {
                    Some(ProbeCmd::UsageAt(at)) => {
                        wanted = Some(wanted.map_or(at, |w| w.min(at)));
                        continue;
                    }
                    Some(ProbeCmd::CheckNow { then }) => Some(then),
                    None => return,
                },
            };
            let started = Instant::now();
            let full = then.is_some() || started >= next_full;
            let report = if full {
                full_check(&readers, timeout).await
            } else {
                let (usage, pooler) = readers.usage(timeout).await;
                DbReport { started, health: None, usage, pooler, tls: readers.probe.tls().await }
            };
            recent.push_back(started);
            if recent.len() > READINGS_PER_SECOND {
                recent.pop_front();
            }
            // A reading answers the requests made before it started, not those for later.
            wanted = wanted.filter(|w| *w > started);
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
            if let Some(then) = then {
                let _ = tx.send(Event::HealthAnswer(then));
            }
        }
    });
    cmd_tx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: &[u64]) -> VecDeque<Instant> {
        ms.iter().map(|m| base + Duration::from_millis(*m)).collect()
    }

    #[test]
    fn first_reading_after_a_quiet_spell_starts_at_once() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(10);
        assert_eq!(earliest_reading(&VecDeque::new(), t0), t0);
        assert_eq!(earliest_reading(&at(t0, &[0, 100, 200, 300, 400]), now), now);
    }

    #[test]
    fn readings_are_spaced_by_the_gap() {
        let t0 = Instant::now();
        let recent = at(t0, &[0]);
        assert_eq!(earliest_reading(&recent, t0 + Duration::from_millis(10)), t0 + READING_GAP);
        assert_eq!(earliest_reading(&recent, t0 + Duration::from_millis(70)), t0 + Duration::from_millis(70));
    }

    #[test]
    fn no_more_than_the_limit_in_any_second() {
        let t0 = Instant::now();
        // Five readings 50 ms apart: the sixth waits until a second after the first.
        let recent = at(t0, &[0, 50, 100, 150, 200]);
        assert_eq!(earliest_reading(&recent, t0 + Duration::from_millis(250)), t0 + Duration::from_secs(1));
        // Four: the gap alone applies.
        let recent = at(t0, &[0, 50, 100, 150]);
        assert_eq!(earliest_reading(&recent, t0 + Duration::from_millis(160)), t0 + Duration::from_millis(200));
    }

    #[test]
    fn requests_as_fast_as_possible_get_at_most_the_limit_per_second() {
        // Someone asks continuously: simulate the schedule the task follows.
        let t0 = Instant::now();
        let mut recent = VecDeque::new();
        let mut now = t0;
        let mut starts = Vec::new();
        while now < t0 + Duration::from_secs(10) {
            let s = earliest_reading(&recent, now);
            starts.push(s);
            recent.push_back(s);
            if recent.len() > READINGS_PER_SECOND {
                recent.pop_front();
            }
            now = s + Duration::from_millis(3); // the reading itself takes a little
        }
        for (i, s) in starts.iter().enumerate() {
            let in_window = starts[i..].iter().take_while(|t| t.duration_since(*s) < Duration::from_secs(1)).count();
            assert!(in_window <= READINGS_PER_SECOND, "{in_window} readings within a second from #{i}");
        }
        for w in starts.windows(2) {
            assert!(w[1].duration_since(w[0]) >= READING_GAP);
        }
        assert!(starts.len() >= 10 * READINGS_PER_SECOND - 1, "the limit is also reached: {}", starts.len());
    }
}
