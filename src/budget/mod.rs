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

use crate::config::{DatabaseConfig, MaxConnections, Reserve};

/// corral's own connections counted in every plan: the probe it keeps (SPEC §5).
pub const OWN_CONNECTIONS: u32 = 1;
/// In fleet scope: the probe and the coordination connection.
pub const OWN_CONNECTIONS_FLEET: u32 = 2;

/// Server readings that enter the plan: (max_connections, superuser_reserved, reserved).
pub type ServerReading = (u32, u32, u32);

/// The plan input for a `[database]` section, a server reading (if any),
/// active reservations and corral's own connections.
pub fn plan_input(db: &DatabaseConfig, server: Option<ServerReading>, reservations: u32, own: u32) -> plan::PlanInput {
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
    }
}
