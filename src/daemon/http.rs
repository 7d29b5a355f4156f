//! The optional HTTP endpoint (SPEC §9): `[http] listen = "127.0.0.1:9464"`.
//!
//! `GET /health` (200 when healthy, 503 otherwise; the body is the reply of
//! `corral health --json`), `GET /metrics` (Prometheus/OpenMetrics text),
//! `GET /status` and `/budget` (the JSON of `corral status --json` and `budget --json`),
//! `GET /history` (latency of the last hour, recent events) and `GET /` (the dashboard page,
//! embedded in the binary, which polls those three). With `[http] token` every path but
//! `/health` needs it, as a bearer token or `?token=`. Like the control socket
//! it owns no state: every answer is asked of the actor with a oneshot reply.
//! Each connection is its own task with a header timeout and a lifetime cap,
//! and the number of open connections is capped, so a slow or hostile client
//! costs only its own task. Nothing here can change a job.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::ask::{last_health, request};
use super::event::EventTx;
use crate::protocol::{BudgetReport, BudgetScope, ErrorKind, HealthReport, JobState, Reply, Request, Response, StatusReport};
use crate::view::BudgetView;

/// A client must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection, keep-alive included, lives longer than this.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Connections beyond this are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// `/health` runs a fresh database check (as `corral health` does) at most
/// this often; requests in between get the last reading. A load balancer
/// polling every 100 ms must not become a query storm.
const FRESH_HEALTH_EVERY: Duration = Duration::from_secs(1);

const JSON: &str = "application/json";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Body = Full<Bytes>;
pub(super) type HttpResponse = hyper::Response<Body>;

pub async fn bind(listen: &str) -> Result<TcpListener, String> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on [http] listen = \"{listen}\": {e}"))
}

/// Without a token, anyone who can reach a non-loopback address reads the jobs, their
/// reasons and the budget: corral warns about that at startup.
pub fn open_to_network(addr: std::net::SocketAddr, has_token: bool) -> bool {
    !has_token && !addr.ip().is_loopback()
}

pub async fn serve(listener: TcpListener, tx: EventTx, token: Option<String>) {
    let token: Arc<Option<String>> = Arc::new(token);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let last_fresh: Arc<Mutex<Option<Instant>>> = Arc::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!("accept on http listener failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!("http: {MAX_CONNECTIONS} connections open, closing a new one");
            continue;
        };
        let (tx, last_fresh, token) = (tx.clone(), last_fresh.clone(), token.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (tx, last_fresh, token) = (tx.clone(), last_fresh.clone(), token.clone());
                async move { Ok::<_, Infallible>(route(req, &tx, &last_fresh, token.as_deref()).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(permit);
        });
    }
}

async fn route(req: hyper::Request<Incoming>, tx: &EventTx, last_fresh: &Mutex<Option<Instant>>, token: Option<&str>) -> HttpResponse {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET and HEAD\n");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let path = req.uri().path();
    if path != "/health" && !authorized(token, req.headers(), req.uri().query()) {
        let mut r = reply(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "unauthorized: send the [http] token as `Authorization: Bearer TOKEN` or add ?token=TOKEN to the URL\n",
        );
        r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"corral\""));
        return r;
    }
    match path {
        "/health" => health(tx, last_fresh).await,
        "/metrics" => metrics_page(tx).await,
        "/status" => match request(tx, Request::Status { jobs: Vec::new() }).await {
            Response { result: Some(Reply::Status(s)), .. } => json(StatusCode::OK, &s),
            other => error(other),
        },
        "/budget" => match request(tx, Request::Budget).await {
            Response { result: Some(Reply::Budget(b)), .. } => json(StatusCode::OK, &b),
            other => error(other),
        },
        "/history" => match request(tx, Request::History).await {
            Response { result: Some(Reply::History(h)), .. } => json(StatusCode::OK, &h),
            other => error(other),
        },
        "/" => super::dashboard::response(),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /, /health, /metrics, /status, /budget or /history\n"),
    }
}

/// With a token configured, a request carries it as `Authorization: Bearer TOKEN` or
/// `?token=TOKEN` (percent-decoded). Compared in constant time: the reply's timing says
/// nothing about how much of a guess was right.
pub fn authorized(token: Option<&str>, headers: &HeaderMap, query: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    let Some(token) = token else { return true };
    let matches = |given: &[u8]| bool::from(given.ct_eq(token.as_bytes()));
    let bearer = headers.get_all(AUTHORIZATION).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        let (scheme, rest) = v.trim().split_once(' ').unwrap_or((v, ""));
        scheme.eq_ignore_ascii_case("bearer") && matches(rest.trim().as_bytes())
    });
    bearer
        || query.into_iter().flat_map(|q| q.split('&')).any(|pair| {
            pair.strip_prefix("token=").is_some_and(|v| matches(&percent_encoding::percent_decode_str(v).collect::<Vec<u8>>()))
        })
}

async fn health(tx: &EventTx, last_fresh: &Mutex<Option<Instant>>) -> HttpResponse {
    let fresh = {
        let mut last = last_fresh.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= FRESH_HEALTH_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    };
    let resp = if fresh { request(tx, Request::Health).await } else { last_health(tx).await };
    match resp {
        Response { result: Some(Reply::Health(h)), .. } => {
            // A supervisor that is shutting down is not a target for traffic.
            let code = if h.healthy && h.supervisor { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            json(code, &h)
        }
        other => error(other),
    }
}

async fn metrics_page(tx: &EventTx) -> HttpResponse {
    // One turn of the actor: status, budget (none without a [database]), the last health
    // reading (scraping must not query the database) and the event counts.
    match super::ask::snapshot(tx, true, None).await {
        Ok(s) => reply(StatusCode::OK, OPENMETRICS, render_metrics(&s.status, s.budget.as_ref(), Some(&s.health), s.history.as_ref())),
        Err(_) => error(Response::shutting_down()),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobStateLabel {
    job: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
    reason: String,
}

fn gauge(reg: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    reg.register(name, help, g);
}

fn seconds(reg: &mut Registry, name: &str, help: &str, value: f64) {
    let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    g.set(value);
    reg.register_with_unit(name, help, Unit::Seconds, g);
}

/// The metrics page for one set of answers: everything the dashboard shows. Pure: a fresh
/// registry per scrape, so a removed job's series disappear with it. The names are stable
/// (README, "Metrics").
pub fn render_metrics(
    status: &StatusReport,
    budget: Option<&BudgetReport>,
    health: Option<&HealthReport>,
    history: Option<&crate::protocol::HistoryReport>,
) -> String {
    let mut reg = Registry::default();
    let up = Family::<JobLabel, Gauge>::default();
    let state = Family::<JobStateLabel, Gauge>::default();
    let restarts = Family::<JobLabel, Counter>::default();
    let connections = Family::<JobLabel, Gauge>::default();
    let quota = Family::<JobLabel, Gauge>::default();
    let dropped = Family::<JobLabel, Counter>::default();
    let uptime = Family::<JobLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let (ready, rss) = (Family::<JobLabel, Gauge>::default(), Family::<JobLabel, Gauge>::default());
    for j in &status.jobs {
        ready.get_or_create(&JobLabel { job: j.name.clone() }).set(i64::from(j.ready));
        if let Some(b) = j.rss_bytes {
            rss.get_or_create(&JobLabel { job: j.name.clone() }).set(i64::try_from(b).unwrap_or(i64::MAX));
        }
        let l = JobLabel { job: j.name.clone() };
        up.get_or_create(&l).set(i64::from(j.state == JobState::Running));
        // One series per state, 1 for the current one (the kube-state-metrics way): a
        // dashboard can sum by state without knowing the job names.
        for s in JobState::ALL {
            state.get_or_create(&JobStateLabel { job: j.name.clone(), state: s.as_str().to_string() }).set(i64::from(j.state == s));
        }
        restarts.get_or_create(&l).inc_by(u64::from(j.restarts));
        if let Some(c) = j.connections {
            connections.get_or_create(&l).set(i64::from(c));
        }
        if let Some(q) = j.quota {
            quota.get_or_create(&l).set(i64::from(q));
        }
        dropped.get_or_create(&l).inc_by(j.output_dropped);
        if let Some(u) = j.uptime_s {
            uptime.get_or_create(&l).set(u);
        }
    }
    reg.register("corral_job_up", "1 when the job is in state running, else 0", up);
    reg.register("corral_job_state", "1 for the job's current state, 0 for the others", state);
    reg.register("corral_job_restarts", "Restarts of the job since corral started", restarts);
    reg.register("corral_job_connections", "Live database connections of the job at the last reading", connections);
    reg.register("corral_job_quota", "The job's granted connection quota", quota);
    reg.register_with_unit("corral_job_uptime", "How long the job's current process has run", Unit::Seconds, uptime);
    reg.register("corral_job_ready", "1 when the job's current process is ready (ready probe, or healthy_after)", ready);
    reg.register_with_unit("corral_job_tree_rss", "RSS of the job's whole process tree (sampled while some job has memory_max)", Unit::Bytes, rss);

    reg.register(
        "corral_job_output_dropped_lines",
        "Lines of the job's output dropped from corral's stdout because it was not read fast enough",
        dropped,
    );

    schedule_metrics(&mut reg, status);

    // The limit that binds, named: "session pooler pool_size", "server max_connections 60 - 3 reserved".
    let limit_reason = budget.map_or_else(|| "unknown".to_string(), |b| b.limit_reason.clone());
    if let Some(b) = budget.map(BudgetView::from_report) {
        gauge(&mut reg, "corral_budget_limit", "The connection limit that binds (SPEC §5, §5.1)", i64::from(b.limit));
        if let Some(source) = &b.limit_source {
            let info = Info::new(SourceLabel { source: source.clone(), reason: limit_reason.clone() });
            reg.register("corral_budget_limit_source", "What the limit comes from (server, preset, pooler, ...) and why it binds", info);
        }
        gauge(&mut reg, "corral_budget_provider_reserve", "Connections kept free for the provider", i64::from(b.provider_reserve));
        gauge(&mut reg, "corral_budget_adhoc_reserve", "Connections kept free for people (psql)", i64::from(b.adhoc_reserve));
        gauge(&mut reg, "corral_budget_external_reserve", "Connections kept for known clients outside corral", i64::from(b.external_reserve));
        gauge(&mut reg, "corral_budget_reserved", "Connections held by active reservations", i64::from(b.reserved()));
        let reservation = Family::<NameLabel, Gauge>::default();
        for (name, count) in &b.reservations {
            reservation.get_or_create(&NameLabel { name: name.clone() }).set(i64::from(*count));
        }
        reg.register("corral_budget_reservation", "Connections held by each reservation", reservation);
        gauge(&mut reg, "corral_budget_own", "corral's own connections", i64::from(b.own));
        gauge(&mut reg, "corral_budget_usable", "Connections usable by jobs (SPEC §5)", i64::from(b.usable));
        gauge(&mut reg, "corral_budget_granted", "Connections granted to running jobs", i64::from(b.granted));
        gauge(&mut reg, "corral_budget_headroom", "Usable connections not granted to any job", i64::from(b.headroom));
        gauge(&mut reg, "corral_budget_live", "Live connections of the jobs at the last reading", i64::from(b.live));
        gauge(&mut reg, "corral_budget_external_live", "Live connections without a corral application_name", i64::from(b.external_live));
        if let Some(n) = b.database.max_connections {
            gauge(&mut reg, "corral_db_max_connections", "The server's max_connections as last read", i64::from(n));
        }
        if budget.is_some_and(|b| b.scope == BudgetScope::Fleet) {
            gauge(&mut reg, "corral_fleet_members", "corrals sharing the fleet's budget", b.members.len() as i64);
            let ok = b.coordination.as_ref().is_some_and(|(ok, _)| *ok);
            gauge(&mut reg, "corral_fleet_coordination_up", "1 when the last fleet sync succeeded", i64::from(ok));
        }
    }
    if let Some(db) = health.and_then(|h| h.database.as_ref()) {
        gauge(&mut reg, "corral_db_up", "1 when the last database health check passed", i64::from(db.healthy));
        if let Some(ms) = db.latency_ms {
            seconds(&mut reg, "corral_db_health_latency", "Latency of the last database health check", ms / 1000.0);
        }
    }
    let zombies = Counter::<u64>::default();
    zombies.inc_by(status.supervisor.zombies_reaped);
    reg.register("corral_zombies_reaped", "Zombies reaped that were no job's main process", zombies);
    let orphans = Counter::<u64>::default();
    orphans.inc_by(status.supervisor.orphans_killed);
    reg.register("corral_orphans_killed", "Stray orphans terminated by the sweep", orphans);
    let own_dropped = Counter::<u64>::default();
    own_dropped.inc_by(status.supervisor.log_lines_dropped);
    reg.register("corral_log_lines_dropped", "corral's own log lines dropped because its stderr was not read fast enough", own_dropped);
    if let Some(counts) = history.map(|h| &h.event_counts) {
        let events = Family::<KindLabel, Counter>::default();
        for (kind, n) in counts {
            events.get_or_create(&KindLabel { kind: kind.as_str().to_string() }).inc_by(*n);
        }
        reg.register("corral_events", "Events since corral started, by kind (the dashboard's recent events)", events);
    }
    // `[alerts]` delivery: sent, suppressed, retried, dropped (process-wide counters).
    crate::alerts::stats::register(&mut reg, &crate::alerts::stats::snapshot());
    let build = Info::new(vec![("version".to_string(), status.supervisor.version.clone())]);
    reg.register("corral_build", "corral's version", build);
    seconds(&mut reg, "corral_start_time", "Unix time corral started", status.supervisor.started_at);

    let mut out = String::new();
    // Writing to a String cannot fail; a failed encoding would be a partial page, never a panic.
    if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
        out.push_str("# EOF\n");
    }
    out
}

/// Scheduled jobs (SPEC §2): runs, failures, missed and skipped runs, time spent running, the
/// last run's duration and the next run's time.
fn schedule_metrics(reg: &mut Registry, status: &StatusReport) {
    type F64Counter = Counter<f64, std::sync::atomic::AtomicU64>;
    type F64Gauge = Gauge<f64, std::sync::atomic::AtomicU64>;
    let (runs, failures, missed, skipped) = (Family::<JobLabel, Counter>::default(), Family::<JobLabel, Counter>::default(), Family::<JobLabel, Counter>::default(), Family::<JobLabel, Counter>::default());
    let (seconds, last, longest, next) = (Family::<JobLabel, F64Counter>::default(), Family::<JobLabel, F64Gauge>::default(), Family::<JobLabel, F64Gauge>::default(), Family::<JobLabel, F64Gauge>::default());
    let mut any = false;
    for (j, s) in status.jobs.iter().filter_map(|j| j.schedule.as_ref().map(|s| (j, s))) {
        any = true;
        let l = JobLabel { job: j.name.clone() };
        runs.get_or_create(&l).inc_by(s.runs);
        failures.get_or_create(&l).inc_by(s.failures);
        missed.get_or_create(&l).inc_by(s.missed);
        skipped.get_or_create(&l).inc_by(s.skipped);
        seconds.get_or_create(&l).inc_by(s.run_seconds_total);
        longest.get_or_create(&l).set(s.max_run_s);
        if let Some(d) = s.last_run.as_ref().and_then(|r| r.duration_s) {
            last.get_or_create(&l).set(d);
        }
        if let Some(t) = s.next_run.as_deref().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) {
            next.get_or_create(&l).set(t.timestamp_millis() as f64 / 1000.0);
        }
    }
    if !any {
        return;
    }
    reg.register("corral_schedule_runs", "Runs of a scheduled job that started a process", runs);
    reg.register("corral_schedule_failures", "Runs of a scheduled job that failed (retries included in the run)", failures);
    reg.register("corral_schedule_missed", "Due runs that never started (starting_deadline, corral down, clock jump)", missed);
    reg.register("corral_schedule_skipped", "Due runs skipped because the previous run still ran (concurrency = forbid)", skipped);
    reg.register_with_unit("corral_schedule_run_duration", "Time spent in finished runs", Unit::Seconds, seconds);
    reg.register_with_unit("corral_schedule_last_run_duration", "How long the last run took", Unit::Seconds, last);
    reg.register_with_unit("corral_schedule_longest_run_duration", "The longest run since corral started", Unit::Seconds, longest);
    reg.register_with_unit("corral_schedule_next_run_timestamp", "Unix time of the next run", Unit::Seconds, next);
}

fn json<T: serde::Serialize>(code: StatusCode, value: &T) -> HttpResponse {
    let mut body = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    body.push('\n');
    let mut r = reply(code, JSON, body);
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An error reply from the actor, the body as `--json` prints errors: 404 for what this
/// corral does not have (`/budget` without a `[database]`), else 503.
fn error(resp: Response) -> HttpResponse {
    let code = match resp.error.as_ref().map(|e| e.kind) {
        Some(ErrorKind::NoDatabase) => StatusCode::NOT_FOUND,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    json(code, &resp.error)
}

pub(super) fn reply(code: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> HttpResponse {
    let mut r = hyper::Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{JobStatus, SupervisorInfo};

    #[test]
    fn metrics_name_every_series() {
        let status = StatusReport {
            jobs: vec![
                JobStatus {
                    pid: Some(10),
                    uptime_s: Some(1.0),
                    restarts: 3,
                    quota: Some(5),
                    connections: Some(2),
                    output_dropped: 7,
                    ..JobStatus::named("a", JobState::Running)
                },
                JobStatus { reason: Some("x".into()), ..JobStatus::named("b", JobState::Fatal) },
            ],
            config_error: None,
            supervisor: SupervisorInfo { zombies_reaped: 4, orphans_killed: 1, log_lines_dropped: 3, version: "9.9.9".into(), started_at: 1700000000.5, ..Default::default() },
            budget: None,
        };
        let budget: BudgetReport = serde_json::from_value(serde_json::json!({
            "scope": "local", "limit": 60, "limit_source": "server", "limit_reason": "server max_connections 63 - 3 reserved", "provider_reserve": 6, "adhoc_reserve": 5,
            "external_reserve": 0, "reservations": [{"name": "psql-debug", "count": 2}], "own": 1,
            "usable": 48, "granted": 21, "headroom": 27, "live": 9, "external_live": 3,
            "database": {"healthy": true, "max_connections": 63},
        }))
        .unwrap();
        let history = crate::protocol::HistoryReport {
            event_counts: [(crate::protocol::EventKind::Exit, 7), (crate::protocol::EventKind::Quota, 2)].into(),
            ..Default::default()
        };
        let health = HealthReport {
            healthy: true,
            supervisor: true,
            database: Some(serde_json::from_value(serde_json::json!({"healthy": true, "latency_ms": 2.5})).unwrap()),
            message: String::new(),
        };
        let text = render_metrics(&status, Some(&budget), Some(&health), Some(&history));
        for line in [
            "corral_job_state{job=\"a\",state=\"running\"} 1",
            "corral_job_state{job=\"a\",state=\"fatal\"} 0",
            "corral_job_state{job=\"b\",state=\"fatal\"} 1",
            "corral_job_state{job=\"b\",state=\"running\"} 0",
            "corral_job_uptime_seconds{job=\"a\"} 1.0",
            "corral_budget_limit 60",
            "corral_budget_limit_source_info{source=\"server\",reason=\"server max_connections 63 - 3 reserved\"} 1",
            "corral_budget_provider_reserve 6",
            "corral_budget_adhoc_reserve 5",
            "corral_budget_external_reserve 0",
            "corral_budget_reserved 2",
            "corral_budget_reservation{name=\"psql-debug\"} 2",
            "corral_budget_own 1",
            "corral_budget_headroom 27",
            "corral_budget_live 9",
            "corral_budget_external_live 3",
            "corral_db_max_connections 63",
            "corral_events_total{kind=\"exit\"} 7",
            "corral_build_info{version=\"9.9.9\"} 1",
            "corral_start_time_seconds 1700000000.5",
            "corral_job_up{job=\"a\"} 1",
            "corral_job_up{job=\"b\"} 0",
            "corral_job_restarts_total{job=\"a\"} 3",
            "corral_job_connections{job=\"a\"} 2",
            "corral_job_quota{job=\"a\"} 5",
            "corral_job_output_dropped_lines_total{job=\"a\"} 7",
            "corral_budget_usable 48",
            "corral_budget_granted 21",
            "corral_db_up 1",
            "corral_db_health_latency_seconds 0.0025",
            "corral_zombies_reaped_total 4",
            "corral_orphans_killed_total 1",
            "corral_log_lines_dropped_total 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("corral_job_quota{job=\"b\"}"), "{text}");
        assert!(!text.contains("corral_job_uptime_seconds{job=\"b\"}"), "{text}");
        assert!(!text.contains("corral_fleet"), "{text}");
        // Every job has one series per state, exactly one of them 1.
        let states = text.lines().filter(|l| l.starts_with("corral_job_state{job=\"a\"")).collect::<Vec<_>>();
        assert_eq!(states.len(), JobState::ALL.len(), "{states:?}");
        assert_eq!(states.iter().filter(|l| l.ends_with(" 1")).count(), 1);
        assert!(text.ends_with("# EOF\n"), "{text}");

        let bare = render_metrics(&status, None, None, None);
        assert!(!bare.contains("corral_budget_usable") && !bare.contains("corral_db_up"), "{bare}");
    }

    #[test]
    fn fleet_metrics_count_members_and_coordination() {
        let status = StatusReport { jobs: vec![], config_error: None, supervisor: SupervisorInfo::default(), budget: None };
        let budget: BudgetReport =
            serde_json::from_value(serde_json::json!({"scope": "fleet", "members": [{"id": "a"}, {"id": "b"}], "coordination": {"healthy": true}})).unwrap();
        let text = render_metrics(&status, Some(&budget), None, None);
        assert!(text.lines().any(|l| l == "corral_fleet_members 2"), "{text}");
        assert!(text.lines().any(|l| l == "corral_fleet_coordination_up 1"), "{text}");
    }

    #[test]
    fn schedule_metrics_count_runs_failures_and_misses() {
        let sched = crate::protocol::ScheduleStatus {
            runs: 5,
            failures: 1,
            missed: 2,
            skipped: 3,
            run_seconds_total: 7.5,
            max_run_s: 2.5,
            next_run: Some("2026-12-01T14:00:00Z".into()),
            last_run: Some(crate::protocol::LastRun { duration_s: Some(1.25), ..Default::default() }),
            ..Default::default()
        };
        let job = JobStatus { next_run: sched.next_run.clone(), schedule: Some(sched), ..JobStatus::named("nightly", crate::protocol::JobState::Scheduled) };
        let status = StatusReport { jobs: vec![job], config_error: None, supervisor: SupervisorInfo::default(), budget: None };
        let text = render_metrics(&status, None, None, None);
        for line in [
            "corral_schedule_runs_total{job=\"nightly\"} 5",
            "corral_schedule_failures_total{job=\"nightly\"} 1",
            "corral_schedule_missed_total{job=\"nightly\"} 2",
            "corral_schedule_skipped_total{job=\"nightly\"} 3",
            "corral_schedule_run_duration_seconds_total{job=\"nightly\"} 7.5",
            "corral_schedule_last_run_duration_seconds{job=\"nightly\"} 1.25",
            "corral_schedule_longest_run_duration_seconds{job=\"nightly\"} 2.5",
            "corral_schedule_next_run_timestamp_seconds{job=\"nightly\"} 1796133600.0",
            "corral_job_state{job=\"nightly\",state=\"scheduled\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        // Without scheduled jobs, no schedule series at all.
        let none = StatusReport { jobs: vec![], config_error: None, supervisor: SupervisorInfo::default(), budget: None };
        assert!(!render_metrics(&none, None, None, None).contains("corral_schedule_"));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_token_is_taken_as_bearer_or_query_and_nothing_else() {
        let none = HeaderMap::new();
        assert!(authorized(None, &none, None), "no token configured: open");
        let t = Some("s3cr+t/=");
        for (h, q, ok) in [
            (headers(&[]), None, false),
            (headers(&[("authorization", "Bearer s3cr+t/=")]), None, true),
            (headers(&[("authorization", "bearer   s3cr+t/=  ")]), None, true),
            (headers(&[("authorization", "Basic s3cr+t/=")]), None, false),
            (headers(&[("authorization", "Bearer s3cr+t")]), None, false),
            (headers(&[("authorization", "Bearer s3cr+t/==")]), None, false),
            (headers(&[("authorization", "Bearer ")]), None, false),
            (headers(&[("authorization", "Bearer wrong"), ("authorization", "Bearer s3cr+t/=")]), None, true),
            (headers(&[]), Some("token=s3cr%2Bt%2F%3D"), true),
            (headers(&[]), Some("token=s3cr+t/="), true),
            (headers(&[]), Some("a=1&token=s3cr%2bt%2f%3d&b=2"), true),
            (headers(&[]), Some("token="), false),
            (headers(&[]), Some("xtoken=s3cr+t/="), false),
            (headers(&[]), Some("token=S3CR+T/="), false),
            (headers(&[("x-token", "s3cr+t/=")]), None, false),
        ] {
            assert_eq!(authorized(t, &h, q), ok, "{h:?} {q:?}");
        }
    }

    #[test]
    fn only_a_tokenless_non_loopback_listener_is_open_to_the_network() {
        let addr = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert!(open_to_network(addr("0.0.0.0:9464"), false));
        assert!(open_to_network(addr("[::]:9464"), false));
        assert!(open_to_network(addr("10.1.2.3:9464"), false));
        assert!(!open_to_network(addr("10.1.2.3:9464"), true));
        assert!(!open_to_network(addr("127.0.0.1:9464"), false));
        assert!(!open_to_network(addr("127.0.0.2:9464"), false));
        assert!(!open_to_network(addr("[::1]:9464"), false));
    }
}
