//! Validation of the watchdog keys of a job (SPEC §2): `env_file`, `instances`, `depends_on`,
//! `ready`, `liveness`, `stall_after`, `memory_max`, each error at its line:col.
//!
//! Owns their messages; the types and pure checks are in `config::watch`. Reads one file:
//! the `env_file` a job names (relative to the manifest's directory).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use toml::{Spanned, Value};

use super::super::raw::{RawJob, RawProbe, Str};
use super::super::watch::{self, Check, Condition, GraphError, Instance, Probe, Watch};
use super::super::{name_problem, JobConfig};
use super::diagnostics::{did_you_mean, quote};
use super::Cx;

const MS: Duration = Duration::from_millis(1);
const DAY: Duration = Duration::from_secs(86_400);
const STALL_AFTER_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(7 * 86_400));
const PROBE_INTERVAL_RANGE: (Duration, Duration) = (Duration::from_millis(50), DAY);
const PROBE_TIMEOUT_RANGE: (Duration, Duration) = (MS, Duration::from_secs(3600));
const INITIAL_DELAY_RANGE: (Duration, Duration) = (Duration::ZERO, DAY);
const PROBE_FAILURES_MAX: i64 = 1000;
/// Less would be sampled faster than it can be measured; the sampler runs at most once a second.
const MEMORY_MIN: u64 = 1 << 20;
/// An env file larger than this is not an env file.
const ENV_FILE_MAX: u64 = 1 << 20;

type Span = Range<usize>;

/// Per job: where its `depends_on` and `instances` were written, and its instance count.
pub(super) type WatchSpans = BTreeMap<String, (Option<Span>, Option<Span>, Option<u32>)>;

impl Cx<'_> {
    /// `env_file`'s variables (applied before `env`, which overrides them).
    pub(super) fn env_file(&mut self, raw: &RawJob) -> BTreeMap<String, String> {
        let Some(v) = &raw.env_file else { return BTreeMap::new() };
        let Some(path) = self.path("env_file", v) else { return BTreeMap::new() };
        let hint = "env_file names a file of KEY=VALUE lines, relative to the manifest's directory";
        let text = match std::fs::metadata(&path) {
            Ok(m) if m.len() > ENV_FILE_MAX => {
                self.error(Some(v.span()), format!("env_file {} is larger than 1 MiB", path.display()), Some(hint.into()));
                return BTreeMap::new();
            }
            Ok(_) => std::fs::read_to_string(&path),
            Err(e) => Err(e),
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                self.error(Some(v.span()), format!("cannot read env_file {}: {e}", path.display()), Some(hint.into()));
                return BTreeMap::new();
            }
        };
        match watch::parse_env_file(&text) {
            Ok(vars) => vars.into_iter().collect(),
            Err(e) => {
                let message = format!("env_file {}:{}:{}: {}", path.display(), e.line, e.column, e.message);
                let hint = "write KEY=VALUE per line (docker/systemd syntax: quotes, `export`, # comments)";
                self.error(Some(v.span()), message, Some(hint.into()));
                BTreeMap::new()
            }
        }
    }

    pub(super) fn watch(&mut self, name: &Str, raw: &RawJob) -> (Watch, Option<u32>) {
        let stall_after = raw.stall_after.as_ref().map(|v| self.duration("stall_after", Some(v), STALL_AFTER_RANGE.0, STALL_AFTER_RANGE));
        let liveness = raw.liveness.as_ref().and_then(|p| self.probe("liveness", name, p));
        let ready = raw.ready.as_ref().and_then(|p| self.probe("ready", name, p));
        let memory_max = raw.memory_max.as_ref().and_then(|v| self.memory_max(v));
        let depends_on = raw.depends_on.as_ref().map(|v| self.depends_on(v)).unwrap_or_default();
        let instances = raw.instances.as_ref().and_then(|v| self.int("instances", v, 1, watch::MAX_INSTANCES)).map(|n| n as u32);
        (Watch { stall_after, liveness, ready, depends_on, memory_max, instance: None }, instances)
    }

    fn memory_max(&mut self, v: &Spanned<Value>) -> Option<u64> {
        let hint = "write a size like \"2GiB\", \"512MiB\" or a number of bytes";
        let bytes = match v.get_ref() {
            Value::Integer(n) if *n > 0 => Ok(*n as u64),
            Value::String(s) => watch::parse_size(s),
            other => Err(format!("found {}", other.type_str())),
        };
        match bytes {
            Ok(b) if b >= MEMORY_MIN => Some(b),
            Ok(b) => {
                self.error(Some(v.span()), format!("\"memory_max\" must be at least 1MiB, found {b} bytes"), Some(hint.into()));
                None
            }
            Err(e) => {
                self.error(Some(v.span()), format!("invalid \"memory_max\": {e}"), Some(hint.into()));
                None
            }
        }
    }

    fn depends_on(&mut self, v: &Spanned<Value>) -> BTreeMap<String, Condition> {
        let hint = "depends_on = [\"migrate\"] or { migrate = \"completed\", api = \"ready\" } (started, ready, healthy, completed)";
        let mut out = BTreeMap::new();
        match v.get_ref() {
            Value::Array(items) => {
                for item in items {
                    match item {
                        Value::String(s) => {
                            out.insert(s.clone(), Condition::Started);
                        }
                        other => self.error(Some(v.span()), format!("\"depends_on\" must hold job names, found {}", other.type_str()), Some(hint.into())),
                    }
                }
            }
            Value::Table(t) => {
                for (name, cond) in t {
                    match cond.as_str().and_then(Condition::parse) {
                        Some(c) => {
                            out.insert(name.clone(), c);
                        }
                        None => {
                            let shown = cond.as_str().map(quote).unwrap_or_else(|| cond.type_str().to_string());
                            self.error(Some(v.span()), format!("unknown condition \"{shown}\" for dependency \"{}\"", quote(name)), Some(hint.into()));
                        }
                    }
                }
            }
            other => self.error(Some(v.span()), format!("\"depends_on\" must be an array or a table, found {}", other.type_str()), Some(hint.into())),
        }
        out
    }

    fn probe(&mut self, key: &str, job: &Str, p: &RawProbe) -> Option<Probe> {
        let is_ready = key == "ready";
        let options = if is_ready { "http, tcp, command or log" } else { "http, tcp or command" };
        let hint = format!("{key} = {{ http = \"http://127.0.0.1:8000/health\" }} (exactly one of {options})");
        let given = [p.http.is_some(), p.tcp.is_some(), p.command.is_some(), p.log.is_some()].iter().filter(|g| **g).count();
        let anchor = p
            .http
            .as_ref()
            .map(|v| v.span())
            .or(p.tcp.as_ref().map(|v| v.span()))
            .or(p.command.as_ref().map(|v| v.span()))
            .or(p.log.as_ref().map(|v| v.span()))
            .unwrap_or(job.span());
        if given != 1 {
            self.error(Some(anchor), format!("\"{key}\" needs exactly one of {options}, found {given}"), Some(hint));
            return None;
        }
        let check = if let Some(v) = &p.http {
            let s = self.string(key, v)?;
            match parse_http(&s) {
                Ok((host, port, path)) => Check::Http { host, port, path },
                Err(e) => {
                    self.error(Some(v.span()), format!("invalid {key} http url \"{}\": {e}", quote(&s)), Some("write it as http://host:port/path (https: use a command probe with curl)".into()));
                    return None;
                }
            }
        } else if let Some(v) = &p.tcp {
            let s = self.string(key, v)?;
            match parse_host_port(&s) {
                Ok((host, port)) => Check::Tcp { host, port },
                Err(e) => {
                    self.error(Some(v.span()), format!("invalid {key} tcp address \"{}\": {e}", quote(&s)), Some("write it as \"host:port\", like \"127.0.0.1:5432\"".into()));
                    return None;
                }
            }
        } else if let Some(v) = &p.command {
            let argv = self.command(v);
            if argv.is_empty() {
                return None;
            }
            Check::Command(argv)
        } else if let Some(v) = &p.log {
            if !is_ready {
                self.error(Some(v.span()), "\"log\" is a ready probe only (a liveness probe must be able to fail)", Some("use it under ready = { log = \"...\" }, or use stall_after".into()));
                return None;
            }
            let s = self.string(key, v)?;
            if let Err(e) = regex::Regex::new(&s) {
                let first = e.to_string().lines().last().unwrap_or("").trim().to_string();
                self.error(Some(v.span()), format!("invalid {key} log regex \"{}\": {first}", quote(&s)), Some("the regex syntax of the `regex` crate (like Rust, RE2)".into()));
                return None;
            }
            Check::Log(s)
        } else {
            return None;
        };
        if !is_ready && p.initial_delay.is_none() {
            // fine: default
        }
        if is_ready && p.initial_delay.is_some() {
            if let Some(v) = &p.initial_delay {
                self.error(Some(v.span()), "\"initial_delay\" is for liveness probes; a ready probe starts with the process", None);
            }
        }
        let default_interval = if is_ready { watch::DEFAULT_READY_INTERVAL } else { watch::DEFAULT_PROBE_INTERVAL };
        let interval = self.duration("interval", p.interval.as_ref(), default_interval, PROBE_INTERVAL_RANGE);
        let timeout = self.duration("timeout", p.timeout.as_ref(), watch::DEFAULT_PROBE_TIMEOUT.min(interval.max(MS)), PROBE_TIMEOUT_RANGE);
        let failures = p.failures.as_ref().and_then(|v| self.int("failures", v, 1, PROBE_FAILURES_MAX)).map_or(watch::DEFAULT_PROBE_FAILURES, |n| n as u32);
        let initial_delay = self.duration("initial_delay", p.initial_delay.as_ref(), watch::DEFAULT_INITIAL_DELAY, INITIAL_DELAY_RANGE);
        Some(Probe { check, interval, timeout, failures, initial_delay })
    }

    /// After every job is read: the dependency graph (unknown names, cycles) on the names as
    /// written, then `instances` expanded into `NAME.0` .. `NAME.(N-1)`.
    pub(super) fn finish_watch(
        &mut self,
        jobs: BTreeMap<String, JobConfig>,
        spans: &WatchSpans,
    ) -> BTreeMap<String, JobConfig> {
        let graph: BTreeMap<String, BTreeSet<String>> =
            jobs.iter().map(|(n, j)| (n.clone(), j.watch.depends_on.keys().cloned().collect())).collect();
        for e in watch::check_graph(&graph) {
            match e {
                GraphError::Unknown { job, name } => {
                    let span = spans.get(&job).and_then(|s| s.0.clone());
                    let known: Vec<&str> = jobs.keys().map(String::as_str).filter(|k| *k != job).collect();
                    let hint = match did_you_mean(&name, &known) {
                        Some(s) => format!("did you mean \"{s}\"?"),
                        None => format!("depend on one of the jobs in this file: {}", known.join(", ")),
                    };
                    self.error(span, format!("job \"{}\" depends on \"{}\", which is not a job", quote(&job), quote(&name)), Some(hint));
                }
                GraphError::Cycle { job, path } => {
                    let span = spans.get(&job).and_then(|s| s.0.clone());
                    let message = format!("dependency cycle: {}", path.join(" -> "));
                    self.error(span, message, Some("remove one of these depends_on entries: jobs start only after what they depend on".into()));
                }
            }
        }
        let mut out = BTreeMap::new();
        let mut copies = Vec::new();
        for (name, job) in jobs {
            match spans.get(&name).and_then(|s| s.2) {
                Some(n) => copies.push((name, job, n)),
                None => {
                    out.insert(name, job);
                }
            }
        }
        for (base, job, n) in copies {
            let span = spans.get(&base).and_then(|s| s.1.clone());
            for i in 0..n {
                let name = watch::instance_name(&base, i);
                if let Some(problem) = name_problem(&name) {
                    self.error(span.clone(), format!("instance name \"{name}\" is invalid: {problem}"), Some("shorten the job name".into()));
                    break;
                }
                if out.contains_key(&name) {
                    self.error(span.clone(), format!("instance \"{name}\" of job \"{base}\" has the name of another job"), Some("rename one of them".into()));
                    break;
                }
                let mut copy = job.clone();
                copy.name = name.clone();
                copy.env.insert("CORRAL_INSTANCE".into(), i.to_string());
                copy.watch.instance = Some(Instance { base: base.clone(), index: i });
                out.insert(name, copy);
            }
        }
        out
    }
}

/// `http://host[:port][/path]` → (host, port, path).
fn parse_http(s: &str) -> Result<(String, u16, String), String> {
    let rest = s.strip_prefix("http://").ok_or_else(|| "only http:// urls are probed".to_string())?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return Err("credentials in a probe url are not supported".into());
    }
    let (host, port) = if authority.contains(':') { parse_host_port(authority)? } else { (authority.to_string(), 80) };
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok((host, port, path))
}

fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or("unclosed [")?;
        (&rest[..end], rest[end + 1..].strip_prefix(':').ok_or("no port")?)
    } else {
        s.rsplit_once(':').ok_or("no port")?
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port: u16 = port.parse().map_err(|_| format!("invalid port {port:?}"))?;
    if port == 0 {
        return Err("port 0".into());
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Config, ConfigError};
    use std::path::Path;

    fn build(dir: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
        parse(&dir.join("supervisor.toml"), text, &|_| None).map_err(|e| e.0)
    }

    fn one_error(text: &str) -> ConfigError {
        let dir = tempfile::tempdir().unwrap();
        let errs = build(dir.path(), text).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:#?}");
        errs.into_iter().next().unwrap()
    }

    #[test]
    fn env_file_is_read_relative_to_the_manifest_and_env_overrides_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".env"), "export A=from_file\nB='kept # here'\n# c\n").unwrap();
        let c = build(dir.path(), "[jobs.w]\ncommand = [\"x\"]\nenv_file = \".env\"\nenv = { A = \"from_env\" }\n").unwrap();
        let env = &c.jobs["w"].env;
        assert_eq!(env["A"], "from_env");
        assert_eq!(env["B"], "kept # here");
        std::fs::write(dir.path().join(".env"), "A=1\nbroken line\n").unwrap();
        let e = build(dir.path(), "[jobs.w]\ncommand = [\"x\"]\nenv_file = \".env\"\n").unwrap_err();
        assert_eq!((e[0].line, e[0].column), (3, 12), "{e:?}");
        assert!(e[0].message.contains(".env:2:1: expected KEY=VALUE"), "{}", e[0].message);
        let e = build(dir.path(), "[jobs.w]\ncommand = [\"x\"]\nenv_file = \"missing.env\"\n").unwrap_err();
        assert!(e[0].message.starts_with("cannot read env_file"), "{}", e[0].message);
    }

    #[test]
    fn probes_and_limits_parse() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"
[jobs.api]
command = ["api"]
ready = { http = "http://127.0.0.1:8000/health", interval = "200ms" }
liveness = { command = ["check"], interval = "1s", timeout = "500ms", failures = 2, initial_delay = "3s" }
stall_after = "10m"
memory_max = "2GiB"
[jobs.web]
command = ["web"]
depends_on = { api = "ready", migrate = "completed" }
instances = 3
ready = { log = "listening on \\d+" }
[jobs.migrate]
command = ["migrate"]
[jobs.tcp]
command = ["x"]
depends_on = ["web"]
liveness = { tcp = "127.0.0.1:5432" }
"#;
        let c = build(dir.path(), text).unwrap();
        let api = &c.jobs["api"].watch;
        assert_eq!(api.stall_after, Some(Duration::from_secs(600)));
        assert_eq!(api.memory_max, Some(2 << 30));
        let l = api.liveness.as_ref().unwrap();
        assert_eq!((l.interval, l.timeout, l.failures, l.initial_delay), (Duration::from_secs(1), Duration::from_millis(500), 2, Duration::from_secs(3)));
        assert_eq!(l.check, Check::Command(vec!["check".into()]));
        assert_eq!(api.ready.as_ref().unwrap().check, Check::Http { host: "127.0.0.1".into(), port: 8000, path: "/health".into() });
        assert!(!c.jobs.contains_key("web"));
        for i in 0..3 {
            let w = &c.jobs[&format!("web.{i}")];
            assert_eq!(w.env["CORRAL_INSTANCE"], i.to_string());
            assert_eq!(w.watch.instance, Some(Instance { base: "web".into(), index: i }));
            assert_eq!(w.watch.depends_on["migrate"], Condition::Completed);
        }
        assert_eq!(c.jobs["tcp"].watch.depends_on["web"], Condition::Started);
    }

    #[test]
    fn dependency_errors_point_at_depends_on() {
        let e = one_error("[jobs.a]\ncommand = [\"x\"]\ndepends_on = [\"bb\"]\n[jobs.b]\ncommand = [\"x\"]\n");
        assert_eq!((e.line, e.column), (3, 14));
        assert!(e.message.contains("depends on \"bb\", which is not a job"), "{}", e.message);
        assert_eq!(e.hint.as_deref(), Some("did you mean \"b\"?"));
        let e = one_error("[jobs.a]\ncommand = [\"x\"]\ndepends_on = [\"b\"]\n[jobs.b]\ncommand = [\"x\"]\ndepends_on = { a = \"ready\" }\n");
        assert_eq!((e.line, e.column), (3, 14));
        assert_eq!(e.message, "dependency cycle: a -> b -> a");
        let e = one_error("[jobs.a]\ncommand = [\"x\"]\ndepends_on = { a = \"done\" }\n");
        assert!(e.message.starts_with("unknown condition \"done\""), "{}", e.message);
    }

    #[test]
    fn probe_errors() {
        let e = one_error("[jobs.a]\ncommand = [\"x\"]\nliveness = { log = \"x\" }\n");
        assert!(e.message.starts_with("\"log\" is a ready probe only"), "{}", e.message);
        let e = one_error("[jobs.a]\ncommand = [\"x\"]\nready = { http = \"http://h:1/\", tcp = \"h:1\" }\n");
        assert!(e.message.starts_with("\"ready\" needs exactly one of"), "{}", e.message);
        let e = one_error("[jobs.a]\ncommand = [\"x\"]\nready = { tcp = \"nohost\" }\n");
        assert_eq!((e.line, e.column), (3, 17));
        let e = one_error("[jobs.a]\ncommand = [\"x\"]\nready = { log = \"(unclosed\" }\n");
        assert!(e.message.starts_with("invalid ready log regex"), "{}", e.message);
        let e = one_error("[jobs.a]\ncommand = [\"x\"]\nmemory_max = \"2 parsecs\"\n");
        assert_eq!((e.line, e.column), (3, 14));
        let e = one_error("[jobs.a]\ncommand = [\"x\"]\nliveness = { tcp = \"h:1\", bogus = 1 }\n");
        assert!(e.message.contains("bogus"), "{}", e.message);
        let e = one_error("[jobs.a]\ncommand = [\"x\"]\ninstances = 0\n");
        assert!(e.message.contains("instances"), "{}", e.message);
        let e = one_error("[jobs.a]\ncommand = [\"x\"]\ninstances = 2\n[jobs.\"a.1\"]\ncommand = [\"x\"]\n");
        assert!(e.message.contains("has the name of another job"), "{}", e.message);
    }

    #[test]
    fn probe_urls() {
        assert_eq!(parse_http("http://127.0.0.1:8000/health"), Ok(("127.0.0.1".into(), 8000, "/health".into())));
        assert_eq!(parse_http("http://localhost"), Ok(("localhost".into(), 80, "/".into())));
        assert!(parse_http("https://x/").is_err());
        assert_eq!(parse_host_port("[::1]:5432"), Ok(("::1".into(), 5432)));
        assert!(parse_host_port("host").is_err());
        assert!(parse_host_port("host:0").is_err());
    }
}
