//! Freed connections are handed on when a reading shows them closed, not at the next
//! `rebalance_interval` (SPEC §5, last bullet): real PostgreSQL, real corral, real workers.
//!
//! Every corral here runs with `rebalance_interval = "2m"`, so nothing in these tests can be
//! explained by the periodic reading: what happens within the deadlines is the reaction to the
//! event itself (an exit, a stop, a reading that shows a job active).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::budget::{rt, worker, Sampler};
use crate::harness::{poll, stderr, Corral, SEC};
use crate::pg::TestPg;

/// Long enough that no periodic reading or sync falls inside a test.
const LONG: &str = "2m";

fn manifest(pg: &TestPg, max_connections: u32, budget: &str, jobs: &str) -> String {
    format!(
        "[supervisor]\nsocket = \"{{dir}}/corral.sock\"\nlock_dir = \"{{dir}}/locks\"\n\n\
         [database]\nurl = \"{url}\"\nmax_connections = {max_connections}\nprovider_reserve = 0\nadhoc_reserve = 3\n\n\
         [budget]\nservice = \"svc\"\nrebalance_interval = \"{LONG}\"\n{budget}\n\n{jobs}",
        url = pg.url(),
    )
}

/// A worker job holding its quota busy (or, with `busy_file`, busy only while that file exists).
fn job(name: &str, min: u32, max: u32, extra: &str) -> String {
    format!(
        "[jobs.{name}]\ncommand = [\"{w}\"]\nconnections = {{ min = {min}, max = {max}, overflow = 1 }}\n\
         quota_signal = \"SIGHUP\"\non_duplicate = \"ignore\"\nsingle_instance = false\nstop_timeout = \"5s\"\n{extra}\n",
        w = worker(),
    )
}

fn budget_json(c: &Corral) -> Value {
    let out = c.ctl(&["budget", "--json"]);
    assert!(out.status.success(), "budget failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A job's row in `budget --json` (local scope).
fn budget_row(b: &Value, name: &str) -> Value {
    b["jobs"].as_array().unwrap().iter().find(|j| j["name"] == name).cloned().unwrap_or(Value::Null)
}

fn quota_in_file(c: &Corral, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(c.path(&format!("quota/{name}.json"))).ok()?;
    serde_json::from_str::<Value>(&text).ok()?["quota"].as_u64()
}

/// Connections of `corral/svc/<name>` in pg_stat_activity, only those in `state` if given.
fn backends(pg: &TestPg, name: &str, state: Option<&str>) -> u32 {
    let filter = state.map(|s| format!(" AND state = '{s}'")).unwrap_or_default();
    pg.admin_sql(&format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'corral/svc/{name}'{filter}"))
        .trim()
        .parse()
        .unwrap_or(u32::MAX)
}

#[test]
fn a_stopped_jobs_connections_reach_the_others_and_a_waiting_job_at_once() {
    let pg = TestPg::start(30);
    let sampler = Sampler::start(pg.admin_url());
    // usable = 16 - 3 ad hoc - 1 corral = 12: three jobs of 2..6 get 4 each.
    let jobs = [job("a", 2, 6, ""), job("b", 2, 6, ""), job("c", 2, 6, ""), job("d", 4, 4, "autostart = false\npriority = 10")].concat();
    let c = Corral::start(&manifest(&pg, 16, "", &jobs));
    for name in ["a", "b", "c"] {
        c.wait_job(name, 20 * SEC, "running with quota 4 or 5", |j| j["state"] == "running" && (j["quota"] == 4 || j["quota"] == 5));
    }
    assert!(poll(20 * SEC, || sampler.last.load(Ordering::SeqCst) == 12), "jobs never held their 12 connections\n{}", c.output());

    // c's 4 connections go to a and b as soon as a reading shows them closed.
    let out = c.ctl(&["stop", "c"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let t = Instant::now();
    for name in ["a", "b"] {
        assert!(
            poll(10 * SEC, || quota_in_file(&c, name) == Some(6)),
            "{name} was not told 6 within 10 s of c's stop (rebalance_interval is {LONG})\n{}",
            c.output()
        );
        c.wait_job(name, 5 * SEC, "quota 6", |j| j["quota"] == 6);
    }
    eprintln!("stop -> others' quotas raised: {:?}", t.elapsed());

    // A job that needs what a and b now hold starts once their shrink is measured: a and b are
    // told 4, close 2 each, and d starts with 4, without waiting for a periodic reading.
    let _ = c.ctl(&["start", "d"]);
    let t = Instant::now();
    c.wait_job("d", 10 * SEC, "running with quota 4", |j| j["state"] == "running" && j["quota"] == 4);
    eprintln!("start of a job waiting on shrinks -> running: {:?}", t.elapsed());
    for name in ["a", "b"] {
        c.wait_job(name, 5 * SEC, "quota 4", |j| j["quota"] == 4);
    }
    let detail = sampler.peak_detail.clone();
    let (peak, _) = sampler.finish();
    assert!(peak <= 12, "peak {peak} job connections exceeded usable 12 ({})\n{}", detail.lock().unwrap(), c.output());
}

#[test]
fn an_idle_job_turning_active_gets_its_share_after_one_reading() {
    let pg = TestPg::start(30);
    // usable = 14 - 3 - 1 = 10; a and b take 2..8 each: 5 and 5 when both are active.
    let dir = tempfile::tempdir().unwrap();
    let b_busy = dir.path().join("b-busy");
    let jobs = [job("a", 2, 8, ""), job("b", 2, 8, &format!("env = {{ WORKER_BUSY_FILE = \"{}\" }}", b_busy.display()))].concat();
    let c = Corral::start(&manifest(&pg, 14, "idle_after = \"1s\"", &jobs));
    for name in ["a", "b"] {
        c.wait_state(name, "running", 20 * SEC);
    }
    // Readings on demand (`corral health` runs a full check) until b counts as idle and a has
    // grown to 8: b keeps its minimum of 2.
    let settled = poll(30 * SEC, || {
        let _ = c.ctl(&["health"]);
        let b = budget_json(&c);
        budget_row(&b, "b")["idle"] == true && budget_row(&b, "a")["quota"] == 8 && budget_row(&b, "b")["quota"] == 2
    });
    assert!(settled, "b never idle with a at 8: {}\n{}", budget_json(&c), c.output());
    assert!(poll(20 * SEC, || backends(&pg, "a", None) == 8), "a never opened its 8 connections");

    // b turns active; once its backends show it, one reading is enough for b to get its share.
    std::fs::write(&b_busy, "").unwrap();
    assert!(poll(10 * SEC, || backends(&pg, "b", Some("active")) > 0), "b's connections never turned active");
    let out = c.ctl(&["health"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let t = Instant::now();
    let shared = poll(10 * SEC, || {
        let b = budget_json(&c);
        budget_row(&b, "a")["quota"] == 5 && budget_row(&b, "b")["quota"] == 5
    });
    assert!(
        shared,
        "after the reading that saw b active, a and b never got 5 each without another periodic reading (rebalance_interval {LONG}): {}\n{}",
        budget_json(&c),
        c.output()
    );
    assert!(poll(5 * SEC, || quota_in_file(&c, "b") == Some(5)), "b's quota file never said 5");
    eprintln!("reading that saw b active -> b has its share: {:?}", t.elapsed());
}

#[test]
fn a_fleet_member_syncs_as_soon_as_a_stopped_jobs_connections_are_gone() {
    let pg = TestPg::start_local(30);
    // Fleet: base = 13 - 3 = 10, minus corral's one own connection: usable 9, split 5 and 4.
    let body = format!(
        "[supervisor]\nsocket = \"{{dir}}/corral.sock\"\nlock_dir = \"{{dir}}/locks\"\n\n\
         [database]\nurl = \"{url}\"\nmax_connections = 13\nprovider_reserve = 0\nadhoc_reserve = 3\n\n\
         [budget]\nscope = \"fleet\"\nservice = \"svc\"\nrebalance_interval = \"{LONG}\"\n\n{jobs}",
        url = pg.url(),
        jobs = [job("a", 2, 6, ""), job("b", 2, 6, "")].concat(),
    );
    let c = Corral::start(&body);
    for name in ["a", "b"] {
        c.wait_job(name, 20 * SEC, "running with quota 4 or 5", |j| j["state"] == "running" && (j["quota"] == 4 || j["quota"] == 5));
    }
    let out = c.ctl(&["stop", "b"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let t = Instant::now();
    assert!(
        poll(10 * SEC, || quota_in_file(&c, "a") == Some(6)),
        "a was not told 6 within 10 s of b's stop: the member did not sync at once (rebalance_interval {LONG})\n{}",
        c.output()
    );
    c.wait_job("a", 5 * SEC, "quota 6", |j| j["quota"] == 6);
    eprintln!("fleet: stop -> the other job's quota raised: {:?}", t.elapsed());
}

#[test]
fn readings_stay_a_few_per_second_however_many_jobs_exit() {
    let pg = TestPg::start(30);
    // Two jobs with connections that exit at once and restart at once: every exit asks for a
    // reading, and every restart waits for one.
    let crash = |name: &str| {
        format!(
            "[jobs.{name}]\ncommand = [\"/bin/sh\", \"-c\", \"exit 1\"]\nconnections = 1\nrestart = \"always\"\n\
             backoff = {{ initial = \"0s\", max = \"0s\" }}\nhealthy_after = \"0s\"\non_duplicate = \"ignore\"\nsingle_instance = false\n"
        )
    };
    let c = Corral::start(&manifest(&pg, 20, "", &[crash("x"), crash("y")].concat()));
    let restarts = |c: &Corral| -> u64 { ["x", "y"].iter().map(|n| c.job(n)["restarts"].as_u64().unwrap_or(0)).sum() };
    assert!(poll(20 * SEC, || restarts(&c) >= 4), "the jobs never restarted\n{}", c.output());

    // Count corral's queries for a few seconds: each reading is one query on its own connection,
    // and pg_stat_activity shows when its last one started.
    let window = Duration::from_secs(4);
    let before = restarts(&c);
    let starts = rt().block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg.admin_url(), tokio_postgres::NoTls).await.expect("admin connect");
        tokio::spawn(conn);
        let mut seen = BTreeSet::new();
        let t = Instant::now();
        while t.elapsed() < window {
            let rows = client
                .query(
                    "SELECT (extract(epoch FROM query_start) * 1e6)::int8 FROM pg_stat_activity \
                     WHERE application_name = 'corral/svc/_corral' AND query_start IS NOT NULL",
                    &[],
                )
                .await
                .expect("sample");
            for r in rows {
                seen.insert(r.get::<_, i64>(0));
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        // One query may show two start times (parse, then execute, microseconds apart): what is
        // closer than 20 ms to the previous start is the same reading (readings are 50 ms apart).
        let mut starts: Vec<i64> = seen.into_iter().collect();
        starts.sort_unstable();
        starts.windows(2).filter(|w| w[1] - w[0] >= 20_000).count() + usize::from(!starts.is_empty())
    });
    let made = restarts(&c) - before;
    eprintln!("readings in {window:?}: {starts} (restarts meanwhile: {made})");
    // At most 5 a second (+3: a reading already started when the window opened, and the jitter
    // between corral's clock and the server's query_start).
    assert!(starts as u64 <= 5 * window.as_secs() + 3, "{starts} readings in {window:?}\n{}", c.output());
    // And the cap is what paces the restarts: they keep going, about one per reading.
    assert!(made >= 4, "only {made} restarts in {window:?}: the restart loop stalled\n{}", c.output());
}
