//! Alerts that reach a person (SPEC §9 `[alerts]`): a webhook (Slack-compatible JSON) and/or a
//! command with the JSON on stdin, on `fatal`, `crash_loop`, `unhealthy`/`stalled`/`memory`,
//! `budget_high`, `database_down`/`database_up`, `schedule_missed` and a fatal job's recovery.
//!
//! ```text
//!  actor ──Hook (try_send, bounded; never awaits)──▶ router task ──bounded queue──▶ webhook worker ──▶ POST
//!    ▲                                                 │ Decider (pure: which facts     └──▶ command worker
//!    │                                                 │ are alerts, min_interval)            │
//!    └──── Event::Alert(ActorCmd::Run/Kill) ◀─────────────────────────────────────────────────┘
//!          (the actor spawns the command and its one reaper collects it)
//! ```
//!
//! - [`event`]: the event kinds, [`Alert`], the JSON.
//! - [`decide`]: pure decisions (crash-loop window, episodes, recoveries, the flood limiter).
//! - [`task`]: the router and the delivery workers (retries with backoff, drops), off the actor.
//! - [`webhook`], [`command`]: one delivery each. [`stats`]: the `/metrics` counters.
//!
//! **For other parts of corral** (the watchdog's `unhealthy`/`stalled`/`memory` restarts, the
//! scheduler's `schedule_missed`): build an [`Alert`] and hand it to the actor's [`Hook`]:
//!
//! ```ignore
//! self.alerts.alert(Alert::new(EventKind::Stalled, Some(&name), "no output line for 10m: restarted")
//!     .detail("stall_after_s", 600));
//! ```
//!
//! The hook adds the job's redacted stderr tail for job events (`EventKind::wants_stderr`),
//! applies `events` and `min_interval`, and never blocks: when its queue is full the fact is
//! dropped and counted (`corral_alerts_dropped_total{reason="overflow"}`).

pub mod command;
pub mod decide;
pub mod event;
pub mod stats;
pub mod task;
pub mod webhook;

use tokio::sync::mpsc;

pub use command::{ActorCmd, Children};
pub use decide::{Fact, Transition};
pub use event::{Alert, EventKind, Origin};
pub use task::{spawn, test_alert, Context, Drain};

use crate::config::AlertsConfig;
use crate::job::{Job, State};

/// What the router receives.
pub enum Msg {
    Fact(Fact),
    /// `[alerts]` after a reload (None: removed).
    Config(Option<AlertsConfig>),
}

/// Facts the actor may queue before the router takes them; more are dropped and counted.
pub const HOOK_QUEUE: usize = 4096;

/// The actor's end: cheap, synchronous, never waits for delivery.
pub struct Hook {
    tx: Option<mpsc::Sender<Msg>>,
    enabled: bool,
    budget: bool,
}

impl Hook {
    /// No alerts at all (tests, tools).
    pub fn disabled() -> Hook {
        Hook { tx: None, enabled: false, budget: false }
    }

    fn new(tx: mpsc::Sender<Msg>, cfg: Option<&AlertsConfig>) -> Hook {
        let mut h = Hook { tx: Some(tx), enabled: false, budget: false };
        h.set(cfg);
        h
    }

    fn set(&mut self, cfg: Option<&AlertsConfig>) {
        self.enabled = cfg.is_some();
        self.budget = cfg.is_some_and(|c| c.events.contains(&EventKind::BudgetHigh));
    }

    /// A reload: the router takes the new section; alerts on or off from now on.
    pub fn reconfigure(&mut self, cfg: Option<&AlertsConfig>) {
        self.set(cfg);
        self.send(Msg::Config(cfg.cloned()));
    }

    /// Whether budget readings are wanted (`budget_high` selected): saves building them.
    pub fn wants_budget(&self) -> bool {
        self.budget
    }

    /// An alert built elsewhere (watchdog, scheduler): filtered and rate-limited by the router.
    pub fn alert(&self, alert: Alert) {
        if self.enabled {
            self.send(Msg::Fact(Fact::Alert(alert)));
        }
    }

    pub fn fact(&self, fact: Fact) {
        if self.enabled {
            self.send(Msg::Fact(fact));
        }
    }

    /// A job changed state (the router decides about fatal, crash loops, recoveries).
    pub fn transition(&self, job: &str, from: State, to: State, m: &Job) {
        if !self.enabled {
            return;
        }
        self.fact(Fact::Transition(Transition { job: job.to_string(), from, to, exit: m.last_exit, restarts: m.restarts, reason: m.reason.clone() }));
    }

    /// The database's health changed (an edge: the first failure of a streak, or the first
    /// success after one).
    pub fn database(&self, healthy: bool, error: Option<&str>, latency_ms: Option<f64>) {
        self.fact(Fact::Database { healthy, error: error.map(str::to_string), latency_ms });
    }

    fn send(&self, msg: Msg) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(msg).is_err() {
            stats::dropped("hook", "overflow");
        }
    }
}
