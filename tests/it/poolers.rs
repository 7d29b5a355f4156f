//! Limits that know the pooler (SPEC §5.1): a real PgBouncer started by the test in session
//! and transaction mode, its admin console read by corral, real SQLAlchemy workers through
//! it; Supavisor recognised from its host and port.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::budget::worker;
use crate::harness::{bin, poll, setup, stderr, stdout, Corral, SEC};
use crate::pg::TestPg;
use crate::pgbouncer::{Pool, TestPgBouncer};

fn budget(c: &Corral) -> Value {
    serde_json::from_slice(&c.ctl(&["budget", "--json"]).stdout).unwrap_or(Value::Null)
}

fn check(config: &std::path::Path, online: bool) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("check");
    if online {
        cmd.arg("--online");
    }
    let out = cmd.arg("-c").arg(config).output().unwrap();
    (out.status.code(), format!("{}{}", stdout(&out), stderr(&out)))
}

fn require_python() {
    let ok = Command::new("python3").args(["-c", "import sqlalchemy, psycopg2"]).status().is_ok_and(|s| s.success());
    assert!(ok, "python3 with sqlalchemy and psycopg2 is needed: pip install sqlalchemy psycopg2-binary");
}

/// How long the SQLAlchemy workers run: 20 s in the suite, `CORRAL_TEST_POOLER_SECS` to
/// measure longer (the figure is 40 s).
fn run_for() -> Duration {
    Duration::from_secs(std::env::var("CORRAL_TEST_POOLER_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20))
}

fn busy_jobs(n: usize, extra: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    (1..=n)
        .map(|i| {
            format!(
                "[jobs.s{i}]\ncommand = [\"python3\", \"{root}/examples/python/sqlalchemy_busy_scraper.py\"]\n\
                 env = {{ PYTHONUNBUFFERED = \"1\", DB_POOL_TIMEOUT = \"5\" }}\nconnections = {{ min = 1, max = 4, overflow = 1 }}\n\
                 quota_signal = \"SIGHUP\"\non_duplicate = \"ignore\"\nsingle_instance = false\n{extra}\n"
            )
        })
        .collect()
}

#[test]
fn six_sqlalchemy_workers_behind_a_pgbouncer_session_pool_of_15_get_no_pooler_errors() {
    require_python();
    // The stand-in: the server allows 57, PgBouncer's session pool 15 clients.
    let pg = TestPg::start_local(60);
    // One client slot more than the pool: the admin console is a PgBouncer client too.
    let pgb = TestPgBouncer::start(&pg, Pool { mode: "session", pool_size: 15, max_client_conn: 16 });
    let manifest = format!(
        "[database]\nurl = \"{url}\"\npooler_admin_url = \"{admin}\"\nprovider_reserve = 0\nadhoc_reserve = 1\n\
         health_interval = \"2s\"\nhealth_timeout = \"5s\"\n\n[budget]\nservice = \"scr\"\nrebalance_interval = \"1s\"\n\n{jobs}",
        url = pgb.url(),
        admin = pgb.admin_url(),
        jobs = busy_jobs(6, ""),
    );
    let (_d, config, _s) = setup(&manifest);
    // Offline the pool size is not known yet: check says it is read at startup.
    let (code, text) = check(&config, false);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("PgBouncer"), "{text}");
    // Online: the pool size binds, read from the admin console.
    let (code, text) = check(&config, true);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("limit              15  (session pooler pool_size)"), "{text}");
    assert!(text.contains("pooler  PgBouncer session mode, pool_size 15, max_client_conn 16"), "{text}");
    assert!(text.contains("usable for jobs    13"), "{text}");

    let c = Corral::start(&manifest);
    for i in 1..=6 {
        c.wait_state(&format!("s{i}"), "running", 30 * SEC);
    }
    let started = Instant::now();
    let mut samples = 0;
    let mut measured_all = false;
    let mut peak_granted = 0;
    while started.elapsed() < run_for() {
        let b = budget(&c);
        assert_eq!(b["limit"], 15, "{b}");
        assert_eq!(b["limit_reason"], "session pooler pool_size", "{b}");
        let granted = b["granted"].as_u64().unwrap_or(99);
        assert!(granted <= 13, "granted {granted} > usable 13: {b}");
        peak_granted = peak_granted.max(granted);
        // Live use per job, measured through PgBouncer (SHOW CLIENTS by application_name).
        let jobs = b["jobs"].as_array().cloned().unwrap_or_default();
        if jobs.len() == 6 && jobs.iter().all(|j| j["connections"].as_u64().unwrap_or(0) >= 1) {
            measured_all = true;
        }
        samples += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = c.output();
    let errors = out.lines().filter(|l| l.contains("item failed")).count();
    let refused = out.matches("no more connections allowed").count();
    let processed: u64 = out
        .lines()
        .filter_map(|l| l.split("processed ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    eprintln!(
        "pgbouncer session pool 15: 6 SQLAlchemy workers for {:?}: {errors} failed items, {refused} refusals, peak granted {peak_granted}/13, {samples} samples; live per job: {}",
        run_for(),
        budget(&c)["jobs"].as_array().map(|j| j.iter().map(|j| format!("{}={}", j["name"].as_str().unwrap_or("?"), j["connections"])).collect::<Vec<_>>().join(" ")).unwrap_or_default()
    );
    assert_eq!((errors, refused), (0, 0), "pooler errors\n{out}");
    assert!(processed > 0, "nothing processed\n{out}");
    assert!(measured_all, "live use per job was never measured through PgBouncer: {}", budget(&c));
    // The ad-hoc reserve holds: psql through the pooler gets in while the workers run.
    let psql = crate::pg::find_bindir().map(|b| b.join("psql")).unwrap_or_else(|| "psql".into());
    let got_in = (0..20)
        .filter(|_| Command::new(&psql).args(["-X", "-q", "-A", "-t", "-d", &pgb.url(), "-c", "SELECT 1"]).output().is_ok_and(|o| o.status.success()))
        .count();
    eprintln!("psql through the pooler while the workers run: {got_in}/20");
    assert_eq!(got_in, 20, "{}", pgb.log());
    let status = stdout(&c.ctl(&["status"]));
    assert!(status.contains("budget: limit 15 (session pooler pool_size)"), "{status}");
}

#[test]
fn a_transaction_pooler_binds_at_its_client_limit_and_still_measures_each_job() {
    let pg = TestPg::start_local(30);
    let pgb = TestPgBouncer::start(&pg, Pool { mode: "transaction", pool_size: 5, max_client_conn: 40 });
    let jobs: String = (1..=2)
        .map(|i| {
            format!(
                "[jobs.w{i}]\ncommand = [\"{w}\"]\nconnections = {{ min = 2, max = 3 }}\non_duplicate = \"ignore\"\nsingle_instance = false\n",
                w = worker()
            )
        })
        .collect();
    let manifest = format!(
        "[database]\nurl = \"{url}\"\npooler_admin_url = \"{admin}\"\nprovider_reserve = 0\nadhoc_reserve = 2\n\
         health_interval = \"2s\"\n\n[budget]\nservice = \"tx\"\nrebalance_interval = \"500ms\"\n\n{jobs}",
        url = pgb.url(),
        admin = pgb.admin_url(),
    );
    let (_d, config, _s) = setup(&manifest);
    let (code, text) = check(&config, true);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("limit              40  (transaction pooler client limit)"), "{text}");
    // Minimums the client limit cannot hold fail online (offline the limit is not known).
    let (_d2, big, _s2) = setup(&manifest.replace("min = 2, max = 3", "min = 20, max = 30"));
    assert_eq!(check(&big, false).0, Some(0));
    let (code, text) = check(&big, true);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("need at least 40 connections but only 37 are usable (limit 40 (transaction pooler client limit))"), "{text}");

    let c = Corral::start(&manifest);
    let ok = poll(30 * SEC, || {
        let b = budget(&c);
        b["limit"] == 40
            && b["pooler"]["mode"] == "transaction"
            && b["jobs"].as_array().is_some_and(|j| j.len() == 2 && j.iter().all(|j| j["connections"] == 3))
    });
    assert!(ok, "{}\n{}", budget(&c), c.output());
}

#[test]
fn supavisor_is_recognised_by_host_and_port_and_sized_by_the_preset() {
    let url = |port: u16| format!("postgres://postgres.abcdefghij:pw@aws-0-eu-central-1.pooler.supabase.com:{port}/postgres");
    let body = |port: u16, preset: &str| {
        format!("[database]\nurl = \"{}\"\n{preset}\n\n[jobs.a]\ncommand = [\"true\"]\nconnections = {{ min = 2, max = 4 }}\n", url(port))
    };
    let (_d, config, _s) = setup(&body(5432, "preset = \"supabase-nano\""));
    let (code, text) = check(&config, false);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("jobs connect through Supavisor (session mode, pool_size 15, client limit 200)"), "{text}");
    assert!(text.contains("limit              15  (session pooler pool_size)"), "{text}");
    // 15 - 2 (10%) - 5 ad hoc - 1 corral.
    assert!(text.contains("usable for jobs     7"), "{text}");
    let (_d, config, _s) = setup(&body(6543, "preset = \"supabase-large\""));
    let (_, text) = check(&config, false);
    assert!(text.contains("limit             800  (transaction pooler client limit)"), "{text}");
    // Without a preset the pool size is unknown, and the warning says what to set.
    let (_d, config, _s) = setup(&body(5432, ""));
    let (_, text) = check(&config, false);
    assert!(text.contains("set preset to the project's compute size"), "{text}");
    // pooler = "none" says the URL goes straight to PostgreSQL.
    let (_d, config, _s) = setup(&body(5432, "preset = \"supabase-nano\"\npooler = \"none\""));
    let (_, text) = check(&config, false);
    assert!(text.contains("limit              60  (preset"), "{text}");
    assert!(!text.contains(":pw@"), "password printed: {text}");
}

