//! Job output (SPEC §9): each line of a job's stdout/stderr is written to
//! corral's stdout, prefixed with the job's name (text) or as a JSON object,
//! and kept in a per-job ring buffer for `corral logs` (with a broadcast for
//! `logs -f`).
//!
//! Readers are plain tasks that own the pipe; they never touch job state, so a
//! chatty job cannot slow down the supervisor actor.
//!
//! Nothing here ever blocks the runtime thread on corral's own stdout or stderr (SPEC §7):
//! lines go to a [`Sink`], a bounded queue drained by a writer thread of its own, which is the
//! only code that may block on a reader that stopped reading (a stuck log driver, a terminal
//! paused with Ctrl-S). When the queue is full, a line is dropped and counted for its job
//! (`output_dropped` in `status --json` and `/metrics`); the ring buffer for `corral logs` is
//! filled all the same. corral's own log (tracing, on stderr) goes through a second sink.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::broadcast;

use crate::config::LogFormat;
use crate::protocol::LogLine;

/// Lines kept per job for `corral logs`.
pub const RING_LINES: usize = 1000;
/// Longer lines are cut (a runaway job must not grow our memory).
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Bytes of output waiting for a slow stdout (or stderr) before lines are dropped. The writer
/// thread may hold one more batch of this size while it is blocked.
pub const SINK_BYTES: usize = 1 << 20;

#[derive(Default)]
struct JobLog {
    lines: VecDeque<LogLine>,
    follow: Option<broadcast::Sender<LogLine>>,
    /// Lines that did not reach corral's stdout because it was not read fast enough.
    dropped: u64,
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

    /// The last `n` lines of `jobs` (of every job when `None`; several are merged by time)
    /// written at or after `since`, and, when `follow`, a receiver for the next ones (taken
    /// under the same lock so no line falls between the two). Following several jobs receives
    /// every job's lines: the caller keeps those of `jobs`.
    pub fn tail(&self, jobs: Option<&[String]>, n: usize, follow: bool, since: Option<f64>) -> (Vec<LogLine>, Option<broadcast::Receiver<LogLine>>) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let recent = |log: &JobLog| {
            let fresh: Vec<&LogLine> = log.lines.iter().filter(|l| since.is_none_or(|t| l.ts >= t)).collect();
            fresh[fresh.len().saturating_sub(n)..].iter().map(|l| (*l).clone()).collect::<Vec<_>>()
        };
        let job = match jobs {
            Some([job]) => Some(job),
            _ => None,
        };
        let Some(job) = job else {
            let mut lines: Vec<LogLine> = map.iter().filter(|(name, _)| jobs.is_none_or(|js| js.contains(name))).flat_map(|(_, log)| recent(log)).collect();
            lines.sort_by(|a, b| a.ts.total_cmp(&b.ts));
            let lines = lines.split_off(lines.len().saturating_sub(n));
            let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
            let rx = follow.then(|| all.get_or_insert_with(|| broadcast::channel(1024).0).subscribe());
            return (lines, rx);
        };
        let log = map.entry(job.clone()).or_default();
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

    /// Lines of `job` dropped from corral's stdout so far.
    pub fn dropped(&self, job: &str) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).get(job).map_or(0, |l| l.dropped)
    }

    fn count_dropped(&self, job: &str) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(job.to_string()).or_default().dropped += 1;
    }
}

/// Read `fd` line by line until EOF, printing and storing each line; `watch` (the stall timer,
/// a ready log regex) sees each line too.
pub fn start_reader(fd: OwnedFd, job: String, stream: &'static str, format: LogFormat, store: LogStore, watch: Option<Arc<crate::watchdog::LineWatch>>) {
    let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let tracker = store.clone();
    let reader = tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(1024, pipe);
        let mut buf = Vec::with_capacity(256);
        let mut stalled = false;
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
            if let Some(w) = &watch {
                w.line(&text);
            }
            let now = std::time::SystemTime::now();
            let line = LogLine { job: job.clone(), stream: stream.to_string(), ts: unix_seconds(now), line: text };
            if stdout_sink().push(format_line(&line, now, format)) {
                stalled = false;
            } else {
                store.count_dropped(&job);
                if !std::mem::replace(&mut stalled, true) {
                    tracing::warn!(job = %job, "corral's stdout is not read fast enough: dropping output lines (counted in status as output_dropped; `corral logs` keeps them)");
                }
            }
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

/// One line as it appears on corral's stdout, read at `at`.
fn format_line(line: &LogLine, at: std::time::SystemTime, format: LogFormat) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.job.len() + line.line.len() + 4);
    let _ = match format {
        LogFormat::Text => writeln!(out, "[{}] {}", line.job, line.line),
        LogFormat::Json => {
            let event = JsonEvent {
                timestamp: humantime::format_rfc3339_micros(at).to_string(),
                level: "INFO",
                fields: JsonFields { message: &line.line, job: &line.job, stream: &line.stream },
                target: JOB_TARGET,
            };
            match serde_json::to_writer(&mut out, &event) {
                Ok(()) => writeln!(out),
                Err(e) => writeln!(out, "{{\"error\":\"{e}\"}}"),
            }
        }
    };
    out
}

/// The `target` of a job's line in JSON: corral's own events carry their module path there.
const JOB_TARGET: &str = "corral::job";

/// A job's line in tracing-subscriber's JSON schema, the one corral's own log on stderr uses, so
/// one parser reads both streams: `{"timestamp":"2026-12-01T11:40:00.827312Z","level":"INFO",
/// "fields":{"message":LINE,"job":JOB,"stream":"stdout"|"stderr"},"target":"corral::job"}`.
#[derive(serde::Serialize)]
struct JsonEvent<'a> {
    /// RFC 3339 in UTC with microseconds, as tracing-subscriber's default timer writes it.
    timestamp: String,
    level: &'static str,
    fields: JsonFields<'a>,
    target: &'static str,
}

#[derive(serde::Serialize)]
struct JsonFields<'a> {
    message: &'a str,
    job: &'a str,
    stream: &'a str,
}

/// Job output's way to corral's stdout.
pub fn stdout_sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| Sink::spawn("corral-stdout", std::io::stdout().as_fd().try_clone_to_owned().ok(), SINK_BYTES))
}

/// corral's own log's way to stderr (see `main.rs`).
pub fn stderr_sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| Sink::spawn("corral-stderr", std::io::stderr().as_fd().try_clone_to_owned().ok(), SINK_BYTES))
}

/// A bounded, lossy byte queue in front of a file descriptor, drained by its own thread.
/// `push` never blocks: it takes the bytes when they fit in the bound, else drops them.
/// Only the writer thread ever waits on the descriptor.
pub struct Sink {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when bytes are queued.
    ready: Condvar,
    /// Signalled when the writer finished a batch.
    written: Condvar,
}

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Vec<u8>>,
    bytes: usize,
    /// The writer took a batch and is writing it.
    writing: bool,
    dropped: u64,
    capacity: usize,
}

impl Sink {
    /// Start the writer thread on `out` (None: a sink that discards, when the descriptor
    /// could not be duplicated). Without a thread (it could not be spawned) bytes are dropped.
    pub fn spawn(name: &str, out: Option<OwnedFd>, capacity: usize) -> Sink {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { capacity, ..Queue::default() }),
            ready: Condvar::new(),
            written: Condvar::new(),
        });
        let worker = shared.clone();
        let file = out.map(std::fs::File::from);
        let spawned = std::thread::Builder::new().name(name.to_string()).spawn(move || worker.drain_to(file));
        if spawned.is_err() {
            shared.lock().capacity = 0;
        }
        Sink { shared }
    }

    /// Queue `bytes`; false when they were dropped (the queue is full).
    pub fn push(&self, bytes: Vec<u8>) -> bool {
        let mut q = self.shared.lock();
        if q.bytes + bytes.len() > q.capacity {
            q.dropped += 1;
            return false;
        }
        q.bytes += bytes.len();
        q.chunks.push_back(bytes);
        drop(q);
        self.shared.ready.notify_one();
        true
    }

    /// Chunks dropped so far.
    pub fn dropped(&self) -> u64 {
        self.shared.lock().dropped
    }

    /// Wait up to `timeout` until everything queued is written. False when the reader is
    /// too slow (or gone): at exit, corral does not wait longer than that for it.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut q = self.shared.lock();
        while !q.chunks.is_empty() || q.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            q = self.shared.written.wait_timeout(q, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer thread: take everything queued, write it (this may block), repeat.
    fn drain_to(&self, mut out: Option<std::fs::File>) {
        loop {
            let batch = {
                let mut q = self.lock();
                while q.chunks.is_empty() {
                    q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner());
                }
                q.writing = true;
                q.bytes = 0;
                std::mem::take(&mut q.chunks)
            };
            if let Some(f) = out.as_mut() {
                for chunk in &batch {
                    // A closed reader (EPIPE; SIGPIPE is ignored) or any other error: the bytes
                    // are lost, as they would be on a terminal that went away.
                    if f.write_all(chunk).is_err() {
                        break;
                    }
                }
            }
            drop(batch);
            self.lock().writing = false;
            self.written.notify_all();
        }
    }
}

/// A `tracing` writer for a sink: each formatted event is one chunk.
#[derive(Clone, Copy)]
pub struct SinkWriter(pub &'static Sink);

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for SinkWriter {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> SinkWriter {
        *self
    }
}

pub fn unix_now() -> f64 {
    unix_seconds(std::time::SystemTime::now())
}

fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn json_job_lines_have_the_schema_of_corrals_own_json_log() {
        let line = LogLine { job: "web".into(), stream: "stderr".into(), ts: 0.0, line: "boom \"quoted\"".into() };
        let at = std::time::UNIX_EPOCH + Duration::from_micros(1_795_450_359_530_526);
        let ours: serde_json::Value = serde_json::from_slice(&format_line(&line, at, LogFormat::Json)).unwrap();
        assert_eq!(
            ours,
            serde_json::json!({
                "timestamp": "2026-11-23T16:12:39.530526Z",
                "level": "INFO",
                "fields": {"message": "boom \"quoted\"", "job": "web", "stream": "stderr"},
                "target": "corral::job",
            })
        );
        assert_eq!(format_line(&line, at, LogFormat::Text), b"[web] boom \"quoted\"\n");

        // What tracing-subscriber's JSON (corral's own log with log_format = "json") writes.
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt().json().with_writer(move || writer.clone()).finish();
        tracing::subscriber::with_default(subscriber, || tracing::info!(job = "web", stream = "stderr", "boom"));
        let theirs: serde_json::Value = serde_json::from_slice(&buf.0.lock().unwrap()).unwrap();
        let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&ours), keys(&theirs), "{theirs}");
        assert_eq!(keys(&ours["fields"]), keys(&theirs["fields"]), "{theirs}");
        let stamp = theirs["timestamp"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(stamp).is_ok() && stamp.len() == 27 && stamp.ends_with('Z'), "{stamp}");
        assert_eq!(theirs["level"], "INFO");
    }

    fn pipe() -> (std::fs::File, OwnedFd) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (std::fs::File::from(r), w)
    }

    #[test]
    fn a_reader_that_stops_reading_costs_dropped_lines_never_a_blocked_push() {
        let (mut r, w) = pipe();
        // The smallest pipe (a page), so the writer surely blocks on what the queue holds.
        let _ = nix::fcntl::fcntl(std::os::fd::AsRawFd::as_raw_fd(&w), nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096));
        let sink = Sink::spawn("test-sink", Some(w), 8 * 1000);
        let line = [vec![b'x'; 999], vec![b'\n']].concat();
        // Far more than the pipe and the queue hold: every push returns at once.
        let kept = (0..5_000).filter(|_| sink.push(line.clone())).count();
        assert!((8..5_000).contains(&kept), "kept {kept}");
        assert_eq!(sink.dropped() as usize, 5_000 - kept);
        assert!(!sink.flush(Duration::from_millis(50)), "nobody reads: the flush gives up");
        // The reader comes back: what was kept arrives, whole lines.
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; kept * 1000];
            r.read_exact(&mut got).map(|_| got)
        });
        assert!(sink.flush(Duration::from_secs(10)));
        let got = reader.join().unwrap().unwrap();
        assert!(got.chunks(1000).all(|l| l == line.as_slice()));
    }

    #[test]
    fn lines_arrive_in_order_when_the_reader_keeps_up() {
        let (mut r, w) = pipe();
        let sink = Sink::spawn("test-sink", Some(w), 1 << 20);
        for i in 0..1000 {
            assert!(sink.push(format!("{i}\n").into_bytes()));
        }
        assert!(sink.flush(Duration::from_secs(10)));
        let mut buf = vec![0u8; 1 << 16];
        let mut text = String::new();
        while text.lines().count() < 1000 {
            let n = r.read(&mut buf).unwrap();
            text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        let want: String = (0..1000).map(|i| format!("{i}\n")).collect();
        assert_eq!(text, want);
        assert_eq!(sink.dropped(), 0);
    }

    #[test]
    fn a_closed_reader_is_not_an_error() {
        let (r, w) = pipe();
        drop(r);
        let sink = Sink::spawn("test-sink", Some(w), 1 << 20);
        assert!(sink.push(b"into the void\n".to_vec()));
        assert!(sink.flush(Duration::from_secs(10)));
    }
}
