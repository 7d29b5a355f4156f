//! The socket client: send one request, read response lines.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::protocol::{self, Reply, Request, Response};

/// Send `request`; call `each` for every response line (one, or many for
/// `logs -f`) and return the last. Err only when no daemon answers.
pub fn call(socket: &Path, request: &Request, each: impl FnMut(&Response)) -> std::io::Result<Response> {
    exchange(UnixStream::connect(socket)?, request, each)
}

/// One request, one answer, given up after `timeout` (a client that must stay responsive:
/// `corral top`).
pub fn ask(socket: &Path, request: &Request, timeout: std::time::Duration) -> std::io::Result<Response> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    exchange(stream, request, |_| {})
}

fn exchange(mut stream: UnixStream, request: &Request, mut each: impl FnMut(&Response)) -> std::io::Result<Response> {
    stream.write_all(protocol::encode_request(request).as_bytes())?;
    let follow = matches!(request, Request::Logs { follow: true, .. });
    let mut reader = BufReader::new(stream);
    let mut last = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let resp: Response = serde_json::from_str(&line)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad response from daemon: {e}")))?;
        each(&resp);
        let more = follow && resp.ok && matches!(resp.result, Some(Reply::Logs { .. }) | Some(Reply::Log(_)));
        last = Some(resp);
        if !more {
            break;
        }
    }
    last.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the daemon closed the connection without answering"))
}
