//! The watchdog against real processes (SPEC §2, §4): env_file, stall_after, liveness probes,
//! ready probes and depends_on, instances, memory_max.
//!
//! Jobs record what happened to them (start and stop times, their environment) in files of
//! the test's own directory; the tests poll those and `status --json` with deadlines. The
//! detection latencies are printed (run with --nocapture to see them).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Nanosecond stamps, one per line (`date +%s%N`).
fn stamps(path: &Path) -> Vec<u128> {
    read(path).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn now_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

fn ms(ns: u128) -> f64 {
    ns as f64 / 1e6
}

// ----- (a) env_file -----

#[test]
fn env_file_is_applied_before_env() {
    let (dir, config, socket) = setup(
        r#"
[jobs.show]
command = ["sh", "-c", "printf '%s|%s|%s|%s\n' \"$$A\" \"$$B\" \"$$C\" \"$$D\" > {dir}/env.out; sleep 1000"]
env_file = "app.env"
env = { B = "from env" }
"#,
    );
    std::fs::write(dir.path().join("app.env"), "# the app's settings\nexport A=plain\nB=overridden\nC='single # quoted'\nD=\"two\\nlines\" # comment\n").unwrap();
    let c = Corral::spawn_in(dir, config, socket, &[]);
    c.wait_ready();
    let out = c.path("env.out");
    assert!(poll(Duration::from_secs(10), || read(&out).contains('|')), "{}", c.output());
    assert_eq!(read(&out), "plain|from env|single # quoted|two\nlines\n");
}

#[test]
fn env_file_errors_name_both_files() {
    let (dir, config, _socket) = setup("[jobs.x]\ncommand = [\"true\"]\nenv_file = \"bad.env\"\n");
    std::fs::write(dir.path().join("bad.env"), "GOOD=1\nthis is not a pair\n").unwrap();
    let out = std::process::Command::new(bin()).args(["check", "-c"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    // supervisor.toml:7:12 (after the 4-line [supervisor] header the harness prepends)
    assert!(err.contains("supervisor.toml:7:12: env_file "), "{err}");
    assert!(err.contains("bad.env:2:1: expected KEY=VALUE"), "{err}");
}

// ----- (b) stall_after -----

#[test]
fn a_job_that_stops_writing_is_restarted_as_stalled() {
    let c = Corral::start(
        r#"
[jobs.hung]
command = ["sh", "-c", "date +%s%N >> {dir}/starts; echo working; trap 'date +%s%N >> {dir}/stops; exit 0' TERM; sleep 1000 & wait"]
stall_after = "1s"
healthy_after = "0s"
backoff = { initial = "100ms", max = "1s" }
"#,
    );
    let j = c.wait_job("hung", Duration::from_secs(15), "restarted as stalled", |j| j["restart_reason"] == "stalled" && j["restarts"].as_u64() >= Some(1));
    assert_eq!(j["restart_reason"], "stalled");
    let (starts, stops) = (stamps(&c.path("starts")), stamps(&c.path("stops")));
    assert!(!stops.is_empty(), "{}", c.output());
    // The stop came stall_after after the last line (written right after the start stamp).
    let latency = ms(stops[0] - starts[0]) - 1000.0;
    eprintln!("stall detection latency: {latency:.1} ms past stall_after");
    assert!((-5.0..500.0).contains(&latency), "{latency}");
    c.wait_output("no output line for", Duration::from_secs(5));
    // A job that keeps writing is never stalled.
    let c = Corral::start(
        r#"
[jobs.chatty]
command = ["sh", "-c", "while true; do echo tick; sleep 0.2; done"]
stall_after = "1s"
"#,
    );
    std::thread::sleep(Duration::from_secs(3)); // the property is "nothing happens for a while"
    let j = c.job("chatty");
    assert_eq!((j["state"].as_str(), j["restarts"].as_u64()), (Some("running"), Some(0)), "{}", c.output());
}

// ----- (c) liveness -----

#[test]
fn a_probe_that_starts_failing_restarts_the_job_as_unhealthy() {
    let c = Corral::start(
        r#"
[jobs.api]
command = ["sh", "-c", "date +%s%N >> {dir}/starts; touch {dir}/healthy; trap 'date +%s%N >> {dir}/stops; exit 0' TERM; sleep 1000 & wait"]
liveness = { command = ["test", "-f", "{dir}/healthy"], interval = "100ms", timeout = "1s", failures = 3, initial_delay = "200ms" }
healthy_after = "0s"
backoff = { initial = "100ms", max = "1s" }
"#,
    );
    c.wait_state("api", "running", Duration::from_secs(10));
    assert!(poll(Duration::from_secs(5), || c.path("healthy").exists()));
    std::thread::sleep(Duration::from_millis(700)); // several passing probes
    assert_eq!(c.job("api")["restarts"], 0, "{}", c.output());
    let broke = now_ns();
    std::fs::remove_file(c.path("healthy")).unwrap();
    c.wait_job("api", Duration::from_secs(10), "restarted as unhealthy", |j| j["restart_reason"] == "unhealthy");
    // The job's TERM trap stamps the stop just after corral records the restart's reason.
    assert!(poll(Duration::from_secs(5), || !stamps(&c.path("stops")).is_empty()), "{}", c.output());
    let stops = stamps(&c.path("stops"));
    let latency = ms(stops[0] - broke);
    // 3 failures 100 ms apart: about 200-300 ms after the file went away.
    eprintln!("liveness detection latency: {latency:.1} ms (3 failures at 100ms)");
    assert!(latency < 1500.0, "{latency}");
    c.wait_output("liveness probe failed 3 time(s) in a row", Duration::from_secs(5));
    // The restarted job is healthy again (it recreated the file) and stays up.
    c.wait_job("api", Duration::from_secs(10), "running again", |j| j["state"] == "running" && j["pid"].is_number());
}

#[test]
fn a_hanging_probe_is_killed_with_its_group_and_reaped() {
    let secs = 100_000 + std::process::id();
    let tag = format!("sleep {secs}");
    let c = Corral::start(&format!(
        r#"
[jobs.svc]
command = ["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]
liveness = {{ command = ["sh", "-c", "sleep {secs} & sleep {secs}"], interval = "200ms", timeout = "200ms", failures = 2 }}
healthy_after = "0s"
backoff = {{ initial = "100ms", max = "1s" }}
"#
    ));
    c.wait_job("svc", Duration::from_secs(10), "unhealthy", |j| j["restart_reason"] == "unhealthy");
    c.wait_output("timed out after 200ms (process group killed)", Duration::from_secs(5));
    c.ctl(&["stop", "svc"]);
    // Every probe process (and what it forked) is gone, none left as a zombie.
    let left = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .filter(|c| String::from_utf8_lossy(c).replace('\0', " ").contains(&tag))
            .count()
    };
    assert!(poll(Duration::from_secs(5), || left() == 0), "{} probe processes left", left());
    let zombies = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|s| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')) && s.contains(&format!(" {} ", c.pid())))
            .count()
    };
    assert!(poll(Duration::from_secs(5), || zombies() == 0), "zombies of corral left");
}

#[test]
fn http_and_tcp_probes() {
    let port = free_port();
    let c = Corral::start(&format!(
        r#"
[jobs.web]
command = ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
cwd = "{{dir}}"
ready = {{ http = "http://127.0.0.1:{port}/", interval = "100ms" }}
liveness = {{ tcp = "127.0.0.1:{port}", interval = "200ms", initial_delay = "2s" }}

[jobs.missing]
command = ["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]
ready = {{ http = "http://127.0.0.1:{port}/no-such-page", interval = "100ms" }}
"#
    ));
    c.wait_job("web", Duration::from_secs(15), "ready", |j| j["ready"] == true);
    std::thread::sleep(Duration::from_secs(3)); // liveness passes for a while
    let j = c.job("web");
    assert_eq!((j["restarts"].as_u64(), j["restart_reason"].is_null()), (Some(0), true), "{}", c.output());
    // A 404 is not ready.
    assert_eq!(c.job("missing")["ready"], false);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ----- (d) depends_on and ready -----

#[test]
fn migrations_before_workers_before_the_web_job_and_stop_in_reverse() {
    let port = free_port();
    let c = Corral::start(&format!(
        r#"
[jobs.migrate]
command = ["sh", "-c", "date +%s%N > {{dir}}/migrate.start; sleep 0.5; date +%s%N > {{dir}}/migrate.end"]
restart = "on-failure"

[jobs.worker]
command = ["sh", "-c", "date +%s%N > {{dir}}/worker.start; echo worker up; trap 'date +%s%N > {{dir}}/worker.stop; exit 0' TERM; sleep 1000 & wait"]
depends_on = {{ migrate = "completed" }}
ready = {{ log = "worker up" }}

[jobs.web]
command = ["sh", "-c", "date +%s%N > {{dir}}/web.start; trap 'date +%s%N > {{dir}}/web.stop; exit 0' TERM; python3 -m http.server {port} --bind 127.0.0.1 & wait"]
cwd = "{{dir}}"
depends_on = {{ worker = "ready", migrate = "completed" }}
ready = {{ tcp = "127.0.0.1:{port}", interval = "100ms" }}

[jobs.tail]
command = ["sh", "-c", "date +%s%N > {{dir}}/tail.start; trap 'date +%s%N > {{dir}}/tail.stop; exit 0' TERM; sleep 1000 & wait"]
depends_on = {{ web = "ready" }}
"#
    ));
    // While migrate runs, the others wait and say for what.
    let w = c.wait_job("web", Duration::from_secs(5), "waiting", |j| j["state"] == "waiting");
    assert!(w["reason"].as_str().unwrap_or("").starts_with("dependency "), "{w}");
    let st = stdout(&c.ctl(&["status", "web"]));
    let line = st.lines().find(|l| l.starts_with("web ")).unwrap_or_default();
    assert!(line.contains("WAITING") && line.contains("dependency "), "{st}");
    c.wait_job("web", Duration::from_secs(15), "ready", |j| j["ready"] == true);
    c.wait_state("tail", "running", Duration::from_secs(10));
    let t = |n: &str| stamps(&c.path(n)).first().copied().unwrap_or_else(|| panic!("no {n}\n{}", c.output()));
    assert!(t("migrate.end") <= t("worker.start"), "worker started before migrations completed");
    assert!(t("worker.start") <= t("web.start"));
    assert!(t("web.start") <= t("tail.start"));
    eprintln!(
        "dependency release: worker {:.1} ms after migrate ended, web {:.1} ms after worker started",
        ms(t("worker.start") - t("migrate.end")),
        ms(t("web.start") - t("worker.start"))
    );
    // Stop everything: dependents first.
    let out = c.ctl(&["stop", "all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(t("tail.stop") <= t("web.stop"), "web stopped before the job depending on it");
    assert!(t("web.stop") <= t("worker.stop"), "worker stopped before web");
}

#[test]
fn a_dependency_whose_readiness_drops_and_comes_back_still_releases_its_dependent() {
    // process-compose #544: the dependency crashes twice before becoming ready; the
    // dependent must start once it finally is.
    let c = Corral::start(
        r#"
[jobs.api]
command = ["sh", "-c", "n=$$(cat {dir}/n 2>/dev/null || echo 0); echo $$((n+1)) > {dir}/n; echo booting; if [ $$n -lt 2 ]; then sleep 0.3; exit 1; fi; echo api ready; trap 'exit 0' TERM; sleep 1000 & wait"]
ready = { log = "^api ready$" }
healthy_after = "0s"
backoff = { initial = "100ms", max = "200ms" }
start_retries = 10

[jobs.client]
command = ["sh", "-c", "date +%s%N > {dir}/client.start; trap 'exit 0' TERM; sleep 1000 & wait"]
depends_on = { api = "ready" }
"#,
    );
    c.wait_state("client", "running", Duration::from_secs(15));
    assert_eq!(read(&c.path("n")).trim(), "3", "{}", c.output());
    // The client starts once per api readiness here; a later api restart does not stop it.
    c.ctl(&["restart", "api"]);
    c.wait_job("api", Duration::from_secs(10), "ready again", |j| j["ready"] == true);
    assert_eq!(c.job("client")["restarts"], 0);
}

#[test]
fn cycles_and_unknown_dependencies_are_config_errors() {
    let (_d, config, _s) = setup("[jobs.a]\ncommand = [\"true\"]\ndepends_on = [\"b\"]\n[jobs.b]\ncommand = [\"true\"]\ndepends_on = { a = \"ready\" }\n[jobs.c]\ncommand = [\"true\"]\ndepends_on = [\"nope\"]\n");
    let out = std::process::Command::new(bin()).args(["check", "-c"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("supervisor.toml:7:14: dependency cycle: a -> b -> a"), "{err}");
    assert!(err.contains("supervisor.toml:13:14: job \"c\" depends on \"nope\", which is not a job"), "{err}");
}

// ----- (e) instances -----

#[test]
fn instances_run_as_name_dot_i_and_verbs_take_both_forms() {
    let c = Corral::start(
        r#"
[jobs.w]
command = ["sh", "-c", "echo hello from $$CORRAL_INSTANCE; echo $$CORRAL_INSTANCE $$CORRAL_JOB > {dir}/w.$$CORRAL_INSTANCE; trap 'exit 0' TERM; sleep 1000 & wait"]
instances = 3
"#,
    );
    for i in 0..3 {
        c.wait_state(&format!("w.{i}"), "running", Duration::from_secs(10));
        let f = c.path(&format!("w.{i}"));
        assert!(poll(Duration::from_secs(5), || read(&f).contains('w')));
        assert_eq!(read(&f).trim(), format!("{i} w.{i}"));
    }
    // `logs w` merges the instances, each line under its instance's name; `logs w.1` is one.
    let merged = |out: &str| (0..3).all(|i| out.lines().any(|l| l.contains(&format!(" w.{i} stdout: hello from {i}"))));
    assert!(poll(Duration::from_secs(5), || merged(&stdout(&c.ctl(&["logs", "w"])))), "{}", stdout(&c.ctl(&["logs", "w"])));
    assert_eq!(stdout(&c.ctl(&["logs", "w.1"])).trim(), "hello from 1");
    assert!(c.ctl(&["stop", "w.1"]).status.success());
    assert_eq!(c.job("w.1")["state"], "stopped");
    assert_eq!(c.job("w.0")["state"], "running");
    let pids: Vec<_> = (0..3).map(|i| c.job(&format!("w.{i}"))["pid"].clone()).collect();
    assert!(c.ctl(&["start", "w"]).status.success());
    assert_eq!(c.job("w.0")["pid"], pids[0], "start of a running instance changed nothing");
    c.wait_state("w.1", "running", Duration::from_secs(10));
    // A reload to 2 stops only w.2.
    let pids: Vec<_> = (0..3).map(|i| c.job(&format!("w.{i}"))["pid"].clone()).collect();
    let body = std::fs::read_to_string(&c.config).unwrap().replace("instances = 3", "instances = 2");
    std::fs::write(&c.config, body).unwrap();
    let out = c.ctl(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(poll(Duration::from_secs(10), || c.job("w.2").is_null()), "{}", c.output());
    assert_eq!(c.job("w.0")["pid"], pids[0]);
    assert_eq!(c.job("w.1")["pid"], pids[1]);
    assert!(c.ctl(&["stop", "w"]).status.success());
    for i in 0..2 {
        assert_eq!(c.job(&format!("w.{i}"))["state"], "stopped");
    }
}

// ----- (f) memory_max -----

#[test]
fn a_tree_that_outgrows_memory_max_is_restarted_for_memory() {
    // The wrapper is small; its child grows by 8 MiB every 50 ms, as a browser would, and
    // stamps the moment its own allocations pass the limit.
    let (dir, config, socket) = setup(
        r#"
[jobs.scraper]
command = ["sh", "-c", "date +%s%N >> {dir}/starts; trap 'date +%s%N >> {dir}/stops; kill $$!; exit 0' TERM; python3 {dir}/grow.py {dir}/over & wait"]
memory_max = "64MiB"
healthy_after = "0s"
backoff = { initial = "100ms", max = "1s" }
"#,
    );
    // Once one run has passed the limit, later runs stay small, so a sample lands on a
    // running tree below the limit and status shows its RSS.
    let grow = "import os, sys, time\nif os.path.exists(sys.argv[1]):\n    time.sleep(3600)\nb = []\nwhile True:\n    b.append(b'x' * (8 << 20))\n    if len(b) * 8 == 64:\n        open(sys.argv[1], 'a').write(str(time.time_ns()) + '\\n')\n    time.sleep(0.05)\n";
    std::fs::write(dir.path().join("grow.py"), grow).unwrap();
    let c = Corral::spawn_in(dir, config, socket, &[]);
    c.wait_ready();
    let j = c.wait_job("scraper", Duration::from_secs(20), "restarted for memory", |j| j["restart_reason"] == "memory");
    assert_eq!(j["restart_reason"], "memory");
    assert!(poll(Duration::from_secs(5), || !stamps(&c.path("stops")).is_empty()), "{}", c.output());
    let (over, stops) = (stamps(&c.path("over")), stamps(&c.path("stops")));
    assert!(!over.is_empty() && !stops.is_empty(), "{}", c.output());
    let latency = ms(stops[0].saturating_sub(over[0]));
    eprintln!("memory detection latency: {latency:.1} ms after the tree passed memory_max (sampling every 1 s)");
    assert!(latency < 3000.0, "{latency}");
    c.wait_output("above memory_max 64.0 MiB", Duration::from_secs(5));
    // The tree's RSS is in status --json while it runs again (below the limit now).
    let j = c.wait_job("scraper", Duration::from_secs(10), "rss sampled", |j| j["rss_bytes"].as_u64().is_some_and(|b| b > 0));
    assert!(j["rss_bytes"].as_u64().unwrap() > 1 << 20);
}

#[allow(dead_code)]
fn unused(_: Instant) {}

// ----- (e) instances on a real PostgreSQL: connections are per instance -----

#[test]
fn each_instance_gets_its_own_quota_and_application_name_on_postgres() {
    let pg = crate::pg::TestPg::start(40);
    let body = format!(
        "[supervisor]\nsocket = \"{{dir}}/corral.sock\"\nlock_dir = \"{{dir}}/locks\"\n\n\
         [database]\nurl = \"{url}\"\nprovider_reserve = 0\nadhoc_reserve = 2\nhealth_interval = \"2s\"\n\n\
         [budget]\nservice = \"scraper\"\nrebalance_interval = \"300ms\"\n\n\
         [jobs.w]\ncommand = [\"{w}\"]\ninstances = 3\nconnections = {{ min = 2, max = 3 }}\non_duplicate = \"ignore\"\n\
         env = {{ WORKER_LOG = \"{{dir}}/w.log\" }}\n",
        url = pg.url(),
        w = crate::budget::worker(),
    );
    let c = Corral::start(&body);
    for i in 0..3 {
        c.wait_job(&format!("w.{i}"), Duration::from_secs(30), "running with a quota", |j| j["state"] == "running" && j["quota"] == 3);
    }
    // Each instance holds its own quota of connections, told apart by application_name.
    let per_app = || {
        pg.admin_sql("SELECT string_agg(application_name || '=' || n, ',' ORDER BY application_name) FROM (SELECT application_name, count(*) AS n FROM pg_stat_activity WHERE application_name LIKE 'corral/scraper/w.%' GROUP BY 1) t")
    };
    let want = "corral/scraper/w.0=3,corral/scraper/w.1=3,corral/scraper/w.2=3";
    assert!(poll(Duration::from_secs(30), || per_app().trim() == want), "{} {}", per_app(), c.output());
    let out = c.ctl(&["budget", "--json"]);
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = b["jobs"].as_array().unwrap().iter().filter_map(|j| j["name"].as_str()).collect();
    assert_eq!(names, vec!["w.0", "w.1", "w.2"], "{b}");
    // Stopping one instance gives back its connections only.
    assert!(c.ctl(&["stop", "w.2"]).status.success());
    assert!(poll(Duration::from_secs(30), || per_app().trim() == "corral/scraper/w.0=3,corral/scraper/w.1=3"), "{}", per_app());
}
