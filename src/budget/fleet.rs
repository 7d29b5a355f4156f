//! Fleet scope (SPEC §5 "across the fleet"): one allocation over the demands of
//! every corral sharing the database.
//!
//! Pure, like [`allocate`](super::allocate): the coordinator reads the fleet's
//! rows inside its transaction, calls [`allocate_fleet`], and writes the result
//! back. The same allocator as local scope does the sharing; this module only
//! decides what `usable` is for the whole fleet and turns rows into demands.
//!
//! # usable across the fleet
//!
//! Every member computes its own `base` = `limit - provider_reserve -
//! adhoc_reserve - external_reserve` from its config and its server reading.
//! Members should agree; when they do not, the smallest base wins (the safe
//! side). Then, once for the fleet:
//!
//! ```text
//! usable = min(base) - active reservations - Σ own connections of members
//!                    - unclaimed corral connections
//! ```
//!
//! *Unclaimed* connections carry a `corral/...` application_name that no live
//! member claims: the jobs of an expired corral whose processes live on (a
//! host where only corral was SIGKILLed), or a corral that has not registered
//! yet. They are real backends, so they are not handed out again.

use std::collections::BTreeSet;

use super::allocate::{self, Allocation, Demand, Process, Wants};
use crate::db::usage::{APP_PREFIX, OWN_JOB};

/// A live member as the allocation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub service: String,
    /// `limit - provider - adhoc - external` as this member computes it; `None` while it
    /// knows no limit yet (no server reading, no preset): it has no say in `min(base)`.
    pub base: Option<u32>,
    /// Its own connections (one: health, readings and coordination share it).
    pub own: u32,
}

/// One job of one member (a row of `corral.demands`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub member: String,
    pub service: String,
    pub job: String,
    pub priority: i32,
    pub min: u32,
    pub max: u32,
    pub wants: Wants,
    /// The grant from the previous allocation.
    pub grant: u32,
    pub process: Option<Process>,
}

impl Row {
    /// The allocator's id: unique per (member, job), readable in wait reasons.
    pub fn id(&self) -> String {
        row_id(&self.service, &self.job, &self.member)
    }
}

pub fn row_id(service: &str, job: &str, member: &str) -> String {
    format!("{service}/{job}@{member}")
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetInput {
    pub members: Vec<Member>,
    pub rows: Vec<Row>,
    /// Σ count of unexpired reservations.
    pub reserved: u32,
    /// Live backends per application_name starting with `corral/`.
    pub corral_backends: Vec<(String, u32)>,
}

/// The numbers behind the fleet's `usable`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FleetPlan {
    /// min over members of their base.
    pub base: u32,
    /// Members disagree about the base (their reserves or limits differ).
    pub disagree: bool,
    pub reserved: u32,
    /// Σ own connections of live members.
    pub own: u32,
    pub unclaimed: u32,
    pub usable: u32,
}

/// Connections with a corral application_name that no live member claims.
pub fn unclaimed(members: &[Member], rows: &[Row], corral_backends: &[(String, u32)]) -> u32 {
    let mut claimed: BTreeSet<String> = rows.iter().map(|r| format!("{APP_PREFIX}{}/{}", r.service, r.job)).collect();
    claimed.extend(members.iter().map(|m| format!("{APP_PREFIX}{}/{OWN_JOB}", m.service)));
    corral_backends
        .iter()
        .filter(|(app, _)| app.starts_with(APP_PREFIX) && !claimed.contains(app))
        .map(|(_, n)| *n)
        .sum()
}

pub fn plan(input: &FleetInput) -> FleetPlan {
    // A member that cannot read the server yet (they all start at once) would otherwise
    // pull the fleet down to 0 and evict everyone's jobs.
    let base = input.members.iter().filter_map(|m| m.base).min().unwrap_or(0);
    let disagree = input.members.iter().any(|m| m.base.is_some_and(|b| b != base));
    let own: u32 = input.members.iter().map(|m| m.own).sum();
    let unclaimed = unclaimed(&input.members, &input.rows, &input.corral_backends);
    let usable = (base as u64)
        .saturating_sub(input.reserved as u64 + own as u64 + unclaimed as u64) as u32;
    FleetPlan { base, disagree, reserved: input.reserved, own, unclaimed, usable }
}

/// One allocation for the whole fleet. Rows of members that are not in
/// `members` (expired) must not be passed in.
pub fn allocate_fleet(input: &FleetInput) -> (FleetPlan, Allocation) {
    let p = plan(input);
    let demands: Vec<Demand> = input
        .rows
        .iter()
        .map(|r| Demand {
            id: r.id(),
            priority: r.priority,
            min: r.min,
            max: r.max,
            wants: r.wants,
            grant: r.grant,
            process: r.process,
        })
        .collect();
    (p.clone(), allocate::allocate(p.usable, &demands))
}

/// What a member reports for one of its jobs: the process as the fleet must
/// count it. A job that wants to run with a grant may (re)spawn with that
/// grant at any moment, before the next sync: it occupies the grant even
/// with no process right now. Without that, another member could hand the
/// grant out between this job's exit and its restart.
pub fn reported_process(wants: Wants, grant: u32, fleet_held: u32, actual: Option<Process>) -> Option<Process> {
    let pending = if wants != Wants::Off { grant } else { 0 };
    match actual {
        None if pending == 0 => None,
        None => Some(Process { told: pending, held: pending.max(fleet_held), measured: None }),
        Some(p) => {
            let told = p.told.max(pending);
            Some(Process {
                told,
                held: p.held.max(fleet_held).max(told),
                // A reading of the actual process confirms only what it was told.
                measured: p.measured.filter(|_| told == p.told),
            })
        }
    }
}

/// The quota a member will tell its job (or spawn it with) after an
/// allocation; `None` leaves what the process was told. Recorded as `told` in
/// the same transaction as the allocation, so that no other member's
/// allocation can count the job at less than what it is about to be given.
pub fn told_after(wants: Wants, grant: u32, waiting: bool) -> Option<u32> {
    (wants != Wants::Off && !waiting && grant > 0).then_some(grant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: &str, base: u32) -> Member {
        Member { id: id.into(), service: format!("svc-{id}"), base: Some(base), own: 2 }
    }

    fn row(m: &str, job: &str, min: u32, max: u32, wants: Wants) -> Row {
        Row {
            member: m.into(),
            service: format!("svc-{m}"),
            job: job.into(),
            priority: 0,
            min,
            max,
            wants,
            grant: 0,
            process: None,
        }
    }

    #[test]
    fn a_member_that_knows_no_limit_yet_has_no_say_in_the_base() {
        let unknown = Member { base: None, ..member("c", 0) };
        let input = FleetInput { members: vec![member("a", 50), unknown.clone()], ..Default::default() };
        let p = plan(&input);
        assert_eq!((p.base, p.disagree, p.own, p.usable), (50, false, 4, 46));
        // Nobody knows: nothing is usable (the safe side).
        let p = plan(&FleetInput { members: vec![unknown], ..Default::default() });
        assert_eq!((p.base, p.usable), (0, 0));
    }

    #[test]
    fn usable_is_the_smallest_base_minus_fleet_wide_deductions() {
        let input = FleetInput {
            members: vec![member("a", 50), member("b", 48)],
            rows: vec![row("a", "w", 1, 5, Wants::Active)],
            reserved: 3,
            corral_backends: vec![
                ("corral/svc-a/w".into(), 4),
                ("corral/svc-a/_corral".into(), 2),
                ("corral/gone/old".into(), 5),
                ("psql".into(), 9),
            ],
        };
        let p = plan(&input);
        assert_eq!((p.base, p.disagree, p.own, p.unclaimed, p.usable), (48, true, 4, 5, 48 - 3 - 4 - 5));
    }

    #[test]
    fn jobs_of_different_members_share_one_usable() {
        let input = FleetInput {
            members: vec![member("a", 22), member("b", 22), member("c", 22)],
            rows: ["a", "b", "c"]
                .iter()
                .flat_map(|m| (0..3).map(move |j| row(m, &format!("j{j}"), 1, 10, Wants::Active)))
                .collect(),
            ..Default::default()
        };
        let (p, alloc) = allocate_fleet(&input);
        assert_eq!(p.usable, 22 - 6);
        assert_eq!(alloc.total, 16);
        assert!(alloc.jobs.iter().all(|g| g.grant >= 1 && !g.waiting_budget));
    }

    #[test]
    fn a_waiting_job_with_a_grant_counts_as_occupying_it() {
        let p = reported_process(Wants::Active, 4, 0, None).unwrap();
        assert_eq!((p.told, p.held, p.measured), (4, 4, None));
        assert_eq!(reported_process(Wants::Off, 4, 4, None), None);
        // A stopping process still counts with what it was told.
        let live = Process { told: 6, held: 6, measured: Some(6) };
        assert_eq!(reported_process(Wants::Off, 0, 6, Some(live)), Some(live));
        // Growth not yet delivered: counted at the larger grant, unconfirmed.
        let p = reported_process(Wants::Active, 8, 6, Some(live)).unwrap();
        assert_eq!((p.told, p.held, p.measured), (8, 8, None));
    }

    fn arb_row() -> impl Strategy<Value = Row> {
        (0usize..3, 0usize..4, -2i32..3, 0u32..5, 0u32..9, 0u8..3, 0u32..9, proptest::option::of((0u32..9, 0u32..9, proptest::option::of(0u32..9))))
            .prop_map(|(m, j, priority, min, max, w, grant, process)| Row {
                member: format!("m{m}"),
                service: format!("s{m}"),
                job: format!("j{j}"),
                priority,
                min,
                max,
                wants: [Wants::Off, Wants::Idle, Wants::Active][w as usize],
                grant,
                process: process.map(|(told, held, measured)| Process { told, held, measured }),
            })
    }

    proptest! {
        /// SPEC §5 across the fleet: Σ grants over every member's jobs <= usable,
        /// whatever the rows, and what members will tell is within the grants.
        #[test]
        fn fleet_grants_never_exceed_usable(
            bases in proptest::collection::vec(0u32..40, 1..4),
            rows in proptest::collection::vec(arb_row(), 0..12),
            reserved in 0u32..10,
            stray in 0u32..6,
        ) {
            let members: Vec<Member> = bases.iter().enumerate().map(|(i, b)| Member {
                id: format!("m{i}"), service: format!("s{i}"), base: Some(*b), own: 2 }).collect();
            let mut seen = BTreeSet::new();
            let rows: Vec<Row> = rows.into_iter()
                .filter(|r| members.iter().any(|m| m.id == r.member))
                .filter(|r| seen.insert((r.member.clone(), r.job.clone())))
                .collect();
            let input = FleetInput { members, rows: rows.clone(), reserved, corral_backends: vec![("corral/x/y".into(), stray)] };
            let (p, alloc) = allocate_fleet(&input);
            prop_assert!(alloc.total <= p.usable);
            let told: u32 = rows.iter().map(|r| {
                let g = alloc.get(&r.id()).unwrap();
                told_after(r.wants, g.grant, g.waiting_budget).unwrap_or(0)
            }).sum();
            prop_assert!(told <= p.usable);
            let (p2, alloc2) = allocate_fleet(&FleetInput { rows: rows.iter().rev().cloned().collect(), ..input });
            prop_assert_eq!((p, alloc), (p2, alloc2));
        }
    }
}
