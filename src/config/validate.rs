//! From manifest text to a typed [`Config`] (SPEC §2), collecting every error.
//!
//! Owns the defaults, the meaning of each key and every error message. Works in
//! passes: TOML syntax first (nothing else can be trusted without it), then
//! each section and each job on its own via [`raw::select`], so one mistake
//! does not hide the others. A value that fails is replaced by its default and
//! checking goes on; the config is returned only when no error was found.
//! Every error has the file, line and column of the key or value at fault.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::{Spanned, Value};

use super::expand::expand;

mod watchdog;
use super::raw::{self, Doc, Keys, RawBackoff, RawBudget, RawDatabase, RawHttp, RawJob, RawSupervisor, Str, TOP_KEYS};
use super::{
    name_problem, Backoff, BudgetConfig, Config, ConfigError, ConfigErrors, Connections, DatabaseConfig, Enforce,
    HttpConfig, JobConfig, LogFormat, MaxConnections, OnDuplicate, OrphanPolicy, PoolSize, PoolerSetting, Reserve,
    RestartPolicy, Scope, SupervisorConfig, MAX_JOBS, PRESETS,
};

// Defaults. The README documents these; keep the two in step.

// [supervisor]
const DEFAULT_LOCK_DIR: &str = "/run/corral/locks";
const DEFAULT_REAP_INTERVAL: Duration = Duration::from_secs(120);
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Text;
const DEFAULT_ORPHANS: OrphanPolicy = OrphanPolicy::Kill;
// [database]
const DEFAULT_MAX_CONNECTIONS: MaxConnections = MaxConnections::Auto;
const DEFAULT_PROVIDER_RESERVE: Reserve = Reserve::Percent(10.0);
const DEFAULT_ADHOC_RESERVE: u32 = 5;
const DEFAULT_EXTERNAL_RESERVE: u32 = 0;
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(300);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_ENFORCE: Enforce = Enforce::Warn;
const DEFAULT_POOLER: PoolerSetting = PoolerSetting::Auto;
// [budget]
const DEFAULT_SCOPE: Scope = Scope::Local;
const DEFAULT_SERVICE: &str = "corral";
const DEFAULT_IDLE_AFTER: Duration = Duration::from_secs(60);
const DEFAULT_REBALANCE_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_WARN_AT: f64 = 0.8;
const DEFAULT_FLEET_GRACE: Duration = Duration::from_secs(60);
// [jobs.NAME]; stop_timeout defaults to [supervisor] stop_timeout.
const DEFAULT_AUTOSTART: bool = true;
const DEFAULT_RESTART: RestartPolicy = RestartPolicy::OnFailure;
const DEFAULT_SUCCESS_CODES: &[i32] = &[0];
const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
const DEFAULT_HEALTHY_AFTER: Duration = Duration::from_secs(1);
const DEFAULT_START_RETRIES: u32 = 3;
const DEFAULT_STOP_SIGNAL: i32 = libc::SIGTERM;
const DEFAULT_SINGLE_INSTANCE: bool = true;
const DEFAULT_ON_DUPLICATE: OnDuplicate = OnDuplicate::Refuse;
const DEFAULT_PRIORITY: i32 = 0;
const DEFAULT_CONNECTIONS_MIN: u32 = 1;
const DEFAULT_CONNECTIONS_OVERFLOW: u32 = 0;

const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];
const ORPHAN_POLICIES: &[(&str, OrphanPolicy)] = &[("kill", OrphanPolicy::Kill), ("keep", OrphanPolicy::Keep)];
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
const SCOPES: &[(&str, Scope)] = &[("local", Scope::Local), ("fleet", Scope::Fleet)];
const RESTART_POLICIES: &[(&str, RestartPolicy)] = &[
    ("always", RestartPolicy::Always),
    ("on-failure", RestartPolicy::OnFailure),
    ("never", RestartPolicy::Never),
];
const ON_DUPLICATE: &[(&str, OnDuplicate)] = &[
    ("refuse", OnDuplicate::Refuse),
    ("kill", OnDuplicate::Kill),
    ("ignore", OnDuplicate::Ignore),
];
const CONNECTIONS_KEYS: &[&str] = &["min", "max", "overflow"];

// Sane ranges (SPEC §7: a value that passes `check` never panics or spins the daemon). A timer
// period has a floor so it cannot burn a core; every duration has a ceiling far below what
// `Instant` arithmetic can overflow.
const SEC: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const REAP_INTERVAL_RANGE: (Duration, Duration) = (SEC, DAY);
const STOP_TIMEOUT_RANGE: (Duration, Duration) = (Duration::ZERO, HOUR);
const HEALTH_INTERVAL_RANGE: (Duration, Duration) = (SEC, DAY);
const HEALTH_TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(600));
const IDLE_AFTER_RANGE: (Duration, Duration) = (Duration::ZERO, DAY);
const REBALANCE_INTERVAL_RANGE: (Duration, Duration) = (Duration::from_millis(100), HOUR);
const FLEET_GRACE_RANGE: (Duration, Duration) = (Duration::ZERO, DAY);
const HEALTHY_AFTER_RANGE: (Duration, Duration) = (Duration::ZERO, HOUR);
const BACKOFF_INITIAL_RANGE: (Duration, Duration) = (Duration::ZERO, HOUR);
const BACKOFF_MAX_RANGE: (Duration, Duration) = (Duration::ZERO, DAY);
/// PostgreSQL's own ceiling for max_connections: no count of connections is larger.
const MAX_CONNECTION_COUNT: i64 = 262_143;
const START_RETRIES_MAX: i64 = 10_000;
const PRIORITY_RANGE: (i64, i64) = (-1_000_000, 1_000_000);
/// PostgreSQL keeps this many bytes of an application_name (`corral/<service>/<job>`).
const MAX_APPLICATION_NAME: usize = crate::db::MAX_APPLICATION_NAME_BYTES;
/// Errors reported from one file; past this, a count of the rest (a status line stays small).
const MAX_ERRORS: usize = 50;
/// Total bytes all `${VAR}` expansions of one file may produce.
const MAX_EXPANDED_TOTAL: usize = 32 << 20;
/// User text quoted in a message is cut to this many characters.
const QUOTE_MAX: usize = 64;

/// Signals a config may name, with or without "SIG", in any case.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("SYS", libc::SIGSYS),
];

type Span = Range<usize>;

/// Parse, expand and validate `text`, read from `path`.
pub(super) fn build(path: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let mut cx = Cx::new(path, text, env);
    if text.len() > super::MAX_MANIFEST_BYTES {
        // Checked before parsing: the parse itself is what a huge file would cost.
        cx.error(None, super::too_large_message(text.len() as u64), Some(super::TOO_LARGE_HINT.into()));
        return Err(cx.into_errors());
    }
    let config = cx.config();
    match config {
        Some(config) if cx.errors.is_empty() => Ok(config),
        _ => Err(cx.into_errors()),
    }
}

/// The state of one build: the input and the errors found so far.
struct Cx<'a> {
    file: &'a Path,
    text: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Relative paths in the manifest are relative to its directory.
    base_dir: PathBuf,
    /// The parsed text (None until parsed, or when it is not TOML).
    doc: Option<Doc>,
    /// Each error with the byte offset it points at; line:col are computed once, at the end,
    /// in one pass over the text (per error it would be quadratic in a big file).
    errors: Vec<(Option<usize>, ConfigError)>,
    /// Bytes produced by `${VAR}` expansion so far.
    expanded: usize,
}

impl<'a> Cx<'a> {
    fn new(file: &'a Path, text: &'a str, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        let dir = match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        // Absolute, so the daemon's later chdir cannot change what a path means.
        let base_dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        Cx {
            file,
            text,
            env,
            base_dir,
            doc: None,
            errors: Vec::new(),
            expanded: 0,
        }
    }

    fn into_errors(self) -> ConfigErrors {
        // In file order, which is how a reader goes through them.
        let mut errors = locate(self.text, self.errors);
        errors.dedup();
        if errors.len() > MAX_ERRORS {
            let more = errors.len() - MAX_ERRORS;
            errors.truncate(MAX_ERRORS);
            errors.push(ConfigError {
                file: self.file.to_path_buf(),
                line: 0,
                column: 0,
                message: format!("... and {more} more error(s) not shown"),
                hint: Some("fix the errors above first".into()),
            });
        }
        ConfigErrors(errors)
    }

    // ---- the manifest, section by section ----

    fn config(&mut self) -> Option<Config> {
        match Doc::parse(self.text) {
            Ok(doc) if doc.is_empty() => {
                // An empty file is never a config (SPEC §8): at reload it is most likely a
                // save caught between truncate and write, and applying it would stop every job.
                let hint = "a manifest needs at least one table, like [jobs.NAME] with its command; an empty file is refused so that a save caught half-way never stops your jobs";
                self.error(None, "the manifest is empty", Some(hint.into()));
                return None;
            }
            Ok(doc) => self.doc = Some(doc),
            Err(e) => {
                self.toml_error(e.message(), e.span(), None);
                return None;
            }
        }
        let top: Keys = self.select(&[], None).ok().flatten().unwrap_or_default();
        for key in top.keys() {
            if !TOP_KEYS.contains(&key.get_ref().as_str()) {
                self.unknown_key(
                    key,
                    TOP_KEYS,
                    "the top level holds [supervisor], [database], [budget], [http] and [jobs.NAME] tables",
                );
            }
        }
        let anchor = |name: &str| top.keys().find(|k| k.get_ref() == name).map(|k| k.span());

        let raw_supervisor = self.select::<RawSupervisor>(&["supervisor"], anchor("supervisor"));
        let supervisor = self.supervisor(&raw_supervisor.ok().flatten().unwrap_or_default());

        let (database, has_database) = match self.select::<RawDatabase>(&["database"], anchor("database")) {
            Ok(Some(raw)) => (Some(self.database(&raw, anchor("database"))), true),
            Ok(None) => (None, false),
            // Present but broken: already reported, and counts as present so
            // that jobs' `connections` do not get a second, misleading error.
            Err(()) => (None, true),
        };
        let raw_budget = self.select::<RawBudget>(&["budget"], anchor("budget"));
        let budget = self.budget(&raw_budget.ok().flatten().unwrap_or_default(), has_database);
        if let (Scope::Fleet, Some(db)) = (budget.scope, &database) {
            if db.url.is_none() {
                let hint = "a fleet budget is shared through the database: set [database] url";
                self.error(anchor("database"), "scope = \"fleet\" needs a [database] url", Some(hint.into()));
            }
        }
        let http = match self.select::<RawHttp>(&["http"], anchor("http")) {
            Ok(Some(raw)) => self.http(&raw, anchor("http")),
            _ => None,
        };

        let mut jobs = BTreeMap::new();
        let names: Keys = self
            .select(&["jobs"], anchor("jobs"))
            .ok()
            .flatten()
            .unwrap_or_default();
        if names.len() > MAX_JOBS {
            let hint = "split the jobs over several corrals (each with its own manifest and socket)";
            self.error(anchor("jobs"), format!("too many jobs: {}, at most {MAX_JOBS}", names.len()), Some(hint.into()));
            return None;
        }
        // Each job on its own, from the one parse: every broken job gets its own error.
        let mut watch_spans = BTreeMap::new();
        for name in names.keys() {
            let raw = self.select::<RawJob>(&["jobs", name.get_ref()], Some(name.span())).ok().flatten();
            if let Some(raw) = raw {
                let (job, instances) = self.job(name, &raw, &supervisor, has_database, &budget.service);
                let spans = (raw.depends_on.as_ref().map(|v| v.span()), raw.instances.as_ref().map(|v| v.span()), instances);
                watch_spans.insert(job.name.clone(), spans);
                jobs.insert(job.name.clone(), job);
            }
        }
        let jobs = self.finish_watch(jobs, &watch_spans);
        Some(Config {
            path: self.file.to_path_buf(),
            supervisor,
            database,
            budget,
            http,
            jobs,
        })
    }

    fn supervisor(&mut self, raw: &RawSupervisor) -> SupervisorConfig {
        SupervisorConfig {
            socket: raw.socket.as_ref().and_then(|v| self.path("socket", v)),
            socket_group: raw.socket_group.as_ref().and_then(|v| self.nonempty("socket_group", v)),
            lock_dir: raw
                .lock_dir
                .as_ref()
                .and_then(|v| self.path("lock_dir", v))
                .unwrap_or_else(|| DEFAULT_LOCK_DIR.into()),
            reap_interval: self.duration("reap_interval", raw.reap_interval.as_ref(), DEFAULT_REAP_INTERVAL, REAP_INTERVAL_RANGE),
            stop_timeout: self.duration("stop_timeout", raw.stop_timeout.as_ref(), DEFAULT_STOP_TIMEOUT, STOP_TIMEOUT_RANGE),
            log_format: self.choice("log_format", raw.log_format.as_ref(), LOG_FORMATS, DEFAULT_LOG_FORMAT),
            orphans: self.choice("orphans", raw.orphans.as_ref(), ORPHAN_POLICIES, DEFAULT_ORPHANS),
        }
    }

    fn database(&mut self, raw: &RawDatabase, anchor: Option<Span>) -> DatabaseConfig {
        let max_connections =
            raw.max_connections.as_ref().and_then(|v| self.max_connections(v)).unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let preset = raw.preset.as_ref().and_then(|v| self.preset(v));
        // An empty url (`url = "${DATABASE_URL:-}"` without the variable) is no url: with a
        // preset or an integer limit the budget is planned offline.
        let errors_before = self.errors.len();
        let url = raw.url.as_ref().and_then(|v| self.connection_string("url", v));
        let url_rejected = self.errors.len() > errors_before;
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
    fn connection_string(&mut self, key: &str, v: &Str) -> Option<String> {
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
        match crate::db::conninfo::ConnInfo::parse(&s) {
            Ok(_) => Some(s),
            Err(e) => {
                self.error(Some(v.span()), format!("invalid \"{key}\": {}", e.message), e.hint);
                None
            }
        }
    }

    fn pool_size(&mut self, v: &Spanned<Value>) -> Option<PoolSize> {
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

    fn budget(&mut self, raw: &RawBudget, has_database: bool) -> BudgetConfig {
        let scope = self.choice("scope", raw.scope.as_ref(), SCOPES, DEFAULT_SCOPE);
        if let (Scope::Fleet, false, Some(v)) = (scope, has_database, &raw.scope) {
            let hint = "a fleet budget is shared through the database: add a [database] section with its url, or use scope = \"local\"";
            self.error(
                Some(v.span()),
                "scope = \"fleet\" needs a [database] section",
                Some(hint.into()),
            );
        }
        BudgetConfig {
            scope,
            service: raw
                .service
                .as_ref()
                .and_then(|v| self.name("service", v))
                .unwrap_or_else(|| DEFAULT_SERVICE.into()),
            idle_after: self.duration("idle_after", raw.idle_after.as_ref(), DEFAULT_IDLE_AFTER, IDLE_AFTER_RANGE),
            rebalance_interval: self.duration(
                "rebalance_interval",
                raw.rebalance_interval.as_ref(),
                DEFAULT_REBALANCE_INTERVAL,
                REBALANCE_INTERVAL_RANGE,
            ),
            warn_at: raw
                .warn_at
                .as_ref()
                .and_then(|v| self.warn_at(v))
                .unwrap_or(DEFAULT_WARN_AT),
            fleet_grace: self.duration("fleet_grace", raw.fleet_grace.as_ref(), DEFAULT_FLEET_GRACE, FLEET_GRACE_RANGE),
        }
    }

    fn http(&mut self, raw: &RawHttp, anchor: Option<Span>) -> Option<HttpConfig> {
        let Some(v) = &raw.listen else {
            let hint = "add listen = \"127.0.0.1:9464\", or remove [http] to turn the HTTP endpoint off";
            self.error(anchor, "missing key \"listen\" in [http]", Some(hint.into()));
            return None;
        };
        let listen = self.nonempty("listen", v)?;
        if !is_host_port(&listen) {
            let hint = "write host:port, like \"127.0.0.1:9464\" or \"[::1]:9464\"";
            self.error(
                Some(v.span()),
                format!("invalid listen address \"{}\"", quote(&listen)),
                Some(hint.into()),
            );
            return None;
        }
        let token = match &raw.token {
            Some(v) => Some(self.nonempty("token", v)?),
            None => None,
        };
        Some(HttpConfig { listen, token })
    }

    fn job(&mut self, name: &Str, raw: &RawJob, supervisor: &SupervisorConfig, has_database: bool, service: &str) -> (JobConfig, Option<u32>) {
        let job_name = name.get_ref();
        if let Some(problem) = name_problem(job_name) {
            let hint = format!("{NAME_RULE} (the name becomes a lock file name)");
            self.error(Some(name.span()), format!("invalid job name \"{}\": {problem}", quote(job_name)), Some(hint));
        } else if job_name == "all" {
            let hint = "`corral start all` means every job: rename this one";
            self.error(Some(name.span()), "\"all\" cannot be a job name", Some(hint.into()));
        } else if raw.connections.is_some() {
            // Its connections are told apart by application_name, which PostgreSQL truncates.
            let app = crate::budget::env::application_name(service, job_name);
            if app.len() > MAX_APPLICATION_NAME {
                let room = MAX_APPLICATION_NAME - (app.len() - job_name.len());
                let message = format!(
                    "job name \"{job_name}\" is too long for a job with connections: its application_name \"{app}\" has {} bytes, PostgreSQL keeps {MAX_APPLICATION_NAME}",
                    app.len()
                );
                let hint = format!("shorten the job name to at most {room} bytes, or the [budget] service");
                self.error(Some(name.span()), message, Some(hint));
            }
        }
        let command = match &raw.command {
            Some(v) => self.command(v),
            None => {
                let hint = "add command = [\"program\", \"arg\", ...]";
                self.error(
                    Some(name.span()),
                    format!("job \"{}\" has no \"command\"", quote(job_name)),
                    Some(hint.into()),
                );
                Vec::new()
            }
        };
        // env_file first: `env` overrides it.
        let mut env = self.env_file(raw);
        for (key, value) in &raw.env {
            let k = key.get_ref();
            if k.is_empty() || k.contains(['=', '\0']) {
                let hint = "environment variable names must be non-empty and contain no \"=\"";
                self.error(
                    Some(key.span()),
                    format!("invalid environment variable name \"{}\"", quote(k)),
                    Some(hint.into()),
                );
            } else if let Some(v) = self.string(k, value) {
                env.insert(k.clone(), v);
            }
        }
        let backoff = self.backoff(raw.backoff.as_ref());
        let connections = raw.connections.as_ref().and_then(|v| {
            if !has_database {
                let hint = "add a [database] section with its url, or remove \"connections\" from this job";
                let message = format!("job \"{}\" sets \"connections\" but there is no [database] section", quote(job_name));
                self.error(Some(v.span()), message, Some(hint.into()));
            }
            self.connections(v)
        });
        let (watch, instances) = self.watch(name, raw);
        let job = JobConfig {
            name: job_name.clone(),
            command,
            cwd: raw.cwd.as_ref().and_then(|v| self.path("cwd", v)),
            env,
            user: raw.user.as_ref().and_then(|v| self.nonempty("user", v)),
            autostart: raw.autostart.unwrap_or(DEFAULT_AUTOSTART),
            restart: self.choice("restart", raw.restart.as_ref(), RESTART_POLICIES, DEFAULT_RESTART),
            success_codes: match &raw.success_codes {
                Some(codes) => codes
                    .get_ref()
                    .iter()
                    .filter_map(|c| self.int("success_codes", c, 0, 255))
                    .map(|c| c as i32)
                    .collect(),
                None => DEFAULT_SUCCESS_CODES.to_vec(),
            },
            backoff,
            healthy_after: self.duration("healthy_after", raw.healthy_after.as_ref(), DEFAULT_HEALTHY_AFTER, HEALTHY_AFTER_RANGE),
            start_retries: self.count("start_retries", raw.start_retries.as_ref(), DEFAULT_START_RETRIES, START_RETRIES_MAX),
            stop_signal: raw
                .stop_signal
                .as_ref()
                .and_then(|v| self.signal("stop_signal", v))
                .unwrap_or(DEFAULT_STOP_SIGNAL),
            stop_timeout: self.duration("stop_timeout", raw.stop_timeout.as_ref(), supervisor.stop_timeout, STOP_TIMEOUT_RANGE),
            single_instance: raw.single_instance.unwrap_or(DEFAULT_SINGLE_INSTANCE),
            on_duplicate: self.choice(
                "on_duplicate",
                raw.on_duplicate.as_ref(),
                ON_DUPLICATE,
                DEFAULT_ON_DUPLICATE,
            ),
            priority: raw
                .priority
                .as_ref()
                .and_then(|v| self.int("priority", v, PRIORITY_RANGE.0, PRIORITY_RANGE.1))
                .map_or(DEFAULT_PRIORITY, |p| p as i32),
            connections,
            quota_signal: raw.quota_signal.as_ref().and_then(|v| self.signal("quota_signal", v)),
            watch,
        };
        (job, instances)
    }

    // ---- values with more than one form ----

    fn command(&mut self, v: &Spanned<Value>) -> Vec<String> {
        let example = "command = [\"python\", \"app.py\", \"--all\"]";
        match v.get_ref() {
            Value::String(s) => {
                // Show their own command in array form: the fix is then a copy-paste.
                let words: Vec<String> = s.split_whitespace().map(|w| format!("{w:?}")).collect();
                let hint = if words.is_empty() {
                    example.to_string()
                } else {
                    format!("command = [{}]", words.join(", "))
                };
                let message = "\"command\" must be an array of strings, not a string (corral runs no shell)";
                self.error(Some(v.span()), message, Some(format!("write it as {hint}")));
                Vec::new()
            }
            Value::Array(items) if items.is_empty() => {
                self.error(
                    Some(v.span()),
                    "\"command\" is empty",
                    Some(format!("name the program to run: {example}")),
                );
                Vec::new()
            }
            Value::Array(items) => {
                let mut argv = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => match self.expand(s) {
                            Ok(arg) if i == 0 && arg.trim().is_empty() => {
                                let hint = format!("the first element is the program to run: {example}");
                                self.error(Some(v.span()), "the program in \"command\" is empty", Some(hint));
                            }
                            Ok(arg) => argv.push(arg),
                            Err(e) => {
                                let (message, hint) = e.describe(true);
                                self.error(Some(v.span()), format!("{message} in \"command\""), Some(hint));
                            }
                        },
                        other => {
                            let message = format!(
                                "\"command\" must hold only strings, found {} at index {i}",
                                other.type_str()
                            );
                            self.error(
                                Some(v.span()),
                                message,
                                Some(format!("quote every argument: {example}")),
                            );
                        }
                    }
                }
                argv
            }
            other => {
                let message = format!("\"command\" must be an array of strings, found {}", other.type_str());
                self.error(Some(v.span()), message, Some(format!("write it as {example}")));
                Vec::new()
            }
        }
    }

    fn backoff(&mut self, raw: Option<&RawBackoff>) -> Backoff {
        let Some(raw) = raw else {
            return Backoff {
                initial: DEFAULT_BACKOFF_INITIAL,
                max: DEFAULT_BACKOFF_MAX,
            };
        };
        let initial = self.duration("initial", raw.initial.as_ref(), DEFAULT_BACKOFF_INITIAL, BACKOFF_INITIAL_RANGE);
        let max = self.duration("max", raw.max.as_ref(), DEFAULT_BACKOFF_MAX, BACKOFF_MAX_RANGE);
        if initial > max {
            // Point at whichever of the two was written (the other is a default).
            let span = raw.max.as_ref().or(raw.initial.as_ref()).map(|v| v.span());
            let message = format!(
                "backoff initial ({}) is longer than max ({})",
                humantime::format_duration(initial),
                humantime::format_duration(max)
            );
            self.error(span, message, Some("make initial at most max".into()));
        }
        Backoff { initial, max }
    }

    fn connections(&mut self, v: &Spanned<Value>) -> Option<Connections> {
        let example = "connections = { min = 1, max = 4 } or connections = 4";
        let span = v.span();
        let (min, max, overflow) = match v.get_ref() {
            Value::Integer(n) => (*n, *n, 0),
            Value::Table(table) => {
                let mut ints = BTreeMap::new();
                for (key, value) in table {
                    if !CONNECTIONS_KEYS.contains(&key.as_str()) {
                        let (message, hint) =
                            unknown_key_message(key, CONNECTIONS_KEYS, "connections holds min, max and overflow");
                        self.error(Some(span.clone()), format!("{message} in \"connections\""), Some(hint));
                    } else if let Value::Integer(n) = value {
                        ints.insert(key.as_str(), *n);
                    } else {
                        let message = format!("connections \"{key}\" must be an integer, found {}", value.type_str());
                        self.error(Some(span.clone()), message, Some(example.into()));
                        return None;
                    }
                }
                let Some(&max) = ints.get("max") else {
                    let hint = format!("give the most connections this job may use: {example}");
                    self.error(Some(span), "\"connections\" needs \"max\"", Some(hint));
                    return None;
                };
                let min = ints.get("min").copied().unwrap_or(DEFAULT_CONNECTIONS_MIN.into());
                (
                    min,
                    max,
                    ints.get("overflow")
                        .copied()
                        .unwrap_or(DEFAULT_CONNECTIONS_OVERFLOW.into()),
                )
            }
            other => {
                let message = format!(
                    "\"connections\" must be an integer or a table, found {}",
                    other.type_str()
                );
                self.error(Some(span), message, Some(format!("write {example}")));
                return None;
            }
        };
        let problem = if min < 1 {
            Some((
                format!("connections min must be at least 1, found {min}"),
                "omit \"connections\" for a job that uses no database",
            ))
        } else if min > max {
            Some((
                format!("connections min ({min}) is greater than max ({max})"),
                "make min at most max",
            ))
        } else if overflow < 0 || overflow > max {
            Some((
                format!("connections overflow ({overflow}) must be between 0 and max ({max})"),
                "overflow is the part of the quota given as DB_MAX_OVERFLOW, so it cannot exceed max",
            ))
        } else if max > MAX_CONNECTION_COUNT {
            Some((
                format!("connections max ({max}) must be at most {MAX_CONNECTION_COUNT}"),
                "use a realistic connection count (PostgreSQL allows at most 262143 connections)",
            ))
        } else {
            None
        };
        if let Some((message, hint)) = problem {
            self.error(Some(span), message, Some(hint.into()));
            return None;
        }
        // All three are within 0..=max <= u32::MAX, checked above.
        Some(Connections {
            min: min as u32,
            max: max as u32,
            overflow: overflow as u32,
        })
    }

    fn max_connections(&mut self, v: &Spanned<Value>) -> Option<MaxConnections> {
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

    fn reserve(&mut self, v: &Spanned<Value>) -> Option<Reserve> {
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

    fn warn_at(&mut self, v: &Spanned<Value>) -> Option<f64> {
        let share = match v.get_ref() {
            Value::Float(f) => *f,
            Value::Integer(n) => *n as f64,
            other => {
                let message = format!("\"warn_at\" must be a number, found {}", other.type_str());
                self.error(
                    Some(v.span()),
                    message,
                    Some("write a share of the usable budget, like warn_at = 0.8".into()),
                );
                return None;
            }
        };
        if share > 0.0 && share <= 1.0 {
            Some(share)
        } else {
            let hint = "warn_at is a share of the usable budget: 0.8 warns at 80%";
            self.error(
                Some(v.span()),
                format!("warn_at must be above 0 and at most 1, found {share}"),
                Some(hint.into()),
            );
            None
        }
    }

    fn preset(&mut self, v: &Str) -> Option<String> {
        let name = self.string("preset", v)?;
        if super::preset_limit(&name).is_some() {
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

    // ---- scalar helpers: each reports its own error and returns None/default ----

    /// `${VAR}` expansion, with the file's total output bounded.
    fn expand(&mut self, s: &str) -> Result<String, super::expand::ExpandError> {
        if self.expanded > MAX_EXPANDED_TOTAL {
            return Err(super::expand::ExpandError::TooLong);
        }
        let out = expand(s, self.env)?;
        self.expanded += out.len();
        if self.expanded > MAX_EXPANDED_TOTAL {
            return Err(super::expand::ExpandError::TooLong);
        }
        Ok(out)
    }

    /// The expanded string.
    fn string(&mut self, key: &str, v: &Str) -> Option<String> {
        match self.expand(v.get_ref()) {
            Ok(s) => Some(s),
            Err(e) => {
                let (message, hint) = e.describe(true);
                self.error(Some(v.span()), format!("{message} in \"{key}\""), Some(hint));
                None
            }
        }
    }

    fn nonempty(&mut self, key: &str, v: &Str) -> Option<String> {
        let s = self.string(key, v)?;
        if s.trim().is_empty() {
            self.error(
                Some(v.span()),
                format!("\"{key}\" is empty"),
                Some(format!("give a value or remove \"{key}\"")),
            );
            return None;
        }
        Some(s)
    }

    /// A name used in lock files, environment values and application_name.
    fn name(&mut self, key: &str, v: &Str) -> Option<String> {
        let s = self.string(key, v)?;
        if let Some(problem) = name_problem(&s) {
            self.error(Some(v.span()), format!("invalid {key} \"{}\": {problem}", quote(&s)), Some(NAME_RULE.into()));
            return None;
        }
        let own = crate::budget::env::application_name(&s, crate::db::OWN_JOB);
        if key == "service" && own.len() > MAX_APPLICATION_NAME {
            let room = MAX_APPLICATION_NAME - (own.len() - s.len());
            let message = format!("service \"{s}\" is too long: corral's own application_name \"{own}\" would exceed the {MAX_APPLICATION_NAME} bytes PostgreSQL keeps");
            self.error(Some(v.span()), message, Some(format!("use a service name of at most {room} bytes")));
            return None;
        }
        Some(s)
    }

    /// A path, relative ones taken from the manifest's directory.
    fn path(&mut self, key: &str, v: &Str) -> Option<PathBuf> {
        let s = self.nonempty(key, v)?;
        // Without "." parts, so `cwd = "."` reads as the directory itself.
        let path = self.base_dir.join(s);
        Some(
            path.components()
                .filter(|c| *c != std::path::Component::CurDir)
                .collect(),
        )
    }

    /// A duration within `range` (inclusive); the default when absent or wrong.
    fn duration(&mut self, key: &str, v: Option<&Str>, default: Duration, range: (Duration, Duration)) -> Duration {
        let Some(v) = v else { return default };
        let Some(s) = self.string(key, v) else { return default };
        let d = match humantime::parse_duration(s.trim()) {
            Ok(d) => d,
            Err(e) => {
                let hint = "write a number with a unit, like \"500ms\", \"30s\" or \"2m\"";
                self.error(
                    Some(v.span()),
                    format!("invalid duration \"{}\" for \"{key}\": {e}", quote(&s)),
                    Some(hint.into()),
                );
                return default;
            }
        };
        let (min, max) = range;
        if d < min || d > max {
            let show = |d: Duration| if d.is_zero() { "0s".to_string() } else { humantime::format_duration(d).to_string() };
            let why = if d < min && min > Duration::ZERO && min <= SEC { " (shorter would keep a core busy)" } else { "" };
            self.error(
                Some(v.span()),
                format!("\"{key}\" must be between {} and {}{why}, found \"{}\"", show(min), show(max), quote(s.trim())),
                Some(format!("use a duration from {} to {}", show(min), show(max))),
            );
            return default;
        }
        d
    }

    fn choice<T: Copy>(&mut self, key: &str, v: Option<&Str>, options: &[(&str, T)], default: T) -> T {
        let Some(v) = v else { return default };
        let Some(s) = self.string(key, v) else { return default };
        if let Some((_, value)) = options.iter().find(|(name, _)| *name == s) {
            return *value;
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let message = match did_you_mean(&s, &names) {
            Some(m) => format!("invalid value \"{}\" for \"{key}\" (did you mean \"{m}\"?)", quote(&s)),
            None => format!("invalid value \"{}\" for \"{key}\"", quote(&s)),
        };
        let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        self.error(
            Some(v.span()),
            message,
            Some(format!("use one of {}", quoted.join(", "))),
        );
        default
    }

    fn signal(&mut self, key: &str, v: &Str) -> Option<i32> {
        let s = self.string(key, v)?;
        let upper = s.trim().to_ascii_uppercase();
        let short = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some((_, number)) = SIGNALS.iter().find(|(name, _)| *name == short) {
            return Some(*number);
        }
        let names: Vec<String> = SIGNALS.iter().map(|(n, _)| format!("SIG{n}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let message = match did_you_mean(&format!("SIG{short}"), &names) {
            Some(m) => format!("unknown signal \"{}\" for \"{key}\" (did you mean \"{m}\"?)", quote(&s)),
            None => format!("unknown signal \"{}\" for \"{key}\"", quote(&s)),
        };
        let hint = "use a signal name like \"SIGTERM\", \"SIGINT\", \"SIGHUP\", \"SIGQUIT\" or \"SIGUSR1\"";
        self.error(Some(v.span()), message, Some(hint.into()));
        None
    }

    fn int(&mut self, key: &str, v: &Spanned<i64>, min: i64, max: i64) -> Option<i64> {
        let n = *v.get_ref();
        if (min..=max).contains(&n) {
            return Some(n);
        }
        let message = if n < min {
            format!("\"{key}\" must be at least {min}, found {n}")
        } else {
            format!("\"{key}\" must be at most {max}, found {n}")
        };
        self.error(Some(v.span()), message, None);
        None
    }

    /// A count from 0 to `max` (at most u32::MAX).
    fn count(&mut self, key: &str, v: Option<&Spanned<i64>>, default: u32, max: i64) -> u32 {
        v.and_then(|v| self.int(key, v, 0, max.min(u32::MAX.into())))
            .map_or(default, |n| n as u32)
    }

    // ---- errors ----

    fn error(&mut self, span: Option<Span>, message: impl Into<String>, hint: Option<String>) {
        let error = ConfigError { file: self.file.to_path_buf(), line: 0, column: 0, message: message.into(), hint };
        self.errors.push((span.map(|s| s.start), error));
    }

    /// Deserialize one part of the document. `Err(())` when it is broken (the
    /// error is recorded, at `anchor` when toml gives no position).
    fn select<T: DeserializeOwned>(&mut self, path: &[&str], anchor: Option<Span>) -> Result<Option<T>, ()> {
        let Some(doc) = &self.doc else { return Ok(None) };
        raw::select(doc, path).map_err(|e| self.toml_error(e.message(), e.span(), anchor))
    }

    fn unknown_key(&mut self, key: &Str, known: &[&str], context: &str) {
        let (message, hint) = unknown_key_message(key.get_ref(), known, context);
        self.error(Some(key.span()), message, Some(hint));
    }

    /// Turn toml's and serde's messages into ours.
    fn toml_error(&mut self, text: &str, span: Option<Span>, anchor: Option<Span>) {
        let span = span.or(anchor);
        let quoted: Vec<&str> = text.split('`').skip(1).step_by(2).collect();
        let (message, hint) = if text.starts_with("unknown field `") {
            // "unknown field `x`, expected one of `a`, `b`": the rest are the valid keys.
            let known = quoted.get(1..).unwrap_or_default();
            unknown_key_message(quoted.first().copied().unwrap_or_default(), known, "remove it")
        } else if text.starts_with("missing field `") {
            let key = quoted.first().copied().unwrap_or_default();
            (format!("missing key \"{key}\""), format!("add {key} = ..."))
        } else if let Some(rest) = text.strip_prefix("invalid type: ") {
            self.type_message(rest, span.as_ref())
        } else if let Some(line) = text.lines().find(|l| l.starts_with("duplicate key `")) {
            let key = quoted.first().copied().unwrap_or_default();
            if line.ends_with("in table `jobs`") {
                let hint = format!("[jobs.{key}] appears twice: merge the two tables or rename one");
                (format!("duplicate job \"{key}\""), hint)
            } else {
                (
                    format!("duplicate key \"{key}\""),
                    "a key may be set only once in a table: remove one of them".into(),
                )
            }
        } else {
            let message = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(": ");
            (
                format!("invalid TOML: {message}"),
                "fix the TOML syntax at this position".into(),
            )
        };
        self.error(span, message, Some(hint));
    }

    /// From serde's "FOUND, expected WANTED" to a sentence naming the key.
    fn type_message(&self, rest: &str, span: Option<&Span>) -> (String, String) {
        let (found, wanted) = rest.split_once(", expected ").unwrap_or((rest, "another type"));
        if wanted == "a borrowed string" {
            // toml cannot give a position to a table made of dotted keys, so
            // `Spanned` values fail this way when the user wrote `key.sub = ...`.
            let message = "expected a value here, found a table written with dotted keys".to_string();
            return (
                message,
                "write the value inline, e.g. key = \"value\" or key = { sub = 1 }".into(),
            );
        }
        let wanted = match wanted {
            "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" => "an integer",
            "a sequence" => "an array",
            "a boolean" => "true or false",
            w if w.starts_with("struct ") || w == "a map" => "a table",
            w => w,
        };
        let found = match found.replace('`', "") {
            f if f == "map" => "a table".to_string(),
            f if f == "sequence" => "an array".to_string(),
            f => f,
        };
        let message = match span.and_then(|s| key_before(self.text, s.start)) {
            Some(key) => format!("\"{key}\" must be {wanted}, found {found}"),
            None => format!("wrong type: expected {wanted}, found {found}"),
        };
        (message, format!("change the value to {wanted}"))
    }
}

fn unknown_key_message(key: &str, known: &[&str], otherwise: &str) -> (String, String) {
    let key = &quote(key);
    match did_you_mean(key, known) {
        Some(s) => (
            format!("unknown key \"{key}\" (did you mean \"{s}\"?)"),
            format!("rename it to \"{s}\""),
        ),
        None if known.is_empty() => (format!("unknown key \"{key}\""), otherwise.to_string()),
        None => (
            format!("unknown key \"{key}\""),
            format!("{otherwise}; valid keys here: {}", known.join(", ")),
        ),
    }
}

/// The closest candidate, if close enough to be a typo.
fn did_you_mean<'c>(input: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let len = input.chars().count();
    // Far longer than every candidate: no typo, and the distance would cost len x candidates.
    if len > 3 * candidates.iter().map(|c| c.len()).max().unwrap_or(0) {
        return None;
    }
    let limit = (len / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(&input.to_lowercase(), &c.to_lowercase()), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting a swap of two neighbours as one edit ("restrat").
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// Give each error its 1-based line and column (in characters), in one pass over the text,
/// and return them in file order (errors without a position first).
fn locate(text: &str, mut errors: Vec<(Option<usize>, ConfigError)>) -> Vec<ConfigError> {
    errors.sort_by_key(|(offset, _)| *offset);
    let (mut at, mut line, mut column) = (0usize, 1usize, 1usize);
    for (offset, e) in errors.iter_mut() {
        let Some(mut offset) = *offset else { continue };
        offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        for c in text[at..offset].chars() {
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        at = offset;
        (e.line, e.column) = (line, column);
    }
    errors.into_iter().map(|(_, e)| e).collect()
}

/// User text in a message, cut to [`QUOTE_MAX`] characters (a 65,536-character name must not
/// make a 65,536-character error line, nor 2,000 of them).
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_MAX) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_string(),
    }
}

/// The key of `key = value` whose value starts at `offset`, if it reads so.
fn key_before(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?.trim_end().strip_suffix('=')?.trim_end();
    let start = before
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .last()
        .map(|(i, _)| i)?;
    Some(before[start..].to_string())
}

/// What job, service and reservation names may be, for hints.
const NAME_RULE: &str = "a name is 1 to 64 letters, digits, \"_\", \".\" and \"-\", starting with a letter, digit or \"_\"";

fn is_host_port(s: &str) -> bool {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    matches!(s.rsplit_once(':'), Some((host, port)) if !host.is_empty() && !host.contains(':') && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/corral/supervisor.toml";

    fn env(name: &str) -> Option<String> {
        match name {
            "DATABASE_URL" => Some("postgres://app:s3cret@db:5432/app".into()),
            "LEVEL" => Some("debug".into()),
            _ => None,
        }
    }

    fn ok(text: &str) -> Config {
        match build(Path::new(FILE), text, &env) {
            Ok(config) => config,
            Err(e) => panic!("expected a valid config, got:\n{e}"),
        }
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        match build(Path::new(FILE), text, &env) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(ConfigErrors(errors)) => errors,
        }
    }

    /// The single error, checked to be at `line:column` and to start with `message`.
    #[track_caller]
    fn one(text: &str, line: usize, column: usize, message: &str) -> ConfigError {
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        let e = errors.into_iter().next().unwrap();
        assert_eq!((e.line, e.column), (line, column), "{e}");
        assert!(
            e.message.starts_with(message),
            "message {:?} does not start with {message:?}",
            e.message
        );
        assert_eq!(e.file, Path::new(FILE));
        e
    }

    const JOB: &str = "[jobs.web]\ncommand = [\"web\"]\n";
    const DB: &str = "[database]\nurl = \"${DATABASE_URL}\"\n";

    // ---- valid manifests ----

    #[test]
    fn a_bare_manifest_gets_every_default() {
        let c = ok("[supervisor]\n");
        assert_eq!(c.path, Path::new(FILE));
        assert_eq!(
            c.supervisor,
            SupervisorConfig {
                socket: None,
                socket_group: None,
                lock_dir: "/run/corral/locks".into(),
                reap_interval: Duration::from_secs(120),
                stop_timeout: Duration::from_secs(10),
                log_format: LogFormat::Text,
                orphans: OrphanPolicy::Kill,
            }
        );
        assert_eq!(c.database, None);
        assert_eq!(
            c.budget,
            BudgetConfig {
                scope: Scope::Local,
                service: "corral".into(),
                idle_after: Duration::from_secs(60),
                rebalance_interval: Duration::from_secs(30),
                warn_at: 0.8,
                fleet_grace: Duration::from_secs(60),
            }
        );
        assert_eq!(c.http, None);
        assert!(c.jobs.is_empty());
    }

    #[test]
    fn job_and_database_defaults() {
        let c = ok(&format!("{DB}{JOB}"));
        let db = c.database.unwrap();
        assert_eq!(db.url.as_deref(), Some("postgres://app:s3cret@db:5432/app"));
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
                stop_signal: libc::SIGTERM,
                stop_timeout: Duration::from_secs(10),
                single_instance: true,
                on_duplicate: OnDuplicate::Refuse,
                priority: 0,
                connections: None,
                quota_signal: None,
                watch: Default::default(),
            }
        );
    }

    #[test]
    fn the_spec_example_parses() {
        let text = r#"
[supervisor]
socket         = "/run/corral/corral.sock"
socket_group   = "ops"
lock_dir       = "/run/corral/locks"
reap_interval  = "2m"
stop_timeout   = "10s"
log_format     = "json"
orphans        = "keep"

[database]
url            = "${DATABASE_URL}"
max_connections = 60
preset         = "supabase-micro"
provider_reserve = 6
adhoc_reserve  = 5
external_reserve = 2
health_interval = "5m"
health_timeout  = "10s"
enforce        = "terminate"

[budget]
scope          = "fleet"
service        = "scraper"
idle_after     = "60s"
rebalance_interval = "30s"
warn_at        = 1
fleet_grace    = "0s"

[http]
listen = "127.0.0.1:9464"

[jobs.layer1_5]
command        = ["python", "scripts/layer1_5_production_scraper.py", "--all"]
cwd            = "/app"
env            = { LOG_LEVEL = "${LEVEL}" }
user           = "scraper"
autostart      = false
restart        = "always"
success_codes  = [0, 3]
backoff        = { initial = "500ms", max = "30s" }
healthy_after  = "10s"
start_retries  = 5
stop_signal    = "INT"
stop_timeout   = "30s"
single_instance = false
on_duplicate   = "kill"
priority       = -10
connections    = { min = 2, max = 15, overflow = 5 }
quota_signal   = "sighup"
"#;
        let c = ok(text);
        assert_eq!(
            c.supervisor.socket.as_deref(),
            Some(Path::new("/run/corral/corral.sock"))
        );
        assert_eq!(c.supervisor.socket_group.as_deref(), Some("ops"));
        assert_eq!(
            (c.supervisor.log_format, c.supervisor.orphans),
            (LogFormat::Json, OrphanPolicy::Keep)
        );
        let db = c.database.unwrap();
        assert_eq!(db.max_connections, MaxConnections::Fixed(60));
        assert_eq!(db.preset.as_deref(), Some("supabase-micro"));
        assert_eq!(
            (db.provider_reserve, db.external_reserve, db.enforce),
            (Reserve::Count(6), 2, Enforce::Terminate)
        );
        assert_eq!(
            (c.budget.scope, c.budget.service.as_str(), c.budget.warn_at),
            (Scope::Fleet, "scraper", 1.0)
        );
        assert_eq!(c.budget.fleet_grace, Duration::ZERO);
        assert_eq!(
            c.http,
            Some(HttpConfig {
                listen: "127.0.0.1:9464".into(),
                token: None
            })
        );
        let job = &c.jobs["layer1_5"];
        assert_eq!(
            job.command,
            ["python", "scripts/layer1_5_production_scraper.py", "--all"]
        );
        assert_eq!(job.cwd.as_deref(), Some(Path::new("/app")));
        assert_eq!(job.env.get("LOG_LEVEL").map(String::as_str), Some("debug"));
        assert_eq!(
            (job.user.as_deref(), job.autostart, job.restart),
            (Some("scraper"), false, RestartPolicy::Always)
        );
        assert_eq!(job.success_codes, [0, 3]);
        assert_eq!(
            job.backoff,
            Backoff {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(30)
            }
        );
        assert_eq!((job.healthy_after, job.start_retries), (Duration::from_secs(10), 5));
        assert_eq!(
            (job.stop_signal, job.stop_timeout),
            (libc::SIGINT, Duration::from_secs(30))
        );
        assert_eq!(
            (job.single_instance, job.on_duplicate, job.priority),
            (false, OnDuplicate::Kill, -10)
        );
        assert_eq!(
            job.connections,
            Some(Connections {
                min: 2,
                max: 15,
                overflow: 5
            })
        );
        assert_eq!(job.quota_signal, Some(libc::SIGHUP));
    }

    #[test]
    fn job_stop_timeout_defaults_to_the_supervisors() {
        let c = ok(&format!("[supervisor]\nstop_timeout = \"3s\"\n{JOB}"));
        assert_eq!(c.jobs["web"].stop_timeout, Duration::from_secs(3));
    }

    #[test]
    fn relative_paths_are_relative_to_the_manifest() {
        let c = ok("[supervisor]\nsocket = \"run/c.sock\"\nlock_dir = \"./locks\"\n[jobs.web]\ncommand = [\"w\"]\ncwd = \"app\"\n[jobs.x]\ncommand = [\"x\"]\ncwd = \".\"\n");
        assert_eq!(
            c.supervisor.socket.as_deref(),
            Some(Path::new("/etc/corral/run/c.sock"))
        );
        assert_eq!(c.supervisor.lock_dir, Path::new("/etc/corral/locks"));
        assert_eq!(c.jobs["web"].cwd.as_deref(), Some(Path::new("/etc/corral/app")));
        assert_eq!(c.jobs["x"].cwd.as_deref(), Some(Path::new("/etc/corral")));
    }

    #[test]
    fn dotted_keys_and_sub_tables_work() {
        let c = ok("jobs.a.command = [\"a\"]\njobs.a.env.X = \"1\"\n[jobs.b]\ncommand = [\"b\"]\nbackoff.max = \"5s\"\n[jobs.b.connections]\nmax = 2\n[database]\nurl = \"host=x\"\n");
        assert_eq!(c.jobs["a"].env["X"], "1");
        assert_eq!(c.jobs["b"].backoff.max, Duration::from_secs(5));
        assert_eq!(
            c.jobs["b"].connections,
            Some(Connections {
                min: 1,
                max: 2,
                overflow: 0
            })
        );
    }

    #[test]
    fn connections_forms() {
        let c = ok(&format!(
            "{DB}{JOB}connections = 4\n[jobs.x]\ncommand = [\"x\"]\nconnections = {{ max = 3 }}\n"
        ));
        assert_eq!(
            c.jobs["web"].connections,
            Some(Connections {
                min: 4,
                max: 4,
                overflow: 0
            })
        );
        assert_eq!(
            c.jobs["x"].connections,
            Some(Connections {
                min: 1,
                max: 3,
                overflow: 0
            })
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
    fn signals_in_any_spelling() {
        for (name, number) in [
            ("SIGTERM", libc::SIGTERM),
            ("TERM", libc::SIGTERM),
            ("sigusr1", libc::SIGUSR1),
            ("kill", libc::SIGKILL),
        ] {
            let c = ok(&format!("{JOB}stop_signal = \"{name}\"\n"));
            assert_eq!(c.jobs["web"].stop_signal, number, "{name}");
        }
    }

    #[test]
    fn zero_durations_are_valid_where_not_a_period() {
        let c = ok(&format!(
            "{JOB}stop_timeout = \"0s\"\nhealthy_after = \"0s\"\nbackoff = {{ initial = \"0s\" }}\n"
        ));
        assert_eq!(c.jobs["web"].stop_timeout, Duration::ZERO);
    }

    #[test]
    fn expanded_values_cannot_inject_toml() {
        let env = |name: &str| (name == "EVIL").then(|| "x\"]\n[jobs.evil]\ncommand = [\"rm".to_string());
        let c = build(Path::new(FILE), "[jobs.web]\ncommand = [\"echo\", \"${EVIL}\"]\n", &env).unwrap();
        assert_eq!(c.jobs.len(), 1);
        assert_eq!(c.jobs["web"].command[1], "x\"]\n[jobs.evil]\ncommand = [\"rm");
    }

    // ---- one test per kind of error, each at its exact position ----

    #[test]
    fn toml_syntax_error() {
        let e = one("[supervisor]\nsocket = \n", 2, 10, "invalid TOML: ");
        assert!(e.hint.is_some());
    }

    #[test]
    fn duplicate_job() {
        let e = one(
            &format!("{JOB}[jobs.db]\ncommand = [\"d\"]\n{JOB}"),
            5,
            1,
            "duplicate job \"web\"",
        );
        assert!(e.hint.unwrap().contains("[jobs.web] appears twice"));
    }

    #[test]
    fn duplicate_key() {
        one(
            &format!("{JOB}priority = 1\npriority = 2\n"),
            4,
            1,
            "duplicate key \"priority\"",
        );
    }

    #[test]
    fn unknown_key_with_suggestion() {
        let e = one(
            &format!("{JOB}restrat = \"always\"\n"),
            3,
            1,
            "unknown key \"restrat\" (did you mean \"restart\"?)",
        );
        assert_eq!(e.hint.as_deref(), Some("rename it to \"restart\""));
    }

    #[test]
    fn unknown_key_without_suggestion_lists_the_valid_ones() {
        let e = one(
            "[http]\nlisten = \"127.0.0.1:1\"\nzzzzzz = 1\n",
            3,
            1,
            "unknown key \"zzzzzz\"",
        );
        assert_eq!(e.message, "unknown key \"zzzzzz\"");
        assert!(e.hint.unwrap().contains("valid keys here: listen"));
    }

    #[test]
    fn unknown_top_level_key() {
        let e = one(
            "[job.web]\ncommand = [\"x\"]\n",
            1,
            2,
            "unknown key \"job\" (did you mean \"jobs\"?)",
        );
        assert_eq!(e.hint.as_deref(), Some("rename it to \"jobs\""));
        let e = one("[web]\n", 1, 2, "unknown key \"web\"");
        assert!(e.hint.unwrap().contains("[jobs.NAME]"));
    }

    #[test]
    fn unknown_key_in_nested_tables() {
        one(
            &format!("{JOB}backoff = {{ intial = \"1s\" }}\n"),
            3,
            13,
            "unknown key \"intial\" (did you mean \"initial\"?)",
        );
        one(
            &format!("{DB}{JOB}connections = {{ max = 2, overflw = 1 }}\n"),
            5,
            15,
            "unknown key \"overflw\" (did you mean \"overflow\"?)",
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = one(
            &format!("{JOB}start_retries = \"3\"\n"),
            3,
            17,
            "\"start_retries\" must be an integer, found string \"3\"",
        );
        assert!(e.hint.is_some());
        one(
            &format!("{JOB}autostart = \"yes\"\n"),
            3,
            13,
            "\"autostart\" must be true or false",
        );
        one(
            &format!("{JOB}success_codes = [0, \"1\"]\n"),
            3,
            21,
            "wrong type: expected an integer, found string \"1\"",
        );
        one(
            "supervisor = 5\n",
            1,
            14,
            "\"supervisor\" must be a table, found integer 5",
        );
        one("jobs = []\n", 1, 8, "\"jobs\" must be a table, found an array");
    }

    #[test]
    fn dotted_table_where_a_value_belongs() {
        one(
            &format!("{JOB}restart.x = 1\n"),
            3,
            9,
            "expected a value here, found a table",
        );
    }

    #[test]
    fn missing_command() {
        let e = one("[jobs.web]\npriority = 1\n", 1, 7, "job \"web\" has no \"command\"");
        assert!(e.hint.unwrap().contains("command = ["));
        // A job made only of dotted keys has no header: the name locates it.
        one("jobs.web.priority = 1\n", 1, 6, "job \"web\" has no \"command\"");
    }

    #[test]
    fn empty_command() {
        one("[jobs.web]\ncommand = []\n", 2, 11, "\"command\" is empty");
        one(
            "[jobs.web]\ncommand = [\"\"]\n",
            2,
            11,
            "the program in \"command\" is empty",
        );
        one(
            "[jobs.web]\ncommand = [\"x\", 1]\n",
            2,
            11,
            "\"command\" must hold only strings, found integer at index 1",
        );
    }

    #[test]
    fn command_as_a_string_gets_the_array_form() {
        let e = one(
            "[jobs.web]\ncommand = \"python app.py --all\"\n",
            2,
            11,
            "\"command\" must be an array of strings",
        );
        assert_eq!(
            e.hint.as_deref(),
            Some("write it as command = [\"python\", \"app.py\", \"--all\"]")
        );
    }

    #[test]
    fn undefined_variable() {
        let e = one(
            &format!("{JOB}cwd = \"/srv/${{APP_DIR}}\"\n"),
            3,
            7,
            "undefined variable \"APP_DIR\" in \"cwd\"",
        );
        assert!(e.hint.unwrap().contains("${APP_DIR:-value}"));
        one(
            "[jobs.web]\ncommand = [\"a\", \"${NOPE}\"]\n",
            2,
            11,
            "undefined variable \"NOPE\" in \"command\"",
        );
    }

    #[test]
    fn bad_duration() {
        let e = one(
            "[supervisor]\nstop_timeout = \"30\"\n",
            2,
            16,
            "invalid duration \"30\" for \"stop_timeout\"",
        );
        assert!(e.hint.unwrap().contains("\"500ms\""));
        one(
            &format!("{JOB}backoff = {{ max = \"soon\" }}\n"),
            3,
            19,
            "invalid duration \"soon\" for \"max\"",
        );
    }

    #[test]
    fn zero_period() {
        one(
            "[supervisor]\nreap_interval = \"0s\"\n",
            2,
            17,
            "\"reap_interval\" must be between 1s and 1day (shorter would keep a core busy), found \"0s\"",
        );
    }

    #[test]
    fn every_duration_has_a_sane_range() {
        // Each of these passed `check` once and then burned a core or panicked the daemon.
        one("[supervisor]\nreap_interval = \"1ns\"\n", 2, 17, "\"reap_interval\" must be between 1s and 1day");
        let e = one(
            &format!("{JOB}backoff = {{ initial = \"18446744073709551615s\" }}\n"),
            3,
            23,
            "\"initial\" must be between 0s and 1h, found \"18446744073709551615s\"",
        );
        assert_eq!(e.hint.as_deref(), Some("use a duration from 0s to 1h"));
        let cases = [
            ("[supervisor]\nstop_timeout = \"2h\"\n", "stop_timeout"),
            (&format!("{JOB}stop_timeout = \"1000years\"\n"), "stop_timeout"),
            (&format!("{JOB}healthy_after = \"2h\"\n"), "healthy_after"),
            (&format!("{JOB}backoff = {{ max = \"2days\" }}\n"), "max"),
            ("[budget]\nrebalance_interval = \"1ms\"\n", "rebalance_interval"),
            ("[budget]\nidle_after = \"400days\"\n", "idle_after"),
            ("[budget]\nfleet_grace = \"400days\"\n", "fleet_grace"),
            ("[database]\nurl = \"host=u\"\nhealth_interval = \"10ms\"\n", "health_interval"),
            ("[database]\nurl = \"host=u\"\nhealth_timeout = \"1ms\"\n", "health_timeout"),
        ];
        for (text, key) in cases {
            let errs = errors(text);
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].message.starts_with(&format!("\"{key}\" must be between")), "{}", errs[0]);
            assert!(errs[0].line > 0, "{}", errs[0]);
        }
        // The edges are in.
        ok(&format!("[supervisor]\nreap_interval = \"1s\"\n{JOB}backoff = {{ initial = \"1h\", max = \"1day\" }}\n"));
    }

    #[test]
    fn every_number_has_a_sane_range() {
        one(&format!("{DB}{JOB}connections = 300000\n"), 5, 15, "connections max (300000) must be at most 262143");
        one("[database]\nurl = \"host=u\"\nmax_connections = 300000\n", 3, 19, "max_connections must be between 1 and 262143");
        one("[database]\nurl = \"host=u\"\nadhoc_reserve = 300000\n", 3, 17, "\"adhoc_reserve\" must be at most 262143");
        one("[database]\nurl = \"host=u\"\nprovider_reserve = 300000\n", 3, 20, "provider_reserve must be between 0 and 262143");
        one(&format!("{JOB}start_retries = 100000\n"), 3, 17, "\"start_retries\" must be at most 10000");
        one(&format!("{JOB}priority = -2000000\n"), 3, 12, "\"priority\" must be at least -1000000");
    }

    #[test]
    fn job_names_follow_the_name_rules() {
        let long = "a".repeat(65_536);
        let e = one(&format!("[jobs.{long}]\ncommand = [\"x\"]\n"), 1, 7, "invalid job name \"aaaa");
        assert!(e.message.contains("it has 65536 bytes, at most 64"), "{}", e.message);
        assert!(e.message.len() < 200, "a long name is quoted short: {}", e.message.len());
        one(&format!("[jobs.{}]\ncommand = [\"x\"]\n", "b".repeat(256)), 1, 7, "invalid job name");
        one("[jobs.\".\"]\ncommand = [\"x\"]\n", 1, 7, "invalid job name \".\": it must start with");
        one("[jobs.\"..\"]\ncommand = [\"x\"]\n", 1, 7, "invalid job name \"..\"");
        one("[jobs.-x]\ncommand = [\"x\"]\n", 1, 7, "invalid job name \"-x\"");
        one("[jobs.\"a\\nb\"]\ncommand = [\"x\"]\n", 1, 7, "invalid job name");
        one("[jobs.all]\ncommand = [\"x\"]\n", 1, 7, "\"all\" cannot be a job name");
        ok(&format!("[jobs.{}]\ncommand = [\"x\"]\n", "c".repeat(64)));
    }

    #[test]
    fn names_must_fit_in_application_name() {
        // corral/corral/<job> must fit in PostgreSQL's 63 bytes for a job with connections.
        let name = "j".repeat(50);
        let e = one(&format!("{DB}[jobs.{name}]\ncommand = [\"x\"]\nconnections = 1\n"), 3, 7, "job name");
        assert!(e.message.contains("has 64 bytes, PostgreSQL keeps 63"), "{}", e.message);
        assert_eq!(e.hint.as_deref(), Some("shorten the job name to at most 49 bytes, or the [budget] service"));
        ok(&format!("{DB}[jobs.{}]\ncommand = [\"x\"]\nconnections = 1\n", "j".repeat(49)));
        // Without connections the name never reaches the database.
        ok(&format!("{DB}[jobs.{name}]\ncommand = [\"x\"]\n"));
        one(&format!("[budget]\nservice = \"{}\"\n", "s".repeat(49)), 2, 11, "service \"sss");
    }

    #[test]
    fn an_empty_manifest_is_an_error() {
        for text in ["", "\n\n", "# just a comment\n", "   \t\n# a\n# b\n"] {
            let errs = errors(text);
            assert_eq!(errs.len(), 1);
            assert_eq!(errs[0].message, "the manifest is empty");
            assert!(errs[0].hint.as_deref().unwrap_or_default().contains("half-way"), "{:?}", errs[0].hint);
        }
    }

    #[test]
    fn limits_of_size_and_count() {
        let e = errors(&format!("# {}\n", "x".repeat(super::super::MAX_MANIFEST_BYTES)));
        assert!(e[0].message.contains("more than the 4 MiB"), "{}", e[0]);
        let many: String = (0..=MAX_JOBS).map(|i| format!("[jobs.j{i}]\ncommand = [\"x\"]\n")).collect();
        let e = errors(&many);
        assert!(e[0].message.starts_with("too many jobs: 10001, at most 10000"), "{}", e[0]);
        // Deep TOML nesting is the parser's error, never a stack overflow.
        let deep = format!("a = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert!(errors(&deep)[0].message.starts_with("invalid TOML"));
        let deep = format!("a = {}1{}\n", "{ b = ".repeat(50_000), " }".repeat(50_000));
        assert!(errors(&deep)[0].message.starts_with("invalid TOML"));
        // 70,000 nested defaults (the reload that once killed the daemon).
        let nest = format!("{}x{}", "${A:-".repeat(70_000), "}".repeat(70_000));
        let e = one(&format!("{JOB}env = {{ X = \"{nest}\" }}\n"), 3, 13, "variable defaults nest deeper than 10 levels in \"X\"");
        assert!(e.to_string().len() < 400);
    }

    #[test]
    fn many_broken_jobs_each_get_their_error_and_the_report_stays_short() {
        // 2,000 jobs with an unknown key: one parse, each job on its own (this once took 8 s).
        let text: String = (0..2000).map(|i| format!("[jobs.j{i}]\ncommand = [\"x\"]\nbogus = 1\n")).collect();
        let e = errors(&text);
        assert_eq!(e.len(), MAX_ERRORS + 1);
        assert_eq!((e[0].line, e[0].column), (3, 1));
        assert_eq!((e[1].line, e[1].column), (6, 1));
        assert_eq!(e[MAX_ERRORS].message, "... and 1950 more error(s) not shown");
    }

    #[test]
    fn backoff_initial_above_max() {
        one(
            &format!("{JOB}backoff = {{ initial = \"2m\", max = \"1m\" }}\n"),
            3,
            35,
            "backoff initial (2m) is longer than max (1m)",
        );
        one(
            &format!("{JOB}backoff = {{ initial = \"2m\" }}\n"),
            3,
            23,
            "backoff initial (2m) is longer than max (1m)",
        );
    }

    #[test]
    fn bad_signal() {
        let e = one(
            &format!("{JOB}stop_signal = \"SIGTREM\"\n"),
            3,
            15,
            "unknown signal \"SIGTREM\" for \"stop_signal\" (did you mean \"SIGTERM\"?)",
        );
        assert!(e.hint.is_some());
        one(
            &format!("{JOB}quota_signal = \"BOGUS\"\n"),
            3,
            16,
            "unknown signal \"BOGUS\" for \"quota_signal\"",
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
    fn bad_enum_value() {
        let e = one(
            &format!("{JOB}restart = \"on_failure\"\n"),
            3,
            11,
            "invalid value \"on_failure\" for \"restart\" (did you mean \"on-failure\"?)",
        );
        assert_eq!(
            e.hint.as_deref(),
            Some("use one of \"always\", \"on-failure\", \"never\"")
        );
        one(
            "[supervisor]\nlog_format = \"yaml\"\n",
            2,
            14,
            "invalid value \"yaml\" for \"log_format\"",
        );
        one(
            "[database]\nurl = \"host=u\"\nenforce = \"kill\"\n",
            3,
            11,
            "invalid value \"kill\" for \"enforce\"",
        );
    }

    #[test]
    fn connections_min_above_max() {
        one(
            &format!("{DB}{JOB}connections = {{ min = 5, max = 3 }}\n"),
            5,
            15,
            "connections min (5) is greater than max (3)",
        );
    }

    #[test]
    fn connections_zero() {
        one(
            &format!("{DB}{JOB}connections = {{ min = 0, max = 3 }}\n"),
            5,
            15,
            "connections min must be at least 1",
        );
        one(
            &format!("{DB}{JOB}connections = 0\n"),
            5,
            15,
            "connections min must be at least 1, found 0",
        );
    }

    #[test]
    fn connections_overflow_and_shape() {
        one(
            &format!("{DB}{JOB}connections = {{ max = 3, overflow = 4 }}\n"),
            5,
            15,
            "connections overflow (4) must be between 0 and max (3)",
        );
        one(
            &format!("{DB}{JOB}connections = {{ min = 2 }}\n"),
            5,
            15,
            "\"connections\" needs \"max\"",
        );
        one(
            &format!("{DB}{JOB}connections = \"3\"\n"),
            5,
            15,
            "\"connections\" must be an integer or a table, found string",
        );
    }

    #[test]
    fn connections_without_database() {
        let e = one(
            &format!("{JOB}connections = 2\n"),
            3,
            15,
            "job \"web\" sets \"connections\" but there is no [database] section",
        );
        assert!(e.hint.unwrap().contains("[database]"));
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
    fn negative_counts() {
        one(
            "[database]\nurl = \"host=u\"\nadhoc_reserve = -1\n",
            3,
            17,
            "\"adhoc_reserve\" must be at least 0, found -1",
        );
        one(
            &format!("{JOB}success_codes = [256]\n"),
            3,
            18,
            "\"success_codes\" must be at most 255, found 256",
        );
        one(
            &format!("{JOB}priority = 3000000000\n"),
            3,
            12,
            "\"priority\" must be at most 1000000",
        );
    }

    #[test]
    fn warn_at_range() {
        one(
            "[budget]\nwarn_at = 0\n",
            2,
            11,
            "warn_at must be above 0 and at most 1, found 0",
        );
        one(
            "[budget]\nwarn_at = 1.5\n",
            2,
            11,
            "warn_at must be above 0 and at most 1, found 1.5",
        );
        one(
            "[budget]\nwarn_at = \"80%\"\n",
            2,
            11,
            "\"warn_at\" must be a number, found string",
        );
    }

    #[test]
    fn fleet_scope_needs_a_database() {
        one(
            "[budget]\nscope = \"fleet\"\n",
            2,
            9,
            "scope = \"fleet\" needs a [database] section",
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
    fn http_needs_a_valid_listen() {
        one("[http]\n", 1, 2, "missing key \"listen\" in [http]");
        one("[http]\nlisten = \"9464\"\n", 2, 10, "invalid listen address \"9464\"");
        ok("[http]\nlisten = \"localhost:9464\"\n");
        ok("[http]\nlisten = \"[::1]:9464\"\n");
        one("[http]\nlisten = \"127.0.0.1:9464\"\ntoken = \"\"\n", 3, 9, "\"token\" is empty");
        let c = ok("[http]\nlisten = \"127.0.0.1:9464\"\ntoken = \"s3cret\"\n");
        assert_eq!(c.http.as_ref().and_then(|h| h.token.as_deref()), Some("s3cret"));
        assert!(!format!("{:?}", c.http).contains("s3cret"));
    }

    #[test]
    fn bad_names() {
        one(
            "[jobs.\"my job\"]\ncommand = [\"x\"]\n",
            1,
            7,
            "invalid job name \"my job\"",
        );
        one("[budget]\nservice = \"a/b\"\n", 2, 11, "invalid service \"a/b\"");
        one(
            &format!("{JOB}env = {{ \"A=B\" = \"1\" }}\n"),
            3,
            9,
            "invalid environment variable name \"A=B\"",
        );
        one(&format!("{JOB}user = \"\"\n"), 3, 8, "\"user\" is empty");
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

    #[test]
    fn every_error_is_reported_in_file_order() {
        let text = "\
[supervisor]
stop_timeout = \"forever\"
[jobs.a]
command = [\"a\"]
restrat = \"always\"
[jobs.b]
command = \"b\"
[jobs.c]
command = [\"c\"]
stop_signal = \"NOPE\"
priority = \"high\"
";
        let found: Vec<(usize, usize)> = errors(text).iter().map(|e| (e.line, e.column)).collect();
        // Job c stops at its first type error (serde), the other jobs still report.
        assert_eq!(found, vec![(2, 16), (5, 1), (7, 11), (11, 12)]);
    }

    #[test]
    fn display_reads_like_cargo() {
        let e = one(&format!("{JOB}restrat = \"always\"\n"), 3, 1, "unknown key");
        assert_eq!(
            e.to_string(),
            "/etc/corral/supervisor.toml:3:1: unknown key \"restrat\" (did you mean \"restart\"?)\n  hint: rename it to \"restart\""
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(edit_distance("restrat", "restart"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(did_you_mean("restrat", &["restart", "priority"]), Some("restart"));
        assert_eq!(did_you_mean("xyz", &["restart", "priority"]), None);
        let err = |at| (Some(at), ConfigError { file: FILE.into(), line: 0, column: 0, message: String::new(), hint: None });
        let at: Vec<(usize, usize)> = locate("ab\ncd\né=x", vec![err(9), err(0), err(4)]).iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, vec![(1, 1), (2, 2), (3, 3)]);
        assert_eq!(locate("", vec![err(0)])[0].line, 1);
        assert_eq!(quote(&"x".repeat(100)).len(), 67);
        assert_eq!(key_before("a.b_c = 5", 8).as_deref(), Some("b_c"));
        assert_eq!(key_before("[1, 5]", 4), None);
        assert_eq!(did_you_mean(&"restart".repeat(10), &["restart"]), None);
    }
}
