//! The control protocol shared by daemon and client (SPEC §1, §4).
//!
//! One JSON object per line in each direction. Every request carries the
//! protocol version `v`; the daemon answers each request with one response
//! line (`logs -f` streams several). This module owns the types and the
//! framing limits; it does no I/O beyond splitting lines.

use serde::{Deserialize, Serialize};

/// Default socket when neither config, `-s` nor `$CORRAL_SOCKET` names one.
pub const DEFAULT_SOCKET: &str = "/run/corral/corral.sock";

/// Bumped on incompatible changes; the daemon refuses other versions.
pub const VERSION: u32 = 1;

/// Longest request line the daemon reads. Longer lines get an error reply
/// and the connection is closed, so a hostile client cannot grow our memory.
pub const MAX_REQUEST_LINE: usize = 1 << 20;

/// A request line: `{"v":1,"cmd":"status","jobs":[]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(flatten)]
    pub request: Request,
}

/// One variant per CLI verb (SPEC §1), same names end to end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status {
        #[serde(default)]
        jobs: Vec<String>,
    },
    Start {
        jobs: Vec<String>,
    },
    Stop {
        jobs: Vec<String>,
    },
    Restart {
        jobs: Vec<String>,
    },
    Reload {
        #[serde(default)]
        dry_run: bool,
    },
    /// `signal` is a name (`SIGHUP`); the daemon refuses names it does not know.
    Signal {
        jobs: Vec<String>,
        signal: String,
    },
    /// Without `job`: every job's lines, merged by time. `since`: Unix seconds.
    Logs {
        #[serde(default)]
        job: Option<String>,
        #[serde(default = "default_log_lines")]
        lines: usize,
        #[serde(default)]
        follow: bool,
        #[serde(default)]
        since: Option<f64>,
    },
    Budget,
    Reserve {
        name: String,
        count: u32,
        #[serde(default)]
        ttl_s: Option<f64>,
    },
    Release {
        name: String,
    },
    Health,
    Shutdown,
    /// The dashboard's past: database latency over the last hour, recent events.
    History,
}

fn default_log_lines() -> usize {
    20
}

/// A response line: either `{"ok":true,"result":...}` or `{"ok":false,"error":...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Reply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReply>,
}

impl Response {
    pub fn ok(reply: Reply) -> Self {
        Response { ok: true, result: Some(reply), error: None }
    }
    pub fn err(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response { ok: false, result: None, error: Some(ErrorReply { kind, message: message.into(), result: None }) }
    }
    /// A refusal that still carries what was done (e.g. `stop a b` where `b` is unknown).
    pub fn err_with(kind: ErrorKind, message: impl Into<String>, reply: Reply) -> Self {
        Response { ok: false, result: None, error: Some(ErrorReply { kind, message: message.into(), result: Some(Box::new(reply)) }) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<Reply>>,
}

/// Why the daemon said no. `Config` maps to client exit code 2, the rest to 1 (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not JSON, unknown verb, wrong fields, too long, wrong version.
    BadRequest,
    UnknownJob,
    /// The verb could not be carried out for a job (fatal, waiting, not running).
    Refused,
    /// The config file is invalid (reload).
    Config,
    /// The feature needs a `[database]` section.
    NoDatabase,
    ShuttingDown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Status(StatusReport),
    Actions { jobs: Vec<JobStatus> },
    Reload(ReloadReport),
    Logs { lines: Vec<LogLine> },
    Log(LogLine),
    Budget(serde_json::Value),
    Health(HealthReport),
    Done { message: String },
    History(serde_json::Value),
}

/// `status --json` (SPEC §4): stable names, fields may be added but never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub jobs: Vec<JobStatus>,
    pub config_error: Option<String>,
    #[serde(default)]
    pub supervisor: SupervisorInfo,
    /// With a `[database]`: the limit that binds and why, usable, granted, and the database's
    /// state with its last error (also before any check succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SupervisorInfo {
    pub pid: u32,
    pub version: String,
    pub config: String,
    pub uptime_s: f64,
    /// Unix time corral started, in seconds.
    #[serde(default)]
    pub started_at: f64,
    pub zombies_reaped: u64,
    pub orphans_killed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub name: String,
    pub state: String,
    pub pid: Option<i32>,
    pub uptime_s: Option<f64>,
    pub restarts: u32,
    pub last_exit: Option<ExitInfo>,
    pub quota: Option<u32>,
    pub connections: Option<u32>,
    pub reason: Option<String>,
    /// Lines of the job's output dropped from corral's stdout because it was not read fast
    /// enough (SPEC §7); `corral logs` still has them.
    #[serde(default)]
    pub output_dropped: u64,
    /// The current process is ready (its `ready` probe passed, or `healthy_after`).
    #[serde(default)]
    pub ready: bool,
    /// The cause of the last restart the watchdog forced: "unhealthy", "stalled", "memory".
    #[serde(default)]
    pub restart_reason: Option<String>,
    /// RSS of the job's whole process tree, sampled while some job has `memory_max`.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub applied: bool,
    pub plan: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub job: String,
    pub stream: String,
    /// Unix time in seconds.
    pub ts: f64,
    pub line: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub healthy: bool,
    pub supervisor: bool,
    pub database: Option<serde_json::Value>,
    pub message: String,
}

/// Parse one request line, mapping every failure to an error response.
// The error is the reply itself, built only for bad requests: boxing it buys nothing.
#[allow(clippy::result_large_err)]
pub fn decode_request(line: &[u8]) -> Result<Request, Response> {
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| Response::err(ErrorKind::BadRequest, format!("malformed JSON: {e}")))?;
    let v = value.get("v").and_then(|v| v.as_u64());
    if v != Some(VERSION as u64) {
        return Err(Response::err(
            ErrorKind::BadRequest,
            format!("unsupported protocol version {v:?}: this corral speaks v{VERSION}"),
        ));
    }
    let env: Envelope = serde_json::from_value(value)
        .map_err(|e| Response::err(ErrorKind::BadRequest, format!("bad request: {e}")))?;
    Ok(env.request)
}

/// Cannot fail (strings, numbers, JSON values; no map with non-string keys); if it ever did,
/// the daemon would answer "bad request" rather than panic.
pub fn encode_request(request: &Request) -> String {
    let mut s = serde_json::to_string(&Envelope { v: VERSION, request: request.clone() }).unwrap_or_default();
    s.push('\n');
    s
}

/// Cannot fail, as above; a response that did not encode becomes an error response.
pub fn encode_response(response: &Response) -> String {
    let mut s = serde_json::to_string(response).unwrap_or_else(|e| {
        format!("{{\"ok\":false,\"error\":{{\"kind\":\"refused\",\"message\":{}}}}}", serde_json::Value::from(format!("cannot encode the response: {e}")))
    });
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let r = Request::Stop { jobs: vec!["a".into()] };
        let line = encode_request(&r);
        assert_eq!(line, "{\"v\":1,\"cmd\":\"stop\",\"jobs\":[\"a\"]}\n");
        assert_eq!(decode_request(line.trim_end().as_bytes()).unwrap(), r);
    }

    #[test]
    fn logs_requests_from_older_clients_still_decode() {
        let r = decode_request(br#"{"v":1,"cmd":"logs","job":"a","lines":5}"#).unwrap();
        assert_eq!(r, Request::Logs { job: Some("a".into()), lines: 5, follow: false, since: None });
        let all = Request::Logs { job: None, lines: 20, follow: true, since: Some(1.5) };
        assert_eq!(decode_request(encode_request(&all).trim_end().as_bytes()).unwrap(), all);
    }

    #[test]
    fn bad_requests_are_errors_not_panics() {
        for line in [&b"{"[..], b"null", b"[]", b"{\"v\":1}", b"{\"v\":1,\"cmd\":\"nope\"}", b"{\"v\":2,\"cmd\":\"status\"}", b"\xff\xfe"] {
            let err = decode_request(line).unwrap_err();
            assert!(!err.ok);
            assert_eq!(err.error.unwrap().kind, ErrorKind::BadRequest);
        }
    }

    /// A JSON value of any shape, a few levels deep.
    fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "\\PC{0,20}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("\\PC{0,8}", inner, 0..6).prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            let _ = decode_request(&bytes);
        }

        /// Requests that are nearly right: a known verb with fields of any type and value.
        #[test]
        fn near_valid_requests_decode_or_get_a_bad_request_reply(
            cmd in proptest::sample::select(vec!["status", "start", "stop", "restart", "reload", "logs", "budget", "reserve", "release", "health", "shutdown", "x"]),
            fields in proptest::collection::btree_map(
                proptest::sample::select(vec!["jobs", "job", "lines", "follow", "name", "count", "ttl_s", "dry_run", "v", "extra"]),
                any_json(),
                0..5,
            ),
        ) {
            let mut m = serde_json::Map::new();
            m.insert("v".into(), 1.into());
            m.insert("cmd".into(), cmd.into());
            m.extend(fields.into_iter().map(|(k, v)| (k.to_string(), v)));
            let line = serde_json::Value::Object(m).to_string();
            match decode_request(line.as_bytes()) {
                Ok(req) => {
                    // What decodes encodes back to the same request.
                    let again = encode_request(&req);
                    proptest::prop_assert_eq!(decode_request(again.trim_end().as_bytes()).ok(), Some(req));
                }
                Err(resp) => proptest::prop_assert_eq!(resp.error.map(|e| e.kind), Some(ErrorKind::BadRequest)),
            }
        }

        /// Every response corral can build encodes to one line of JSON that reads back.
        #[test]
        fn responses_always_encode_to_one_line(message in "\\PC{0,200}", value in any_json()) {
            for resp in [Response::err(ErrorKind::Refused, message.clone()), Response::ok(Reply::Budget(value.clone())), Response::ok(Reply::Done { message: message.clone() })] {
                let line = encode_response(&resp);
                proptest::prop_assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
                let back: Response = serde_json::from_str(&line).unwrap();
                // An internally tagged variant cannot hold a bare non-object: that one becomes an
                // error reply (it once was an expect() in the daemon).
                proptest::prop_assert!(back.ok == resp.ok || line.contains("cannot encode the response"), "{}", line);
            }
        }
    }
}
