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
//! - [`fleet`] is the same allocation over every corral sharing the database
//!   (`scope = "fleet"`): the fleet's `usable` and each member's rows.
//! - [`env`](mod@env) renders a job's grant into what the job receives (SPEC §3): the
//!   environment variables and the quota file. Its only I/O is
//!   [`env::write_quota_file`].
//!
//! The three modules deliberately do not import `crate::config`; the one
//! conversion from config types lives in [`plan_input`] below, shared by the
//! daemon and `corral check`.

pub mod allocate;
pub mod env;
pub mod fleet;
pub mod plan;

use crate::config::{DatabaseConfig, MaxConnections, PoolSize, PoolerSetting, Reserve};
use crate::db::pooler::{self, PgBouncerReading, PoolMode};
use plan::{PoolerLimit, PoolerMode};

/// corral's own connections counted in every plan, in both scopes: the one it keeps for
/// health, readings and fleet coordination alike (SPEC §5). 0 when there is no url to
/// connect to (the budget planned offline).
pub const OWN_CONNECTIONS: u32 = 1;

/// Server readings that enter the plan: (max_connections, superuser_reserved, reserved).
pub type ServerReading = (u32, u32, u32);

/// corral's own connections for this `[database]`.
pub fn own_connections(db: &DatabaseConfig) -> u32 {
    if db.url.is_some() {
        OWN_CONNECTIONS
    } else {
        0
    }
}

/// The pooler on the jobs' path (SPEC §5.1): Supavisor from the URL's host and port,
/// PgBouncer from `pooler_admin_url` (its mode and sizes from `reading`, the admin console's
/// last answer), or the mode set by hand. None: the jobs connect to PostgreSQL directly.
pub fn pooler_limit(db: &DatabaseConfig, reading: Option<&PgBouncerReading>) -> Option<PoolerLimit> {
    let (host, port) = db
        .url
        .as_ref()
        .map(|c| c.first_host_port())
        .unwrap_or((None, 5432));
    let supavisor = host.as_deref().is_some_and(pooler::is_supavisor);
    let pgbouncer = db.pooler_admin_url.is_some();
    let from_reading = |m: PoolMode| match m {
        PoolMode::Session => PoolerMode::Session,
        PoolMode::Transaction => PoolerMode::Transaction,
    };
    let mode = match db.pooler {
        PoolerSetting::None => return None,
        PoolerSetting::Session => Some(PoolerMode::Session),
        PoolerSetting::Transaction => Some(PoolerMode::Transaction),
        PoolerSetting::Auto if supavisor => {
            Some(if port == pooler::SUPAVISOR_TRANSACTION_PORT { PoolerMode::Transaction } else { PoolerMode::Session })
        }
        PoolerSetting::Auto if pgbouncer => reading.map(|r| from_reading(r.mode)),
        PoolerSetting::Auto => return None,
    };
    let sizes = db.preset.as_deref().and_then(pooler::supavisor_sizes);
    let (via, pool_size, client_limit, missing) = if supavisor {
        let missing = sizes.is_none().then(|| "set preset to the project's compute size (Supavisor's pool size and client limit follow it), or pool_size".to_string());
        ("Supavisor", sizes.map(|s| s.0), sizes.map(|s| s.1), missing)
    } else if pgbouncer {
        let missing = reading.is_none().then(|| "the PgBouncer admin console (pooler_admin_url) has not been read yet".to_string());
        ("PgBouncer", reading.map(|r| r.session_cap()), reading.map(|r| r.max_client_conn), missing)
    } else {
        let missing = Some("set pool_size, or pooler_admin_url to read PgBouncer's sizes".to_string());
        ("pooler", None, None, missing)
    };
    let pool_size = match db.pool_size {
        PoolSize::Fixed(n) => Some(n),
        PoolSize::Auto => pool_size,
    };
    let missing = if pool_size.is_some() && mode == Some(PoolerMode::Session) { None } else { missing };
    Some(PoolerLimit { mode, via: via.into(), pool_size, client_limit, missing })
}

/// The plan input for a `[database]` section, a server reading (if any), the PgBouncer admin
/// console's reading (if any), active reservations and corral's own connections.
pub fn plan_input(
    db: &DatabaseConfig,
    server: Option<ServerReading>,
    pooler: Option<&PgBouncerReading>,
    reservations: u32,
    own: u32,
) -> plan::PlanInput {
    plan::PlanInput {
        server_max_connections: server.map(|s| s.0),
        superuser_reserved: server.map(|s| s.1).unwrap_or(0),
        reserved_connections: server.map(|s| s.2).unwrap_or(0),
        configured: match db.max_connections {
            MaxConnections::Auto => plan::LimitSetting::Auto,
            MaxConnections::Fixed(n) => plan::LimitSetting::Fixed(n),
        },
        preset: db.preset.as_deref().and_then(crate::config::preset_limit),
        provider_reserve: match db.provider_reserve {
            Reserve::Count(n) => plan::ReserveSetting::Count(n),
            Reserve::Percent(p) => plan::ReserveSetting::Percent(p),
        },
        adhoc_reserve: db.adhoc_reserve,
        external_reserve: db.external_reserve,
        reservations,
        own_connections: own,
        pooler: pooler_limit(db, pooler),
    }
}
