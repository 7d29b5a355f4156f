use std::time::Duration;

use chrono::{DateTime, Utc};

use super::*;
use crate::schedule::spec::{parse, parse_tz, rfc3339};

fn utc(s: &str) -> Wall {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn cfg(text: &str, concurrency: Concurrency, deadline: Option<u64>, catch_up: bool) -> ScheduleConfig {
    ScheduleConfig {
        spec: parse(text, parse_tz("UTC").unwrap()).unwrap(),
        concurrency,
        starting_deadline: deadline.map(Duration::from_secs),
        catch_up,
    }
}

fn every10s() -> ScheduleConfig {
    cfg("*/10 * * * * *", Concurrency::Forbid, None, true)
}

/// A test clock: wall and monotonic time advance together unless a test jumps the wall.
struct T {
    wall: Wall,
    mono: Duration,
}

impl T {
    fn at(s: &str) -> T {
        T { wall: utc(s), mono: Duration::from_secs(1000) }
    }
    fn now(&self) -> Clock {
        Clock { wall: self.wall, mono: self.mono }
    }
    fn advance(&mut self, ms: i64) {
        self.wall += chrono::Duration::milliseconds(ms);
        self.mono += Duration::from_millis(ms.max(0) as u64);
    }
    /// The wall clock jumps; monotonic time does not.
    fn jump(&mut self, ms: i64) {
        self.wall += chrono::Duration::milliseconds(ms);
    }
    fn set(&mut self, s: &str) {
        let to = utc(s);
        let d = (to - self.wall).num_milliseconds();
        self.advance(d);
    }
}

fn starts(fx: &[Action]) -> Vec<String> {
    fx.iter()
        .filter_map(|a| match a {
            Action::Start { scheduled_at } | Action::Replace { scheduled_at } => Some(rfc3339(*scheduled_at)),
            _ => None,
        })
        .collect()
}

fn wake(fx: &[Action]) -> Option<String> {
    fx.iter().find_map(|a| match a {
        Action::WakeAt(w) => Some(rfc3339(*w)),
        _ => None,
    })
}

fn missed(fx: &[Action]) -> u64 {
    fx.iter().map(|a| if let Action::Missed { count, .. } = a { *count } else { 0 }).sum()
}

/// Run through a start the way the machine does: pending, then running.
fn run_starts(t: &mut Tracker, c: &ScheduleConfig, clock: &T) {
    step(t, c, clock.now(), Input::Observe(Activity::Pending, None));
    step(t, c, clock.now(), Input::Observe(Activity::Running, None));
}

fn run_ends(t: &mut Tracker, c: &ScheduleConfig, clock: &T, outcome: Outcome) -> Vec<Action> {
    step(t, c, clock.now(), Input::Observe(Activity::Idle, Some(outcome)))
}

#[test]
fn first_arm_persists_now_and_waits_for_the_next_occurrence() {
    let c = every10s();
    let clock = T::at("2026-12-01T10:00:05Z");
    let mut t = Tracker::default();
    let fx = step(&mut t, &c, clock.now(), Input::Arm { last_due: None });
    assert!(fx.contains(&Action::Persist(clock.wall)));
    assert!(starts(&fx).is_empty());
    assert_eq!(wake(&fx).as_deref(), Some("2026-12-01T10:00:10Z"));
    assert!(t.between_runs());
    assert_eq!(t.next_run().map(rfc3339).as_deref(), Some("2026-12-01T10:00:10Z"));
}

#[test]
fn a_due_occurrence_starts_once_and_an_early_wake_waits() {
    let c = every10s();
    let mut clock = T::at("2026-12-01T10:00:05Z");
    let mut t = Tracker::default();
    step(&mut t, &c, clock.now(), Input::Arm { last_due: None });
    clock.set("2026-12-01T10:00:09.999Z");
    let fx = step(&mut t, &c, clock.now(), Input::Wake);
    assert!(starts(&fx).is_empty(), "early wake: {fx:?}");
    assert_eq!(wake(&fx).as_deref(), Some("2026-12-01T10:00:10Z"));
    clock.set("2026-12-01T10:00:10.002Z");
    let fx = step(&mut t, &c, clock.now(), Input::Wake);
    assert_eq!(starts(&fx), ["2026-12-01T10:00:10Z"]);
    assert!(fx.contains(&Action::Persist(utc("2026-12-01T10:00:10Z"))));
    assert_eq!(wake(&fx).as_deref(), Some("2026-12-01T10:00:20Z"));
    assert_eq!(t.scheduled_at().map(rfc3339).as_deref(), Some("2026-12-01T10:00:10Z"));
    // A second wake in the same second (a duplicate timer) starts nothing.
    clock.advance(300);
    assert!(starts(&step(&mut t, &c, clock.now(), Input::Wake)).is_empty());
}

#[test]
fn a_clock_set_back_never_fires_a_run_twice() {
    let c = every10s();
    let mut clock = T::at("2026-12-01T10:00:05Z");
    let mut t = Tracker::default();
    step(&mut t, &c, clock.now(), Input::Arm { last_due: None });
    clock.set("2026-12-01T10:00:10Z");
    assert_eq!(starts(&step(&mut t, &c, clock.now(), Input::Wake)).len(), 1);
    run_starts(&mut t, &c, &clock);
    clock.advance(2000);
    run_ends(&mut t, &c, &clock, Outcome::Succeeded);
    // Back by a minute: the 10:00:10 run already happened and is not started again.
    clock.jump(-60_000);
    let mut fired = Vec::new();
    for _ in 0..80 {
        clock.advance(1000);
        fired.extend(starts(&step(&mut t, &c, clock.now(), Input::Wake)));
    }
    // 80 s later the wall reads 10:00:32: only the occurrences after 10:00:10 fire.
    assert_eq!(fired, ["2026-12-01T10:00:20Z"]);
}

#[test]
fn a_clock_jump_forward_runs_the_latest_once_and_counts_the_rest_missed() {
    let c = every10s();
    let mut clock = T::at("2026-12-01T10:00:05Z");
    let mut t = Tracker::default();
    step(&mut t, &c, clock.now(), Input::Arm { last_due: None });
    clock.jump(295_000); // 10:05:00
    let fx = step(&mut t, &c, clock.now(), Input::Wake);
    assert_eq!(starts(&fx), ["2026-12-01T10:05:00Z"]);
    // 10:00:10 .. 10:04:50 never ran.
    assert_eq!(missed(&fx), 29);
    assert_eq!(t.counters.missed, 29);
    for _ in 0..5 {
        clock.advance(100);
        assert!(starts(&step(&mut t, &c, clock.now(), Input::Wake)).is_empty());
    }
}

#[test]
fn after_downtime_at_most_one_missed_run_starts() {
    let c = cfg("@every 10m", Concurrency::Forbid, None, true);
    let clock = T::at("2026-12-01T10:00:05Z");
    let mut t = Tracker::default();
    let fx = step(&mut t, &c, clock.now(), Input::Arm { last_due: Some(utc("2026-12-01T09:00:00Z")) });
    assert_eq!(starts(&fx), ["2026-12-01T10:00:00Z"]);
    assert_eq!(missed(&fx), 5, "09:10 .. 09:50 {fx:?}");
    assert_eq!(wake(&fx).as_deref(), Some("2026-12-01T10:10:00Z"));
}

#[test]
fn catch_up_false_starts_none_of_what_passed_while_down() {
    let c = cfg("@every 10m", Concurrency::Forbid, None, false);
    let clock = T::at("2026-12-01T10:00:05Z");
    let mut t = Tracker::default();
    let fx = step(&mut t, &c, clock.now(), Input::Arm { last_due: Some(utc("2026-12-01T09:00:00Z")) });
    assert!(starts(&fx).is_empty());
    assert_eq!(missed(&fx), 6);
    assert!(t.between_runs());
    // Nothing passed while down: nothing is missed either.
    let mut t = Tracker::default();
    let fx = step(&mut t, &c, clock.now(), Input::Arm { last_due: Some(utc("2026-12-01T10:00:00Z")) });
    assert_eq!((starts(&fx).len(), missed(&fx)), (0, 0));
}

#[test]
fn catch_up_respects_the_starting_deadline() {
    let c = cfg("@every 10m", Concurrency::Forbid, Some(60), true);
    let clock = T::at("2026-12-01T10:03:00Z");
    let mut t = Tracker::default();
    let fx = step(&mut t, &c, clock.now(), Input::Arm { last_due: Some(utc("2026-12-01T09:45:00Z")) });
    assert!(starts(&fx).is_empty(), "10:00 is 3 minutes old, the deadline is 1: {fx:?}");
    assert_eq!(missed(&fx), 2);
}

#[test]
fn a_run_that_cannot_start_before_its_deadline_is_missed() {
    let c = cfg("*/10 * * * * *", Concurrency::Forbid, Some(3), true);
    let mut clock = T::at("2026-12-01T10:00:05Z");
    let mut t = Tracker::default();
    step(&mut t, &c, clock.now(), Input::Arm { last_due: None });
    clock.set("2026-12-01T10:00:10Z");
    step(&mut t, &c, clock.now(), Input::Wake);
    // Held back for the budget.
    let fx = step(&mut t, &c, clock.now(), Input::Observe(Activity::Pending, None));
    assert_eq!(wake(&fx).as_deref(), Some("2026-12-01T10:00:13.001Z"), "wakes at the deadline: {fx:?}");
    clock.set("2026-12-01T10:00:12Z");
    assert!(!step(&mut t, &c, clock.now(), Input::Wake).contains(&Action::Stop));
    clock.set("2026-12-01T10:00:13.001Z");
    let fx = step(&mut t, &c, clock.now(), Input::Wake);
    assert!(fx.contains(&Action::Stop));
    assert_eq!(missed(&fx), 1);
    // Only once, however often it is re-checked before the machine stops.
    assert!(!step(&mut t, &c, clock.now(), Input::Wake).contains(&Action::Stop));
    run_ends(&mut t, &c, &clock, Outcome::Stopped);
    assert_eq!(t.last.as_ref().map(|l| l.outcome.clone()), Some(Outcome::Missed));
    assert_eq!(t.last.as_ref().and_then(|l| l.started), None);
    assert_eq!((t.counters.missed, t.counters.runs), (1, 0));
    assert!(t.between_runs());
}

#[test]
fn without_a_deadline_a_waiting_run_is_replaced_by_the_next_occurrence() {
    let c = every10s();
    let mut clock = T::at("2026-12-01T10:00:05Z");
    let mut t = Tracker::default();
    step(&mut t, &c, clock.now(), Input::Arm { last_due: None });
    clock.set("2026-12-01T10:00:10Z");
    step(&mut t, &c, clock.now(), Input::Wake);
    step(&mut t, &c, clock.now(), Input::Observe(Activity::Pending, None));
    clock.set("2026-12-01T10:00:20Z");
    let fx = step(&mut t, &c, clock.now(), Input::Wake);
    // No second start: the start under way now runs for 10:00:20.
    assert!(starts(&fx).is_empty());
    assert_eq!(missed(&fx), 1);
    assert_eq!(t.scheduled_at().map(rfc3339).as_deref(), Some("2026-12-01T10:00:20Z"));
}

fn running_at_next_occurrence(concurrency: Concurrency) -> (Tracker, ScheduleConfig, T, Vec<Action>) {
    let c = cfg("*/10 * * * * *", concurrency, None, true);
    let mut clock = T::at("2026-12-01T10:00:05Z");
    let mut t = Tracker::default();
    step(&mut t, &c, clock.now(), Input::Arm { last_due: None });
    clock.set("2026-12-01T10:00:10Z");
    step(&mut t, &c, clock.now(), Input::Wake);
    run_starts(&mut t, &c, &clock);
    clock.set("2026-12-01T10:00:20Z");
    let fx = step(&mut t, &c, clock.now(), Input::Wake);
    (t, c, clock, fx)
}

#[test]
fn forbid_skips_a_run_due_while_the_previous_runs() {
    let (mut t, c, mut clock, fx) = running_at_next_occurrence(Concurrency::Forbid);
    assert!(starts(&fx).is_empty());
    assert!(fx.contains(&Action::Skipped { scheduled_at: utc("2026-12-01T10:00:20Z") }));
    assert_eq!(t.counters.skipped, 1);
    clock.advance(3000);
    // The previous run ending does not start the skipped one.
    assert!(starts(&run_ends(&mut t, &c, &clock, Outcome::Succeeded)).is_empty());
    assert_eq!(t.last.as_ref().map(|l| rfc3339(l.scheduled_at)).as_deref(), Some("2026-12-01T10:00:10Z"));
}

#[test]
fn replace_stops_the_running_run_for_the_due_one() {
    let (mut t, c, mut clock, fx) = running_at_next_occurrence(Concurrency::Replace);
    assert_eq!(fx.iter().filter(|a| matches!(a, Action::Replace { .. })).count(), 1);
    assert_eq!(t.last.as_ref().map(|l| l.outcome.clone()), Some(Outcome::Replaced));
    assert_eq!(t.last.as_ref().and_then(|l| l.duration), Some(Duration::from_secs(10)));
    // The machine: stopping (still running), then starting the new process.
    step(&mut t, &c, clock.now(), Input::Observe(Activity::Running, None));
    assert_eq!(t.counters.runs, 1);
    clock.advance(200);
    run_starts(&mut t, &c, &clock);
    assert_eq!(t.counters.runs, 2);
    assert_eq!(t.scheduled_at().map(rfc3339).as_deref(), Some("2026-12-01T10:00:20Z"));
}

#[test]
fn allow_starts_the_due_run_when_the_previous_exits() {
    let (mut t, c, mut clock, fx) = running_at_next_occurrence(Concurrency::Allow);
    assert!(starts(&fx).is_empty());
    clock.advance(4000);
    let fx = run_ends(&mut t, &c, &clock, Outcome::Succeeded);
    assert_eq!(starts(&fx), ["2026-12-01T10:00:20Z"]);
    // A third occurrence while the queued one runs waits in turn; a fourth replaces it.
    run_starts(&mut t, &c, &clock);
    clock.set("2026-12-01T10:00:30Z");
    step(&mut t, &c, clock.now(), Input::Wake);
    clock.set("2026-12-01T10:00:40Z");
    let fx = step(&mut t, &c, clock.now(), Input::Wake);
    assert!(fx.contains(&Action::Skipped { scheduled_at: utc("2026-12-01T10:00:30Z") }));
    assert_eq!(starts(&run_ends(&mut t, &c, &clock, Outcome::Succeeded)), ["2026-12-01T10:00:40Z"]);
}

#[test]
fn retries_of_a_failed_run_end_when_the_next_run_is_due() {
    let c = every10s();
    let mut clock = T::at("2026-12-01T10:00:05Z");
    let mut t = Tracker::default();
    step(&mut t, &c, clock.now(), Input::Arm { last_due: None });
    clock.set("2026-12-01T10:00:10Z");
    step(&mut t, &c, clock.now(), Input::Wake);
    run_starts(&mut t, &c, &clock);
    clock.advance(500);
    // Crashed: the machine backs off and retries (pending, running again).
    step(&mut t, &c, clock.now(), Input::Observe(Activity::Retrying, None));
    clock.advance(1000);
    run_starts(&mut t, &c, &clock);
    assert_eq!(t.counters.runs, 1, "a retry is the same run");
    step(&mut t, &c, clock.now(), Input::Observe(Activity::Retrying, None));
    clock.set("2026-12-01T10:00:20Z");
    let fx = step(&mut t, &c, clock.now(), Input::Wake);
    assert_eq!(starts(&fx), ["2026-12-01T10:00:20Z"]);
    assert!(matches!(t.last.as_ref().map(|l| &l.outcome), Some(Outcome::Failed(_))));
    assert_eq!(t.counters.failed, 1);
}

#[test]
fn retries_stop_at_the_starting_deadline() {
    let c = cfg("*/10 * * * * *", Concurrency::Forbid, Some(5), true);
    let mut clock = T::at("2026-12-01T10:00:05Z");
    let mut t = Tracker::default();
    step(&mut t, &c, clock.now(), Input::Arm { last_due: None });
    clock.set("2026-12-01T10:00:10Z");
    step(&mut t, &c, clock.now(), Input::Wake);
    run_starts(&mut t, &c, &clock);
    clock.advance(1000);
    let fx = step(&mut t, &c, clock.now(), Input::Observe(Activity::Retrying, None));
    assert!(!fx.contains(&Action::Stop), "within the deadline the retry goes on");
    clock.set("2026-12-01T10:00:15.500Z");
    let fx = step(&mut t, &c, clock.now(), Input::Wake);
    assert!(fx.contains(&Action::Stop));
    assert_eq!(missed(&fx), 0, "it started: failed, not missed");
    run_ends(&mut t, &c, &clock, Outcome::Stopped);
    assert!(matches!(t.last.as_ref().map(|l| &l.outcome), Some(Outcome::Failed(_))));
    assert_eq!((t.counters.failed, t.counters.missed), (1, 0));
}

#[test]
fn a_successful_run_is_never_repeated_before_its_next_occurrence() {
    let c = cfg("@hourly", Concurrency::Forbid, None, true);
    let mut clock = T::at("2026-12-01T10:59:59Z");
    let mut t = Tracker::default();
    step(&mut t, &c, clock.now(), Input::Arm { last_due: None });
    clock.set("2026-12-01T11:00:00Z");
    assert_eq!(starts(&step(&mut t, &c, clock.now(), Input::Wake)).len(), 1);
    run_starts(&mut t, &c, &clock);
    clock.advance(1500);
    let fx = run_ends(&mut t, &c, &clock, Outcome::Succeeded);
    assert!(starts(&fx).is_empty());
    let mut n = 0;
    for _ in 0..59 {
        clock.advance(60_000);
        n += starts(&step(&mut t, &c, clock.now(), Input::Wake)).len();
    }
    assert_eq!(n, 0);
    let last = t.last.clone().unwrap();
    assert_eq!((last.outcome, last.duration), (Outcome::Succeeded, Some(Duration::from_millis(1500))));
    assert_eq!((t.counters.runs, t.counters.succeeded), (1, 1));
}

#[test]
fn run_now_runs_outside_the_schedule_once() {
    let c = cfg("@daily", Concurrency::Forbid, Some(1), true);
    let mut clock = T::at("2026-12-01T10:00:00Z");
    let mut t = Tracker::default();
    step(&mut t, &c, clock.now(), Input::Arm { last_due: None });
    let fx = step(&mut t, &c, clock.now(), Input::RunNow);
    assert_eq!(starts(&fx), ["2026-12-01T10:00:00Z"]);
    // A manual run waiting for its budget is not missed at the deadline.
    step(&mut t, &c, clock.now(), Input::Observe(Activity::Pending, None));
    clock.advance(5000);
    assert!(!step(&mut t, &c, clock.now(), Input::Wake).contains(&Action::Stop));
    step(&mut t, &c, clock.now(), Input::Observe(Activity::Running, None));
    assert!(starts(&step(&mut t, &c, clock.now(), Input::RunNow)).is_empty(), "already running");
    clock.advance(1000);
    run_ends(&mut t, &c, &clock, Outcome::Succeeded);
    assert!(t.last.as_ref().unwrap().manual);
    assert_eq!(t.next_run().map(rfc3339).as_deref(), Some("2026-12-02T00:00:00Z"));
}

#[test]
fn disarmed_schedules_start_nothing() {
    let c = every10s();
    let mut clock = T::at("2026-12-01T10:00:05Z");
    let mut t = Tracker::default();
    step(&mut t, &c, clock.now(), Input::Arm { last_due: None });
    let fx = step(&mut t, &c, clock.now(), Input::Disarm);
    assert!(wake(&fx).is_none());
    clock.set("2026-12-01T10:01:00Z");
    assert!(step(&mut t, &c, clock.now(), Input::Wake).is_empty());
    assert_eq!(t.next_run(), None);
    assert!(!t.between_runs());
    // Armed again by a person: from now, nothing counted missed for the time it was stopped.
    let fx = step(&mut t, &c, clock.now(), Input::Arm { last_due: Some(clock.wall) });
    assert_eq!((starts(&fx).len(), missed(&fx)), (0, 0));
}

#[test]
fn arming_again_while_armed_changes_nothing() {
    let c = every10s();
    let clock = T::at("2026-12-01T10:00:05Z");
    let mut t = Tracker::default();
    step(&mut t, &c, clock.now(), Input::Arm { last_due: None });
    let before = t.clone();
    let fx = step(&mut t, &c, clock.now(), Input::Arm { last_due: Some(utc("2026-12-01T09:00:00Z")) });
    assert_eq!((starts(&fx).len(), missed(&fx)), (0, 0));
    assert_eq!(t, before);
}

#[test]
fn a_reload_re_plans_without_touching_the_run() {
    let c = every10s();
    let mut clock = T::at("2026-12-01T10:00:05Z");
    let mut t = Tracker::default();
    step(&mut t, &c, clock.now(), Input::Arm { last_due: None });
    clock.set("2026-12-01T10:00:10Z");
    step(&mut t, &c, clock.now(), Input::Wake);
    run_starts(&mut t, &c, &clock);
    clock.set("2026-12-01T10:00:12Z");
    let hourly = cfg("@hourly", Concurrency::Forbid, None, true);
    let fx = step(&mut t, &hourly, clock.now(), Input::Replan);
    assert!(!fx.iter().any(|a| matches!(a, Action::Stop | Action::Start { .. } | Action::Replace { .. })), "{fx:?}");
    assert_eq!(t.next_run().map(rfc3339).as_deref(), Some("2026-12-01T11:00:00Z"));
    assert_eq!(t.scheduled_at().map(rfc3339).as_deref(), Some("2026-12-01T10:00:10Z"));
    assert_eq!(wake(&fx).as_deref(), Some("2026-12-01T11:00:00Z"));
}

#[test]
fn durations_are_monotonic_whatever_the_wall_clock_does() {
    let c = every10s();
    let mut clock = T::at("2026-12-01T10:00:05Z");
    let mut t = Tracker::default();
    step(&mut t, &c, clock.now(), Input::Arm { last_due: None });
    clock.set("2026-12-01T10:00:10Z");
    step(&mut t, &c, clock.now(), Input::Wake);
    run_starts(&mut t, &c, &clock);
    clock.advance(2000);
    clock.jump(3_600_000);
    run_ends(&mut t, &c, &clock, Outcome::Succeeded);
    assert_eq!(t.last.unwrap().duration, Some(Duration::from_secs(2)));
}

#[test]
fn a_clock_set_back_by_days_re_bases_the_schedule() {
    let c = every10s();
    let mut clock = T::at("2030-01-01T00:00:05Z");
    let mut t = Tracker::default();
    step(&mut t, &c, clock.now(), Input::Arm { last_due: None });
    // NTP corrects a clock that was years ahead: the schedule follows the real time.
    clock.set("2026-12-01T10:00:05Z");
    let fx = step(&mut t, &c, clock.now(), Input::Wake);
    assert!(fx.contains(&Action::Persist(clock.wall)));
    assert_eq!(t.next_run().map(rfc3339).as_deref(), Some("2026-12-01T10:00:10Z"));
    // And a persisted time far ahead is re-based at arm time too.
    let mut t = Tracker::default();
    let fx = step(&mut t, &c, clock.now(), Input::Arm { last_due: Some(utc("2030-01-01T00:00:00Z")) });
    assert_eq!(wake(&fx).as_deref(), Some("2026-12-01T10:00:10Z"));
}

/// Every input in every activity, with the clock going forward, back a little, and jumping:
/// the invariants that make the schedule safe hold after every step.
mod exhaustive {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Wake(i64),
        Jump(i64),
        RunNow,
        Observe(u8, u8),
        Replan,
        Disarm,
        Arm,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0i64..25_000).prop_map(Op::Wake),
            1 => (-3_600_000i64..3_600_000).prop_map(Op::Jump),
            1 => Just(Op::RunNow),
            6 => (0u8..4, 0u8..3).prop_map(|(a, o)| Op::Observe(a, o)),
            1 => Just(Op::Replan),
            1 => Just(Op::Disarm),
            1 => Just(Op::Arm),
        ]
    }

    fn config() -> impl Strategy<Value = ScheduleConfig> {
        (
            prop::sample::select(vec!["*/10 * * * * *", "* * * * * *", "@every 7s", "0 * * * *", "*/2 * * * *"]),
            prop::sample::select(vec![Concurrency::Forbid, Concurrency::Replace, Concurrency::Allow]),
            prop::option::of(0u64..30),
            any::<bool>(),
        )
            .prop_map(|(s, c, d, k)| cfg(s, c, d, k))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn invariants_hold(c in config(), ops in proptest::collection::vec(op(), 1..120)) {
            let mut clock = T::at("2026-12-01T10:00:00Z");
            let mut t = Tracker::default();
            step(&mut t, &c, clock.now(), Input::Arm { last_due: None });
            let mut started_occurrences: Vec<Wall> = Vec::new();
            let mut persisted = t.last_due().unwrap();
            // The latest wall time seen: an occurrence due then may start after the clock went back.
            let mut latest_wall = clock.wall;
            for op in ops {
                let before = t.clone();
                let input = match op {
                    Op::Wake(ms) => { clock.advance(ms); Input::Wake }
                    Op::Jump(ms) => { clock.jump(ms); Input::Wake }
                    Op::RunNow => Input::RunNow,
                    Op::Observe(a, o) => {
                        let a = [Activity::Idle, Activity::Pending, Activity::Running, Activity::Retrying][a as usize];
                        let o = [Outcome::Succeeded, Outcome::Failed("x".into()), Outcome::Stopped][o as usize].clone();
                        Input::Observe(a, (a == Activity::Idle).then_some(o))
                    }
                    Op::Replan => Input::Replan,
                    Op::Disarm => Input::Disarm,
                    Op::Arm => Input::Arm { last_due: None },
                };
                latest_wall = latest_wall.max(clock.wall);
                let fx = step(&mut t, &c, clock.now(), input.clone());
                let launches: Vec<&Action> = fx.iter().filter(|a| matches!(a, Action::Start { .. } | Action::Replace { .. })).collect();
                // At most one start per step.
                prop_assert!(launches.len() <= 1, "{fx:?}");
                for a in &launches {
                    match a {
                        Action::Start { scheduled_at } if *scheduled_at == clock.wall && input == Input::RunNow => {}
                        Action::Start { scheduled_at } | Action::Replace { scheduled_at } => {
                            // A scheduled occurrence starts at most once, in order, and never
                            // before its time.
                            prop_assert!(*scheduled_at <= latest_wall);
                            prop_assert!(!started_occurrences.contains(scheduled_at), "{scheduled_at} twice");
                            started_occurrences.push(*scheduled_at);
                        }
                        _ => {}
                    }
                    // Nothing starts over a live process, except by replacing it.
                    if matches!(a, Action::Start { .. }) {
                        let now_idle = matches!(input, Input::Observe(Activity::Idle, _));
                        prop_assert!(now_idle || matches!(before.activity(), Activity::Idle | Activity::Retrying), "{before:?} {input:?} {fx:?}");
                    }
                    if matches!(a, Action::Replace { .. }) {
                        prop_assert_eq!(c.concurrency, Concurrency::Replace);
                    }
                }
                // A disarmed schedule starts nothing by itself.
                if !before.armed() && !matches!(input, Input::Arm { .. } | Input::RunNow) {
                    prop_assert!(launches.is_empty(), "{fx:?}");
                }
                // What is persisted only moves forward, unless the clock was set back by more
                // than CLOCK_RESET (not generated here).
                for a in &fx {
                    if let Action::Persist(p) = a {
                        prop_assert!(*p >= persisted || matches!(input, Input::Arm { .. }), "{p} < {persisted}");
                        persisted = persisted.max(*p);
                    }
                }
                // An armed schedule always has its next wake.
                if t.armed() && t.next_run().is_some() {
                    prop_assert!(fx.iter().any(|a| matches!(a, Action::WakeAt(_))), "{fx:?}");
                }
                if let Some(n) = t.next_run() {
                    prop_assert!(Some(n) > t.last_due());
                }
            }
        }
    }
}
