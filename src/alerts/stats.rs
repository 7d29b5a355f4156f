//! What alert delivery did, for `/metrics` (SPEC §9: retries and drops are counted).
//!
//! One process-wide table, written by the alert tasks and read by the HTTP task when it
//! renders `/metrics`: the counters are not job state, and a global keeps them out of the
//! actor's replies. Series (prometheus-client adds `_total`):
//!
//! - `corral_alerts_sent_total{event, sink}`: delivered (webhook 2xx, command exit 0)
//! - `corral_alerts_suppressed_total{event}`: held back by `min_interval` (then summarised)
//! - `corral_alert_retries_total{sink}`: attempts after a failed one
//! - `corral_alerts_dropped_total{sink, reason}`: given up: `retries` (exhausted), `rejected`
//!   (a 4xx), `queue_full` (the bounded queue of a slow receiver), `overflow` (facts the actor
//!   could not queue)
//! - `corral_alert_queue{sink}` (gauge): alerts waiting for delivery

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub configured: bool,
    pub sent: BTreeMap<(String, String), u64>,
    pub suppressed: BTreeMap<String, u64>,
    pub retries: BTreeMap<String, u64>,
    pub dropped: BTreeMap<(String, String), u64>,
    pub queue: BTreeMap<String, i64>,
}

static STATS: Mutex<Option<Snapshot>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut Snapshot) -> R) -> R {
    let mut g = STATS.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(Snapshot::default))
}

pub fn set_configured(on: bool) {
    with(|s| s.configured = on);
}

pub fn sent(event: &str, sink: &str) {
    with(|s| *s.sent.entry((event.into(), sink.into())).or_default() += 1);
}

/// The limiter's running total for `event` (it counts; this mirrors it).
pub fn set_suppressed(event: &str, n: u64) {
    with(|s| {
        s.suppressed.insert(event.into(), n);
    });
}

pub fn retry(sink: &str) {
    with(|s| *s.retries.entry(sink.into()).or_default() += 1);
}

pub fn dropped(sink: &str, reason: &str) {
    with(|s| *s.dropped.entry((sink.into(), reason.into())).or_default() += 1);
}

pub fn queue(sink: &str, len: usize) {
    with(|s| {
        s.queue.insert(sink.into(), len as i64);
    });
}

pub fn snapshot() -> Snapshot {
    with(|s| s.clone())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventSink {
    event: String,
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkReason {
    sink: String,
    reason: String,
}

/// Add the alert series to a `/metrics` registry (nothing without `[alerts]`).
pub fn register(reg: &mut Registry, s: &Snapshot) {
    if !s.configured {
        return;
    }
    let sent = Family::<EventSink, Counter>::default();
    for ((event, sink), n) in &s.sent {
        sent.get_or_create(&EventSink { event: event.clone(), sink: sink.clone() }).inc_by(*n);
    }
    reg.register("corral_alerts_sent", "Alerts delivered (webhook 2xx, command exit 0), by event and sink", sent);
    let suppressed = Family::<EventLabel, Counter>::default();
    for (event, n) in &s.suppressed {
        suppressed.get_or_create(&EventLabel { event: event.clone() }).inc_by(*n);
    }
    reg.register("corral_alerts_suppressed", "Alerts held back by min_interval (counted in the next summary)", suppressed);
    let retries = Family::<SinkLabel, Counter>::default();
    let dropped = Family::<SinkReason, Counter>::default();
    let queue = Family::<SinkLabel, Gauge>::default();
    for sink in ["webhook", "command"] {
        // Zero series exist from the start, so rate() and increase() see the first failure.
        retries.get_or_create(&SinkLabel { sink: sink.into() }).inc_by(s.retries.get(sink).copied().unwrap_or(0));
        for reason in ["retries", "rejected", "queue_full"] {
            dropped.get_or_create(&SinkReason { sink: sink.into(), reason: reason.into() }).inc_by(s.dropped.get(&(sink.to_string(), reason.to_string())).copied().unwrap_or(0));
        }
        queue.get_or_create(&SinkLabel { sink: sink.into() }).set(s.queue.get(sink).copied().unwrap_or(0));
    }
    for ((sink, reason), n) in &s.dropped {
        if !["retries", "rejected", "queue_full"].contains(&reason.as_str()) || !["webhook", "command"].contains(&sink.as_str()) {
            dropped.get_or_create(&SinkReason { sink: sink.clone(), reason: reason.clone() }).inc_by(*n);
        }
    }
    reg.register("corral_alert_retries", "Alert deliveries attempted again after a failure", retries);
    reg.register("corral_alerts_dropped", "Alerts given up: retries exhausted, rejected (4xx), queue full, or overflow", dropped);
    reg.register("corral_alert_queue", "Alerts waiting for delivery", queue);
}
