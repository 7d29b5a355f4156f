//! The connection budget as the actor holds it (SPEC §3, §5): plan inputs
//! (server limits, reserves, reservations), each job's grant and process
//! bookkeeping, and the last database reading. The arithmetic and the
//! allocation themselves are the pure `budget` modules; this file only feeds
//! them and remembers their results. Owned by the supervisor actor.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use serde_json::json;

use crate::budget::allocate::{self, Allocation, Demand, Process, Wants};
use crate::budget::plan::{self, Plan};
use crate::config::{BudgetConfig, DatabaseConfig, JobConfig};
use crate::db::{ServerLimits, Usage};

use crate::budget::OWN_CONNECTIONS;

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
}

/// Result of the last database check (SPEC §6).
#[derive(Debug, Clone, Default)]
pub struct DbStatus {
    pub healthy: Option<bool>,
    pub latency_ms: Option<f64>,
    pub checked_at: Option<SystemTime>,
    pub error: Option<String>,
    pub consecutive_failures: u32,
}

pub struct Budget {
    pub db: DatabaseConfig,
    pub cfg: BudgetConfig,
    pub limits: Option<ServerLimits>,
    pub reservations: BTreeMap<String, Reservation>,
    pub jobs: BTreeMap<String, JobBudget>,
    pub usage: Option<Usage>,
    pub status: DbStatus,
    pub quota_dir: PathBuf,
}

/// What the actor must do after an allocation.
#[derive(Debug, Default)]
pub struct Changes {
    /// Live jobs whose quota changed: (job, new quota) — write file, signal.
    pub tell: Vec<(String, u32)>,
    /// Live jobs that lost their grant.
    pub evict: Vec<String>,
}

/// A job as the budget needs to see it.
pub struct JobView<'a> {
    pub cfg: &'a JobConfig,
    /// Running or about to start.
    pub wants_to_run: bool,
    /// A process exists.
    pub live: bool,
}

impl Budget {
    pub fn new(db: DatabaseConfig, cfg: BudgetConfig, quota_dir: PathBuf) -> Budget {
        Budget {
            db,
            cfg,
            limits: None,
            reservations: BTreeMap::new(),
            jobs: BTreeMap::new(),
            usage: None,
            status: DbStatus::default(),
            quota_dir,
        }
    }

    pub fn plan(&self, now: Instant) -> Plan {
        let server = self.limits.map(|l| (l.max_connections, l.superuser_reserved_connections, l.reserved_connections));
        plan::plan(&crate::budget::plan_input(&self.db, server, self.active_reservations(now), OWN_CONNECTIONS))
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

    fn demands(&self, jobs: &[JobView<'_>], now: Instant, starting: Option<&str>) -> Vec<Demand> {
        jobs.iter()
            .filter_map(|j| {
                let conn = j.cfg.connections?;
                let b = self.jobs.get(&j.cfg.name).cloned().unwrap_or_default();
                let wants = if !(j.wants_to_run || starting == Some(j.cfg.name.as_str())) {
                    Wants::Off
                } else if j.live && self.is_idle(&b, now) {
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
    pub fn allocate(&mut self, jobs: &[JobView<'_>], now: Instant, starting: Option<&str>) -> (Allocation, Changes) {
        self.expire_reservations(now);
        for b in self.jobs.values_mut() {
            if b.exited_at.is_some_and(|t| now.duration_since(t) >= DRAIN_FALLBACK) {
                b.process = None;
                b.exited_at = None;
            }
        }
        let usable = self.plan(now).usable;
        let demands = self.demands(jobs, now, starting);
        let alloc = allocate::allocate(usable, &demands);
        let mut changes = Changes::default();
        for g in &alloc.jobs {
            let b = self.jobs.entry(g.id.clone()).or_default();
            let live = jobs.iter().any(|j| j.cfg.name == g.id && j.live);
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

    /// The job spawned with `quota`.
    pub fn spawned(&mut self, job: &str, quota: u32) {
        let b = self.jobs.entry(job.to_string()).or_default();
        b.exited_at = None;
        b.grant = quota;
        b.process = Some(Process { told: quota, held: quota, measured: None });
        b.last_active = Some(Instant::now());
    }

    /// The job's process is gone: everything it held is free again.
    ///
    /// Its backends may outlive the process for a moment (PostgreSQL frees a
    /// slot when the backend exits, after the client is gone), so what it held
    /// stays occupied until a reading taken after the exit shows none left, or
    /// DRAIN_FALLBACK passed (no readings: pooler or database down).
    pub fn exited(&mut self, job: &str) {
        if let Some(b) = self.jobs.get_mut(job) {
            let now = Instant::now();
            if let Some(p) = b.process.as_mut() {
                p.told = 0;
                p.measured = None;
                b.told_at = Some(now);
                b.exited_at = Some(now);
            }
        }
    }

    /// Apply a usage reading: live use per job and idle tracking.
    /// Readings that started before a quota was told (or the job exited)
    /// cannot confirm it.
    pub fn observe(&mut self, usage: Usage, now: Instant, started: Instant) {
        let service = self.cfg.service.clone();
        for (name, b) in self.jobs.iter_mut() {
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

    /// Environment for a job spawned with `quota` (SPEC §3).
    pub fn env_for(&self, cfg: &JobConfig, quota: u32) -> Vec<(String, String)> {
        let conn = cfg.connections.expect("only jobs with connections get DB env");
        let mut env = crate::budget::env::job_env(&self.cfg.service, &cfg.name, quota, conn.overflow, &self.db.url, &cfg.env);
        env.push((crate::budget::env::QUOTA_FILE_VAR.to_string(), self.quota_file(&cfg.name).display().to_string()));
        env
    }

    pub fn write_quota(&mut self, cfg: &JobConfig, quota: u32) -> std::io::Result<()> {
        let conn = cfg.connections.expect("only jobs with connections have a quota");
        let b = self.jobs.entry(cfg.name.clone()).or_default();
        b.generation += 1;
        let json = crate::budget::env::quota_json(&self.cfg.service, &cfg.name, quota, conn.overflow, b.generation);
        std::fs::create_dir_all(&self.quota_dir)?;
        crate::budget::env::write_quota_file(&self.quota_file(&cfg.name), &json)
    }

    /// `corral budget --json` (SPEC §4).
    pub fn report(&self, jobs: &[JobView<'_>], now: Instant) -> serde_json::Value {
        let p = self.plan(now);
        let service = &self.cfg.service;
        let job_rows: Vec<_> = jobs
            .iter()
            .filter_map(|j| {
                let c = j.cfg.connections?;
                let b = self.jobs.get(&j.cfg.name).cloned().unwrap_or_default();
                Some(json!({
                    "name": j.cfg.name, "service": service,
                    "quota": if j.live || j.wants_to_run { b.grant } else { 0 },
                    "min": c.min, "max": c.max, "priority": j.cfg.priority,
                    "connections": b.live.unwrap_or(0),
                    "idle": j.live && self.is_idle(&b, now),
                    "state_waiting": b.waiting,
                }))
            })
            .collect();
        let granted: u32 = jobs
            .iter()
            .filter(|j| j.cfg.connections.is_some() && (j.live || j.wants_to_run))
            .map(|j| self.jobs.get(&j.cfg.name).map(|b| b.grant).unwrap_or(0))
            .sum();
        let live = self.usage.as_ref().map(|u| u.sum(|a| matches!(a, crate::db::Attribution::Job { service: s, .. } if s == service)));
        let external_live = self.usage.as_ref().map(|u| u.external());
        let external: Vec<_> = self
            .usage
            .as_ref()
            .map(|u| {
                let mut m: BTreeMap<(String, String), u32> = BTreeMap::new();
                for g in &u.groups {
                    if let crate::db::Attribution::External { role, application_name } = &g.attribution {
                        *m.entry((role.clone(), application_name.clone())).or_default() += g.count;
                    }
                }
                m.into_iter().map(|((role, app), n)| json!({"role": role, "application_name": app, "connections": n})).collect()
            })
            .unwrap_or_default();
        let reservations: Vec<_> = self
            .reservations
            .iter()
            .map(|(name, r)| {
                json!({"name": name, "count": r.count,
                       "expires_in_s": r.expires.map(|e| e.saturating_duration_since(now).as_secs_f64())})
            })
            .collect();
        let usable_f = p.usable.max(1) as f64;
        let live_jobs = live.unwrap_or(0);
        let mut warnings = p.warnings.clone();
        if p.usable > 0 && (live_jobs as f64) / usable_f > self.cfg.warn_at {
            warnings.push(format!(
                "live use {live_jobs} is above warn_at {:.0}% of usable {}",
                self.cfg.warn_at * 100.0,
                p.usable
            ));
        }
        json!({
            "limit": p.limit,
            "limit_source": p.limit_source,
            "provider_reserve": p.provider_reserve,
            "adhoc_reserve": p.adhoc_reserve,
            "external_reserve": p.external_reserve,
            "reservations": reservations,
            "own": p.own,
            "usable": p.usable,
            "granted": granted,
            "headroom": p.usable.saturating_sub(granted),
            "live": live.unwrap_or(0),
            "external_live": external_live.unwrap_or(0),
            "external": external,
            "service": service,
            "scope": "local",
            "jobs": job_rows,
            "warnings": warnings,
            "database": self.db_json(),
        })
    }

    pub fn db_json(&self) -> serde_json::Value {
        let s = &self.status;
        json!({
            "healthy": s.healthy.unwrap_or(false),
            "latency_ms": s.latency_ms,
            "checked_at": s.checked_at.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_secs_f64()),
            "error": s.error,
            "target": crate::db::redact(&self.db.url),
        })
    }
}
