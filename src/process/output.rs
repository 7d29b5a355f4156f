//! Job output (SPEC §9): each line of a job's stdout/stderr is written to
//! corral's stdout, prefixed with the job's name (text) or as a JSON object,
//! and kept in a per-job ring buffer for `corral logs` (with a broadcast for
//! `logs -f`).
//!
//! Readers are plain tasks that own the pipe; they never touch job state, so a
//! chatty job cannot slow down the supervisor actor.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::broadcast;

use crate::config::LogFormat;
use crate::protocol::LogLine;

/// Lines kept per job for `corral logs`.
pub const RING_LINES: usize = 1000;
/// Longer lines are cut (a runaway job must not grow our memory).
pub const MAX_LINE_BYTES: usize = 16 * 1024;

#[derive(Default)]
struct JobLog {
    lines: VecDeque<LogLine>,
    follow: Option<broadcast::Sender<LogLine>>,
}

/// Shared between readers (writers of lines) and the control server (readers).
#[derive(Clone, Default)]
pub struct LogStore {
    inner: Arc<Mutex<HashMap<String, JobLog>>>,
    /// `logs -f` without a job: every job's new lines. Locked after `inner`, never alone.
    all: Arc<Mutex<Option<broadcast::Sender<LogLine>>>>,
    /// Reader tasks still running, so shutdown can print a job's last lines
    /// (written just before it exited) before the runtime is dropped.
    readers: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl LogStore {
    pub fn push(&self, line: LogLine) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        if all.as_ref().is_some_and(|tx| tx.send(line.clone()).is_err()) {
            *all = None;
        }
        let log = map.entry(line.job.clone()).or_default();
        if let Some(tx) = &log.follow {
            if tx.send(line.clone()).is_err() {
                log.follow = None;
            }
        }
        if log.lines.len() == RING_LINES {
            log.lines.pop_front();
        }
        log.lines.push_back(line);
    }

    /// The last `n` lines of `job` (of every job, merged by time, when `None`) written at or
    /// after `since`, and, when `follow`, a receiver for the next ones (taken under the same
    /// lock so no line falls between the two).
    pub fn tail(&self, job: Option<&str>, n: usize, follow: bool, since: Option<f64>) -> (Vec<LogLine>, Option<broadcast::Receiver<LogLine>>) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let recent = |log: &JobLog| {
            let fresh: Vec<&LogLine> = log.lines.iter().filter(|l| since.is_none_or(|t| l.ts >= t)).collect();
            fresh[fresh.len().saturating_sub(n)..].iter().map(|l| (*l).clone()).collect::<Vec<_>>()
        };
        let Some(job) = job else {
            let mut lines: Vec<LogLine> = map.values().flat_map(recent).collect();
            lines.sort_by(|a, b| a.ts.total_cmp(&b.ts));
            let lines = lines.split_off(lines.len().saturating_sub(n));
            let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
            let rx = follow.then(|| all.get_or_insert_with(|| broadcast::channel(1024).0).subscribe());
            return (lines, rx);
        };
        let log = map.entry(job.to_string()).or_default();
        let lines = recent(log);
        let rx = follow.then(|| log.follow.get_or_insert_with(|| broadcast::channel(1024).0).subscribe());
        (lines, rx)
    }

    fn track(&self, reader: tokio::task::JoinHandle<()>) {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        readers.retain(|r| !r.is_finished());
        readers.push(reader);
    }

    /// Wait up to `timeout` for every reader to reach EOF (all writers gone).
    /// A pipe held open by a surviving orphan only costs the timeout.
    pub async fn drain(&self, timeout: std::time::Duration) {
        let readers = std::mem::take(&mut *self.readers.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = tokio::time::timeout(timeout, async {
            for r in readers {
                let _ = r.await;
            }
        })
        .await;
    }

    pub fn forget(&self, job: &str) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).remove(job);
    }
}

/// Read `fd` line by line until EOF, printing and storing each line.
pub fn start_reader(fd: OwnedFd, job: String, stream: &'static str, format: LogFormat, store: LogStore) {
    let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let tracker = store.clone();
    let reader = tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(1024, pipe);
        let mut buf = Vec::with_capacity(256);
        loop {
            buf.clear();
            match read_line_capped(&mut reader, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            while matches!(buf.last(), Some(b'\n' | b'\r')) {
                buf.pop();
            }
            let text = String::from_utf8_lossy(&buf).into_owned();
            let line = LogLine { job: job.clone(), stream: stream.to_string(), ts: unix_now(), line: text };
            emit(&line, format);
            store.push(line);
        }
    });
    tracker.track(reader);
}

/// Like `read_until(b'\n')` but stops collecting after MAX_LINE_BYTES, then
/// discards the rest of the line.
async fn read_line_capped<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(total);
        }
        let (used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = MAX_LINE_BYTES.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..used.min(room)]);
        r.consume(used);
        total += used;
        if done {
            return Ok(total);
        }
    }
}

fn emit(line: &LogLine, format: LogFormat) {
    let mut out = std::io::stdout().lock();
    let _ = match format {
        LogFormat::Text => writeln!(out, "[{}] {}", line.job, line.line),
        LogFormat::Json => {
            let v = serde_json::json!({"ts": line.ts, "job": line.job, "stream": line.stream, "line": line.line});
            writeln!(out, "{v}")
        }
    };
    let _ = out.flush();
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
