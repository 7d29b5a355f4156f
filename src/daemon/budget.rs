//! The connection budget as the actor holds it (SPEC §3, §5): plan inputs
//! (server limits, reserves, reservations) and the last database reading; each
//! job's grant and process bookkeeping is its [`JobBudget`], kept on the job's
//! own record in the job table (`JobRt::ledger`) and changed only here. The
//! arithmetic and the allocation themselves are the pure `budget` modules; this
//! file only feeds them and remembers their results, and `budget/report.rs` shows
//! them (`budget --json`, `status`, `health`). Owned by the supervisor actor.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use crate::budget::allocate::{self, Allocation, Demand, Process, Wants};
use crate::budget::fleet::{reported_process, FleetPlan};
use crate::budget::plan::{self, Plan};
use tracing::{error, info, warn};

mod report;

use super::health::DbReport;
use super::jobs::JobTable;
use super::history::{History, Kind, Reading};
use crate::config::{self, BudgetConfig, DatabaseConfig, Enforce, JobConfig, Scope};
use crate::db;
use crate::db::fleet::{FleetView, LocalJob, LockOutcome, SyncRequest, SyncResult};
use crate::db::pooler::PgBouncerReading;
use crate::db::tls::TlsInfo;
use crate::db::{ServerLimits, Usage};
use crate::protocol::{ErrorKind, Response};

/// How long an exited job's connections count as occupied without a reading.
const DRAIN_FALLBACK: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Reservation {
    pub count: u32,
    pub expires: Option<Instant>,
}

/// Per-job budget bookkeeping.
#[derive(Debug, Clone, Default)]
pub struct JobBudget {
    /// Last allocated grant.
    pub grant: u32,
    /// The live process, as the allocator sees it.
    pub process: Option<Process>,
    /// Last time the job had an active connection (idle detection).
    pub last_active: Option<Instant>,
    /// Live connections at the last reading.
    pub live: Option<u32>,
    /// Quota-file generation counter.
    pub generation: u64,
    pub waiting: Option<String>,
    /// When the current quota was last delivered (file + signal) or the process exited.
    pub told_at: Option<Instant>,
    /// The process exited; its connections are draining.
    pub exited_at: Option<Instant>,
    /// Fleet scope: what the last sync said this job may be using.
    pub fleet_held: u32,
}

impl JobBudget {
    /// The job spawned with `quota`.
    pub fn spawned(&mut self, quota: u32, now: Instant) {
        self.exited_at = None;
        self.grant = quota;
        self.process = Some(Process { told: quota, held: quota, measured: None });
        self.last_active = Some(now);
    }

    /// The job's process is gone: everything it held is free again.
    ///
    /// Its backends may outlive the process for a moment (PostgreSQL frees a
    /// slot when the backend exits, after the client is gone), so what it held
    /// stays occupied until a reading taken after the exit shows none left, or
    /// DRAIN_FALLBACK passed (no readings: pooler or database down).
    pub fn exited(&mut self, now: Instant) {
        if let Some(p) = self.process.as_mut() {
            p.told = 0;
            p.measured = None;
            self.told_at = Some(now);
            self.exited_at = Some(now);
        }
    }
}

/// An exited job's connections count as closed after DRAIN_FALLBACK without a reading
/// that shows it (a pooler hides them, or a stray descendant keeps them open).
fn expire_drains(jobs: &mut JobTable, now: Instant) {
    for b in jobs.values_mut().filter_map(|j| j.ledger.as_mut()) {
        if b.exited_at.is_some_and(|t| now.duration_since(t) >= DRAIN_FALLBACK) {
            b.process = None;
            b.exited_at = None;
        }
    }
}

/// Fleet scope: what the last syncs told us (SPEC §5 across the fleet, §7).
#[derive(Debug, Default)]
pub struct FleetState {
    pub member: String,
    /// The last successful sync.
    pub last_ok: Option<Instant>,
    pub last_error: Option<String>,
    pub plan: Option<FleetPlan>,
    pub view: Option<FleetView>,
    pub locks: BTreeMap<String, LockOutcome>,
    /// When each fleet-wide lock was last confirmed ours.
    pub lock_renewed: BTreeMap<String, Instant>,
    pub lease_losses: u64,
    pub syncs: u64,
    /// Logged that another member shares our service.
    pub warned_shared: bool,
}

impl FleetState {
    /// The fleet-wide lock of `job` is ours and was confirmed within `hold`.
    pub fn holds(&self, job: &str, hold: std::time::Duration, now: Instant) -> bool {
        self.locks.get(job) == Some(&LockOutcome::Held)
            && self.lock_renewed.get(job).is_some_and(|t| now.duration_since(*t) <= hold)
    }
}

/// Result of the last database check (SPEC §6).
#[derive(Debug, Clone, Default)]
pub struct DbStatus {
    pub healthy: Option<bool>,
    pub latency_ms: Option<f64>,
    pub checked_at: Option<SystemTime>,
    /// The last connection or check error, also before any check succeeded (SPEC §6).
    pub error: Option<String>,
    pub consecutive_failures: u32,
    /// The TLS of corral's connection at the last check (None: plaintext or not connected).
    pub tls: Option<TlsInfo>,
}

pub struct Budget {
    pub db: DatabaseConfig,
    pub cfg: BudgetConfig,
    pub limits: Option<ServerLimits>,
    /// PgBouncer's admin console at its last answer (sizes rarely change: kept on failure).
    pub pooler: Option<PgBouncerReading>,
    /// Why the admin console did not answer last time.
    pub pooler_error: Option<String>,
    pub reservations: BTreeMap<String, Reservation>,
    pub usage: Option<Usage>,
    pub status: DbStatus,
    pub quota_dir: PathBuf,
    /// Present in fleet scope: grants come from the fleet's allocation, not a local one.
    pub fleet: Option<FleetState>,
    /// Some job runs as another `user`: the quota directory lets others traverse it (0711).
    pub quota_dir_shared: bool,
}

/// What the actor must do after an allocation.
#[derive(Debug, Default)]
pub struct Changes {
    /// Live jobs whose quota changed: (job, new quota) — write file, signal.
    pub tell: Vec<(String, u32)>,
    /// Live jobs that lost their grant.
    pub evict: Vec<String>,
}

/// Connections over quota to terminate, newest idle first, keeping `keep`.
#[derive(Debug, Clone)]
pub struct Terminate {
    pub job: String,
    pub application_name: String,
    pub keep: u32,
    pub timeout: std::time::Duration,
}

impl Budget {
    pub fn new(db: DatabaseConfig, cfg: BudgetConfig, quota_dir: PathBuf) -> Budget {
        Budget {
            db,
            limits: None,
            pooler: None,
            pooler_error: None,
            reservations: BTreeMap::new(),
            usage: None,
            status: DbStatus::default(),
            fleet: (cfg.scope == Scope::Fleet).then(FleetState::default),
            cfg,
            quota_dir,
            quota_dir_shared: false,
        }
    }

    /// corral's own connections: one in either scope (health, readings and fleet sync share
    /// it), none when the budget is planned offline.
    pub fn own(&self) -> u32 {
        crate::budget::own_connections(&self.db)
    }

    pub fn plan(&self, now: Instant) -> Plan {
        let server = self.limits.map(|l| (l.max_connections, l.superuser_reserved_connections, l.reserved_connections));
        plan::plan(&crate::budget::plan_input(&self.db, server, self.pooler.as_ref(), self.active_reservations(now), self.own()))
    }

    /// This member's base for the fleet: `limit` minus the configured reserves, before
    /// reservations and own connections (which the fleet deducts once, for everyone).
    pub fn fleet_base(&self) -> Option<u32> {
        let server = self.limits.map(|l| (l.max_connections, l.superuser_reserved_connections, l.reserved_connections));
        let p = plan::plan(&crate::budget::plan_input(&self.db, server, self.pooler.as_ref(), 0, 0));
        (p.limit_source != plan::LimitSource::Unknown).then_some(p.usable)
    }

    /// No url: the plan comes from the preset or an integer, nothing is measured.
    pub fn offline(&self) -> bool {
        self.db.url.is_none()
    }

    pub fn active_reservations(&self, now: Instant) -> u32 {
        self.reservations.values().filter(|r| r.expires.is_none_or(|e| e > now)).map(|r| r.count).sum()
    }

    /// Drop expired reservations; true when any expired.
    pub fn expire_reservations(&mut self, now: Instant) -> bool {
        let before = self.reservations.len();
        self.reservations.retain(|_, r| r.expires.is_none_or(|e| e > now));
        before != self.reservations.len()
    }

    fn demands(&self, jobs: &JobTable, now: Instant, starting: Option<&str>) -> Vec<Demand> {
        jobs.values()
            .filter_map(|j| {
                let conn = j.cfg.connections?;
                let b = j.ledger.clone().unwrap_or_default();
                let wants = if !(j.wants_to_run() || starting == Some(j.cfg.name.as_str())) {
                    Wants::Off
                } else if j.live() && self.is_idle(&b, now) {
                    Wants::Idle
                } else {
                    Wants::Active
                };
                Some(Demand {
                    id: j.cfg.name.clone(),
                    priority: j.cfg.priority,
                    min: conn.min,
                    max: conn.max,
                    wants,
                    grant: b.grant,
                    process: b.process,
                })
            })
            .collect()
    }

    fn is_idle(&self, b: &JobBudget, now: Instant) -> bool {
        // Without a reading we cannot tell: treat as active (never starve a busy job).
        if self.usage.is_none() {
            return false;
        }
        match b.last_active {
            Some(t) => now.duration_since(t) >= self.cfg.idle_after,
            None => false,
        }
    }

    /// Recompute all grants. `starting` is a job about to spawn that must be
    /// counted as wanting to run.
    pub fn allocate(&mut self, jobs: &mut JobTable, now: Instant, starting: Option<&str>) -> (Allocation, Changes) {
        self.expire_reservations(now);
        expire_drains(jobs, now);
        let usable = self.plan(now).usable;
        let demands = self.demands(jobs, now, starting);
        let alloc = allocate::allocate(usable, &demands);
        let mut changes = Changes::default();
        for g in &alloc.jobs {
            // Every demand is a job of the table.
            let Some(j) = jobs.get_mut(&g.id) else { continue };
            let live = j.live();
            let b = j.ledger.get_or_insert_with(JobBudget::default);
            b.grant = g.grant;
            b.waiting = g.wait_reason.as_ref().map(|r| r.to_string());
            if let Some(p) = b.process.as_mut() {
                p.held = g.held;
            }
            if let Some(p) = b.process.as_mut().filter(|_| live) {
                if g.grant != p.told && g.grant > 0 {
                    p.told = g.grant;
                    p.measured = None;
                    changes.tell.push((g.id.clone(), g.grant));
                }
            }
            if g.evict {
                changes.evict.push(g.id.clone());
            }
        }
        (alloc, changes)
    }

    // ----- fleet scope -----

    /// What this member reports in a fleet sync: its jobs with connections (wants,
    /// processes as the fleet must count them) and the single-instance locks it wants.
    pub fn fleet_request(&self, jobs: &JobTable, now: Instant) -> SyncRequest {
        let demands = self.demands(jobs, now, None);
        let local = demands
            .into_iter()
            .map(|d| {
                let b = jobs.get(&d.id).and_then(|j| j.ledger.clone()).unwrap_or_default();
                LocalJob {
                    process: reported_process(d.wants, b.grant, b.fleet_held, b.process),
                    job: d.id,
                    priority: d.priority,
                    min: d.min,
                    max: d.max,
                    wants: d.wants,
                    live: b.live,
                }
            })
            .collect();
        let singletons = jobs
            .values()
            .filter(|j| j.cfg.single_instance && (j.wants_to_run() || j.live()))
            .map(|j| (j.cfg.name.clone(), j.cfg.stop_timeout))
            .collect();
        SyncRequest {
            base: self.fleet_base(),
            own: self.own(),
            interval: self.cfg.rebalance_interval,
            hold: self.fleet_hold(),
            jobs: local,
            singletons,
        }
    }

    /// How long a fleet-wide single-instance job keeps running without its lock confirmed:
    /// one interval until the next sync, plus that sync's timeout, plus `fleet_grace`.
    pub fn fleet_hold(&self) -> std::time::Duration {
        self.cfg.rebalance_interval + self.db.health_timeout + self.cfg.fleet_grace
    }

    /// Apply a successful sync: grants, quotas to tell, evictions, locks.
    pub fn apply_fleet(&mut self, result: SyncResult, jobs: &mut JobTable, now: Instant) -> Changes {
        let mut changes = Changes::default();
        for (name, j) in jobs.iter_mut() {
            let Some(r) = result.jobs.get(name) else { continue };
            let (wants_to_run, live) = (j.wants_to_run(), j.live());
            let b = j.ledger.get_or_insert_with(JobBudget::default);
            // A job that stopped wanting since the snapshot keeps nothing it was granted.
            if !wants_to_run {
                b.grant = 0;
                continue;
            }
            b.grant = if r.waiting.is_some() { 0 } else { r.grant };
            b.waiting = r.waiting.clone();
            b.fleet_held = r.held;
            if let (Some(p), true) = (b.process.as_mut(), live) {
                // The allocator's held already covers an unconfirmed shrink (as in local scope).
                p.held = r.held;
                if let Some(q) = r.tell.filter(|q| *q != p.told) {
                    p.told = q;
                    p.measured = None;
                    changes.tell.push((name.clone(), q));
                }
            }
            if r.evict && live {
                tracing::warn!(job = %name, reason = ?r.waiting, usable = result.plan.usable, unclaimed = result.plan.unclaimed, base = result.plan.base, "fleet evicts");
                changes.evict.push(name.clone());
            }
        }
        if let Some(f) = self.fleet.as_mut() {
            if result.lease_lost {
                f.lease_losses += 1;
            }
            for (job, outcome) in &result.locks {
                if *outcome == LockOutcome::Held {
                    f.lock_renewed.insert(job.clone(), now);
                }
            }
            f.lock_renewed.retain(|job, _| result.locks.contains_key(job));
            f.locks = result.locks;
            f.plan = Some(result.plan);
            f.view = Some(result.view);
            f.last_ok = Some(now);
            f.last_error = None;
            f.syncs += 1;
        }
        changes
    }

    /// What the connections named `corral/<service>/<job>` may use together: the job's grant,
    /// or in fleet scope the grants of every member running a job of that service and name
    /// (pg_stat_activity cannot tell their connections apart).
    pub fn quota_of_application(&self, job: &str, mine: u32) -> u32 {
        let Some(view) = self.fleet.as_ref().and_then(|f| f.view.as_ref().map(|v| (f, v))) else { return mine };
        let (f, view) = view;
        let others: u32 = view
            .jobs
            .iter()
            .filter(|j| j.member != f.member && j.service == self.cfg.service && j.name == job && j.wants != Wants::Off)
            .map(|j| j.quota)
            .sum();
        mine + others
    }

    /// Other members running jobs with connections under our service and a job name of ours:
    /// their connections and ours are indistinguishable in pg_stat_activity.
    pub fn shared_service(&self) -> Vec<String> {
        let Some(f) = &self.fleet else { return Vec::new() };
        let Some(v) = &f.view else { return Vec::new() };
        // A standby (a single-instance job waiting for the fleet lock) asks for nothing: not a clash.
        let mine: Vec<&str> =
            v.jobs.iter().filter(|j| j.member == f.member && j.wants != Wants::Off).map(|j| j.name.as_str()).collect();
        let mut others: Vec<String> = v
            .jobs
            .iter()
            .filter(|j| j.member != f.member && j.service == self.cfg.service && j.wants != Wants::Off)
            .filter(|j| mine.contains(&j.name.as_str()))
            .map(|j| j.member.clone())
            .collect();
        others.dedup();
        others
    }

    /// Fleet scope between syncs: a job that no longer wants to run gives its grant up at
    /// once (it must get a new one from the fleet to start again). Nothing is ever raised here.
    pub fn fleet_drop_unwanted(jobs: &mut JobTable) {
        expire_drains(jobs, Instant::now());
        for j in jobs.values_mut().filter(|j| !j.wants_to_run()) {
            if let Some(b) = j.ledger.as_mut() {
                b.grant = 0;
                b.waiting = None;
            }
        }
    }

    /// Connections given back that no reading has shown closed yet: an exited job's backends,
    /// or the part of a lowered quota its job has not been measured within.
    pub fn unconfirmed(jobs: &JobTable) -> bool {
        jobs.values().filter_map(|j| j.ledger.as_ref()).any(|b| b.process.is_some_and(|p| b.exited_at.is_some() || allocate::occupancy(Some(&p)) > p.told))
    }

    /// What a reading can change that the fleet must hear about: each job's wants (idle or
    /// active) and the connections its process occupies.
    pub fn reading_signature(&self, jobs: &JobTable, now: Instant) -> Vec<(String, Wants, u32)> {
        self.demands(jobs, now, None).into_iter().map(|d| (d.id, d.wants, allocate::occupancy(d.process.as_ref()))).collect()
    }

    /// Connections of the job's previous run that no reading has shown closed yet. A new run
    /// waits for them: backends outlive their client while a query runs, and the new run's
    /// quota does not cover both.
    pub fn draining(&self, ledger: Option<&JobBudget>) -> Option<u32> {
        let b = ledger?;
        let p = b.process.as_ref().filter(|_| b.exited_at.is_some())?;
        // Without readings there is nothing to wait for (and nothing we could see).
        (self.status.healthy == Some(true)).then_some(p.held.max(b.live.unwrap_or(0)))
    }

    /// The job's new quota was delivered (quota file, signal). Planned offline nothing can
    /// ever measure its use, so the grant is the truth: a shrink counts as honoured once told.
    pub fn delivered(&self, ledger: &mut JobBudget, now: Instant) {
        ledger.told_at = Some(now);
        if let Some(p) = ledger.process.as_mut().filter(|_| self.offline()) {
            p.measured = Some(p.told);
        }
    }

    /// Apply a usage reading: live use per job and idle tracking.
    /// Readings that started before a quota was told (or the job exited)
    /// cannot confirm it.
    pub fn observe(&mut self, usage: Usage, jobs: &mut JobTable, now: Instant, started: Instant) {
        let service = self.cfg.service.clone();
        for (name, b) in jobs.iter_mut().filter_map(|(n, j)| Some((n, j.ledger.as_mut()?))) {
            let fresh = b.told_at.is_none_or(|t| t <= started);
            let live = usage.job(&service, name);
            b.live = Some(live);
            if usage.job_active(&service, name) > 0 || b.last_active.is_none() {
                b.last_active = Some(now);
            }
            if let Some(p) = b.process.as_mut().filter(|_| fresh) {
                p.measured = Some(live);
                if b.exited_at.is_some() && live == 0 {
                    b.process = None;
                    b.exited_at = None;
                }
            }
        }
        self.usage = Some(usage);
    }

    pub fn quota_file(&self, job: &str) -> PathBuf {
        self.quota_dir.join(format!("{job}.json"))
    }

    /// Write the job's quota file (SPEC §3), private to corral and the job (SPEC §10): the
    /// directory is 0700, or 0711 when some job runs as another `user` (it reaches its own
    /// file by name but cannot list or change the directory); the file is 0600, owned by the
    /// job's user when it has one.
    pub fn write_quota(&self, cfg: &JobConfig, ledger: &mut Option<JobBudget>, quota: u32) -> std::io::Result<()> {
        let Some(conn) = cfg.connections else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "the job has no connections, so no quota file"));
        };
        let b = ledger.get_or_insert_with(JobBudget::default);
        b.generation += 1;
        let json = crate::budget::env::quota_json(&self.cfg.service, &cfg.name, quota, conn.overflow, b.generation);
        let mode = if self.quota_dir_shared { 0o711 } else { 0o700 };
        crate::process::lock::secure_dir(&self.quota_dir, mode).map_err(|e| std::io::Error::other(e.to_string()))?;
        let owner = cfg
            .user
            .as_deref()
            .filter(|_| nix::unistd::geteuid().is_root())
            .and_then(|u| nix::unistd::User::from_name(u).ok().flatten())
            .map(|u| (u.uid.as_raw(), u.gid.as_raw()));
        crate::budget::env::write_quota_file_owned(&self.quota_file(&cfg.name), &json, owner)
    }

    /// Take in a database reading (SPEC §5, §6): health, limits, the pooler's sizes, live use
    /// per job. Records what the dashboard shows in `history`; returns the jobs whose
    /// connections over quota should be terminated (`enforce = "terminate"`, no pooler).
    pub fn apply_reading(&mut self, report: DbReport, jobs: &mut JobTable, history: &mut History, now: Instant) -> Vec<Terminate> {
        let mut terminate = Vec::new();
        match (&report.health, &report.usage) {
            (Some(Ok((h, _))), _) => history.reading(SystemTime::now(), Reading::Health, Some(h.latency_ms())),
            (Some(Err(_)), _) | (None, Err(_)) => history.reading(SystemTime::now(), Reading::Usage, None),
            (None, Ok(_)) => history.reading(SystemTime::now(), Reading::Usage, Some(report.started.elapsed().as_secs_f64() * 1000.0)),
        }
        match report.pooler {
            Some(Ok(reading)) => {
                if self.pooler.as_ref().is_none_or(|r| (r.mode, r.pool_size, r.max_client_conn) != (reading.mode, reading.pool_size, reading.max_client_conn)) {
                    info!(mode = reading.mode.as_str(), pool_size = reading.pool_size, max_client_conn = reading.max_client_conn, "PgBouncer admin console read");
                }
                self.pooler = Some(reading);
                self.pooler_error = None;
            }
            Some(Err(e)) => {
                if self.pooler_error.is_none() {
                    warn!("cannot read the PgBouncer admin console: {e}");
                }
                self.pooler_error = Some(e);
            }
            None => {}
        }
        if report.health.as_ref().is_some_and(|h| h.is_ok()) {
            self.status.tls = report.tls.clone();
        }
        if let Some(h) = &report.health {
            match h {
                Ok((health, limits)) => {
                    if self.status.healthy != Some(true) {
                        history.event(SystemTime::now(), Kind::DatabaseUp, None, format!("database healthy ({:.1} ms)", health.latency_ms()));
                        let tls = report.tls.as_ref().map_or_else(|| "none".to_string(), |t| t.describe());
                        info!(latency_ms = format!("{:.1}", health.latency_ms()), max_connections = limits.max_connections, tls = %tls, "database healthy");
                    }
                    if let Some(preset) = self.db.preset.as_deref().and_then(config::preset_limit) {
                        if preset != limits.max_connections && self.limits.is_none() {
                            warn!(preset, server = limits.max_connections, "preset disagrees with the server's max_connections; using the server's");
                        }
                    }
                    self.limits = Some(*limits);
                    self.status.healthy = Some(true);
                    self.status.latency_ms = Some(health.latency_ms());
                    self.status.error = None;
                    self.status.consecutive_failures = 0;
                }
                Err(e) => {
                    self.status.consecutive_failures += 1;
                    // Only the first failure of a streak is an error; jobs are never touched.
                    if self.status.healthy != Some(false) {
                        history.event(SystemTime::now(), Kind::DatabaseDown, None, format!("database health check failed: {e}"));
                        error!("database health check failed (jobs keep running): {e}");
                    } else {
                        warn!(failures = self.status.consecutive_failures, "database still unreachable: {e}");
                    }
                    self.status.healthy = Some(false);
                    self.status.error = Some(e.clone());
                }
            }
            self.status.checked_at = Some(std::time::SystemTime::now());
        }
        if let Ok(usage) = report.usage {
            let service = self.cfg.service.clone();
            // The jobs a reading judges: with `connections`, a process live, known to the budget.
            for (name, job) in jobs.iter().filter(|(_, j)| j.cfg.connections.is_some() && j.m.state.is_live()) {
                let Some(b) = job.ledger.as_ref() else { continue };
                let live = usage.job(&service, name);
                let quota = self.quota_of_application(name, b.grant);
                // A job told a lower quota gets one rebalance_interval to close what it gave back
                // (readings now come sooner than that; they must not count it as over quota).
                let shrinking = b.told_at.is_some_and(|t| now.duration_since(t) < self.cfg.rebalance_interval);
                // A stopping job's connections are on their way out (its quota is already 0).
                let stopping = job.m.state == crate::job::State::Stopping;
                if self.db.enforce != Enforce::Off && !shrinking && !stopping {
                    history.usage(SystemTime::now(), name, live, quota);
                }
                if live > quota && !shrinking && !stopping && self.db.enforce != Enforce::Off {
                    warn!(job = %name, live, quota, "job uses more connections than its quota");
                    // Through a pooler the server's backends are the pooler's: terminating them
                    // would cut other clients. There `terminate` only warns.
                    if self.db.enforce == Enforce::Terminate && crate::budget::pooler_limit(&self.db, self.pooler.as_ref()).is_none() {
                        terminate.push(Terminate {
                            application_name: crate::budget::env::application_name(&service, name),
                            keep: quota,
                            timeout: self.db.health_timeout,
                            job: name.clone(),
                        });
                    }
                }
                for g in usage.groups.iter().filter(|g| matches!(&g.attribution, db::Attribution::Job { service: s, job } if *s == service && job == name)) {
                    if g.state == db::BackendState::IdleInTransaction && g.max_idle_secs.unwrap_or(0.0) > 60.0 {
                        warn!(job = %name, sessions = g.count, idle_s = g.max_idle_secs, "sessions stuck idle in transaction");
                    }
                }
            }
            self.observe(usage, jobs, now, report.started);
        }
        terminate
    }

    /// A reload's new `[database]` and `[budget]` (SPEC §8). The probe and fleet tasks keep
    /// their connection and timers from startup: changes to those settings wait for a restart.
    pub fn reconfigure(&mut self, db: DatabaseConfig, cfg: BudgetConfig, quota_dir_shared: bool) {
        if self.db.url != db.url
            || self.db.pooler_admin_url != db.pooler_admin_url
            || self.db.health_interval != db.health_interval
            || self.db.health_timeout != db.health_timeout
            || self.cfg.rebalance_interval != cfg.rebalance_interval
            || self.cfg.service != cfg.service
            || self.cfg.scope != cfg.scope
        {
            warn!("changes to [database] url, pooler_admin_url, health_interval, health_timeout or [budget] scope, service, rebalance_interval take effect after a restart of corral");
        }
        self.db = db;
        self.cfg = cfg;
        self.quota_dir_shared = quota_dir_shared;
    }

    /// A local reservation of `count` for `ttl` (SPEC §5): it must fit beside what jobs
    /// already hold, never over-commit. Returns the refusal when it does not.
    // The error is the reply itself, as in `protocol::decode_request`: boxing it buys nothing.
    #[allow(clippy::result_large_err)]
    pub fn reserve(&mut self, jobs: &JobTable, name: &str, count: u32, ttl: Option<std::time::Duration>, now: Instant) -> Result<(), Response> {
        let previous = self.reservations.remove(name);
        let plan = self.plan(now);
        let occupied: u32 = jobs.values().filter_map(|j| j.ledger.as_ref()).map(|b| b.process.map(|p| p.held.max(p.told)).unwrap_or(0)).sum();
        let free = plan.usable.saturating_sub(occupied);
        if count > free {
            if let Some(p) = previous {
                self.reservations.insert(name.to_string(), p);
            }
            return Err(Response::err(
                ErrorKind::Refused,
                format!("cannot reserve {count}: only {free} of {} usable connections are not held by jobs", plan.usable),
            ));
        }
        self.reservations.insert(name.to_string(), Reservation { count, expires: ttl.map(|t| now + t) });
        Ok(())
    }
}
