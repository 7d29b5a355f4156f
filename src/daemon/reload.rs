//! Reload's own state (SPEC §8): who asked for a read of the config file, and the read
//! itself, on a thread of its own so that a file of any size never stalls the actor. The
//! actor applies the validated config (it feeds the jobs) and hands the answer back here to
//! fan out to everyone who asked.

use std::path::PathBuf;

use tokio::sync::oneshot;
use tracing::error;

use super::jobs::{JobRt, JobTable};
use super::notify::Notifier;
use super::event::{Event, EventTx};
use crate::config::{self, Config, ReloadPlan};
use crate::job::Policy;
use crate::protocol::{ErrorKind, ReloadReport, Reply, Response};

/// Who asked for a reload: the watcher and SIGHUP (`apply`, no reply), `corral reload` (a reply,
/// maybe `--dry-run`).
#[derive(Default)]
pub struct ReloadAsk {
    pub apply: bool,
    pub replies: Vec<(oneshot::Sender<Response>, bool)>,
}

/// The file is read and validated on a thread of its own, so a file of any size never stalls
/// the actor. At most one read runs; asks arriving meanwhile wait for the next read.
#[derive(Default)]
pub struct Reloads {
    /// Answered by the read in flight.
    current: Option<ReloadAsk>,
    /// Asked after that read started: they need a fresh one.
    next: Option<ReloadAsk>,
    /// The reader thread, started by the first read and kept: every parse then allocates
    /// from the same malloc arena, which the next parse reuses. (A thread per read could
    /// land each parse in another arena, each keeping what its parse freed.)
    reader: Option<std::sync::mpsc::Sender<(PathBuf, EventTx)>>,
}

impl Reloads {
    /// Somebody asks for a read; `apply` unless only dry runs ask. True when a read must
    /// start now (none is in flight).
    pub fn ask(&mut self, apply: bool, reply: Option<(oneshot::Sender<Response>, bool)>) -> bool {
        let slot = if self.current.is_some() { &mut self.next } else { &mut self.current };
        let ask = slot.get_or_insert_with(ReloadAsk::default);
        ask.apply |= apply;
        ask.replies.extend(reply);
        self.next.is_none()
    }

    /// Read and validate the file on a thread; the result comes back as `ConfigLoaded`.
    /// A reload is framed for systemd by RELOADING=1 and READY=1 (also when the new file is
    /// rejected: the old config keeps running, so we are ready).
    pub fn start(&mut self, path: PathBuf, tx: EventTx, notify: &Notifier) {
        if self.current.as_ref().is_some_and(|a| a.apply) {
            notify.reloading();
        }
        let mut read = (path, tx);
        // A reader that is gone (it never is: a panic aborts) is started again, once.
        for _ in 0..2 {
            let reader = match self.reader.take() {
                Some(reader) => reader,
                None => match spawn_reader() {
                    Ok(reader) => reader,
                    Err(e) => return self.cannot_read(&e.to_string(), notify),
                },
            };
            match reader.send(read) {
                Ok(()) => {
                    self.reader = Some(reader);
                    return;
                }
                Err(std::sync::mpsc::SendError(back)) => read = back,
            }
        }
        self.cannot_read("the reader thread is gone", notify);
    }

    /// No thread can read the file: everyone who asked hears why, and systemd that we are ready.
    fn cannot_read(&mut self, e: &str, notify: &Notifier) {
        error!("cannot start a thread to read the config: {e}");
        let message = format!("cannot reload now (no thread to read the config: {e}); try again");
        for (reply, _) in self.current.take().map(|a| a.replies).unwrap_or_default() {
            let _ = reply.send(Response::err(ErrorKind::Refused, message.clone()));
        }
        notify.ready();
    }

    /// The read in flight came back: who asked for it.
    pub fn finished(&mut self) -> ReloadAsk {
        self.current.take().unwrap_or_default()
    }

    /// Asks that came in during the read become current: true when a read must start.
    pub fn promote_next(&mut self) -> bool {
        match self.next.take() {
            Some(next) => {
                self.current = Some(next);
                true
            }
            None => false,
        }
    }
}

/// The thread that reads and validates the config file, one read at a time.
fn spawn_reader() -> std::io::Result<std::sync::mpsc::Sender<(PathBuf, EventTx)>> {
    let (send, reads) = std::sync::mpsc::channel::<(PathBuf, EventTx)>();
    std::thread::Builder::new()
        .name("corral-reload".into())
        // The parser's own limits keep it far below this; a thread's default is 2 MiB.
        .stack_size(16 << 20)
        .spawn(move || {
            for (path, tx) in reads {
                let _ = tx.send(Event::ConfigLoaded(Box::new(config::load_settled(&path))));
            }
        })?;
    Ok(send)
}

impl ReloadAsk {
    /// Answer everyone: a dry run gets `dry` when there is one (the plan, not applied), the
    /// others `resp`.
    pub fn answer(self, dry: Option<&Response>, resp: &Response) {
        for (reply, dry_run) in self.replies {
            let answer = match (dry, dry_run) {
                (Some(dry), true) => dry.clone(),
                _ => resp.clone(),
            };
            let _ = reply.send(answer);
        }
    }
}

/// What a finished read of the config file means (SPEC §8).
#[derive(Debug)]
pub enum Loaded {
    /// Answer everyone with this; nothing changes (shutting down, or only dry runs asked).
    Answer(Box<Response>),
    /// The file does not validate. When it was to be applied, the running config stays and
    /// the errors show as `config_error` and in the history (`keep_running`).
    Rejected { errors: String, keep_running: bool },
    /// Apply `config` as `plan`; a dry run among the askers gets the plan, unapplied.
    Apply { config: Box<Config>, plan: ReloadPlan },
}

/// Judge a read against the running config: `apply` unless only dry runs asked.
pub fn judge(result: Result<Config, config::ConfigErrors>, running: &Config, apply: bool, shutting_down: bool) -> Loaded {
    match result {
        _ if shutting_down => Loaded::Answer(Box::new(Response::shutting_down())),
        Err(errs) => Loaded::Rejected { errors: errs.to_string(), keep_running: apply },
        Ok(new) => {
            let plan = config::diff(running, &new);
            if apply {
                Loaded::Apply { config: Box::new(new), plan }
            } else {
                Loaded::Answer(Box::new(dry_run(plan)))
            }
        }
    }
}

/// The answer to `corral reload --dry-run`: the plan, not applied.
pub fn dry_run(plan: ReloadPlan) -> Response {
    Response::ok(Reply::Reload(ReloadReport { applied: false, plan }))
}

/// What an applied reload changed, in one line (the log and the history).
pub fn summary(plan: &ReloadPlan) -> String {
    format!("config reloaded: {} added, {} removed, {} restarted, {} updated", plan.added.len(), plan.removed.len(), plan.restart.len(), plan.update.len())
}

/// What a reload asks of one job; the actor feeds them in the order returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Removed from the config: stop it (its entry goes once it is stopped).
    Remove(String),
    /// Its process settings changed while it runs: restart it with the new config.
    Restart(String),
    /// New, `autostart` and not scheduled (a schedule starts those): start it.
    Start(String),
}

/// Bring the job table to `config` as `plan` says: removed jobs marked, changed settings
/// taken, new jobs added (stopped). Returns what to feed: removals first (a job's instances
/// highest index first, SPEC §2), then restarts, then starts.
pub fn update_table(jobs: &mut JobTable, config: &Config, plan: &ReloadPlan) -> Vec<Step> {
    let mut removed = plan.removed.clone();
    crate::watchdog::deps::highest_index_first(&mut removed);
    let mut steps = Vec::new();
    for name in removed {
        if let Some(j) = jobs.get_mut(&name) {
            j.removed = true;
            steps.push(Step::Remove(name));
        }
    }
    for name in plan.restart.iter().chain(plan.update.iter()) {
        let (Some(cfg), Some(j)) = (config.jobs.get(name), jobs.get_mut(name)) else { continue };
        j.policy = Policy::from(cfg);
        j.cfg = cfg.clone();
    }
    for name in &plan.restart {
        if let Some(j) = jobs.get_mut(name).filter(|j| j.m.state.wants_to_run()) {
            j.check_duplicates = true;
            steps.push(Step::Restart(name.clone()));
        }
    }
    for name in &plan.added {
        let Some(cfg) = config.jobs.get(name) else { continue };
        if cfg.autostart && cfg.schedule.is_none() {
            steps.push(Step::Start(name.clone()));
        }
        jobs.insert(name.clone(), JobRt::new(cfg.clone()));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::jobs::testing::{config, table};
    use crate::job::State;

    #[test]
    fn a_reload_marks_updates_adds_and_orders_what_to_feed() {
        let old = config(
            "[jobs.gone]\ncommand = [\"gone\"]\n[jobs.n]\ncommand = [\"n\"]\ninstances = 3\n\
             [jobs.w]\ncommand = [\"w\"]\n[jobs.idle]\ncommand = [\"idle\"]\n[jobs.p]\ncommand = [\"p\"]\n",
        );
        let new = config(
            "[jobs.n]\ncommand = [\"n\"]\ninstances = 1\n[jobs.w]\ncommand = [\"w\", \"--new\"]\n[jobs.idle]\ncommand = [\"idle\", \"--new\"]\n[jobs.p]\ncommand = [\"p\"]\npriority = 7\n\
             [jobs.a]\ncommand = [\"a\"]\n[jobs.m]\ncommand = [\"m\"]\nautostart = false\n[jobs.s]\ncommand = [\"s\"]\nschedule = \"@hourly\"\n",
        );
        let mut jobs = table(&old);
        jobs.get_mut("w").unwrap().m.state = State::Running;
        let plan = config::diff(&old, &new);
        let steps = update_table(&mut jobs, &new, &plan);
        // Fewer instances stop the highest first. Only the running job restarts; only the new
        // autostart job without a schedule starts.
        let removals = ["gone", "n.2", "n.1"].map(|n| Step::Remove(n.into()));
        assert_eq!(steps, [removals.into(), vec![Step::Restart("w".into()), Step::Start("a".into())]].concat());
        assert!(jobs["gone"].removed && jobs["n.1"].removed && jobs["n.2"].removed && !jobs["n.0"].removed && !jobs["w"].removed);
        assert_eq!(jobs["w"].cfg.command, vec!["w", "--new"]);
        assert!(jobs["w"].check_duplicates);
        // A stopped job takes its new process settings for its next start.
        assert_eq!(jobs["idle"].cfg.command, vec!["idle", "--new"]);
        assert_eq!(jobs["p"].cfg.priority, 7);
        for added in ["a", "m", "s"] {
            assert_eq!(jobs[added].m.state, State::Stopped, "{added}");
        }
    }

    #[test]
    fn an_empty_plan_changes_nothing() {
        let c = config("[jobs.a]\ncommand = [\"a\"]\n");
        let mut jobs = table(&c);
        assert!(update_table(&mut jobs, &c, &config::diff(&c, &c)).is_empty());
        assert_eq!(jobs.len(), 1);
        assert!(!jobs["a"].removed);
    }

    #[test]
    fn a_read_is_judged_against_the_running_config() {
        let running = config("[jobs.a]\ncommand = [\"a\"]\n");
        let read = || crate::config::parse(std::path::Path::new("/etc/corral/supervisor.toml"), "[supervisor]\nsocket = \"/run/corral.sock\"\n[jobs.a]\ncommand = [\"a\", \"-v\"]\n[jobs.b]\ncommand = [\"b\"]\n", &|_| None);
        let bad = || crate::config::parse(std::path::Path::new("/etc/corral/supervisor.toml"), "[jobs.a]\ncomand = [\"a\"]\n", &|_| None);
        let Loaded::Apply { config, plan } = judge(read(), &running, true, false) else { panic!("not applied") };
        assert!(config.jobs.contains_key("b"));
        assert_eq!((plan.added.clone(), plan.restart.clone()), (vec!["b".to_string()], vec!["a".to_string()]));
        assert_eq!(summary(&plan), "config reloaded: 1 added, 0 removed, 1 restarted, 0 updated");
        let Loaded::Answer(dry) = judge(read(), &running, false, false) else { panic!("a dry run applies nothing") };
        assert!(matches!(dry.result, Some(Reply::Reload(ReloadReport { applied: false, ref plan })) if plan.added == ["b"]));
        let Loaded::Rejected { errors, keep_running: true } = judge(bad(), &running, true, false) else { panic!("not rejected") };
        assert!(errors.contains("comand"), "{errors}");
        assert!(matches!(judge(bad(), &running, false, false), Loaded::Rejected { keep_running: false, .. }), "a dry run records nothing");
        let Loaded::Answer(late) = judge(read(), &running, true, true) else { panic!("applied while shutting down") };
        assert_eq!(late.error.unwrap().kind, ErrorKind::ShuttingDown);
    }
}
