//! May a job start now? Admission as one pure function (SPEC §3, §5, §7).
//!
//! The steps, in order: shutting down → lock → duplicate → draining → budget or fleet grant
//! → environment and quota. [`decide`] takes what the actor found out (the lock attempt,
//! the duplicate scan, the budget's answer) and returns a [`Decision`]; the actor executes
//! it: spawns with the environment, writes the quota file, or feeds `Blocked` to the job's
//! state machine and carries out the hold's side effects (kill duplicates, ask for a
//! reading or a fleet sync). No clocks, no processes, no I/O here.

use std::collections::HashSet;
use nix::sys::signal::Signal;

use crate::budget::allocate::{JobGrant, WaitReason as BudgetWait};
use crate::config::OnDuplicate;
use crate::protocol::WaitReason;

/// Everything admission decides from.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub job: &'a str,
    pub service: &'a str,
    pub shutting_down: bool,
    pub lock: LockFact,
    /// Processes running the same command outside corral (empty when not scanned).
    pub duplicates: &'a [i32],
    pub on_duplicate: OnDuplicate,
    /// Duplicates already sent SIGTERM (next time: SIGKILL).
    pub dup_termed: &'a HashSet<i32>,
    /// The job's `connections` (None: no database variables at all).
    pub connections: Option<crate::config::Connections>,
    /// Connections of the previous run still open (SPEC §5: they count until closed).
    pub draining: Option<u32>,
    pub grant: GrantFact,
    /// What the job's environment is made of.
    pub env: EnvFacts<'a>,
}

/// The outcome of trying the job's lock file (`single_instance`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockFact {
    /// Not single-instance, or the lock is ours already (taken now or kept from before).
    Ours,
    /// Another process holds it. `recorded_gone`: the pid written in it is dead, so a stray
    /// orphan of ours holds it.
    Held { path: String, holder: Option<String>, recorded_gone: bool },
    /// The lock file could not be used at all.
    Failed(String),
}

/// What the budget says about this job.
#[derive(Debug, Clone, PartialEq)]
pub enum GrantFact {
    /// No `[database]`, or the job has no `connections` (in local scope).
    NotNeeded,
    /// Local scope: the allocation just computed with this job counted as starting.
    Local {
        grant: Option<JobGrant>,
        /// Σ grants of the allocation.
        granted: u32,
        usable: u32,
        /// The limit is unknown (nothing read, no preset): why, if known.
        limit_unknown: Option<Option<String>>,
    },
    /// Fleet scope: what the last sync granted.
    Fleet(FleetFact),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FleetFact {
    /// Single-instance: the fleet-wide lock.
    pub lock: FleetLock,
    /// The fleet's grant for this job (0: none).
    pub grant: u32,
    /// Why the fleet made it wait, in its words.
    pub waiting: Option<String>,
    pub usable: u32,
    /// The last sync failed with this.
    pub failing: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetLock {
    /// Not single-instance, or held by us and confirmed recently.
    NotNeeded,
    /// The fleet said another corral holds it (its words, `lock: ...`).
    Waiting(String),
    /// Not asked yet, or not confirmed within the hold time.
    Unanswered,
}

#[derive(Debug, Clone)]
pub struct EnvFacts<'a> {
    pub db_url: Option<&'a str>,
    /// The job's own `env` (a DATABASE_URL there wins).
    pub job_env: &'a std::collections::BTreeMap<String, String>,
    /// Where the job's quota file lives.
    pub quota_file: String,
}

/// A held-back job whose answer is one database round trip away: `start` and `restart`
/// reply after it rather than with a `waiting` that is about to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Awaiting {
    #[default]
    Nothing,
    /// A usage reading: the previous run's connections closing.
    Reading,
    /// A fleet sync: a grant or the fleet-wide lock.
    FleetSync,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Spawn now with this quota (write its quota file first) and these extra variables.
    Spawn { quota: Option<u32>, env: Vec<(String, String)> },
    /// Do not start; the state machine waits and retries.
    Hold(Hold),
    /// The start failed (counts as a failed start).
    Fail(String),
}

/// A held-back start and what the actor does about it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Hold {
    pub reason: Option<WaitReason>,
    /// Sweep for orphans now (a stray of ours may hold the lock).
    pub sweep_now: bool,
    /// Signal these duplicates: (pid, signal).
    pub kill: Vec<(i32, Signal)>,
    /// The process snapshot is stale now (duplicates were signalled).
    pub rescan: bool,
    /// Ask the probe task for a usage reading now.
    pub want_reading: bool,
    /// Ask the fleet task for a sync now.
    pub want_sync: bool,
    /// What `start` waits for before it answers (None: unchanged).
    pub awaiting: Option<Awaiting>,
    /// Queued behind connections being given back: `start` says queued, not failed.
    pub queued: bool,
}

impl Hold {
    fn because(reason: WaitReason) -> Hold {
        Hold { reason: Some(reason), ..Hold::default() }
    }

    /// The reason, as the machine's `Blocked` carries it.
    pub fn reason(&self) -> WaitReason {
        self.reason.clone().unwrap_or(WaitReason::ShuttingDown)
    }
}

/// The one decision: may `facts.job` start now, and how?
pub fn decide(facts: &Facts<'_>) -> Decision {
    if facts.shutting_down {
        return Decision::Hold(Hold::because(WaitReason::ShuttingDown));
    }
    match &facts.lock {
        LockFact::Ours => {}
        LockFact::Held { path, holder, recorded_gone } => {
            let who = holder.clone().unwrap_or_else(|| "another process".into());
            return Decision::Hold(Hold { sweep_now: *recorded_gone, ..Hold::because(WaitReason::Lock(format!("lock: {path} held by {who}"))) });
        }
        LockFact::Failed(e) => return Decision::Fail(e.clone()),
    }
    if !facts.duplicates.is_empty() {
        let list = facts.duplicates.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
        match facts.on_duplicate {
            OnDuplicate::Refuse => {
                return Decision::Hold(Hold::because(WaitReason::Duplicate(format!(
                    "duplicate: same command already running outside corral (pid {list})"
                ))));
            }
            OnDuplicate::Kill => {
                let kill = facts
                    .duplicates
                    .iter()
                    .map(|pid| (*pid, if facts.dup_termed.contains(pid) { Signal::SIGKILL } else { Signal::SIGTERM }))
                    .collect();
                return Decision::Hold(Hold { kill, rescan: true, ..Hold::because(WaitReason::Duplicate(format!("duplicate: killing pid {list}"))) });
            }
            OnDuplicate::Ignore => {}
        }
    }
    if let (Some(n), Some(_)) = (facts.draining, facts.connections) {
        return Decision::Hold(Hold {
            want_reading: true,
            awaiting: Some(Awaiting::Reading),
            queued: true,
            ..Hold::because(WaitReason::Budget(format!("budget: up to {n} connection(s) of the previous run still open")))
        });
    }
    let quota = match &facts.grant {
        GrantFact::NotNeeded => None,
        GrantFact::Fleet(f) => match fleet_grant(facts, f) {
            Ok(q) => q,
            Err(hold) => return Decision::Hold(hold),
        },
        GrantFact::Local { grant, granted, usable, limit_unknown } => match grant {
            Some(g) if !g.waiting_budget && g.grant > 0 => Some(g.grant),
            other => {
                let wait = other.as_ref().and_then(|g| g.wait_reason.clone());
                let shrinking = matches!(wait, Some(BudgetWait::ShrinkPending));
                let why = wait.map(|r| r.to_string()).unwrap_or_else(|| "budget".into());
                let min = facts.connections.map_or(0, |c| c.min);
                // "0 of 0 usable" alone hides why: say what keeps the limit unknown.
                let unknown = match limit_unknown {
                    Some(Some(e)) => format!(" (limit unknown: {e})"),
                    Some(None) => " (limit unknown)".to_string(),
                    None => String::new(),
                };
                return Decision::Hold(Hold {
                    // Freed as soon as a reading confirms the shrinks: ask for one now.
                    want_reading: shrinking,
                    queued: shrinking,
                    ..Hold::because(WaitReason::Budget(format!("{why}: needs {min} connection(s), {granted} of {usable} usable are granted{unknown}")))
                });
            }
        },
    };
    Decision::Spawn { quota, env: env(facts, quota) }
}

/// Fleet scope: only with what the fleet granted, and a single-instance job only while this
/// corral holds its fleet-wide lock. A hold asks for a sync only when the fleet has not
/// answered for the job yet; otherwise the regular sync retries (a waiting job would make
/// its corral sync non-stop).
fn fleet_grant(facts: &Facts<'_>, f: &FleetFact) -> Result<Option<u32>, Hold> {
    let failing = f.failing.as_ref().map(|e| format!(" (fleet coordination failing: {e})")).unwrap_or_default();
    let held = |reason: WaitReason, unanswered: bool| Hold {
        want_sync: unanswered,
        awaiting: Some(if unanswered { Awaiting::FleetSync } else { Awaiting::Nothing }),
        ..Hold::because(reason)
    };
    match &f.lock {
        FleetLock::NotNeeded => {}
        FleetLock::Waiting(r) => return Err(held(WaitReason::Lock(r.clone()), false)),
        FleetLock::Unanswered => {
            let text = format!("lock: waiting for the fleet-wide lock of {}/{}{failing}", facts.service, facts.job);
            return Err(held(WaitReason::Lock(text), true));
        }
    }
    let Some(conn) = facts.connections else { return Ok(None) };
    if f.grant > 0 && f.waiting.is_none() {
        return Ok(Some(f.grant));
    }
    Err(match &f.waiting {
        Some(w) => held(WaitReason::Budget(format!("{w}: needs {} connection(s), the fleet has {} usable", conn.min, f.usable)), false),
        None => held(WaitReason::Budget(format!("budget: waiting for a grant from the fleet (needs {}){failing}", conn.min)), true),
    })
}

/// SPEC §3: every job learns who it is; a job with a quota gets the database variables and
/// its quota file.
fn env(facts: &Facts<'_>, quota: Option<u32>) -> Vec<(String, String)> {
    let (Some(q), Some(conn)) = (quota, facts.connections) else {
        return crate::budget::env::identity_env(facts.service, facts.job);
    };
    let mut env = crate::budget::env::job_env(facts.service, facts.job, q, conn.overflow, facts.env.db_url, facts.env.job_env);
    env.push((crate::budget::env::QUOTA_FILE_VAR.to_string(), facts.env.quota_file.clone()));
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Connections;
    use std::collections::BTreeMap;

    const CONN: Connections = Connections { min: 2, max: 8, overflow: 1 };

    fn facts<'a>(empty: &'a HashSet<i32>, env: &'a BTreeMap<String, String>) -> Facts<'a> {
        Facts {
            job: "w",
            service: "svc",
            shutting_down: false,
            lock: LockFact::Ours,
            duplicates: &[],
            on_duplicate: OnDuplicate::Refuse,
            dup_termed: empty,
            connections: Some(CONN),
            draining: None,
            grant: GrantFact::Local { grant: Some(grant(5, None)), granted: 5, usable: 10, limit_unknown: None },
            env: EnvFacts { db_url: Some("postgres://u@h/db"), job_env: env, quota_file: "/q/w.json".into() },
        }
    }

    fn grant(n: u32, wait: Option<BudgetWait>) -> JobGrant {
        JobGrant { id: "w".into(), grant: n, target: n, held: n, waiting_budget: wait.is_some(), wait_reason: wait, evict: false }
    }

    fn hold(d: Decision) -> Hold {
        match d {
            Decision::Hold(h) => h,
            other => panic!("expected a hold, got {other:?}"),
        }
    }

    fn fleet(lock: FleetLock, grant: u32, waiting: Option<&str>) -> GrantFact {
        GrantFact::Fleet(FleetFact { lock, grant, waiting: waiting.map(str::to_string), usable: 30, failing: None })
    }

    #[test]
    fn a_granted_job_spawns_with_its_quota_env_and_quota_file() {
        let (e, env) = (HashSet::new(), BTreeMap::new());
        let Decision::Spawn { quota, env } = decide(&facts(&e, &env)) else { panic!() };
        assert_eq!(quota, Some(5));
        let var = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(var("CORRAL_CONN_QUOTA"), Some("5"));
        assert_eq!(var("CORRAL_QUOTA_FILE"), Some("/q/w.json"));
        assert_eq!(var("CORRAL_JOB"), Some("w"));
    }

    #[test]
    fn without_connections_only_the_identity() {
        let (e, env) = (HashSet::new(), BTreeMap::new());
        let f = Facts { connections: None, grant: GrantFact::NotNeeded, draining: Some(3), ..facts(&e, &env) };
        assert_eq!(decide(&f), Decision::Spawn { quota: None, env: crate::budget::env::identity_env("svc", "w") });
    }

    /// Each step holds the job only when every step before it let it through, in the order
    /// shutdown → lock → duplicate → drain → grant: every combination of the five.
    #[test]
    fn the_first_step_that_says_no_decides() {
        let (e, env) = (HashSet::new(), BTreeMap::new());
        let dups = [41, 42];
        for mask in 0u8..32 {
            let [down, lock, dup, drain, budget] = [0, 1, 2, 3, 4].map(|b| mask & (1 << b) != 0);
            let f = Facts {
                shutting_down: down,
                lock: if lock { LockFact::Held { path: "/l/w.lock".into(), holder: Some("pid 9".into()), recorded_gone: false } } else { LockFact::Ours },
                duplicates: if dup { &dups } else { &[] },
                draining: drain.then_some(3),
                grant: if budget {
                    GrantFact::Local { grant: Some(grant(0, Some(BudgetWait::Budget))), granted: 10, usable: 10, limit_unknown: None }
                } else {
                    facts(&e, &env).grant
                },
                ..facts(&e, &env)
            };
            let d = decide(&f);
            let want = if down {
                Some("supervisor is shutting down")
            } else if lock {
                Some("lock: /l/w.lock held by pid 9")
            } else if dup {
                Some("duplicate: same command already running outside corral (pid 41, 42)")
            } else if drain {
                Some("budget: up to 3 connection(s) of the previous run still open")
            } else if budget {
                Some("budget: needs 2 connection(s), 10 of 10 usable are granted")
            } else {
                None
            };
            match (want, d) {
                (None, Decision::Spawn { quota, .. }) => assert_eq!(quota, Some(5)),
                (Some(text), Decision::Hold(h)) => assert_eq!(h.reason().to_string(), text, "mask {mask:05b}"),
                (want, d) => panic!("mask {mask:05b}: wanted {want:?}, got {d:?}"),
            }
        }
    }

    #[test]
    fn holds_carry_what_can_release_them() {
        let (e, env) = (HashSet::new(), BTreeMap::new());
        let gone = Facts { lock: LockFact::Held { path: "/l".into(), holder: None, recorded_gone: true }, ..facts(&e, &env) };
        let h = hold(decide(&gone));
        assert!(h.sweep_now && h.reason().is_lock() && h.reason().to_string() == "lock: /l held by another process");
        assert_eq!(decide(&Facts { lock: LockFact::Failed("EACCES".into()), ..facts(&e, &env) }), Decision::Fail("EACCES".into()));

        let draining = hold(decide(&Facts { draining: Some(1), ..facts(&e, &env) }));
        assert_eq!((draining.want_reading, draining.awaiting, draining.queued), (true, Some(Awaiting::Reading), true));
        assert!(draining.reason().is_budget());

        let shrink = Facts {
            grant: GrantFact::Local { grant: Some(grant(0, Some(BudgetWait::ShrinkPending))), granted: 8, usable: 10, limit_unknown: None },
            ..facts(&e, &env)
        };
        let h = hold(decide(&shrink));
        assert!(h.want_reading && h.queued && h.awaiting.is_none());
        assert_eq!(h.reason().to_string(), "budget (connections being given back): needs 2 connection(s), 8 of 10 usable are granted");

        let unknown = Facts { grant: GrantFact::Local { grant: None, granted: 0, usable: 0, limit_unknown: Some(Some("refused".into())) }, ..facts(&e, &env) };
        let h = hold(decide(&unknown));
        assert!(!h.want_reading && !h.queued);
        assert_eq!(h.reason().to_string(), "budget: needs 2 connection(s), 0 of 0 usable are granted (limit unknown: refused)");
    }

    #[test]
    fn duplicates_are_refused_killed_or_ignored() {
        let (e, env) = (HashSet::new(), BTreeMap::new());
        let termed: HashSet<i32> = [42].into();
        let dups = [41, 42];
        let kill = Facts { duplicates: &dups, on_duplicate: OnDuplicate::Kill, dup_termed: &termed, ..facts(&e, &env) };
        let h = hold(decide(&kill));
        assert_eq!(h.kill, vec![(41, Signal::SIGTERM), (42, Signal::SIGKILL)]);
        assert!(h.rescan);
        assert_eq!(h.reason().to_string(), "duplicate: killing pid 41, 42");
        let ignore = Facts { duplicates: &dups, on_duplicate: OnDuplicate::Ignore, ..facts(&e, &env) };
        assert!(matches!(decide(&ignore), Decision::Spawn { quota: Some(5), .. }));
    }

    #[test]
    fn the_fleet_grants_or_says_why_not() {
        let (e, env) = (HashSet::new(), BTreeMap::new());
        let with = |grant| Facts { grant, ..facts(&e, &env) };
        assert!(matches!(decide(&with(fleet(FleetLock::NotNeeded, 4, None))), Decision::Spawn { quota: Some(4), .. }));
        // Not answered yet: a sync is asked for and `start` waits for it.
        let h = hold(decide(&with(fleet(FleetLock::NotNeeded, 0, None))));
        assert_eq!((h.want_sync, h.awaiting), (true, Some(Awaiting::FleetSync)));
        assert_eq!(h.reason().to_string(), "budget: waiting for a grant from the fleet (needs 2)");
        // Answered "wait": the regular sync retries.
        let h = hold(decide(&with(fleet(FleetLock::NotNeeded, 0, Some("budget")))));
        assert_eq!((h.want_sync, h.awaiting), (false, Some(Awaiting::Nothing)));
        assert_eq!(h.reason().to_string(), "budget: needs 2 connection(s), the fleet has 30 usable");
        let h = hold(decide(&with(fleet(FleetLock::Unanswered, 4, None))));
        assert!(h.want_sync && h.reason().is_lock());
        assert_eq!(h.reason().to_string(), "lock: waiting for the fleet-wide lock of svc/w");
        let h = hold(decide(&with(fleet(FleetLock::Waiting("lock: svc/w held fleet-wide by b".into()), 4, None))));
        assert!(!h.want_sync && h.reason().is_lock());
        let failing = Facts { grant: GrantFact::Fleet(FleetFact { lock: FleetLock::NotNeeded, grant: 0, waiting: None, usable: 0, failing: Some("timeout".into()) }), ..facts(&e, &env) };
        assert_eq!(hold(decide(&failing)).reason().to_string(), "budget: waiting for a grant from the fleet (needs 2) (fleet coordination failing: timeout)");
        // A single-instance job without connections needs only the lock.
        let no_conn = Facts { connections: None, grant: fleet(FleetLock::NotNeeded, 0, None), ..facts(&e, &env) };
        assert!(matches!(decide(&no_conn), Decision::Spawn { quota: None, .. }));
    }
}
