//! The control socket (SPEC §1, §10): a Unix socket, mode 0600 (0660 with
//! `socket_group`), serving line-delimited JSON requests.
//!
//! Each connection is its own task with a size cap and a read timeout, so a
//! slow, silent or hostile client only ever costs its own task. Requests are
//! forwarded to the actor with a oneshot reply; `logs -f` is streamed from the
//! log store without involving the actor.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, oneshot};

use super::supervisor::{Event, EventTx};
use crate::process::output::LogStore;
use crate::protocol::{self, ErrorKind, Reply, Request, Response, MAX_REQUEST_LINE};

/// A client that connects and sends nothing is answered and dropped after this.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

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
        let gid = nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .ok_or_else(|| format!("socket_group {group:?} does not exist"))?
            .gid;
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| format!("cannot chown socket to group {group}: {e}"))?;
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

pub async fn serve(listener: UnixListener, tx: EventTx, logs: LogStore) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, tx.clone(), logs.clone()));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!("accept on control socket failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, tx: EventTx, logs: LogStore) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = tokio::time::timeout(IDLE_TIMEOUT, read_line_limited(&mut reader, &mut buf)).await;
        let resp = match read {
            Err(_) => {
                let r = Response::err(ErrorKind::BadRequest, "timed out waiting for a request");
                let _ = write.write_all(protocol::encode_response(&r).as_bytes()).await;
                return;
            }
            Ok(Err(_)) | Ok(Ok(LineRead::Eof)) => return,
            Ok(Ok(LineRead::TooLong)) => {
                let r = Response::err(
                    ErrorKind::BadRequest,
                    format!("request longer than {MAX_REQUEST_LINE} bytes"),
                );
                let _ = write.write_all(protocol::encode_response(&r).as_bytes()).await;
                return;
            }
            Ok(Ok(LineRead::Line)) => match protocol::decode_request(&buf) {
                Err(r) => r,
                Ok(Request::Logs { job, lines, follow }) => {
                    let check = ask(&tx, Request::Logs { job: job.clone(), lines, follow }).await;
                    if !check.ok {
                        check
                    } else {
                        let (tail, rx) = logs.tail(&job, lines, follow);
                        let r = Response::ok(Reply::Logs { lines: tail });
                        if write.write_all(protocol::encode_response(&r).as_bytes()).await.is_err() {
                            return;
                        }
                        if let Some(rx) = rx {
                            follow_logs(rx, &mut write).await;
                            return;
                        }
                        continue;
                    }
                }
                Ok(req) => ask(&tx, req).await,
            },
        };
        if write.write_all(protocol::encode_response(&resp).as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn ask(tx: &EventTx, req: Request) -> Response {
    let (reply_tx, reply_rx) = oneshot::channel();
    if tx.send(Event::Request(req, reply_tx)).is_err() {
        return Response::err(ErrorKind::ShuttingDown, "supervisor is shutting down");
    }
    reply_rx.await.unwrap_or_else(|_| Response::err(ErrorKind::ShuttingDown, "supervisor is shutting down"))
}

async fn follow_logs(mut rx: broadcast::Receiver<crate::protocol::LogLine>, write: &mut tokio::net::unix::OwnedWriteHalf) {
    loop {
        match rx.recv().await {
            Ok(line) => {
                let r = Response::ok(Reply::Log(line));
                if write.write_all(protocol::encode_response(&r).as_bytes()).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
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
