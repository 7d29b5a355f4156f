//! The database side of corral: its own connection, URL redaction, and the few SQL queries
//! (SPEC §3, §5, §6, §10).
//!
//! - [`conninfo`]: the one reader of connection strings (URL and key=value): checks,
//!   redaction spans, `application_name` injection, the driver's config, TLS settings (pure).
//! - [`redact`]: passwords out of URLs, DSNs and any message (pure; usable everywhere).
//! - [`usage`]: the `corral/<service>/<job>` application_name convention, [`Attribution`] of a
//!   connection, and the [`Usage`] snapshot (pure data).
//! - [`probe`]: [`Probe`], the ONE connection corral holds and counts, and its queries
//!   (health, server limits, pg_stat_activity, terminating surplus idle connections).
//! - [`fleet`]: the coordination of `scope = "fleet"`, on the probe's connection: the `corral`
//!   schema, membership leases, the fleet-wide allocation transaction, reservations,
//!   single-instance advisory locks.
//! - [`pooler`]: the PgBouncer admin console (SHOW CONFIG, DATABASES, CLIENTS) and Supavisor's
//!   known sizes (SPEC §5.1).
//! - [`connect`]: configuring and opening corral's own connections (attribution, TLS).
//! - [`tls`]: rustls for those connections with libpq's `sslmode`, and why a handshake failed.
//! - [`error`]: [`DbError`], whose Display and Debug never contain a password.
//!
//! Not here: job environment (`DATABASE_URL` with application_name, quotas) is `budget::env`;
//! scheduling health checks and their backoff is the daemon's. Nothing here decides policy: the
//! probe reports and executes, the budget and the supervisor decide.

pub mod connect;
pub mod conninfo;
pub mod error;
pub mod fleet;
pub mod pooler;
pub mod probe;
pub mod redact;
pub mod tls;
pub mod usage;

pub use error::{DbError, SQLSTATE_TOO_MANY_CONNECTIONS};
pub use probe::{Health, Probe, ServerLimits};
pub use redact::{redact, redact_text};
pub use usage::{
    Attribution, BackendState, Usage, UsageGroup, APP_PREFIX, MAX_APPLICATION_NAME_BYTES, OWN_JOB,
};
