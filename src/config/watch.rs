//! The watchdog keys of a job (SPEC §2): `env_file`, `instances`, `depends_on`, `ready`,
//! `liveness`, `stall_after`, `memory_max`, typed, plus the pure pieces of their validation
//! (the env-file syntax, memory sizes, the dependency graph, instance names).
//!
//! Owns the meaning of these keys; `validate::watchdog` turns their raw form into these types
//! with line:col errors. Nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// What a dependency must reach before its dependent starts (SPEC §2 `depends_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Condition {
    /// Its process was spawned (or it already ran and exited).
    Started,
    /// Its `ready` probe passed (without one: `healthy_after` passed).
    Ready,
    /// Running past `healthy_after`, ready, and its liveness probe not failing.
    Healthy,
    /// It exited with a success code (a one-shot like migrations).
    Completed,
}

impl Condition {
    pub const ALL: [Condition; 4] = [Condition::Started, Condition::Ready, Condition::Healthy, Condition::Completed];

    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Started => "started",
            Condition::Ready => "ready",
            Condition::Healthy => "healthy",
            Condition::Completed => "completed",
        }
    }

    pub fn parse(s: &str) -> Option<Condition> {
        Condition::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `http://host:port/path`: a 2xx answer passes.
    Http { host: String, port: u16, path: String },
    /// `host:port`: a connection that opens passes.
    Tcp { host: String, port: u16 },
    /// argv, spawned like a job (own process group, reaped by corral): exit 0 passes.
    Command(Vec<String>),
    /// `ready` only: a line of the job's output matching the regex.
    Log(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that count (liveness: restart; ready: not ready).
    pub failures: u32,
    /// Liveness only: no probe before the process is this old.
    pub initial_delay: Duration,
}

/// Defaults of probe settings.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_READY_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_PROBE_FAILURES: u32 = 3;
pub const DEFAULT_INITIAL_DELAY: Duration = Duration::ZERO;

/// The watchdog settings of one job (one instance, after `instances` is expanded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watch {
    pub stall_after: Option<Duration>,
    pub liveness: Option<Probe>,
    pub ready: Option<Probe>,
    /// Dependencies by job name as written (a job with `instances` stands for all of them),
    /// in name order.
    pub depends_on: BTreeMap<String, Condition>,
    /// Bytes of RSS of the job's whole process tree.
    pub memory_max: Option<u64>,
    /// `instances = N`: this is copy `index` of `base` (named `base.index`).
    pub instance: Option<Instance>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub base: String,
    pub index: u32,
}

impl Watch {
    /// Whether this job needs a watch task at all (the idle cost of a job without any is zero).
    pub fn needs_task(&self) -> bool {
        self.stall_after.is_some() || self.liveness.is_some() || self.ready.is_some() || self.memory_max.is_some()
    }
}

/// The name of copy `i` of `base`.
pub fn instance_name(base: &str, i: u32) -> String {
    format!("{base}.{i}")
}

pub const MAX_INSTANCES: i64 = 1000;

// ---- env_file (docker / systemd EnvironmentFile syntax) ----

/// A problem in an env file: 1-based line and column in that file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFileError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parse `KEY=VALUE` lines: blank lines and `#` comments are skipped, `export KEY=VALUE` is
/// accepted, values may be single-quoted (literal), double-quoted (`\"`, `\\`, `\n`, `\t`,
/// `\$` escapes; may span lines) or bare (trailing ` #comment` and surrounding blanks cut).
/// No `${VAR}` expansion: the values are taken as written, as docker's `--env-file` and
/// systemd's `EnvironmentFile=` take them.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    let mut i = 0;
    while i < lines.len() {
        let lineno = i + 1;
        let raw = lines[i].strip_suffix('\r').unwrap_or(lines[i]);
        i += 1;
        let line = raw.trim_start();
        let indent = raw.len() - line.len();
        if line.trim().is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (line, indent) = match line.strip_prefix("export") {
            Some(rest) if rest.starts_with([' ', '\t']) => {
                let t = rest.trim_start();
                (t, indent + line.len() - t.len())
            }
            _ => (line, indent),
        };
        let err = |column: usize, message: String| EnvFileError { line: lineno, column, message };
        let Some(eq) = line.find('=') else {
            return Err(err(indent + 1, format!("expected KEY=VALUE, found {:?}", line.trim_end())));
        };
        let key = line[..eq].trim_end();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') || key.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(err(indent + 1, format!("invalid variable name {key:?} (letters, digits and \"_\", not starting with a digit)")));
        }
        let rest = line[eq + 1..].trim_start();
        let vcol = indent + line.len() - rest.len() + 1;
        let value = if let Some(body) = rest.strip_prefix('\'') {
            let mut acc = String::new();
            let mut cur = body;
            loop {
                if let Some(end) = cur.find('\'') {
                    acc.push_str(&cur[..end]);
                    check_after_quote(&cur[end + 1..]).map_err(|m| err(vcol, m))?;
                    break;
                }
                acc.push_str(cur);
                if i >= lines.len() {
                    return Err(err(vcol, "unterminated single quote".into()));
                }
                acc.push('\n');
                cur = lines[i].strip_suffix('\r').unwrap_or(lines[i]);
                i += 1;
            }
            acc
        } else if let Some(body) = rest.strip_prefix('"') {
            let mut acc = String::new();
            let mut cur = body;
            'outer: loop {
                let mut chars = cur.char_indices();
                while let Some((at, c)) = chars.next() {
                    match c {
                        '"' => {
                            check_after_quote(&cur[at + 1..]).map_err(|m| err(vcol, m))?;
                            break 'outer;
                        }
                        '\\' => match chars.next() {
                            Some((_, 'n')) => acc.push('\n'),
                            Some((_, 't')) => acc.push('\t'),
                            Some((_, 'r')) => acc.push('\r'),
                            Some((_, e @ ('"' | '\\' | '$' | '`' | '\''))) => acc.push(e),
                            Some((_, other)) => {
                                acc.push('\\');
                                acc.push(other);
                            }
                            None => {}
                        },
                        c => acc.push(c),
                    }
                }
                if i >= lines.len() {
                    return Err(err(vcol, "unterminated double quote".into()));
                }
                acc.push('\n');
                cur = lines[i].strip_suffix('\r').unwrap_or(lines[i]);
                i += 1;
            }
            acc
        } else {
            // A bare value ends at ` #` (a comment) and loses its trailing blanks.
            let cut = rest.find(" #").or_else(|| rest.find("\t#")).unwrap_or(rest.len());
            rest[..cut].trim_end().to_string()
        };
        if value.contains('\0') {
            return Err(err(vcol, "values cannot contain a NUL byte".into()));
        }
        out.push((key.to_string(), value));
    }
    Ok(out)
}

fn check_after_quote(rest: &str) -> Result<(), String> {
    let rest = rest.trim();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(())
    } else {
        Err(format!("unexpected {rest:?} after the closing quote"))
    }
}

// ---- memory sizes ----

/// `"2GiB"`, `"512MiB"`, `"1.5G"`, `"800M"`, `"64k"`, `"1000000"` (bytes). Binary units (KiB,
/// MiB, GiB, TiB) are powers of 1024; K/M/G/T alone are too, as in systemd's MemoryMax=; KB,
/// MB, GB, TB are powers of 1000.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = (&s[..split], s[split..].trim());
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        other => return Err(format!("unknown unit {other:?}")),
    };
    let bytes = n * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

// ---- the dependency graph ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphError {
    /// `job` depends on `name`, which is no job.
    Unknown { job: String, name: String },
    /// `job` is part of the cycle `path` (first == last).
    Cycle { job: String, path: Vec<String> },
}

/// Check `deps` (job → the jobs it depends on, by name as written) for unknown names and
/// cycles. Each cycle is reported once, at its smallest member. Pure.
pub fn check_graph(deps: &BTreeMap<String, BTreeSet<String>>) -> Vec<GraphError> {
    let mut errors = Vec::new();
    for (job, names) in deps {
        for name in names {
            if !deps.contains_key(name) {
                errors.push(GraphError::Unknown { job: job.clone(), name: name.clone() });
            }
        }
    }
    // Iterative DFS with colours; a back edge closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        White,
        Grey,
        Black,
    }
    let mut colour: BTreeMap<&str, Colour> = deps.keys().map(|k| (k.as_str(), Colour::White)).collect();
    let mut seen_cycles: BTreeSet<Vec<String>> = BTreeSet::new();
    for start in deps.keys() {
        if colour[start.as_str()] != Colour::White {
            continue;
        }
        let mut stack: Vec<(&str, Vec<&str>)> = vec![(start.as_str(), deps[start].iter().map(String::as_str).collect())];
        colour.insert(start.as_str(), Colour::Grey);
        while let Some((node, pending)) = stack.last_mut() {
            let node = *node;
            let Some(next) = pending.pop() else {
                colour.insert(node, Colour::Black);
                stack.pop();
                continue;
            };
            match colour.get(next).copied() {
                None | Some(Colour::Black) => {}
                Some(Colour::Grey) => {
                    let from = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                    let mut path: Vec<String> = stack[from..].iter().map(|(n, _)| n.to_string()).collect();
                    // Rotate so the smallest name leads: one report per cycle.
                    let min = path.iter().enumerate().min_by(|a, b| a.1.cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
                    path.rotate_left(min);
                    if seen_cycles.insert(path.clone()) {
                        let job = path[0].clone();
                        path.push(job.clone());
                        errors.push(GraphError::Cycle { job, path });
                    }
                }
                Some(Colour::White) => {
                    colour.insert(next, Colour::Grey);
                    let children = deps.get(next).map(|d| d.iter().map(String::as_str).collect()).unwrap_or_default();
                    stack.push((next, children));
                }
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_syntax() {
        let text = "# comment\n\nA=1\nexport B = two words # note\nC='single # kept'\nD=\"dq \\\"x\\\" \\n $E\"\n  E=\nF=\"multi\nline\"\nG=a=b\r\n; also a comment\nH='it''s'\n";
        let got = parse_env_file(text);
        // H: 'it' then 's' after the quote is an error
        assert!(got.is_err(), "{got:?}");
        let text = "# comment\n\nA=1\nexport B = two words # note\nC='single # kept'\nD=\"dq \\\"x\\\" \\n $E\"\n  E=\nF=\"multi\nline\"\nG=a=b\r\nURL=postgres://u:p@h/db?x=1#frag\n";
        let got = parse_env_file(text).unwrap();
        let want: Vec<(String, String)> = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "single # kept"),
            ("D", "dq \"x\" \n $E"),
            ("E", ""),
            ("F", "multi\nline"),
            ("G", "a=b"),
            ("URL", "postgres://u:p@h/db?x=1#frag"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn env_file_errors_have_positions() {
        assert_eq!(parse_env_file("A=1\nnot a pair\n").unwrap_err(), EnvFileError { line: 2, column: 1, message: "expected KEY=VALUE, found \"not a pair\"".into() });
        let e = parse_env_file("A=1\n  1X=2\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 3));
        let e = parse_env_file("A=\"open\nstill\n").unwrap_err();
        assert_eq!((e.line, e.column, e.message.as_str()), (1, 3, "unterminated double quote"));
        let e = parse_env_file("export  K='x' y\n").unwrap_err();
        assert_eq!((e.line, e.column), (1, 11));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 64 k "), Ok(65536));
        for bad in ["", "G", "12 parsecs", "-1G", "1..2M"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(format_size(3 << 29), "1.5 GiB");
    }

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        edges.iter().map(|(j, d)| (j.to_string(), d.iter().map(|s| s.to_string()).collect())).collect()
    }

    #[test]
    fn graph_errors() {
        assert!(check_graph(&graph(&[("web", &["api"]), ("api", &["migrate"]), ("migrate", &[])])).is_empty());
        assert_eq!(
            check_graph(&graph(&[("web", &["apii"]), ("api", &[])])),
            vec![GraphError::Unknown { job: "web".into(), name: "apii".into() }]
        );
        let e = check_graph(&graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]));
        assert_eq!(e, vec![GraphError::Cycle { job: "a".into(), path: vec!["a".into(), "b".into(), "c".into(), "a".into()] }]);
        let e = check_graph(&graph(&[("self", &["self"])]));
        assert_eq!(e, vec![GraphError::Cycle { job: "self".into(), path: vec!["self".into(), "self".into()] }]);
        // Two separate cycles, each once.
        let e = check_graph(&graph(&[("a", &["b"]), ("b", &["a"]), ("x", &["y"]), ("y", &["x"])]));
        assert_eq!(e.len(), 2, "{e:?}");
    }
}
