//! The allocator: shares `usable` connections between jobs (SPEC §5).
//!
//! Pure and deterministic: the output depends only on `usable` and the
//! *set* of [`Demand`]s (jobs are put in a canonical order first, so the
//! order of the input slice does not matter; no hashing, no randomness, no
//! clock). The daemon calls [`allocate`] on every event that can change the
//! budget (start/stop/exit, idle/active, reservation, plan change, measured
//! use) and on `rebalance_interval`, then acts on the result: starts jobs
//! that got their minimum, keeps `waiting: budget` ones back, stops evicted
//! ones, rewrites quota files for changed grants and stores `held` back into
//! the job's [`Process`].
//!
//! # Rules
//!
//! 1. **Minimums first.** Jobs are ranked by priority (higher first), then
//!    id (ascending). *Incumbents* — jobs that want to run and already hold a
//!    grant `>= min` from the previous allocation, i.e. running or about to
//!    (re)start — get their minimum before any newcomer, so a running job is
//!    never starved to start a waiting one. A newcomer of *higher* priority
//!    does **not** pre-empt an incumbent's minimum either: it waits. Killing a
//!    working scraper to start another one is a decision for a human
//!    (`corral stop`), and pre-emption would make grants flap whenever jobs
//!    restart. The remainder above minimums (which incumbents may hold) is
//!    reclaimable by shrinking and is shared again on every allocation.
//! 2. **No backfill past a higher priority.** Once a job's minimum does not
//!    fit, no job of strictly *lower* priority gets its minimum in this
//!    allocation (it waits "behind" that job); jobs of equal priority may
//!    still fill the gap. Without this, small low-priority jobs would keep
//!    taking freed connections and, as incumbents, starve a large
//!    high-priority job forever. A job with `min = 0` needs nothing and is
//!    never held back.
//! 3. **Eviction.** If `usable` falls below the incumbents' minimums (a
//!    reservation, a smaller plan), incumbents are kept in rank order and the
//!    first that does not fit — and every lower-priority one — loses its grant:
//!    `waiting_budget`, and `evict` when it has a live process, which the
//!    supervisor must stop. Those are the lowest-priority running jobs.
//! 4. **Sharing.** What is left after the minimums goes to `Active` jobs by
//!    weight `max(priority, 0) + 1`, water-filled up to each `max`; integer
//!    leftovers go one by one in rank order. `Idle` jobs keep only their
//!    minimum, `Off` jobs get 0 (SPEC §5: idle or stopped jobs give their
//!    share back).
//! 5. **The shrink rule.** A lowered grant is honoured first (SPEC §5): until
//!    the process has been told its new quota *and* its use, measured after
//!    that, is within it — or it has exited — it may still use what it held,
//!    so that part stays *occupied* and is not handed to anyone else.
//!
//! # How
//!
//! Rules 1–4 give each job a *target*, computed against `usable` alone: what
//! it gets once every pending shrink is confirmed (computing it without the
//! occupancy is what makes a shrink be requested in the first place). Then
//! the shrink rule decides what can be granted *now*: a process's occupancy
//! is [`occupancy`], and minimums (again incumbents first, with rule 2's
//! blocking) and then growth towards the targets are only granted out of
//! `usable - Σ occupancy`. A shrink is granted at once (the job must be told)
//! while its occupancy stays. A job whose minimum is in its target but not
//! free yet waits with [`WaitReason::ShrinkPending`]; since targets sum to at
//! most `usable`, it gets in once the shrinks are confirmed.
//!
//! # Guarantees (tested by property tests below)
//!
//! - `Σ grant <= usable`, for every input.
//! - `Σ held <= max(usable, Σ occupancy before)`: nothing new is handed out
//!   while connections given back are unconfirmed; when `usable` drops below
//!   what processes may still be using, nothing grows until it is back.
//! - Every job that wants to run has `grant >= min` (and `<= max`), or is
//!   `waiting_budget` with grant 0. Incumbents only wait when `usable` (or the
//!   unconfirmed occupancy) no longer covers the incumbents' minimums.
//! - A job never has its minimum while a job of higher priority waits, except
//!   that an incumbent keeps its minimum ahead of a newcomer (rule 1), and a
//!   running job whose process already occupies its minimum is never stopped
//!   for a job that waits on shrinks.
//! - Same input (in any order) → same output.

use serde::Serialize;
use std::cmp::Ordering;
use std::fmt;

/// What a job wants from the budget right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wants {
    /// Stopped, exited, fatal or stopping: gets 0.
    Off,
    /// Running with no active DB connection for `idle_after`: gets its `min` only.
    Idle,
    /// Running, starting, in backoff or about to start: may grow up to `max`.
    Active,
}

/// The live process of a job, as far as the budget is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Process {
    /// The quota this process was last *told* (its environment at spawn, then
    /// each delivered quota-file rewrite). Not the latest grant, which may not
    /// have been delivered yet.
    pub told: u32,
    /// What [`JobGrant::held`] said for this job in the previous allocation
    /// (at spawn: the quota it was started with). Carries an unconfirmed
    /// shrink from one allocation to the next.
    pub held: u32,
    /// This job's live connections, from a reading taken *after* `told` was
    /// delivered. `None` when unknown or older than the last delivery (then a
    /// shrink cannot be confirmed; the job has to exit or be measured).
    /// Through a transaction pooler there is no reading at all: a shrink then
    /// completes only when the process exits.
    pub measured: Option<u32>,
}

/// One job's demand on the budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// Unique id: the job name, or "service/job" in fleet scope.
    pub id: String,
    /// Higher is served first.
    pub priority: i32,
    pub min: u32,
    /// Values below `min` are treated as `min`.
    pub max: u32,
    pub wants: Wants,
    /// The grant this job got from the previous allocation (0 if none).
    pub grant: u32,
    /// The job's process, while one exists (including while it is stopping).
    pub process: Option<Process>,
}

impl Demand {
    /// Holds a grant covering its minimum and wants to keep running: its
    /// minimum is served before newcomers' (rule 1).
    pub fn is_incumbent(&self) -> bool {
        self.wants != Wants::Off && self.grant >= self.min
    }

    fn effective_max(&self) -> u32 {
        self.max.max(self.min)
    }

    fn weight(&self) -> u64 {
        self.priority.max(0) as u64 + 1
    }
}

/// Why a job that wants to run got no grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WaitReason {
    /// Its minimum does not fit in what is left of `usable`.
    Budget,
    /// Its minimum fits in `usable`, but connections given back by shrinking
    /// jobs are not confirmed free yet.
    ShrinkPending,
    /// A job of higher priority is waiting (rule 2).
    Behind { job: String },
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::Budget => write!(f, "budget"),
            WaitReason::ShrinkPending => write!(f, "budget (connections being given back)"),
            WaitReason::Behind { job } => write!(f, "budget (behind {job})"),
        }
    }
}

/// One job's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobGrant {
    pub id: String,
    /// The quota to tell the job (0 when off or waiting). `min <= grant <= max` otherwise.
    pub grant: u32,
    /// What the job would get once pending shrinks are confirmed (>= `grant`).
    pub target: u32,
    /// Connections this job may be using after this allocation:
    /// `max(grant, occupancy of its process)`. Store it in [`Process::held`].
    pub held: u32,
    /// Wants to run but its minimum was not granted: must not start
    /// (`waiting: budget`), and must stop if `evict`.
    pub waiting_budget: bool,
    /// Set exactly when `waiting_budget`.
    pub wait_reason: Option<WaitReason>,
    /// Has a live process that lost its grant: the supervisor must stop it.
    pub evict: bool,
}

impl JobGrant {
    /// Connections occupied beyond the grant until a shrink is confirmed.
    pub fn unconfirmed(&self) -> u32 {
        self.held - self.grant
    }
}

/// The result of [`allocate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Allocation {
    pub usable: u32,
    /// Σ grant (<= usable).
    pub total: u32,
    /// Σ held: the connections jobs may be using, including unconfirmed shrinks.
    pub occupied: u32,
    /// One entry per demand, sorted by id.
    pub jobs: Vec<JobGrant>,
}

impl Allocation {
    pub fn get(&self, id: &str) -> Option<&JobGrant> {
        self.jobs
            .binary_search_by(|j| j.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.jobs[i])
    }
}

/// Whether a process has confirmed the quota it was told: its use, measured
/// after the telling, is within it. Until then it may still use anything it
/// held before (SPEC §5 shrink rule).
pub fn shrink_confirmed(told: u32, measured_after_told: Option<u32>) -> bool {
    measured_after_told.is_some_and(|m| m <= told)
}

/// How many connections a job's process may be using right now: none
/// without a process; its told quota once confirmed; otherwise the larger
/// of what it was told and what it held before (an unconfirmed shrink).
pub fn occupancy(process: Option<&Process>) -> u32 {
    match process {
        None => 0,
        Some(p) if shrink_confirmed(p.told, p.measured) => p.told,
        Some(p) => p.held.max(p.told),
    }
}

/// Canonical rank: priority descending, id ascending; the remaining fields
/// only break ties between duplicate ids (which callers must not produce)
/// so that even then the result does not depend on input order.
fn rank(a: &Demand, b: &Demand) -> Ordering {
    b.priority
        .cmp(&a.priority)
        .then_with(|| a.id.cmp(&b.id))
        .then_with(|| {
            (a.min, a.max, a.wants, a.grant, a.process)
                .cmp(&(b.min, b.max, b.wants, b.grant, b.process))
        })
}

/// Share `usable` between `demands`. See the module docs for the rules.
pub fn allocate(usable: u32, demands: &[Demand]) -> Allocation {
    let n = demands.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| rank(&demands[a], &demands[b]));

    let occ: Vec<u64> = demands
        .iter()
        .map(|d| occupancy(d.process.as_ref()) as u64)
        .collect();
    let total_occ: u64 = occ.iter().sum();

    // r1: what is left of `usable` for grants (Σ grant <= usable).
    // r2: what is left for occupancy beyond what processes may already be
    //     using (Σ max(grant, occ) <= max(usable, Σ occ)) — the shrink rule.
    let mut r1 = usable as u64;
    let mut r2 = (usable as u64).saturating_sub(total_occ);

    // Minimums are considered incumbents first, then newcomers, each in rank order.
    let min_order: Vec<usize> = [true, false]
        .iter()
        .flat_map(|&inc| {
            order.iter().copied().filter(move |&i| {
                demands[i].wants != Wants::Off && demands[i].is_incumbent() == inc
            })
        })
        .collect();

    let mut target = vec![0u64; n];
    let mut grant = vec![0u64; n];
    // `planned`: its minimum is part of the target allocation (fits `usable`).
    // `admitted`: it may hold its minimum now (also fits the occupancy).
    let mut planned = vec![false; n];
    let mut admitted = vec![false; n];
    let mut reason: Vec<Option<WaitReason>> = vec![None; n];

    // `block` is the highest-priority job that failed so far (rule 2): jobs
    // of strictly lower priority considered after it wait behind it.
    let mut block: Option<(i32, usize)> = None;
    let blocked = |block: &mut Option<(i32, usize)>,
                   i: usize,
                   reason: &mut Vec<Option<WaitReason>>|
     -> bool {
        match *block {
            Some((p, j)) if demands[i].priority < p => {
                reason[i] = Some(WaitReason::Behind {
                    job: demands[j].id.clone(),
                });
                true
            }
            _ => false,
        }
    };
    let fail = |block: &mut Option<(i32, usize)>, i: usize| {
        if block.is_none_or(|(p, _)| demands[i].priority > p) {
            *block = Some((demands[i].priority, i));
        }
    };

    // Pass A: the target minimums, against `usable` only. The targets are
    // what everyone gets once pending shrinks are confirmed; computing them
    // without the occupancy is what makes a shrink get *requested* at all.
    for &i in &min_order {
        let min = demands[i].min as u64;
        if min == 0 {
            planned[i] = true;
            continue;
        }
        if blocked(&mut block, i, &mut reason) {
            continue;
        }
        if min <= r1 {
            r1 -= min;
            target[i] = min;
            planned[i] = true;
        } else {
            reason[i] = Some(WaitReason::Budget);
            fail(&mut block, i);
        }
    }

    // Pass B: target shares. The rest of `usable` goes to planned Active
    // jobs by weight, up to max.
    let growers: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| planned[i] && demands[i].wants == Wants::Active)
        .collect();
    let caps: Vec<u64> = growers
        .iter()
        .map(|&i| (demands[i].effective_max() as u64).saturating_sub(target[i]))
        .collect();
    let weights: Vec<u64> = growers.iter().map(|&i| demands[i].weight()).collect();
    let extra = water_fill(r1, &weights, &caps);
    for (k, &i) in growers.iter().enumerate() {
        target[i] += extra[k];
    }

    // Pass C: the shrink rule. First the minimums again, now against r2 (what
    // is free beyond every process's occupancy): a planned job whose minimum
    // is not free yet waits for the shrinks, and so do lower-priority ones.
    // Pass A's failures do not block here: whoever was planned despite them
    // was entitled to it (an incumbent, or of equal/higher priority).
    // A job whose own process already occupies its minimum costs nothing here
    // and is never held back: stopping it would pre-empt a running job for a
    // higher-priority one that merely waits for shrinks (rule 1 forbids that).
    let mut block: Option<(i32, usize)> = None;
    for &i in &min_order {
        if !planned[i] {
            continue;
        }
        let min = demands[i].min as u64;
        let cost = min.saturating_sub(occ[i]);
        if cost == 0 {
            grant[i] = min;
            admitted[i] = true;
            continue;
        }
        if blocked(&mut block, i, &mut reason) {
            continue;
        }
        if cost <= r2 {
            r2 -= cost;
            grant[i] = min;
            admitted[i] = true;
        } else {
            reason[i] = Some(WaitReason::ShrinkPending);
            fail(&mut block, i);
        }
    }
    // Then growth towards the targets, highest rank first, out of what is
    // left of r2. A shrink takes effect as a grant at once but its occupancy
    // stays until confirmed, so it never costs (or frees) r2 here.
    for &i in &order {
        if !admitted[i] {
            continue;
        }
        let base = grant[i].max(occ[i]);
        let cost = target[i].max(occ[i]) - base;
        if cost <= r2 {
            r2 -= cost;
            grant[i] = target[i];
        } else {
            grant[i] = base + r2;
            r2 = 0;
        }
    }

    let mut jobs: Vec<JobGrant> = demands
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let waiting = d.wants != Wants::Off && !admitted[i];
            JobGrant {
                id: d.id.clone(),
                grant: grant[i] as u32,
                target: target[i] as u32,
                held: grant[i].max(occ[i]) as u32,
                waiting_budget: waiting,
                wait_reason: if waiting { reason[i].clone() } else { None },
                evict: waiting && d.process.is_some(),
            }
        })
        .collect();
    // Sort by id with the same tie-break as `rank` (duplicate ids only).
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| {
        demands[a]
            .id
            .cmp(&demands[b].id)
            .then_with(|| rank(&demands[a], &demands[b]))
    });
    let mut slots: Vec<Option<JobGrant>> = jobs.drain(..).map(Some).collect();
    // `idx` is a permutation of 0..n, so each slot is taken exactly once.
    let jobs: Vec<JobGrant> = idx.into_iter().filter_map(|i| slots.get_mut(i).and_then(Option::take)).collect();

    Allocation {
        usable,
        total: jobs.iter().map(|j| j.grant as u64).sum::<u64>() as u32,
        occupied: jobs
            .iter()
            .map(|j| j.held as u64)
            .sum::<u64>()
            .min(u32::MAX as u64) as u32,
        jobs,
    }
}

/// Weighted water-filling of `amount` over jobs with `weights` and `caps`,
/// given in rank order. Jobs whose proportional share reaches their cap are
/// filled to it and removed, and the rest is shared again; when no one
/// saturates, each gets the floor of its share and the integer leftovers go
/// one each in rank order. Returns each job's extra (<= its cap); their sum is
/// `min(amount, Σ caps)`.
fn water_fill(amount: u64, weights: &[u64], caps: &[u64]) -> Vec<u64> {
    let mut give = vec![0u64; caps.len()];
    let mut active: Vec<usize> = (0..caps.len()).filter(|&k| caps[k] > 0).collect();
    let mut left = amount;
    while left > 0 && !active.is_empty() {
        let total_w: u128 = active.iter().map(|&k| weights[k] as u128).sum();
        let (sat, rest): (Vec<usize>, Vec<usize>) = active
            .iter()
            .partition(|&&k| left as u128 * weights[k] as u128 >= caps[k] as u128 * total_w);
        if sat.is_empty() {
            // Nobody reaches its cap: floors, then leftovers (< active.len()) in
            // rank order. Every share here is strictly below its cap, so +1 fits.
            for &k in &active {
                let share = (left as u128 * weights[k] as u128 / total_w) as u64;
                give[k] = share;
            }
            let given: u64 = active.iter().map(|&k| give[k]).sum();
            left -= given;
            for &k in &active {
                if left == 0 {
                    break;
                }
                if give[k] < caps[k] {
                    give[k] += 1;
                    left -= 1;
                }
            }
            break;
        }
        for &k in &sat {
            give[k] = caps[k];
            left -= caps[k];
        }
        active = rest;
    }
    give
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn job(id: &str, priority: i32, min: u32, max: u32, wants: Wants) -> Demand {
        Demand {
            id: id.into(),
            priority,
            min,
            max,
            wants,
            grant: 0,
            process: None,
        }
    }

    fn running(mut d: Demand, grant: u32) -> Demand {
        d.grant = grant;
        d.process = Some(Process {
            told: grant,
            held: grant,
            measured: None,
        });
        d
    }

    fn g(a: &Allocation, id: &str) -> u32 {
        a.get(id).unwrap().grant
    }

    #[test]
    fn minimums_then_weighted_share() {
        // 48 usable: mins 2 + 2 + 1 = 5, 43 left, weights 11, 1, 1.
        let a = allocate(
            48,
            &[
                job("layer1_5", 10, 2, 15, Wants::Active),
                job("backfill", 0, 2, 40, Wants::Active),
                job("misc", 0, 1, 40, Wants::Active),
            ],
        );
        assert_eq!(g(&a, "layer1_5"), 15); // capped at max
                                           // 48 - 15 - 2 - 1 = 30 extra over two weight-1 jobs; misc has 1 more room.
        assert_eq!(g(&a, "backfill") + g(&a, "misc"), 33);
        assert_eq!(g(&a, "backfill"), 17); // 2 + 15
        assert_eq!(g(&a, "misc"), 16); // 1 + 15
        assert_eq!(a.total, 48);
    }

    #[test]
    fn leftovers_go_by_priority_then_id() {
        // 3 extra over three equal weights → one each; 2 extra → "a" and "b".
        let a = allocate(
            2,
            &[
                job("c", 0, 0, 5, Wants::Active),
                job("b", 0, 0, 5, Wants::Active),
                job("a", 0, 0, 5, Wants::Active),
            ],
        );
        assert_eq!((g(&a, "a"), g(&a, "b"), g(&a, "c")), (1, 1, 0));
        // Higher priority wins the leftover even with a later id.
        let a = allocate(
            1,
            &[
                job("a", 0, 0, 5, Wants::Active),
                job("z", 1, 0, 5, Wants::Active),
            ],
        );
        // weights 1 and 2: floor(1/3)=0, floor(2/3)=0, leftover to z.
        assert_eq!((g(&a, "a"), g(&a, "z")), (0, 1));
    }

    #[test]
    fn idle_keeps_min_and_off_gets_nothing() {
        let a = allocate(
            30,
            &[
                job("act", 0, 1, 30, Wants::Active),
                job("idle", 5, 3, 30, Wants::Idle),
                job("off", 9, 4, 30, Wants::Off),
            ],
        );
        assert_eq!(g(&a, "idle"), 3);
        assert_eq!(g(&a, "off"), 0);
        assert!(!a.get("off").unwrap().waiting_budget);
        assert_eq!(g(&a, "act"), 27);
    }

    #[test]
    fn min_that_does_not_fit_waits() {
        let a = allocate(
            5,
            &[
                job("big", 0, 6, 10, Wants::Active),
                job("small", 0, 2, 3, Wants::Active),
            ],
        );
        let big = a.get("big").unwrap();
        assert!(big.waiting_budget && !big.evict && big.grant == 0);
        assert_eq!(big.wait_reason, Some(WaitReason::Budget));
        // Equal priority may fill the gap.
        assert_eq!(g(&a, "small"), 3);
    }

    #[test]
    fn lower_priority_does_not_backfill_past_a_waiting_job() {
        let a = allocate(
            5,
            &[
                job("big", 5, 6, 10, Wants::Active),
                job("small", 0, 2, 3, Wants::Active),
            ],
        );
        assert!(a.get("big").unwrap().waiting_budget);
        let small = a.get("small").unwrap();
        assert!(small.waiting_budget);
        assert_eq!(
            small.wait_reason,
            Some(WaitReason::Behind { job: "big".into() })
        );
        // A job with min 0 needs nothing and is not held back; it may use the remainder.
        let a = allocate(
            5,
            &[
                job("big", 5, 6, 10, Wants::Active),
                job("free", 0, 0, 3, Wants::Active),
            ],
        );
        assert_eq!(g(&a, "free"), 3);
    }

    #[test]
    fn running_job_is_not_preempted_by_higher_priority_newcomer() {
        let a = allocate(
            10,
            &[
                running(job("low", 0, 8, 10, Wants::Active), 10),
                job("high", 9, 5, 10, Wants::Active),
            ],
        );
        let high = a.get("high").unwrap();
        assert!(high.waiting_budget && high.grant == 0);
        assert_eq!(
            g(&a, "low"),
            10,
            "low keeps its min, and the remainder (too small for high's min)"
        );
        assert!(!a.get("low").unwrap().evict);
    }

    /// Found by the fleet chaos test: a higher-priority incumbent with no process (its grant
    /// is stale: stopped and started again between two allocations) waits for shrinks; the
    /// running lower-priority job that occupies everything must shrink, not be stopped.
    #[test]
    fn a_job_waiting_on_shrinks_does_not_evict_a_running_lower_priority_job() {
        let mut stale = job("high", 2, 1, 6, Wants::Active);
        stale.grant = 3;
        let a = allocate(6, &[running(job("low", 1, 1, 6, Wants::Active), 6), stale]);
        let (high, low) = (a.get("high").unwrap(), a.get("low").unwrap());
        assert_eq!(high.wait_reason, Some(WaitReason::ShrinkPending));
        assert!(!low.waiting_budget && !low.evict, "{low:?}");
        assert!(low.grant < 6, "low is asked to shrink: {low:?}");
        assert_eq!(low.held, 6);
    }

    #[test]
    fn eviction_when_usable_falls_below_running_minimums() {
        let demands = [
            running(job("a", 10, 4, 4, Wants::Active), 4),
            running(job("b", 5, 3, 3, Wants::Active), 3),
            running(job("c", 1, 1, 1, Wants::Active), 1),
        ];
        let a = allocate(5, &demands);
        assert_eq!(g(&a, "a"), 4);
        // b does not fit; c has lower priority than b and must not keep its
        // minimum while b waits.
        for id in ["b", "c"] {
            let j = a.get(id).unwrap();
            assert!(j.waiting_budget && j.evict && j.grant == 0, "{id}: {j:?}");
        }
        assert!(a.total <= 5);
    }

    /// The shrink rule: "newbie" cannot get the connections "big" gives back
    /// until big was told and measured within its new quota.
    #[test]
    fn shrink_is_honoured_first() {
        let big = running(job("big", 0, 2, 20, Wants::Active), 20);
        let newbie = job("newbie", 0, 5, 10, Wants::Active);

        // Round 1: big is asked to shrink, newbie waits for it.
        let a = allocate(20, &[big.clone(), newbie.clone()]);
        let b = a.get("big").unwrap();
        assert_eq!((b.grant, b.held, b.unconfirmed()), (10, 20, 10));
        let n = a.get("newbie").unwrap();
        assert!(n.waiting_budget);
        assert_eq!(n.wait_reason, Some(WaitReason::ShrinkPending));
        assert_eq!(n.target, 10);
        assert!(a.occupied <= 20);

        // Told (quota file rewritten) but not measured since: still pending.
        let mut big2 = big.clone();
        big2.grant = 10;
        big2.process = Some(Process {
            told: 10,
            held: 20,
            measured: None,
        });
        let a = allocate(20, &[big2.clone(), newbie.clone()]);
        assert!(a.get("newbie").unwrap().waiting_budget);
        // Measured above the new quota: still pending.
        big2.process = Some(Process {
            told: 10,
            held: 20,
            measured: Some(14),
        });
        let a = allocate(20, &[big2.clone(), newbie.clone()]);
        assert!(a.get("newbie").unwrap().waiting_budget);
        // Measured within: newbie gets its share.
        big2.process = Some(Process {
            told: 10,
            held: 20,
            measured: Some(9),
        });
        let a = allocate(20, &[big2.clone(), newbie.clone()]);
        assert_eq!((g(&a, "big"), g(&a, "newbie")), (10, 10));
        assert_eq!(a.occupied, 20);

        // Or big restarted (no process): also free.
        big2.process = None;
        let a = allocate(20, &[big2, newbie]);
        assert_eq!((g(&a, "big"), g(&a, "newbie")), (10, 10));
    }

    #[test]
    fn helpers() {
        assert!(!shrink_confirmed(5, None));
        assert!(!shrink_confirmed(5, Some(6)));
        assert!(shrink_confirmed(5, Some(5)));
        assert_eq!(occupancy(None), 0);
        assert_eq!(
            occupancy(Some(&Process {
                told: 5,
                held: 9,
                measured: None
            })),
            9
        );
        assert_eq!(
            occupancy(Some(&Process {
                told: 5,
                held: 9,
                measured: Some(4)
            })),
            5
        );
        assert_eq!(
            occupancy(Some(&Process {
                told: 7,
                held: 3,
                measured: None
            })),
            7
        );
    }

    #[test]
    fn max_below_min_is_treated_as_min_and_output_sorted_by_id() {
        let a = allocate(
            10,
            &[
                job("z", 0, 3, 1, Wants::Active),
                job("a", 0, 0, 0, Wants::Active),
            ],
        );
        assert_eq!(g(&a, "z"), 3);
        assert_eq!(
            a.jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            ["a", "z"]
        );
    }

    #[test]
    fn water_fill_respects_caps_and_weights() {
        assert_eq!(water_fill(10, &[1, 1], &[3, 100]), vec![3, 7]);
        assert_eq!(water_fill(12, &[2, 1], &[100, 100]), vec![8, 4]);
        assert_eq!(water_fill(100, &[1, 1], &[3, 4]), vec![3, 4]);
        assert_eq!(water_fill(0, &[1], &[3]), vec![0]);
        assert_eq!(water_fill(5, &[], &[]), Vec::<u64>::new());
        assert_eq!(
            water_fill(
                u32::MAX as u64,
                &[i32::MAX as u64 + 1; 3],
                &[u32::MAX as u64; 3]
            )
            .iter()
            .sum::<u64>(),
            u32::MAX as u64
        );
    }

    // ---- property tests -------------------------------------------------

    fn wants() -> impl Strategy<Value = Wants> {
        prop_oneof![Just(Wants::Off), Just(Wants::Idle), Just(Wants::Active)]
    }

    prop_compose! {
        fn process()(told in 0u32..16, held in 0u32..20, measured in proptest::option::of(0u32..20)) -> Process {
            Process { told, held, measured }
        }
    }

    prop_compose! {
        fn demand(i: usize)(
            priority in -3i32..5, min in 0u32..6, max in 0u32..14, wants in wants(),
            grant in 0u32..16, process in proptest::option::of(process()),
        ) -> Demand {
            // Ids in a scrambled order so id order != index order.
            let id = format!("{}{}", ["m", "b", "x", "a", "q", "c", "z", "k"][i % 8], i);
            Demand { id, priority, min, max, wants, grant, process }
        }
    }

    fn demands() -> impl Strategy<Value = Vec<Demand>> {
        (0usize..8).prop_flat_map(|n| (0..n).map(demand).collect::<Vec<_>>())
    }

    /// Invariants of one allocation, for any input.
    fn check_allocation(usable: u32, ds: &[Demand], a: &Allocation) -> Result<(), TestCaseError> {
        prop_assert_eq!(a.jobs.len(), ds.len());
        prop_assert!(a.total <= usable, "Σ grant {} > usable {}", a.total, usable);
        let occ_before: u64 = ds
            .iter()
            .map(|d| occupancy(d.process.as_ref()) as u64)
            .sum();
        prop_assert!(
            a.occupied as u64 <= occ_before.max(usable as u64),
            "occupied {} > max(usable {}, before {})",
            a.occupied,
            usable,
            occ_before
        );
        prop_assert_eq!(
            a.total as u64,
            a.jobs.iter().map(|j| j.grant as u64).sum::<u64>()
        );

        for d in ds {
            let j = a.get(&d.id).unwrap();
            prop_assert_eq!(j.held, j.grant.max(occupancy(d.process.as_ref())));
            prop_assert_eq!(j.waiting_budget, j.wait_reason.is_some());
            prop_assert!(j.target >= j.grant);
            match d.wants {
                Wants::Off => prop_assert!(j.grant == 0 && !j.waiting_budget && !j.evict),
                _ if j.waiting_budget => {
                    prop_assert_eq!(j.grant, 0);
                    prop_assert!(d.min > 0, "a job with min 0 never waits");
                    prop_assert_eq!(j.evict, d.process.is_some());
                }
                Wants::Idle => prop_assert_eq!(j.grant, d.min),
                Wants::Active => {
                    prop_assert!(j.grant >= d.min && j.grant <= d.max.max(d.min));
                    prop_assert!(!j.evict);
                }
            }
        }

        // Priority: a job never has its minimum while a higher-priority job
        // waits, except an incumbent ahead of a newcomer.
        for x in ds {
            let jx = a.get(&x.id).unwrap();
            if !jx.waiting_budget {
                continue;
            }
            for y in ds {
                let jy = a.get(&y.id).unwrap();
                if y.wants != Wants::Off
                    && !jy.waiting_budget
                    && y.min > 0
                    && y.priority < x.priority
                {
                    // ...or its running process already occupies its minimum
                    // (it is not pre-empted for a job waiting on shrinks).
                    prop_assert!(
                        (y.is_incumbent() && !x.is_incumbent()) || occupancy(y.process.as_ref()) >= y.min,
                        "{} (prio {}) has its min while {} (prio {}) waits",
                        y.id,
                        y.priority,
                        x.id,
                        x.priority
                    );
                }
            }
        }

        // Incumbents keep their minimum whenever it (and the occupancy) fits.
        let inc_min: u64 = ds
            .iter()
            .filter(|d| d.is_incumbent())
            .map(|d| d.min as u64)
            .sum();
        let inc_gap: u64 = ds
            .iter()
            .filter(|d| d.is_incumbent())
            .map(|d| (d.min as u64).saturating_sub(occupancy(d.process.as_ref()) as u64))
            .sum();
        if inc_min <= usable as u64 && occ_before + inc_gap <= usable as u64 {
            for d in ds.iter().filter(|d| d.is_incumbent()) {
                prop_assert!(
                    !a.get(&d.id).unwrap().waiting_budget,
                    "incumbent {} lost its min though it fits",
                    d.id
                );
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn allocation_invariants(usable in 0u32..60, ds in demands()) {
            let a = allocate(usable, &ds);
            check_allocation(usable, &ds, &a)?;
        }

        #[test]
        fn deterministic_and_order_independent(usable in 0u32..60, (ds, shuffled) in demands().prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))) {
            let a = allocate(usable, &ds);
            prop_assert_eq!(&a, &allocate(usable, &ds));
            prop_assert_eq!(&a, &allocate(usable, &shuffled));
        }

        /// Without processes (no occupancy), the allocator is work-conserving
        /// and shares the remainder by weight.
        #[test]
        fn work_conserving_and_weighted(usable in 0u32..80, mut ds in demands()) {
            for d in &mut ds { d.process = None; }
            let a = allocate(usable, &ds);
            let active: Vec<&Demand> = ds.iter().filter(|d| d.wants == Wants::Active && !a.get(&d.id).unwrap().waiting_budget).collect();
            if a.total < usable {
                for d in &active {
                    prop_assert_eq!(a.get(&d.id).unwrap().grant, d.max.max(d.min), "{} below max with budget left", &d.id);
                }
            }
            for x in &active {
                for y in &active {
                    let (gx, gy) = (a.get(&x.id).unwrap().grant, a.get(&y.id).unwrap().grant);
                    if gx < x.max.max(x.min) && gy < y.max.max(y.min) {
                        let (ex, ey) = ((gx - x.min) as u64, (gy - y.min) as u64);
                        let (wx, wy) = (x.weight(), y.weight());
                        prop_assert!(ey * wx <= (ex + 1) * wy + wx, "shares not by weight: {}:{}(w{}) {}:{}(w{})", &x.id, ex, wx, &y.id, ey, wy);
                    }
                }
            }
        }
    }

    proptest! {
        /// Liveness: with a cooperative supervisor and jobs (every grant is
        /// delivered, pools adapt, use is measured, admitted jobs start,
        /// stopped and evicted ones exit), a shrink never blocks anyone for
        /// long: within a few rounds of unchanged inputs every job has its
        /// target and no one waits for a shrink.
        #[test]
        fn shrinks_complete_and_grants_reach_targets(usable in 0u32..60, mut ds in demands(), actual in proptest::collection::vec(0u32..20, 8)) {
            let mut use_now: Vec<u32> = ds.iter().enumerate().map(|(i, d)| d.process.map_or(0, |p| actual[i].min(occupancy(Some(&p))))).collect();
            let mut a = allocate(usable, &ds);
            for _round in 0..6 {
                for (i, d) in ds.iter_mut().enumerate() {
                    let g = a.get(&d.id).unwrap().clone();
                    d.grant = g.grant;
                    if d.wants == Wants::Off || g.evict {
                        d.process = None;
                        use_now[i] = 0;
                    } else if let Some(p) = &mut d.process {
                        p.told = g.grant;
                        use_now[i] = use_now[i].min(g.grant);
                        p.measured = Some(use_now[i]);
                        p.held = g.held;
                    } else if !g.waiting_budget {
                        d.process = Some(Process { told: g.grant, held: g.grant, measured: Some(0) });
                        use_now[i] = 0;
                    }
                }
                a = allocate(usable, &ds);
                check_allocation(usable, &ds, &a)?;
            }
            for j in &a.jobs {
                prop_assert_ne!(&j.wait_reason, &Some(WaitReason::ShrinkPending), "{} still waits for a shrink", &j.id);
                prop_assert_eq!(j.grant, j.target, "{} not at its target", &j.id);
            }
            prop_assert!(a.occupied <= usable);
        }
    }

    // ---- simulation: random event sequences ------------------------------

    #[derive(Debug, Clone)]
    enum Ev {
        Want(usize, Wants),
        SetUsable(u32),
        /// The supervisor starts the job if the allocation lets it.
        Spawn(usize),
        /// The quota file is rewritten (and signalled): the process is told its grant.
        Deliver(usize),
        /// The job's pool grows towards its told quota.
        Grow(usize, u32),
        /// The job's pool adapts to a lowered quota.
        Adapt(usize),
        /// A pg_stat_activity reading.
        Measure(usize),
        /// The process exits (crash, stop, eviction completed).
        Exit(usize),
        /// Time passes; the periodic rebalance runs.
        Tick,
    }

    const JOBS: usize = 5;

    fn ev() -> impl Strategy<Value = Ev> {
        let j = 0..JOBS;
        prop_oneof![
            3 => (j.clone(), wants()).prop_map(|(i, w)| Ev::Want(i, w)),
            1 => (0u32..40).prop_map(Ev::SetUsable),
            3 => j.clone().prop_map(Ev::Spawn),
            3 => j.clone().prop_map(Ev::Deliver),
            3 => (j.clone(), 0u32..20).prop_map(|(i, k)| Ev::Grow(i, k)),
            2 => j.clone().prop_map(Ev::Adapt),
            3 => j.clone().prop_map(Ev::Measure),
            1 => j.clone().prop_map(Ev::Exit),
            1 => Just(Ev::Tick),
        ]
    }

    #[derive(Debug, Clone)]
    struct SimJob {
        d: Demand,
        /// Connections the process really has open.
        actual: u32,
    }

    prop_compose! {
        fn sim_jobs()(specs in proptest::collection::vec((-2i32..4, 0u32..5, 0u32..12), JOBS)) -> Vec<SimJob> {
            specs.into_iter().enumerate().map(|(i, (priority, min, max))| SimJob {
                d: Demand { id: format!("svc/{}", ["e", "a", "d", "b", "c"][i]), priority, min, max, wants: Wants::Off, grant: 0, process: None },
                actual: 0,
            }).collect()
        }
    }

    proptest! {
        #[test]
        fn random_event_sequences(mut jobs in sim_jobs(), start in 0u32..40, evs in proptest::collection::vec(ev(), 1..80)) {
            let mut usable = start;
            let mut dropped = false;
            let mut last: Option<Allocation> = None;
            for e in evs {
                match e {
                    Ev::Want(i, w) => jobs[i].d.wants = w,
                    Ev::SetUsable(u) => { dropped |= u < usable; usable = u; }
                    Ev::Spawn(i) => {
                        let j = &mut jobs[i];
                        let ok = last.as_ref().and_then(|a| a.get(&j.d.id)).is_some_and(|g| !g.waiting_budget);
                        if ok && j.d.wants != Wants::Off && j.d.process.is_none() {
                            j.d.process = Some(Process { told: j.d.grant, held: j.d.grant, measured: None });
                            j.actual = 0;
                        }
                    }
                    Ev::Deliver(i) => {
                        let grant = jobs[i].d.grant;
                        if let Some(p) = &mut jobs[i].d.process { p.told = grant; p.measured = None; }
                    }
                    Ev::Grow(i, k) => {
                        let j = &mut jobs[i];
                        if let Some(p) = &j.d.process { j.actual = j.actual.max(k.min(p.told)); }
                    }
                    Ev::Adapt(i) => {
                        let j = &mut jobs[i];
                        if let Some(p) = &j.d.process { j.actual = j.actual.min(p.told); }
                    }
                    Ev::Measure(i) => {
                        let actual = jobs[i].actual;
                        if let Some(p) = &mut jobs[i].d.process { p.measured = Some(actual); }
                    }
                    Ev::Exit(i) => { jobs[i].d.process = None; jobs[i].actual = 0; }
                    Ev::Tick => {}
                }

                let ds: Vec<Demand> = jobs.iter().map(|j| j.d.clone()).collect();
                let held_before: u64 = ds.iter().map(|d| d.process.as_ref().map_or(0, |p| p.held.max(p.told)) as u64).sum();
                let a = allocate(usable, &ds);
                check_allocation(usable, &ds, &a)?;
                let rev: Vec<Demand> = ds.iter().rev().cloned().collect();
                prop_assert_eq!(&a, &allocate(usable, &rev));

                // A shrink is never double-granted: nothing beyond what was
                // already held is handed out unless usable covers it.
                prop_assert!(a.occupied as u64 <= held_before.max(usable as u64));

                for j in jobs.iter_mut() {
                    let g = a.get(&j.d.id).unwrap();
                    // Occupancy is a sound bound on what the process really uses.
                    if j.d.process.is_some() {
                        prop_assert!(j.actual <= g.held, "{} uses {} > held {}", j.d.id, j.actual, g.held);
                    }
                    // Monotone usable from an empty start: no running job is ever
                    // evicted and real use never exceeds usable.
                    if !dropped && j.d.is_incumbent() {
                        prop_assert!(!g.waiting_budget, "{} lost its min without usable dropping", j.d.id);
                    }
                    j.d.grant = g.grant;
                    if let Some(p) = &mut j.d.process { p.held = g.held; }
                }
                let actual: u64 = jobs.iter().map(|j| j.actual as u64).sum();
                if !dropped {
                    prop_assert!(a.occupied <= usable);
                    prop_assert!(actual <= usable as u64, "real use {} > usable {}", actual, usable);
                }
                last = Some(a);
            }
        }
    }
}
