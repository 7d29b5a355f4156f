//! The systemd notification protocol (SPEC §9), without libsystemd: a few
//! datagrams to `$NOTIFY_SOCKET`.
//!
//! Owns the socket and the status/watchdog task. Sends `READY=1` once the
//! autostart jobs are launched, `RELOADING=1` (with `MONOTONIC_USEC`) and
//! `READY=1` around a reload, `STOPPING=1` when shutdown begins, a one-line
//! `STATUS=` when it changed (within [`STATUS_SETTLE`] of a job's state change,
//! and at least every second otherwise), and `WATCHDOG=1` at half of
//! `$WATCHDOG_USEC`. The watchdog ping is sent only after the actor answered a
//! status request, so a hung actor stops the pings and systemd restarts us.
//! Everything is a no-op when `$NOTIFY_SOCKET` is unset. It never touches job
//! state: it only asks the actor, like any client.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::ask::NoAnswer;
use super::event::EventTx;
use crate::protocol::{BudgetReport, JobState, StatusReport};

/// `STATUS=` is recomputed at least this often (budget and database changes have no event).
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// After a state change, wait this long before recomputing `STATUS=`: a burst of transitions
/// (a crash storm, a reload) becomes one line, at most a few lines a second.
pub const STATUS_SETTLE: Duration = Duration::from_millis(200);

/// A handle on systemd's notification socket; cheap to clone. The default
/// value is disabled and sends nothing.
#[derive(Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
    /// Half of `$WATCHDOG_USEC`, when the watchdog is enabled for us.
    watchdog: Option<Duration>,
    /// Wakes the status task when a job's state changed.
    changed: Arc<tokio::sync::Notify>,
}

struct Inner {
    sock: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// Read `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`, then remove
    /// them from the environment so jobs do not inherit them: a job that speaks
    /// sd_notify itself would otherwise talk to systemd on our behalf (refused
    /// under `NotifyAccess=main`, believed under `all`). Call it before any
    /// other thread exists, since it changes the process environment.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let wd_pid = std::env::var("WATCHDOG_PID").ok();
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(var);
        }
        let Some(socket) = socket else { return Notifier::default() };
        let inner = match open(socket.as_bytes()) {
            Ok(inner) => inner,
            Err(e) => {
                warn!("NOTIFY_SOCKET={}: {e}; systemd will not hear from corral", socket.to_string_lossy());
                return Notifier::default();
            }
        };
        Notifier {
            inner: Some(Arc::new(inner)),
            watchdog: watchdog_interval(usec.as_deref(), wd_pid.as_deref(), std::process::id()),
            changed: Arc::default(),
        }
    }

    /// A job changed state (or the config or database health did): `STATUS=` follows soon.
    pub fn state_changed(&self) {
        if self.enabled() {
            self.changed.notify_one();
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// Before a reload; follow with [`Notifier::ready`] when it is done.
    pub fn reloading(&self) {
        if self.enabled() {
            self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        }
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    pub fn status(&self, line: &str) {
        if self.enabled() {
            // One line: a newline would start another assignment.
            self.send(&format!("STATUS={}", line.replace('\n', " ")));
        }
    }

    fn watchdog_ping(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, msg: &str) {
        let Some(inner) = &self.inner else { return };
        // Non-blocking: a full queue at systemd loses a message, never stalls the actor.
        match inner.sock.send_to_addr(msg.as_bytes(), &inner.addr) {
            Ok(_) => debug!("sd_notify: {}", msg.replace('\n', " ")),
            Err(e) => warn!("sd_notify {:?} failed: {e}", msg.lines().next().unwrap_or("")),
        }
    }
}

fn open(path: &[u8]) -> std::io::Result<Inner> {
    let addr = match path.first() {
        Some(b'/') => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path))?,
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&path[1..])?
        }
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "only absolute paths and @abstract sockets are supported",
            ))
        }
    };
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    Ok(Inner { sock, addr })
}

/// Half of `WATCHDOG_USEC`, as `sd_watchdog_enabled` decides: unset, zero or
/// unparsable means off, and a `WATCHDOG_PID` naming another process means the
/// watchdog is not ours.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// CLOCK_MONOTONIC in microseconds, as systemd expects with `RELOADING=1`.
fn monotonic_usec() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000,
        Err(_) => 0,
    }
}

/// Start the task that keeps `STATUS=` current and pings the watchdog. Call
/// from inside the runtime, once the actor's loop is about to run.
pub fn spawn_status(notifier: Notifier, tx: EventTx) {
    if !notifier.enabled() {
        return;
    }
    let tick = notifier.watchdog.map_or(STATUS_EVERY, |w| w.min(STATUS_EVERY)).max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_line = String::new();
        let mut last_at: Option<Instant> = None;
        loop {
            let ticked = tokio::select! {
                _ = interval.tick() => true,
                _ = notifier.changed.notified() => {
                    tokio::time::sleep(STATUS_SETTLE).await;
                    false
                }
            };
            // The answer is the proof of life: no answer within a tick, no ping. Status and
            // budget come in one turn of the actor.
            let snap = match super::ask::snapshot(&tx, false, Some(tick)).await {
                Err(NoAnswer::Gone) => return,
                Err(NoAnswer::Late) => continue,
                Ok(s) => s,
            };
            // Pinged on the watchdog's schedule only, not on every state change.
            if ticked && notifier.watchdog.is_some() {
                notifier.watchdog_ping();
            }
            // Between changes, a line per second is plenty (the ticks may be faster).
            if ticked && last_at.is_some_and(|t| t.elapsed() < STATUS_EVERY - tick / 2) {
                continue;
            }
            last_at = Some(Instant::now());
            let line = summary(&snap.status, snap.budget.as_ref());
            if line != last_line {
                notifier.status(&line);
                last_line = line;
            }
        }
    });
}

/// The one-line `STATUS=`: "3/3 jobs running, budget 21/48".
pub fn summary(status: &StatusReport, budget: Option<&BudgetReport>) -> String {
    let total = status.jobs.len();
    let count = |state: JobState| status.jobs.iter().filter(|j| j.state == state).count();
    let mut line = format!("{}/{total} jobs running", count(JobState::Running));
    for state in [JobState::Starting, JobState::Backoff, JobState::Waiting, JobState::Fatal] {
        let n = count(state);
        if n > 0 {
            line.push_str(&format!(", {n} {}", state.as_str()));
        }
    }
    if let Some(b) = budget {
        line.push_str(&format!(", budget {}/{}", b.granted, b.usable));
        if !b.database.healthy {
            line.push_str(", database unhealthy");
        }
    }
    if status.config_error.is_some() {
        line.push_str(", config reload rejected (see corral status)");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{JobStatus, SupervisorInfo};

    fn job(name: &str, state: &str) -> JobStatus {
        JobStatus::named(name, JobState::parse(state).unwrap())
    }

    #[test]
    fn summary_counts_running_jobs_and_budget() {
        let st = StatusReport {
            jobs: vec![job("a", "running"), job("b", "running"), job("c", "fatal")],
            config_error: None,
            supervisor: SupervisorInfo::default(),
            budget: None,
        };
        assert_eq!(summary(&st, None), "2/3 jobs running, 1 fatal");
        let b: BudgetReport = serde_json::from_value(serde_json::json!({"granted": 21, "usable": 48, "database": {"healthy": true}})).unwrap();
        assert_eq!(summary(&st, Some(&b)), "2/3 jobs running, 1 fatal, budget 21/48");
        let st = StatusReport { config_error: Some("x".into()), jobs: vec![], ..st };
        let b: BudgetReport = serde_json::from_value(serde_json::json!({"granted": 0, "usable": 48, "database": {"healthy": false}})).unwrap();
        assert_eq!(
            summary(&st, Some(&b)),
            "0/0 jobs running, budget 0/48, database unhealthy, config reload rejected (see corral status)"
        );
    }

    #[test]
    fn watchdog_interval_is_half_and_only_ours() {
        assert_eq!(watchdog_interval(Some("400000"), None, 7), Some(Duration::from_millis(200)));
        assert_eq!(watchdog_interval(Some("400000"), Some("7"), 7), Some(Duration::from_millis(200)));
        assert_eq!(watchdog_interval(Some("400000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    #[test]
    fn messages_reach_a_bound_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier { inner: Some(Arc::new(open(path.as_os_str().as_bytes()).unwrap())), watchdog: None, changed: Arc::default() };
        n.ready();
        n.reloading();
        n.status("a\nb");
        let mut buf = [0u8; 256];
        let mut next = || {
            let len = rx.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..len]).into_owned()
        };
        assert_eq!(next(), "READY=1");
        let reload = next();
        assert!(reload.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reload}");
        assert!(reload.rsplit('=').next().unwrap().parse::<u64>().unwrap() > 0);
        assert_eq!(next(), "STATUS=a b");
    }

    #[test]
    fn disabled_notifier_sends_nothing() {
        let n = Notifier::default();
        assert!(!n.enabled());
        n.ready();
        n.stopping();
    }

    #[test]
    fn relative_socket_paths_are_refused() {
        assert!(open(b"relative.sock").is_err());
        assert!(open(b"").is_err());
        assert!(open(b"@corral-test-abstract").is_ok());
    }
}
