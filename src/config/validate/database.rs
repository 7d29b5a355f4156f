//! `[database]`: the connection string, the server's limit and what is kept back from it.

use std::time::Duration;

use toml::{Spanned, Value};

use super::diagnostics::{did_you_mean, quote};
use super::durations::{DAY, SEC};
use super::{Cx, Span};
use crate::config::expand::expand;
use crate::db::conninfo::ConnInfo;
use crate::config::raw::{RawDatabase, Str};
use crate::config::{DatabaseConfig, Enforce, MaxConnections, PoolSize, PoolerSetting, Reserve, PRESETS};

// Defaults. The README documents these; keep the two in step.
const DEFAULT_MAX_CONNECTIONS: MaxConnections = MaxConnections::Auto;
const DEFAULT_PROVIDER_RESERVE: Reserve = Reserve::Percent(10.0);
const DEFAULT_ADHOC_RESERVE: u32 = 5;
const DEFAULT_EXTERNAL_RESERVE: u32 = 0;
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(300);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_ENFORCE: Enforce = Enforce::Warn;
const DEFAULT_POOLER: PoolerSetting = PoolerSetting::Auto;

const ENFORCE_MODES: &[(&str, Enforce)] = &[
    ("off", Enforce::Off),
    ("warn", Enforce::Warn),
    ("terminate", Enforce::Terminate),
];
const POOLERS: &[(&str, PoolerSetting)] = &[
    ("auto", PoolerSetting::Auto),
    ("none", PoolerSetting::None),
    ("session", PoolerSetting::Session),
    ("transaction", PoolerSetting::Transaction),
];

const HEALTH_INTERVAL_RANGE: (Duration, Duration) = (SEC, DAY);
const HEALTH_TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(600));
/// PostgreSQL's own ceiling for max_connections: no count of connections is larger.
pub(super) const MAX_CONNECTION_COUNT: i64 = 262_143;

impl Cx<'_> {
    pub(super) fn database(&mut self, raw: &RawDatabase, anchor: Option<Span>) -> DatabaseConfig {
        let max_connections =
            raw.max_connections.as_ref().and_then(|v| self.max_connections(v)).unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let preset = raw.preset.as_ref().and_then(|v| self.preset(v));
        // An empty url (`url = "${DATABASE_URL:-}"` without the variable) is no url: with a
        // preset or an integer limit the budget is planned offline.
        let errors_before = self.diagnostics.len();
        let url = raw.url.as_ref().and_then(|v| self.connection_string("url", v));
        let url_rejected = self.diagnostics.len() > errors_before;
        let plannable = preset.is_some() || matches!(max_connections, MaxConnections::Fixed(_));
        if url.is_none() && !url_rejected && !plannable && raw.max_connections.is_none() && raw.preset.is_none() {
            let (span, message) = match &raw.url {
                Some(v) => (Some(v.span()), "\"url\" is empty and there is no preset or max_connections to plan with"),
                None => (anchor, "missing key \"url\" in [database]"),
            };
            let hint = "set url = \"${DATABASE_URL}\"; to plan the budget without a database, set preset = \"supabase-nano\" (or an integer max_connections); or remove [database]";
            self.error(span, message, Some(hint.into()));
        }
        let pooler_admin_url = raw.pooler_admin_url.as_ref().and_then(|v| self.connection_string("pooler_admin_url", v));
        DatabaseConfig {
            url,
            base_dir: self.base_dir.clone(),
            max_connections,
            preset,
            provider_reserve: raw
                .provider_reserve
                .as_ref()
                .and_then(|v| self.reserve(v))
                .unwrap_or(DEFAULT_PROVIDER_RESERVE),
            adhoc_reserve: self.count("adhoc_reserve", raw.adhoc_reserve.as_ref(), DEFAULT_ADHOC_RESERVE, MAX_CONNECTION_COUNT),
            external_reserve: self.count(
                "external_reserve",
                raw.external_reserve.as_ref(),
                DEFAULT_EXTERNAL_RESERVE,
                MAX_CONNECTION_COUNT,
            ),
            health_interval: self.duration("health_interval", raw.health_interval.as_ref(), DEFAULT_HEALTH_INTERVAL, HEALTH_INTERVAL_RANGE),
            health_timeout: self.duration("health_timeout", raw.health_timeout.as_ref(), DEFAULT_HEALTH_TIMEOUT, HEALTH_TIMEOUT_RANGE),
            enforce: self.choice("enforce", raw.enforce.as_ref(), ENFORCE_MODES, DEFAULT_ENFORCE),
            pooler: self.choice("pooler", raw.pooler.as_ref(), POOLERS, DEFAULT_POOLER),
            pool_size: raw.pool_size.as_ref().and_then(|v| self.pool_size(v)).unwrap_or(PoolSize::Auto),
            pooler_admin_url,
        }
    }

    /// A connection string, checked by the one reader of them (`db::conninfo`). Empty is None.
    /// The string holds the password: no message here may quote it.
    pub(super) fn connection_string(&mut self, key: &str, v: &Str) -> Option<ConnInfo> {
        let s = match expand(v.get_ref(), self.env) {
            Ok(s) => s,
            Err(e) => {
                let (message, hint) = e.describe(false);
                self.error(Some(v.span()), format!("{message} in \"{key}\""), Some(hint));
                return None;
            }
        };
        if s.trim().is_empty() {
            return None;
        }
        match ConnInfo::parse(&s) {
            Ok(info) => Some(info),
            Err(e) => {
                self.error(Some(v.span()), format!("invalid \"{key}\": {}", e.message), e.hint);
                None
            }
        }
    }

    pub(super) fn pool_size(&mut self, v: &Spanned<Value>) -> Option<PoolSize> {
        let hint = "write pool_size = \"auto\" (Supavisor's size for the preset, or PgBouncer's from pooler_admin_url) or a number like 15";
        let n = match v.get_ref() {
            Value::Integer(n) => *n,
            Value::String(s) => {
                let s = self.string("pool_size", &Spanned::new(v.span(), s.clone()))?;
                if s == "auto" {
                    return Some(PoolSize::Auto);
                }
                match s.trim().parse::<i64>() {
                    Ok(n) => n,
                    Err(_) => {
                        self.error(Some(v.span()), format!("invalid pool_size \"{s}\""), Some(hint.into()));
                        return None;
                    }
                }
            }
            other => {
                self.error(Some(v.span()), format!("\"pool_size\" must be \"auto\" or an integer, found {}", other.type_str()), Some(hint.into()));
                return None;
            }
        };
        match u32::try_from(n) {
            Ok(n) if n > 0 => Some(PoolSize::Fixed(n)),
            _ => {
                self.error(Some(v.span()), format!("pool_size must be a positive integer, found {n}"), Some(hint.into()));
                None
            }
        }
    }

    pub(super) fn max_connections(&mut self, v: &Spanned<Value>) -> Option<MaxConnections> {
        let hint = "write max_connections = \"auto\" to read it from the server, or a number like 60";
        let n = match v.get_ref() {
            Value::Integer(n) => *n,
            // A string too, so the value can come from "${VAR}".
            Value::String(s) => {
                let s = self.string("max_connections", &Spanned::new(v.span(), s.clone()))?;
                if s == "auto" {
                    return Some(MaxConnections::Auto);
                }
                match s.trim().parse::<i64>() {
                    Ok(n) => n,
                    Err(_) => {
                        self.error(
                            Some(v.span()),
                            format!("invalid max_connections \"{}\"", quote(&s)),
                            Some(hint.into()),
                        );
                        return None;
                    }
                }
            }
            other => {
                let message = format!(
                    "\"max_connections\" must be \"auto\" or an integer, found {}",
                    other.type_str()
                );
                self.error(Some(v.span()), message, Some(hint.into()));
                return None;
            }
        };
        match u32::try_from(n) {
            Ok(n) if n > 0 && i64::from(n) <= MAX_CONNECTION_COUNT => Some(MaxConnections::Fixed(n)),
            _ => {
                self.error(
                    Some(v.span()),
                    format!("max_connections must be between 1 and {MAX_CONNECTION_COUNT}, found {n}"),
                    Some(hint.into()),
                );
                None
            }
        }
    }

    pub(super) fn reserve(&mut self, v: &Spanned<Value>) -> Option<Reserve> {
        let hint = "write a count like provider_reserve = 6, or a share of the limit like provider_reserve = \"10%\"";
        let bad = |cx: &mut Self, message: String| {
            cx.error(Some(v.span()), message, Some(hint.into()));
            None
        };
        match v.get_ref() {
            Value::Integer(n) if (0..=MAX_CONNECTION_COUNT).contains(n) => Some(Reserve::Count(*n as u32)),
            Value::Integer(n) => bad(self, format!("provider_reserve must be between 0 and {MAX_CONNECTION_COUNT}, found {n}")),
            Value::String(s) => {
                let s = self.string("provider_reserve", &Spanned::new(v.span(), s.clone()))?;
                let text = s.trim();
                if let Some(percent) = text.strip_suffix('%') {
                    match percent.trim().parse::<f64>() {
                        Ok(p) if (0.0..100.0).contains(&p) => Some(Reserve::Percent(p)),
                        Ok(_) => bad(
                            self,
                            format!("provider_reserve \"{}\" must be at least 0% and below 100%", quote(&s)),
                        ),
                        Err(_) => bad(self, format!("invalid provider_reserve \"{}\"", quote(&s))),
                    }
                } else {
                    match text.parse::<u32>() {
                        Ok(n) if i64::from(n) <= MAX_CONNECTION_COUNT => Some(Reserve::Count(n)),
                        _ => bad(self, format!("invalid provider_reserve \"{}\"", quote(&s))),
                    }
                }
            }
            other => bad(
                self,
                format!(
                    "\"provider_reserve\" must be an integer or a percentage, found {}",
                    other.type_str()
                ),
            ),
        }
    }

    pub(super) fn preset(&mut self, v: &Str) -> Option<String> {
        let name = self.string("preset", v)?;
        if crate::config::preset_limit(&name).is_some() {
            return Some(name);
        }
        let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
        let message = match did_you_mean(&name, &names) {
            Some(s) => format!("unknown preset \"{}\" (did you mean \"{s}\"?)", quote(&name)),
            None => format!("unknown preset \"{}\"", quote(&name)),
        };
        self.error(
            Some(v.span()),
            message,
            Some(format!("known presets: {}", names.join(", "))),
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn job_and_database_defaults() {
        let c = ok(&format!("{DB}{JOB}"));
        let db = c.database.unwrap();
        assert_eq!(db.url.as_ref().map(|u| u.as_str()), Some("postgres://app:s3cret@db:5432/app"));
        assert!(!format!("{db:?}").contains("s3cret"), "{db:?}");
        assert_eq!(db.max_connections, MaxConnections::Auto);
        assert_eq!(db.preset, None);
        assert_eq!(db.provider_reserve, Reserve::Percent(10.0));
        assert_eq!((db.adhoc_reserve, db.external_reserve), (5, 0));
        assert_eq!(
            (db.health_interval, db.health_timeout),
            (Duration::from_secs(300), Duration::from_secs(10))
        );
        assert_eq!(db.enforce, Enforce::Warn);
        assert_eq!(
            c.jobs["web"],
            JobConfig {
                name: "web".into(),
                command: vec!["web".into()],
                cwd: None,
                env: BTreeMap::new(),
                user: None,
                autostart: true,
                restart: RestartPolicy::OnFailure,
                success_codes: vec![0],
                backoff: Backoff {
                    initial: Duration::from_secs(1),
                    max: Duration::from_secs(60)
                },
                healthy_after: Duration::from_secs(1),
                start_retries: 3,
                stop_signal: nix::sys::signal::Signal::SIGTERM,
                stop_timeout: Duration::from_secs(10),
                single_instance: true,
                on_duplicate: OnDuplicate::Refuse,
                priority: 0,
                connections: None,
                quota_signal: None,
                schedule: None,
                watch: Default::default(),
            }
        );
    }

    #[test]
    fn reserves_and_limits_in_every_form() {
        let c = ok("[database]\nurl = \"host=u\"\nmax_connections = \"${MAX:-90}\"\nprovider_reserve = \"7.5%\"\n");
        let db = c.database.unwrap();
        assert_eq!(
            (db.max_connections, db.provider_reserve),
            (MaxConnections::Fixed(90), Reserve::Percent(7.5))
        );
        let c = ok("[database]\nurl = \"host=u\"\nmax_connections = \"auto\"\nprovider_reserve = 0\n");
        let db = c.database.unwrap();
        assert_eq!(
            (db.max_connections, db.provider_reserve),
            (MaxConnections::Auto, Reserve::Count(0))
        );
    }

    #[test]
    fn unknown_preset() {
        let e = one(
            "[database]\nurl = \"host=u\"\npreset = \"supabase-mirco\"\n",
            3,
            10,
            "unknown preset \"supabase-mirco\" (did you mean \"supabase-micro\"?)",
        );
        assert!(e.hint.unwrap().contains("supabase-16xl"));
    }

    #[test]
    fn provider_reserve_forms() {
        one(
            "[database]\nurl = \"host=u\"\nprovider_reserve = \"ten\"\n",
            3,
            20,
            "invalid provider_reserve \"ten\"",
        );
        one(
            "[database]\nurl = \"host=u\"\nprovider_reserve = \"100%\"\n",
            3,
            20,
            "provider_reserve \"100%\" must be at least 0% and below 100%",
        );
        one(
            "[database]\nurl = \"host=u\"\nprovider_reserve = -1\n",
            3,
            20,
            "provider_reserve must be between 0 and 262143",
        );
    }

    #[test]
    fn max_connections_forms() {
        one(
            "[database]\nurl = \"host=u\"\nmax_connections = 0\n",
            3,
            19,
            "max_connections must be between 1 and 262143, found 0",
        );
        one(
            "[database]\nurl = \"host=u\"\nmax_connections = \"lots\"\n",
            3,
            19,
            "invalid max_connections \"lots\"",
        );
    }

    #[test]
    fn pooler_keys() {
        let c = ok("[database]\nurl = \"host=h\"\npooler = \"session\"\npool_size = 15\npooler_admin_url = \"postgres://admin:pw@127.0.0.1:6432/pgbouncer\"\n");
        let db = c.database.unwrap();
        assert_eq!((db.pooler, db.pool_size), (PoolerSetting::Session, PoolSize::Fixed(15)));
        assert!(db.pooler_admin_url.is_some());
        let db = ok("[database]\nurl = \"host=h\"\npool_size = \"${P:-auto}\"\npooler_admin_url = \"${NOPE:-}\"\n").database.unwrap();
        assert_eq!((db.pooler, db.pool_size, db.pooler_admin_url), (PoolerSetting::Auto, PoolSize::Auto, None));
        one("[database]\nurl = \"host=h\"\npooler = \"sesion\"\n", 3, 10, "invalid value \"sesion\" for \"pooler\" (did you mean \"session\"?)");
        one("[database]\nurl = \"host=h\"\npool_size = 0\n", 3, 13, "pool_size must be a positive integer");
    }

    /// A budget planned offline: a preset or an integer limit, and no url.
    #[test]
    fn url_is_optional_with_a_preset() {
        let db = ok("[database]\npreset = \"supabase-nano\"\n").database.unwrap();
        assert_eq!(db.url, None);
        let db = ok("[database]\nurl = \"${NO_SUCH_URL:-}\"\nmax_connections = 40\n").database.unwrap();
        assert_eq!(db.url, None);
        let e = one("[database]\nurl = \"\"\n", 2, 7, "\"url\" is empty");
        assert!(e.hint.unwrap().contains("preset"));
        one("[database]\npreset = \"supabase-nano\"\n[budget]\nscope = \"fleet\"\n", 1, 2, "scope = \"fleet\" needs a [database] url");
    }

    #[test]
    fn a_url_the_drivers_would_read_differently_is_an_error_without_the_password() {
        let e = one("[database]\nurl = \"postgres://app:hunter@2@db/app\"\n", 2, 7, "invalid \"url\": the password");
        let hint = e.hint.clone().unwrap();
        assert!(hint.contains("%40"), "{hint}");
        assert!(!format!("{e}").contains("hunter"), "{e}");
        one("[database]\nurl = \"postgres://db/app?sslmode=verify\"\n", 2, 7, "invalid \"url\": invalid sslmode");
        one("[database]\nurl = \"host=h\"\npooler_admin_url = \"pgbouncer\"\n", 3, 20, "invalid \"pooler_admin_url\"");
    }

    #[test]
    fn database_needs_a_url() {
        let e = one(
            "[database]\nadhoc_reserve = 1\n",
            1,
            2,
            "missing key \"url\" in [database]",
        );
        assert!(e.hint.unwrap().contains("${DATABASE_URL}"));
    }

    #[test]
    fn errors_never_show_the_database_url() {
        let text = "[database]\nurl = \"postgres://app:hunter2@db/${NOPE}\"\nmax_connections = \"lots\"\n";
        for e in errors(text) {
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        let e = errors("[database]\nurl = \"postgres://app:hunter2@db/${\"\n").remove(0);
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert_eq!((e.line, e.column), (2, 7));
        one("[database]\nurl = \"\"\n", 2, 7, "\"url\" is empty");
    }
}
