//! The alert tasks, off the actor (SPEC §9: a webhook that is slow or down never delays
//! supervision): the router turns facts into alerts ([`Decider`]) and queues each for every
//! destination; one worker per destination delivers in order, with a timeout per attempt,
//! retries with backoff and a drop after `retries`, all counted ([`stats`]). The queues are
//! bounded: a receiver that hangs fills its queue and further alerts for it are dropped and
//! counted, never buffered without end.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::command::{self, ActorCmd};
use super::decide::{Decider, Settings};
use super::event::{payload, Alert, EventKind, Origin};
use super::webhook::{self, PostError};
use super::{stats, Hook, Msg, HOOK_QUEUE};
use crate::config::{AlertsConfig, WebhookUrl};
use crate::process::output::{LogStore, RING_LINES};

/// Alerts waiting per destination; more are dropped (counted as `queue_full`).
pub const QUEUE: usize = 64;
/// Lines of stderr an alert carries, and the length each is cut to.
pub const STDERR_LINES: usize = 20;
pub const STDERR_LINE_CHARS: usize = 300;
/// A job's last lines may still be in the pipe when its exit is reaped: the alert waits this
/// long before it reads the tail (off the actor, in a task of its own).
pub const STDERR_SETTLE: Duration = Duration::from_millis(300);
/// Backoff between attempts: 1 s, doubled, at most this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the router needs besides `[alerts]`.
pub struct Context {
    pub origin: Origin,
    pub logs: LogStore,
    /// Passwords of this URL are scrubbed from the stderr tail (plus any URL or password= in it).
    pub database_url: Option<String>,
    /// Sends a command request to the actor (`Event::Alert`); false once it is gone.
    pub actor: Rc<dyn Fn(ActorCmd) -> bool>,
}

pub fn settings(cfg: Option<&AlertsConfig>) -> Settings {
    match cfg {
        Some(c) => Settings { events: c.events.clone(), min_interval: c.min_interval, crash_loop_restarts: c.crash_loop_restarts, crash_loop_window: c.crash_loop_window },
        None => Settings::default(),
    }
}

/// At exit, how long alerts still queued get to go out (only when some are queued).
pub const DRAIN: Duration = Duration::from_secs(2);

/// The delivery tasks, to let queued alerts go out when corral exits.
pub struct Drain(Vec<tokio::task::JoinHandle<()>>);

impl Drain {
    /// Wait up to `timeout` for the workers: they finish once the hook (the actor) is gone
    /// and their queues are empty.
    pub async fn wait(self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, async {
            for h in self.0 {
                let _ = h.await;
            }
        })
        .await;
    }
}

/// Start the router and the workers on the current `LocalSet`; the actor keeps the [`Hook`].
pub fn spawn(cfg: Option<AlertsConfig>, cx: Context) -> (Hook, Drain) {
    let (tx, rx) = mpsc::channel(HOOK_QUEUE);
    let hook = Hook::new(tx, cfg.as_ref());
    stats::set_configured(cfg.is_some());
    if let Some(c) = &cfg {
        let to: Vec<String> = c.webhook.iter().map(|w| format!("webhook {}", w.shown())).chain(c.command.iter().map(|a| format!("command `{}`", a.join(" ")))).collect();
        info!(min_interval = %humantime::format_duration(c.min_interval), "alerts go to {}", to.join(" and "));
    }
    let (web_tx, web_rx) = mpsc::channel::<(Item, WebhookUrl)>(QUEUE);
    let (cmd_tx, cmd_rx) = mpsc::channel::<(Item, Vec<String>)>(QUEUE);
    let workers = vec![tokio::task::spawn_local(webhook_worker(web_rx)), tokio::task::spawn_local(command_worker(cmd_rx, cx.actor.clone()))];
    tokio::task::spawn_local(router(rx, cfg, cx, (web_tx, cmd_tx)));
    (hook, Drain(workers))
}

#[derive(Clone)]
struct Item {
    event: EventKind,
    body: Bytes,
    timeout: Duration,
    retries: u32,
}

type Queues = (mpsc::Sender<(Item, WebhookUrl)>, mpsc::Sender<(Item, Vec<String>)>);

async fn router(mut rx: mpsc::Receiver<Msg>, mut cfg: Option<AlertsConfig>, cx: Context, queues: Queues) {
    let start = Instant::now();
    let mut decider = Decider::new(settings(cfg.as_ref()));
    let cx = Rc::new(cx);
    let queues = Rc::new(queues);
    loop {
        let due = decider.next_due().map(|d| start + d);
        let msg = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => Some(m),
                None => break,
            },
            _ = sleep_until(due) => None,
        };
        let now = start.elapsed();
        let alerts = match msg {
            Some(Msg::Config(c)) => {
                decider.reconfigure(settings(c.as_ref()));
                stats::set_configured(c.is_some());
                cfg = c;
                Vec::new()
            }
            Some(Msg::Fact(_)) if cfg.is_none() => Vec::new(),
            Some(Msg::Fact(f)) => decider.fact(f, now),
            None => decider.tick(now),
        };
        for (kind, n) in decider.suppressed() {
            stats::set_suppressed(kind.as_str(), *n);
        }
        let Some(c) = cfg.as_ref() else { continue };
        for alert in alerts {
            debug!(event = %alert.kind, job = ?alert.job, "alert: {}", alert.message);
            let (cx, queues, c) = (cx.clone(), queues.clone(), c.clone());
            if alert.kind.wants_stderr() && alert.job.is_some() {
                // Off the router too: the tail is read once the job's pipe had time to drain.
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(STDERR_SETTLE).await;
                    let alert = with_stderr(alert, &cx);
                    enqueue(&alert, &c, &cx.origin, &queues);
                });
            } else {
                enqueue(&alert, &c, &cx.origin, &queues);
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The job's last stderr lines, redacted (SPEC §10: passwords never leave corral).
fn with_stderr(alert: Alert, cx: &Context) -> Alert {
    let Some(job) = alert.job.as_deref() else { return alert };
    let (lines, _) = cx.logs.tail(Some(&[job.to_string()]), RING_LINES, false, None);
    let url = cx.database_url.as_deref().unwrap_or("");
    let stderr: Vec<&str> = lines.iter().filter(|l| l.stream == "stderr").map(|l| l.line.as_str()).collect();
    let tail: Vec<String> = stderr[stderr.len().saturating_sub(STDERR_LINES)..]
        .iter()
        .map(|l| {
            let l = crate::db::redact::redact_text(l, url);
            match l.char_indices().nth(STDERR_LINE_CHARS) {
                Some((cut, _)) => format!("{}…", &l[..cut]),
                None => l,
            }
        })
        .collect();
    alert.detail("stderr_tail", tail)
}

fn enqueue(alert: &Alert, c: &AlertsConfig, origin: &Origin, queues: &Queues) {
    let body = Bytes::from(serde_json::to_vec(&payload(alert, origin, SystemTime::now())).unwrap_or_default());
    let item = Item { event: alert.kind, body, timeout: c.timeout, retries: c.retries };
    if let Some(url) = &c.webhook {
        if queues.0.try_send((item.clone(), url.clone())).is_err() {
            stats::dropped("webhook", "queue_full");
            warn!(event = %alert.kind, "alert dropped: {QUEUE} alerts already wait for the webhook ({})", url.shown());
        }
        stats::queue("webhook", QUEUE - queues.0.capacity());
    }
    if let Some(argv) = &c.command {
        if queues.1.try_send((item, argv.clone())).is_err() {
            stats::dropped("command", "queue_full");
            warn!(event = %alert.kind, "alert dropped: {QUEUE} alerts already wait for the alert command");
        }
        stats::queue("command", QUEUE - queues.1.capacity());
    }
}

async fn webhook_worker(mut rx: mpsc::Receiver<(Item, WebhookUrl)>) {
    let mut tls: Option<Arc<rustls::ClientConfig>> = None;
    while let Some((item, url)) = rx.recv().await {
        if url.https && tls.is_none() {
            tls = Some(webhook::tls_config().await);
        }
        let tls = tls.clone().unwrap_or_else(|| Arc::new(rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth()));
        let shown = url.shown();
        deliver("webhook", &shown, &item, || {
            let (url, body, tls, timeout) = (url.clone(), item.body.clone(), tls.clone(), item.timeout);
            async move {
                match tokio::time::timeout(timeout, webhook::post(&url, body, &tls)).await {
                    Ok(r) => r.map(|_| ()),
                    Err(_) => Err(PostError { message: format!("no answer within {}", humantime::format_duration(timeout)), retryable: true }),
                }
            }
        })
        .await;
        stats::queue("webhook", rx.len());
    }
}

async fn command_worker(mut rx: mpsc::Receiver<(Item, Vec<String>)>, actor: Rc<dyn Fn(ActorCmd) -> bool>) {
    while let Some((item, argv)) = rx.recv().await {
        let shown = format!("`{}`", argv.join(" "));
        deliver("command", &shown, &item, || {
            let (actor, argv, body, timeout) = (actor.clone(), argv.clone(), item.body.clone(), item.timeout);
            async move { command::run(&*actor, &argv, &body, timeout).await }
        })
        .await;
        stats::queue("command", rx.len());
    }
}

/// Attempts with backoff until one succeeds, one is refused for good, or `retries` are spent.
async fn deliver<F, Fut>(sink: &str, to: &str, item: &Item, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), PostError>>,
{
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(()) => {
                stats::sent(item.event.as_str(), sink);
                return;
            }
            Err(e) if !e.retryable => {
                stats::dropped(sink, "rejected");
                warn!(event = %item.event, "alert to {sink} {to} rejected, not retried: {}", e.message);
                return;
            }
            Err(e) if failures >= item.retries => {
                stats::dropped(sink, "retries");
                warn!(event = %item.event, attempts = failures + 1, "alert to {sink} {to} dropped: {}", e.message);
                return;
            }
            Err(e) => {
                failures += 1;
                stats::retry(sink);
                let delay = backoff(failures);
                warn!(event = %item.event, attempt = failures, retry_in_ms = delay.as_millis() as u64, "alert to {sink} {to} failed, retrying: {}", e.message);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// 1 s, 2 s, 4 s, ... up to [`MAX_BACKOFF`], each ±20 % so a fleet does not retry in step.
pub fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(MAX_BACKOFF);
    base.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// `corral alert-test`: one test alert to every destination of `cfg`, now, without a daemon
/// (the command runs as this client's own child). Returns one line per destination.
pub fn test_alert(cfg: &AlertsConfig, origin: &Origin) -> Vec<(String, Result<(), String>)> {
    let alert = Alert::new(EventKind::Test, None, "test alert from `corral alert-test`: the wiring works")
        .detail("min_interval_s", cfg.min_interval.as_secs_f64())
        .detail("events", cfg.events.iter().map(|e| e.as_str()).collect::<Vec<_>>());
    let body = serde_json::to_vec(&payload(&alert, origin, SystemTime::now())).unwrap_or_default();
    let mut out = Vec::new();
    if let Some(url) = &cfg.webhook {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let r = match rt {
            Ok(rt) => rt.block_on(async {
                let tls = webhook::tls_config().await;
                match tokio::time::timeout(cfg.timeout, webhook::post(url, Bytes::from(body.clone()), &tls)).await {
                    Ok(r) => r.map(|_| ()).map_err(|e| e.message),
                    Err(_) => Err(format!("no answer within {}", humantime::format_duration(cfg.timeout))),
                }
            }),
            Err(e) => Err(format!("cannot start a runtime: {e}")),
        };
        out.push((format!("webhook {}", url.shown()), r));
    }
    if let Some(argv) = &cfg.command {
        out.push((format!("command `{}`", argv.join(" ")), run_own_child(argv, &body, cfg.timeout)));
    }
    out
}

/// The client is not the supervisor: here the command is its own child, waited for with a
/// deadline and killed after it.
fn run_own_child(argv: &[String], body: &[u8], timeout: Duration) -> Result<(), String> {
    use std::io::Write;
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let body = body.to_vec();
        // A thread, so a command that never reads cannot block us past the deadline.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&body);
            let _ = stdin.write_all(b"\n");
        });
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(format!("it failed: {s}")),
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("it ran longer than {} and was killed", humantime::format_duration(timeout)));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        for (n, base) in [(1u32, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (40, 60.0)] {
            let d = backoff(n).as_secs_f64();
            assert!(d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9, "{n}: {d}");
        }
    }
}
