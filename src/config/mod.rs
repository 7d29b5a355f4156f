//! The manifest (SPEC §2): typed configuration, and the pipeline that builds it.
//!
//! `raw` mirrors the TOML with spans and rejects unknown keys, `expand` resolves
//! `${VAR}`, `validate` turns the raw tree into the typed [`Config`] below while
//! collecting every error with file:line:col and a hint, and `diff` compares two
//! configs into a [`ReloadPlan`]. Nothing here does I/O except [`load`] reading
//! the file and the `*_FILE` secrets it names (`secrets`); nothing here knows about processes.

mod diff;
mod expand;
mod raw;
mod secrets;
mod validate;
pub mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::db::conninfo::ConnInfo;

pub use diff::{diff, ReloadPlan};
pub use validate::alerts::{AlertsConfig, WebhookUrl};
pub use validate::{parse_signal_name, ConfigErrors, Diagnostic, Severity};

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
    /// `[alerts]` (SPEC §9): None without the section.
    pub alerts: Option<AlertsConfig>,
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
    /// Expanded URL, parsed by `db::conninfo` (its `Debug` shows it redacted). Holds the
    /// password: print it only through `redacted()`. None: no database to connect to; the budget
    /// is planned offline from `preset` or an integer `max_connections` (validation makes sure
    /// one is set).
    pub url: Option<ConnInfo>,
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
    pub pooler_admin_url: Option<ConnInfo>,
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

#[derive(Clone, PartialEq)]
pub struct HttpConfig {
    pub listen: String,
    /// Required (bearer or `?token=`) by every path but `/health`.
    pub token: Option<String>,
}

/// The token never reaches a log line, not even through `{:?}`.
impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig").field("listen", &self.listen).field("token", &self.token.as_ref().map(|_| "<redacted>")).finish()
    }
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
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub single_instance: bool,
    pub on_duplicate: OnDuplicate,
    pub priority: i32,
    pub connections: Option<Connections>,
    pub quota_signal: Option<Signal>,
    /// A scheduled job (SPEC §2): runs when its schedule says, `scheduled` in between.
    pub schedule: Option<crate::schedule::ScheduleConfig>,
    /// Probes, stall and memory limits, dependencies, instance (config::watch).
    pub watch: watch::Watch,
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

/// One problem found in a manifest: the one diagnostics type (see `validate::diagnostics`).
pub type ConfigError = Diagnostic;

/// The largest manifest corral reads (SPEC §7: a file of any size gets an error, not a stall).
/// 20,000 jobs of a few lines each fit.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// The most jobs one manifest may define.
pub const MAX_JOBS: usize = 10_000;

const TOO_LARGE_HINT: &str = "a manifest this large is not a config corral can supervise: split the jobs over several corrals";

fn too_large_message(len: u64) -> String {
    format!("the manifest is {len} bytes, more than the {} MiB corral reads", MAX_MANIFEST_BYTES >> 20)
}

/// Read, expand and validate a manifest file using the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = read(path).map_err(|(message, hint)| {
        ConfigErrors(vec![Diagnostic::error(path, message, Some(hint))])
    })?;
    // `${NAME}` falls back to the file named by `NAME_FILE` (Docker secrets).
    let lookup = secrets::Lookup::default();
    let parsed = parse(path, &text, &|name| lookup.var(name));
    let unreadable: Vec<ConfigError> = lookup
        .failures()
        .into_iter()
        .map(|message| Diagnostic::error(path, message, Some("mount the secret there, or set the variable itself".into())))
        .collect();
    match (parsed, unreadable.is_empty()) {
        (parsed, true) => parsed,
        (Ok(_), false) => Err(ConfigErrors(unreadable)),
        (Err(ConfigErrors(errs)), false) => Err(ConfigErrors(unreadable.into_iter().chain(errs).collect())),
    }
}

/// A save is taken as finished once the file has not changed for this long.
pub const SAVE_SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

/// [`load`] for a reload (SPEC §8): only a file that has stopped changing. The file is read
/// once it was last modified [`SAVE_SETTLE`] ago, and read again when it changed while being
/// read, so an in-place save (truncate, then write) is never caught half-way unless the writer
/// pauses longer than that in the middle. Blocks (sleeps): call it off the actor.
pub fn load_settled(path: &Path) -> Result<Config, ConfigErrors> {
    const TRIES: usize = 20;
    for _ in 0..TRIES {
        let before = stamp(path);
        let age = before.as_ref().and_then(|s| s.modified.elapsed().ok());
        if let Some(age) = age.filter(|a| *a < SAVE_SETTLE) {
            std::thread::sleep(SAVE_SETTLE - age);
            continue;
        }
        let result = load(path);
        if stamp(path) == before {
            return result;
        }
    }
    // Still changing after all the tries: take what is there now.
    load(path)
}

/// What tells one version of a file from the next.
#[derive(PartialEq)]
struct Stamp {
    len: u64,
    modified: std::time::SystemTime,
    inode: (u64, u64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp { len: m.len(), modified: m.modified().ok()?, inode: (m.dev(), m.ino()) })
}

/// The manifest's text: a regular file of at most [`MAX_MANIFEST_BYTES`] of UTF-8. Never blocks
/// on a FIFO or reads a device forever. Errors are (message, hint).
fn read(path: &Path) -> Result<String, (String, String)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let hint = || "pass the manifest with -c FILE or set CORRAL_CONFIG".to_string();
    // O_NONBLOCK: opening a FIFO would otherwise wait for a writer; a regular file ignores it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| (format!("cannot read config file: {e}"), hint()))?;
    let meta = file.metadata().map_err(|e| (format!("cannot read config file: {e}"), hint()))?;
    if !meta.is_file() {
        return Err(("the config is not a regular file".into(), "point -c at the manifest file itself".into()));
    }
    if meta.len() > MAX_MANIFEST_BYTES as u64 {
        return Err((too_large_message(meta.len()), TOO_LARGE_HINT.into()));
    }
    // The file may grow while we read: never take more than the limit.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| (format!("cannot read config file: {e}"), hint()))?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err((too_large_message(bytes.len() as u64), TOO_LARGE_HINT.into()));
    }
    String::from_utf8(bytes).map_err(|e| {
        (
            format!("the config is not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()),
            "save the manifest as UTF-8".into(),
        )
    })
}

/// Parse manifest text. `env` looks up `${VAR}` (an input, so tests need no process env).
pub fn parse(path: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    validate::build(path, text, env)
}

/// Why `s` cannot be a job, service or reservation name, or None when it can. Names become
/// file names (locks, quota files), parts of `application_name` and log fields: 1 to 64 bytes of
/// `[A-Za-z0-9_.-]`, starting with a letter, digit or `_` (so never `.`, `..` or a hidden file,
/// and never something a CLI parses as a flag).
pub fn name_problem(s: &str) -> Option<String> {
    const MAX: usize = 64;
    if s.is_empty() {
        return Some("it is empty".into());
    }
    if s.len() > MAX {
        return Some(format!("it has {} bytes, at most {MAX} are allowed", s.len()));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Some(format!("{c:?} is not allowed"));
    }
    if s.starts_with(['.', '-']) {
        return Some("it must start with a letter, a digit or \"_\"".into());
    }
    None
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
    let text = read(path).ok()?;
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

    #[test]
    fn names() {
        for good in ["a", "layer1_5.v-2", "_x", "9lives", &"a".repeat(64)] {
            assert_eq!(name_problem(good), None, "{good}");
        }
        for bad in ["", ".", "..", ".hidden", "-flag", "a b", "a/b", "a\nb", "é", &"a".repeat(65), &"a".repeat(70_000)] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn load_refuses_what_is_not_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let msg = |p: &Path| load(p).unwrap_err().0[0].message.clone();
        assert!(msg(dir.path()).contains("not a regular file"));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(msg(&fifo).contains("not a regular file"), "a FIFO must not block the read");
        assert!(msg(Path::new("/dev/zero")).contains("not a regular file"));
        let big = dir.path().join("big.toml");
        std::fs::write(&big, format!("# {}\n", "x".repeat(MAX_MANIFEST_BYTES))).unwrap();
        assert!(msg(&big).contains("more than the 4 MiB"), "{}", msg(&big));
        let latin1 = dir.path().join("latin1.toml");
        std::fs::write(&latin1, b"[jobs.a]\ncommand = [\"caf\xe9\"]\n").unwrap();
        assert!(msg(&latin1).contains("not UTF-8 text (invalid byte at offset 24)"), "{}", msg(&latin1));
        let empty = dir.path().join("empty.toml");
        std::fs::write(&empty, "\n# nothing yet\n").unwrap();
        assert!(msg(&empty).contains("the manifest is empty"));
    }

    proptest::proptest! {
        /// Arbitrary text never panics the parser: it is a config or located errors.
        #[test]
        fn arbitrary_text_gives_config_or_errors(text in "\\PC{0,400}") {
            if let Err(errs) = parse(Path::new("f.toml"), &text, &env) {
                proptest::prop_assert!(!errs.0.is_empty());
            }
        }

        /// Raw bytes, as a file may hold them, never panic the loader: a config or located errors.
        #[test]
        fn raw_bytes_give_config_or_errors(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f.toml");
            std::fs::write(&path, &bytes).unwrap();
            if let Err(errs) = load(&path) {
                proptest::prop_assert!(!errs.0.is_empty());
                proptest::prop_assert!(errs.to_string().len() < 64 * 1024);
            }
        }

        /// Hostile shapes repeated up to 100,000 times (nesting, long names, nested defaults,
        /// many keys) are errors or configs, never a stack overflow or a panic.
        #[test]
        fn hostile_shapes_never_panic(
            shape in 0usize..8,
            n in proptest::prop_oneof![0usize..50, 50usize..2_000, 2_000usize..100_000],
        ) {
            let text = match shape {
                0 => format!("a = {}{}\n", "[".repeat(n), "]".repeat(n)),
                1 => format!("a = {}1{}\n", "{ b = ".repeat(n), " }".repeat(n)),
                2 => format!("[jobs.a]\ncommand = [\"x\"]\nenv = {{ X = \"{}x{}\" }}\n", "${A:-".repeat(n), "}".repeat(n)),
                3 => format!("[jobs.{}]\ncommand = [\"x\"]\n", "n".repeat(n + 1)),
                4 => (0..n.min(12_000)).map(|i| format!("[jobs.j{i}]\ncommand = [\"x\"]\nbogus{i} = 1\n")).collect(),
                5 => format!("{}= 1\n", "a.".repeat(n)),
                6 => format!("[jobs.a]\ncommand = [{}]\n", "\"x\", ".repeat(n)),
                _ => format!("[jobs.a]\ncommand = [\"x\"]\nstop_timeout = \"{}s\"\n", "9".repeat(n % 400 + 1)),
            };
            let _ = parse(Path::new("f.toml"), &text, &env);
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
            "[jobs.\"..\"]\n", "[jobs.all]\n", "reap_interval = \"1ns\"\n", "backoff = { initial = \"18446744073709551615s\" }\n",
            "healthy_after = \"99999999999h\"\n", "[jobs.a.connections]\nmax = 2\n", "env.X = \"${A:-${B:-${C:-x}}}\"\n",
        ]), 0..12)) {
            let text: String = parts.concat();
            let _ = parse(Path::new("f.toml"), &text, &env);
        }
    }
}
