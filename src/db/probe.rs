//! corral's OWN database connection and the few queries it runs (SPEC §5, §6).
//!
//! Owns: exactly one connection, attributed as `corral/<service>/_corral`, opened on demand and
//! reopened lazily when it is found broken; health (`SELECT 1`), server limits, live usage, and
//! terminating a job's surplus idle connections. Every call takes its timeout as a parameter
//! and covers connect + query together. In fleet scope the coordination (`db::fleet`) borrows
//! the same connection through [`Probe::session`]: its session advisory locks live on it, and
//! [`Session::generation`] tells the coordinator when a reconnect took them away.
//!
//! Must not: open a second connection (the budget counts corral as one, in both scopes; §5
//! "corral opens its own connection first and keeps it"), log or return the password, or hold
//! the connection lock across anything but its own connect and query.
//!
//! Why a plain `Client` and not deadpool with max_size 1: for one connection a pool adds an
//! object wrapper and a recycle step that amounts to `Client::is_closed()`, while we need two
//! things it does not give: dropping the connection deterministically after a timed-out query
//! (its late answer would otherwise be read by the next check), and keeping the reason a
//! connection died (the connection task's error) for the next message.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::connect::Target;
use super::error::DbError;
use super::tls::TlsInfo;
use super::usage::{Attribution, BackendState, Usage, UsageGroup};

/// Result of a health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Round trip of `SELECT 1` alone (a reconnect, if any, is not included).
    pub latency: Duration,
    /// What `SELECT 1` returned (1 when the server is sane).
    pub value: i32,
    /// The connection had to be (re)opened for this check.
    pub reconnected: bool,
    /// Backend pid of corral's connection.
    pub backend_pid: i32,
}

impl Health {
    pub fn latency_ms(&self) -> f64 {
        self.latency.as_secs_f64() * 1000.0
    }
}

/// Connection limits as the server reports them (`pg_settings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerLimits {
    pub max_connections: u32,
    pub superuser_reserved_connections: u32,
    /// PostgreSQL 16+ (`reserved_connections`, for roles with pg_use_reserved_connections);
    /// 0 on older servers.
    pub reserved_connections: u32,
    /// e.g. 150004 for 15.4.
    pub server_version_num: u32,
}

impl ServerLimits {
    /// §5 `limit`: max_connections minus the slots a normal role can never use.
    pub fn limit(&self) -> u32 {
        self.max_connections
            .saturating_sub(self.superuser_reserved_connections)
            .saturating_sub(self.reserved_connections)
    }
}

/// corral's one database connection. Cheap to share behind an `Arc`; calls are serialized.
pub struct Probe {
    target: Target,
    application_name: String,
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    live: Option<Live>,
    /// Set while a query runs. Still set at the next call means that call's future was dropped
    /// (timeout) mid-query: its answer may still arrive, so the connection is replaced.
    in_flight: bool,
    /// Why the previous connection was dropped, for the reconnect log line.
    lost: Option<String>,
    /// Counts the connections opened: session state (advisory locks) belongs to one of them.
    generation: u64,
    /// The TLS of the last connection opened (None: plaintext or never connected).
    tls: Option<TlsInfo>,
    /// How long opening the last connection took (TCP, TLS, authentication).
    connect_time: Option<Duration>,
}

struct Live {
    client: Client,
    backend_pid: i32,
    /// The connection task's error, once it ended with one (redacted).
    died: super::connect::Death,
}

/// The connection lent out for a sequence of statements (the fleet's transactions). Dropping
/// it without [`Session::done`] (a timeout cancelled the caller) leaves the connection marked
/// in flight, so the next user replaces it: a half-run transaction is never reused.
pub struct Session<'a> {
    slot: MutexGuard<'a, Slot>,
}

impl Session<'_> {
    /// The lent connection. A session is only made once `ensure` opened one, so the error is
    /// unreachable in practice; it is reported rather than a panic in PID 1.
    pub fn client(&mut self) -> Result<&mut Client, DbError> {
        match self.slot.live.as_mut() {
            Some(live) => Ok(&mut live.client),
            None => Err(DbError::Unexpected { what: "corral's database connection", message: "a session without a connection".into() }),
        }
    }

    /// Which connection this is: a different number than last time means a new connection,
    /// so every session advisory lock of the previous one is gone.
    pub fn generation(&self) -> u64 {
        self.slot.generation
    }

    pub fn is_closed(&self) -> bool {
        self.slot.live.as_ref().is_none_or(|l| l.client.is_closed())
    }

    /// Why the connection died, when it did (redacted).
    pub fn death(&self) -> Option<String> {
        self.slot.live.as_ref().and_then(|l| l.died.lock().ok().and_then(|d| d.clone()))
    }

    /// The caller is done. `keep`: the connection is fine for the next user; otherwise (an I/O
    /// error, FATAL, closed) it is dropped and the next user opens a new one.
    pub fn done(mut self, keep: bool, why: Option<String>) {
        self.slot.in_flight = false;
        if !keep || self.is_closed() {
            self.slot.live = None;
            self.slot.lost = why.or_else(|| Some("connection closed".into()));
        }
    }
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("target", &self.target)
            .field("application_name", &self.application_name)
            .finish_non_exhaustive()
    }
}

impl Probe {
    /// Parses `url` (URL or key=value form) and prepares a connection named
    /// `corral/<service>/_corral`. Does not connect: call [`Probe::connect`] at startup so the
    /// connection exists before jobs can fill the server.
    /// Relative certificate paths in `url` start at `base_dir` (the manifest's directory).
    pub fn new(url: &str, service: &str, base_dir: &std::path::Path) -> Result<Probe, DbError> {
        let application_name = Attribution::corral_application_name(service);
        Ok(Probe {
            target: Target::new(url, &application_name, base_dir)?,
            application_name,
            slot: Mutex::new(Slot::default()),
        })
    }

    /// The database as messages name it (password redacted).
    pub fn target(&self) -> &str {
        self.target.redacted()
    }

    /// The URL, only as the key for `redact_text`.
    pub fn url(&self) -> &str {
        self.target.url()
    }

    /// TLS of the connection last opened (None: plaintext, or not connected yet).
    pub async fn tls(&self) -> Option<TlsInfo> {
        self.slot.lock().await.tls.clone()
    }

    /// How long opening the connection last took (TCP, TLS and authentication).
    pub async fn connect_time(&self) -> Option<Duration> {
        self.slot.lock().await.connect_time
    }

    /// Lends the connection (opening it first if needed) for statements of the caller's own,
    /// such as the fleet's transactions. Waits for calls in progress; `timeout` bounds the
    /// wait and the connect.
    pub async fn session(&self, timeout: Duration) -> Result<Session<'_>, DbError> {
        let work = async {
            let mut guard = self.slot.lock().await;
            self.ensure(&mut guard).await?;
            guard.in_flight = true;
            Ok(Session { slot: guard })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(DbError::Timeout { what: "connecting", timeout }),
        }
    }

    /// Replace a connection left in flight or found closed; open one when there is none.
    /// Returns true when it opened one.
    async fn ensure(&self, slot: &mut Slot) -> Result<bool, DbError> {
        if slot.in_flight {
            slot.live = None;
            slot.in_flight = false;
            slot.lost = Some("a query timed out on it".into());
        }
        if let Some(live) = &slot.live {
            if live.client.is_closed() {
                let why = live.died.lock().ok().and_then(|d| d.clone());
                slot.live = None;
                slot.lost = Some(why.unwrap_or_else(|| "connection closed".into()));
            }
        }
        if slot.live.is_some() {
            return Ok(false);
        }
        let started = Instant::now();
        let (live, tls) = self.open().await?;
        slot.connect_time = Some(started.elapsed());
        slot.tls = tls;
        slot.generation += 1;
        if let Some(why) = slot.lost.take() {
            tracing::info!(
                target = %self.target(),
                backend_pid = live.backend_pid,
                reason = %why,
                "reopened corral's own database connection"
            );
        }
        slot.live = Some(live);
        Ok(true)
    }

    /// `corral/<service>/_corral`.
    pub fn application_name(&self) -> &str {
        &self.application_name
    }

    /// Opens the connection now if it is not open; returns its backend pid.
    pub async fn connect(&self, timeout: Duration) -> Result<i32, DbError> {
        self.run("connect", timeout, async |_c: &Client| Ok(()))
            .await
            .map(|r| r.backend_pid)
    }

    /// Backend pid of the open connection, if one is open and not known to be broken.
    pub async fn backend_pid(&self) -> Option<i32> {
        let slot = self.slot.lock().await;
        slot.live
            .as_ref()
            .filter(|l| !l.client.is_closed())
            .map(|l| l.backend_pid)
    }

    /// Closes the connection (shutdown). The next call reopens it.
    pub async fn disconnect(&self) {
        let mut slot = self.slot.lock().await;
        slot.live = None;
        slot.in_flight = false;
    }

    /// `SELECT 1` (§6). Reconnects first when the connection is gone.
    pub async fn health(&self, timeout: Duration) -> Result<Health, DbError> {
        let r = self
            .run("health check", timeout, async |c: &Client| {
                let started = Instant::now();
                let msgs = c.simple_query("SELECT 1").await?;
                let latency = started.elapsed();
                let value = msgs.iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                    _ => None,
                });
                Ok((latency, value))
            })
            .await?;
        let (latency, value) = r.value;
        let value = value
            .as_deref()
            .and_then(|v| v.parse::<i32>().ok())
            .ok_or_else(|| DbError::Unexpected {
                what: "health check",
                message: format!("SELECT 1 returned {value:?}"),
            })?;
        Ok(Health {
            latency,
            value,
            reconnected: r.reconnected,
            backend_pid: r.backend_pid,
        })
    }

    /// max_connections, superuser_reserved_connections, reserved_connections (0 before
    /// PostgreSQL 16) and server_version_num, from `pg_settings` (readable by any role).
    pub async fn server_limits(&self, timeout: Duration) -> Result<ServerLimits, DbError> {
        const WHAT: &str = "reading server limits";
        let rows = self
            .run(WHAT, timeout, async |c: &Client| {
                c.query_typed(
                    "SELECT name, setting FROM pg_settings WHERE name IN \
                     ('max_connections', 'superuser_reserved_connections', \
                      'reserved_connections', 'server_version_num')",
                    &[],
                )
                .await
            })
            .await?
            .value;
        let mut limits = ServerLimits {
            max_connections: 0,
            superuser_reserved_connections: 0,
            reserved_connections: 0,
            server_version_num: 0,
        };
        let mut saw_max = false;
        for row in rows {
            let name: String = row.get(0);
            let setting: String = row.get(1);
            let n: u32 = setting.parse().map_err(|_| DbError::Unexpected {
                what: WHAT,
                message: format!("{name} = {setting:?} is not a number"),
            })?;
            match name.as_str() {
                "max_connections" => {
                    limits.max_connections = n;
                    saw_max = true;
                }
                "superuser_reserved_connections" => limits.superuser_reserved_connections = n,
                "reserved_connections" => limits.reserved_connections = n,
                "server_version_num" => limits.server_version_num = n,
                _ => {}
            }
        }
        if !saw_max {
            return Err(DbError::Unexpected {
                what: WHAT,
                message: "pg_settings has no max_connections".into(),
            });
        }
        Ok(limits)
    }

    /// Client connections on the whole server (the limit is server-wide), grouped by
    /// (application_name, role, state) and attributed (§5). corral's own connection is
    /// included, as `Corral`.
    ///
    /// Without pg_monitor/pg_read_all_stats, other roles' sessions show NULL backend_type and
    /// state; those with a database and a role are counted as client backends in state
    /// Unknown (see [`Usage::hidden`]) rather than dropped: undercounting would overbook the
    /// server.
    pub async fn usage(&self, timeout: Duration) -> Result<Usage, DbError> {
        let r = self
            .run("reading pg_stat_activity", timeout, async |c: &Client| {
                c.query_typed(
                    "SELECT coalesce(application_name, '') AS application_name, \
                            coalesce(usename::text, '') AS role, \
                            state, \
                            count(*)::int8 AS n, \
                            max(extract(epoch FROM now() - state_change)::float8) \
                              FILTER (WHERE state LIKE 'idle%') AS max_idle, \
                            min(extract(epoch FROM now() - state_change)::float8) \
                              FILTER (WHERE state LIKE 'idle%') AS min_idle, \
                            array_agg(pid ORDER BY backend_start DESC NULLS LAST, pid DESC) AS pids, \
                            count(*) FILTER (WHERE backend_type IS NULL)::int8 AS hidden \
                     FROM pg_stat_activity \
                     WHERE backend_type = 'client backend' \
                        OR (backend_type IS NULL AND datid IS NOT NULL AND usesysid IS NOT NULL) \
                     GROUP BY 1, 2, 3 \
                     ORDER BY 1, 2, 3",
                    &[],
                )
                .await
            })
            .await?;
        let mut groups = Vec::with_capacity(r.value.len());
        let mut hidden = 0u32;
        for row in r.value {
            let application_name: String = row.get(0);
            let role: String = row.get(1);
            let state = BackendState::parse(row.get::<_, Option<&str>>(2));
            let attribution = Attribution::classify(&application_name, &role);
            let pids: Vec<i32> = if attribution.is_corral() {
                row.get(6)
            } else {
                Vec::new()
            };
            hidden += to_u32(row.get::<_, i64>(7));
            groups.push(UsageGroup {
                attribution,
                application_name,
                role,
                state,
                count: to_u32(row.get::<_, i64>(3)),
                max_idle_secs: row.get(4),
                min_idle_secs: row.get(5),
                pids,
            });
        }
        Ok(Usage {
            groups,
            own_backend_pid: r.backend_pid,
            hidden,
        })
    }

    /// Brings the connections named `application_name` down to `keep` by terminating idle ones,
    /// newest (by backend_start) first, and returns the terminated pids. Active and
    /// idle-in-transaction connections are never touched (that would abort work), so fewer may
    /// be terminated than the excess. Our own backend is never a victim.
    ///
    /// Needs the privilege to signal those backends (same role, or pg_signal_backend);
    /// without it the statement fails with "permission denied to terminate process".
    pub async fn terminate_newest_idle(
        &self,
        application_name: &str,
        keep: u32,
        timeout: Duration,
    ) -> Result<Vec<i32>, DbError> {
        let app = application_name.to_string();
        let keep = i64::from(keep);
        let rows = self
            .run(
                "terminating idle connections",
                timeout,
                async |c: &Client| {
                    c.query_typed(
                        "WITH conns AS ( \
                       SELECT pid, state, backend_start FROM pg_stat_activity \
                       WHERE backend_type = 'client backend' AND application_name = $1 \
                         AND pid <> pg_backend_pid() \
                     ), victims AS ( \
                       SELECT pid FROM conns WHERE state = 'idle' \
                       ORDER BY backend_start DESC, pid DESC \
                       LIMIT greatest((SELECT count(*) FROM conns) - $2, 0) \
                     ) \
                     SELECT pid FROM victims WHERE pg_terminate_backend(pid)",
                        &[(&app, Type::TEXT), (&keep, Type::INT8)],
                    )
                    .await
                },
            )
            .await?
            .value;
        Ok(rows.iter().map(|r| r.get::<_, i32>(0)).collect())
    }

    /// Runs `op` on the connection, opening it first if needed, all within `timeout`. When the
    /// kept connection turns out dead, `op` runs once more on a fresh one (it must be safe to
    /// repeat: every query here only reads, or recomputes what it terminates).
    async fn run<T>(
        &self,
        what: &'static str,
        timeout: Duration,
        op: impl AsyncFn(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<Ran<T>, DbError> {
        let work = async {
            let mut guard = self.slot.lock().await;
            // A plain &mut so the fields can be borrowed separately below.
            let slot: &mut Slot = &mut guard;
            let mut reconnected = false;
            loop {
                reconnected |= self.ensure(slot).await?;
                slot.in_flight = true;
                let Some(live) = slot.live.as_ref() else {
                    // Opened just above: cannot happen, reported instead of a panic.
                    slot.in_flight = false;
                    return Err(DbError::Unexpected { what, message: "no connection after connecting".into() });
                };
                let backend_pid = live.backend_pid;
                let result = op(&live.client).await;
                slot.in_flight = false;
                let e = match result {
                    Ok(value) => {
                        return Ok(Ran {
                            value,
                            reconnected,
                            backend_pid,
                        })
                    }
                    Err(e) => e,
                };
                // A plain statement error (severity ERROR) leaves the session usable;
                // anything else (I/O, FATAL, closed) means it is gone or suspect.
                let usable = e.as_db_error().is_some_and(|d| d.severity() == "ERROR")
                    && !live.client.is_closed();
                if usable {
                    return Err(DbError::query(what, &e, self.url()));
                }
                let mut err = DbError::query(what, &e, self.url());
                // "connection closed" alone says little: add why the connection task ended
                // (e.g. "FATAL: terminating connection due to administrator command").
                let died = live.died.lock().ok().and_then(|d| d.clone());
                if let (DbError::Query { message, .. }, Some(why)) = (&mut err, died) {
                    if !message.contains(&why) {
                        message.push_str(" (");
                        message.push_str(&why);
                        message.push(')');
                    }
                }
                slot.lost = Some(err.to_string());
                slot.live = None;
                if reconnected {
                    return Err(err);
                }
                // The kept connection went stale since the last call (server restarted,
                // failover, idle kill by a proxy): that says nothing about the database now,
                // so try once more on a fresh connection within the same timeout.
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            // The dropped future left `in_flight` set if it was mid-query: the next call
            // replaces the connection. Dropping the Client closes the socket, so the server
            // frees the backend as soon as it notices.
            Err(_) => Err(DbError::Timeout { what, timeout }),
        }
    }

    async fn open(&self) -> Result<(Live, Option<TlsInfo>), DbError> {
        let opened = self.target.open().await?;
        let (client, died) = (opened.client, opened.died);
        let backend_pid = client
            .simple_query("SELECT pg_backend_pid()")
            .await
            .map_err(|e| DbError::connect(self.target(), &e, self.url()))?
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse().ok()),
                _ => None,
            })
            .unwrap_or(0);
        Ok((
            Live {
                client,
                backend_pid,
                died,
            },
            opened.tls,
        ))
    }
}

struct Ran<T> {
    value: T,
    reconnected: bool,
    backend_pid: i32,
}

fn to_u32(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}
