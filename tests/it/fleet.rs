//! Fleet scope end to end (SPEC §5 across the fleet, §7 fleet-wide single instance): one real
//! PostgreSQL, several real `corral run` processes, real workers holding their quota busy.
//!
//! Every test starts its own throwaway cluster (`start_local`): the `corral` schema and its
//! members are shared by everything on a database, so a shared server would mix fleets.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::budget::{worker, Sampler};
use crate::harness::{pid_alive, poll, setup, stderr, Corral, SEC};
use crate::pg::TestPg;

const INTERVAL_MS: u64 = 400;

/// A fleet member's manifest: `[database]`, `[budget] scope = "fleet"` and `jobs`.
fn member(pg: &TestPg, service: &str, extra_budget: &str, jobs: &str) -> String {
    format!(
        "[supervisor]\nsocket = \"{{dir}}/corral.sock\"\nlock_dir = \"{{dir}}/locks\"\n\n\
         [database]\nurl = \"{url}\"\nprovider_reserve = 2\nadhoc_reserve = 3\nhealth_interval = \"2s\"\nhealth_timeout = \"2s\"\n\n\
         [budget]\nscope = \"fleet\"\nservice = \"{service}\"\nrebalance_interval = \"{INTERVAL_MS}ms\"\n{extra_budget}\n\n{jobs}",
        url = pg.url(),
    )
}

/// `n` workers that hold their whole quota busy; re-read the quota file on SIGHUP.
fn workers(n: usize, extra: &str) -> String {
    (1..=n)
        .map(|i| {
            format!(
                "[jobs.w{i}]\ncommand = [\"{w}\"]\nconnections = {{ min = 1, max = 6, overflow = 1 }}\npriority = {p}\n\
                 quota_signal = \"SIGHUP\"\non_duplicate = \"ignore\"\nsingle_instance = false\nstop_timeout = \"5s\"\n{extra}\n",
                w = worker(),
                p = i as i32,
            )
        })
        .collect()
}

fn budget(c: &Corral) -> Value {
    let out = c.ctl(&["budget", "--json"]);
    assert!(out.status.success(), "budget failed: {}\n{}", stderr(&out), c.output());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn quota(c: &Corral, job: &str) -> u64 {
    c.job(job)["quota"].as_u64().unwrap_or(0)
}

/// Σ quotas of running jobs across these corrals, from their own `status`.
fn granted(corrals: &[&Corral]) -> u64 {
    corrals
        .iter()
        .flat_map(|c| c.status()["jobs"].as_array().cloned().unwrap_or_default())
        .filter(|j| j["state"] == "running")
        .map(|j| j["quota"].as_u64().unwrap_or(0))
        .sum()
}

/// Stand-in for a container dying: SIGKILL corral and every job it ran.
fn kill_member(c: &mut Corral) {
    let pids: Vec<i64> = c.status()["jobs"].as_array().unwrap().iter().filter_map(|j| j["pid"].as_i64()).collect();
    c.signal(libc::SIGKILL);
    c.wait_exit(5 * SEC);
    for pid in pids {
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    }
}

/// A new corral in the killed one's directory: same config, same socket, same fleet identity.
fn restart(c: &mut Corral) -> Corral {
    let dir = std::mem::replace(&mut c.dir, tempfile::tempdir().unwrap());
    let c2 = Corral::spawn_in(dir, c.config.clone(), c.socket.clone(), &[]);
    c2.wait_ready();
    c2
}

#[test]
fn three_corrals_never_exceed_the_fleets_usable_while_jobs_start_stop_and_idle() {
    // 40 - 3 superuser_reserved = 37; - 2 provider - 3 ad hoc = 32 base; - 3 corrals x 1 own = 29.
    let pg = TestPg::start_local(40);
    let sampler = Sampler::start(pg.admin_url());
    // A joining corral's own connection exists before the others can shrink for them, so
    // the members join first and the jobs start after (README: Fleet scope).
    let later = "autostart = false\n";
    let idle = "autostart = false\nenv = { WORKER_IDLE = \"1\" }\n";
    let c1 = Corral::start(&member(&pg, "svc1", "", &workers(3, later)));
    let c2 = Corral::start(&member(&pg, "svc2", "", &workers(3, later)));
    let c3 = Corral::start(&member(&pg, "svc3", "idle_after = \"1s\"", &workers(3, idle)));
    let all = [&c1, &c2, &c3];
    assert!(poll(10 * SEC, || all.iter().all(|c| budget(c)["members"].as_array().map_or(0, |m| m.len()) == 3)), "{}", budget(&c1));
    let usable = budget(&c1)["usable"].as_u64().unwrap() as u32;
    assert_eq!(usable, 29, "{}", budget(&c1));
    for c in all {
        // Later starts may wait while earlier jobs give connections back: exit 1 with the reason.
        let out = c.ctl(&["start", "all"]);
        assert!(out.status.code().unwrap_or(9) <= 1, "{}\n{}", stderr(&out), c.output());
    }
    for c in all {
        for j in ["w1", "w2", "w3"] {
            c.wait_state(j, "running", 30 * SEC);
        }
    }
    // Busy workers fill the fleet's budget, and no more.
    assert!(
        poll(30 * SEC, || sampler.last.load(Ordering::SeqCst) >= usable - 2),
        "workers never filled the budget: {} of {usable}\n{}",
        sampler.last.load(Ordering::SeqCst),
        budget(&c1)
    );
    // svc3's idle workers are held at their minimum; the busy ones get the rest.
    assert!(poll(20 * SEC, || (1..=3).all(|i| quota(&c3, &format!("w{i}")) == 1)), "{}", budget(&c3));
    assert!(poll(20 * SEC, || quota(&c1, "w3") > 1));

    // Jobs stop and start across the fleet while the sampler watches.
    assert!(c2.ctl(&["stop", "w1", "w2", "w3"]).status.success());
    assert!(poll(20 * SEC, || quota(&c1, "w1") + quota(&c1, "w2") + quota(&c1, "w3") >= 15), "c1 never grew: {}", budget(&c1));
    assert!(granted(&all) <= usable as u64);
    assert!(c2.ctl(&["start", "w1", "w2", "w3"]).status.code().unwrap_or(9) <= 1);
    for j in ["w1", "w2", "w3"] {
        c2.wait_job(j, 30 * SEC, "running with a grant", |j| j["state"] == "running" && j["quota"].as_u64() >= Some(1));
    }
    assert!(c1.ctl(&["restart", "w2"]).status.code().unwrap_or(9) <= 1);
    c1.wait_state("w2", "running", 30 * SEC);
    assert!(poll(20 * SEC, || sampler.last.load(Ordering::SeqCst) >= usable - 3));

    let fleet = budget(&c2);
    assert_eq!(fleet["scope"], "fleet");
    assert_eq!(fleet["services"].as_array().unwrap().len(), 3, "{fleet}");
    assert_eq!(fleet["jobs"].as_array().unwrap().len(), 9, "{fleet}");
    assert!(fleet["granted"].as_u64().unwrap() <= usable as u64, "{fleet}");
    assert_eq!(fleet["coordination"]["healthy"], true, "{fleet}");
    let detail = sampler.peak_detail.clone();
    let (peak, samples) = sampler.finish();
    let detail = detail.lock().unwrap().clone();
    eprintln!("fleet e2e: peak job connections {peak} / usable {usable} over {samples} samples; peak {detail}");
    assert!(peak <= usable, "peak {peak} exceeded the fleet's usable {usable}");
    assert!(samples > 20);
    for c in all {
        assert!(!c.output().contains(pg.password()), "password leaked");
    }
}

#[test]
fn a_killed_corral_returns_its_grants_and_comes_back_without_double_granting() {
    // 32 - 3 = 29 limit; - 2 provider - 3 ad hoc = 24 base.
    let pg = TestPg::start_local(32);
    let c1 = Corral::start(&member(&pg, "a", "", &workers(2, "")));
    let c2 = Corral::start(&member(&pg, "b", "", &workers(2, "")));
    let mut c3 = Corral::start(&member(&pg, "c", "", &workers(2, "")));
    assert!(poll(10 * SEC, || budget(&c1)["members"].as_array().map_or(0, |m| m.len()) == 3));
    let usable3 = budget(&c1)["usable"].as_u64().unwrap();
    assert_eq!(usable3, 24 - 3, "one own connection per corral");
    for c in [&c1, &c2, &c3] {
        for j in ["w1", "w2"] {
            c.wait_state(j, "running", 30 * SEC);
        }
    }
    // Six jobs of max 6 share 18: nobody is at max.
    let before = quota(&c1, "w1") + quota(&c1, "w2");
    assert!(before < 12, "{}", budget(&c1));

    kill_member(&mut c3);
    let killed = Instant::now();
    // Three intervals without a heartbeat, then the next sync of a survivor expires it.
    assert!(
        poll(10 * SEC, || budget(&c1)["members"].as_array().map_or(0, |m| m.len()) == 2),
        "c3 never expired: {}",
        budget(&c1)
    );
    let expired_after = killed.elapsed();
    assert!(poll(10 * SEC, || quota(&c1, "w1") + quota(&c1, "w2") > before), "c1's quotas never rose: {}", budget(&c1));
    eprintln!("killed member expired after {expired_after:?} (interval {INTERVAL_MS} ms)");
    assert!(expired_after < Duration::from_millis(3 * INTERVAL_MS) + 3 * SEC, "expiry took {expired_after:?}");
    let usable2 = budget(&c1)["usable"].as_u64().unwrap();
    assert_eq!(usable2, 24 - 2, "a departed member's own connection is no longer deducted");

    // Restarted with the same socket it is the same member: it replaces its old registration.
    let c3 = restart(&mut c3);
    for j in ["w1", "w2"] {
        c3.wait_job(j, 30 * SEC, "running with a grant", |j| j["state"] == "running" && j["quota"].as_u64() >= Some(1));
    }
    assert!(poll(10 * SEC, || {
        let b = budget(&c2);
        b["members"].as_array().map_or(0, |m| m.len()) == 3 && b["jobs"].as_array().map_or(0, |j| j.len()) == 6
    }), "{}", budget(&c2));
    let b = budget(&c2);
    assert_eq!(b["usable"].as_u64(), Some(usable3));
    assert!(b["granted"].as_u64().unwrap() <= usable3, "{b}");
    assert!(poll(10 * SEC, || granted(&[&c1, &c2, &c3]) <= usable3));
    let rows = pg.psql(&pg.url(), "SELECT count(*) FROM corral.members").trim().to_string();
    assert_eq!(rows, "3");
}

#[test]
fn a_fleet_single_job_runs_in_exactly_one_corral_and_moves_when_it_dies() {
    let pg = TestPg::start_local(30);
    let jobs = "[jobs.layer1]\ncommand = [\"sleep\", \"1000\"]\non_duplicate = \"ignore\"\nstop_timeout = \"1s\"\n";
    let body = member(&pg, "scraper", "fleet_grace = \"1s\"", jobs);
    let mut a = Corral::start(&body);
    let running_a = a.wait_state("layer1", "running", 20 * SEC);
    let b = Corral::start(&body);
    let waiting = b.wait_state("layer1", "waiting", 20 * SEC);
    assert!(waiting["reason"].as_str().unwrap_or("").contains("held fleet-wide"), "{waiting}");
    // For several intervals, exactly one copy runs; the standby syncs at its interval, not
    // every time its waiting job retries.
    let syncs = |c: &Corral| budget(c)["coordination"]["syncs"].as_u64().unwrap();
    let before = syncs(&b);
    let until = Instant::now() + Duration::from_millis(5 * INTERVAL_MS);
    while Instant::now() < until {
        let running = [&a, &b].iter().filter(|c| c.job("layer1")["state"] == "running").count();
        assert_eq!(running, 1, "a: {}\nb: {}", a.job("layer1"), b.job("layer1"));
    }
    let during = syncs(&b) - before;
    assert!(during <= 5 + 2, "the standby synced {during} times in 5 intervals");
    assert!(!b.output().contains("another corral uses the same service"), "a standby is no clash: {}", b.output());
    let pid_a = running_a["pid"].as_i64().unwrap() as i32;

    kill_member(&mut a);
    assert!(poll(5 * SEC, || !pid_alive(pid_a)), "the killed holder's job survived");
    let t = Instant::now();
    let moved = b.wait_job("layer1", 20 * SEC, "running after the holder died", |j| {
        // Never running before the previous holder's grace has passed.
        j["state"] == "running"
    });
    let took = t.elapsed();
    eprintln!("fleet-single job moved after {took:?}");
    // interval + health_timeout + fleet_grace + stop_timeout + 2 s margin since the last
    // renewal, which was at most one interval (and a sync) before the kill.
    let wait = Duration::from_millis(INTERVAL_MS + 2000 + 1000 + 1000 + 2000);
    assert!(took >= wait - Duration::from_millis(INTERVAL_MS + 200), "took over too early: {took:?}");
    assert!(moved["pid"].as_i64().is_some());
    // The restarted corral now waits for b's copy.
    let a = restart(&mut a);
    let w = a.wait_state("layer1", "waiting", 20 * SEC);
    assert!(w["reason"].as_str().unwrap_or("").contains("held fleet-wide"), "{w}");
    assert_eq!(b.job("layer1")["state"], "running");
}

#[test]
fn ten_corrals_starting_together_migrate_once_and_all_register() {
    let pg = TestPg::start_local(60);
    let jobs = "[jobs.idle]\ncommand = [\"sleep\", \"1000\"]\non_duplicate = \"ignore\"\nsingle_instance = false\n";
    let dirs: Vec<_> = (0..10).map(|i| setup(&member(&pg, &format!("s{i}"), "", jobs))).collect();
    let corrals: Vec<Corral> = dirs.into_iter().map(|(dir, config, socket)| Corral::spawn_in(dir, config, socket, &[])).collect();
    for c in &corrals {
        c.wait_ready();
    }
    assert!(
        poll(15 * SEC, || corrals.iter().all(|c| budget(c)["members"].as_array().map_or(0, |m| m.len()) == 10)),
        "{}",
        budget(&corrals[0])
    );
    let versions = pg.psql(&pg.url(), "SELECT string_agg(version::text, ',' ORDER BY version) FROM corral.schema_migrations");
    assert_eq!(versions.trim(), "1");
    assert_eq!(pg.psql(&pg.url(), "SELECT count(*) FROM corral.members").trim(), "10");
    for c in &corrals {
        assert!(c.output().matches("applied corral schema migration").count() <= 1, "{}", c.output());
        assert!(!c.output().contains("cannot join the fleet"), "{}", c.output());
        assert_eq!(budget(c)["coordination"]["healthy"], true);
    }
    let applied: usize = corrals.iter().map(|c| c.output().matches("applied corral schema migration").count()).sum();
    assert_eq!(applied, 1, "the migration ran more than once");
}

#[test]
fn a_reservation_from_one_corral_lowers_every_members_usable_and_expires_on_time() {
    let pg = TestPg::start_local(40);
    let c1 = Corral::start(&member(&pg, "a", "", ""));
    let c2 = Corral::start(&member(&pg, "b", "", ""));
    assert!(poll(10 * SEC, || budget(&c1)["members"].as_array().map_or(0, |m| m.len()) == 2));
    let usable = |c: &Corral| budget(c)["usable"].as_u64().unwrap();
    let before = usable(&c2);
    assert_eq!(before, usable(&c1));

    let out = c1.ctl(&["reserve", "nightly-etl", "-n", "4", "--ttl", "3s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let made = Instant::now();
    assert_eq!(usable(&c1), before - 4);
    assert!(poll(5 * SEC, || usable(&c2) == before - 4), "c2 never saw the reservation: {}", budget(&c2));
    let r = budget(&c2)["reservations"].clone();
    assert_eq!(r[0]["name"], "nightly-etl", "{r}");
    let human = crate::harness::stdout(&c2.ctl(&["budget"]));
    assert!(human.starts_with("fleet: 2 corral(s)") && human.contains("reservation nightly-etl: 4"), "{human}");
    assert!(poll(10 * SEC, || usable(&c1) == before && usable(&c2) == before));
    let gone = made.elapsed();
    eprintln!("fleet reservation of 3s gone from both after {gone:?}");
    assert!(gone >= Duration::from_millis(2500), "expired early: {gone:?}");
    assert!(gone < Duration::from_millis(3000 + 3 * INTERVAL_MS + 1500), "expired late: {gone:?}");

    // Fleet-wide: made on one member, released on another; too large is refused.
    assert!(c2.ctl(&["reserve", "psql", "-n", "2"]).status.success());
    assert!(poll(5 * SEC, || usable(&c1) == before - 2));
    assert!(c1.ctl(&["release", "psql"]).status.success());
    assert!(poll(5 * SEC, || usable(&c2) == before));
    assert_eq!(c1.ctl(&["release", "psql"]).status.code(), Some(1));
    assert_eq!(c1.ctl(&["reserve", "huge", "-n", "1000"]).status.code(), Some(1));
}

#[test]
fn losing_the_database_keeps_grants_and_stops_fleet_single_jobs_after_the_grace() {
    // Stopping the server needs a cluster of our own.
    let pg = TestPg::start_local(30);
    let jobs = format!(
        "[jobs.w]\ncommand = [\"{w}\"]\nconnections = {{ min = 1, max = 3 }}\non_duplicate = \"ignore\"\nsingle_instance = false\n\
         [jobs.later]\ncommand = [\"{w}\"]\nconnections = {{ min = 1, max = 3 }}\non_duplicate = \"ignore\"\nsingle_instance = false\nautostart = false\n\
         [jobs.single]\ncommand = [\"sleep\", \"1000\"]\non_duplicate = \"ignore\"\nstop_timeout = \"1s\"\n",
        w = worker()
    );
    let body = member(&pg, "svc", "fleet_grace = \"1s\"", &jobs).replace("health_interval = \"2s\"", "health_interval = \"1s\"");
    let c = Corral::start(&body);
    let w = c.wait_job("w", 20 * SEC, "running with quota 3", |j| j["state"] == "running" && j["quota"] == 3);
    c.wait_state("single", "running", 20 * SEC);

    pg.stop_immediate();
    let t = Instant::now();
    assert!(poll(15 * SEC, || c.ctl(&["health"]).status.code() == Some(1)), "health never turned unhealthy");
    // The single-instance copy stops once its fleet lock went unconfirmed past the grace...
    let single = c.wait_state("single", "waiting", 15 * SEC);
    eprintln!("fleet-single job stopped {:?} after the database went away: {}", t.elapsed(), single["reason"]);
    // ...while the job with a grant keeps running with the same grant, and nothing gets a new one.
    let still = c.job("w");
    assert_eq!((still["pid"].clone(), still["quota"].clone(), still["state"].clone()), (w["pid"].clone(), w["quota"].clone(), w["state"].clone()));
    assert_eq!(c.ctl(&["start", "later"]).status.code(), Some(1));
    let later = c.job("later");
    assert_eq!(later["state"], "waiting", "{later}");
    assert!(later["reason"].as_str().unwrap_or("").contains("fleet"), "{later}");

    pg.start_again();
    c.wait_state("single", "running", 20 * SEC);
    c.wait_state("later", "running", 20 * SEC);
    assert_eq!(c.job("w")["pid"], w["pid"], "the database outage restarted a job");
    assert!(!c.output().contains(pg.password()));
}

#[test]
fn a_corral_whose_registration_was_removed_registers_again_without_its_old_grants() {
    let pg = TestPg::start_local(30);
    let c = Corral::start(&member(&pg, "svc", "", &workers(1, "")));
    c.wait_job("w1", 20 * SEC, "running with a grant", |j| j["state"] == "running" && j["quota"].as_u64() >= Some(1));
    let id = budget(&c)["member"].as_str().unwrap().to_string();
    // As if another member had expired it: the row, its lease and its demands are gone.
    pg.psql(&pg.url(), &format!("DELETE FROM corral.members WHERE id = '{id}'"));
    c.wait_output("registration was gone", 10 * SEC);
    assert!(poll(10 * SEC, || budget(&c)["coordination"]["lease_losses"] == 1), "{}", budget(&c));
    // Registered again under the same id with a new lease; its job was granted afresh.
    assert!(poll(10 * SEC, || pg.psql(&pg.url(), "SELECT count(*) FROM corral.members").trim() == "1"));
    let rows = pg.psql(&pg.url(), "SELECT count(*) FROM corral.demands WHERE granted >= 1");
    assert_eq!(rows.trim(), "1");
    assert_eq!(c.job("w1")["state"], "running");
}

#[test]
fn random_starts_stops_and_restarts_across_three_corrals_never_exceed_usable() {
    let pg = TestPg::start_local(40);
    let later = "autostart = false\n";
    let corrals: Vec<Corral> = (1..=3).map(|i| Corral::start(&member(&pg, &format!("svc{i}"), "", &workers(3, later)))).collect();
    assert!(poll(10 * SEC, || corrals.iter().all(|c| budget(c)["members"].as_array().map_or(0, |m| m.len()) == 3)));
    let usable = budget(&corrals[0])["usable"].as_u64().unwrap() as u32;
    let sampler = Sampler::start(pg.admin_url());
    for c in &corrals {
        c.ctl(&["start", "all"]);
    }
    // A fixed seed: the same sequence of operations on every run (CORRAL_TEST_SEED explores others).
    let seed = std::env::var("CORRAL_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut rng = fastrand::Rng::with_seed(seed);
    let until = Instant::now() + 20 * SEC;
    let mut ops = 0;
    while Instant::now() < until {
        let c = &corrals[rng.usize(0..3)];
        let job = format!("w{}", rng.usize(1..=3));
        let verb = ["start", "stop", "restart"][rng.usize(0..3)];
        c.ctl(&[verb, &job]);
        ops += 1;
        std::thread::sleep(Duration::from_millis(rng.u64(0..300)));
    }
    for c in &corrals {
        c.ctl(&["start", "all"]);
    }
    // Everything ends up running with a grant (the minimums fit), whatever the sequence was.
    let all_running = || {
        corrals.iter().all(|c| {
            c.status()["jobs"].as_array().unwrap().iter().all(|j| j["state"] == "running" && j["quota"].as_u64() >= Some(1))
        })
    };
    if !poll(60 * SEC, all_running) {
        let states: Vec<String> = corrals.iter().map(|c| c.status()["jobs"].to_string()).collect();
        panic!("jobs never all ran with a grant:\n{}\nfleet: {}", states.join("\n"), budget(&corrals[0]));
    }
    assert!(poll(10 * SEC, || granted(&[&corrals[0], &corrals[1], &corrals[2]]) <= usable as u64));
    let detail = sampler.peak_detail.clone();
    let (peak, samples) = sampler.finish();
    let detail = detail.lock().unwrap().clone();
    eprintln!("fleet chaos (seed {seed}): {ops} operations; peak job connections {peak} / usable {usable} over {samples} samples; peak {detail}");
    assert!(peak <= usable, "peak {peak} exceeded the fleet's usable {usable}: {detail}");
}

#[test]
fn a_fleet_url_corral_cannot_use_is_a_clear_unhealthy_state_and_other_jobs_run() {
    // No server listens on port 1: every sync fails with the connection's own cause.
    let c = Corral::start(
        "[database]\nurl = \"postgres://app:s3cret-pw@127.0.0.1:1/app?sslmode=require\"\nmax_connections = 20\nhealth_timeout = \"2s\"\n\n\
         [budget]\nscope = \"fleet\"\n\n\
         [jobs.plain]\ncommand = [\"sleep\", \"1000\"]\non_duplicate = \"ignore\"\nsingle_instance = false\n\n\
         [jobs.db]\ncommand = [\"sleep\", \"1000\"]\non_duplicate = \"ignore\"\nsingle_instance = false\nconnections = 1\n",
    );
    c.wait_state("plain", "running", 10 * SEC);
    let out = c.ctl(&["health", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let text = crate::harness::stdout(&out);
    assert!(text.contains("cannot connect") && text.contains("Connection refused"), "{text}");
    let db = c.wait_state("db", "waiting", 10 * SEC);
    assert!(db["reason"].as_str().unwrap_or("").contains("fleet"), "{db}");
    assert!(!text.contains("s3cret-pw") && !c.output().contains("s3cret-pw"), "password leaked");
}

#[test]
fn two_fleet_corrals_hold_two_own_connections_together() {
    // Health checks, usage readings, fleet syncs and the fleet-wide session locks all share
    // each corral's one connection (SPEC §5): N corrals cost N connections.
    let pg = TestPg::start_local(30);
    let solo = "[jobs.solo]\ncommand = [\"sleep\", \"1000\"]\nconnections = 1\non_duplicate = \"ignore\"\n";
    let c1 = Corral::start(&member(&pg, "shared", "", solo));
    let c2 = Corral::start(&member(&pg, "shared", "", solo));
    assert!(poll(10 * SEC, || budget(&c1)["members"].as_array().map_or(0, |m| m.len()) == 2), "{}", budget(&c1));
    // The fleet-wide lock lives on that connection: one runs, the other waits for it.
    assert!(poll(20 * SEC, || {
        let states = [c1.job("solo")["state"].clone(), c2.job("solo")["state"].clone()];
        states.contains(&Value::from("running")) && states.contains(&Value::from("waiting"))
    }));
    let own = || -> u32 {
        pg.admin_sql("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'corral/%/\\_corral'").parse().unwrap()
    };
    // Over several syncs (400 ms) and health checks (2 s), never more than one each.
    let until = Instant::now() + 5 * SEC;
    let mut seen = Vec::new();
    while Instant::now() < until {
        seen.push(own());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen.iter().max(), Some(&2), "{seen:?}");
    assert_eq!(seen.last(), Some(&2), "{seen:?}");
    let b = budget(&c1);
    assert_eq!(b["own"], 2, "the fleet deducts one per corral: {b}");
    assert!(b["members"].as_array().unwrap().iter().all(|m| m["own"] == 1), "{b}");
}

#[test]
fn a_dropped_connection_takes_its_fleet_locks_along_and_never_two_copies_run() {
    let pg = TestPg::start_local(30);
    let solo = "[jobs.solo]\ncommand = [\"sleep\", \"1000\"]\nconnections = 1\non_duplicate = \"ignore\"\nstop_timeout = \"1s\"\n";
    let c1 = Corral::start(&member(&pg, "shared", "fleet_grace = \"1s\"", solo));
    let c2 = Corral::start(&member(&pg, "shared", "fleet_grace = \"1s\"", solo));
    let running = || [&c1, &c2].iter().filter(|c| c.job("solo")["state"] == "running").count();
    assert!(poll(20 * SEC, || running() == 1), "{} / {}", c1.job("solo"), c2.job("solo"));
    let holder = if c1.job("solo")["state"] == "running" { &c1 } else { &c2 };
    // The server ends the connection that holds the session lock (an idle kill, a failover).
    let killed = pg.admin_sql(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2",
    );
    assert_eq!(killed, "t", "no advisory lock holder found");
    // The lock went with the connection: the holder notices on its next use of it.
    holder.wait_output("its fleet-wide locks are gone", 10 * SEC);
    // Whoever holds it next, at most one copy runs at any moment, and one runs again.
    let until = Instant::now() + 8 * SEC;
    while Instant::now() < until {
        assert!(running() <= 1, "two copies: {} / {}", c1.job("solo"), c2.job("solo"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(poll(30 * SEC, || running() == 1), "{} / {}", c1.job("solo"), c2.job("solo"));
}
