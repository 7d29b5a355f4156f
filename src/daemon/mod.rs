//! The daemon: `corral run` (SPEC §7-§9).
//!
//! `run` binds the control socket, becomes subreaper (or acts as PID 1),
//! starts the config watcher and the socket server, and hands the job table to
//! the one actor in `supervisor`. Tasks talk to the actor only through its
//! event channel; nothing else mutates job state.

mod admission;
mod ask;
mod budget;
mod control;
mod dashboard;
mod database;
mod dependencies;
mod event;
mod fleet;
mod grants;
mod health;
mod history;
mod http;
mod jobs;
mod notify;
mod reaping;
mod reload;
mod schedule;
mod server;
mod shutdown;
mod starting;
mod supervisor;
mod watch;
mod views;
mod watching;

use std::path::{Path, PathBuf};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::process::init;
use crate::process::output::LogStore;

pub use event::Event;

pub use crate::protocol::DEFAULT_SOCKET;

pub fn socket_path(config: &Config, flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = &config.supervisor.socket {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("CORRAL_SOCKET") {
        return PathBuf::from(p);
    }
    PathBuf::from(DEFAULT_SOCKET)
}

/// Run the supervisor until shutdown. Returns the process exit code.
pub fn run(config: Config, socket: PathBuf) -> i32 {
    // Before any thread exists: this removes NOTIFY_SOCKET from our environment.
    let notifier = notify::Notifier::from_env();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return 1;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = match server::bind(&socket, config.supervisor.socket_group.as_deref()).await {
            Ok(l) => l,
            Err(e) => {
                error!("{e}");
                return 1;
            }
        };
        let http_listener = match &config.http {
            Some(h) => match http::bind(&h.listen).await {
                Ok(l) => Some((l, h.token.clone())),
                Err(e) => {
                    error!("{e}");
                    let _ = std::fs::remove_file(&socket);
                    return 1;
                }
            },
            None => None,
        };
        if init::is_pid1() {
            info!("running as PID 1: reaping every orphan in this namespace");
        } else if let Err(e) = init::become_subreaper() {
            warn!("cannot become child subreaper ({e}): orphans of jobs will go to init instead");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let logs = LogStore::default();
        let _watcher = match watch::watch(&config.path, tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!("cannot watch {} for changes ({e}): reload with SIGHUP or `corral reload`", config.path.display());
                None
            }
        };
        let server = server::Server::spawn(listener, tx.clone(), logs.clone());
        let http_server = http_listener.map(|(l, token)| {
            if let Ok(addr) = l.local_addr() {
                info!(%addr, token = token.is_some(), "serving the dashboard, /health, /metrics, /status, /budget and /history over HTTP");
                if http::open_to_network(addr, token.is_some()) {
                    warn!(%addr, "[http] listens beyond loopback without a token: anyone who reaches it can read the jobs and the budget; set [http] token = \"${{CORRAL_HTTP_TOKEN}}\"");
                }
            }
            tokio::spawn(http::serve(l, tx.clone(), token))
        });
        info!(
            pid = std::process::id(),
            config = %config.path.display(),
            socket = %socket.display(),
            jobs = config.jobs.len(),
            "corral {} supervising",
            env!("CARGO_PKG_VERSION")
        );
        let status_tx = tx.clone();
        let (alerts, alerts_drain) = spawn_alerts(&config, &tx, &logs);
        let sup = supervisor::Supervisor::new(config, tx, logs).with_notifier(notifier.clone()).with_fleet_identity(&socket).with_alerts(alerts);
        let code = sup
            .run(rx, move || {
                notifier.ready();
                notify::spawn_status(notifier, status_tx);
            })
            .await;
        // Let replies in flight (the answer to `corral shutdown`) reach their clients.
        server.finish().await;
        // Alerts still queued (a job that went fatal just before) get a moment to go out.
        alerts_drain.wait(crate::alerts::task::DRAIN).await;
        if let Some(h) = http_server {
            h.abort();
        }
        let _ = std::fs::remove_file(&socket);
        code
    })
}

/// The alert router and workers (SPEC §9), on this LocalSet; the actor keeps the hook.
fn spawn_alerts(config: &Config, tx: &event::EventTx, logs: &LogStore) -> (crate::alerts::Hook, crate::alerts::Drain) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown-host".into());
    let actor_tx = tx.clone();
    crate::alerts::spawn(
        config.alerts.clone(),
        crate::alerts::Context {
            origin: crate::alerts::Origin { service: config.budget.service.clone(), host },
            logs: logs.clone(),
            database_url: config.database.as_ref().and_then(|d| d.url.as_ref()).map(|u| u.as_str().to_string()),
            actor: std::rc::Rc::new(move |cmd| actor_tx.send(Event::Alert(cmd)).is_ok()),
        },
    )
}
