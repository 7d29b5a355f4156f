//! The control socket (SPEC §1, §10): a Unix socket, mode 0600 (0660 with
//! `socket_group`), serving line-delimited JSON requests.
//!
//! Each connection is its own task with a size cap and a read timeout, so a
//! slow, silent or hostile client only ever costs its own task. Requests are
//! forwarded to the actor with a oneshot reply; `logs -f` is streamed from the
//! log store without involving the actor.
//!
//! Shutdown (mini-redis style) is a broadcast and a drain: [`Server::finish`]
//! stops accepting, tells every connection to close, and waits a bounded time
//! for the answers already on their way, so `corral shutdown` gets its reply
//! before the process exits.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, watch};

use super::event::EventTx;
use crate::process::output::LogStore;
use crate::protocol::{self, ErrorKind, Reply, Request, Response, MAX_REQUEST_LINE};

/// A client that connects and sends nothing is answered and dropped after
/// this. Every corral client writes its request at once; only a stuck or
/// hostile peer waits this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// At exit, how long answers already on their way get to reach their clients.
const FLUSH_GRACE: Duration = Duration::from_secs(1);

pub async fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, String> {
    if path.exists() {
        match UnixStream::connect(path).await {
            Ok(mut s) => {
                let pid = other_pid(&mut s).await;
                return Err(format!(
                    "another corral{} is already serving on {}; stop it first or use another socket (-s PATH)",
                    pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                    path.display()
                ));
            }
            Err(_) => {
                tracing::info!("removing stale socket {}", path.display());
                std::fs::remove_file(path).map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
            }
        }
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create socket directory {}: {e}", dir.display()))?;
        }
    }
    // Create the socket already private: no window where it is world-accessible.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(|e| format!("cannot bind control socket {}: {e}", path.display()))?;
    if let Some(group) = group {
        let gid = crate::lookup::users::group_id(group).map_err(|e| format!("socket_group: {e}"))?;
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| format!("cannot chown socket to group {group}: {e}"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| format!("cannot chmod socket: {e}"))?;
    } else {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot chmod socket: {e}"))?;
    }
    Ok(listener)
}

async fn other_pid(s: &mut UnixStream) -> Option<u32> {
    let req = protocol::encode_request(&Request::Status { jobs: vec![] });
    let fut = async {
        s.write_all(req.as_bytes()).await.ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await.ok()?;
        let resp: Response = serde_json::from_str(&line).ok()?;
        match resp.result {
            Some(Reply::Status(st)) => Some(st.supervisor.pid),
            _ => None,
        }
    };
    tokio::time::timeout(Duration::from_secs(2), fut).await.ok().flatten()
}

/// The running control server.
pub struct Server {
    shutdown: watch::Sender<bool>,
    /// Yields `None` once the accept loop and every connection task are gone:
    /// each holds a clone of the sender.
    done: mpsc::Receiver<()>,
}

impl Server {
    pub fn spawn(listener: UnixListener, tx: EventTx, logs: LogStore) -> Server {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (done_tx, done) = mpsc::channel(1);
        tokio::spawn(serve(listener, tx, logs, shutdown_rx, done_tx));
        Server { shutdown, done }
    }

    /// Stop accepting, close idle and following connections, and give replies
    /// in flight (the answer to `shutdown` among them) a bounded time to be written.
    pub async fn finish(mut self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(FLUSH_GRACE, self.done.recv()).await;
    }
}

async fn serve(
    listener: UnixListener,
    tx: EventTx,
    logs: LogStore,
    mut shutdown: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let conn = Connection { tx: tx.clone(), logs: logs.clone(), shutdown: shutdown.clone(), _done: done.clone() };
                    tokio::spawn(conn.run(stream));
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!("accept on control socket failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// What one connection task holds.
struct Connection {
    tx: EventTx,
    logs: LogStore,
    shutdown: watch::Receiver<bool>,
    /// Dropped with the task: tells [`Server::finish`] this connection is done.
    _done: mpsc::Sender<()>,
}

impl Connection {
    async fn run(mut self, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let read = tokio::select! {
                r = tokio::time::timeout(IDLE_TIMEOUT, read_line_limited(&mut reader, &mut buf)) => r,
                _ = self.shutdown.changed() => {
                    let r = Response::shutting_down();
                    let _ = write.write_all(protocol::encode_response(&r).as_bytes()).await;
                    return;
                }
            };
            let resp = match read {
                Err(_) => {
                    let r = Response::err(ErrorKind::BadRequest, "timed out waiting for a request");
                    let _ = write.write_all(protocol::encode_response(&r).as_bytes()).await;
                    return;
                }
                Ok(Err(_)) | Ok(Ok(LineRead::Eof)) => return,
                Ok(Ok(LineRead::TooLong)) => {
                    let r = Response::err(ErrorKind::BadRequest, format!("request longer than {MAX_REQUEST_LINE} bytes"));
                    let _ = write.write_all(protocol::encode_response(&r).as_bytes()).await;
                    return;
                }
                Ok(Ok(LineRead::Line)) => match protocol::decode_request(&buf) {
                    Err(r) => r,
                    Ok(Request::Logs { job, lines, follow, since }) => {
                        // The actor knows the jobs: `NAME` of a job with `instances` is all of them.
                        let jobs = match job {
                            None => Ok(None),
                            Some(job) => match super::ask::request(&self.tx, Request::Status { jobs: vec![job] }).await {
                                Response { ok: true, result: Some(Reply::Status(report)), .. } => Ok(Some(report.jobs.into_iter().map(|j| j.name).collect::<Vec<_>>())),
                                other => Err(other),
                            },
                        };
                        match jobs {
                            Err(refused) => refused,
                            Ok(jobs) => {
                                let (tail, rx) = self.logs.tail(jobs.as_deref(), lines, follow, since);
                                let r = Response::ok(Reply::Logs { lines: tail });
                                if write.write_all(protocol::encode_response(&r).as_bytes()).await.is_err() {
                                    return;
                                }
                                if let Some(rx) = rx {
                                    let only = jobs.filter(|js| js.len() > 1);
                                    self.follow_logs(rx, only, reader, write).await;
                                    return;
                                }
                                continue;
                            }
                        }
                    }
                    Ok(req) => super::ask::request(&self.tx, req).await,
                },
            };
            if write.write_all(protocol::encode_response(&resp).as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// Stream new lines until the client hangs up (its read half reaches EOF,
    /// even when the job prints nothing) or the supervisor exits.
    async fn follow_logs(
        mut self,
        mut rx: broadcast::Receiver<crate::protocol::LogLine>,
        only: Option<Vec<String>>,
        mut reader: BufReader<OwnedReadHalf>,
        mut write: OwnedWriteHalf,
    ) {
        let mut scratch = [0u8; 512];
        loop {
            tokio::select! {
                line = rx.recv() => match line {
                    Ok(line) if only.as_ref().is_some_and(|js| !js.contains(&line.job)) => {}
                    Ok(line) => {
                        let r = Response::ok(Reply::Log(line));
                        if write.write_all(protocol::encode_response(&r).as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                // Anything a follower sends is ignored; EOF or an error means it is gone.
                n = reader.read(&mut scratch) => {
                    if !matches!(n, Ok(n) if n > 0) {
                        return;
                    }
                }
                _ = self.shutdown.changed() => return,
            }
        }
    }
}

enum LineRead {
    Line,
    Eof,
    TooLong,
}

/// Read one `\n`-terminated line into `buf`, refusing lines over the cap.
async fn read_line_limited<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<LineRead> {
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() { LineRead::Eof } else { LineRead::Line });
        }
        let (used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if buf.len() + used > MAX_REQUEST_LINE + 1 {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(&chunk[..used]);
        r.consume(used);
        if done {
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            return Ok(LineRead::Line);
        }
    }
}
