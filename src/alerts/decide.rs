//! Which facts become alerts, and how many (SPEC §9 "No floods"). Pure: facts and the time go
//! in, alerts come out; no I/O, no clocks (time is a `Duration` since any fixed start).
//!
//! - [`Decider`] turns what the actor reports (state transitions, database edges, budget
//!   readings, alerts built elsewhere) into alerts: `fatal`, `crash_loop` (N restarts in a
//!   window while still retrying), `budget_high` (above `warn_at` for two readings in a row),
//!   `database_down`/`database_up`, and the recoveries, each sent once and only after its
//!   problem was sent.
//! - [`Limiter`]: per (event, job) at most one alert per `min_interval`; what falls inside is
//!   counted, and one summary with the count goes out when the interval ends. A crash loop of
//!   1,000 restarts is a handful of alerts.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use serde_json::json;

use super::event::{Alert, EventKind};
use crate::job::machine::{describe_exit, signal_name};
use crate::job::{Exit, State};

/// What decides, from `[alerts]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub events: BTreeSet<EventKind>,
    pub min_interval: Duration,
    pub crash_loop_restarts: u32,
    pub crash_loop_window: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            events: EventKind::SELECTABLE.into_iter().collect(),
            min_interval: Duration::from_secs(300),
            crash_loop_restarts: 5,
            crash_loop_window: Duration::from_secs(600),
        }
    }
}

/// A job's state change as the actor saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub job: String,
    pub from: State,
    pub to: State,
    pub exit: Option<Exit>,
    /// Automatic restarts since corral started the job.
    pub restarts: u32,
    pub reason: Option<String>,
}

/// What the actor reports. Cheap to build; the actor never waits for what follows.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    Transition(Transition),
    /// A database health check whose result differs from the previous one.
    Database { healthy: bool, error: Option<String>, latency_ms: Option<f64> },
    /// A usage reading: the jobs' live connections against the budget.
    Budget { live: u32, usable: u32, granted: u32, limit: u32, warn_at: f64 },
    /// An alert built elsewhere (watchdog, scheduler): only rate-limited here.
    Alert(Alert),
}

/// The exit as `details` carry it: `{"code": 3, "signal": null}` or `{"code": null, "signal": 9, "signal_name": "SIGKILL"}`.
pub fn exit_json(exit: Exit) -> serde_json::Value {
    match exit {
        Exit::Code(c) => json!({"code": c, "signal": null}),
        Exit::Signal(s) => json!({"code": null, "signal": s, "signal_name": signal_name(s)}),
    }
}

#[derive(Debug, Default)]
pub struct Decider {
    pub settings: Settings,
    limiter: Limiter,
    /// Restart times per job within the crash-loop window.
    restart_times: HashMap<String, VecDeque<Duration>>,
    /// The restart count last seen per job (a restart is an increase).
    restarts_seen: HashMap<String, u32>,
    /// Jobs whose `fatal` was sent: their recovery is due when they run again.
    fatal_sent: BTreeSet<String>,
    db_healthy: Option<bool>,
    db_down_sent: bool,
    /// Readings in a row above `warn_at`, and whether this episode was alerted.
    budget_over: u32,
    budget_sent: bool,
}

impl Decider {
    pub fn new(settings: Settings) -> Decider {
        Decider { settings, ..Decider::default() }
    }

    /// New settings (a reload). Counts and episodes carry over.
    pub fn reconfigure(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// The alerts this fact causes now.
    pub fn fact(&mut self, fact: Fact, now: Duration) -> Vec<Alert> {
        let mut out = Vec::new();
        match fact {
            Fact::Transition(t) => self.transition(t, now, &mut out),
            Fact::Database { healthy, error, latency_ms } => {
                let was = self.db_healthy.replace(healthy);
                if !healthy && was != Some(false) {
                    let e = error.unwrap_or_else(|| "health check failed".into());
                    let a = Alert::new(EventKind::DatabaseDown, None, format!("database health check failed: {e}")).detail("error", e);
                    if self.offer(a, now, &mut out) {
                        self.db_down_sent = true;
                    }
                } else if healthy && was == Some(false) && std::mem::take(&mut self.db_down_sent) {
                    let ms = latency_ms.map(|l| format!(" ({l:.1} ms)")).unwrap_or_default();
                    let a = Alert::new(EventKind::DatabaseUp, None, format!("database healthy again{ms}")).detail("latency_ms", latency_ms);
                    self.recovery(a, &mut out);
                }
            }
            Fact::Budget { live, usable, granted, limit, warn_at } => {
                let over = usable > 0 && f64::from(live) / f64::from(usable) > warn_at;
                if !over {
                    self.budget_over = 0;
                    self.budget_sent = false;
                } else {
                    self.budget_over = self.budget_over.saturating_add(1);
                    // Above for longer than one reading: a burst between two readings is not an alert.
                    if self.budget_over >= 2 && !self.budget_sent {
                        let pct = f64::from(live) * 100.0 / f64::from(usable);
                        let a = Alert::new(
                            EventKind::BudgetHigh,
                            None,
                            format!("live use {live} of {usable} usable connections ({pct:.0}%) is above warn_at {:.0}%; {} available", warn_at * 100.0, usable.saturating_sub(live)),
                        )
                        .detail("live", live)
                        .detail("usable", usable)
                        .detail("granted", granted)
                        .detail("limit", limit)
                        .detail("available", usable.saturating_sub(live))
                        .detail("warn_at", warn_at);
                        self.budget_sent = self.offer(a, now, &mut out);
                    }
                }
            }
            Fact::Alert(a) => {
                self.offer(a, now, &mut out);
            }
        }
        out
    }

    fn transition(&mut self, t: Transition, now: Duration, out: &mut Vec<Alert>) {
        let previous = self.restarts_seen.insert(t.job.clone(), t.restarts);
        if previous.is_some_and(|p| t.restarts > p) {
            let window = self.settings.crash_loop_window;
            let times = self.restart_times.entry(t.job.clone()).or_default();
            times.push_back(now);
            while times.front().is_some_and(|&at| now.saturating_sub(at) > window) {
                times.pop_front();
            }
            let n = times.len();
            let retrying = matches!(t.to, State::Backoff | State::Starting | State::Waiting);
            if retrying && n as u32 >= self.settings.crash_loop_restarts.max(1) {
                let last = t.exit.map(|e| format!(", last {}", describe_exit(e))).unwrap_or_default();
                let mut a = Alert::new(EventKind::CrashLoop, Some(&t.job), format!("{n} restarts within {}{last}; still retrying", humantime::format_duration(window)))
                    .detail("restarts_in_window", n)
                    .detail("window_s", window.as_secs_f64())
                    .detail("restarts", t.restarts);
                if let Some(e) = t.exit {
                    a = a.detail("exit", exit_json(e));
                }
                self.offer(a, now, out);
            }
        }
        match t.to {
            State::Fatal if t.from != State::Fatal => {
                let why = t.reason.clone().unwrap_or_else(|| "start retries exhausted".into());
                let mut a = Alert::new(EventKind::Fatal, Some(&t.job), why.clone()).detail("restarts", t.restarts).detail("reason", why);
                if let Some(e) = t.exit {
                    a = a.detail("exit", exit_json(e));
                }
                if self.offer(a, now, out) {
                    self.fatal_sent.insert(t.job.clone());
                }
            }
            State::Running if self.fatal_sent.remove(&t.job) => {
                let a = Alert::new(EventKind::Recovered, Some(&t.job), "running again after fatal").detail("restarts", t.restarts);
                self.recovery(a, out);
            }
            _ => {}
        }
    }

    /// Summaries whose interval ended by `now`.
    pub fn tick(&mut self, now: Duration) -> Vec<Alert> {
        let min = self.settings.min_interval;
        self.limiter.due(now, min)
    }

    /// When `tick` has something next.
    pub fn next_due(&self) -> Option<Duration> {
        self.limiter.next_due(self.settings.min_interval)
    }

    /// Alerts held back so far, by event (for `/metrics`).
    pub fn suppressed(&self) -> &BTreeMap<EventKind, u64> {
        &self.limiter.suppressed_total
    }

    /// Through the event filter and the limiter; true when it goes out.
    fn offer(&mut self, a: Alert, now: Duration, out: &mut Vec<Alert>) -> bool {
        if !a.kind.selected_by(&self.settings.events) {
            return false;
        }
        match self.limiter.offer(a, now, self.settings.min_interval) {
            Some(a) => {
                out.push(a);
                true
            }
            None => false,
        }
    }

    /// A recovery is paired with a problem that was sent: it bypasses the limiter.
    fn recovery(&mut self, a: Alert, out: &mut Vec<Alert>) {
        if a.kind.selected_by(&self.settings.events) {
            out.push(a);
        }
    }
}

type Key = (EventKind, Option<String>);

#[derive(Debug, Clone)]
struct Slot {
    last_sent: Duration,
    suppressed: u64,
    /// The latest held-back alert: the summary tells what it was.
    latest: Option<Alert>,
}

/// Per (event, job): one alert per `min_interval`, then one summary of the rest.
#[derive(Debug, Default)]
pub struct Limiter {
    slots: HashMap<Key, Slot>,
    pub suppressed_total: BTreeMap<EventKind, u64>,
}

impl Limiter {
    /// The alert if it goes out now (carrying `suppressed` when it also ends a quiet interval).
    pub fn offer(&mut self, mut a: Alert, now: Duration, min_interval: Duration) -> Option<Alert> {
        let key = (a.kind, a.job.clone());
        match self.slots.get_mut(&key) {
            None => {
                self.slots.insert(key, Slot { last_sent: now, suppressed: 0, latest: None });
                Some(a)
            }
            Some(s) if now.saturating_sub(s.last_sent) >= min_interval => {
                // The interval is over: this alert goes out and carries what was held back.
                if s.suppressed > 0 {
                    a.details.insert("suppressed".into(), s.suppressed.into());
                }
                *s = Slot { last_sent: now, suppressed: 0, latest: None };
                Some(a)
            }
            Some(s) => {
                s.suppressed += 1;
                s.latest = Some(a);
                *self.suppressed_total.entry(key.0).or_default() += 1;
                None
            }
        }
    }

    /// One summary per slot whose interval ended with alerts held back. A summary counts as a
    /// send: the next alert of that (event, job) waits another interval. Idle slots are dropped.
    pub fn due(&mut self, now: Duration, min_interval: Duration) -> Vec<Alert> {
        let mut out = Vec::new();
        self.slots.retain(|_, s| {
            let over = now.saturating_sub(s.last_sent) >= min_interval;
            if over && s.suppressed > 0 {
                if let Some(latest) = s.latest.take() {
                    out.push(summary(latest, s.suppressed, min_interval));
                }
                *s = Slot { last_sent: now, suppressed: 0, latest: None };
                true
            } else {
                !over
            }
        });
        out.sort_by(|a, b| (a.kind, &a.job).cmp(&(b.kind, &b.job)));
        out
    }

    pub fn next_due(&self, min_interval: Duration) -> Option<Duration> {
        self.slots.values().filter(|s| s.suppressed > 0).map(|s| s.last_sent + min_interval).min()
    }
}

fn summary(latest: Alert, n: u64, min_interval: Duration) -> Alert {
    let job = latest.job.as_deref().map(|j| format!(" for {j}")).unwrap_or_default();
    let mut a = Alert {
        message: format!(
            "{n} more {} alert(s){job} suppressed in the last {} (min_interval); latest: {}",
            latest.kind,
            humantime::format_duration(min_interval),
            latest.message
        ),
        ..latest
    };
    a.details.insert("suppressed".into(), n.into());
    a.details.insert("summary".into(), true.into());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn t(job: &str, from: State, to: State, restarts: u32) -> Fact {
        Fact::Transition(Transition { job: job.into(), from, to, exit: Some(Exit::Code(1)), restarts, reason: None })
    }

    fn decider(min_interval: Duration) -> Decider {
        Decider::new(Settings { min_interval, crash_loop_restarts: 3, crash_loop_window: 60 * S, ..Settings::default() })
    }

    #[test]
    fn limiter_one_per_interval_then_one_summary() {
        let mut l = Limiter::default();
        let min = 10 * S;
        let a = |m: &str| Alert::new(EventKind::Fatal, Some("j"), m);
        assert!(l.offer(a("1"), Duration::ZERO, min).is_some());
        for i in 1..10 {
            assert!(l.offer(a("x"), i * S, min).is_none());
        }
        assert_eq!(l.next_due(min), Some(10 * S));
        assert!(l.due(9 * S, min).is_empty());
        let sums = l.due(10 * S, min);
        assert_eq!(sums.len(), 1);
        assert_eq!(sums[0].details["suppressed"], 9);
        assert_eq!(sums[0].details["summary"], true);
        // The summary counted as a send: the next one waits a whole interval again.
        assert!(l.offer(a("y"), 11 * S, min).is_none());
        assert!(l.due(19 * S, min).is_empty());
        assert_eq!(l.due(20 * S, min).len(), 1);
        // Quiet since: the slot is dropped, and the next alert goes out at once.
        assert!(l.due(31 * S, min).is_empty());
        assert!(l.slots.is_empty());
        assert!(l.offer(a("z"), 32 * S, min).is_some());
        assert_eq!(l.suppressed_total[&EventKind::Fatal], 10);
    }

    #[test]
    fn limiter_keys_are_event_and_job() {
        let mut l = Limiter::default();
        let min = 10 * S;
        assert!(l.offer(Alert::new(EventKind::Fatal, Some("a"), ""), S, min).is_some());
        assert!(l.offer(Alert::new(EventKind::Fatal, Some("b"), ""), S, min).is_some());
        assert!(l.offer(Alert::new(EventKind::CrashLoop, Some("a"), ""), S, min).is_some());
        assert!(l.offer(Alert::new(EventKind::DatabaseDown, None, ""), S, min).is_some());
        assert!(l.offer(Alert::new(EventKind::Fatal, Some("a"), ""), S, min).is_none());
    }

    #[test]
    fn a_late_alert_carries_the_count_when_no_tick_ran() {
        let mut l = Limiter::default();
        let min = 10 * S;
        let a = || Alert::new(EventKind::Fatal, Some("j"), "m");
        l.offer(a(), Duration::ZERO, min);
        l.offer(a(), S, min);
        let late = l.offer(a(), 15 * S, min).unwrap();
        assert_eq!(late.details["suppressed"], 1);
        assert!(l.due(100 * S, min).is_empty());
    }

    #[test]
    fn zero_interval_sends_everything() {
        let mut l = Limiter::default();
        for i in 0..5 {
            assert!(l.offer(Alert::new(EventKind::Fatal, None, ""), i * S, Duration::ZERO).is_some());
        }
    }

    /// The flood bound of SPEC §9: a crash loop of 1,000 restarts, one per 100 ms, sends at
    /// most one alert per min_interval (plus the first) however long it lasts.
    #[test]
    fn a_thousand_restarts_send_a_handful() {
        let min = 30 * S;
        let mut d = decider(min);
        let mut sent = Vec::new();
        let mut now = Duration::ZERO;
        d.fact(t("j", State::Stopped, State::Starting, 0), now);
        for r in 1..=1000u32 {
            now += Duration::from_millis(100);
            sent.extend(d.fact(t("j", State::Starting, State::Backoff, r), now));
            sent.extend(d.tick(now));
            sent.extend(d.fact(t("j", State::Backoff, State::Starting, r), now));
        }
        now += min;
        sent.extend(d.tick(now));
        // 100 s of crash loop, 30 s interval: the first, then a summary each interval.
        assert!(sent.len() <= 1 + 100 / 30 + 1, "{}", sent.len());
        assert!(sent.iter().all(|a| a.kind == EventKind::CrashLoop));
        let reported: u64 = sent.iter().map(|a| 1 + a.details.get("suppressed").and_then(|v| v.as_u64()).unwrap_or(0)).sum::<u64>()
            - sent.iter().filter(|a| a.details.contains_key("summary")).count() as u64;
        // Every crash-loop event (restart 3 onwards) is either sent or counted in a summary.
        assert_eq!(reported, 998);
    }

    #[test]
    fn crash_loop_needs_n_restarts_in_the_window_while_retrying() {
        let mut d = decider(Duration::ZERO);
        d.fact(t("j", State::Stopped, State::Starting, 0), Duration::ZERO);
        assert!(d.fact(t("j", State::Starting, State::Backoff, 1), 10 * S).is_empty());
        assert!(d.fact(t("j", State::Starting, State::Backoff, 2), 20 * S).is_empty());
        // The first restart fell out of the 60 s window: only 2 in it.
        assert!(d.fact(t("j", State::Starting, State::Backoff, 3), 71 * S).is_empty());
        let a = d.fact(t("j", State::Starting, State::Backoff, 4), 72 * S);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, EventKind::CrashLoop);
        assert_eq!(a[0].details["restarts_in_window"], 3);
        assert_eq!(a[0].details["exit"]["code"], 1);
        // Restarts by a state not retrying (a stop) are not a loop.
        assert!(d.fact(t("j", State::Running, State::Stopping, 5), 73 * S).is_empty());
        // Transitions without a new restart never count.
        assert!(d.fact(t("j", State::Backoff, State::Starting, 5), 74 * S).is_empty());
    }

    #[test]
    fn fatal_then_recovered_once() {
        let mut d = decider(60 * S);
        d.fact(t("j", State::Stopped, State::Starting, 0), Duration::ZERO);
        let a = d.fact(t("j", State::Backoff, State::Fatal, 2), S);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, EventKind::Fatal);
        assert_eq!(a[0].details["exit"], json!({"code": 1, "signal": null}));
        let r = d.fact(t("j", State::Starting, State::Running, 0), 2 * S);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].kind, EventKind::Recovered);
        // Once: running again later is not another recovery.
        assert!(d.fact(t("j", State::Starting, State::Running, 0), 3 * S).is_empty());
        // A second fatal within min_interval is held back, and so is its recovery.
        assert!(d.fact(t("j", State::Backoff, State::Fatal, 2), 4 * S).is_empty());
        assert!(d.fact(t("j", State::Starting, State::Running, 0), 5 * S).is_empty());
        let sums = d.tick(61 * S);
        assert_eq!(sums.len(), 1);
        assert_eq!(sums[0].details["suppressed"], 1);
    }

    #[test]
    fn signals_are_named_in_details() {
        let mut d = decider(Duration::ZERO);
        let f = Fact::Transition(Transition { job: "j".into(), from: State::Backoff, to: State::Fatal, exit: Some(Exit::Signal(9)), restarts: 1, reason: Some("killed".into()) });
        let a = d.fact(f, S);
        assert_eq!(a[0].details["exit"], json!({"code": null, "signal": 9, "signal_name": "SIGKILL"}));
        assert_eq!(a[0].message, "killed");
    }

    #[test]
    fn database_down_up_edges() {
        let mut d = decider(60 * S);
        let db = |healthy: bool| Fact::Database { healthy, error: (!healthy).then(|| "connection refused".into()), latency_ms: healthy.then_some(1.5) };
        assert!(d.fact(db(true), Duration::ZERO).is_empty());
        let down = d.fact(db(false), S);
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].kind, EventKind::DatabaseDown);
        assert_eq!(down[0].details["error"], "connection refused");
        assert!(d.fact(db(false), 2 * S).is_empty());
        let up = d.fact(db(true), 3 * S);
        assert_eq!(up.len(), 1);
        assert_eq!(up[0].kind, EventKind::DatabaseUp);
        // Flapping within min_interval: the second down is held back, so no up follows it.
        assert!(d.fact(db(false), 4 * S).is_empty());
        assert!(d.fact(db(true), 5 * S).is_empty());
        // First check failing at startup is a down.
        let mut d = decider(60 * S);
        assert_eq!(d.fact(db(false), Duration::ZERO).len(), 1);
    }

    #[test]
    fn budget_high_after_two_readings_once_per_episode() {
        let mut d = decider(Duration::ZERO);
        let b = |live: u32| Fact::Budget { live, usable: 50, granted: 50, limit: 60, warn_at: 0.9 };
        assert!(d.fact(b(46), S).is_empty());
        let a = d.fact(b(47), 2 * S);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].details["live"], 47);
        assert_eq!(a[0].details["available"], 3);
        assert!(d.fact(b(48), 3 * S).is_empty());
        // 45/50 is exactly 90%: not above.
        assert!(d.fact(b(45), 4 * S).is_empty());
        assert!(d.fact(b(49), 5 * S).is_empty());
        assert_eq!(d.fact(b(49), 6 * S).len(), 1);
        // usable 0: nothing to compare with.
        assert!(d.fact(Fact::Budget { live: 3, usable: 0, granted: 0, limit: 0, warn_at: 0.8 }, 7 * S).is_empty());
    }

    #[test]
    fn events_filter_applies_to_everything_but_the_test() {
        let mut d = Decider::new(Settings { events: [EventKind::DatabaseDown].into(), ..Settings::default() });
        assert!(d.fact(t("j", State::Backoff, State::Fatal, 1), S).is_empty());
        assert!(d.fact(Fact::Alert(Alert::new(EventKind::Stalled, Some("j"), "")), S).is_empty());
        assert_eq!(d.fact(Fact::Alert(Alert::new(EventKind::Test, None, "")), S).len(), 1);
        assert_eq!(d.fact(Fact::Database { healthy: false, error: None, latency_ms: None }, S).len(), 1);
    }

    /// Every (from, to) pair: only the documented ones alert.
    #[test]
    fn every_transition_pair() {
        for from in State::ALL {
            for to in State::ALL {
                let mut d = decider(Duration::ZERO);
                d.fatal_sent.insert("j".into());
                let got: Vec<EventKind> = d.fact(t("j", from, to, 0), S).into_iter().map(|a| a.kind).collect();
                let want = match to {
                    State::Fatal if from != State::Fatal => vec![EventKind::Fatal],
                    State::Running => vec![EventKind::Recovered],
                    _ => vec![],
                };
                assert_eq!(got, want, "{from:?} -> {to:?}");
            }
        }
    }
}
