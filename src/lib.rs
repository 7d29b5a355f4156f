//! corral: a PID-1-capable supervisor for worker fleets that share one
//! PostgreSQL connection budget. The contract is SPEC.md; ARCHITECTURE.md is the map (tasks,
//! channels, owners, concerns, where each SPEC section lives). In short:
//!
//! - `config`   parse → expand `${VAR}` → validate into a typed `Config`; diff two configs.
//! - `job`      the pure job state machine (`step(state, input) -> effects`) and backoff.
//! - `budget`   the pure, deterministic connection allocator, plan arithmetic, job env,
//!              and the fleet's usable and rows (`scope = "fleet"`).
//! - `process`  spawn (own process group, inherited lock fd), the one reaper (`waitpid(-1)`),
//!              signals, PID-1 duties, output capture, flock locks, process scans.
//! - `db`       corral's one own database connection (health, limits, usage and, in fleet
//!              scope, coordination: schema, leases, fleet allocation, fleet-wide locks), TLS,
//!              the one connection-string reader, redaction, the PgBouncer admin console.
//! - `lookup`   users, groups and host names without NSS (the binary is static): /etc/passwd,
//!              /etc/group, /etc/hosts, DNS from /etc/resolv.conf.
//! - `schedule` scheduled jobs, pure: cron/`@every` occurrences (croner, chrono-tz) and the
//!              decisions of a schedule (due, missed, skipped, catch-up, concurrency).
//! - `protocol` the typed requests and replies shared by daemon and client (SPEC §4's stable
//!              names come from their serde derives), line framing.
//! - `daemon`   `corral run`: one actor owns the job table; signals, the socket server,
//!              the file watcher, timers, the probe task and the fleet task send it events.
//!              Only the actor mutates jobs; each concern (starting and admission, reaping,
//!              control verbs, reload, the fleet link, the budget and its grants,
//!              dependencies, watch reports, schedules, shutdown, the read-only views) has
//!              its own state and returns decisions or effects.
//! - `watchdog` per-run watch tasks (stall timer, ready and liveness probes), tree memory
//!              sampling, and the pure dependency and liveness decisions; reports go to the actor.
//! - `cli`      the client verbs: clap, socket client, rendering, `corral top`.
//! - `view`     the budget report drawn as bar segments for `/metrics` and `corral top`.
//! - `alerts`   `[alerts]`: the actor reports facts through a bounded hook; a router task
//!              decides (pure) and workers deliver (webhook, command) off the actor.
//!
//! `cli` and `daemon` never import each other; both speak `protocol`.
//!
//! Nothing on the actor's thread may block on a job or a file (SPEC §7, §8): output goes
//! through bounded sinks drained by threads of their own (`process::output`), and a reload
//! is read and validated on a thread of its own.

// The module maps in these docs align their descriptions in a column.
#![allow(clippy::doc_overindented_list_items)]

pub mod alerts;
pub mod budget;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod db;
pub mod job;
pub mod lookup;
pub mod process;
pub mod protocol;
pub mod schedule;
pub mod view;
pub mod watchdog;
