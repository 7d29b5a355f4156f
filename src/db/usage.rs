//! Live connection use as read from `pg_stat_activity`, and who it belongs to (SPEC §3, §5).
//!
//! Owns: the `corral/<service>/<job>` application_name convention (parse and format), the
//! [`Attribution`] of a connection, and the [`Usage`] snapshot with the sums the budget needs.
//! Pure data: no I/O; the query that fills it lives in `probe.rs`.

use serde::{Deserialize, Serialize};

/// Prefix of every application_name corral hands out.
pub const APP_PREFIX: &str = "corral/";
/// The job name corral uses for its own connection: `corral/<service>/_corral`.
pub const OWN_JOB: &str = "_corral";
/// PostgreSQL keeps at most NAMEDATALEN-1 bytes of application_name and silently truncates the
/// rest, which would attribute a long `corral/<service>/<job>` to a job that does not exist.
/// Config validation should reject service/job names that do not fit.
pub const MAX_APPLICATION_NAME_BYTES: usize = 63;

/// Whose connection a pg_stat_activity row is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Attribution {
    /// A job's: application_name `corral/<service>/<job>`.
    Job { service: String, job: String },
    /// A supervisor's own connection: `corral/<service>/_corral`.
    Corral { service: String },
    /// Anything else (psql by hand, other apps, connections through a pooler that dropped the
    /// application_name), grouped by role and application_name as §5 asks.
    External {
        role: String,
        application_name: String,
    },
}

impl Attribution {
    /// Classifies a connection by its application_name and role (`usename`).
    pub fn classify(application_name: &str, role: &str) -> Attribution {
        if let Some(rest) = application_name.strip_prefix(APP_PREFIX) {
            if let Some((service, job)) = rest.split_once('/') {
                if !service.is_empty() && !job.is_empty() {
                    return if job == OWN_JOB {
                        Attribution::Corral {
                            service: service.to_string(),
                        }
                    } else {
                        Attribution::Job {
                            service: service.to_string(),
                            job: job.to_string(),
                        }
                    };
                }
            }
        }
        Attribution::External {
            role: role.to_string(),
            application_name: application_name.to_string(),
        }
    }

    /// The application_name a job of `service` gets (`PGAPPNAME`, §3).
    pub fn job_application_name(service: &str, job: &str) -> String {
        format!("{APP_PREFIX}{service}/{job}")
    }

    /// The application_name of corral's own connection for `service`.
    pub fn corral_application_name(service: &str) -> String {
        format!("{APP_PREFIX}{service}/{OWN_JOB}")
    }

    /// True for connections corral accounts for (its jobs' and its own), of any service.
    pub fn is_corral(&self) -> bool {
        !matches!(self, Attribution::External { .. })
    }
}

/// `pg_stat_activity.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    Active,
    Idle,
    IdleInTransaction,
    IdleInTransactionAborted,
    FastpathFunctionCall,
    Disabled,
    /// NULL: another role's session that we lack the privilege to inspect (pg_monitor or
    /// pg_read_all_stats would show it), or a state this code does not know.
    Unknown,
}

impl BackendState {
    pub fn parse(state: Option<&str>) -> BackendState {
        match state {
            Some("active") => BackendState::Active,
            Some("idle") => BackendState::Idle,
            Some("idle in transaction") => BackendState::IdleInTransaction,
            Some("idle in transaction (aborted)") => BackendState::IdleInTransactionAborted,
            Some("fastpath function call") => BackendState::FastpathFunctionCall,
            Some("disabled") => BackendState::Disabled,
            _ => BackendState::Unknown,
        }
    }

    /// Idle states: the connection holds a slot without running a statement.
    pub fn is_idle(self) -> bool {
        matches!(
            self,
            BackendState::Idle
                | BackendState::IdleInTransaction
                | BackendState::IdleInTransactionAborted
        )
    }
}

/// Client backends sharing (application_name, role, state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageGroup {
    pub attribution: Attribution,
    pub application_name: String,
    pub role: String,
    pub state: BackendState,
    pub count: u32,
    /// Idle states only: the longest `now() - state_change`, in seconds (the stalest idle
    /// connection, what a leak looks like).
    pub max_idle_secs: Option<f64>,
    /// Idle states only: the shortest `now() - state_change`, in seconds (time since the most
    /// recent activity; the budget's `idle_after` compares against this).
    pub min_idle_secs: Option<f64>,
    /// Backend pids, newest connection first; filled for corral's own and its jobs' groups only
    /// (enforcement and logs need them; external ones are not ours to act on).
    pub pids: Vec<i32>,
}

/// One read of pg_stat_activity (client backends only, all databases: the limit is
/// server-wide).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Sorted by (application_name, role, state).
    pub groups: Vec<UsageGroup>,
    /// Backend pid of the connection that read this (counted in `groups` as Corral).
    pub own_backend_pid: i32,
    /// Rows whose backend_type and state were hidden from us (insufficient privilege) and were
    /// counted as client backends in state Unknown. Non-zero means the role lacks pg_monitor
    /// and the counts may include a few parallel workers of other roles.
    pub hidden: u32,
}

impl Usage {
    /// All client connections on the server.
    pub fn total(&self) -> u32 {
        self.groups.iter().map(|g| g.count).sum()
    }

    /// Connections of one job.
    pub fn job(&self, service: &str, job: &str) -> u32 {
        self.sum(
            |a| matches!(a, Attribution::Job { service: s, job: j } if s == service && j == job),
        )
    }

    /// Active (non-idle) connections of one job.
    pub fn job_active(&self, service: &str, job: &str) -> u32 {
        self.groups
            .iter()
            .filter(|g| !g.state.is_idle())
            .filter(|g| matches!(&g.attribution, Attribution::Job { service: s, job: j } if s == service && j == job))
            .map(|g| g.count)
            .sum()
    }

    /// Seconds since the last activity of a job whose connections are all idle; `None` when
    /// it has an active (or unknown-state) connection or none at all.
    pub fn job_idle_secs(&self, service: &str, job: &str) -> Option<f64> {
        let mut groups = self
            .groups
            .iter()
            .filter(|g| matches!(&g.attribution, Attribution::Job { service: s, job: j } if s == service && j == job))
            .peekable();
        groups.peek()?;
        let mut min: Option<f64> = None;
        for g in groups {
            let secs = g.min_idle_secs?;
            min = Some(min.map_or(secs, |m: f64| m.min(secs)));
        }
        min
    }

    /// Supervisor connections (`corral/<service>/_corral`) of one service.
    pub fn corral(&self, service: &str) -> u32 {
        self.sum(|a| matches!(a, Attribution::Corral { service: s } if s == service))
    }

    /// Connections with no corral application_name.
    pub fn external(&self) -> u32 {
        self.sum(|a| !a.is_corral())
    }

    /// Connections matching `pred`.
    pub fn sum(&self, pred: impl Fn(&Attribution) -> bool) -> u32 {
        self.groups
            .iter()
            .filter(|g| pred(&g.attribution))
            .map(|g| g.count)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_job_corral_external() {
        assert_eq!(
            Attribution::classify("corral/scraper/layer1_5", "app"),
            Attribution::Job {
                service: "scraper".into(),
                job: "layer1_5".into()
            }
        );
        assert_eq!(
            Attribution::classify("corral/scraper/_corral", "app"),
            Attribution::Corral {
                service: "scraper".into()
            }
        );
        for name in [
            "psql",
            "",
            "corral/",
            "corral/svc",
            "corral//job",
            "corral/svc/",
            "Corral/a/b",
        ] {
            assert_eq!(
                Attribution::classify(name, "bob"),
                Attribution::External {
                    role: "bob".into(),
                    application_name: name.into()
                },
                "{name:?}"
            );
        }
    }

    #[test]
    fn application_names_round_trip() {
        let n = Attribution::job_application_name("svc", "jobA");
        assert_eq!(n, "corral/svc/jobA");
        assert!(matches!(
            Attribution::classify(&n, "r"),
            Attribution::Job { .. }
        ));
        let n = Attribution::corral_application_name("svc");
        assert_eq!(
            Attribution::classify(&n, "r"),
            Attribution::Corral {
                service: "svc".into()
            }
        );
    }

    #[test]
    fn backend_states() {
        assert_eq!(
            BackendState::parse(Some("idle in transaction")),
            BackendState::IdleInTransaction
        );
        assert_eq!(BackendState::parse(None), BackendState::Unknown);
        assert!(BackendState::Idle.is_idle());
        assert!(!BackendState::Active.is_idle());
        assert!(!BackendState::Unknown.is_idle());
    }

    fn group(app: &str, state: BackendState, count: u32, idle: Option<f64>) -> UsageGroup {
        UsageGroup {
            attribution: Attribution::classify(app, "app"),
            application_name: app.into(),
            role: "app".into(),
            state,
            count,
            max_idle_secs: idle,
            min_idle_secs: idle,
            pids: vec![],
        }
    }

    #[test]
    fn usage_sums() {
        let u = Usage {
            groups: vec![
                group("corral/s/a", BackendState::Active, 2, None),
                group("corral/s/a", BackendState::Idle, 3, Some(5.0)),
                group("corral/s/b", BackendState::Idle, 1, Some(90.0)),
                group("corral/s/b", BackendState::IdleInTransaction, 1, Some(30.0)),
                group("corral/s/_corral", BackendState::Active, 1, None),
                group("psql", BackendState::Idle, 4, Some(1.0)),
            ],
            own_backend_pid: 1,
            hidden: 0,
        };
        assert_eq!(u.total(), 12);
        assert_eq!(u.job("s", "a"), 5);
        assert_eq!(u.job_active("s", "a"), 2);
        assert_eq!(u.corral("s"), 1);
        assert_eq!(u.external(), 4);
        assert_eq!(u.job_idle_secs("s", "a"), None);
        assert_eq!(u.job_idle_secs("s", "b"), Some(30.0));
        assert_eq!(u.job_idle_secs("s", "nope"), None);
    }

    #[test]
    fn attribution_json_shape() {
        let j = serde_json::to_string(&Attribution::Job {
            service: "s".into(),
            job: "j".into(),
        })
        .unwrap();
        assert_eq!(j, r#"{"kind":"job","service":"s","job":"j"}"#);
    }
}
