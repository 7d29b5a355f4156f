//! What the connection budget changes for the jobs (SPEC §3, §5, §6): a reading, a
//! rebalance, a fleet allocation turned into quota files, `quota_signal`s, evictions and
//! retries. The budget (`daemon/budget.rs`) decides; this concern carries its decisions to the
//! job table and returns the rest as [`Effects`] for the actor to execute (signals, timers,
//! inputs to feed, readings to ask for). It holds one piece of state of its own, [`Confirm`]:
//! how soon to read again while connections given back are not confirmed closed.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{info, warn};

use super::admission::{Awaiting, FleetFact, FleetLock, GrantFact};
use super::budget::{Budget, Changes, Terminate};
use super::health::DbReport;
use super::history::{History, Kind};
use super::jobs::JobTable;
use super::event::Event;
use crate::budget::plan::LimitSource;
use crate::db::fleet::{LockOutcome, SyncResult};
use crate::job::{Input, State};
use crate::protocol::{ErrorKind, Reply, Response, WaitReason};

/// A job told a lower quota gets this long to close connections before the reading that may
/// confirm it; while connections stay unconfirmed, further readings follow at twice the delay
/// each time, up to `rebalance_interval` (SPEC §5: freed connections reach others within ~1 s).
pub const CONFIRM_AFTER: Duration = Duration::from_millis(100);

/// `quota_signal` is never sent to a process younger than this (nor before its
/// `healthy_after`): it may not have installed its handler yet, and SIGHUP's default action
/// kills it. Its first quota is in its environment anyway.
pub const QUOTA_SIGNAL_MIN_UPTIME: Duration = Duration::from_secs(2);

/// What the actor does after the budget changed something, in this order: signals, timers,
/// the reading asked for, terminations, inputs to feed, then retries.
#[derive(Default)]
#[must_use]
pub struct Effects {
    /// `quota_signal` to live processes.
    pub signal: Vec<(i32, Signal)>,
    /// Timers to arm (held-back quota signals, reservation expiry).
    pub after: Vec<(Duration, Event)>,
    /// A job gave connections back: read soon to confirm them closed ([`Confirm::restart`]).
    pub confirm: bool,
    /// Connections over quota to terminate on the server.
    pub terminate: Vec<Terminate>,
    /// Inputs to the jobs' state machines (evictions).
    pub feed: Vec<(String, Input)>,
    /// Waiting jobs to retry now (a `RetryWait` with the job's epoch when it is fed: feeding
    /// the ones before may have changed it).
    pub retry: Vec<String>,
}

impl Effects {
    fn and(mut self, other: Effects) -> Effects {
        self.signal.extend(other.signal);
        self.after.extend(other.after);
        self.confirm |= other.confirm;
        self.terminate.extend(other.terminate);
        self.feed.extend(other.feed);
        self.retry.extend(other.retry);
        self
    }
}

/// Write quota files and pick the `quota_signal`s to send (SPEC §3): at once to a process old
/// enough to have its handler, later (a timer) to a younger one.
pub fn deliver(budget: &mut Budget, jobs: &mut JobTable, history: &mut History, tell: Vec<(String, u32)>, now: Instant) -> Effects {
    let mut fx = Effects::default();
    for (name, quota) in tell {
        let Some(job) = jobs.get_mut(&name) else { continue };
        fx.confirm |= job.ledger.as_ref().and_then(|b| b.process).is_some_and(|p| p.held > quota);
        if let Err(e) = budget.write_quota(&job.cfg, &mut job.ledger, quota) {
            warn!(job = %name, "cannot write quota file: {e}");
            continue;
        }
        if let Some(ledger) = job.ledger.as_mut() {
            budget.delivered(ledger, now);
        }
        info!(job = %name, quota, "quota changed");
        history.event(std::time::SystemTime::now(), Kind::Quota, Some(&name), format!("quota changed to {quota}"));
        let (Some(sig), Some(pid)) = (job.cfg.quota_signal, job.m.pid) else { continue };
        let uptime = job.started_at.map(|t| now.saturating_duration_since(t)).unwrap_or_default();
        let old_enough = job.cfg.healthy_after.max(QUOTA_SIGNAL_MIN_UPTIME);
        if uptime >= old_enough {
            fx.signal.push((pid, sig));
        } else if job.signal_due != Some(pid) {
            // Too young to have a handler: the file is rewritten now, the signal follows.
            job.signal_due = Some(pid);
            fx.after.push((old_enough - uptime, Event::QuotaSignalDue { job: name.clone(), pid }));
        }
    }
    fx
}

/// A `quota_signal` held back while `pid` of `job` was young is due: the signal to send, if
/// that process still runs and nothing sent it meanwhile.
pub fn quota_signal_due(jobs: &mut JobTable, job: &str, pid: i32, now: Instant) -> Option<(i32, Signal)> {
    let j = jobs.get_mut(job).filter(|j| j.m.pid == Some(pid))?;
    if j.signal_due.take() != Some(pid) {
        return None;
    }
    // The quota counts as told now.
    if let Some(b) = j.ledger.as_mut() {
        b.told_at = Some(now);
    }
    let sig = j.cfg.quota_signal?;
    info!(job = %job, pid, "sending the quota_signal held back while the job started");
    Some((pid, sig))
}

/// Quota changes and evictions of an allocation (local or the fleet's); `why` is logged for
/// each evicted job.
fn carry_out(budget: &mut Budget, jobs: &mut JobTable, history: &mut History, changes: Changes, why: &str, now: Instant) -> Effects {
    let mut fx = deliver(budget, jobs, history, changes.tell, now);
    for name in changes.evict {
        warn!(job = %name, "{why}");
        history.event(std::time::SystemTime::now(), Kind::Warning, Some(&name), "usable budget fell below the running minimums: stopped");
        fx.feed.push((name, Input::Stop));
    }
    fx
}

/// Recompute grants and tell jobs whose quota changed (SPEC §5). In fleet scope grants come
/// from the fleet's allocation; locally a job can only give one up.
pub fn rebalance(budget: &mut Budget, jobs: &mut JobTable, history: &mut History, now: Instant) -> Effects {
    if budget.fleet.is_some() {
        Budget::fleet_drop_unwanted(jobs);
        return Effects::default();
    }
    let (_, changes) = budget.allocate(jobs, now, None);
    carry_out(budget, jobs, history, changes, "usable budget fell below the running minimums: stopping lowest-priority job", now)
}

/// A fleet sync answered (SPEC §5 across the fleet, §7): on success the fleet's allocation
/// (quotas, evictions, locks) and a retry for every job waiting for a grant or a fleet lock,
/// with the FleetCheck timer for the locks; on failure the error, shown by health and budget.
/// `started` is when the request was taken: locks count as renewed then, not when the answer
/// came (the successor's wait is measured from the lease row's renewal, which is earlier).
pub fn fleet_answered(budget: &mut Budget, jobs: &mut JobTable, history: &mut History, result: Result<SyncResult, String>, started: Instant, now: Instant) -> Effects {
    // Whatever the answer, it is the answer `start` waited for.
    for j in jobs.values_mut().filter(|j| j.awaiting == Awaiting::FleetSync) {
        j.awaiting = Awaiting::Nothing;
    }
    let result = match result {
        Ok(result) => result,
        Err(e) => {
            if let Some(f) = budget.fleet.as_mut() {
                f.last_error = Some(e);
            }
            return Effects::default();
        }
    };
    if result.lease_lost {
        warn!("this corral's fleet registration was gone (expired or replaced): registered again, without its old grants");
    }
    let changes = budget.apply_fleet(result, jobs, started);
    let shared = budget.shared_service();
    let service = budget.cfg.service.clone();
    if let Some(f) = budget.fleet.as_mut() {
        if !shared.is_empty() && !f.warned_shared {
            warn!(service = %service, others = ?shared, "another corral uses the same service: jobs of the same name cannot be told apart in pg_stat_activity; give each corral its own service");
        }
        f.warned_shared = !shared.is_empty();
    }
    let mut fx = carry_out(budget, jobs, history, changes, "the fleet's usable budget fell below the running minimums: stopping this job", now);
    fx.retry = waiting(jobs, |h| h.is_budget() || h.is_lock());
    // The locks just confirmed go unconfirmed after the hold unless the next sync renews them.
    fx.after.insert(0, (budget.fleet_hold() + Duration::from_millis(10), Event::FleetCheck));
    fx
}

/// A database reading (SPEC §5, §6): judge the jobs' connections, rebalance, and retry the
/// jobs waiting for the budget (a database that came back may let them start).
pub fn reading(budget: &mut Budget, jobs: &mut JobTable, history: &mut History, report: DbReport, now: Instant) -> Effects {
    for j in jobs.values_mut().filter(|j| j.awaiting == Awaiting::Reading) {
        j.awaiting = Awaiting::Nothing;
    }
    let terminate = budget.apply_reading(report, jobs, history, now);
    let mut fx = Effects { terminate, ..Effects::default() }.and(rebalance(budget, jobs, history, now));
    fx.retry = waiting(jobs, WaitReason::is_budget);
    fx
}

/// The waiting jobs whose hold `released` lets go, in name order.
fn waiting(jobs: &JobTable, released: impl Fn(&WaitReason) -> bool) -> Vec<String> {
    jobs.iter().filter(|(_, j)| j.m.state == State::Waiting && j.hold.as_ref().is_some_and(&released)).map(|(n, _)| n.clone()).collect()
}

/// The budget's answer for a job about to start (admission's `GrantFact`): in local scope a
/// fresh allocation that counts it as starting, with the quota changes it tells the others;
/// in fleet scope what the last sync granted, and its fleet-wide lock.
pub fn grant_fact(budget: &mut Budget, jobs: &mut JobTable, name: &str, now: Instant) -> (GrantFact, Vec<(String, u32)>) {
    let Some(job) = jobs.get(name) else { return (GrantFact::NotNeeded, Vec::new()) };
    if let Some(f) = budget.fleet.as_ref() {
        let lock = if !job.cfg.single_instance || f.holds(name, budget.fleet_hold(), now) {
            FleetLock::NotNeeded
        } else {
            match f.locks.get(name) {
                Some(LockOutcome::Waiting(r)) => FleetLock::Waiting(r.clone()),
                _ => FleetLock::Unanswered,
            }
        };
        let b = job.ledger.clone().unwrap_or_default();
        let fact = FleetFact {
            lock,
            grant: b.grant,
            waiting: b.waiting,
            usable: f.plan.as_ref().map_or(0, |p| p.usable),
            failing: f.last_error.clone(),
        };
        return (GrantFact::Fleet(fact), Vec::new());
    }
    if job.cfg.connections.is_none() {
        return (GrantFact::NotNeeded, Vec::new());
    }
    let (alloc, changes) = budget.allocate(jobs, now, Some(name));
    let plan = budget.plan(now);
    let limit_unknown = (plan.limit_source == LimitSource::Unknown).then(|| budget.status.error.clone());
    let fact = GrantFact::Local { grant: alloc.get(name).cloned(), granted: alloc.total, usable: plan.usable, limit_unknown };
    (fact, changes.tell)
}

/// `corral reserve` in local scope (SPEC §5): the reservation, its expiry timer, a rebalance.
pub fn reserve(budget: &mut Budget, jobs: &mut JobTable, history: &mut History, name: String, count: u32, ttl: Option<Duration>, now: Instant) -> (Response, Effects) {
    if let Err(resp) = budget.reserve(jobs, &name, count, ttl, now) {
        return (resp, Effects::default());
    }
    info!(reservation = %name, count, ttl_s = ttl.map(|t| t.as_secs_f64()), "reservation added");
    let expiry = Effects { after: ttl.map(|t| (t, Event::SweepBudget)).into_iter().collect(), ..Effects::default() };
    let fx = expiry.and(rebalance(budget, jobs, history, now));
    (Response::ok(Reply::Done { message: format!("reserved {count} connection(s) as {name}") }), fx)
}

/// `corral release` in local scope: the connections go back to the jobs.
pub fn release(budget: &mut Budget, jobs: &mut JobTable, history: &mut History, name: &str, now: Instant) -> (Response, Effects) {
    let Some(r) = budget.reservations.remove(name) else {
        return (Response::err(ErrorKind::Refused, format!("no reservation named {name:?}")), Effects::default());
    };
    info!(reservation = %name, count = r.count, "reservation released");
    let fx = rebalance(budget, jobs, history, now);
    (Response::ok(Reply::Done { message: format!("released {name} ({} connections)", r.count) }), fx)
}

/// Readings asked for in a row while freed connections stay unconfirmed (backs them off).
#[derive(Debug, Default)]
pub struct Confirm {
    follow_ups: u32,
}

impl Confirm {
    /// Connections were just given back: the next reading comes at `now + delay`.
    pub fn restart(&mut self, now: Instant, delay: Duration) -> Instant {
        self.follow_ups = 0;
        now + delay
    }

    /// After a reading: while connections given back are unconfirmed, when to read again
    /// (backing off from [`CONFIRM_AFTER`] to `interval`); `None` once they are.
    pub fn after_reading(&mut self, unconfirmed: bool, interval: Duration, now: Instant) -> Option<Instant> {
        if !unconfirmed {
            self.follow_ups = 0;
            return None;
        }
        let delay = CONFIRM_AFTER.saturating_mul(1 << self.follow_ups.min(16)).min(interval);
        self.follow_ups = self.follow_ups.saturating_add(1);
        Some(now + delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::jobs::testing;

    /// An offline budget (no url): 12 connections, no reserves; two jobs of 2..10.
    fn setup(dir: &std::path::Path) -> (Budget, JobTable) {
        let c = testing::config(
            "[database]\nmax_connections = 12\nprovider_reserve = 0\nadhoc_reserve = 0\n\
             [jobs.a]\ncommand = [\"a\"]\nconnections = { min = 2, max = 10 }\nquota_signal = \"SIGHUP\"\n\
             [jobs.b]\ncommand = [\"b\"]\nconnections = { min = 2, max = 10 }\npriority = 1\n",
        );
        let budget = Budget::new(c.database.clone().unwrap(), c.budget.clone(), dir.to_path_buf());
        (budget, testing::table(&c))
    }

    fn quota_in_file(budget: &Budget, job: &str) -> u64 {
        let text = std::fs::read_to_string(budget.quota_file(job)).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["quota"].as_u64().unwrap()
    }

    fn running(jobs: &mut JobTable, name: &str, pid: i32, started: Instant, quota: u32) {
        let j = jobs.get_mut(name).unwrap();
        j.m.state = State::Running;
        j.m.pid = Some(pid);
        j.started_at = Some(started);
        j.ledger.get_or_insert_with(Default::default).spawned(quota, started);
    }

    #[test]
    fn a_starting_job_is_granted_and_the_running_one_is_told_its_new_quota() {
        let dir = tempfile::tempdir().unwrap();
        let (mut budget, mut jobs) = setup(dir.path());
        let now = Instant::now();
        let (fact, tell) = grant_fact(&mut budget, &mut jobs, "a", now);
        let GrantFact::Local { grant: Some(g), usable, .. } = fact else { panic!("no local grant") };
        assert!(g.grant >= 2, "{g:?}");
        assert!(tell.is_empty(), "nobody else runs: {tell:?}");
        running(&mut jobs, "a", 4242, now, g.grant);
        jobs.get_mut("b").unwrap().start_pending = true;
        let (fact, tell) = grant_fact(&mut budget, &mut jobs, "b", now);
        let GrantFact::Local { grant: Some(gb), .. } = fact else { panic!("no local grant for b") };
        // Both cannot have 10: a is told the lower quota it keeps, and the two fit.
        let a_now = tell.iter().find(|(n, _)| n == "a").map(|(_, q)| *q).expect("a is told");
        assert!(a_now < g.grant && gb.grant >= 2, "a {} -> {a_now}, b {}", g.grant, gb.grant);
        assert!(a_now + gb.grant <= usable, "{a_now} + {} > {usable}", gb.grant);
        // A job without connections needs no grant.
        jobs.get_mut("b").unwrap().cfg.connections = None;
        assert!(matches!(grant_fact(&mut budget, &mut jobs, "b", now).0, GrantFact::NotNeeded));
    }

    #[test]
    fn a_young_process_gets_its_quota_signal_later_and_an_old_one_now() {
        let dir = tempfile::tempdir().unwrap();
        let (mut budget, mut jobs) = setup(dir.path());
        let now = Instant::now();
        let mut history = History::default();
        running(&mut jobs, "a", 4242, now, 10);
        let fx = deliver(&mut budget, &mut jobs, &mut history, vec![("a".into(), 6)], now);
        assert!(fx.signal.is_empty());
        assert_eq!(fx.after.len(), 1);
        assert_eq!(fx.after[0].0, QUOTA_SIGNAL_MIN_UPTIME);
        assert!(matches!(&fx.after[0].1, Event::QuotaSignalDue { job, pid: 4242 } if job == "a"));
        assert!(fx.confirm, "10 held, 6 told: connections are given back");
        assert_eq!(quota_in_file(&budget, "a"), 6);
        // Told again while the signal is pending: no second timer.
        let fx = deliver(&mut budget, &mut jobs, &mut history, vec![("a".into(), 5)], now);
        assert!(fx.after.is_empty() && fx.signal.is_empty());
        // The timer fires: the signal goes once, and only to the process it was held for.
        let due = now + QUOTA_SIGNAL_MIN_UPTIME;
        assert_eq!(quota_signal_due(&mut jobs, "a", 9999, due), None);
        assert_eq!(quota_signal_due(&mut jobs, "a", 4242, due), Some((4242, Signal::SIGHUP)));
        assert_eq!(jobs["a"].ledger.as_ref().and_then(|b| b.told_at), Some(due));
        assert_eq!(quota_signal_due(&mut jobs, "a", 4242, due), None);
        // Old enough: the signal goes now.
        let later = now + QUOTA_SIGNAL_MIN_UPTIME;
        let fx = deliver(&mut budget, &mut jobs, &mut history, vec![("a".into(), 7)], later);
        assert_eq!(fx.signal, vec![(4242, Signal::SIGHUP)]);
        // A job without quota_signal only gets its file.
        running(&mut jobs, "b", 4343, now, 2);
        let fx = deliver(&mut budget, &mut jobs, &mut history, vec![("b".into(), 4)], later);
        assert!(fx.signal.is_empty() && fx.after.is_empty() && !fx.confirm);
        assert_eq!(quota_in_file(&budget, "b"), 4);
    }

    #[test]
    fn unconfirmed_connections_are_read_again_backing_off_to_the_interval() {
        let (t0, interval) = (Instant::now(), Duration::from_secs(1));
        let mut c = Confirm::default();
        let delays: Vec<u128> = (0..6).map(|_| c.after_reading(true, interval, t0).unwrap().duration_since(t0).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        // Confirmed: no more readings, and the next unconfirmed spell starts over.
        assert_eq!(c.after_reading(false, interval, t0), None);
        assert_eq!(c.after_reading(true, interval, t0), Some(t0 + CONFIRM_AFTER));
        c.after_reading(true, interval, t0);
        assert_eq!(c.restart(t0, Duration::ZERO), t0);
        assert_eq!(c.after_reading(true, interval, t0), Some(t0 + CONFIRM_AFTER));
    }

    #[test]
    fn many_follow_ups_never_overflow() {
        let (t0, interval) = (Instant::now(), Duration::from_secs(2));
        let mut c = Confirm { follow_ups: u32::MAX - 1 };
        assert_eq!(c.after_reading(true, interval, t0), Some(t0 + interval));
    }
}
