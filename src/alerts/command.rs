//! The alert command (SPEC §9 `command = [...]`): run with the alert's JSON on stdin, killed
//! after `timeout`, reaped like any child.
//!
//! Split by who may do what (SPEC §7, one reaper): the actor spawns the process and owns its
//! pid ([`Children`]: spawned, registered before the next `reap`, its exit dispatched from the
//! reaper); the delivery task (off the actor) writes stdin, waits for the exit with its
//! timeout, and asks the actor to kill the group when it is over. Nothing here waits on a
//! `Child`, and nothing on the actor waits for the command.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use super::webhook::PostError;
use crate::config::LogFormat;
use crate::job::Exit;
use crate::process::output::{self, LogStore};

/// The name the command's output lines carry in corral's log and `corral logs`.
pub const LOG_NAME: &str = "[alerts]";

/// Requests from the delivery task to the actor.
pub enum ActorCmd {
    /// Spawn `argv` (own process group, stdin a pipe) and answer with its pid and stdin.
    Run { argv: Vec<String>, reply: oneshot::Sender<Result<Started, String>> },
    /// The timeout passed: SIGKILL the group of `pid`, if it is still one of ours.
    Kill { pid: i32 },
}

pub struct Started {
    pub pid: i32,
    pub stdin: OwnedFd,
    /// Sent by the reaper.
    pub exit: oneshot::Receiver<Exit>,
}

/// The alert commands running, by pid. Owned by the actor.
#[derive(Default)]
pub struct Children {
    by_pid: HashMap<i32, oneshot::Sender<Exit>>,
}

impl Children {
    pub fn handle(&mut self, cmd: ActorCmd, logs: &LogStore, format: LogFormat) {
        match cmd {
            ActorCmd::Run { argv, reply } => {
                let result = spawn(&argv).map(|(pid, stdin, stdout, stderr)| {
                    let (tx, rx) = oneshot::channel();
                    self.by_pid.insert(pid, tx);
                    output::start_reader(stdout, LOG_NAME.to_string(), "stdout", format, logs.clone(), None);
                    output::start_reader(stderr, LOG_NAME.to_string(), "stderr", format, logs.clone(), None);
                    Started { pid, stdin, exit: rx }
                });
                if let Err(e) = &result {
                    tracing::warn!("cannot run the alert command `{}`: {e}", argv.join(" "));
                }
                // The task may have given up meanwhile: the reaper still collects the process.
                let _ = reply.send(result);
            }
            ActorCmd::Kill { pid } => {
                if self.by_pid.contains_key(&pid) {
                    tracing::warn!(pid, "the alert command ran past [alerts] timeout: SIGKILL to its process group");
                    let _ = crate::process::kill::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }

    /// From the reaper: whether `pid` was an alert command (its exit is passed on).
    pub fn exited(&mut self, pid: i32, exit: Exit) -> bool {
        match self.by_pid.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(exit);
                true
            }
            None => false,
        }
    }
}

fn spawn(argv: &[String]) -> Result<(i32, OwnedFd, OwnedFd, OwnedFd), String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    // Like a job's: not corral's database variables (the payload has what the command needs).
    for k in ["DATABASE_URL", "PGPASSWORD"] {
        cmd.env_remove(k);
    }
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let pid = child.id() as i32;
    let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    // Dropping `Child` neither waits nor kills: the reaper owns the exit.
    drop(child);
    match pipes {
        (Some(i), Some(o), Some(e)) => Ok((pid, OwnedFd::from(i), OwnedFd::from(o), OwnedFd::from(e))),
        _ => {
            let _ = crate::process::kill::signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
            Err("the command's pipes were not created".into())
        }
    }
}

/// Off the actor: run the command through the actor, feed it `json`, wait for it up to
/// `timeout` (then have it killed). Ok when it exited 0.
pub async fn run(send: &dyn Fn(ActorCmd) -> bool, argv: &[String], json: &[u8], timeout: Duration) -> Result<(), PostError> {
    let (reply, started) = oneshot::channel();
    // Once the actor is gone (corral exits) nobody could reap it: not started, not retried.
    let gone = || PostError { message: "corral is exiting: the command is not run".into(), retryable: false };
    if !send(ActorCmd::Run { argv: argv.to_vec(), reply }) {
        return Err(gone());
    }
    let Started { pid, stdin, mut exit } = started.await.map_err(|_| gone())?.map_err(|message| PostError { message, retryable: true })?;
    let deadline = tokio::time::Instant::now() + timeout;
    let feed = async {
        // A command that does not read stdin (or exits at once) is not an error of ours.
        if let Ok(mut pipe) = tokio::net::unix::pipe::Sender::from_owned_fd(stdin) {
            let _ = pipe.write_all(json).await;
            let _ = pipe.write_all(b"\n").await;
        }
    };
    let _ = tokio::time::timeout_at(deadline, feed).await;
    let outcome = tokio::time::timeout_at(deadline, &mut exit).await;
    let exit = match outcome {
        Ok(Ok(e)) => e,
        Ok(Err(_)) => return Err(PostError { message: "the command's exit was not reported".into(), retryable: true }),
        Err(_) => {
            send(ActorCmd::Kill { pid });
            // Reaped by the actor; wait for that briefly so a retry never overlaps it.
            let _ = tokio::time::timeout(Duration::from_secs(5), exit).await;
            return Err(PostError { message: format!("the command ran longer than {} and was killed", humantime::format_duration(timeout)), retryable: true });
        }
    };
    match exit {
        Exit::Code(0) => Ok(()),
        e => Err(PostError { message: format!("the command failed: {}", crate::job::machine::describe_exit(e)), retryable: true }),
    }
}
