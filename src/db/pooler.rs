//! Poolers between the jobs and PostgreSQL (SPEC §5.1): what Supavisor is known to allow per
//! compute size, and what PgBouncer's admin console says (`SHOW CONFIG`, `SHOW DATABASES`,
//! `SHOW CLIENTS`), including each client's `application_name`, so live use per job is
//! measured through PgBouncer too.
//!
//! Owns: Supavisor detection by host and port; the admin console connection (opened for each
//! reading and closed again: it is a PgBouncer client, never a database connection, so it is
//! not one of corral's own connections); turning its answers into a [`PgBouncerReading`].
//!
//! Must not: decide the budget (that is `budget::plan`, from these numbers), or print the
//! admin URL's password.

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::{SimpleQueryMessage, SimpleQueryRow};

use super::connect::Target;
use super::error::DbError;
use super::usage::{Attribution, BackendState, Usage, UsageGroup};

/// Supabase's shared pooler: `aws-0-<region>.pooler.supabase.com`.
pub const SUPAVISOR_HOST_SUFFIX: &str = ".pooler.supabase.com";
/// Supavisor's transaction-mode port; 5432 on the same host is session mode.
pub const SUPAVISOR_TRANSACTION_PORT: u16 = 6543;

/// Supavisor's default pool size (backends per role and database) and client limit per
/// compute preset (Supabase's compute add-on table).
const SUPAVISOR_SIZES: &[(&str, u32, u32)] = &[
    ("free", 15, 200),
    ("supabase-nano", 15, 200),
    ("supabase-micro", 15, 200),
    ("supabase-small", 15, 400),
    ("supabase-medium", 15, 600),
    ("supabase-large", 20, 800),
    ("supabase-xl", 20, 1_000),
    ("supabase-2xl", 25, 1_500),
    ("supabase-4xl", 32, 3_000),
    ("supabase-8xl", 64, 6_000),
    ("supabase-12xl", 96, 9_000),
    ("supabase-16xl", 128, 12_000),
];

/// (pool size, client limit) of Supavisor for a compute preset.
pub fn supavisor_sizes(preset: &str) -> Option<(u32, u32)> {
    SUPAVISOR_SIZES.iter().find(|(p, _, _)| *p == preset).map(|(_, pool, clients)| (*pool, *clients))
}

pub fn is_supavisor(host: &str) -> bool {
    host.to_ascii_lowercase().ends_with(SUPAVISOR_HOST_SUFFIX)
}

/// How a pooler hands out server connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A client holds one server connection for its whole session.
    Session,
    /// A client holds one only during a transaction (statement mode counts as this).
    Transaction,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }

    fn parse(s: &str) -> Option<PoolMode> {
        match s.trim() {
            "session" => Some(PoolMode::Session),
            "transaction" | "statement" => Some(PoolMode::Transaction),
            _ => None,
        }
    }
}

/// One group of PgBouncer clients (SHOW CLIENTS), by role, database and application_name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolerClients {
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub count: u32,
}

/// What PgBouncer's admin console says about the pool the jobs' URL uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PgBouncerReading {
    /// The pool's mode (the database's `pool_mode`, else the global one).
    pub mode: PoolMode,
    /// Server connections per (user, database) pool: the database's `pool_size`, else
    /// `default_pool_size`.
    pub pool_size: u32,
    /// `max_client_conn`: clients PgBouncer accepts in all.
    pub max_client_conn: u32,
    /// `max_db_connections` and `max_user_connections` (0: no limit).
    pub max_db_connections: u32,
    pub max_user_connections: u32,
    /// Clients of every database but the admin console itself.
    pub clients: Vec<PoolerClients>,
}

impl PgBouncerReading {
    /// Clients one (user, database) pool can serve in session mode, where each holds a server
    /// connection: the pool size, capped by the per-database and per-user limits when set and
    /// by `max_client_conn` (PgBouncer refuses clients beyond it: "no more connections allowed").
    pub fn session_cap(&self) -> u32 {
        [self.pool_size, self.max_db_connections, self.max_user_connections, self.max_client_conn]
            .into_iter()
            .filter(|n| *n > 0)
            .min()
            .unwrap_or(0)
    }

    /// Live use as the budget reads it: the clients by application_name (so per job), every
    /// client counted as active (in session mode each holds a server connection).
    pub fn usage(&self, own_backend_pid: i32) -> Usage {
        let groups = self
            .clients
            .iter()
            .map(|c| UsageGroup {
                attribution: Attribution::classify(&c.application_name, &c.user),
                application_name: c.application_name.clone(),
                role: c.user.clone(),
                state: BackendState::Active,
                count: c.count,
                max_idle_secs: None,
                min_idle_secs: None,
                pids: Vec::new(),
            })
            .collect();
        Usage { groups, own_backend_pid, hidden: 0 }
    }
}

/// PgBouncer's admin console (`pooler_admin_url`, database `pgbouncer`).
pub struct PgBouncerAdmin {
    target: Target,
    /// The database the jobs' URL names: its SHOW DATABASES row has the pool's settings.
    database: Option<String>,
}

impl PgBouncerAdmin {
    /// `jobs_database`: the dbname of `[database] url` (PgBouncer's database name).
    pub fn new(admin_url: &str, application_name: &str, base_dir: &std::path::Path, jobs_database: Option<String>) -> Result<PgBouncerAdmin, DbError> {
        Ok(PgBouncerAdmin { target: Target::new(admin_url, application_name, base_dir)?, database: jobs_database })
    }

    /// The console of the PgBouncer in front of the jobs' `jobs_url`, reached as corral of
    /// `service` (its database is the jobs' dbname, or their user's).
    pub fn for_jobs(admin_url: &str, jobs_url: Option<&super::conninfo::ConnInfo>, service: &str, base_dir: &std::path::Path) -> Result<PgBouncerAdmin, DbError> {
        let dbname = jobs_url.and_then(|c| c.get("dbname").or(c.get("user")).map(str::to_string));
        PgBouncerAdmin::new(admin_url, &Attribution::corral_application_name(service), base_dir, dbname)
    }

    pub fn target(&self) -> &str {
        self.target.redacted()
    }

    /// Connects, reads SHOW CONFIG, SHOW DATABASES and SHOW CLIENTS, disconnects.
    pub async fn read(&self, timeout: Duration) -> Result<PgBouncerReading, DbError> {
        let work = async {
            let opened = self.target.open().await?;
            let q = |sql: &'static str| {
                let client = &opened.client;
                async move {
                    client
                        .simple_query(sql)
                        .await
                        .map(rows)
                        .map_err(|e| DbError::query(sql_what(sql), &e, self.target.url()))
                }
            };
            let config = q("SHOW CONFIG").await?;
            let databases = q("SHOW DATABASES").await?;
            let clients = q("SHOW CLIENTS").await?;
            reading(&config, &databases, &clients, self.database.as_deref())
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(DbError::Timeout { what: "reading the PgBouncer admin console", timeout }),
        }
    }
}

fn sql_what(sql: &str) -> &'static str {
    match sql {
        "SHOW CONFIG" => "PgBouncer SHOW CONFIG",
        "SHOW DATABASES" => "PgBouncer SHOW DATABASES",
        _ => "PgBouncer SHOW CLIENTS",
    }
}

/// A result as (column, value) maps, columns looked up by name (they vary across versions).
type Rows = Vec<Vec<(String, String)>>;

fn rows(msgs: Vec<SimpleQueryMessage>) -> Rows {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(row(&r)),
            _ => None,
        })
        .collect()
}

fn row(r: &SimpleQueryRow) -> Vec<(String, String)> {
    r.columns().iter().enumerate().map(|(i, c)| (c.name().to_string(), r.get(i).unwrap_or("").to_string())).collect()
}

fn col<'a>(row: &'a [(String, String)], name: &str) -> Option<&'a str> {
    row.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The pure part of [`PgBouncerAdmin::read`].
fn reading(config: &[Vec<(String, String)>], databases: &[Vec<(String, String)>], clients: &[Vec<(String, String)>], database: Option<&str>) -> Result<PgBouncerReading, DbError> {
    let setting = |key: &str| config.iter().find(|r| col(r, "key") == Some(key)).and_then(|r| col(r, "value"));
    let number = |key: &str| setting(key).and_then(|v| v.trim().parse::<u32>().ok());
    let unexpected = |message: String| DbError::Unexpected { what: "reading the PgBouncer admin console", message };
    let db_row = database.and_then(|d| databases.iter().find(|r| col(r, "name") == Some(d)));
    let mode = db_row
        .and_then(|r| col(r, "pool_mode"))
        .and_then(PoolMode::parse)
        .or_else(|| setting("pool_mode").and_then(PoolMode::parse))
        .ok_or_else(|| unexpected("SHOW CONFIG has no pool_mode".into()))?;
    let pool_size = db_row
        .and_then(|r| col(r, "pool_size"))
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| *n > 0)
        .or_else(|| number("default_pool_size"))
        .ok_or_else(|| unexpected("SHOW CONFIG has no default_pool_size".into()))?;
    let max_db = db_row.and_then(|r| col(r, "max_connections")).and_then(|v| v.parse::<u32>().ok()).filter(|n| *n > 0);
    let mut groups: std::collections::BTreeMap<(String, String, String), u32> = Default::default();
    for c in clients {
        let db = col(c, "database").unwrap_or("");
        if db == "pgbouncer" {
            continue;
        }
        let key = (col(c, "user").unwrap_or("").to_string(), db.to_string(), col(c, "application_name").unwrap_or("").to_string());
        *groups.entry(key).or_default() += 1;
    }
    Ok(PgBouncerReading {
        mode,
        pool_size,
        max_client_conn: number("max_client_conn").ok_or_else(|| unexpected("SHOW CONFIG has no max_client_conn".into()))?,
        max_db_connections: max_db.or_else(|| number("max_db_connections")).unwrap_or(0),
        max_user_connections: number("max_user_connections").unwrap_or(0),
        clients: groups.into_iter().map(|((user, database, application_name), count)| PoolerClients { user, database, application_name, count }).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn config(mode: &str, pool: &str) -> Rows {
        vec![
            r(&[("key", "pool_mode"), ("value", mode)]),
            r(&[("key", "default_pool_size"), ("value", pool)]),
            r(&[("key", "max_client_conn"), ("value", "100")]),
            r(&[("key", "max_db_connections"), ("value", "0")]),
            r(&[("key", "max_user_connections"), ("value", "0")]),
        ]
    }

    #[test]
    fn supavisor_is_known_by_host_and_preset() {
        assert!(is_supavisor("aws-0-eu-central-1.pooler.supabase.com"));
        assert!(!is_supavisor("db.abcdefgh.supabase.co"));
        assert_eq!(supavisor_sizes("supabase-nano"), Some((15, 200)));
        assert_eq!(supavisor_sizes("supabase-large"), Some((20, 800)));
        assert_eq!(supavisor_sizes("supabase-16xl"), Some((128, 12_000)));
        assert_eq!(supavisor_sizes("nope"), None);
        // Every preset of §5 has Supavisor sizes.
        for (p, _) in crate::config::PRESETS {
            assert!(supavisor_sizes(p).is_some(), "{p}");
        }
    }

    #[test]
    fn reading_takes_the_database_row_over_the_defaults() {
        let dbs = vec![r(&[("name", "app"), ("pool_size", "15"), ("pool_mode", ""), ("max_connections", "0")]), r(&[("name", "other"), ("pool_size", "3"), ("pool_mode", "transaction")])];
        let clients = vec![
            r(&[("user", "app"), ("database", "app"), ("application_name", "corral/s/a")]),
            r(&[("user", "app"), ("database", "app"), ("application_name", "corral/s/a")]),
            r(&[("user", "app"), ("database", "app"), ("application_name", "psql")]),
            r(&[("user", "admin"), ("database", "pgbouncer"), ("application_name", "corral/s/_corral")]),
        ];
        let got = reading(&config("session", "20"), &dbs, &clients, Some("app")).unwrap();
        assert_eq!((got.mode, got.pool_size, got.max_client_conn, got.session_cap()), (PoolMode::Session, 15, 100, 15));
        assert_eq!(got.clients.len(), 2, "{:?}", got.clients);
        let u = got.usage(0);
        assert_eq!(u.job("s", "a"), 2);
        assert_eq!(u.external(), 1);
        let got = reading(&config("session", "20"), &dbs, &[], Some("other")).unwrap();
        assert_eq!((got.mode, got.pool_size), (PoolMode::Transaction, 3));
        let got = reading(&config("statement", "20"), &[], &[], None).unwrap();
        assert_eq!((got.mode, got.pool_size), (PoolMode::Transaction, 20));
        assert!(reading(&[], &[], &[], None).is_err());
    }
}
