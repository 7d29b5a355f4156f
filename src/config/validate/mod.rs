//! From manifest text to a typed [`Config`] (SPEC §2), collecting every error.
//!
//! Owns the defaults, the meaning of each key and every error message. Works in
//! passes: TOML syntax first (nothing else can be trusted without it), then
//! each section and each job on its own via [`raw::select`], so one mistake
//! does not hide the others. A value that fails is replaced by its default and
//! checking goes on; the config is returned only when no error was found.
//! Every error has the file, line and column of the key or value at fault.
//!
//! One file per section (`supervisor`, `database`, `budget`, `http`, `alerts`, `jobs`) holding its
//! defaults, ranges and checks; one per kind of value (`durations`, `signals`, `names`,
//! `scalars`); and `diagnostics`, the one type every finding is reported as. All of them add
//! methods to [`Cx`], the state of one build; the arrows run section → value kind → diagnostics.

pub(super) mod alerts;
mod budget;
mod database;
mod diagnostics;
mod durations;
mod http;
mod jobs;
mod names;
mod scalars;
mod schedule;
mod signals;
mod supervisor;
mod watchdog;
#[cfg(test)]
mod test_support;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use diagnostics::{ConfigErrors, Diagnostic, Severity};
pub use signals::parse_signal_name;
use diagnostics::Diagnostics;

use super::raw::{self, Doc, Keys, RawBudget, RawDatabase, RawHttp, RawJob, RawSupervisor, TOP_KEYS};
use super::{Config, Scope, MAX_JOBS};

/// Total bytes all `${VAR}` expansions of one file may produce.
const MAX_EXPANDED_TOTAL: usize = 32 << 20;

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
        Some(config) if !cx.diagnostics.has_errors() => Ok(config),
        _ => Err(cx.into_errors()),
    }
}

/// The state of one build: the input and the errors found so far.
struct Cx<'a> {
    text: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Relative paths in the manifest are relative to its directory.
    base_dir: PathBuf,
    /// The parsed text (None until parsed, or when it is not TOML).
    doc: Option<Doc>,
    /// What was found so far, each with the byte offset it points at.
    diagnostics: Diagnostics,
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
            text,
            env,
            base_dir,
            doc: None,
            diagnostics: Diagnostics::new(file),
            expanded: 0,
        }
    }

    fn into_errors(self) -> ConfigErrors {
        self.diagnostics.finish(self.text)
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
                    "the top level holds [supervisor], [database], [budget], [http], [alerts] and [jobs.NAME] tables",
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

        let alerts = match self.select::<alerts::RawAlerts>(&["alerts"], anchor("alerts")) {
            Ok(Some(raw)) => self.alerts(&raw, anchor("alerts")),
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
            path: self.diagnostics.file().to_path_buf(),
            supervisor,
            database,
            budget,
            http,
            alerts,
            jobs,
        })
    }

    /// Deserialize one part of the document. `Err(())` when it is broken (the
    /// error is recorded, at `anchor` when toml gives no position).
    pub(super) fn select<T: DeserializeOwned>(&mut self, path: &[&str], anchor: Option<Span>) -> Result<Option<T>, ()> {
        let Some(doc) = &self.doc else { return Ok(None) };
        raw::select(doc, path).map_err(|e| self.toml_error(e.message(), e.span(), anchor))
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::diagnostics::MAX_ERRORS;

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
            (nix::sys::signal::Signal::SIGINT, Duration::from_secs(30))
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
        assert_eq!(job.quota_signal, Some(nix::sys::signal::Signal::SIGHUP));
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
        let e = errors(&format!("# {}\n", "x".repeat(crate::config::MAX_MANIFEST_BYTES)));
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
}
