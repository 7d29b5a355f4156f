//! The manifest (SPEC §2): typed configuration, and the pipeline that builds it.
//!
//! `raw` mirrors the TOML with spans and rejects unknown keys, `expand` resolves
//! `${VAR}`, `validate` turns the raw tree into the typed [`Config`] below while
//! collecting every error with file:line:col and a hint, and `diff` compares two
//! configs into a [`ReloadPlan`]. Nothing here does I/O except [`load`] reading
//! the file; nothing here knows about processes.

mod diff;
mod expand;
mod raw;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use diff::{diff, ReloadPlan};

/// A whole, validated manifest. Built completely before anything is applied,
/// so a bad reload can never leave a half-applied config behind.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from (for messages and for reload).
    pub path: PathBuf,
    pub supervisor: SupervisorConfig,
    pub database: Option<DatabaseConfig>,
    pub budget: BudgetConfig,
    pub http: Option<HttpConfig>,
    /// Jobs by name, in name order (BTreeMap keeps output deterministic).
    pub jobs: BTreeMap<String, JobConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    /// None: no socket configured (the CLI then falls back to `$CORRAL_SOCKET`).
    pub socket: Option<PathBuf>,
    pub socket_group: Option<String>,
    pub lock_dir: PathBuf,
    pub reap_interval: Duration,
    pub stop_timeout: Duration,
    pub log_format: LogFormat,
    pub orphans: OrphanPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanPolicy {
    Kill,
    Keep,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseConfig {
    /// Expanded URL, checked by `db::conninfo`. Contains the password: never print it, use
    /// `db::redact`. None: no database to connect to; the budget is planned offline from
    /// `preset` or an integer `max_connections` (validation makes sure one is set).
    pub url: Option<String>,
    /// The manifest's directory: relative `sslrootcert`/`sslcert`/`sslkey` paths start here.
    pub base_dir: PathBuf,
    pub max_connections: MaxConnections,
    /// Preset name as written, already checked to be known.
    pub preset: Option<String>,
    pub provider_reserve: Reserve,
    pub adhoc_reserve: u32,
    pub external_reserve: u32,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub enforce: Enforce,
    /// The path the jobs' URL takes (SPEC §5.1).
    pub pooler: PoolerSetting,
    pub pool_size: PoolSize,
    /// PgBouncer's admin console (`SHOW CONFIG/DATABASES/CLIENTS`). Holds a password.
    pub pooler_admin_url: Option<String>,
}

/// `pooler`: what sits between the jobs and PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolerSetting {
    /// Supavisor from the URL's host and port, PgBouncer from `pooler_admin_url`, else none.
    Auto,
    None,
    Session,
    Transaction,
}

/// `pool_size`: the pooler's server connections per (role, database) pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolSize {
    /// Supavisor's default for the compute `preset`, or PgBouncer's from its admin console.
    Auto,
    Fixed(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxConnections {
    Auto,
    Fixed(u32),
}

/// `provider_reserve`: an absolute count or a percentage of `limit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reserve {
    Count(u32),
    Percent(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforce {
    Off,
    Warn,
    Terminate,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    pub scope: Scope,
    pub service: String,
    pub idle_after: Duration,
    pub rebalance_interval: Duration,
    pub warn_at: f64,
    pub fleet_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Local,
    Fleet,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    pub listen: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobConfig {
    pub name: String,
    /// argv, never empty.
    pub command: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// Extra environment, values expanded.
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub autostart: bool,
    pub restart: RestartPolicy,
    pub success_codes: Vec<i32>,
    pub backoff: Backoff,
    pub healthy_after: Duration,
    pub start_retries: u32,
    /// Signal number (e.g. libc::SIGTERM).
    pub stop_signal: i32,
    pub stop_timeout: Duration,
    pub single_instance: bool,
    pub on_duplicate: OnDuplicate,
    pub priority: i32,
    pub connections: Option<Connections>,
    pub quota_signal: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDuplicate {
    Refuse,
    Kill,
    Ignore,
}

/// A job's connection needs. `connections = 5` means min = max = 5, overflow 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    pub min: u32,
    pub max: u32,
    /// How much of the quota is handed out as `DB_MAX_OVERFLOW` (at most the quota).
    pub overflow: u32,
}

impl JobConfig {
    /// Settings whose change needs a restart of the process (SPEC §8).
    pub fn process_settings_equal(&self, other: &JobConfig) -> bool {
        self.command == other.command
            && self.cwd == other.cwd
            && self.env == other.env
            && self.user == other.user
            && self.stop_signal == other.stop_signal
            && self.stop_timeout == other.stop_timeout
            && self.single_instance == other.single_instance
    }
}

/// One problem found in a manifest, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no position (missing file).
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// What to do about it, when we know.
    pub hint: Option<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)?;
        } else {
            write!(f, "{}: {}", self.file.display(), self.message)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every error found in one file (we report all of them, not just the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Read, expand and validate a manifest file using the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read config file: {e}"),
            hint: Some("pass the manifest with -c FILE or set CORRAL_CONFIG".into()),
        }])
    })?;
    parse(path, &text, &|name| std::env::var(name).ok())
}

/// Parse manifest text. `env` looks up `${VAR}` (an input, so tests need no process env).
pub fn parse(path: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    validate::build(path, text, env)
}

/// Where the manifest lives when `-c` is not given (SPEC §1).
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CORRAL_CONFIG") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from("supervisor.toml");
    if local.exists() {
        return local;
    }
    PathBuf::from("/etc/corral/supervisor.toml")
}

/// Supabase compute-size presets (SPEC §5): name → max_connections.
pub const PRESETS: &[(&str, u32)] = &[
    ("free", 60),
    ("supabase-nano", 60),
    ("supabase-micro", 60),
    ("supabase-small", 90),
    ("supabase-medium", 120),
    ("supabase-large", 160),
    ("supabase-xl", 240),
    ("supabase-2xl", 380),
    ("supabase-4xl", 480),
    ("supabase-8xl", 490),
    ("supabase-12xl", 500),
    ("supabase-16xl", 500),
];

pub fn preset_limit(name: &str) -> Option<u32> {
    PRESETS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// The control socket named by a manifest, read leniently: a client must find
/// the daemon even while the file has an unrelated error in it.
pub fn socket_hint(path: &Path) -> Option<PathBuf> {
    if let Ok(cfg) = load(path) {
        return cfg.supervisor.socket;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let value: toml::Table = text.parse().ok()?;
    let socket = value.get("supervisor")?.get("socket")?.as_str()?;
    if socket.contains("${") {
        return None;
    }
    let p = PathBuf::from(socket);
    Some(if p.is_relative() { path.parent().unwrap_or(Path::new(".")).join(p) } else { p })
}

#[cfg(test)]
mod fuzz_tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SET").then(|| "value".to_string())
    }

    proptest::proptest! {
        /// Arbitrary text never panics the parser: it is a config or located errors.
        #[test]
        fn arbitrary_text_gives_config_or_errors(text in "\\PC{0,400}") {
            if let Err(errs) = parse(Path::new("f.toml"), &text, &env) {
                proptest::prop_assert!(!errs.0.is_empty());
            }
        }

        /// Near-valid manifests (TOML-ish fragments glued together) never panic either.
        #[test]
        fn manifest_fragments_never_panic(parts in proptest::collection::vec(proptest::sample::select(vec![
            "[supervisor]\n", "[jobs.a]\n", "[jobs.b]\n", "[database]\n", "[budget]\n", "[http]\n",
            "command = [\"x\"]\n", "command = []\n", "command = \"x\"\n", "restart = \"always\"\n",
            "restrat = 1\n", "backoff = { initial = \"1s\", max = \"0s\" }\n", "stop_timeout = \"10 parsecs\"\n",
            "url = \"${SET}\"\n", "url = \"${UNSET}\"\n", "connections = { min = 3, max = 2 }\n", "connections = 0\n",
            "env = { A = \"${UNSET:-d}\" }\n", "priority = 99999999999\n", "listen = 5\n", "scope = \"fleet\"\n",
            "provider_reserve = \"150%\"\n", "max_connections = \"auto\"\n", "= =\n", "[[jobs]]\n", "\"\\u0000\" = 1\n",
        ]), 0..12)) {
            let text: String = parts.concat();
            let _ = parse(Path::new("f.toml"), &text, &env);
        }
    }
}
