//! corral's side of the database, set up once at startup (SPEC §5, §6): the budget, corral's
//! one own connection (the probe) and PgBouncer's admin console, from the config. A URL that
//! is rejected degrades the budget's status with the cause; nothing here stops corral.

use std::path::Path;
use std::sync::Arc;

use tracing::{error, info};

use super::budget::Budget;
use crate::config::Config;
use crate::db::fleet::Identity;
use crate::db::pooler::PgBouncerAdmin;
use crate::db::Probe;

pub struct Database {
    pub budget: Budget,
    pub probe: Option<Arc<Probe>>,
    /// With `pooler_admin_url`.
    pub pooler_admin: Option<Arc<PgBouncerAdmin>>,
}

/// With a `[database]`: the budget and what reads the server.
pub fn open(config: &Config) -> Option<Database> {
    let db_cfg = config.database.clone()?;
    let quota_dir = config.supervisor.lock_dir.with_file_name("quota");
    let mut budget = Budget::new(db_cfg.clone(), config.budget.clone(), quota_dir);
    budget.quota_dir_shared = config.jobs.values().any(|j| j.user.is_some());
    let service = &config.budget.service;
    let mut probe = None;
    if let Some(url) = &db_cfg.url {
        match Probe::new(url.as_str(), service, &db_cfg.base_dir) {
            Ok(p) => probe = Some(Arc::new(p)),
            Err(e) => {
                error!("database url rejected: {e}");
                budget.status.error = Some(e.to_string());
                budget.status.healthy = Some(false);
            }
        }
    } else {
        info!("no database url: the connection budget is planned offline (nothing is measured)");
    }
    let mut pooler_admin = None;
    if let Some(admin_url) = &db_cfg.pooler_admin_url {
        match PgBouncerAdmin::for_jobs(admin_url.as_str(), db_cfg.url.as_ref(), service, &db_cfg.base_dir) {
            Ok(a) => pooler_admin = Some(Arc::new(a)),
            Err(e) => {
                error!("pooler_admin_url rejected: {e}");
                budget.pooler_error = Some(e.to_string());
            }
        }
    }
    Some(Database { budget, probe, pooler_admin })
}

/// Fleet scope: this corral's identity in the fleet, `host:socket`, stable across restarts so
/// that a restarted corral replaces its own registration (SPEC §5).
pub fn fleet_identity(service: &str, socket: &Path) -> Identity {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown-host".into());
    Identity { id: format!("{host}:{}", socket.display()), service: service.to_string(), host, pid: std::process::id() as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::jobs::testing::config;

    #[test]
    fn no_database_section_means_no_budget() {
        assert!(open(&config("[jobs.a]\ncommand = [\"a\"]\n")).is_none());
    }

    #[test]
    fn an_offline_plan_has_a_budget_and_nothing_that_reads_the_server() {
        let db = open(&config("[database]\nmax_connections = 60\n[jobs.a]\ncommand = [\"a\"]\nconnections = 2\n")).unwrap();
        assert!(db.probe.is_none() && db.pooler_admin.is_none());
        assert_eq!(db.budget.status.error, None);
    }

    #[test]
    fn the_fleet_identity_is_host_and_socket() {
        let id = fleet_identity("scrapers", Path::new("/run/corral.sock"));
        assert_eq!(id.id, format!("{}:/run/corral.sock", id.host));
        assert_eq!((id.service.as_str(), id.pid), ("scrapers", std::process::id() as i32));
    }
}
