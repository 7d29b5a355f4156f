//! What a job receives (SPEC §3): environment variables and the quota file.
//!
//! Pure string building, except [`write_quota_file`], the only I/O in the
//! budget modules. The daemon merges the result over the job's own `env`
//! (these values win, except `DB_POOL_TIMEOUT`/`DB_POOL_RECYCLE`, which are
//! taken *from* the job's `env` when set there), and adds
//! [`QUOTA_FILE_VAR`] itself because only it knows where quota files live.
//! A job without `connections` gets only [`identity_env`] (SPEC §3: none of
//! the DB variables).

use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Set by the caller to the path of the job's quota file.
pub const QUOTA_FILE_VAR: &str = "CORRAL_QUOTA_FILE";
/// Default `DB_POOL_TIMEOUT` in seconds (SQLAlchemy's `pool_timeout`).
pub const DEFAULT_POOL_TIMEOUT: &str = "30";
/// Default `DB_POOL_RECYCLE` in seconds (SQLAlchemy's `pool_recycle`).
pub const DEFAULT_POOL_RECYCLE: &str = "1800";

/// `corral/<service>/<job>`: how the job's connections are recognised in
/// `pg_stat_activity` (SPEC §3, §5).
pub fn application_name(service: &str, job: &str) -> String {
    format!("corral/{service}/{job}")
}

/// Split a quota into (pool_size, max_overflow): `pool + overflow == quota`,
/// `overflow = min(overflow_cfg, quota - 1)` so the pool keeps at least one
/// connection whenever the quota has one (a pool of size 0 would make every
/// connection a short-lived overflow one). Quota 0 gives (0, 0).
pub fn split_quota(quota: u32, overflow_cfg: u32) -> (u32, u32) {
    let overflow = overflow_cfg.min(quota.saturating_sub(1));
    (quota - overflow, overflow)
}

/// `CORRAL_JOB` and `CORRAL_SERVICE`: for every job, with or without connections.
pub fn identity_env(service: &str, job: &str) -> Vec<(String, String)> {
    vec![
        ("CORRAL_JOB".into(), job.into()),
        ("CORRAL_SERVICE".into(), service.into()),
    ]
}

/// The environment of a job with `connections` and quota `quota` (SPEC §3),
/// in a fixed order. `CORRAL_QUOTA_FILE` is not included: the caller adds it
/// (see the module docs). `base_url` is the supervisor's `[database] url` (a
/// URL or a libpq `key=value` string); it contains the password, so the
/// result must never be logged.
pub fn job_env(
    service: &str,
    job: &str,
    quota: u32,
    overflow_cfg: u32,
    base_url: &str,
    job_env: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let (pool, overflow) = split_quota(quota, overflow_cfg);
    let app = application_name(service, job);
    let from_job = |k: &str, default: &str| {
        job_env
            .get(k)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let mut env = identity_env(service, job);
    env.extend([
        ("CORRAL_CONN_QUOTA".to_string(), quota.to_string()),
        ("DB_POOL_SIZE".to_string(), pool.to_string()),
        ("DB_MAX_OVERFLOW".to_string(), overflow.to_string()),
        (
            "DB_POOL_TIMEOUT".to_string(),
            from_job("DB_POOL_TIMEOUT", DEFAULT_POOL_TIMEOUT),
        ),
        (
            "DB_POOL_RECYCLE".to_string(),
            from_job("DB_POOL_RECYCLE", DEFAULT_POOL_RECYCLE),
        ),
        ("PGAPPNAME".to_string(), app.clone()),
        (
            "DATABASE_URL".to_string(),
            with_application_name(base_url, &app),
        ),
    ]);
    env
}

/// `conninfo` with `application_name` set to `app`, replacing any existing one.
///
/// - URLs (`postgres://`, `postgresql://`, `postgresql+psycopg://`, any
///   `scheme://`): the parameter is appended to the query string (`?` or
///   `&`), existing `application_name` parameters are removed, others keep
///   their order. The value is percent-encoded except unreserved characters
///   and `/`, which is legal in a query and which libpq, psycopg,
///   SQLAlchemy and asyncpg all accept unencoded — so the common case stays
///   readable: `application_name=corral/scraper/layer1_5`. The query is
///   located the way libpq does: after the userinfo (text up to the first
///   `@` that comes before any `/`), so an unencoded `?` in a password does
///   not confuse us.
/// - libpq `key=value` strings (`host=/tmp port=5432 dbname=x`): the
///   existing `application_name` entry is removed and
///   `application_name=...` appended, single-quoted when needed. If the
///   string cannot be tokenised it is left as is and the setting appended:
///   libpq lets a later keyword override an earlier one.
pub fn with_application_name(conninfo: &str, app: &str) -> String {
    if is_url(conninfo) {
        url_with_param(conninfo, app)
    } else {
        dsn_with_param(conninfo, app)
    }
}

fn is_url(s: &str) -> bool {
    let s = s.trim_start();
    match s.find("://") {
        Some(i) if i > 0 => {
            let scheme = &s[..i];
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        _ => false,
    }
}

fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn url_with_param(url: &str, app: &str) -> String {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    // Userinfo ends at the first '@' if it comes before any '/'.
    let rest = &url[after_scheme..];
    let host_start = match rest.find(['@', '/']) {
        Some(i) if rest.as_bytes()[i] == b'@' => after_scheme + i + 1,
        _ => after_scheme,
    };
    let param = format!("application_name={}", encode_query_value(app));
    let (head, query) = match url[host_start..].find('?') {
        Some(i) => (&url[..host_start + i], Some(&url[host_start + i + 1..])),
        None => (url, None),
    };
    let mut parts: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter(|kv| {
            let key = kv.split('=').next().unwrap_or("");
            !key.eq_ignore_ascii_case("application_name")
                && !key.eq_ignore_ascii_case("application%5Fname")
        })
        .collect();
    parts.push(&param);
    format!("{head}?{}", parts.join("&"))
}

/// One `key = value` entry of a libpq connection string, by byte range.
struct DsnEntry {
    key: String,
    start: usize,
    end: usize,
}

/// Tokenise a libpq key/value connection string (keywords, optional spaces
/// around `=`, values bare or single-quoted with `\'` and `\\` escapes).
/// Returns None when it is not well formed.
fn dsn_entries(s: &str) -> Option<Vec<DsnEntry>> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() {
            return Some(out);
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = &s[start..i];
        if key.is_empty() {
            return None;
        }
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() || b[i] != b'=' {
            return None;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i) {
                    None => return None,
                    Some(b'\\') => i += 2,
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
            if i > b.len() {
                return None;
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i = i.min(b.len());
        }
        out.push(DsnEntry {
            key: key.to_string(),
            start,
            end: i,
        });
    }
}

fn dsn_quote(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return v.to_string();
    }
    let mut out = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

fn dsn_with_param(dsn: &str, app: &str) -> String {
    let setting = format!("application_name={}", dsn_quote(app));
    let kept: String = match dsn_entries(dsn) {
        Some(entries) => entries
            .iter()
            .filter(|e| e.key != "application_name")
            .map(|e| &dsn[e.start..e.end])
            .collect::<Vec<_>>()
            .join(" "),
        None => dsn.trim().to_string(),
    };
    if kept.is_empty() {
        setting
    } else {
        format!("{kept} {setting}")
    }
}

/// The quota file's content (SPEC §3 `CORRAL_QUOTA_FILE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaFile {
    pub job: String,
    pub service: String,
    /// `CORRAL_CONN_QUOTA`: pool_size + max_overflow.
    pub quota: u32,
    pub pool_size: u32,
    pub max_overflow: u32,
    /// Increases with every rewrite, so a job can tell a new quota from a
    /// re-read of the same one.
    pub generation: u64,
}

/// JSON for the quota file, one line with a trailing newline; split exactly
/// as in [`job_env`].
pub fn quota_json(
    service: &str,
    job: &str,
    quota: u32,
    overflow_cfg: u32,
    generation: u64,
) -> String {
    let (pool_size, max_overflow) = split_quota(quota, overflow_cfg);
    let q = QuotaFile {
        job: job.into(),
        service: service.into(),
        quota,
        pool_size,
        max_overflow,
        generation,
    };
    // Cannot fail: strings and integers only (serde_json fails on non-string map keys or a
    // Serialize impl's own error, and this struct has neither).
    let mut s = serde_json::to_string(&q).unwrap_or_default();
    s.push('\n');
    s
}

/// Replace `path` with `json` atomically: write a temporary file in the same
/// directory (same filesystem, so the rename is atomic) and rename it over
/// `path`. A job reading the file sees the old or the new content, never a
/// partial one. No fsync: the file describes the running supervisor's state
/// and is rewritten at every start, so durability across a power loss is not
/// needed. Blocking: call from a blocking context (e.g. `spawn_blocking`).
pub fn write_quota_file(path: &Path, json: &str) -> io::Result<()> {
    write_quota_file_owned(path, json, None)
}

/// [`write_quota_file`] with the file mode 0600 (SPEC §10: no access for others), owned by
/// `owner` (uid, gid) when given: a job running as another `user` can read its own file.
pub fn write_quota_file_owned(path: &Path, json: &str, owner: Option<(u32, u32)>) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "quota file path has no file name",
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.write_all(json.as_bytes())?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn full_env() {
        let mut je = BTreeMap::new();
        je.insert("DB_POOL_RECYCLE".to_string(), "600".to_string());
        let env = job_env(
            "scraper",
            "layer1_5",
            12,
            5,
            "postgresql://u:p@db:5432/app",
            &je,
        );
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "CORRAL_JOB",
                "CORRAL_SERVICE",
                "CORRAL_CONN_QUOTA",
                "DB_POOL_SIZE",
                "DB_MAX_OVERFLOW",
                "DB_POOL_TIMEOUT",
                "DB_POOL_RECYCLE",
                "PGAPPNAME",
                "DATABASE_URL"
            ]
        );
        assert_eq!(get(&env, "CORRAL_JOB"), Some("layer1_5"));
        assert_eq!(get(&env, "CORRAL_SERVICE"), Some("scraper"));
        assert_eq!(get(&env, "CORRAL_CONN_QUOTA"), Some("12"));
        assert_eq!(get(&env, "DB_POOL_SIZE"), Some("7"));
        assert_eq!(get(&env, "DB_MAX_OVERFLOW"), Some("5"));
        assert_eq!(get(&env, "DB_POOL_TIMEOUT"), Some("30"));
        assert_eq!(get(&env, "DB_POOL_RECYCLE"), Some("600"));
        assert_eq!(get(&env, "PGAPPNAME"), Some("corral/scraper/layer1_5"));
        assert_eq!(
            get(&env, "DATABASE_URL"),
            Some("postgresql://u:p@db:5432/app?application_name=corral/scraper/layer1_5")
        );
        assert!(get(&env, QUOTA_FILE_VAR).is_none(), "added by the caller");
    }

    #[test]
    fn split() {
        assert_eq!(split_quota(0, 5), (0, 0));
        assert_eq!(split_quota(1, 5), (1, 0));
        assert_eq!(split_quota(3, 5), (1, 2));
        assert_eq!(split_quota(12, 5), (7, 5));
        assert_eq!(split_quota(5, 0), (5, 0));
    }

    #[test]
    fn url_forms() {
        let app = "corral/s/j";
        let cases = [
            (
                "postgres://h/db",
                "postgres://h/db?application_name=corral/s/j",
            ),
            ("postgres://h", "postgres://h?application_name=corral/s/j"),
            (
                "postgresql://u:p@h:6543/db?sslmode=require",
                "postgresql://u:p@h:6543/db?sslmode=require&application_name=corral/s/j",
            ),
            (
                "postgresql://h/db?application_name=old&sslmode=require",
                "postgresql://h/db?sslmode=require&application_name=corral/s/j",
            ),
            (
                "postgresql://h/db?APPLICATION_NAME=x",
                "postgresql://h/db?application_name=corral/s/j",
            ),
            (
                "postgresql://h/db?",
                "postgresql://h/db?application_name=corral/s/j",
            ),
            (
                "postgresql://h/db?a=1&&b=2",
                "postgresql://h/db?a=1&b=2&application_name=corral/s/j",
            ),
            (
                "postgresql+psycopg://u:p@h/db",
                "postgresql+psycopg://u:p@h/db?application_name=corral/s/j",
            ),
            // An unencoded '?' in the password is part of the userinfo (as libpq reads it).
            (
                "postgres://u:pa?ss@h/db",
                "postgres://u:pa?ss@h/db?application_name=corral/s/j",
            ),
            (
                "postgres://u:pa?ss@h/db?x=1",
                "postgres://u:pa?ss@h/db?x=1&application_name=corral/s/j",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(with_application_name(input, app), want, "{input}");
        }
        assert_eq!(
            with_application_name("postgres://h/db", "corral/a b/j&k"),
            "postgres://h/db?application_name=corral/a%20b/j%26k"
        );
    }

    #[test]
    fn dsn_forms() {
        let app = "corral/s/j";
        let cases = [
            (
                "host=/tmp port=5432 dbname=x",
                "host=/tmp port=5432 dbname=x application_name=corral/s/j",
            ),
            ("", "application_name=corral/s/j"),
            (
                "host=h application_name=old dbname=x",
                "host=h dbname=x application_name=corral/s/j",
            ),
            (
                "host=h application_name = 'my app' dbname=x",
                "host=h dbname=x application_name=corral/s/j",
            ),
            (
                "password='a b\\' c' host = h",
                "password='a b\\' c' host = h application_name=corral/s/j",
            ),
            // Malformed: left alone, our setting appended (libpq: last one wins).
            (
                "host=h 'broken",
                "host=h 'broken application_name=corral/s/j",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(with_application_name(input, app), want, "{input}");
        }
        assert_eq!(
            with_application_name("host=h", "corral/a b/j"),
            "host=h application_name='corral/a b/j'"
        );
    }

    #[test]
    fn quota_json_fields() {
        let s = quota_json("scraper", "layer1_5", 12, 5, 7);
        assert!(s.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"job": "layer1_5", "service": "scraper", "quota": 12, "pool_size": 7, "max_overflow": 5, "generation": 7})
        );
    }

    #[test]
    fn quota_file_is_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layer1_5.json");
        write_quota_file(&path, &quota_json("s", "j", 3, 1, 1)).unwrap();
        write_quota_file(&path, &quota_json("s", "j", 5, 1, 2)).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["quota"], 5);
        assert_eq!(v["generation"], 2);
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("layer1_5.json")]);
        // A missing directory is an error, and leaves nothing behind.
        assert!(write_quota_file(&dir.path().join("nope/x.json"), "{}").is_err());
    }

    proptest! {
        #[test]
        fn split_sums_to_quota(quota in 0u32..10_000, overflow in 0u32..10_000) {
            let (pool, over) = split_quota(quota, overflow);
            prop_assert_eq!(pool + over, quota);
            prop_assert!(over <= overflow);
            if quota >= 1 { prop_assert!(pool >= 1); }
        }

        #[test]
        fn url_gets_exactly_one_application_name(
            host in "[a-z]{1,8}", db in "[a-z]{0,6}",
            params in proptest::collection::vec(("[a-z_]{1,16}", "[a-z0-9]{0,5}"), 0..4),
            svc in "[a-z0-9_-]{1,8}", job in "[a-z0-9_.-]{1,8}",
        ) {
            let mut url = format!("postgresql://user:pw@{host}/{db}");
            if !params.is_empty() {
                url.push('?');
                url.push_str(&params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"));
            }
            let app = application_name(&svc, &job);
            let out = with_application_name(&url, &app);
            let (_, query) = out.split_once('?').unwrap();
            let pairs: Vec<(&str, &str)> = query.split('&').map(|kv| kv.split_once('=').unwrap_or((kv, ""))).collect();
            let apps: Vec<&str> = pairs.iter().filter(|(k, _)| *k == "application_name").map(|(_, v)| *v).collect();
            prop_assert_eq!(apps, vec![app.as_str()]);
            // Other parameters kept, in order.
            let others: Vec<(String, String)> = params.iter().filter(|(k, _)| k != "application_name").cloned().collect();
            let kept: Vec<(String, String)> = pairs.iter().filter(|(k, _)| *k != "application_name").map(|(k, v)| (k.to_string(), v.to_string())).collect();
            prop_assert_eq!(kept, others);
            // Idempotent.
            prop_assert_eq!(with_application_name(&out, &app), out.clone());
        }

        #[test]
        fn dsn_gets_exactly_one_application_name(
            entries in proptest::collection::vec(("[a-z_]{1,16}", "[a-z0-9/]{1,6}"), 0..4),
            svc in "[a-z0-9_-]{1,8}", job in "[a-z0-9_.-]{1,8}",
        ) {
            let dsn = entries.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
            let app = application_name(&svc, &job);
            let out = with_application_name(&dsn, &app);
            let parsed = dsn_entries(&out).unwrap();
            let apps: Vec<&str> = parsed.iter().filter(|e| e.key == "application_name").map(|e| &out[e.start..e.end]).collect();
            let want = format!("application_name={app}");
            prop_assert_eq!(apps, vec![want.as_str()]);
            prop_assert_eq!(with_application_name(&out, &app), out.clone());
        }
    }
}
