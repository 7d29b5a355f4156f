//! The budget plan: SPEC §5's arithmetic from settings and readings to `usable`.
//!
//! ```text
//! limit  = max_connections (the server's, or the integer, or the preset's),
//!          minus superuser_reserved_connections and reserved_connections when read from the server
//! usable = limit - provider_reserve - adhoc_reserve - external_reserve
//!                - active reservations - corral's own connections
//! ```
//!
//! This module owns only that arithmetic and the warnings it can detect. It
//! does no I/O: the server's `max_connections` and reserved settings are
//! inputs read elsewhere (`db`), and the config types are converted by the
//! caller into [`LimitSetting`] / [`ReserveSetting`] so this module does not
//! depend on `crate::config`.

use serde::Serialize;

/// `max_connections` as configured (SPEC §2 `[database] max_connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSetting {
    /// `"auto"`: read from the server; the preset is the fallback.
    Auto,
    /// An integer given by the user.
    Fixed(u32),
}

/// `provider_reserve` as configured: a count, or a percentage of `limit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReserveSetting {
    Count(u32),
    /// Percent as written: `"10%"` is `Percent(10.0)` (not `0.10`).
    Percent(f64),
}

/// How a pooler between the jobs and the server hands out server connections (SPEC §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolerMode {
    /// Every client holds one server connection: the pool size caps the jobs' connections.
    Session,
    /// Clients share the pool between transactions: the client limit caps them.
    Transaction,
}

/// The pooler on the jobs' path, with what is known of its sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PoolerLimit {
    /// None: a pooler whose mode is not known yet (its admin console was not read).
    pub mode: Option<PoolerMode>,
    /// "Supavisor", "PgBouncer" or "pooler" (set by hand).
    pub via: String,
    /// Server connections per (role, database) pool.
    pub pool_size: Option<u32>,
    /// Clients the pooler accepts.
    pub client_limit: Option<u32>,
    /// What to set when a size that binds is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

/// Everything the plan depends on. All counts are connections.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanInput {
    /// The server's `max_connections`, when it could be read.
    pub server_max_connections: Option<u32>,
    /// The server's `superuser_reserved_connections` (only used with a server reading).
    pub superuser_reserved: u32,
    /// The server's `reserved_connections` (PostgreSQL 16+; 0 before; only used with a server reading).
    pub reserved_connections: u32,
    /// `[database] max_connections`.
    pub configured: LimitSetting,
    /// `max_connections` of the configured preset (see `config::preset_limit`), if any.
    pub preset: Option<u32>,
    pub provider_reserve: ReserveSetting,
    pub adhoc_reserve: u32,
    pub external_reserve: u32,
    /// Sum of the active `corral reserve` reservations.
    pub reservations: u32,
    /// Connections corral itself keeps open (SPEC §5: it opens its own first).
    pub own_connections: u32,
    /// The pooler the jobs connect through, if any (SPEC §5.1).
    pub pooler: Option<PoolerLimit>,
}

/// Where `limit` came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitSource {
    /// The server's reading, minus its reserved slots.
    Server,
    /// The integer `max_connections` from the config.
    Configured,
    /// The preset, because the server could not be read.
    Preset,
    /// The pooler on the jobs' path (session pool size or transaction client limit).
    Pooler,
    /// Nothing known: `limit` and `usable` are 0 (see [`plan`]).
    #[default]
    Unknown,
}

/// The resolved budget. Every field is a connection count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub limit: u32,
    pub limit_source: LimitSource,
    /// What binds, in words: "session pooler pool_size", "server max_connections 60 - 3 reserved".
    pub limit_reason: String,
    /// The pooler on the jobs' path, as planned against.
    pub pooler: Option<PoolerLimit>,
    /// Resolved count (a percentage is rounded up: reserving too much is safe).
    pub provider_reserve: u32,
    pub adhoc_reserve: u32,
    pub external_reserve: u32,
    pub reservations: u32,
    pub own: u32,
    /// `limit` minus everything above, saturating at 0.
    pub usable: u32,
    /// Human-readable problems worth logging and showing in `corral check`/`budget`.
    pub warnings: Vec<String>,
}

impl Plan {
    /// Sum of everything subtracted from `limit` (may exceed it).
    pub fn deductions(&self) -> u64 {
        self.provider_reserve as u64
            + self.adhoc_reserve as u64
            + self.external_reserve as u64
            + self.reservations as u64
            + self.own as u64
    }
}

/// How the warning about an unknown server limit begins.
const UNKNOWN_LIMIT: &str = "the database's max_connections is unknown";

/// Resolve a provider reserve against `limit`. A percentage rounds UP
/// (10% of 55 = 5.5 → 6): the provider's own connections are outside our
/// control, so erring towards keeping more free is the safe side. The result
/// never exceeds `limit`. A tiny tolerance keeps float noise (60 × 10 / 100 =
/// 6.000000000000001) from rounding a whole number up by one.
pub fn resolve_reserve(setting: ReserveSetting, limit: u32) -> u32 {
    match setting {
        ReserveSetting::Count(n) => n.min(limit),
        ReserveSetting::Percent(p) => {
            if p.is_nan() || p >= 100.0 {
                // NaN cannot come from a validated config; if it does, reserve everything.
                return limit;
            }
            if p <= 0.0 {
                return 0;
            }
            let exact = limit as f64 * p / 100.0;
            let up = (exact - 1e-9).ceil();
            if up <= 0.0 {
                0
            } else {
                (up as u64).min(limit as u64) as u32
            }
        }
    }
}

/// Compute the plan (SPEC §5).
///
/// How `limit` is chosen:
/// - `auto` with a server reading: `max_connections - superuser_reserved -
///   reserved_connections` (the slots a non-superuser can actually use). A
///   preset whose value differs from the server's `max_connections` is a
///   warning (SPEC §5: "the server's own value wins").
/// - `auto` without a reading: the preset's value.
/// - an integer: that integer. If the server *was* read and allows fewer
///   connections than the integer, the server's number is used instead
///   (source `Server`): a budget above the real hard limit would let jobs
///   lock each other out, while a smaller one is the user's choice. When the
///   integer exceeds even the server's raw `max_connections`, that is a warning.
/// - `auto`, no reading, no preset: **unknown**. We then report `limit = 0`
///   and `usable = 0`, so every job that needs a connection waits
///   (`waiting: budget`) instead of starting. Guessing a number could
///   overcommit a database whose limit may be as low as 60 and lock out the
///   supervisor and people running psql; waiting is recoverable as soon as
///   the server answers (the daemon re-plans after each health check), or the
///   user sets `preset` or an integer, which the warning tells them.
pub fn plan(input: &PlanInput) -> Plan {
    let mut warnings = Vec::new();

    // The server's limit for ordinary roles, when read.
    let server_limit = input.server_max_connections.map(|max| {
        max.saturating_sub(input.superuser_reserved)
            .saturating_sub(input.reserved_connections)
    });

    if let (Some(server), Some(preset)) = (input.server_max_connections, input.preset) {
        if server != preset {
            warnings.push(format!(
                "preset says max_connections = {preset} but the server reports {server}; using the server's value \
                 (fix or remove `preset` so `corral check` shows the right plan when the server cannot be read)"
            ));
        }
    }

    let (limit, limit_source) = match input.configured {
        LimitSetting::Fixed(n) => {
            if input.preset.is_some() {
                // Not an error: the preset is simply not needed. Only say so
                // when the two disagree, since that hints at a stale config.
                if let Some(p) = input.preset.filter(|p| *p != n) {
                    warnings.push(format!(
                        "preset ({p}) is ignored because max_connections is set to {n}"
                    ));
                }
            }
            match (server_limit, input.server_max_connections) {
                (Some(sl), Some(raw)) if n > sl => {
                    if n > raw {
                        warnings.push(format!(
                            "max_connections = {n} is more than the server's max_connections ({raw}); \
                             using the server's {sl} (after {} superuser/reserved slots)",
                            raw - sl
                        ));
                    }
                    (sl, LimitSource::Server)
                }
                _ => (n, LimitSource::Configured),
            }
        }
        LimitSetting::Auto => match (server_limit, input.preset) {
            (Some(sl), _) => (sl, LimitSource::Server),
            (None, Some(p)) => (p, LimitSource::Preset),
            (None, None) => {
                warnings.push(
                    "the database's max_connections is unknown (the server could not be read and no preset is set): \
                     no job gets connections until it can be read; set `preset` (e.g. \"supabase-micro\") \
                     or an integer `max_connections` in [database]"
                        .to_string(),
                );
                (0, LimitSource::Unknown)
            }
        },
    };

    let mut limit_reason = match limit_source {
        LimitSource::Server => {
            let raw = input.server_max_connections.unwrap_or(limit);
            if raw > limit {
                format!("server max_connections {raw} - {} reserved", raw - limit)
            } else {
                format!("server max_connections {raw}")
            }
        }
        LimitSource::Configured => "max_connections".to_string(),
        LimitSource::Preset => "preset".to_string(),
        LimitSource::Pooler | LimitSource::Unknown => "unknown".to_string(),
    };
    let (limit, limit_source) = match &input.pooler {
        None => (limit, limit_source),
        Some(p) => {
            let known = limit_source != LimitSource::Unknown;
            match (p.mode, p.pool_size, p.client_limit) {
                (Some(PoolerMode::Session), Some(size), _) if !known || size < limit => {
                    limit_reason = "session pooler pool_size".into();
                    (size, LimitSource::Pooler)
                }
                (Some(PoolerMode::Session), Some(_), _) => (limit, limit_source),
                (Some(PoolerMode::Transaction), _, Some(clients)) => {
                    limit_reason = "transaction pooler client limit".into();
                    (clients, LimitSource::Pooler)
                }
                (Some(PoolerMode::Transaction), _, None) => {
                    if known {
                        warnings.push(format!(
                            "the client limit of the transaction pooler ({}) is unknown: planning against the database's limit ({limit}){}",
                            p.via,
                            p.missing.as_deref().map(|m| format!("; {m}")).unwrap_or_default()
                        ));
                    }
                    (limit, limit_source)
                }
                (mode, _, _) => {
                    let what = match mode {
                        Some(_) => format!("the pool size of the session pooler ({}) is unknown", p.via),
                        None => format!("the mode and sizes of the pooler ({}) are unknown", p.via),
                    };
                    warnings.push(format!(
                        "{what}: no job gets connections until it is known{}",
                        p.missing.as_deref().map(|m| format!("; {m}")).unwrap_or_default()
                    ));
                    limit_reason = "unknown".into();
                    (0, LimitSource::Unknown)
                }
            }
        }
    };

    if limit_source == LimitSource::Pooler {
        // The pooler's size is known: the server's unknown limit no longer holds jobs back.
        warnings.retain(|w| !w.starts_with(UNKNOWN_LIMIT));
    }

    if let ReserveSetting::Percent(p) = input.provider_reserve {
        if p.is_nan() || !(0.0..=100.0).contains(&p) {
            warnings.push(format!(
                "provider_reserve = {p}% is not between 0% and 100%; clamped"
            ));
        }
    }
    let provider_reserve = resolve_reserve(input.provider_reserve, limit);

    let mut plan = Plan {
        limit,
        limit_source,
        limit_reason,
        pooler: input.pooler.clone(),
        provider_reserve,
        adhoc_reserve: input.adhoc_reserve,
        external_reserve: input.external_reserve,
        reservations: input.reservations,
        own: input.own_connections,
        usable: 0,
        warnings,
    };
    let deductions = plan.deductions();
    plan.usable = (limit as u64).saturating_sub(deductions) as u32;
    if limit_source != LimitSource::Unknown && deductions >= limit as u64 {
        plan.warnings.push(format!(
            "reserves and reservations ({deductions}) leave nothing of the limit ({limit}): usable is 0, \
             jobs that need connections will wait"
        ));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn base() -> PlanInput {
        PlanInput {
            server_max_connections: None,
            superuser_reserved: 0,
            reserved_connections: 0,
            configured: LimitSetting::Auto,
            preset: None,
            provider_reserve: ReserveSetting::Count(0),
            adhoc_reserve: 0,
            external_reserve: 0,
            reservations: 0,
            own_connections: 0,
            pooler: None,
        }
    }

    /// The worked example: Supabase free plan (60), 10% provider reserve → 6,
    /// adhoc 5, corral's own 1 → usable 48.
    #[test]
    fn supabase_free_worked_example() {
        let p = plan(&PlanInput {
            preset: Some(60),
            provider_reserve: ReserveSetting::Percent(10.0),
            adhoc_reserve: 5,
            own_connections: 1,
            ..base()
        });
        assert_eq!(p.limit, 60);
        assert_eq!(p.limit_source, LimitSource::Preset);
        assert_eq!(p.provider_reserve, 6);
        assert_eq!(p.usable, 48);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn server_reading_wins_and_subtracts_reserved_slots() {
        let p = plan(&PlanInput {
            server_max_connections: Some(100),
            superuser_reserved: 3,
            reserved_connections: 2,
            preset: Some(100),
            adhoc_reserve: 5,
            ..base()
        });
        assert_eq!(p.limit, 95);
        assert_eq!(p.limit_source, LimitSource::Server);
        assert_eq!(p.usable, 90);
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn preset_disagreeing_with_server_is_a_warning() {
        let p = plan(&PlanInput {
            server_max_connections: Some(90),
            preset: Some(60),
            ..base()
        });
        assert_eq!(p.limit, 90);
        assert_eq!(p.limit_source, LimitSource::Server);
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0].contains("preset"));
    }

    #[test]
    fn unknown_limit_is_zero_with_a_warning() {
        let p = plan(&PlanInput {
            adhoc_reserve: 5,
            own_connections: 1,
            ..base()
        });
        assert_eq!(p.limit_source, LimitSource::Unknown);
        assert_eq!((p.limit, p.usable), (0, 0));
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("preset") && p.warnings[0].contains("max_connections"));
    }

    #[test]
    fn fixed_integer_is_used_as_is_without_server() {
        let p = plan(&PlanInput {
            configured: LimitSetting::Fixed(40),
            own_connections: 1,
            ..base()
        });
        assert_eq!(
            (p.limit, p.limit_source, p.usable),
            (40, LimitSource::Configured, 39)
        );
    }

    #[test]
    fn fixed_integer_is_capped_by_the_server() {
        // Below the server's limit: the user's choice stands.
        let p = plan(&PlanInput {
            configured: LimitSetting::Fixed(40),
            server_max_connections: Some(60),
            superuser_reserved: 3,
            ..base()
        });
        assert_eq!((p.limit, p.limit_source), (40, LimitSource::Configured));
        assert!(p.warnings.is_empty());
        // Between the usable slots and the raw value: silently capped.
        let p = plan(&PlanInput {
            configured: LimitSetting::Fixed(60),
            server_max_connections: Some(60),
            superuser_reserved: 3,
            ..base()
        });
        assert_eq!((p.limit, p.limit_source), (57, LimitSource::Server));
        assert!(p.warnings.is_empty());
        // Above the server's max_connections: capped with a warning.
        let p = plan(&PlanInput {
            configured: LimitSetting::Fixed(200),
            server_max_connections: Some(60),
            superuser_reserved: 3,
            ..base()
        });
        assert_eq!((p.limit, p.limit_source), (57, LimitSource::Server));
        assert_eq!(p.warnings.len(), 1);
    }

    #[test]
    fn reserves_beyond_the_limit_saturate_at_zero() {
        let p = plan(&PlanInput {
            configured: LimitSetting::Fixed(10),
            adhoc_reserve: 5,
            external_reserve: 4,
            reservations: 3,
            own_connections: 1,
            ..base()
        });
        assert_eq!(p.usable, 0);
        assert!(p.warnings.iter().any(|w| w.contains("leave nothing")));
    }

    fn pooler(mode: Option<PoolerMode>, pool: Option<u32>, clients: Option<u32>) -> Option<PoolerLimit> {
        Some(PoolerLimit { mode, via: "PgBouncer".into(), pool_size: pool, client_limit: clients, missing: Some("set pool_size".into()) })
    }

    /// The issue's session pooler: the server allows 57, the pool 15.
    #[test]
    fn a_session_pooler_binds_at_its_pool_size() {
        let server = PlanInput { server_max_connections: Some(60), superuser_reserved: 3, adhoc_reserve: 1, own_connections: 1, ..base() };
        let p = plan(&PlanInput { pooler: pooler(Some(PoolerMode::Session), Some(15), Some(100)), ..server.clone() });
        assert_eq!((p.limit, p.limit_source, p.limit_reason.as_str(), p.usable), (15, LimitSource::Pooler, "session pooler pool_size", 13));
        // A pool larger than the server's limit: the server binds.
        let p = plan(&PlanInput { pooler: pooler(Some(PoolerMode::Session), Some(100), None), ..server.clone() });
        assert_eq!((p.limit, p.limit_source, p.limit_reason.as_str()), (57, LimitSource::Server, "server max_connections 60 - 3 reserved"));
        // Without any server reading or preset, the pool size alone is known and binds.
        let p = plan(&PlanInput { pooler: pooler(Some(PoolerMode::Session), Some(15), None), ..base() });
        assert_eq!((p.limit, p.limit_source), (15, LimitSource::Pooler));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        // Unknown pool size: nothing is granted, and the warning says what to set.
        let p = plan(&PlanInput { pooler: pooler(Some(PoolerMode::Session), None, None), ..server.clone() });
        assert_eq!((p.limit, p.usable, p.limit_source), (0, 0, LimitSource::Unknown));
        assert!(p.warnings.iter().any(|w| w.contains("pool size") && w.contains("set pool_size")), "{:?}", p.warnings);
        let p = plan(&PlanInput { pooler: pooler(None, None, None), ..server });
        assert_eq!(p.limit_source, LimitSource::Unknown);
    }

    #[test]
    fn a_transaction_pooler_binds_at_its_client_limit() {
        let server = PlanInput { server_max_connections: Some(60), superuser_reserved: 3, ..base() };
        let p = plan(&PlanInput { pooler: pooler(Some(PoolerMode::Transaction), Some(15), Some(200)), ..server.clone() });
        assert_eq!((p.limit, p.limit_source, p.limit_reason.as_str()), (200, LimitSource::Pooler, "transaction pooler client limit"));
        let p = plan(&PlanInput { pooler: pooler(Some(PoolerMode::Transaction), Some(15), None), ..server });
        assert_eq!((p.limit, p.limit_source), (57, LimitSource::Server));
        assert!(p.warnings[0].contains("client limit"), "{:?}", p.warnings);
    }

    #[test]
    fn percent_rounds_up() {
        assert_eq!(resolve_reserve(ReserveSetting::Percent(10.0), 60), 6);
        assert_eq!(resolve_reserve(ReserveSetting::Percent(10.0), 55), 6);
        assert_eq!(resolve_reserve(ReserveSetting::Percent(10.0), 51), 6);
        assert_eq!(resolve_reserve(ReserveSetting::Percent(10.0), 50), 5);
        assert_eq!(resolve_reserve(ReserveSetting::Percent(0.1), 60), 1);
        assert_eq!(resolve_reserve(ReserveSetting::Percent(0.0), 60), 0);
        assert_eq!(resolve_reserve(ReserveSetting::Percent(100.0), 60), 60);
        assert_eq!(resolve_reserve(ReserveSetting::Percent(250.0), 60), 60);
        assert_eq!(resolve_reserve(ReserveSetting::Percent(f64::NAN), 60), 60);
        assert_eq!(resolve_reserve(ReserveSetting::Count(70), 60), 60);
        // Float noise does not round a whole result up.
        for limit in 0..=1000u32 {
            for pct in [5.0, 10.0, 20.0, 25.0, 50.0] {
                let exact = limit as u64 * pct as u64;
                let want = exact.div_ceil(100) as u32;
                assert_eq!(
                    resolve_reserve(ReserveSetting::Percent(pct), limit),
                    want,
                    "{pct}% of {limit}"
                );
            }
        }
    }

    #[test]
    fn serializes_with_stable_names() {
        let p = plan(&PlanInput {
            preset: Some(60),
            ..base()
        });
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["limit"], 60);
        assert_eq!(v["limit_source"], "preset");
        assert_eq!(v["usable"], 60);
        for k in [
            "provider_reserve",
            "adhoc_reserve",
            "external_reserve",
            "reservations",
            "own",
            "warnings",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }

    fn limit_setting() -> impl Strategy<Value = LimitSetting> {
        prop_oneof![
            Just(LimitSetting::Auto),
            (0u32..1000).prop_map(LimitSetting::Fixed)
        ]
    }

    fn reserve_setting() -> impl Strategy<Value = ReserveSetting> {
        prop_oneof![
            (0u32..100).prop_map(ReserveSetting::Count),
            (0.0f64..=100.0).prop_map(ReserveSetting::Percent)
        ]
    }

    prop_compose! {
        fn plan_input()(
            server in proptest::option::of(0u32..1000),
            su in 0u32..10, rc in 0u32..10,
            configured in limit_setting(),
            preset in proptest::option::of(prop_oneof![Just(60u32), Just(90), Just(500)]),
            provider in reserve_setting(),
            adhoc in 0u32..20, ext in 0u32..20, res in 0u32..20, own in 0u32..3,
        ) -> PlanInput {
            PlanInput { server_max_connections: server, superuser_reserved: su, reserved_connections: rc,
                configured, preset, provider_reserve: provider, adhoc_reserve: adhoc, external_reserve: ext,
                reservations: res, own_connections: own, pooler: None }
        }
    }

    proptest! {
        #[test]
        fn usable_is_limit_minus_deductions_saturating(input in plan_input()) {
            let p = plan(&input);
            prop_assert!(p.usable <= p.limit);
            prop_assert_eq!(p.usable as u64, (p.limit as u64).saturating_sub(p.deductions()));
            prop_assert!(p.provider_reserve <= p.limit);
            // Deterministic.
            prop_assert_eq!(&p, &plan(&input));
        }

        #[test]
        fn limit_never_exceeds_what_the_server_allows(input in plan_input()) {
            let p = plan(&input);
            if let Some(max) = input.server_max_connections {
                let sl = max.saturating_sub(input.superuser_reserved).saturating_sub(input.reserved_connections);
                prop_assert!(p.limit <= sl);
            }
            if p.limit_source == LimitSource::Unknown {
                prop_assert_eq!(p.usable, 0);
                prop_assert!(!p.warnings.is_empty());
            }
        }

        #[test]
        fn more_reserve_never_means_more_usable(input in plan_input(), extra in 1u32..10) {
            let p = plan(&input);
            let q = plan(&PlanInput { reservations: input.reservations + extra, ..input.clone() });
            prop_assert!(q.usable <= p.usable);
            let r = plan(&PlanInput { adhoc_reserve: input.adhoc_reserve + extra, ..input });
            prop_assert!(r.usable <= p.usable);
        }

        #[test]
        fn percent_reserve_is_the_ceiling(limit in 0u32..100_000, pct in 0u32..=100) {
            let want = (limit as u64 * pct as u64).div_ceil(100) as u32;
            prop_assert_eq!(resolve_reserve(ReserveSetting::Percent(pct as f64), limit), want);
        }
    }
}
