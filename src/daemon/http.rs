//! The optional HTTP endpoint (SPEC §9): `[http] listen = "127.0.0.1:9464"`.
//!
//! `GET /health` (200 when healthy, 503 otherwise; the body is the reply of
//! `corral health --json`), `GET /metrics` (Prometheus/OpenMetrics text) and
//! `GET /status` (the JSON of `corral status --json`). Like the control socket
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
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

use super::supervisor::{Event, EventTx};
use crate::protocol::{ErrorKind, HealthReport, Reply, Request, Response, StatusReport};

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
type HttpResponse = hyper::Response<Body>;

pub async fn bind(listen: &str) -> Result<TcpListener, String> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on [http] listen = \"{listen}\": {e}"))
}

pub async fn serve(listener: TcpListener, tx: EventTx) {
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
        let (tx, last_fresh) = (tx.clone(), last_fresh.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (tx, last_fresh) = (tx.clone(), last_fresh.clone());
                async move { Ok::<_, Infallible>(route(req, &tx, &last_fresh).await) }
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

async fn route(req: hyper::Request<Incoming>, tx: &EventTx, last_fresh: &Mutex<Option<Instant>>) -> HttpResponse {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET and HEAD\n");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/health" => health(tx, last_fresh).await,
        "/metrics" => metrics_page(tx).await,
        "/status" => match ask(tx, Request::Status { jobs: Vec::new() }).await {
            Response { result: Some(Reply::Status(s)), .. } => json(StatusCode::OK, &s),
            other => error(other),
        },
        "/" => reply(StatusCode::OK, "text/plain", "corral: /health /metrics /status\n"),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /health, /metrics or /status\n"),
    }
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
    let resp = if fresh { ask(tx, Request::Health).await } else { last_health(tx).await };
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
    let status = match ask(tx, Request::Status { jobs: Vec::new() }).await {
        Response { result: Some(Reply::Status(s)), .. } => s,
        other => return error(other),
    };
    // Without a [database] the actor answers `no_database`: no budget metrics.
    let budget = match ask(tx, Request::Budget).await {
        Response { result: Some(Reply::Budget(b)), .. } => Some(b),
        _ => None,
    };
    // The last reading, not a fresh check: scraping must not query the database.
    let health = match last_health(tx).await {
        Response { result: Some(Reply::Health(h)), .. } => Some(h),
        _ => None,
    };
    reply(StatusCode::OK, OPENMETRICS, render_metrics(&status, budget.as_ref(), health.as_ref()))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    source: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: String,
}

/// The metrics page for one set of answers. Pure: a fresh registry per scrape,
/// so a removed job's series disappear with it.
pub fn render_metrics(status: &StatusReport, budget: Option<&serde_json::Value>, health: Option<&HealthReport>) -> String {
    let mut reg = Registry::default();
    let up = Family::<JobLabel, Gauge>::default();
    let restarts = Family::<JobLabel, Counter>::default();
    let connections = Family::<JobLabel, Gauge>::default();
    let quota = Family::<JobLabel, Gauge>::default();
    let dropped = Family::<JobLabel, Counter>::default();
    for j in &status.jobs {
        let l = JobLabel { job: j.name.clone() };
        up.get_or_create(&l).set(i64::from(j.state == "running"));
        restarts.get_or_create(&l).inc_by(u64::from(j.restarts));
        if let Some(c) = j.connections {
            connections.get_or_create(&l).set(i64::from(c));
        }
        if let Some(q) = j.quota {
            quota.get_or_create(&l).set(i64::from(q));
        }
        dropped.get_or_create(&l).inc_by(j.output_dropped);
    }
    reg.register("corral_job_up", "1 when the job is in state running, else 0", up);
    reg.register("corral_job_restarts", "Restarts of the job since corral started", restarts);
    reg.register("corral_job_connections", "Live database connections of the job at the last reading", connections);
    reg.register("corral_job_quota", "The job's granted connection quota", quota);
    reg.register(
        "corral_job_output_dropped_lines",
        "Lines of the job's output dropped from corral's stdout because it was not read fast enough",
        dropped,
    );

    if let Some(b) = budget {
        let num = |k: &str| b.get(k).and_then(|v| v.as_i64()).unwrap_or(0);
        let usable = Gauge::<i64>::default();
        usable.set(num("usable"));
        reg.register("corral_budget_usable", "Connections usable by jobs (SPEC §5)", usable);
        let granted = Gauge::<i64>::default();
        granted.set(num("granted"));
        reg.register("corral_budget_granted", "Connections granted to running jobs", granted);
        // The limit that binds, named: "session pooler pool_size", "server max_connections 60 - 3 reserved".
        let limit = Family::<LimitLabel, Gauge>::default();
        let label = |k: &str| b.get(k).and_then(|v| v.as_str()).unwrap_or("unknown").to_string();
        limit.get_or_create(&LimitLabel { source: label("limit_source"), reason: label("limit_reason") }).set(num("limit"));
        reg.register("corral_budget_limit", "The connection limit the budget is computed against (SPEC §5.1), by what binds", limit);
    }
    if let Some(db) = health.and_then(|h| h.database.as_ref()) {
        let db_up = Gauge::<i64>::default();
        db_up.set(i64::from(db.get("healthy").and_then(|v| v.as_bool()).unwrap_or(false)));
        reg.register("corral_db_up", "1 when the last database health check passed", db_up);
        if let Some(ms) = db.get("latency_ms").and_then(|v| v.as_f64()) {
            let latency = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
            latency.set(ms / 1000.0);
            reg.register_with_unit(
                "corral_db_health_latency",
                "Latency of the last database health check",
                Unit::Seconds,
                latency,
            );
        }
    }
    let zombies = Counter::<u64>::default();
    zombies.inc_by(status.supervisor.zombies_reaped);
    reg.register("corral_zombies_reaped", "Zombies reaped that were no job's main process", zombies);
    let orphans = Counter::<u64>::default();
    orphans.inc_by(status.supervisor.orphans_killed);
    reg.register("corral_orphans_killed", "Stray orphans terminated by the sweep", orphans);

    let mut out = String::new();
    // Writing to a String cannot fail; a failed encoding would be a partial page, never a panic.
    if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
        out.push_str("# EOF\n");
    }
    out
}

async fn ask(tx: &EventTx, req: Request) -> Response {
    let (reply_tx, reply_rx) = oneshot::channel();
    if tx.send(Event::Request(req, reply_tx)).is_err() {
        return Response::err(ErrorKind::ShuttingDown, "supervisor is shutting down");
    }
    reply_rx.await.unwrap_or_else(|_| Response::err(ErrorKind::ShuttingDown, "supervisor is shutting down"))
}

/// The actor's current health answer, without a database round trip.
async fn last_health(tx: &EventTx) -> Response {
    let (reply_tx, reply_rx) = oneshot::channel();
    if tx.send(Event::HealthAnswer(reply_tx)).is_err() {
        return Response::err(ErrorKind::ShuttingDown, "supervisor is shutting down");
    }
    reply_rx.await.unwrap_or_else(|_| Response::err(ErrorKind::ShuttingDown, "supervisor is shutting down"))
}

fn json<T: serde::Serialize>(code: StatusCode, value: &T) -> HttpResponse {
    let mut body = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    body.push('\n');
    reply(code, JSON, body)
}

/// An error reply from the actor: 503, the body as `--json` prints errors.
fn error(resp: Response) -> HttpResponse {
    json(StatusCode::SERVICE_UNAVAILABLE, &resp.error)
}

fn reply(code: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> HttpResponse {
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
                    name: "a".into(),
                    state: "running".into(),
                    pid: Some(10),
                    uptime_s: Some(1.0),
                    restarts: 3,
                    last_exit: None,
                    quota: Some(5),
                    connections: Some(2),
                    reason: None,
                    output_dropped: 7,
                },
                JobStatus {
                    name: "b".into(),
                    state: "fatal".into(),
                    pid: None,
                    uptime_s: None,
                    restarts: 0,
                    last_exit: None,
                    quota: None,
                    connections: None,
                    reason: Some("x".into()),
                    output_dropped: 0,
                },
            ],
            config_error: None,
            supervisor: SupervisorInfo { zombies_reaped: 4, orphans_killed: 1, ..Default::default() },
            budget: None,
        };
        let budget = serde_json::json!({"usable": 48, "granted": 21, "limit": 15, "limit_source": "pooler", "limit_reason": "session pooler pool_size"});
        let health = HealthReport {
            healthy: true,
            supervisor: true,
            database: Some(serde_json::json!({"healthy": true, "latency_ms": 2.5})),
            message: String::new(),
        };
        let text = render_metrics(&status, Some(&budget), Some(&health));
        for line in [
            "corral_job_up{job=\"a\"} 1",
            "corral_job_up{job=\"b\"} 0",
            "corral_job_restarts_total{job=\"a\"} 3",
            "corral_job_connections{job=\"a\"} 2",
            "corral_job_quota{job=\"a\"} 5",
            "corral_job_output_dropped_lines_total{job=\"a\"} 7",
            "corral_budget_usable 48",
            "corral_budget_granted 21",
            "corral_budget_limit{source=\"pooler\",reason=\"session pooler pool_size\"} 15",
            "corral_db_up 1",
            "corral_db_health_latency_seconds 0.0025",
            "corral_zombies_reaped_total 4",
            "corral_orphans_killed_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("corral_job_quota{job=\"b\"}"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");

        let bare = render_metrics(&status, None, None);
        assert!(!bare.contains("corral_budget_usable") && !bare.contains("corral_db_up"), "{bare}");
    }
}
