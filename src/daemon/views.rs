//! The read-only answers: `status`, `health` and the one-turn snapshot for `/metrics` and the
//! systemd status line (SPEC §4). Built from borrowed state; nothing here changes a job.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::ask::Snapshot;
use super::budget::Budget;
use super::history::History;
use super::jobs::{self, JobTable};
use super::schedule::Schedules;
use crate::process::output::{self, LogStore};
use crate::protocol::{HealthReport, StatusReport, SupervisorInfo};

/// Everything the answers read, borrowed from the actor for one answer.
pub struct Views<'a> {
    pub jobs: &'a JobTable,
    pub budget: Option<&'a Budget>,
    pub logs: &'a LogStore,
    pub schedules: &'a Schedules,
    pub history: &'a History,
    pub config_error: Option<&'a str>,
    pub config_path: &'a std::path::Path,
    pub shutting_down: bool,
    pub started: Instant,
    pub started_wall: SystemTime,
    pub zombies_reaped: u64,
    pub orphans_killed: u64,
}

impl Views<'_> {
    /// `corral status` of `names` (already checked against the table).
    pub fn status(&self, names: &[String], now: Instant) -> StatusReport {
        StatusReport {
            jobs: names
                .iter()
                .filter_map(|n| jobs::job_status(self.jobs, self.budget, self.logs, n))
                .map(|s| self.schedules.annotate(s))
                .collect(),
            config_error: self.config_error.map(str::to_string),
            supervisor: SupervisorInfo {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                config: self.config_path.display().to_string(),
                uptime_s: now.saturating_duration_since(self.started).as_secs_f64(),
                started_at: self.started_wall.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
                zombies_reaped: self.zombies_reaped,
                orphans_killed: self.orphans_killed,
                log_lines_dropped: output::stderr_sink().dropped(),
            },
            budget: self.budget.map(|b| b.summary(self.jobs, now)),
        }
    }

    /// `corral health` from the last reading (no database round trip).
    pub fn health(&self) -> HealthReport {
        let supervisor = !self.shutting_down;
        match self.budget {
            None => HealthReport { healthy: true, supervisor, database: None, message: "supervisor running; no database configured".into() },
            Some(b) => b.health(supervisor),
        }
    }

    /// Status of every job, budget, health (and history) in one turn.
    pub fn snapshot(&self, history: bool, now: Instant) -> Snapshot {
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        Snapshot {
            status: self.status(&names, now),
            budget: self.budget.map(|b| b.report(self.jobs, now)),
            health: self.health(),
            history: history.then(|| self.history.report(SystemTime::now())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::jobs::testing::{config, table};

    fn views<'a>(jobs: &'a JobTable, schedules: &'a Schedules, logs: &'a LogStore, history: &'a History, at: Instant) -> Views<'a> {
        Views {
            jobs,
            budget: None,
            logs,
            schedules,
            history,
            config_error: Some("bad line"),
            config_path: std::path::Path::new("/etc/corral.toml"),
            shutting_down: false,
            started: at,
            started_wall: UNIX_EPOCH + std::time::Duration::from_secs(1_000),
            zombies_reaped: 3,
            orphans_killed: 1,
        }
    }

    #[test]
    fn status_shows_the_named_jobs_and_the_supervisor_counters() {
        let cfg = config("[jobs.a]\ncommand = [\"a\"]\n[jobs.b]\ncommand = [\"b\"]\n");
        let (jobs, schedules, logs, history) = (table(&cfg), Schedules::new(&cfg), LogStore::default(), History::default());
        let t0 = Instant::now();
        let v = views(&jobs, &schedules, &logs, &history, t0);
        let s = v.status(&["b".to_string()], t0 + std::time::Duration::from_secs(5));
        assert_eq!(s.jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!((s.supervisor.zombies_reaped, s.supervisor.orphans_killed), (3, 1));
        assert_eq!(s.supervisor.uptime_s, 5.0);
        assert_eq!(s.supervisor.started_at, 1_000.0);
        assert_eq!(s.config_error.as_deref(), Some("bad line"));
        assert!(s.budget.is_none());
    }

    #[test]
    fn health_without_a_database_is_the_supervisor_and_turns_false_in_shutdown() {
        let cfg = config("[jobs.a]\ncommand = [\"a\"]\n");
        let (jobs, schedules, logs, history) = (table(&cfg), Schedules::new(&cfg), LogStore::default(), History::default());
        let mut v = views(&jobs, &schedules, &logs, &history, Instant::now());
        assert!(v.health().healthy && v.health().supervisor);
        v.shutting_down = true;
        assert!(!v.health().supervisor);
        let snap = v.snapshot(true, Instant::now());
        assert_eq!(snap.status.jobs.len(), 1);
        assert!(snap.history.is_some() && snap.budget.is_none());
    }
}
