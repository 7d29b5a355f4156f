//! Fleet coordination through PostgreSQL (SPEC §5, §7 `scope = "fleet"`).
//!
//! Owns: the coordination done on corral's one own connection (borrowed from
//! the [`Probe`] for each transaction, so a fleet member costs one connection,
//! SPEC §5), the `corral` schema and its migrations, membership with a fenced
//! lease, the fleet-wide allocation transaction, reservations, and the session
//! advisory locks of fleet-wide single-instance jobs. Those locks live on that
//! connection: when it is replaced (the server restarted it, a timeout, a
//! health check found it broken), the probe's generation changes and the locks
//! are known lost; the next sync takes them again unless another corral has,
//! and the daemon stops a copy whose lock is not confirmed (SPEC §7).
//!
//! Must not: decide policy (the allocation is `budget::fleet`, a pure
//! function; what to do with a lost lock is the daemon's), read any clock but
//! the database's `now()` for leases and expiry, or log a password.
//!
//! Every allocation runs in one transaction under `pg_advisory_xact_lock`, so
//! members allocate one at a time over the same rows. A renewal that matches
//! no `(id, lease)` row means this corral was expired or replaced: it
//! re-registers with a new lease and no grants (the fencing check River and
//! Oban use for their leaders).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use std::sync::Arc;

use tokio_postgres::{Client, Transaction};

use super::error::{describe, DbError};
use super::probe::{Probe, Session};
use crate::budget::allocate::{self, Allocation, Process, Wants};
use crate::budget::fleet::{self, FleetInput, FleetPlan, Member, Row};
// A member as `corral budget` shows it: the protocol's row, filled straight from the table.
use crate::protocol::MemberRow;

/// First key of every advisory lock corral takes ("corr"); the second names what is locked.
const LOCK_NS: i32 = 0x636f_7272;
/// Second keys under LOCK_NS: migrations and the allocation.
const LOCK_MIGRATE: i32 = 0;
const LOCK_ALLOCATE: i32 = 1;
/// First key of fleet-wide single-instance locks ("cors"); the second is hashtext(service/job).
const LOCK_SINGLETON_NS: i32 = 0x636f_7273;
/// Added to a previous holder's grace before its single-instance job is taken over: covers the
/// time between its last renewal and the moment it noticed (one round trip, timers).
const TAKEOVER_MARGIN: Duration = Duration::from_secs(2);

/// Live backends per corral application_name, server-wide. Without pg_monitor other roles'
/// sessions show a NULL backend_type but still their application_name: count them too
/// (undercounting would overbook the server), as the probe does.
const BACKENDS_SQL: &str = "SELECT application_name, count(*)::int4 FROM pg_stat_activity
     WHERE (backend_type = 'client backend' OR (backend_type IS NULL AND datid IS NOT NULL AND usesysid IS NOT NULL))
       AND application_name LIKE 'corral/%' GROUP BY 1";

/// Versioned, append-only: a released migration is never edited.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "members, demands, reservations, singletons",
    "CREATE TABLE corral.members (
        id               text PRIMARY KEY,
        service          text NOT NULL,
        host             text NOT NULL,
        pid              integer NOT NULL,
        version          text NOT NULL,
        lease            bigint NOT NULL,
        registered_at    timestamptz NOT NULL DEFAULT now(),
        heartbeat        timestamptz NOT NULL DEFAULT now(),
        continuous_since timestamptz NOT NULL DEFAULT now(),
        interval_ms      bigint NOT NULL,
        base             integer NOT NULL,
        own              integer NOT NULL
    );
    CREATE TABLE corral.demands (
        member      text NOT NULL REFERENCES corral.members (id) ON DELETE CASCADE,
        job         text NOT NULL,
        service     text NOT NULL,
        priority    integer NOT NULL,
        min         integer NOT NULL,
        max         integer NOT NULL,
        wants       text NOT NULL CHECK (wants IN ('off', 'idle', 'active')),
        has_process boolean NOT NULL,
        told        integer NOT NULL DEFAULT 0,
        held        integer NOT NULL DEFAULT 0,
        measured    integer,
        live        integer,
        granted     integer NOT NULL DEFAULT 0,
        target      integer NOT NULL DEFAULT 0,
        waiting     text,
        updated_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (member, job)
    );
    CREATE TABLE corral.reservations (
        name       text PRIMARY KEY,
        count      integer NOT NULL CHECK (count >= 0),
        expires_at timestamptz,
        created_by text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE corral.singletons (
        service    text NOT NULL,
        job        text NOT NULL,
        member     text NOT NULL,
        renewed_at timestamptz NOT NULL,
        grace_ms   bigint NOT NULL,
        PRIMARY KEY (service, job)
    );",
)];

/// Who this corral is in the fleet.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Stable across restarts of the same corral (`host:socket`), so a restarted corral
    /// replaces its previous registration instead of counting twice.
    pub id: String,
    pub service: String,
    pub host: String,
    pub pid: i32,
}

/// One local job as this member reports it.
#[derive(Debug, Clone)]
pub struct LocalJob {
    pub job: String,
    pub priority: i32,
    pub min: u32,
    pub max: u32,
    pub wants: Wants,
    /// As [`fleet::reported_process`] computes it.
    pub process: Option<Process>,
    /// Live connections at the last reading (shown fleet-wide).
    pub live: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct SyncRequest {
    /// `None` while this member knows no limit (stored as -1).
    pub base: Option<u32>,
    pub own: u32,
    pub interval: Duration,
    /// How long we keep running a single-instance job without its lock confirmed
    /// (`rebalance_interval + health_timeout + fleet_grace`).
    pub hold: Duration,
    /// Jobs with connections.
    pub jobs: Vec<LocalJob>,
    /// Single-instance jobs that want to run (or still run): the fleet-wide lock, with each
    /// job's stop_timeout (how long a successor waits beyond `grace` after losing sight of us).
    pub singletons: BTreeMap<String, Duration>,
}

/// This member's result for one of its jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResult {
    pub grant: u32,
    pub held: u32,
    /// Tell the job (or spawn it with) this quota; recorded as `told` already.
    pub tell: Option<u32>,
    pub waiting: Option<String>,
    pub evict: bool,
}

/// A fleet-wide single-instance lock, as this member holds it after a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    Held,
    Waiting(String),
}

/// The whole fleet, for `corral budget`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FleetView {
    pub members: Vec<MemberRow>,
    pub jobs: Vec<JobView>,
    pub reservations: Vec<ReservationView>,
    /// Live backends per `corral/...` application_name.
    pub backends: BTreeMap<String, u32>,
    pub expired: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct JobView {
    pub member: String,
    pub service: String,
    pub name: String,
    pub priority: i32,
    pub min: u32,
    pub max: u32,
    pub wants: Wants,
    pub quota: u32,
    pub held: u32,
    pub connections: Option<u32>,
    pub waiting: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReservationView {
    pub name: String,
    pub count: u32,
    pub created_by: String,
    pub expires_in_s: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct SyncResult {
    /// Our registration was gone (expired or replaced): we re-registered with no grants.
    pub lease_lost: bool,
    pub plan: FleetPlan,
    pub jobs: BTreeMap<String, JobResult>,
    pub locks: BTreeMap<String, LockOutcome>,
    pub view: FleetView,
}

/// The coordination and what lives on corral's connection for it. Owned by one task.
pub struct Coordinator {
    probe: Arc<Probe>,
    ident: Identity,
    /// Bounds waiting for the connection (a health check may be using it).
    timeout: Duration,
    /// The lease of our current registration (None before the first one).
    lease: Option<i64>,
    /// Single-instance jobs whose session advisory lock the connection of `generation` holds.
    locks: BTreeSet<String>,
    /// The probe connection our locks and migrations belong to (None: none yet, or dropped).
    generation: Option<u64>,
    /// A timeout left a statement of ours unfinished: replace the connection before the next.
    stale: bool,
}

impl Coordinator {
    pub fn new(probe: Arc<Probe>, ident: Identity, timeout: Duration) -> Coordinator {
        Coordinator { probe, ident, timeout, lease: None, locks: BTreeSet::new(), generation: None, stale: false }
    }

    pub fn identity(&self) -> &Identity {
        &self.ident
    }

    /// A timeout cut a statement short: the connection's state is unknown (a transaction may
    /// be open), so it is replaced before the next statement, and its locks count as gone.
    pub fn disconnect(&mut self) {
        self.stale = true;
        self.forget_locks();
    }

    /// The connection that held our session locks is gone or unknown, so are the locks.
    fn forget_locks(&mut self) {
        if !self.locks.is_empty() {
            tracing::warn!(target = %self.probe.target(), locks = ?self.locks, "corral's database connection was lost: its fleet-wide locks are gone");
        }
        self.locks.clear();
        self.generation = None;
    }

    /// The shared connection, migrated, with `locks` true for it: a different connection than
    /// the one our locks were taken on has none of them.
    async fn session<'p>(&mut self, probe: &'p Probe) -> Result<Session<'p>, DbError> {
        if std::mem::take(&mut self.stale) {
            probe.disconnect().await;
        }
        let mut s = probe.session(self.timeout).await?;
        if self.generation != Some(s.generation()) {
            if !self.locks.is_empty() {
                tracing::warn!(target = %probe.target(), locks = ?self.locks, "corral's database connection was replaced: its fleet-wide locks are gone");
            }
            self.locks.clear();
            if let Err(e) = migrate(s.client()?).await {
                let err = self.fail_in(s, "applying the corral schema migrations", e);
                return Err(err);
            }
            self.generation = Some(s.generation());
        }
        Ok(s)
    }

    fn err(&self, what: &'static str, e: &tokio_postgres::Error) -> DbError {
        DbError::query(what, e, self.probe.url())
    }

    /// A failed statement on a connection that is otherwise fine keeps it; anything else drops
    /// it, and our locks with it.
    fn fail_in(&mut self, s: Session<'_>, what: &'static str, e: tokio_postgres::Error) -> DbError {
        let err = self.err(what, &e);
        let usable = e.as_db_error().is_some_and(|d| d.severity() == "ERROR") && !s.is_closed();
        let died = s.death();
        s.done(usable, Some(died.unwrap_or_else(|| err.to_string())));
        if !usable {
            self.forget_locks();
        }
        err
    }

    /// Heartbeat, expire, report our demands, allocate for the whole fleet, write the grants.
    pub async fn sync(&mut self, req: &SyncRequest) -> Result<SyncResult, DbError> {
        let probe = self.probe.clone();
        let mut s = self.session(&probe).await?;
        let r = sync_tx(s.client()?, &self.ident, self.lease, &mut self.locks, req).await;
        match r {
            Ok((result, new_lease)) => {
                s.done(true, None);
                self.lease = Some(new_lease);
                Ok(result)
            }
            Err(e) => Err(self.fail_in(s, "fleet sync", e)),
        }
    }

    /// A fleet-wide reservation (`corral reserve`): refused when it does not fit beside
    /// what the fleet has granted. `ttl` counts from the database's clock.
    pub async fn reserve(&mut self, name: &str, count: u32, ttl: Option<Duration>) -> Result<Result<(), String>, DbError> {
        let me = self.ident.id.clone();
        let probe = self.probe.clone();
        let mut s = self.session(&probe).await?;
        match reserve_tx(s.client()?, &me, name, count, ttl).await {
            Ok(r) => {
                s.done(true, None);
                Ok(r)
            }
            Err(e) => Err(self.fail_in(s, "reserving connections", e)),
        }
    }

    /// Returns the released count, or None when no such reservation exists.
    pub async fn release(&mut self, name: &str) -> Result<Option<u32>, DbError> {
        let probe = self.probe.clone();
        let mut s = self.session(&probe).await?;
        let client = s.client()?;
        let r = async {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_NS, &LOCK_ALLOCATE]).await?;
            let row = tx.query_opt("DELETE FROM corral.reservations WHERE name = $1 RETURNING count", &[&name]).await?;
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>(row)
        }
        .await;
        match r {
            Ok(row) => {
                s.done(true, None);
                Ok(row.map(|r| r.get::<_, i32>(0).max(0) as u32))
            }
            Err(e) => Err(self.fail_in(s, "releasing a reservation", e)),
        }
    }

    /// Leave the fleet at shutdown: our grants return to the pool at once. Under the
    /// allocation lock, like every write to the fleet's rows (no deadlock with a sync).
    pub async fn leave(&mut self) {
        let Some(lease) = self.lease else { return };
        let id = self.ident.id.clone();
        let probe = self.probe.clone();
        let Ok(mut s) = self.session(&probe).await else { return };
        let Ok(client) = s.client() else { return };
        let r = async {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_NS, &LOCK_ALLOCATE]).await?;
            tx.execute("DELETE FROM corral.singletons WHERE member = $1", &[&id]).await?;
            tx.execute("DELETE FROM corral.members WHERE id = $1 AND lease = $2", &[&id, &lease]).await?;
            // Session locks are not transactional: released at once, whatever the commit does.
            tx.execute("SELECT pg_advisory_unlock_all()", &[]).await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = &r {
            tracing::warn!("could not leave the fleet cleanly (the others expire us after three intervals): {}", describe(e, probe.url()));
        }
        s.done(r.is_ok(), None);
        self.lease = None;
        self.locks.clear();
    }
}

/// Apply missing migrations, once across the fleet: concurrent first starts serialize on an
/// advisory lock, and each sees the versions the others applied.
async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_NS, &LOCK_MIGRATE]).await?;
    // "already exists, skipping" notices on every start are noise.
    tx.batch_execute("SET LOCAL client_min_messages = warning").await?;
    // CREATE SCHEMA needs CREATE on the database even when the schema exists: only ask for
    // it when missing, so an admin can pre-create the schema for a role without it.
    let exists: bool =
        tx.query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'corral')", &[]).await?.get(0);
    if !exists {
        tx.batch_execute("CREATE SCHEMA corral").await?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS corral.schema_migrations (
             version     integer PRIMARY KEY,
             description text NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let current: i32 =
        tx.query_one("SELECT coalesce(max(version), 0) FROM corral.schema_migrations", &[]).await?.get(0);
    for (version, description, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO corral.schema_migrations (version, description) VALUES ($1, $2)", &[version, description])
            .await?;
        tracing::info!(version, description, "applied corral schema migration");
    }
    tx.commit().await
}

fn wants_str(w: Wants) -> &'static str {
    match w {
        Wants::Off => "off",
        Wants::Idle => "idle",
        Wants::Active => "active",
    }
}

fn wants_parse(s: &str) -> Wants {
    match s {
        "active" => Wants::Active,
        "idle" => Wants::Idle,
        _ => Wants::Off,
    }
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

fn u(n: i32) -> u32 {
    n.max(0) as u32
}

/// A stored base: negative means the member knew no limit.
fn known(n: i32) -> Option<u32> {
    (n >= 0).then_some(n as u32)
}

fn i(n: u32) -> i32 {
    n.min(i32::MAX as u32) as i32
}

/// One sync, in one transaction under the allocation lock: every phase sees the rows as the
/// previous member left them, and no other member writes in between.
async fn sync_tx(
    client: &mut Client,
    me: &Identity,
    lease: Option<i64>,
    locks: &mut BTreeSet<String>,
    req: &SyncRequest,
) -> Result<(SyncResult, i64), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_NS, &LOCK_ALLOCATE]).await?;
    let beat = heartbeat(&tx, me, lease, req).await?;
    let expired = if beat.may_expire { expire_members(&tx, me).await? } else { Vec::new() };
    tx.execute(EXPIRE_RESERVATIONS_SQL, &[]).await?;
    let outcomes = singleton_locks(&tx, me, locks, req).await?;
    let mine = report_demands(&tx, me, req, &outcomes).await?;
    let fleet = read_fleet(&tx).await?;
    let (plan, alloc) = fleet::allocate_fleet(&fleet.input());
    let jobs = write_grants(&tx, me, &fleet.rows, &alloc, &mine).await?;
    tx.commit().await?;
    let view = fleet.view(&alloc, expired);
    Ok((SyncResult { lease_lost: beat.lost, plan, jobs, locks: outcomes, view }, beat.lease))
}

const EXPIRE_RESERVATIONS_SQL: &str = "DELETE FROM corral.reservations WHERE expires_at IS NOT NULL AND expires_at <= now()";

struct Beat {
    lease: i64,
    /// We had a lease and it matched no row: expired or replaced.
    lost: bool,
    /// We have heartbeated continuously for three intervals: we may expire others.
    may_expire: bool,
}

/// Renew our lease, or (re-)register with a new one. Time is the database's.
async fn heartbeat(tx: &Transaction<'_>, me: &Identity, lease: Option<i64>, req: &SyncRequest) -> Result<Beat, tokio_postgres::Error> {
    let (base, own, interval) = (req.base.map_or(-1, i), i(req.own), ms(req.interval));
    if let Some(l) = lease {
        let renewed = tx
            .query_opt(
                "UPDATE corral.members SET heartbeat = now(), pid = $3, base = $4, own = $5, interval_ms = $6,
                        continuous_since = CASE WHEN heartbeat < now() - interval_ms * 1.5 * interval '1 millisecond'
                                                THEN now() ELSE continuous_since END
                 WHERE id = $1 AND lease = $2
                 RETURNING now() - continuous_since >= interval_ms * 3 * interval '1 millisecond'",
                &[&me.id, &l, &me.pid, &base, &own, &interval],
            )
            .await?;
        if let Some(row) = renewed {
            return Ok(Beat { lease: l, lost: false, may_expire: row.get(0) });
        }
    }
    let new_lease = fastrand::i64(1..i64::MAX);
    tx.execute(
        "INSERT INTO corral.members (id, service, host, pid, version, lease, interval_ms, base, own)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (id) DO UPDATE SET service = EXCLUDED.service, host = EXCLUDED.host, pid = EXCLUDED.pid,
             version = EXCLUDED.version, lease = EXCLUDED.lease, registered_at = now(), heartbeat = now(),
             continuous_since = now(), interval_ms = EXCLUDED.interval_ms, base = EXCLUDED.base, own = EXCLUDED.own",
        &[&me.id, &me.service, &me.host, &me.pid, &env!("CARGO_PKG_VERSION"), &new_lease, &interval, &base, &own],
    )
    .await?;
    // Never assume old grants: whatever a previous incarnation held is gone.
    tx.execute("DELETE FROM corral.demands WHERE member = $1", &[&me.id]).await?;
    Ok(Beat { lease: new_lease, lost: lease.is_some(), may_expire: false })
}

/// Expire members silent for three of their intervals; their demands go with them (cascade).
/// Only a member that has itself heartbeated for three intervals calls this: after an outage
/// everyone gets time to come back first.
async fn expire_members(tx: &Transaction<'_>, me: &Identity) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "DELETE FROM corral.members WHERE id <> $1 AND heartbeat < now() - interval_ms * 3 * interval '1 millisecond'
             RETURNING id, host, pid",
            &[&me.id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let (id, host, pid): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
            tracing::warn!(member = %id, host = %host, pid, "fleet member stopped heartbeating: expired, its grants return to the pool");
            id
        })
        .collect())
}

/// Fleet-wide single instance: session advisory locks on this connection, plus a lease row so
/// that a successor waits until a holder that lost its connection has surely stopped its copy.
async fn singleton_locks(
    tx: &Transaction<'_>,
    me: &Identity,
    locks: &mut BTreeSet<String>,
    req: &SyncRequest,
) -> Result<BTreeMap<String, LockOutcome>, tokio_postgres::Error> {
    let mut outcomes = BTreeMap::new();
    for (job, stop_timeout) in &req.singletons {
        let key = format!("{}/{}", me.service, job);
        if !locks.contains(job) {
            let got: bool =
                tx.query_one("SELECT pg_try_advisory_lock($1, hashtext($2))", &[&LOCK_SINGLETON_NS, &key]).await?.get(0);
            if !got {
                let holder = tx
                    .query_opt("SELECT member FROM corral.singletons WHERE service = $1 AND job = $2", &[&me.service, job])
                    .await?
                    .map(|r| r.get::<_, String>(0))
                    .unwrap_or_else(|| "another corral".into());
                outcomes.insert(job.clone(), LockOutcome::Waiting(format!("lock: {key} held fleet-wide by {holder}")));
                continue;
            }
            locks.insert(job.clone());
        }
        let grace_ms = ms(req.hold + *stop_timeout + TAKEOVER_MARGIN);
        let prev = tx
            .query_opt(
                "SELECT member, (extract(epoch FROM now() - renewed_at) * 1000)::int8, grace_ms
                 FROM corral.singletons WHERE service = $1 AND job = $2 FOR UPDATE",
                &[&me.service, job],
            )
            .await?;
        match prev {
            Some(row) if row.get::<_, String>(0) != me.id && row.get::<_, i64>(1) < row.get::<_, i64>(2) => {
                let (holder, grace): (String, i64) = (row.get(0), row.get(2));
                // Stable text (no countdown): the wait is logged once, not at every sync.
                let why = format!("lock: {key}: taking over from {holder} {:.1}s after its last renewal", grace as f64 / 1000.0);
                outcomes.insert(job.clone(), LockOutcome::Waiting(why));
            }
            _ => {
                tx.execute(
                    "INSERT INTO corral.singletons (service, job, member, renewed_at, grace_ms) VALUES ($1, $2, $3, now(), $4)
                     ON CONFLICT (service, job) DO UPDATE SET member = EXCLUDED.member, renewed_at = now(), grace_ms = EXCLUDED.grace_ms",
                    &[&me.service, job, &me.id, &grace_ms],
                )
                .await?;
                outcomes.insert(job.clone(), LockOutcome::Held);
            }
        }
    }
    for job in locks.clone().iter().filter(|j| !req.singletons.contains_key(*j)) {
        let key = format!("{}/{}", me.service, job);
        tx.execute("SELECT pg_advisory_unlock($1, hashtext($2))", &[&LOCK_SINGLETON_NS, &key]).await?;
        tx.execute("DELETE FROM corral.singletons WHERE service = $1 AND job = $2 AND member = $3", &[&me.service, job, &me.id])
            .await?;
        locks.remove(job);
    }
    Ok(outcomes)
}

/// Upsert our demand rows (a singleton job without its fleet lock asks for nothing) and drop
/// rows of jobs we no longer have. Returns (job, wants) as reported.
async fn report_demands(
    tx: &Transaction<'_>,
    me: &Identity,
    req: &SyncRequest,
    outcomes: &BTreeMap<String, LockOutcome>,
) -> Result<Vec<(String, Wants)>, tokio_postgres::Error> {
    let names: Vec<String> = req.jobs.iter().map(|j| j.job.clone()).collect();
    tx.execute("DELETE FROM corral.demands WHERE member = $1 AND NOT (job = ANY($2))", &[&me.id, &names]).await?;
    let mut mine = Vec::with_capacity(req.jobs.len());
    for j in &req.jobs {
        let standby = req.singletons.contains_key(&j.job) && outcomes.get(&j.job) != Some(&LockOutcome::Held);
        let wants = if standby { Wants::Off } else { j.wants };
        let p = j.process;
        tx.execute(
            "INSERT INTO corral.demands (member, job, service, priority, min, max, wants, has_process, told, held, measured, live)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (member, job) DO UPDATE SET service = EXCLUDED.service, priority = EXCLUDED.priority,
                 min = EXCLUDED.min, max = EXCLUDED.max, wants = EXCLUDED.wants, has_process = EXCLUDED.has_process,
                 told = EXCLUDED.told, held = GREATEST(corral.demands.held, EXCLUDED.held),
                 measured = EXCLUDED.measured, live = EXCLUDED.live, updated_at = now()",
            &[
                &me.id,
                &j.job,
                &me.service,
                &j.priority,
                &i(j.min),
                &i(j.max),
                &wants_str(wants),
                &p.is_some(),
                &i(p.map_or(0, |p| p.told)),
                &i(p.map_or(0, |p| p.held)),
                &p.and_then(|p| p.measured).map(i),
                &j.live.map(i),
            ],
        )
        .await?;
        mine.push((j.job.clone(), wants));
    }
    Ok(mine)
}

/// Everything the allocation needs, read under the allocation lock.
struct FleetRows {
    members: Vec<(Member, MemberRow)>,
    rows: Vec<Row>,
    /// Live connections each row's corral last reported, by row id.
    live_of: BTreeMap<String, Option<u32>>,
    reservations: Vec<ReservationView>,
    backends: BTreeMap<String, u32>,
}

impl FleetRows {
    fn input(&self) -> FleetInput {
        FleetInput {
            members: self.members.iter().map(|(m, _)| m.clone()).collect(),
            rows: self.rows.clone(),
            reserved: self.reservations.iter().map(|r| r.count).sum(),
            corral_backends: self.backends.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }

    fn view(self, alloc: &Allocation, expired: Vec<String>) -> FleetView {
        let jobs = self
            .rows
            .iter()
            .filter_map(|r| {
                // Every row was allocated; a row without a grant is left out rather than panic.
                let g = alloc.get(&r.id())?;
                Some(JobView {
                    member: r.member.clone(),
                    service: r.service.clone(),
                    name: r.job.clone(),
                    priority: r.priority,
                    min: r.min,
                    max: r.max,
                    wants: r.wants,
                    quota: g.grant,
                    held: g.held,
                    connections: self.live_of.get(&r.id()).copied().flatten(),
                    waiting: g.wait_reason.as_ref().map(|w| w.to_string()),
                })
            })
            .collect();
        FleetView {
            members: self.members.into_iter().map(|(_, v)| v).collect(),
            jobs,
            reservations: self.reservations,
            backends: self.backends,
            expired,
        }
    }
}

async fn read_fleet(tx: &Transaction<'_>) -> Result<FleetRows, tokio_postgres::Error> {
    let members = tx
        .query(
            "SELECT id, service, host, pid, base, own, extract(epoch FROM now() - heartbeat)::float8 FROM corral.members ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let m = Member { id: r.get(0), service: r.get(1), base: known(r.get(4)), own: u(r.get(5)) };
            let v = MemberRow {
                id: m.id.clone(),
                service: m.service.clone(),
                host: r.get(2),
                pid: r.get(3),
                heartbeat_age_s: r.get(6),
                own: m.own,
                base: m.base,
            };
            (m, v)
        })
        .collect();
    let mut rows = Vec::new();
    let mut live_of = BTreeMap::new();
    for r in tx
        .query(
            "SELECT member, service, job, priority, min, max, wants, has_process, told, held, measured, granted, live
             FROM corral.demands ORDER BY member, job",
            &[],
        )
        .await?
    {
        let row = Row {
            member: r.get(0),
            service: r.get(1),
            job: r.get(2),
            priority: r.get(3),
            min: u(r.get(4)),
            max: u(r.get(5)),
            wants: wants_parse(r.get(6)),
            grant: u(r.get(11)),
            process: r.get::<_, bool>(7).then(|| Process {
                told: u(r.get(8)),
                held: u(r.get(9)),
                measured: r.get::<_, Option<i32>>(10).map(u),
            }),
        };
        live_of.insert(row.id(), r.get::<_, Option<i32>>(12).map(u));
        rows.push(row);
    }
    let reservations = tx
        .query(
            "SELECT name, count, created_by, extract(epoch FROM expires_at - now())::float8 FROM corral.reservations ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| ReservationView { name: r.get(0), count: u(r.get(1)), created_by: r.get(2), expires_in_s: r.get(3) })
        .collect();
    let backends = tx.query(BACKENDS_SQL, &[]).await?.iter().map(|r| (r.get::<_, String>(0), u(r.get(1)))).collect();
    Ok(FleetRows { members, rows, live_of, reservations, backends })
}

/// Write every row's grant back, and record as `told` what we are about to tell our own jobs
/// (or start them with), before anyone else can allocate again. Returns our jobs' results.
async fn write_grants(
    tx: &Transaction<'_>,
    me: &Identity,
    rows: &[Row],
    alloc: &Allocation,
    mine: &[(String, Wants)],
) -> Result<BTreeMap<String, JobResult>, tokio_postgres::Error> {
    let (mut m_ids, mut jobs, mut grants, mut targets, mut helds, mut waits) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        // Every row was allocated; one that was not keeps its old grant.
        let Some(g) = alloc.get(&row.id()) else { continue };
        m_ids.push(row.member.clone());
        jobs.push(row.job.clone());
        grants.push(i(g.grant));
        targets.push(i(g.target));
        helds.push(i(g.held));
        waits.push(g.wait_reason.as_ref().map(|w| w.to_string()));
    }
    tx.execute(
        "UPDATE corral.demands d SET granted = u.g, target = u.t, held = u.h, waiting = u.w
         FROM unnest($1::text[], $2::text[], $3::int4[], $4::int4[], $5::int4[], $6::text[]) AS u(member, job, g, t, h, w)
         WHERE d.member = u.member AND d.job = u.job",
        &[&m_ids, &jobs, &grants, &targets, &helds, &waits],
    )
    .await?;
    let mut results = BTreeMap::new();
    for (job, wants) in mine {
        // Our rows were written before the read and allocated with it; without one, no result.
        let Some(g) = alloc.get(&fleet::row_id(&me.service, job, &me.id)) else { continue };
        let Some(row) = rows.iter().find(|r| r.member == me.id && &r.job == job) else { continue };
        let tell = fleet::told_after(*wants, g.grant, g.waiting_budget);
        if let Some(q) = tell.filter(|q| row.process.is_none_or(|p| p.told != *q)) {
            tx.execute(
                "UPDATE corral.demands SET told = $3, measured = NULL, has_process = true, held = GREATEST(held, $3)
                 WHERE member = $1 AND job = $2",
                &[&me.id, job, &i(q)],
            )
            .await?;
        }
        results.insert(
            job.clone(),
            JobResult {
                grant: g.grant,
                held: g.held.max(tell.unwrap_or(0)),
                tell,
                waiting: g.wait_reason.as_ref().map(|w| w.to_string().replace(&format!("@{}", me.id), "")),
                evict: g.evict,
            },
        );
    }
    Ok(results)
}

async fn reserve_tx(
    client: &mut Client,
    me: &str,
    name: &str,
    count: u32,
    ttl: Option<Duration>,
) -> Result<Result<(), String>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_NS, &LOCK_ALLOCATE]).await?;
    tx.execute(EXPIRE_RESERVATIONS_SQL, &[]).await?;
    let mut fleet = read_fleet(&tx).await?;
    // A reservation must fit beside what the fleet has granted and what its processes hold.
    let occupied: u64 = fleet.rows.iter().map(|r| r.grant.max(allocate::occupancy(r.process.as_ref())) as u64).sum();
    fleet.reservations.retain(|r| r.name != name);
    let p = fleet::plan(&fleet.input());
    let free = (p.usable as u64).saturating_sub(occupied);
    if count as u64 > free {
        return Ok(Err(format!(
            "cannot reserve {count}: only {free} of the fleet's {} usable connections are not held by jobs",
            p.usable
        )));
    }
    let ttl_s = ttl.map(|t| t.as_secs_f64());
    tx.execute(
        "INSERT INTO corral.reservations (name, count, expires_at, created_by)
         VALUES ($1, $2, now() + make_interval(secs => $3::float8), $4)
         ON CONFLICT (name) DO UPDATE SET count = EXCLUDED.count, expires_at = EXCLUDED.expires_at,
             created_by = EXCLUDED.created_by, created_at = now()",
        &[&name, &i(count), &ttl_s, &me],
    )
    .await?;
    tx.commit().await?;
    Ok(Ok(()))
}
