//! The connection budget (SPEC §3, §5): pure arithmetic and allocation.
//!
//! Everything here is a pure function of its inputs so that "the same inputs
//! give the same allocation" (SPEC §5) is true by construction and testable
//! without a database, processes or clocks. Time, server readings, measured
//! use and process state are *inputs*; the caller (the daemon) gathers them.
//!
//! - [`plan`] turns the database settings, the server's reading and the
//!   reserves into the `limit` and `usable` numbers of SPEC §5.
//! - [`allocate`] shares `usable` between jobs: minimums first by priority,
//!   the rest by priority weight up to each `max`, and the shrink rule.
//! - [`env`](mod@env) renders a job's grant into what the job receives (SPEC §3): the
//!   environment variables and the quota file. Its only I/O is
//!   [`env::write_quota_file`].
//!
//! These modules deliberately do not import `crate::config`: the daemon
//! converts config types (`MaxConnections`, `Reserve`, `Connections`) into
//! the small input types defined here.

pub mod allocate;
pub mod env;
pub mod plan;
