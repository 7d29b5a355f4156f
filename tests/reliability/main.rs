//! Reliability under load (its own test binary, so the storm does not starve
//! the main suite's timing): 100 jobs that each die after 50 ms of life, for
//! 30 s, restarted after 200 ms — about 300 crashes a second, what a 2-core CI
//! machine sustains (with a 0 s backoff the children's own exec cost saturates
//! both cores; see the README's benchmark notes).
//! `CORRAL_STORM_SECS` shortens it for local runs.

#[path = "../it/harness.rs"]
mod harness;
mod hostile;

use std::time::{Duration, Instant};

use harness::{poll, Corral, SEC};

fn rss_kb(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Zombie children of `pid`.
fn zombies_of(pid: i32) -> Vec<i32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let rest: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        if rest.first() == Some(&"Z") && rest.get(1).and_then(|s| s.parse::<i32>().ok()) == Some(pid) {
            out.push(p);
        }
    }
    out
}

#[test]
fn crash_storm_keeps_memory_and_fds_flat_and_leaves_no_zombies() {
    let secs: u64 = std::env::var("CORRAL_STORM_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let mut body = String::from("[supervisor]\nsocket = \"{dir}/corral.sock\"\nlock_dir = \"{dir}/locks\"\nreap_interval = \"5s\"\n\n");
    for i in 0..100 {
        body.push_str(&format!(
            "[jobs.storm{i}]\ncommand = [\"sleep\", \"0.05\"]\nrestart = \"always\"\n\
             healthy_after = \"10ms\"\nbackoff = {{ initial = \"200ms\", max = \"200ms\" }}\non_duplicate = \"ignore\"\n"
        ));
    }
    let c = Corral::start(&body);
    let pid = c.pid();
    let warmup = Duration::from_secs((secs / 6).max(2));
    let start = Instant::now();
    std::thread::sleep(warmup); // load generation: let the storm run, this is not synchronisation
    let (rss0, fds0) = (rss_kb(pid), fd_count(pid));
    let mut rss_max = rss0;
    let mut fds_max = fds0;
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(500));
        rss_max = rss_max.max(rss_kb(pid));
        fds_max = fds_max.max(fd_count(pid));
    }
    let st = c.status();
    let jobs = st["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 100);
    let restarts: u64 = jobs.iter().map(|j| j["restarts"].as_u64().unwrap()).sum();
    for j in jobs {
        let s = j["state"].as_str().unwrap();
        assert!(matches!(s, "running" | "starting" | "backoff"), "job left supervision: {j}");
        assert!(j["restarts"].as_u64().unwrap() > 0, "{j}");
    }
    eprintln!(
        "crash storm {secs}s: {restarts} restarts; RSS {rss0} kB after warm-up, max {rss_max} kB; fds {fds0} -> max {fds_max}"
    );
    // Flat: a leak of even a few hundred bytes per restart would show over tens of thousands of restarts.
    assert!(rss_max <= rss0 + 4096, "RSS grew from {rss0} kB to {rss_max} kB");
    assert!(fds_max <= fds0 + 250, "fds grew from {fds0} to {fds_max}");

    let out = c.ctl(&["stop", "all"]);
    assert!(out.status.success(), "{}", harness::stderr(&out));
    assert!(poll(10 * SEC, || zombies_of(pid).is_empty()), "zombies left: {:?}", zombies_of(pid));
    assert!(poll(10 * SEC, || fd_count(pid) <= fds0), "fds after stop: {} (was {fds0})", fd_count(pid));
}

#[path = "../it/pg.rs"]
mod pg;

/// The budget issue's database fault, while 50 other jobs crash constantly:
/// health degrades with a cause, the DB job is untouched, health recovers.
#[test]
fn database_outage_under_a_crash_storm_never_touches_jobs() {
    let pg = pg::TestPg::start_local(20);
    let worker = env!("CARGO_BIN_EXE_corral-pg-worker");
    let mut body = format!(
        "[supervisor]\nsocket = \"{{dir}}/corral.sock\"\nlock_dir = \"{{dir}}/locks\"\n\n\
         [database]\nurl = \"{url}\"\nprovider_reserve = 0\nadhoc_reserve = 2\nhealth_interval = \"1s\"\nhealth_timeout = \"2s\"\n\n\
         [budget]\nrebalance_interval = \"500ms\"\n\n\
         [jobs.db]\ncommand = [\"{worker}\"]\non_duplicate = \"ignore\"\nconnections = {{ min = 1, max = 2 }}\n\n",
        url = pg.url()
    );
    for i in 0..50 {
        body.push_str(&format!(
            "[jobs.storm{i}]\ncommand = [\"sleep\", \"0.05\"]\nrestart = \"always\"\nhealthy_after = \"10ms\"\n\
             backoff = {{ initial = \"200ms\", max = \"200ms\" }}\non_duplicate = \"ignore\"\n"
        ));
    }
    let c = Corral::start(&body);
    let before = c.wait_state("db", "running", 20 * SEC);
    assert!(poll(10 * SEC, || c.ctl(&["health"]).status.code() == Some(0)), "never healthy\n{}", c.output());

    pg.stop_immediate();
    assert!(poll(20 * SEC, || c.ctl(&["health"]).status.code() == Some(1)), "never unhealthy\n{}", c.output());
    let h: serde_json::Value = serde_json::from_slice(&c.ctl(&["health", "--json"]).stdout).unwrap();
    assert!(h["database"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{h}");
    let during = c.job("db");
    assert_eq!(during["pid"], before["pid"]);

    pg.start_again();
    assert!(poll(20 * SEC, || c.ctl(&["health"]).status.code() == Some(0)), "never recovered\n{}", c.output());
    let after = c.job("db");
    assert_eq!((after["pid"].clone(), after["state"].clone()), (before["pid"].clone(), "running".into()));
    assert!(!c.output().contains(pg.password()), "password leaked");
}
