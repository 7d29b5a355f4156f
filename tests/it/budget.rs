//! The connection budget end to end (SPEC §3, §5, §6): real PostgreSQL, real
//! corral, real workers holding their quota of busy connections.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{poll, stderr, stdout, Corral, SEC};
use crate::pg::TestPg;

pub(crate) fn worker() -> &'static str {
    static WORKER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    WORKER.get_or_init(|| crate::harness::example_bin("pg_worker").to_string_lossy().into_owned())
}

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Samples pg_stat_activity from a superuser connection until stopped:
/// the peak number of job connections (application_name corral/<svc>/<job>).
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    pub peak: Arc<AtomicU32>,
    pub last: Arc<AtomicU32>,
    samples: Arc<AtomicU32>,
    /// When the peak was first reached, and the connections per application_name then.
    pub peak_detail: Arc<std::sync::Mutex<String>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(admin_url: String) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU32::new(0));
        let last = Arc::new(AtomicU32::new(0));
        let samples = Arc::new(AtomicU32::new(0));
        let peak_detail = Arc::new(std::sync::Mutex::new(String::new()));
        let (s, p, l, n, d) = (stop.clone(), peak.clone(), last.clone(), samples.clone(), peak_detail.clone());
        let handle = std::thread::spawn(move || {
            rt().block_on(async move {
                let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await.expect("admin connect");
                tokio::spawn(conn);
                while !s.load(Ordering::SeqCst) {
                    let rows = client
                        .query(
                            "SELECT application_name, count(*)::int FROM pg_stat_activity WHERE backend_type = 'client backend' \
                             AND application_name LIKE 'corral/%' AND application_name NOT LIKE '%/\\_corral' GROUP BY 1 ORDER BY 1",
                            &[],
                        )
                        .await
                        .expect("sample");
                    let c: i32 = rows.iter().map(|r| r.get::<_, i32>(1)).sum();
                    l.store(c as u32, Ordering::SeqCst);
                    if p.fetch_max(c as u32, Ordering::SeqCst) < c as u32 {
                        let apps: Vec<String> = rows.iter().map(|r| format!("{}={}", r.get::<_, String>(0), r.get::<_, i32>(1))).collect();
                        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                        *d.lock().unwrap() = format!("{c} at unix {:.3}: {}", at.as_secs_f64(), apps.join(" "));
                    }
                    n.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        });
        Sampler { stop, peak, last, samples, peak_detail, handle: Some(handle) }
    }

    pub fn finish(mut self) -> (u32, u32) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("sampler thread");
        }
        (self.peak.load(Ordering::SeqCst), self.samples.load(Ordering::SeqCst))
    }
}

fn budget_json(c: &Corral) -> serde_json::Value {
    let out = c.ctl(&["budget", "--json"]);
    assert!(out.status.success(), "budget failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn quota_in_file(c: &Corral, job: &str) -> Option<u64> {
    let text = std::fs::read_to_string(c.path(&format!("quota/{job}.json"))).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["quota"].as_u64()
}

fn worker_jobs(n: usize, extra: &str) -> String {
    let mut s = String::new();
    for i in 1..=n {
        s.push_str(&format!(
            "[jobs.w{i}]\ncommand = [\"{w}\"]\nconnections = {{ min = 2, max = 6, overflow = 2 }}\npriority = {p}\n\
             quota_signal = \"SIGHUP\"\non_duplicate = \"ignore\"\nstop_timeout = \"5s\"\nenv = {{ WORKER_LOG = \"{{dir}}/w{i}.log\" }}\n{extra}\n",
            w = worker(),
            p = 7 - i as i32,
        ));
    }
    s
}

#[test]
fn budget_never_exceeded_adhoc_always_works_and_stopped_jobs_give_back() {
    let pg = TestPg::start(30);
    let sampler = Sampler::start(pg.admin_url());
    let body = format!(
        "[supervisor]\nsocket = \"{{dir}}/corral.sock\"\nlock_dir = \"{{dir}}/locks\"\n\n\
         [database]\nurl = \"{url}\"\nprovider_reserve = 2\nadhoc_reserve = 3\nhealth_interval = \"2s\"\n\n\
         [budget]\nservice = \"scraper\"\nrebalance_interval = \"300ms\"\n\n{jobs}",
        url = pg.url(),
        jobs = worker_jobs(6, "")
    );
    let c = Corral::start(&body);
    let b = budget_json(&c);
    let usable = b["usable"].as_u64().unwrap() as u32;
    if !pg.is_external() {
        // 30 - 3 superuser_reserved = 27; - 2 provider - 3 ad hoc - 1 corral = 21.
        assert_eq!((b["limit"].as_u64(), usable), (Some(27), 21), "{b}");
    }
    for i in 1..=6 {
        c.wait_state(&format!("w{i}"), "running", 20 * SEC);
    }
    // The workers saturate their grants.
    assert!(poll(20 * SEC, || sampler.last.load(Ordering::SeqCst) == usable), "jobs never saturated usable={usable}: {}", c.output());

    // While saturated, a person can always connect with psql-like ad hoc sessions.
    let (attempts, ok) = rt().block_on(async {
        let mut ok = 0;
        for _ in 0..20 {
            if let Ok((client, conn)) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await {
                let h = tokio::spawn(conn);
                if client.simple_query("SELECT 1").await.is_ok() {
                    ok += 1;
                }
                drop(client);
                let _ = h.await;
            }
        }
        (20, ok)
    });
    assert_eq!(ok, attempts, "ad hoc connections failed while jobs saturated the budget");

    // Stopping three workers raises the others' quotas: file + signal observed.
    let out = c.ctl(&["stop", "w4", "w5", "w6"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for i in 1..=3 {
        let job = format!("w{i}");
        assert!(poll(15 * SEC, || quota_in_file(&c, &job) == Some(6)), "{job} quota file never reached 6: {}", c.output());
        let log = c.path(&format!("w{i}.log"));
        assert!(
            poll(15 * SEC, || std::fs::read_to_string(&log).unwrap_or_default().contains("quota 6")),
            "{job} never saw its new quota"
        );
        c.wait_job(&job, 10 * SEC, "quota 6 in status", |j| j["quota"] == 6);
    }
    assert!(poll(15 * SEC, || sampler.last.load(Ordering::SeqCst) == 18));
    let (peak, samples) = sampler.finish();
    eprintln!("budget e2e: peak job connections {peak} / usable {usable} over {samples} samples; ad hoc {ok}/{attempts}");
    assert!(peak <= usable, "peak {peak} exceeded usable {usable}");
    assert!(samples > 10);
    // The password never shows.
    for text in [c.output(), stdout(&c.ctl(&["status", "--json"])), stdout(&c.ctl(&["budget", "--json"]))] {
        assert!(!text.contains(pg.password()), "password leaked: {text}");
    }
}

#[test]
fn over_quota_job_is_reported_and_cut_back_under_terminate() {
    let pg = TestPg::start(30);
    let body = format!(
        "[supervisor]\nsocket = \"{{dir}}/corral.sock\"\nlock_dir = \"{{dir}}/locks\"\n\n\
         [database]\nurl = \"{url}\"\nprovider_reserve = 0\nadhoc_reserve = 3\nenforce = \"terminate\"\n\n\
         [budget]\nservice = \"svc\"\nrebalance_interval = \"300ms\"\n\n\
         [jobs.greedy]\ncommand = [\"{w}\"]\non_duplicate = \"ignore\"\nconnections = 2\nenv = {{ WORKER_EXTRA = \"3\", WORKER_IDLE = \"1\" }}\n",
        url = pg.url(),
        w = worker()
    );
    let c = Corral::start(&body);
    c.wait_output("uses more connections than its quota", 20 * SEC);
    let count = || {
        pg.admin_sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'corral/svc/greedy'")
            .trim()
            .parse::<u32>()
            .unwrap_or(99)
    };
    assert!(poll(20 * SEC, || count() <= 2), "greedy still has {} connections\n{}", count(), c.output());
    c.wait_output("terminated connections over quota", 5 * SEC);
    c.wait_state("greedy", "running", 5 * SEC);
}

#[test]
fn database_outage_degrades_health_but_never_touches_jobs() {
    // Stopping the server needs a cluster of our own, even with CORRAL_TEST_DATABASE_URL.
    let pg = TestPg::start_local(20);
    let body = format!(
        "[supervisor]\nsocket = \"{{dir}}/corral.sock\"\nlock_dir = \"{{dir}}/locks\"\n\n\
         [database]\nurl = \"{url}\"\nprovider_reserve = 0\nadhoc_reserve = 2\nhealth_interval = \"1s\"\nhealth_timeout = \"2s\"\n\n\
         [budget]\nrebalance_interval = \"500ms\"\n\n\
         [jobs.w]\ncommand = [\"{w}\"]\non_duplicate = \"ignore\"\nconnections = {{ min = 1, max = 2 }}\n",
        url = pg.url(),
        w = worker()
    );
    let c = Corral::start(&body);
    let before = c.wait_state("w", "running", 20 * SEC);
    assert_eq!(c.ctl(&["health"]).status.code(), Some(0));

    pg.stop_immediate();
    let mut last = String::new();
    assert!(
        poll(15 * SEC, || {
            let out = c.ctl(&["health", "--json"]);
            last = stdout(&out);
            out.status.code() == Some(1)
        }),
        "health never turned unhealthy: {last}"
    );
    let h: serde_json::Value = serde_json::from_str(&last).unwrap();
    let err = h["database"]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("connect") || err.contains("refused") || err.contains("closed"), "unclear cause: {err}");
    assert!(!last.contains(pg.password()));
    let during = c.job("w");
    assert_eq!((during["pid"].clone(), during["restarts"].clone()), (before["pid"].clone(), before["restarts"].clone()));

    pg.start_again();
    let t = Instant::now();
    assert!(poll(15 * SEC, || c.ctl(&["health"]).status.code() == Some(0)), "health never recovered\n{}", c.output());
    eprintln!("database recovered in health after {:?}", t.elapsed());
    let after = c.job("w");
    assert_eq!(after["pid"], before["pid"], "the job was restarted because of the database");
    assert_eq!(after["state"], "running");
    assert!(!c.output().contains(pg.password()), "password leaked in logs");
}

#[test]
fn reservation_lowers_usable_and_expires_on_time() {
    let pg = TestPg::start(30);
    let body = format!(
        "[supervisor]\nsocket = \"{{dir}}/corral.sock\"\nlock_dir = \"{{dir}}/locks\"\n\n\
         [database]\nurl = \"{url}\"\nmax_connections = 40\nprovider_reserve = \"10%\"\nadhoc_reserve = 5\n",
        url = pg.url()
    );
    let c = Corral::start(&body);
    let usable = |c: &Corral| budget_json(c)["usable"].as_u64().unwrap();
    let before = usable(&c);
    let out = c.ctl(&["reserve", "nightly-etl", "-n", "4", "--ttl", "1s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(usable(&c), before - 4);
    let human = stdout(&c.ctl(&["budget"]));
    assert!(human.contains("reservation nightly-etl: 4"), "{human}");
    assert!(poll(5 * SEC, || usable(&c) == before), "reservation never expired");
    // Release of an unknown reservation is refused; reserving more than is free too.
    assert_eq!(c.ctl(&["release", "nope"]).status.code(), Some(1));
    assert_eq!(c.ctl(&["reserve", "huge", "-n", "1000"]).status.code(), Some(1));
    assert!(c.ctl(&["reserve", "psql", "-n", "2"]).status.success());
    assert_eq!(usable(&c), before - 2);
    assert!(c.ctl(&["release", "psql"]).status.success());
    assert_eq!(usable(&c), before);
}

#[test]
fn check_prints_the_plan_and_fails_when_minimums_cannot_fit() {
    let ok = "[database]\nurl = \"postgres://u:pw@db.example.com/x\"\npreset = \"free\"\n\n\
              [jobs.a]\ncommand = [\"true\"]\nconnections = { min = 20, max = 30 }\n";
    let (_dir, config, _) = crate::harness::setup(ok);
    let out = std::process::Command::new(crate::harness::bin()).args(["check", "-c"]).arg(&config).output().unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    // The Supabase free plan: 60 - 6 (10%) - 5 ad hoc - 1 corral = 48.
    assert!(text.contains("usable for jobs    48"), "{text}");
    assert!(!text.contains("pw@"), "password printed: {text}");

    // In fleet scope corral has one own connection too, and says the fleet's numbers come at run time.
    let fleet = ok.replace("[jobs.a]", "[budget]\nscope = \"fleet\"\n\n[jobs.a]");
    let (_dir, config, _) = crate::harness::setup(&fleet);
    let out = std::process::Command::new(crate::harness::bin()).args(["check", "-c"]).arg(&config).output().unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains("usable for jobs    48") && text.contains("fleet scope: this is one corral alone"), "{text}");

    let too_big = ok.replace("min = 20, max = 30", "min = 49, max = 60");
    let (_dir, config, _) = crate::harness::setup(&too_big);
    let out = std::process::Command::new(crate::harness::bin()).args(["check", "-c"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("need at least 49 connections but only 48 are usable"), "{}", stderr(&out));
}

/// issue 12 item 7: `quota_signal` is never sent before the job can have installed its handler
/// (this one installs it after a second, and SIGHUP's default action would kill it), and
/// `corral start` waits for a job queued behind connections being given back instead of
/// reporting a failure.
#[test]
fn quota_signal_waits_for_a_young_job_and_start_waits_for_a_queued_one() {
    let pg = TestPg::start(30);
    let job = |name: &str| {
        format!(
            "[jobs.{name}]\ncommand = [\"sh\", \"-c\", \"sleep 1; trap 'echo hup >> {{dir}}/{name}.hups' HUP; while :; do sleep 0.1; done\"]\n\
             connections = {{ min = 1, max = 26 }}\nquota_signal = \"SIGHUP\"\nautostart = false\non_duplicate = \"ignore\"\n\n"
        )
    };
    let body = format!(
        "[database]\nurl = \"{url}\"\nprovider_reserve = 0\nadhoc_reserve = 0\nhealth_interval = \"2s\"\n\n\
         [budget]\nrebalance_interval = \"300ms\"\n\n{a}{b}",
        url = pg.url(),
        a = job("a"),
        b = job("b")
    );
    let c = Corral::start(&body);
    let out = c.ctl(&["start", "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let a = c.job("a");
    // a holds every usable connection; b can only start once a's shrink is confirmed.
    let out = c.ctl(&["start", "b"]);
    assert!(out.status.success(), "start must wait for (or report as queued) a job behind a shrink: {}{}", stdout(&out), stderr(&out));
    assert!(poll(20 * SEC, || std::fs::read_to_string(c.path("a.hups")).is_ok_and(|s| s.contains("hup"))), "a never got its quota_signal\n{}", c.output());
    let now = c.job("a");
    assert_eq!((now["pid"].clone(), now["restarts"].clone(), now["last_exit"].clone()), (a["pid"].clone(), 0.into(), serde_json::Value::Null), "a was killed by an early signal: {now}\n{}", c.output());
    c.wait_state("b", "running", 20 * SEC);
    assert!(!c.output().contains("killed by SIGHUP"), "{}", c.output());
}

#[test]
fn the_demo_plans_its_budget_offline_and_its_scraper_follows_its_quota() {
    // The repository's supervisor.toml, as `cargo run --release -- run` uses it, in a temp dir.
    let root = env!("CARGO_MANIFEST_DIR");
    let demo = std::fs::read_to_string(format!("{root}/supervisor.toml")).unwrap();
    let body = demo
        .replace("socket        = \".corral/corral.sock\"", "socket = \"{dir}/corral.sock\"")
        .replace("lock_dir      = \".corral/locks\"", "lock_dir = \"{dir}/locks\"")
        .replace("= \".\"", &format!("= \"{root}\""));
    assert!(body.contains("{dir}/corral.sock") && body.contains(root), "the demo manifest changed shape:\n{body}");
    let (dir, config, socket) = crate::harness::setup(&body);
    let mut cmd = std::process::Command::new(crate::harness::bin());
    cmd.args(["run", "-c"]).arg(&config).env_remove("DATABASE_URL");
    let c = Corral::from_command(cmd, dir, config, socket);
    c.wait_ready();
    c.wait_output("[scraper] quota 10 (pool 8 + overflow 2)", 20 * SEC);
    let b: serde_json::Value = serde_json::from_slice(&c.ctl(&["budget", "--json"]).stdout).unwrap();
    assert_eq!((b["offline"].as_bool(), b["limit"].as_u64(), b["usable"].as_u64()), (Some(true), Some(60), Some(49)), "{b}");
    assert!(stdout(&c.ctl(&["budget"])).starts_with("budget planned offline"));
    // A higher-priority job takes a share: the scraper is told, and prints its new quota.
    assert!(c.ctl(&["start", "backfill"]).status.success());
    c.wait_output("[scraper] quota 9 (pool 7 + overflow 2)", 20 * SEC);
    assert!(c.ctl(&["stop", "backfill"]).status.success());
    assert!(poll(20 * SEC, || c.output().matches("[scraper] quota 10 ").count() >= 2), "{}", c.output());
}
