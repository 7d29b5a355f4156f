//! Running one probe (SPEC §2 `ready`, `liveness`): http (2xx passes), tcp (a connection
//! opens), command (exit 0), each within its timeout.
//!
//! A probe command is spawned like a job (`process::spawn`: own process group, empty stdin,
//! no `tokio::process`) and reaped by corral's one reaper: [`ProbeProcs`] is where the actor's
//! reap hands a probe's exit to the task waiting for it. On timeout the probe's whole process
//! group is SIGKILLed; its exit is still collected by the reaper.
//!
//! Must not: block (everything here is async or a non-blocking spawn), wait on a child, or
//! touch job state: results go back to the actor as messages (`watchdog::task`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::config::watch::Check;
use crate::job::Exit;
use crate::process::{kill, reaper, spawn};

/// Probe processes waiting for their exit. Shared by the probe tasks (register) and the actor
/// (reap). The lock is held across a spawn and its registration, and across each `waitpid`
/// drain, so an exit is never collected before its pid is known.
#[derive(Clone, Default)]
pub struct ProbeProcs {
    inner: Arc<Mutex<HashMap<i32, Option<oneshot::Sender<Exit>>>>>,
}

impl ProbeProcs {
    /// Reap every exited child (the one `waitpid(-1)` drain); probe exits go to their tasks,
    /// the others are returned for the actor.
    pub fn reap(&self) -> Vec<(i32, Exit)> {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut rest = Vec::new();
        for (pid, exit) in reaper::reap() {
            match map.remove(&pid) {
                Some(waiter) => {
                    if let Some(tx) = waiter {
                        let _ = tx.send(exit);
                    }
                }
                None => rest.push((pid, exit)),
            }
        }
        rest
    }

    /// Probe processes not reaped yet.
    pub fn pending(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn spawn(&self, spec: &spawn::SpawnSpec<'_>) -> std::io::Result<(spawn::Spawned, oneshot::Receiver<Exit>)> {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let child = spawn::spawn(spec)?;
        let (tx, rx) = oneshot::channel();
        map.insert(child.pid, Some(tx));
        Ok((child, rx))
    }
}

/// How a probe command runs: the job's environment, directory and user.
#[derive(Debug, Clone, Default)]
pub struct ProbeEnv {
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub extra_env: Vec<(String, String)>,
    pub user: Option<String>,
}

/// Run `check` once. Ok(()) passes; Err says why it failed (for logs and status).
pub async fn run(check: &Check, timeout: Duration, procs: &ProbeProcs, penv: &ProbeEnv) -> Result<(), String> {
    match check {
        Check::Http { host, port, path } => within(timeout, http(host, *port, path)).await,
        Check::Tcp { host, port } => within(timeout, async {
            connect(host, *port).await.map(drop)
        })
        .await,
        Check::Command(argv) => command(argv, timeout, procs, penv).await,
        // Log probes are answered by the output reader, never run.
        Check::Log(_) => Err("a log probe is not run".into()),
    }
}

async fn within(timeout: Duration, f: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {}", humantime::format_duration(timeout))),
    }
}

async fn connect(host: &str, port: u16) -> Result<tokio::net::TcpStream, String> {
    let addrs = crate::lookup::hosts::resolve(host, port).await?;
    let mut last = format!("{host}: no address");
    for a in addrs {
        match tokio::net::TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connect {a}: {e}"),
        }
    }
    Err(last)
}

/// `GET path` over HTTP/1.1 with `Connection: close`; only the status line is read.
async fn http(host: &str, port: u16, path: &str) -> Result<(), String> {
    let mut s = connect(host, port).await?;
    let authority = if port == 80 { host.to_string() } else { format!("{host}:{port}") };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: corral-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("").trim();
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| if line.is_empty() { "no HTTP answer".to_string() } else { format!("not an HTTP answer: {line:?}") })?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP {code}"))
    }
}

/// The probe's last output line is kept for the failure message, at most this long.
const DETAIL_BYTES: usize = 512;

async fn command(argv: &[String], timeout: Duration, procs: &ProbeProcs, penv: &ProbeEnv) -> Result<(), String> {
    let spec = spawn::SpawnSpec {
        command: argv,
        cwd: penv.cwd.as_ref(),
        env: &penv.env,
        extra_env: &penv.extra_env,
        user: penv.user.as_deref(),
        inherit_fd: None,
        remove_env: &[],
    };
    let (child, exited) = procs.spawn(&spec).map_err(|e| format!("cannot run `{}`: {e}", argv.join(" ")))?;
    let pid = child.pid;
    let mut output = tokio::task::spawn_local(read_tail(child.stdout, child.stderr));
    let result = tokio::time::timeout(timeout, exited).await;
    // Whatever it forked goes with it (its exit is collected by the reaper all the same).
    let _ = kill::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    let tail = match tokio::time::timeout(Duration::from_millis(100), &mut output).await {
        Ok(Ok(t)) => t,
        _ => {
            // A descendant that left the group still holds the pipe: stop reading it.
            output.abort();
            String::new()
        }
    };
    let with_tail = |m: String| if tail.is_empty() { m } else { format!("{m}: {tail}") };
    match result {
        Ok(Ok(Exit::Code(0))) => Ok(()),
        Ok(Ok(exit)) => Err(with_tail(crate::job::machine::describe_exit(exit))),
        Ok(Err(_)) => Err("probe process lost".into()),
        Err(_) => Err(format!("timed out after {} (process group killed)", humantime::format_duration(timeout))),
    }
}

/// The last non-empty line of the probe's output (stdout and stderr), capped.
async fn read_tail(stdout: std::os::fd::OwnedFd, stderr: std::os::fd::OwnedFd) -> String {
    async fn drain(fd: std::os::fd::OwnedFd) -> Vec<u8> {
        let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else { return Vec::new() };
        let mut keep = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    keep.extend_from_slice(&chunk[..n]);
                    if keep.len() > 4 * DETAIL_BYTES {
                        keep.drain(..keep.len() - 2 * DETAIL_BYTES);
                    }
                }
            }
        }
        keep
    }
    let (out, err) = tokio::join!(drain(stdout), drain(stderr));
    let text = String::from_utf8_lossy(if err.iter().any(|b| !b.is_ascii_whitespace()) { &err } else { &out }).into_owned();
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    last.chars().take(DETAIL_BYTES).collect()
}
