//! How a task asks the actor (SPEC §7: only the actor reads or changes jobs): send an
//! [`Event`] carrying a oneshot reply, await the answer. The socket server, the HTTP
//! endpoint and the systemd status task all ask through here.

use std::time::Duration;

use tokio::sync::oneshot;

use super::event::{Event, EventTx};
use crate::protocol::{BudgetReport, HealthReport, Request, Response, StatusReport};

/// Everything `/metrics` and the systemd status line draw from, taken in one turn of the
/// actor: one round trip instead of one per part.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub status: StatusReport,
    /// None without a `[database]`.
    pub budget: Option<BudgetReport>,
    /// The last reading's answer (no fresh database check).
    pub health: HealthReport,
    /// Present when asked for.
    pub history: Option<crate::protocol::HistoryReport>,
}

/// Why no answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnswer {
    /// The actor is gone (corral is exiting).
    Gone,
    /// Not within the time given (the actor is busy or hung).
    Late,
}

/// Send the event `make` builds around a reply channel and wait for the answer, for at most
/// `within` when given.
pub async fn ask<T>(tx: &EventTx, within: Option<Duration>, make: impl FnOnce(oneshot::Sender<T>) -> Event) -> Result<T, NoAnswer> {
    let (reply_tx, reply_rx) = oneshot::channel();
    tx.send(make(reply_tx)).map_err(|_| NoAnswer::Gone)?;
    match within {
        Some(d) => match tokio::time::timeout(d, reply_rx).await {
            Ok(answer) => answer.map_err(|_| NoAnswer::Gone),
            Err(_) => Err(NoAnswer::Late),
        },
        None => reply_rx.await.map_err(|_| NoAnswer::Gone),
    }
}

/// A control request, answered as the socket answers it.
pub async fn request(tx: &EventTx, req: Request) -> Response {
    ask(tx, None, |reply| Event::Request(req, reply)).await.unwrap_or_else(|_| gone())
}

/// The actor's current health answer, without a database round trip.
pub async fn last_health(tx: &EventTx) -> Response {
    ask(tx, None, Event::HealthAnswer).await.unwrap_or_else(|_| gone())
}

/// Status, budget, last health (and history) in one round trip.
pub async fn snapshot(tx: &EventTx, history: bool, within: Option<Duration>) -> Result<Box<Snapshot>, NoAnswer> {
    ask(tx, within, |reply| Event::Snapshot { history, reply }).await
}

fn gone() -> Response {
    Response::shutting_down()
}
