//! `corral check [--online] [--json]` (SPEC §1): validate the manifest and print the budget
//! plan; with `--online` also connect as `corral run` would (same TLS, same pooler reading) and
//! plan against what the server and the pooler say.
//!
//! Owns only the orchestration: the readings are `db`'s, the arithmetic `budget`'s, the
//! printing `render`'s. Exit codes: 0 fits, 2 invalid, does not fit, or (online) cannot connect.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{render, EXIT_OK, EXIT_USAGE};
use crate::budget::plan::{self, LimitSource, Plan};
use crate::config::{self, Config};
use crate::db::pooler::{PgBouncerAdmin, PgBouncerReading};
use crate::db::tls::TlsInfo;
use crate::db::{Probe, ServerLimits};

/// What `--online` found.
#[derive(Debug, Clone, Serialize)]
pub struct Online {
    pub connected: bool,
    /// The database as messages name it (password redacted).
    pub target: Option<String>,
    /// Opening the connection: TCP, TLS, authentication.
    pub connect_ms: Option<f64>,
    /// None: plaintext.
    pub tls: Option<TlsInfo>,
    pub server: Option<ServerLimits>,
    pub pooler: Option<PgBouncerReading>,
    pub pooler_error: Option<String>,
    pub error: Option<String>,
}

pub fn run(path: &Path, json: bool, online: bool) -> i32 {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{errs}");
            return EXIT_USAGE;
        }
    };
    let reading = match (&cfg.database, online) {
        (Some(db), true) if db.url.is_some() => Some(read(&cfg, db)),
        _ => None,
    };
    let plan = cfg.database.as_ref().map(|db| {
        let server = reading.as_ref().and_then(|r| r.server).map(|l| (l.max_connections, l.superuser_reserved_connections, l.reserved_connections));
        let pooler = reading.as_ref().and_then(|r| r.pooler.as_ref());
        plan::plan(&crate::budget::plan_input(db, server, pooler, 0, crate::budget::own_connections(db)))
    });
    // A scheduled job holds its connections only while a run lives: its run waits for its
    // minimum like any start, so it is not one of the minimums that must fit at once.
    let minimums: u32 = cfg.jobs.values().filter(|j| j.autostart && j.schedule.is_none()).filter_map(|j| j.connections).map(|c| c.min).sum();
    render::check(&cfg, plan.as_ref(), minimums, reading.as_ref(), online, json);
    if online && cfg.database.as_ref().is_none_or(|db| db.url.is_none()) {
        eprintln!("error: {}: --online needs a [database] url to connect to", cfg.path.display());
        eprintln!("  hint: set url (e.g. url = \"${{DATABASE_URL}}\" with DATABASE_URL in the environment)");
        return EXIT_USAGE;
    }
    if let Some(r) = reading.as_ref().filter(|r| !r.connected) {
        eprintln!("error: {}: {}", cfg.path.display(), r.error.as_deref().unwrap_or("cannot connect"));
        return EXIT_USAGE;
    }
    match &plan {
        Some(p) if !fits(p, minimums, online) => {
            eprintln!(
                "error: {}: the autostart jobs need at least {minimums} connections but only {} are usable (limit {} ({}))",
                cfg.path.display(),
                p.usable,
                p.limit,
                p.limit_reason
            );
            eprintln!("  hint: lower some jobs' connections.min, set autostart = false, or lower the reserves");
            EXIT_USAGE
        }
        _ => EXIT_OK,
    }
}

/// Offline, an unknown limit is not a failure (the server is read at startup); online it is.
fn fits(p: &Plan, minimums: u32, online: bool) -> bool {
    if p.limit_source == LimitSource::Unknown && !online {
        return true;
    }
    minimums <= p.usable
}

/// Connects as `corral run` does and reads the server's limits and the pooler's sizes.
fn read(cfg: &Config, db: &config::DatabaseConfig) -> Online {
    let mut out = Online { connected: false, target: None, connect_ms: None, tls: None, server: None, pooler: None, pooler_error: None, error: None };
    let Some(url) = &db.url else { return out };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            out.error = Some(format!("cannot start the runtime: {e}"));
            return out;
        }
    };
    let service = &cfg.budget.service;
    rt.block_on(async {
        let probe = match Probe::new(url.as_str(), service, &db.base_dir) {
            Ok(p) => p,
            Err(e) => {
                out.error = Some(e.to_string());
                return;
            }
        };
        out.target = Some(probe.target().to_string());
        let timeout = db.health_timeout;
        let started = Instant::now();
        match probe.connect(timeout).await {
            Ok(_) => {
                out.connect_ms = Some(ms(probe.connect_time().await.unwrap_or(started.elapsed())));
                out.tls = probe.tls().await;
                match probe.server_limits(timeout).await {
                    Ok(l) => {
                        out.server = Some(l);
                        out.connected = true;
                    }
                    Err(e) => out.error = Some(e.to_string()),
                }
            }
            Err(e) => out.error = Some(e.to_string()),
        }
        if let Some(admin_url) = &db.pooler_admin_url {
            match PgBouncerAdmin::for_jobs(admin_url.as_str(), Some(url), service, &db.base_dir) {
                Ok(a) => match a.read(timeout).await {
                    Ok(r) => out.pooler = Some(r),
                    Err(e) => out.pooler_error = Some(e.to_string()),
                },
                Err(e) => out.pooler_error = Some(e.to_string()),
            }
        }
        probe.disconnect().await;
    });
    out
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}
