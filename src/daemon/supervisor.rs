//! The supervisor actor: the one owner of the job table (`jobs::JobTable`) and of every
//! concern's state (ARCHITECTURE.md).
//!
//! Everything that changes a job arrives here as an [`Event`] (control
//! requests with a reply channel, timers, config changes, readings) or a signal, is fed
//! to the pure state machine, and the resulting effects are executed here. The
//! decisions are the concerns': admission (`admission::decide`), the verbs' answers
//! (`control`), reload (`reload`: the reads, `update_table`), the fleet link (`fleet::Link`),
//! the budget (`budget::Budget`) and what it changes for the jobs (`grants`, returning
//! `grants::Effects`), `depends_on` (`dependencies`), shutdown (`shutdown`). Reaping happens inside this task
//! too (on SIGCHLD), so a spawned pid is always registered before its exit can be collected.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use std::sync::Arc;


use super::budget::Budget;
use super::fleet::{FleetCmd, FleetReport};
use super::health::{self, DbReport, ProbeCmd};
use super::history::{History, Kind};
use super::notify::Notifier;
use crate::config::{self, Config, OrphanPolicy};
use super::schedule::{Do, Schedules};
use crate::db::fleet::{Coordinator, SyncRequest};
use crate::db::pooler::PgBouncerAdmin;
use crate::db::Probe;
use super::admission;
use super::control;
use super::grants;
use super::reload::{self, Loaded};
use super::reaping;
use super::shutdown;
use super::dependencies;
use super::watching::{self, Action, WatchMsg};
use crate::job::machine::Cause;
use crate::watchdog::memory::Sample;
use super::database;
use super::starting::{self, Start};
use super::views::Views;
use super::jobs::{self, JobRt, JobTable};
use crate::job::machine::{self, describe_exit};
use crate::job::{Effect, Input, State, TimerKind};
use crate::process::output::{self, LogStore};
use crate::process::scan::Snapshot;
use crate::process::{kill, spawn};
use crate::protocol::{
    ErrorKind, ReloadReport, Reply, Request, Response,
};


use super::shutdown::ORPHAN_GRACE;
/// At exit, how long job output readers get to reach EOF.
const OUTPUT_DRAIN: Duration = Duration::from_millis(500);
/// Editors save in bursts (write temp, rename, chmod): wait for quiet.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);

pub use super::event::{Event, EventTx};


pub struct Supervisor {
    config: Config,
    config_error: Option<String>,
    jobs: JobTable,
    /// The pid → job map for reaping, and the reaped/killed counters.
    reaping: reaping::Reaping,
    tx: EventTx,
    logs: LogStore,
    started: Instant,
    started_wall: std::time::SystemTime,
    /// The dashboard's past (latency, recent events); fed at the hook points below.
    history: History,
    waiters: control::Waiters,
    shutdown: shutdown::Shutdown,
    /// Admission's own state (the duplicate scan cache).
    starter: starting::Starter,
    reload_generation: u64,
    reloads: reload::Reloads,
    budget: Option<Budget>,
    probe: Option<Arc<Probe>>,
    /// PgBouncer's admin console, with `pooler_admin_url`.
    pooler_admin: Option<Arc<PgBouncerAdmin>>,
    probe_cmd: Option<mpsc::UnboundedSender<ProbeCmd>>,
    queue: VecDeque<(String, Input)>,
    /// systemd's notification socket (SPEC §9); disabled unless set.
    notify: Notifier,
    /// Fleet scope: the fleet task's channel, its schedule, what it was last told.
    fleet: super::fleet::Link,
    /// How soon to read again while connections given back are unconfirmed.
    confirm: grants::Confirm,
    /// Scheduled jobs: their trackers and wakes (daemon/schedule.rs).
    schedules: Schedules,
    /// `[alerts]` (SPEC §9): facts go out through this hook and never wait for delivery.
    alerts: crate::alerts::Hook,
    /// Alert commands this actor spawned; the reaper hands them their exit.
    alert_children: crate::alerts::Children,
    /// Probes, stall timers, tree memory (`crate::watchdog`), and the dependency bookkeeping.
    watchdog: crate::watchdog::Watchdog,
    deps: super::dependencies::Dependencies,
}

impl Supervisor {
    pub fn new(config: Config, tx: EventTx, logs: LogStore) -> Supervisor {
        let jobs = config.jobs.values().map(|c| (c.name.clone(), JobRt::new(c.clone()))).collect();
        let schedules = Schedules::new(&config);
        let (budget, probe, pooler_admin) = match database::open(&config) {
            Some(db) => (Some(db.budget), db.probe, db.pooler_admin),
            None => (None, None, None),
        };
        Supervisor {
            config,
            config_error: None,
            jobs,
            reaping: Default::default(),
            tx,
            logs,
            started: Instant::now(),
            started_wall: std::time::SystemTime::now(),
            history: History::default(),
            waiters: control::Waiters::default(),
            shutdown: shutdown::Shutdown::default(),
            starter: Default::default(),
            reload_generation: 0,
            reloads: reload::Reloads::default(),
            budget,
            probe,
            pooler_admin,
            probe_cmd: None,
            queue: VecDeque::new(),
            notify: Notifier::default(),
            fleet: Default::default(),
            confirm: Default::default(),
            schedules,
            alerts: crate::alerts::Hook::disabled(),
            alert_children: crate::alerts::Children::default(),
            watchdog: Default::default(),
            deps: Default::default(),
        }
    }

    /// Fleet scope: join the fleet under this corral's identity (`database::fleet_identity`).
    pub fn with_fleet_identity(mut self, socket: &std::path::Path) -> Supervisor {
        let (Some(db), Some(budget)) = (self.config.database.as_ref(), self.budget.as_mut()) else { return self };
        let Some(fleet) = budget.fleet.as_mut() else { return self };
        let ident = database::fleet_identity(&self.config.budget.service, socket);
        fleet.member = ident.id.clone();
        // The coordination shares corral's one connection (SPEC §5: one own connection).
        match &self.probe {
            Some(probe) => self.fleet = super::fleet::Link::new(Coordinator::new(probe.clone(), ident, db.health_timeout)),
            None => {
                // Shown by health and budget: jobs that need a grant wait for good.
                let why = budget.status.error.clone().unwrap_or_else(|| "no database url".into());
                error!("fleet coordination disabled: {why}");
                fleet.last_error = Some(format!("fleet coordination disabled: {why}"));
            }
        }
        self
    }

    /// Send alerts through `hook` (SPEC §9).
    pub fn with_alerts(mut self, hook: crate::alerts::Hook) -> Supervisor {
        self.alerts = hook;
        self
    }

    /// Tell systemd about reloads and shutdown through `notify`.
    pub fn with_notifier(mut self, notify: Notifier) -> Supervisor {
        self.notify = notify;
        self
    }

    /// Run until shutdown; returns the process exit code.
    pub async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>, ready: impl FnOnce()) -> i32 {
        // Before any job starts: without these corral could neither reap nor stop, so it refuses to run.
        let handlers = (|| Ok::<_, std::io::Error>((signal(SignalKind::child())?, signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?, signal(SignalKind::hangup())?)))();
        let (mut sigchld, mut sigterm, mut sigint, mut sighup) = match handlers {
            Ok(h) => h,
            Err(e) => {
                error!("cannot install signal handlers ({e}): not starting any job");
                return 1;
            }
        };

        self.start_up().await;
        self.arm_sweep();
        ready();
        let mut interrupts = 0;
        loop {
            tokio::select! {
                // Not biased: under a crash storm SIGCHLD is nearly always
                // pending and would starve timers and control requests.
                _ = sigchld.recv() => self.reap(),
                _ = sigterm.recv() => self.begin_shutdown("SIGTERM"),
                _ = sigint.recv() => {
                    interrupts += 1;
                    if interrupts > 1 {
                        warn!("second SIGINT: killing all jobs now");
                        self.kill_all_now();
                    } else {
                        self.begin_shutdown("SIGINT");
                    }
                }
                _ = sighup.recv() => {
                    info!("SIGHUP: reloading config");
                    self.ask_reload(true, None);
                }
                Some(ev) = events.recv() => {
                    self.handle(ev);
                    // Drain what is already queued (bounded) before the next select.
                    for _ in 0..256 {
                        match events.try_recv() {
                            Ok(ev) => self.handle(ev),
                            Err(_) => break,
                        }
                    }
                }
            }
            let (jobs, budget, logs) = (&self.jobs, self.budget.as_ref(), &self.logs);
            for (reply, resp) in self.waiters.settle(jobs, Instant::now(), |n| jobs::job_status(jobs, budget, logs, n)) {
                let _ = reply.send(resp);
            }
            if self.shutdown.over(&self.jobs) {
                break;
            }
        }
        self.shutdown.finish(self.config.supervisor.orphans, self.reaping.own_pid);
        if let Some(cmd) = self.fleet.leave() {
            shutdown::leave_fleet(cmd).await;
        }
        // Jobs and orphans are gone: print what they wrote last before the
        // runtime (and with it the reader tasks) is dropped.
        self.logs.drain(OUTPUT_DRAIN).await;
        0
    }

    /// Before the loop: reap what PID 1 inherited, take the first database reading and start
    /// the probe task, join the fleet, start the autostart jobs and arm the schedules.
    async fn start_up(&mut self) {
        // Children that exited before our handler existed (e.g. PID 1 inheriting zombies).
        self.reap();
        if let (Some(probe), Some(db)) = (self.probe.clone(), self.config.database.clone()) {
            // corral opens its own connection first and keeps it (SPEC §5), and
            // knows the server's limit before granting anything.
            let readers = health::Readers { probe, admin: self.pooler_admin.clone() };
            let report = health::full_check(&readers, db.health_timeout).await;
            self.on_db(report);
            self.probe_cmd = Some(health::spawn(
                readers,
                db.health_interval,
                self.config.budget.rebalance_interval,
                db.health_timeout,
                self.tx.clone(),
            ));
        }
        // A scheduled job's autostart arms its schedule instead (below).
        let autostart: Vec<String> = self.jobs.iter().filter(|(_, j)| j.cfg.autostart && j.cfg.schedule.is_none()).map(|(n, _)| n.clone()).collect();
        for name in &autostart {
            if let Some(j) = self.jobs.get_mut(name) {
                j.start_pending = true;
            }
        }
        if let (Some(budget), Some(db)) = (self.budget.as_ref(), self.config.database.as_ref()) {
            // Join the fleet before starting anything: autostart jobs ask for their grants and
            // locks in this first sync.
            let first = budget.fleet_request(&self.jobs, Instant::now());
            if let Some(report) = self.fleet.join(&first, db.health_timeout, self.tx.clone()).await {
                if let Err(e) = &report.result {
                    error!("cannot join the fleet yet (jobs needing a grant or a fleet lock wait): {e}");
                }
                self.on_fleet(report);
            }
        }
        for name in autostart {
            if let Some(j) = self.jobs.get_mut(&name) {
                j.start_pending = false;
            }
            self.feed(&name, Input::Start);
        }
        let scheduled: Vec<String> = self.jobs.iter().filter(|(_, j)| j.cfg.autostart && j.cfg.schedule.is_some()).map(|(n, _)| n.clone()).collect();
        for name in scheduled {
            let dos = self.schedules.arm(&name, true);
            self.sched_do(dos, false);
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Request(req, reply) => self.request(req, reply),
            Event::Timer { job, kind, epoch } => self.feed(&job, Input::Timer { kind, epoch }),
            Event::KillGroup { pgid } => {
                let live_group = self.jobs.values().any(|j| j.m.pid == Some(pgid));
                if !live_group && kill::group_alive(pgid) {
                    warn!(pgid, "process group outlived its job's stop grace: SIGKILL");
                    let _ = kill::signal_group(pgid, Signal::SIGKILL);
                }
            }
            Event::KillPids { pids } => {
                for pid in pids {
                    if !self.reaping.is_job(pid) {
                        let _ = kill::signal_pid(pid, Signal::SIGKILL);
                    }
                }
            }
            Event::ConfigFileChanged => {
                self.reload_generation += 1;
                let generation = self.reload_generation;
                self.after(RELOAD_DEBOUNCE, Event::ReloadDebounced { generation });
            }
            Event::ReloadDebounced { generation } => {
                if generation == self.reload_generation {
                    info!("config file changed: reloading");
                    self.ask_reload(true, None);
                }
            }
            Event::ConfigLoaded(result) => self.config_loaded(*result),
            Event::Sweep => {
                self.sweep();
                self.arm_sweep();
            }
            Event::Db(report) => self.on_db(report),
            Event::SweepBudget => self.rebalance(),
            Event::HealthAnswer(reply) => {
                let _ = reply.send(Response::ok(Reply::Health(self.views().health())));
            }
            Event::Snapshot { history, reply } => {
                let _ = reply.send(Box::new(self.views().snapshot(history, Instant::now())));
            }
            Event::SweepNow => {
                if !self.reaping.swept_within(ORPHAN_GRACE, Instant::now()) {
                    self.sweep();
                }
            }
            Event::FleetDue { epoch } => {
                if self.fleet.is_current(epoch) {
                    self.request_sync();
                }
            }
            Event::Fleet(report) => self.on_fleet(report),
            Event::Watch { job, pid, msg } => self.on_watch(job, pid, msg),
            Event::MemorySamples(samples) => self.on_memory(samples),
            Event::FleetCheck => self.check_fleet_locks(),
            Event::ScheduleWake { job, gen } => {
                let dos = self.schedules.wake(&job, gen);
                self.sched_do(dos, false);
            }
            Event::Alert(cmd) => self.alert_children.handle(cmd, &self.logs, self.config.supervisor.log_format),
            Event::QuotaSignalDue { job, pid } => {
                if let Some((pid, sig)) = grants::quota_signal_due(&mut self.jobs, &job, pid, Instant::now()) {
                    let _ = kill::signal_pid(pid, sig);
                }
            }
        }
    }

    // ----- the state machine and its effects -----

    /// Feed an input to a job and execute the effects, including inputs those
    /// effects produce (spawn outcomes), breadth first.
    fn feed(&mut self, name: &str, input: Input) {
        self.queue.push_back((name.to_string(), input));
        while let Some((name, input)) = self.queue.pop_front() {
            let Some(job) = self.jobs.get_mut(&name) else { continue };
            let before = job.m.state;
            let effects = machine::step(&mut job.m, &job.policy, input, fastrand::f64());
            let after = job.m.state;
            if before != after {
                self.log_transition(&name, before, after);
                self.notify.state_changed();
                if let Some(j) = self.jobs.get(&name) {
                    self.alerts.transition(&name, before, after, &j.m);
                }
            }
            for effect in effects {
                self.execute(&name, effect);
            }
            if let (true, Some(job)) = (self.schedules.contains(&name), self.jobs.get(&name)) {
                let dos = self.schedules.observe(&name, &job.m, &job.policy);
                self.sched_do(dos, true);
            }
            self.drop_if_removed(&name);
        }
        self.after_feed();
    }

    fn execute(&mut self, name: &str, effect: Effect) {
        match effect {
            Effect::Spawn => {
                let input = self.try_spawn(name);
                self.queue.push_back((name.to_string(), input));
            }
            Effect::Signal { pgid, signal } => {
                if let Err(e) = kill::signal_group(pgid, signal) {
                    warn!(job = name, pgid, "cannot signal process group: {e}");
                }
                if signal == Signal::SIGKILL {
                    warn!(job = name, "stop_timeout passed: sent SIGKILL to process group {pgid}");
                }
            }
            Effect::ArmTimer { kind, after, epoch } => {
                self.after(after, Event::Timer { job: name.to_string(), kind, epoch });
            }
            Effect::Release => {
                if let Some(job) = self.jobs.get_mut(name) {
                    job.lock = None;
                    job.started_at = None;
                }
                self.rebalance();
            }
            Effect::ReapGroup { pgid } => {
                if self.config.supervisor.orphans == OrphanPolicy::Kill && kill::group_alive(pgid) {
                    info!(job = name, "terminating what is left of process group {pgid}");
                    let _ = kill::signal_group(pgid, Signal::SIGTERM);
                    self.after(ORPHAN_GRACE, Event::KillGroup { pgid });
                }
            }
        }
    }

    /// A start the machine asked for: `starting` decides (and spawns when admitted); the
    /// actor carries out what reaches beyond the job. Returns the machine's next input.
    fn try_spawn(&mut self, name: &str) -> Input {
        let ctx = starting::Ctx {
            lock_dir: &self.config.supervisor.lock_dir,
            service: &self.config.budget.service,
            orphans: self.config.supervisor.orphans,
            shutting_down: self.shutdown.requested,
            dependency: dependencies::hold(&self.jobs, &self.watchdog, name),
        };
        match self.starter.admit(&mut self.jobs, self.budget.as_mut(), name, &ctx, Instant::now()) {
            Start::Fail(error) => Input::SpawnFailed { error },
            Start::Hold { tell, hold } => {
                self.deliver(tell);
                self.execute_hold(name, &hold);
                Input::Blocked { reason: hold.reason().to_string() }
            }
            Start::Spawn { tell, quota, mut env } => {
                self.deliver(tell);
                if let Some(at) = self.schedules.scheduled_at(name) {
                    env.push(("CORRAL_SCHEDULED_AT".into(), at));
                }
                match starting::spawn(&mut self.jobs, self.budget.as_mut(), name, quota, &env, Instant::now()) {
                    Ok(child) => self.spawned(name, child, &env),
                    Err(error) => {
                        error!(job = name, "{error}");
                        Input::SpawnFailed { error }
                    }
                }
            }
        }
    }

    /// What a held-back start asks of the others.
    fn execute_hold(&mut self, name: &str, hold: &admission::Hold) {
        if hold.sweep_now {
            let _ = self.tx.send(Event::SweepNow);
        }
        for (pid, sig) in &hold.kill {
            warn!(job = name, pid, "killing duplicate running outside corral");
            let _ = kill::signal_pid(*pid, *sig);
        }
        if hold.want_reading {
            self.want_reading(Instant::now());
        }
        if hold.want_sync {
            self.request_sync();
        }
    }

    /// A run began: register its pid, start its watch and the output readers.
    fn spawned(&mut self, name: &str, child: spawn::Spawned, env: &[(String, String)]) -> Input {
        self.reaping.spawned(child.pid, name);
        let lines = watching::start(&mut self.watchdog, &self.tx, name, child.pid, env, self.jobs.get(name).map(|j| &j.cfg));
        let format = self.config.supervisor.log_format;
        output::start_reader(child.stdout, name.to_string(), "stdout", format, self.logs.clone(), lines.clone());
        output::start_reader(child.stderr, name.to_string(), "stderr", format, self.logs.clone(), lines);
        Input::Spawned { pid: child.pid }
    }

    fn reap(&mut self) {
        // Probe commands' exits go to their probes, alert commands' to their worker.
        let alerts = &mut self.alert_children;
        for (name, pid, exit) in self.reaping.exits(self.watchdog.procs.reap(), |pid, exit| alerts.exited(pid, exit)) {
            self.job_exited(&name, pid, exit);
        }
    }

    fn job_exited(&mut self, name: &str, pid: i32, exit: crate::job::Exit) {
        self.watchdog.end_run(name);
        let uptime = self.jobs.get(name).and_then(|j| j.started_at).map(|t| t.elapsed()).unwrap_or_default();
        info!(job = %name, pid, uptime_s = format!("{:.1}", uptime.as_secs_f64()), "exited: {}", describe_exit(exit));
        self.history.event(now_wall(), Kind::Exit, Some(name), format!("exited: {} after {:.1}s", describe_exit(exit), uptime.as_secs_f64()));
        let ledger = self.jobs.get_mut(name).and_then(|j| j.ledger.as_mut());
        if let Some(b) = ledger {
            b.exited(Instant::now());
        }
        let ledger = self.jobs.get(name).and_then(|j| j.ledger.as_ref());
        let draining = self.budget.as_ref().is_some_and(|b| b.draining(ledger).is_some());
        if draining {
            // Its backends close right after it: a reading now hands them on.
            let at = self.confirm.restart(Instant::now(), Duration::ZERO);
            self.want_reading(at);
        }
        self.feed(name, Input::Exited(exit, uptime));
        self.rebalance();
    }

    /// The periodic sweep (SPEC §7): reap, then find processes reparented to us
    /// that belong to no live job, and terminate them when `orphans = "kill"`.
    fn sweep(&mut self) {
        let before = self.reaping.zombies_reaped;
        self.reap();
        let reaped = self.reaping.zombies_reaped - before;
        let mains = self.reaping.job_pids();
        let strays = Snapshot::take().stray_children(self.reaping.own_pid, &mains, &mains);
        let kill = self.reaping.sweep(&strays, self.config.supervisor.orphans, Instant::now());
        for pid in &kill {
            let _ = kill::signal_pid(*pid, Signal::SIGTERM);
        }
        info!(zombies_reaped = reaped, orphans_killed = kill.len(), orphans_seen = strays.len(), "sweep");
        if !kill.is_empty() {
            self.after(ORPHAN_GRACE, Event::KillPids { pids: kill });
        }
    }

    fn arm_sweep(&self) {
        self.after(self.config.supervisor.reap_interval, Event::Sweep);
    }

    fn after(&self, delay: Duration, ev: Event) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(ev);
        });
    }

    fn log_transition(&mut self, name: &str, from: State, to: State) {
        let Some(job) = self.jobs.get_mut(name) else { return };
        let Some(reason) = job.note_transition(from, to) else { return };
        self.history.transition(now_wall(), name, from, to, &reason);
        let pid = job.m.pid;
        match to {
            State::Fatal => error!(job = name, "{} -> fatal: {reason}", from.as_str()),
            State::Waiting => warn!(job = name, "{} -> waiting: {reason}", from.as_str()),
            _ => info!(job = name, pid, "{} -> {}", from.as_str(), to.as_str()),
        }
    }

    /// Execute what a schedule decided. Inside `feed` (`in_feed`), inputs join its queue. A run
    /// the schedule starts is like a restart: the duplicate scan (a read of every process) ran
    /// for the job's first start and runs again after `corral start`, not before every run.
    fn sched_do(&mut self, dos: Vec<Do>, in_feed: bool) {
        for d in dos {
            let (job, input) = match d {
                Do::Wake { job, after, gen } => {
                    self.after(after, Event::ScheduleWake { job, gen });
                    continue;
                }
                Do::Missed { job, count, why } => {
                    use crate::alerts::{Alert, EventKind};
                    let text = format!("{count} scheduled run(s) missed: {why}");
                    self.alerts.alert(Alert::new(EventKind::ScheduleMissed, Some(&job), text).detail("missed", count));
                    continue;
                }
                Do::Start(job) => (job, Input::Start),
                Do::Stop(job) => (job, Input::Stop),
                Do::Restart(job) => (job, Input::Restart),
            };
            if in_feed {
                self.queue.push_back((job, input));
            } else {
                self.feed(&job, input);
            }
        }
    }

    fn drop_if_removed(&mut self, name: &str) {
        if matches!(self.jobs.get(name), Some(j) if j.removed && !j.m.state.is_live()) {
            info!(job = name, "removed");
            self.jobs.remove(name);
        }
    }

    // ----- the watchdog and depends_on (daemon/watching.rs, daemon/dependencies.rs decide) -----

    /// A walk of the process trees (`watching::memory` keeps the RSS and picks the trees
    /// above their `memory_max`).
    fn on_memory(&mut self, samples: Vec<(String, Sample)>) {
        for (name, pid, msg) in watching::memory(&mut self.jobs, samples) {
            self.on_watch(name, pid, msg);
        }
    }

    fn on_watch(&mut self, name: String, pid: i32, msg: WatchMsg) {
        match watching::judge(&self.jobs, &self.watchdog, &name, pid, msg) {
            None => {}
            Some(Action::Ready) => self.feed(&name, Input::Ready),
            Some(Action::Failing(failing)) => {
                self.watchdog.set_failing(&name, failing);
                self.after_feed();
            }
            Some(Action::Force(cause, detail)) => self.force(&name, cause, detail),
        }
    }

    /// The one place a watchdog restart begins (alerts hook here: `cause` is typed).
    fn force(&mut self, name: &str, cause: Cause, detail: String) {
        warn!(job = %name, reason = cause.as_str(), "{detail}: restarting the job");
        self.history.event(now_wall(), Kind::Restart, Some(name), format!("{cause}: {detail}"));
        let kind = match cause {
            Cause::Unhealthy => crate::alerts::EventKind::Unhealthy,
            Cause::Stalled => crate::alerts::EventKind::Stalled,
            Cause::Memory => crate::alerts::EventKind::Memory,
        };
        self.alerts.alert(crate::alerts::Alert::new(kind, Some(name), format!("{detail}: restarted")));
        self.feed(name, Input::Force { cause, detail });
    }

    /// After inputs were fed: release dependents whose dependencies changed, and stops whose
    /// dependents are gone.
    fn after_feed(&mut self) {
        if !dependencies::any(&self.jobs) {
            return;
        }
        self.release_stops();
        for name in self.deps.released(&self.jobs, &self.watchdog) {
            let Some(epoch) = self.jobs.get(&name).map(|j| j.m.epoch) else { continue };
            self.feed(&name, Input::Timer { kind: TimerKind::RetryWait, epoch });
        }
    }

    /// Stop `names`, dependents before what they depend on (SPEC §2: jobs stop in the reverse
    /// order of `depends_on`); without dependencies, all at once.
    fn stop_in_order(&mut self, names: &[String]) {
        if !dependencies::any(&self.jobs) {
            for name in names {
                self.feed(name, Input::Stop);
            }
            return;
        }
        for name in names {
            if let Some(j) = self.jobs.get_mut(name) {
                j.stop_pending = true;
            }
        }
        self.release_stops();
    }

    fn release_stops(&mut self) {
        loop {
            let go = dependencies::next_stops(&mut self.jobs);
            if go.is_empty() {
                return;
            }
            for name in go {
                self.feed(&name, Input::Stop);
            }
        }
    }

    // ----- shutdown -----

    fn begin_shutdown(&mut self, why: &str) {
        if !self.shutdown.begin() {
            return;
        }
        info!("{why}: stopping all jobs");
        self.schedules.disarm_all();
        self.notify.stopping();
        // Stop inputs signal every group at once, so jobs stop in parallel (dependents first).
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        self.stop_in_order(&names);
    }

    fn kill_all_now(&mut self) {
        self.shutdown.begin();
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        for name in names {
            self.feed(&name, Input::Stop);
            self.feed(&name, Input::KillNow);
        }
    }

    // ----- control requests -----

    fn request(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        if let Some(refused) = control::refusal(&req, self.shutdown.requested, self.budget.is_some()) {
            let _ = reply.send(refused);
            return;
        }
        match req {
            Request::Status { jobs } => {
                let resp = match control::check_names(&self.jobs, &jobs) {
                    Ok(names) => Response::ok(Reply::Status(self.views().status(&names, Instant::now()))),
                    Err(resp) => resp,
                };
                let _ = reply.send(resp);
            }
            Request::Start { jobs } => self.verb(jobs, reply, "start"),
            Request::Stop { jobs } => self.verb(jobs, reply, "stop"),
            Request::Restart { jobs } => self.verb(jobs, reply, "restart"),
            Request::Reload { dry_run } => self.ask_reload(!dry_run, Some((reply, dry_run))),
            Request::Signal { jobs, signal } => {
                let _ = reply.send(self.signal_jobs(&jobs, &signal));
            }
            // The control server answers `logs` itself, from the log store (daemon/server.rs).
            Request::Logs { .. } => {
                let _ = reply.send(Response::err(ErrorKind::BadRequest, "logs are read from the log store, not the actor"));
            }
            Request::Budget => {
                let report = self.budget.as_ref().map(|b| b.report(&self.jobs, Instant::now())).unwrap_or_default();
                let _ = reply.send(Response::ok(Reply::Budget(Box::new(report))));
            }
            Request::Reserve { name, count, ttl_s } if self.fleet.active() => {
                let ttl = control::reservation_ttl(ttl_s);
                self.send_to_fleet(|then| FleetCmd::Reserve { name, count, ttl, reply, then });
            }
            Request::Release { name } if self.fleet.active() => {
                self.send_to_fleet(|then| FleetCmd::Release { name, reply, then });
            }
            Request::Reserve { name, count, ttl_s } => {
                // (Without a budget these were answered above.)
                let Some(budget) = self.budget.as_mut() else { return };
                let (resp, fx) = grants::reserve(budget, &mut self.jobs, &mut self.history, name, count, control::reservation_ttl(ttl_s), Instant::now());
                self.apply(fx);
                let _ = reply.send(resp);
            }
            Request::Release { name } => {
                // (Without a budget these were answered above.)
                let Some(budget) = self.budget.as_mut() else { return };
                let (resp, fx) = grants::release(budget, &mut self.jobs, &mut self.history, &name, Instant::now());
                self.apply(fx);
                let _ = reply.send(resp);
            }
            Request::Health => match &self.probe_cmd {
                Some(cmd) => {
                    if let Err(e) = cmd.send(ProbeCmd::CheckNow { then: reply }) {
                        if let ProbeCmd::CheckNow { then } = e.0 {
                            let _ = then.send(Response::ok(Reply::Health(self.views().health())));
                        }
                    }
                }
                None => {
                    let _ = reply.send(Response::ok(Reply::Health(self.views().health())));
                }
            },
            Request::History => {
                let _ = reply.send(Response::ok(Reply::History(Box::new(self.history.report(now_wall())))));
            }
            Request::Shutdown => {
                self.shutdown.wait(reply);
                self.begin_shutdown("shutdown requested");
            }
        }
    }

    /// `corral signal`: `control::signal_plan` picks the processes, the actor signals them.
    fn signal_jobs(&mut self, jobs: &[String], signal: &str) -> Response {
        let plan = match control::signal_plan(&self.jobs, jobs, signal) {
            Ok(plan) => plan,
            Err(refused) => return refused,
        };
        let mut failed = plan.refused;
        let mut signalled = Vec::new();
        for (name, pid) in plan.targets {
            match kill::signal_pid(pid, plan.signal) {
                Ok(()) => info!(job = %name, pid, "sent {}", plan.signal.as_str()),
                Err(e) => failed.push(format!("{name}: {e}")),
            }
            signalled.extend(jobs::job_status(&self.jobs, self.budget.as_ref(), &self.logs, &name));
        }
        control::signal_answer(&failed, signalled)
    }

    fn verb(&mut self, jobs: Vec<String>, reply: oneshot::Sender<Response>, verb: &'static str) {
        let names = match control::check_names(&self.jobs, &jobs) {
            Ok(n) => n,
            Err(resp) => {
                let _ = reply.send(resp);
                return;
            }
        };
        if verb == "stop" {
            for name in &names {
                self.history.event(now_wall(), Kind::Control, Some(name), "stop requested");
                // A scheduled job also stops following its schedule.
                if self.schedules.contains(name) {
                    if let Some(j) = self.jobs.get_mut(name) {
                        j.check_duplicates = false;
                    }
                    self.schedules.disarm(name);
                }
            }
            self.stop_in_order(&names);
        }
        for name in names.iter().filter(|_| verb != "stop") {
            self.history.event(now_wall(), Kind::Control, Some(name), format!("{verb} requested"));
            if self.schedules.contains(name) {
                // A scheduled job: `start` runs it now, `restart` follows the schedule again.
                if let Some(j) = self.jobs.get_mut(name) {
                    j.check_duplicates = true;
                }
                let dos = match verb {
                    "start" => self.schedules.run_now(name),
                    _ => self.schedules.ensure_armed(name),
                };
                let starts = dos.iter().any(|d| matches!(d, Do::Start(_)));
                self.sched_do(dos, false);
                if starts {
                    continue;
                }
            }
            let (input, check_duplicates) = control::verb_input(verb);
            if let Some(j) = self.jobs.get_mut(name).filter(|_| check_duplicates) {
                j.check_duplicates = true;
            }
            self.feed(name, input);
        }
        self.waiters.wait(names, reply, verb, Instant::now());
    }

    /// The read-only answers' view of this actor's state (daemon/views.rs).
    fn views(&self) -> Views<'_> {
        Views {
            jobs: &self.jobs,
            budget: self.budget.as_ref(),
            logs: &self.logs,
            schedules: &self.schedules,
            history: &self.history,
            config_error: self.config_error.as_deref(),
            config_path: &self.config.path,
            shutting_down: self.shutdown.requested,
            started: self.started,
            started_wall: self.started_wall,
            zombies_reaped: self.reaping.zombies_reaped,
            orphans_killed: self.reaping.orphans_killed,
        }
    }

    // ----- reload (SPEC §8) -----

    /// Ask for the config file to be read again; `apply` unless only dry runs ask.
    fn ask_reload(&mut self, apply: bool, reply: Option<(oneshot::Sender<Response>, bool)>) {
        if self.reloads.ask(apply, reply) {
            self.reloads.start(self.config.path.clone(), self.tx.clone(), &self.notify);
        }
    }

    fn config_loaded(&mut self, result: Result<Config, config::ConfigErrors>) {
        let ask = self.reloads.finished();
        let (dry, resp) = match reload::judge(result, &self.config, ask.apply, self.shutdown.requested) {
            Loaded::Answer(resp) => (None, *resp),
            Loaded::Rejected { errors, keep_running } => {
                if keep_running {
                    error!("config reload rejected, keeping the running config:\n{errors}");
                    self.history.event(now_wall(), Kind::Reload, None, format!("reload rejected, running config kept: {}", errors.lines().next().unwrap_or("")));
                    self.config_error = Some(errors.clone());
                }
                (None, Response::err(ErrorKind::Config, errors))
            }
            Loaded::Apply { config, plan } => (Some(reload::dry_run(plan.clone())), self.apply_reload(*config, plan)),
        };
        let applied = ask.apply;
        ask.answer(dry.as_ref(), &resp);
        if applied && !self.shutdown.requested {
            self.notify.ready();
            self.notify.state_changed();
        }
        if self.reloads.promote_next() {
            self.reloads.start(self.config.path.clone(), self.tx.clone(), &self.notify);
        }
    }

    /// Apply a validated config as a diff (SPEC §8).
    fn apply_reload(&mut self, new: Config, plan: config::ReloadPlan) -> Response {
        self.config_error = None;
        for item in &plan.needs_restart {
            warn!("config change needs a restart of corral to take effect: {item}");
        }
        self.config = new;
        self.alerts.reconfigure(self.config.alerts.as_ref());
        match (self.budget.as_mut(), self.config.database.clone()) {
            (Some(b), Some(db)) => b.reconfigure(db, self.config.budget.clone(), self.config.jobs.values().any(|j| j.user.is_some())),
            (None, None) => {}
            _ => warn!("adding or removing [database] takes effect after a restart of corral"),
        }
        for step in reload::update_table(&mut self.jobs, &self.config, &plan) {
            match step {
                reload::Step::Remove(name) => {
                    self.feed(&name, Input::Stop);
                    self.drop_if_removed(&name);
                }
                reload::Step::Restart(name) => self.feed(&name, Input::Restart),
                reload::Step::Start(name) => self.feed(&name, Input::Start),
            }
        }
        // New scheduled jobs follow their schedule; changed schedules re-plan (runs go on).
        let dos = self.schedules.reload(&self.config);
        self.sched_do(dos, false);
        self.rebalance();
        info!(
            added = plan.added.len(),
            removed = plan.removed.len(),
            restarted = plan.restart.len(),
            updated = plan.update.len(),
            "config reloaded"
        );
        self.history.event(now_wall(), Kind::Reload, None, reload::summary(&plan));
        Response::ok(Reply::Reload(ReloadReport { applied: true, plan }))
    }
}

// ----- the connection budget (SPEC §5, §6) -----

impl Supervisor {
    fn on_db(&mut self, report: DbReport) {
        let Some(budget) = self.budget.as_mut() else { return };
        let was_healthy = budget.status.healthy;
        let has_usage = report.usage.is_ok();
        let fx = grants::reading(budget, &mut self.jobs, &mut self.history, report, Instant::now());
        // [alerts] (SPEC §9): the health edges, and the reading against warn_at.
        if budget.status.healthy != was_healthy {
            match budget.status.healthy {
                Some(true) => self.alerts.database(true, None, budget.status.latency_ms),
                Some(false) => self.alerts.database(false, budget.status.error.as_deref(), None),
                None => {}
            }
        }
        if has_usage && self.alerts.wants_budget() {
            let b = budget.report(&self.jobs, Instant::now());
            self.alerts.fact(crate::alerts::Fact::Budget { live: b.live, usable: b.usable, granted: b.granted, limit: b.limit, warn_at: budget.cfg.warn_at });
        }
        self.apply(fx);
        self.after_reading();
    }

    /// Carry out what the budget changed (`grants::Effects`, in its order).
    fn apply(&mut self, fx: grants::Effects) {
        for (pid, sig) in fx.signal {
            let _ = kill::signal_pid(pid, sig);
        }
        for (delay, ev) in fx.after {
            self.after(delay, ev);
        }
        if fx.confirm {
            // What a job gives back goes to others once a reading shows it closed.
            let at = self.confirm.restart(Instant::now(), grants::CONFIRM_AFTER);
            self.want_reading(at);
        }
        // Through a pooler the server's backends are the pooler's: there `terminate` only warns.
        if let Some(probe) = self.probe.clone().filter(|_| !fx.terminate.is_empty()) {
            for t in fx.terminate {
                let probe = probe.clone();
                // The db future is not Send; the daemon runs on a LocalSet.
                tokio::task::spawn_local(async move {
                    match probe.terminate_newest_idle(&t.application_name, t.keep, t.timeout).await {
                        Ok(pids) if !pids.is_empty() => warn!(job = %t.job, ?pids, "terminated connections over quota"),
                        Ok(_) => {}
                        Err(e) => warn!(job = %t.job, "cannot terminate connections over quota: {e}"),
                    }
                });
            }
        }
        for (name, input) in fx.feed {
            self.feed(&name, input);
        }
        for name in fx.retry {
            // Feeding one job can drop another that was removed from the config.
            let Some(epoch) = self.jobs.get(&name).map(|j| j.m.epoch) else { continue };
            self.feed(&name, Input::Timer { kind: TimerKind::RetryWait, epoch });
        }
    }

    /// Recompute grants and tell jobs whose quota changed (SPEC §5).
    fn rebalance(&mut self) {
        let Some(budget) = self.budget.as_mut() else { return };
        let fx = grants::rebalance(budget, &mut self.jobs, &mut self.history, Instant::now());
        self.apply(fx);
    }

    /// Write quota files and send `quota_signal` (SPEC §3).
    fn deliver(&mut self, tell: Vec<(String, u32)>) {
        let Some(budget) = self.budget.as_mut() else { return };
        let fx = grants::deliver(budget, &mut self.jobs, &mut self.history, tell, Instant::now());
        self.apply(fx);
    }

    /// Ask the probe task for a usage reading at `at` (it spaces them, SPEC §5).
    fn want_reading(&self, at: Instant) {
        if let Some(cmd) = &self.probe_cmd {
            let _ = cmd.send(ProbeCmd::UsageAt(at));
        }
    }

    /// After a reading: while connections given back are not confirmed closed, read again soon,
    /// backing off; in fleet scope, sync at once when the reading changed what the fleet knows
    /// of our jobs (connections closed, a job turned idle or active).
    fn after_reading(&mut self) {
        let Some(budget) = self.budget.as_ref() else { return };
        let now = Instant::now();
        if let Some(at) = self.confirm.after_reading(Budget::unconfirmed(&self.jobs), self.config.budget.rebalance_interval, now) {
            self.want_reading(at);
        }
        if budget.fleet.is_some() && self.fleet.reading_changed(budget, &self.jobs, now) {
            self.request_sync();
        }
    }

    // ----- fleet scope (SPEC §5 across the fleet, §7 fleet-wide single instance) -----

    /// A fleet sync is wanted: now, after the spacing, or right after the one in flight.
    fn request_sync(&mut self) {
        let Some(budget) = self.budget.as_ref() else { return };
        if let Some((delay, epoch)) = self.fleet.want(budget, &self.jobs, Instant::now()) {
            self.after(delay, Event::FleetDue { epoch });
        }
    }

    /// Send a reserve or release to the fleet task with the request to sync with after it.
    fn send_to_fleet(&mut self, cmd: impl FnOnce(Box<SyncRequest>) -> FleetCmd) {
        // Fleet scope always has a budget: the link is only built with one.
        let Some(budget) = self.budget.as_ref() else { return };
        let then = self.fleet.request(budget, &self.jobs, Instant::now());
        self.fleet.send(cmd(then));
    }

    fn on_fleet(&mut self, report: FleetReport) {
        // From the request to the answer, lock waits included (bench/fleet.py reads it).
        debug!(ms = format!("{:.2}", report.started.elapsed().as_secs_f64() * 1000.0), ok = report.result.is_ok(), "fleet sync");
        let ((next, epoch), wanted) = self.fleet.done(&report, self.config.budget.rebalance_interval, Instant::now());
        self.after(next, Event::FleetDue { epoch });
        self.apply_fleet_report(report);
        if wanted {
            self.request_sync();
        }
    }

    fn apply_fleet_report(&mut self, report: FleetReport) {
        if let Some(budget) = self.budget.as_mut() {
            let fx = grants::fleet_answered(budget, &mut self.jobs, &mut self.history, report.result, report.started, Instant::now());
            self.apply(fx);
        }
        self.check_fleet_locks();
    }

    /// Single-instance jobs whose fleet-wide lock went unconfirmed stop and wait for it again.
    fn check_fleet_locks(&mut self) {
        let Some(budget) = self.budget.as_ref() else { return };
        for name in super::fleet::unconfirmed_locks(budget, &self.jobs, Instant::now()) {
            warn!(job = %name, "fleet-wide lock not confirmed: stopping this copy so at most one runs; it waits for the lock again");
            self.feed(&name, Input::Restart);
        }
    }
}

fn now_wall() -> std::time::SystemTime {
    std::time::SystemTime::now()
}

