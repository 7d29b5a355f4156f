//! The database side of corral: its own connection, URL redaction, and the few SQL queries
//! (SPEC §3, §5, §6, §10).
//!
//! - [`redact`]: passwords out of URLs, DSNs and any message (pure; usable everywhere).
//! - [`usage`]: the `corral/<service>/<job>` application_name convention, [`Attribution`] of a
//!   connection, and the [`Usage`] snapshot (pure data).
//! - [`probe`]: [`Probe`], the ONE connection corral holds and counts, and its queries
//!   (health, server limits, pg_stat_activity, terminating surplus idle connections).
//! - [`fleet`]: the coordination connection of `scope = "fleet"`: the `corral` schema, membership
//!   leases, the fleet-wide allocation transaction, reservations, single-instance advisory locks.
//! - [`connect`]: configuring and opening corral's own connections (attribution, TLS refusal).
//! - [`error`]: [`DbError`], whose Display and Debug never contain a password.
//!
//! Not here: job environment (`DATABASE_URL` with application_name, quotas) is `budget::env`;
//! scheduling health checks and their backoff is the daemon's. Nothing here decides policy: the
//! probe reports and executes, the budget and the supervisor decide.

pub mod connect;
pub mod error;
pub mod fleet;
pub mod probe;
pub mod redact;
pub mod usage;

pub use error::{DbError, SQLSTATE_TOO_MANY_CONNECTIONS};
pub use probe::{Health, Probe, ServerLimits};
pub use redact::{redact, redact_text};
pub use usage::{
    Attribution, BackendState, Usage, UsageGroup, APP_PREFIX, MAX_APPLICATION_NAME_BYTES, OWN_JOB,
};
