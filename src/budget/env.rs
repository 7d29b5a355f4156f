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
/// result must never be logged. Without a url (a budget planned offline from a
/// preset) there is no `DATABASE_URL`.
pub fn job_env(
    service: &str,
    job: &str,
    quota: u32,
    overflow_cfg: u32,
    base_url: Option<&str>,
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
    ]);
    if let Some(url) = base_url {
        env.push(("DATABASE_URL".to_string(), with_application_name(url, &app)));
    }
    env
}

/// `conninfo` with `application_name` set to `app`, replacing any existing one, everything
/// else as written (`db::conninfo`, the one reader of connection strings). The config has
/// validated the string; one that does not parse is passed on unchanged.
pub fn with_application_name(conninfo: &str, app: &str) -> String {
    match crate::db::conninfo::ConnInfo::parse(conninfo) {
        Ok(c) => c.with_application_name(app),
        Err(_) => conninfo.to_string(),
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
            Some("postgresql://u:p@db:5432/app"),
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
    fn offline_budget_has_no_database_url() {
        let env = job_env("s", "j", 3, 1, None, &BTreeMap::new());
        assert_eq!(get(&env, "CORRAL_CONN_QUOTA"), Some("3"));
        assert_eq!(get(&env, "PGAPPNAME"), Some("corral/s/j"));
        assert!(get(&env, "DATABASE_URL").is_none());
    }

    #[test]
    fn tls_settings_reach_the_job_unchanged() {
        let url = "postgres://u:p@h:5432/db?sslmode=verify-full&sslrootcert=certs/prod-ca-2021.crt";
        assert_eq!(
            with_application_name(url, "corral/s/j"),
            "postgres://u:p@h:5432/db?sslmode=verify-full&sslrootcert=certs/prod-ca-2021.crt&application_name=corral/s/j"
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
    }
}
