//! A job's start (SPEC §2, §3, §5, §7): gather what admission decides from (its dependencies,
//! its lock, the duplicate scan, the budget's answer), let [`admission::decide`] decide, and
//! spawn when it says so. The actor carries out what reaches beyond the job: quotas for
//! others, signals to duplicates, readings and syncs, the new pid's watch and readers.

use std::path::Path;
use std::time::{Duration, Instant};

use super::admission::{self, Decision, GrantFact, Hold, LockFact};
use super::budget::Budget;
use super::grants;
use super::jobs::JobTable;
use crate::config::{OnDuplicate, OrphanPolicy};
use crate::process::lock::{JobLock, LockError};
use crate::process::scan::CachedScan;
use crate::process::spawn;
use crate::protocol::WaitReason;

/// The database variables of SPEC §3: a job without `connections` gets none of them, not even
/// the ones corral itself was started with.
const DB_VARS: &[&str] = &[
    "DATABASE_URL",
    "PGAPPNAME",
    "CORRAL_CONN_QUOTA",
    "CORRAL_QUOTA_FILE",
    "DB_POOL_SIZE",
    "DB_MAX_OVERFLOW",
];

/// A process snapshot younger than this is reused for duplicate checks, so starting 500 jobs
/// scans the process table once, not 500 times.
const SNAPSHOT_TTL: Duration = Duration::from_secs(1);

/// What the start of one job reads besides the job table and the budget.
pub struct Ctx<'a> {
    pub lock_dir: &'a Path,
    pub service: &'a str,
    pub orphans: OrphanPolicy,
    pub shutting_down: bool,
    /// The unmet `depends_on`, as `dependencies::hold` says.
    pub dependency: Option<String>,
}

/// What admission decided, for the actor to carry out.
pub enum Start {
    /// Not startable (the machine's `SpawnFailed`).
    Fail(String),
    /// Held back: deliver `tell`, carry out the hold's requests; the machine gets `Blocked`.
    Hold { tell: Vec<(String, u32)>, hold: Hold },
    /// Admitted: deliver `tell`, then [`spawn`] with this quota and environment.
    Spawn { tell: Vec<(String, u32)>, quota: Option<u32>, env: Vec<(String, String)> },
}

/// The duplicate scan's cache and corral's own pid: the state admission keeps between starts.
pub struct Starter {
    scan: CachedScan,
    own_pid: i32,
}

impl Default for Starter {
    fn default() -> Starter {
        Starter { scan: CachedScan::new(SNAPSHOT_TTL), own_pid: std::process::id() as i32 }
    }
}

impl Starter {
    /// Decide the start of `name`. Takes the job's lock when it is free and records the hold
    /// on the job (reason, duplicates signalled, what `start` waits for).
    pub fn admit(&mut self, jobs: &mut JobTable, mut budget: Option<&mut Budget>, name: &str, ctx: &Ctx<'_>, now: Instant) -> Start {
        // depends_on before any lock or scan is taken.
        if let Some(reason) = ctx.dependency.clone().filter(|_| !ctx.shutting_down) {
            if let Some(j) = jobs.get_mut(name) {
                j.hold = Some(WaitReason::Dependency(reason.clone()));
            }
            return Start::Hold { tell: Vec::new(), hold: Hold { reason: Some(WaitReason::Dependency(reason)), ..Hold::default() } };
        }
        let Some(job) = jobs.get_mut(name) else { return gone() };
        let needs_scan = !ctx.shutting_down && job.check_duplicates && job.cfg.on_duplicate != OnDuplicate::Ignore;
        let dups = if needs_scan { self.scan.duplicates(&job.cfg.command, self.own_pid) } else { Vec::new() };
        job.queued = false;
        let lock = if ctx.shutting_down || !job.cfg.single_instance || job.lock.is_some() {
            LockFact::Ours
        } else {
            match JobLock::acquire(ctx.lock_dir, name) {
                Ok(lock) => {
                    job.lock = Some(lock);
                    LockFact::Ours
                }
                Err(LockError::Held { path, holder, recorded_gone }) => LockFact::Held {
                    path: path.display().to_string(),
                    holder: holder.map(|h| h.to_string()),
                    recorded_gone: recorded_gone && ctx.orphans == OrphanPolicy::Kill,
                },
                Err(e) => LockFact::Failed(e.to_string()),
            }
        };
        // The budget's answer is asked only once lock and duplicates let the job through:
        // a local allocation counts it as starting and tells the others their new quotas.
        let passes = !ctx.shutting_down && lock == LockFact::Ours && (dups.is_empty() || job.cfg.on_duplicate == OnDuplicate::Ignore);
        let draining = budget.as_ref().and_then(|b| b.draining(job.ledger.as_ref()));
        // A draining job with connections waits for the reading anyway (admission says so first).
        let ask_budget = passes && (draining.is_none() || job.cfg.connections.is_none());
        let (grant, tell) = match budget.as_deref_mut() {
            Some(budget) if ask_budget => grants::grant_fact(budget, jobs, name, now),
            _ => (GrantFact::NotNeeded, Vec::new()),
        };
        let budget = budget.as_deref();
        let quota_file = budget.map(|b| b.quota_file(name).display().to_string()).unwrap_or_default();
        let db_url = budget.and_then(|b| b.db.url.as_ref().map(|u| u.as_str()));
        let Some(job) = jobs.get_mut(name) else { return gone() };
        let facts = admission::Facts {
            job: name,
            service: ctx.service,
            shutting_down: ctx.shutting_down,
            lock,
            duplicates: &dups,
            on_duplicate: job.cfg.on_duplicate,
            dup_termed: &job.dup_termed,
            connections: job.cfg.connections,
            draining,
            grant,
            env: admission::EnvFacts { db_url, job_env: &job.cfg.env, quota_file },
        };
        match admission::decide(&facts) {
            Decision::Fail(error) => Start::Fail(error),
            Decision::Hold(hold) => {
                if hold.rescan {
                    self.scan.invalidate();
                }
                job.dup_termed.extend(hold.kill.iter().map(|(pid, _)| *pid));
                if let Some(a) = hold.awaiting {
                    job.awaiting = a;
                }
                job.queued = hold.queued;
                job.hold = Some(hold.reason());
                Start::Hold { tell, hold }
            }
            Decision::Spawn { quota, env } => Start::Spawn { tell: tell.into_iter().filter(|(j, _)| j != name).collect(), quota, env },
        }
    }
}

/// Admitted: write the quota file, spawn, record the run on the job (and its lock) and the
/// budget. The caller registers the pid and starts the output readers.
pub fn spawn(jobs: &mut JobTable, budget: Option<&mut Budget>, name: &str, quota: Option<u32>, env: &[(String, String)], now: Instant) -> Result<spawn::Spawned, String> {
    let Some(job) = jobs.get_mut(name) else { return Err(gone_text()) };
    let mut budget = budget;
    if let (Some(q), Some(budget)) = (quota, budget.as_deref_mut()) {
        if let Err(e) = budget.write_quota(&job.cfg, &mut job.ledger, q) {
            tracing::warn!(job = name, "cannot write quota file: {e}");
        }
    }
    job.hold = None;
    let spec = spawn::SpawnSpec {
        command: &job.cfg.command,
        cwd: job.cfg.cwd.as_ref(),
        env: &job.cfg.env,
        extra_env: env,
        user: job.cfg.user.as_deref(),
        inherit_fd: job.lock.as_ref().map(|l| l.raw_fd()),
        remove_env: if job.cfg.connections.is_none() { DB_VARS } else { &[] },
    };
    let child = spawn::spawn(&spec).map_err(|e| format!("cannot start `{}`: {e}", job.cfg.command.join(" ")))?;
    if let Some(lock) = job.lock.as_mut() {
        lock.write_pid(child.pid);
    }
    job.started_at = Some(now);
    job.check_duplicates = false;
    job.dup_termed.clear();
    if let (Some(_), Some(q)) = (budget, quota) {
        job.ledger.get_or_insert_with(Default::default).spawned(q, now);
    }
    Ok(child)
}

fn gone() -> Start {
    Start::Fail(gone_text())
}

fn gone_text() -> String {
    "the job is no longer in the config".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::jobs::testing::{config, table};

    fn ctx<'a>(lock_dir: &'a Path, dependency: Option<&str>) -> Ctx<'a> {
        Ctx { lock_dir, service: "svc", orphans: OrphanPolicy::Kill, shutting_down: false, dependency: dependency.map(str::to_string) }
    }

    #[test]
    fn an_unmet_dependency_holds_the_start_before_the_lock_is_tried() {
        let dir = tempfile::tempdir().unwrap();
        let mut jobs = table(&config("[jobs.a]\ncommand = [\"true\"]\nsingle_instance = true\n"));
        let start = Starter::default().admit(&mut jobs, None, "a", &ctx(dir.path(), Some("db is not healthy yet")), Instant::now());
        let Start::Hold { hold, tell } = start else { panic!("not held") };
        assert!(tell.is_empty());
        assert_eq!(hold.reason(), WaitReason::Dependency("db is not healthy yet".into()));
        assert_eq!(jobs["a"].hold, Some(WaitReason::Dependency("db is not healthy yet".into())));
        assert!(jobs["a"].lock.is_none());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no lock file was made");
    }

    #[test]
    fn a_lock_held_elsewhere_holds_the_start_and_a_free_one_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config("[jobs.a]\ncommand = [\"true\"]\nsingle_instance = true\n");
        let other = JobLock::acquire(dir.path(), "a").unwrap();
        let mut jobs = table(&cfg);
        let mut starter = Starter::default();
        let Start::Hold { hold, .. } = starter.admit(&mut jobs, None, "a", &ctx(dir.path(), None), Instant::now()) else { panic!("not held") };
        assert!(matches!(hold.reason(), WaitReason::Lock(_)), "{:?}", hold.reason());
        assert!(jobs["a"].lock.is_none() && jobs["a"].hold.is_some());
        drop(other);
        let Start::Spawn { quota, env, .. } = starter.admit(&mut jobs, None, "a", &ctx(dir.path(), None), Instant::now()) else { panic!("not admitted") };
        assert!(jobs["a"].lock.is_some());
        assert_eq!(quota, None);
        assert!(env.iter().all(|(k, _)| k != "DATABASE_URL"), "no database: no database variables");
    }

    #[test]
    fn an_admitted_job_spawns_and_the_run_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut jobs = table(&config("[jobs.a]\ncommand = [\"true\"]\n"));
        jobs.get_mut("a").unwrap().hold = Some(WaitReason::ShuttingDown);
        let Start::Spawn { quota, env, .. } = Starter::default().admit(&mut jobs, None, "a", &ctx(dir.path(), None), Instant::now()) else { panic!("not admitted") };
        let now = Instant::now();
        let child = spawn(&mut jobs, None, "a", quota, &env, now).unwrap();
        assert!(child.pid > 0);
        assert_eq!(jobs["a"].started_at, Some(now));
        assert_eq!(jobs["a"].hold, None);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child.pid), None);
        assert_eq!(spawn(&mut jobs, None, "gone", None, &[], now).err().as_deref(), Some("the job is no longer in the config"));
    }

    #[test]
    fn a_command_that_cannot_start_fails_with_its_name() {
        let mut jobs = table(&config("[jobs.a]\ncommand = [\"/nonexistent/corral-test\"]\n"));
        let err = spawn(&mut jobs, None, "a", None, &[], Instant::now()).err().unwrap();
        assert!(err.starts_with("cannot start `/nonexistent/corral-test`: "), "{err}");
    }
}
