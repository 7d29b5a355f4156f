//! The control protocol shared by daemon and client (SPEC §1, §4).
//!
//! One JSON object per line in each direction. Every request carries the
//! protocol version `v`; the daemon answers each request with one response
//! line (`logs -f` streams several). This module owns the types and the
//! framing limits; it does no I/O beyond splitting lines.

use serde::{Deserialize, Serialize};

pub use crate::budget::allocate::Wants;
pub use crate::budget::plan::{LimitSource, PoolerLimit};
pub use crate::config::ReloadPlan;
/// A job's state (SPEC §4): `stopped`, `starting`, `running`, `backoff`, `stopping`,
/// `exited`, `fatal`, `waiting`. The state machine's own type, so the names cannot drift.
pub use crate::job::State as JobState;

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
    /// corral is stopping: nothing is started or changed any more.
    pub fn shutting_down() -> Self {
        Response::err(ErrorKind::ShuttingDown, SHUTTING_DOWN)
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
    Budget(Box<BudgetReport>),
    Health(HealthReport),
    Done { message: String },
    History(Box<HistoryReport>),
}

/// The `history` reply (`GET /history`, the dashboard): the round trip of corral's database
/// readings over the last hour and the recent events, the newest last. Names are stable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryReport {
    /// Unix seconds when the reply was made.
    pub now: f64,
    pub latency: LatencyHistory,
    pub events: Vec<EventRecord>,
    /// Events since corral started, by kind (they outlive the ring of `events`).
    pub event_counts: std::collections::BTreeMap<EventKind, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistory {
    pub window_s: u64,
    pub spacing_s: u64,
    pub samples: Vec<LatencySample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySample {
    /// Unix seconds.
    pub at: f64,
    /// The round trip in ms; null when the reading failed.
    pub ms: Option<f64>,
    pub failed: bool,
    pub reading: Reading,
}

/// Which database reading a latency sample comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reading {
    /// `SELECT 1` of a full health check.
    Health,
    /// The usage query (`pg_stat_activity`) between health checks.
    Usage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    /// Unix seconds.
    pub at: f64,
    pub kind: EventKind,
    pub job: Option<String>,
    pub message: String,
}

/// What happened. The names are stable: the page and `/metrics` use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A job's process exited.
    Exit,
    /// A restart was scheduled (backoff).
    Restart,
    Fatal,
    Waiting,
    /// A job was told a new quota.
    Quota,
    /// start, stop or restart requested over the control socket or HTTP.
    Control,
    Reload,
    DatabaseDown,
    DatabaseUp,
    Warning,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Exit => "exit",
            EventKind::Restart => "restart",
            EventKind::Fatal => "fatal",
            EventKind::Waiting => "waiting",
            EventKind::Quota => "quota",
            EventKind::Control => "control",
            EventKind::Reload => "reload",
            EventKind::DatabaseDown => "database_down",
            EventKind::DatabaseUp => "database_up",
            EventKind::Warning => "warning",
        }
    }
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
    pub budget: Option<BudgetSummary>,
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
    /// corral's own log lines dropped because its stderr was not read fast enough (SPEC §7).
    #[serde(default)]
    pub log_lines_dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub name: String,
    pub state: JobState,
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
    /// RFC 3339 time of a scheduled job's next run, else null (SPEC §4).
    #[serde(default)]
    pub next_run: Option<String>,
    /// A scheduled job's schedule, last run and counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleStatus>,
}

#[cfg(test)]
impl JobStatus {
    /// A job that has only a name and a state: each test sets the fields it looks at.
    pub fn named(name: &str, state: JobState) -> JobStatus {
        JobStatus {
            name: name.into(),
            state,
            pid: None,
            uptime_s: None,
            restarts: 0,
            last_exit: None,
            quota: None,
            connections: None,
            reason: None,
            output_dropped: 0,
            ready: false,
            restart_reason: None,
            rss_bytes: None,
            next_run: None,
            schedule: None,
        }
    }
}

/// A scheduled job in `status --json` (SPEC §4): stable names, as for [`JobStatus`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleStatus {
    pub schedule: String,
    pub timezone: String,
    pub concurrency: String,
    pub starting_deadline_s: Option<f64>,
    pub catch_up: bool,
    /// Following the schedule (false after `corral stop`).
    pub armed: bool,
    pub next_run: Option<String>,
    /// The time the run in progress was due (its CORRAL_SCHEDULED_AT).
    pub scheduled_at: Option<String>,
    pub last_run: Option<LastRun>,
    /// Runs that started a process, since corral started.
    pub runs: u64,
    pub succeeded: u64,
    pub failures: u64,
    /// Due runs that never started: past their starting_deadline, passed while corral was
    /// down or at once (clock jump), or still waiting when the next was due.
    pub missed: u64,
    /// Due runs not started because the previous run still ran (`concurrency = "forbid"`).
    pub skipped: u64,
    pub run_seconds_total: f64,
    pub max_run_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    pub scheduled_at: String,
    pub started_at: Option<String>,
    /// "succeeded", "failed", "stopped", "missed" or "replaced".
    pub result: String,
    pub reason: Option<String>,
    pub duration_s: Option<f64>,
    /// Started by `corral start`, not by the schedule.
    pub manual: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub applied: bool,
    pub plan: ReloadPlan,
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
    pub database: Option<DbHealth>,
    pub message: String,
}

/// Why a job waits (state `waiting`, SPEC §4). The kind decides what can release it (a
/// database reading, a fleet sync, the next retry); the text is the job's `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// `lock: ...`: its lock file, or in fleet scope its fleet-wide lock, is held elsewhere.
    Lock(String),
    /// `duplicate: ...`: the same command runs outside corral.
    Duplicate(String),
    /// `budget...: ...`: no grant yet (the budget, connections still being given back, the fleet).
    Budget(String),
    /// corral is stopping: nothing starts any more.
    ShuttingDown,
    /// `dependency <name>: ...`: a `depends_on` condition does not hold yet.
    Dependency(String),
}

impl WaitReason {
    /// A database reading or a fleet sync may release it.
    pub fn is_budget(&self) -> bool {
        matches!(self, WaitReason::Budget(_))
    }

    pub fn is_lock(&self) -> bool {
        matches!(self, WaitReason::Lock(_))
    }

    /// Read a reason back from its text (a client reading `reason`).
    pub fn parse(text: &str) -> WaitReason {
        if text.starts_with("lock: ") {
            WaitReason::Lock(text.to_string())
        } else if text.starts_with("duplicate: ") {
            WaitReason::Duplicate(text.to_string())
        } else if text.starts_with("dependency ") {
            WaitReason::Dependency(text.to_string())
        } else if text == SHUTTING_DOWN {
            WaitReason::ShuttingDown
        } else {
            WaitReason::Budget(text.to_string())
        }
    }
}

const SHUTTING_DOWN: &str = "supervisor is shutting down";

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitReason::Lock(t) | WaitReason::Duplicate(t) | WaitReason::Budget(t) | WaitReason::Dependency(t) => f.write_str(t),
            WaitReason::ShuttingDown => f.write_str(SHUTTING_DOWN),
        }
    }
}

impl Serialize for WaitReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WaitReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(WaitReason::parse(&String::deserialize(d)?))
    }
}

/// `local` or `fleet` (`[budget] scope`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetScope {
    #[default]
    Local,
    Fleet,
}

/// `corral budget --json` and `/budget` (SPEC §4, §5): the plan's arithmetic, every grant,
/// live use and the database. In fleet scope the fleet-only fields are present (`member`,
/// `base`, `reserved`, `unclaimed`, `services`, `members`, `coordination`) and `jobs` holds
/// every member's jobs. Missing fields read as zero or empty, so an older corral's JSON reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetReport {
    pub scope: BudgetScope,
    pub service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    pub limit: u32,
    pub limit_source: LimitSource,
    /// What binds, in words: "session pooler pool_size", "server max_connections 60 - 3 reserved".
    pub limit_reason: String,
    pub pooler: Option<PoolerLimit>,
    pub offline: bool,
    pub provider_reserve: u32,
    pub adhoc_reserve: u32,
    pub external_reserve: u32,
    /// Fleet: the smallest member base.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<u32>,
    pub reservations: Vec<ReservationRow>,
    /// Fleet: connections held by fleet-wide reservations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved: Option<u32>,
    pub own: u32,
    /// Fleet: corral connections no live member claims; never handed out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unclaimed: Option<u32>,
    pub usable: u32,
    pub granted: u32,
    pub headroom: u32,
    pub live: u32,
    pub external_live: u32,
    pub external: Vec<ExternalGroup>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<MemberRow>>,
    pub jobs: Vec<BudgetJob>,
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordination: Option<Coordination>,
    pub database: DbHealth,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReservationRow {
    pub name: String,
    pub count: u32,
    /// Fleet: the member that made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    pub expires_in_s: Option<f64>,
}

/// Connections outside corral, by role and application_name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExternalGroup {
    pub role: String,
    pub application_name: String,
    pub connections: u32,
}

/// One job's grant. Fleet scope adds `member`, `host` (null when the member is unknown) and `wants`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetJob {
    pub name: String,
    pub service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<Option<String>>,
    pub quota: u32,
    pub min: u32,
    pub max: u32,
    pub priority: i32,
    pub connections: u32,
    pub idle: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wants: Option<Wants>,
    /// Why it has no grant (the allocator's or the fleet's words).
    pub state_waiting: Option<String>,
}

/// Fleet: one service's share.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceRow {
    pub service: String,
    pub corrals: u32,
    pub jobs: u32,
    pub granted: u32,
    pub live: u32,
    /// Of the fleet's usable, rounded to 0.001.
    pub share: f64,
}

/// Fleet: one corral of the fleet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemberRow {
    pub id: String,
    pub service: String,
    pub host: String,
    pub pid: i32,
    pub heartbeat_age_s: f64,
    pub own: u32,
    pub base: Option<u32>,
}

/// Fleet: the health of the coordination. The budget report adds the counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Coordination {
    pub healthy: bool,
    pub member: String,
    pub last_sync_age_s: Option<f64>,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syncs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_losses: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired: Option<Vec<String>>,
}

/// The database as corral's own connection last saw it (SPEC §6): in `health`, `budget`
/// and `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DbHealth {
    pub healthy: bool,
    pub latency_ms: Option<f64>,
    /// Unix seconds of the last check.
    pub checked_at: Option<f64>,
    /// The last connection or check error, also before any check succeeded.
    pub error: Option<String>,
    /// The connection string, password redacted.
    pub target: Option<String>,
    pub tls: Option<TlsReport>,
    pub offline: bool,
    /// The server's own setting as last read.
    pub max_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordination: Option<Coordination>,
}

/// The TLS of corral's connection at the last check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsReport {
    /// e.g. "TLSv1.3".
    pub version: String,
    pub cipher: String,
    /// The effective sslmode.
    pub sslmode: String,
    /// What was checked: "certificate and host name", "certificate chain", "nothing".
    pub verified: String,
}

/// What `status` shows of the budget: the limit that binds and why, and the database.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetSummary {
    pub limit: u32,
    pub limit_source: LimitSource,
    pub limit_reason: String,
    pub usable: u32,
    pub granted: u32,
    pub offline: bool,
    pub scope: BudgetScope,
    pub database: DbHealth,
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
            let event = EventRecord { seq: 1, at: 1.5, kind: EventKind::Warning, job: Some(message.clone()), message: value.to_string() };
            let history = HistoryReport { events: vec![event], ..Default::default() };
            for resp in [Response::err(ErrorKind::Refused, message.clone()), Response::ok(Reply::History(Box::new(history))), Response::ok(Reply::Done { message: message.clone() })] {
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
