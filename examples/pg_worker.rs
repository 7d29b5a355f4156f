//! A test worker for the connection budget (used by `tests/it/budget.rs`, and
//! handy for trying corral by hand): it opens exactly
//! `DB_POOL_SIZE + DB_MAX_OVERFLOW` connections with `DATABASE_URL` and keeps
//! them busy (`SELECT pg_sleep(...)` in a loop, so they show as active). On
//! SIGHUP it re-reads `CORRAL_QUOTA_FILE` and grows or shrinks to the new
//! quota, printing `quota N`. `WORKER_EXTRA=n` opens n more idle connections
//! than allowed (to test enforcement); `WORKER_IDLE=1` holds them idle;
//! `WORKER_BUSY_FILE=path` keeps them busy only while that file exists.
//!
//! Run: cargo run --example pg_worker (with the env corral gives a job).

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_postgres::Client;

fn env_u32(name: &str) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn quota_from_file() -> Option<u32> {
    let path = std::env::var("CORRAL_QUOTA_FILE").ok()?;
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("quota")?.as_u64().map(|q| q as u32)
}

struct Conn {
    client: Arc<Client>,
    task: tokio::task::JoinHandle<()>,
    /// Set to end the busy loop after its current query.
    done: Arc<std::sync::atomic::AtomicBool>,
}

/// Connects as the URL says, TLS included (`sslmode`, `sslrootcert`, ... as libpq reads them),
/// through corral's own connector: the application_name corral put in the URL is kept.
async fn open(url: &str, busy: bool) -> Result<Conn, corral::db::DbError> {
    let info = corral::db::conninfo::ConnInfo::parse(url).map_err(|e| corral::db::DbError::InvalidUrl { url: corral::db::redact(url), reason: e.message })?;
    let app = info.get("application_name").unwrap_or("corral-pg-worker").to_string();
    let target = corral::db::connect::Target::new(url, &app, std::path::Path::new("."))?;
    let client = target.open().await?.client;
    let client = Arc::new(client);
    let c2 = client.clone();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let task = tokio::spawn(async move {
        if !busy {
            return;
        }
        // WORKER_BUSY_FILE: busy only while that file exists (tests turn a job idle or active).
        let gate = std::env::var_os("WORKER_BUSY_FILE").map(std::path::PathBuf::from);
        while !d2.load(std::sync::atomic::Ordering::SeqCst) {
            if gate.as_ref().is_some_and(|g| !g.exists()) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            if c2.simple_query("SELECT pg_sleep(0.2)").await.is_err() {
                break;
            }
        }
    });
    Ok(Conn { client, task, done })
}

async fn resize(conns: &mut Vec<Conn>, want: usize, url: &str, busy: bool) {
    // Like a real pool, a connection is closed between queries, never in the middle of one: a
    // backend whose client vanished mid-query runs on until the query ends, so the job would
    // briefly have more backends than its quota if it opened new connections meanwhile.
    let gone: Vec<Conn> = conns.drain(want.min(conns.len())..).collect();
    for c in &gone {
        c.done.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    for c in gone {
        let _ = c.task.await;
        // Dropping the last handle closes the connection.
        drop(c.client);
    }
    while conns.len() < want {
        match open(url, busy).await {
            Ok(c) => conns.push(c),
            Err(e) => {
                println!("connect failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let busy = std::env::var("WORKER_IDLE").is_err();
    let mut quota = env_u32("DB_POOL_SIZE") + env_u32("DB_MAX_OVERFLOW");
    let extra = env_u32("WORKER_EXTRA");
    let mut conns = Vec::new();
    let mut extras = Vec::new();
    resize(&mut conns, quota as usize, &url, busy).await;
    resize(&mut extras, extra as usize, &url, false).await;
    println!("holding {} connections (quota {quota})", conns.len() + extras.len());
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM");
    loop {
        tokio::select! {
            _ = hup.recv() => {
                if let Some(q) = quota_from_file() {
                    quota = q;
                    resize(&mut conns, quota as usize, &url, busy).await;
                    println!("quota {quota}");
                    if let Ok(log) = std::env::var("WORKER_LOG") {
                        use std::io::Write;
                        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
                            let _ = writeln!(f, "quota {quota}");
                        }
                    }
                }
            }
            _ = term.recv() => {
                println!("SIGTERM: closing {} connections", conns.len());
                return;
            }
        }
    }
}
