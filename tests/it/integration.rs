//! Integration with the outside world (SPEC §9): systemd's notification
//! protocol through a real datagram socket, the `[http]` endpoint through a
//! real TCP client, the shipped systemd unit, Docker files and example
//! manifests.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::pg::TestPg;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ----- sd_notify -----

/// A fake systemd: a datagram socket that records every message with its arrival time.
struct NotifySocket {
    path: PathBuf,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let m = messages.clone();
        // Lives until the test process ends: cheap, and never blocks a test.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => m.lock().unwrap().push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned())),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
        });
        NotifySocket { path, messages }
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.messages.lock().unwrap().clone()
    }

    /// Messages other than watchdog pings and status lines, in order.
    fn states(&self) -> Vec<String> {
        self.all().into_iter().map(|(_, m)| m).filter(|m| m != "WATCHDOG=1" && !m.starts_with("STATUS=")).collect()
    }

    /// Wait until the lifecycle messages (no pings, no STATUS) are `want`.
    fn wait_states(&self, c: &Corral, want: &[&str], timeout: Duration) -> Vec<String> {
        let ok = poll(timeout, || {
            let got = self.states();
            got.len() >= want.len() && got.iter().zip(want).all(|(g, w)| g.starts_with(w))
        });
        let got = self.states();
        assert!(ok, "expected notifications {want:?}, got {got:?}\n--- output ---\n{}", c.output());
        got
    }
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

const SLEEPER: &str = r#"
[jobs.sleeper]
command = ["sh", "-c", "echo \"$${NOTIFY_SOCKET:-unset} $${WATCHDOG_USEC:-unset}\" > {dir}/env.txt; exec sleep 1000"]
restart = "always"
"#;

#[test]
fn sd_notify_ready_reloading_stopping_in_order() {
    let (dir, config, socket) = setup(SLEEPER);
    let notify = NotifySocket::bind(dir.path());
    let path = notify.path.to_str().unwrap().to_string();
    let mut c = Corral::spawn_in(dir, config, socket, &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "400000")]);
    c.wait_ready();

    notify.wait_states(&c, &["READY=1"], 10 * SEC);
    // READY=1 comes once autostart jobs are launched, not before.
    c.wait_state("sleeper", "running", 5 * SEC);
    // Jobs do not inherit the notification socket or the watchdog.
    assert!(poll(5 * SEC, || std::fs::read_to_string(c.path("env.txt")).is_ok_and(|s| s.contains("unset unset"))));
    assert_eq!(std::fs::read_to_string(c.path("env.txt")).unwrap().trim(), "unset unset");

    // `corral reload`: RELOADING=1 with MONOTONIC_USEC, then READY=1.
    let before = monotonic_usec();
    let out = c.ctl(&["reload"]);
    assert!(out.status.success(), "reload: {}", stderr(&out));
    let got = notify.wait_states(&c, &["READY=1", "RELOADING=1", "READY=1"], 5 * SEC);
    let reloading = &got[1];
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(usec >= before && usec <= monotonic_usec(), "MONOTONIC_USEC {usec} not taken during the reload");

    // A rejected file (the watcher reloads it): RELOADING=1, then READY=1 on the old config.
    c.write_config("[jobs.broken\n");
    notify.wait_states(&c, &["READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1"], 10 * SEC);
    assert_eq!(c.job("sleeper")["state"], "running");

    let status = notify.all().into_iter().map(|(_, m)| m).filter(|m| m.starts_with("STATUS=")).collect::<Vec<_>>();
    assert!(status.iter().any(|s| s.starts_with("STATUS=1/1 jobs running")), "no status line: {status:?}");

    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_exit(15 * SEC), Some(0));
    let got = notify.states();
    assert_eq!(got.last().map(String::as_str), Some("STOPPING=1"), "{got:?}");
    assert_eq!(got.iter().filter(|m| *m == "STOPPING=1").count(), 1, "{got:?}");
}

#[test]
fn sd_notify_watchdog_pings_at_half_the_interval() {
    let (dir, config, socket) = setup(SLEEPER);
    let notify = NotifySocket::bind(dir.path());
    let path = notify.path.to_str().unwrap().to_string();
    let c = Corral::spawn_in(dir, config, socket, &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "400000")]);
    c.wait_ready();
    notify.wait_states(&c, &["READY=1"], 10 * SEC);
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(1200));
    let pings: Vec<Instant> =
        notify.all().into_iter().filter(|(t, m)| *t >= start && m == "WATCHDOG=1").map(|(t, _)| t).collect();
    // Every 200 ms: about 6 in 1.2 s. At least 3 even on a loaded machine.
    assert!(pings.len() >= 3, "{} pings in 1.2 s\n--- output ---\n{}", pings.len(), c.output());
    assert!(pings.len() <= 8, "{} pings in 1.2 s: faster than every 200 ms", pings.len());
    let gaps: Vec<u128> = pings.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    assert!(gaps.iter().all(|&g| g >= 100), "pings too close together: {gaps:?} ms");
}

/// systemd showed "0/1 jobs running, 1 starting" while `corral status` said RUNNING: the
/// `STATUS=` line follows a state change within a second, not at its next periodic refresh.
#[test]
fn sd_notify_status_follows_a_state_change_within_a_second() {
    let (dir, config, socket) = setup("[jobs.w]\ncommand = [\"sleep\", \"100001\"]\nhealthy_after = \"1500ms\"\non_duplicate = \"ignore\"\n");
    let notify = NotifySocket::bind(dir.path());
    let path = notify.path.to_str().unwrap().to_string();
    // No watchdog: the periodic refresh is then once a second, the slowest case.
    let c = Corral::spawn_in(dir, config, socket, &[("NOTIFY_SOCKET", &path)]);
    c.wait_ready();
    notify.wait_states(&c, &["READY=1"], 10 * SEC);
    c.wait_state("w", "running", 10 * SEC);
    let seen = Instant::now();
    let line = |m: &str| m == "STATUS=1/1 jobs running";
    assert!(poll(5 * SEC, || notify.all().iter().any(|(_, m)| line(m))), "{:?}", notify.all());
    let at = notify.all().into_iter().find(|(_, m)| line(m)).map(|(t, _)| t).unwrap();
    // Seen by `corral status` first (it polls), STATUS= at most a second later.
    assert!(at <= seen + Duration::from_secs(1), "STATUS= came {:?} after corral status said running", at - seen);
    let starting = notify.all().iter().filter(|(_, m)| m.contains("1 starting")).count();
    assert!(starting >= 1, "the starting phase was reported too: {:?}", notify.all());
}

#[test]
fn sd_notify_watchdog_of_another_pid_is_not_ours() {
    let (dir, config, socket) = setup(SLEEPER);
    let notify = NotifySocket::bind(dir.path());
    let path = notify.path.to_str().unwrap().to_string();
    let c = Corral::spawn_in(
        dir,
        config,
        socket,
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "100000"), ("WATCHDOG_PID", "1")],
    );
    c.wait_ready();
    notify.wait_states(&c, &["READY=1"], 10 * SEC);
    std::thread::sleep(Duration::from_millis(500));
    assert!(notify.all().iter().all(|(_, m)| m != "WATCHDOG=1"), "{:?}", notify.all());
}

// ----- HTTP -----

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct HttpReply {
    code: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl HttpReply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn http(port: u16, method: &str, path: &str) -> HttpReply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to corral's http port");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read reply");
    let raw = String::from_utf8(raw).expect("utf-8 reply");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end: {raw:?}"));
    let mut lines = head.lines();
    let code = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpReply { code, headers, body: body.to_string() }
}

/// Samples by (metric name, job label or "").
fn metrics(port: u16) -> BTreeMap<(String, String), f64> {
    let r = http(port, "GET", "/metrics");
    assert_eq!(r.code, 200, "{}", r.body);
    let ct = r.headers.get("content-type").cloned().unwrap_or_default();
    assert!(ct.starts_with("application/openmetrics-text"), "content-type {ct}");
    let scrape = prometheus_parse::Scrape::parse(r.body.lines().map(|l| Ok(l.to_string()))).expect("prometheus text");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("unexpected sample {other:?}"),
            };
            ((s.metric, s.labels.get("job").unwrap_or("").to_string()), v)
        })
        .collect()
}

fn metric(m: &BTreeMap<(String, String), f64>, name: &str, job: &str) -> f64 {
    *m.get(&(name.to_string(), job.to_string())).unwrap_or_else(|| panic!("no {name}{{job={job:?}}} in {m:?}"))
}

/// Drop the fields that move with the clock.
fn without_uptimes(mut v: Value) -> Value {
    if let Some(s) = v.get_mut("supervisor").and_then(|s| s.as_object_mut()) {
        s.remove("uptime_s");
    }
    for j in v["jobs"].as_array_mut().into_iter().flatten() {
        j.as_object_mut().unwrap().remove("uptime_s");
    }
    v
}

#[test]
fn http_health_status_and_metrics_match_the_cli() {
    let port = free_port();
    let c = Corral::start(&format!(
        r#"
[http]
listen = "127.0.0.1:{port}"

[jobs.steady]
command = ["sh", "-c", "exec sleep 1000", "{{dir}}"]

[jobs.crashy]
command = ["sh", "-c", "exit 3", "{{dir}}"]
restart = "always"
backoff = {{ initial = "10ms", max = "20ms" }}
start_retries = 2
"#
    ));
    c.wait_state("steady", "running", 5 * SEC);
    c.wait_state("crashy", "fatal", 10 * SEC);

    let h = http(port, "GET", "/health");
    assert_eq!(h.code, 200, "{}", h.body);
    assert_eq!(h.headers.get("content-type").map(String::as_str), Some("application/json"));
    let health = h.json();
    assert_eq!(health["healthy"], true);
    assert_eq!(health["supervisor"], true);
    assert!(health["database"].is_null());
    let cli: Value = serde_json::from_str(&stdout(&c.ctl(&["health", "--json"]))).unwrap();
    assert_eq!(health, cli);

    let s = http(port, "GET", "/status");
    assert_eq!(s.code, 200, "{}", s.body);
    let cli = c.status();
    assert_eq!(without_uptimes(s.json()), without_uptimes(cli.clone()));

    let m = metrics(port);
    assert_eq!(metric(&m, "corral_job_up", "steady"), 1.0);
    assert_eq!(metric(&m, "corral_job_up", "crashy"), 0.0);
    for job in cli["jobs"].as_array().unwrap() {
        let name = job["name"].as_str().unwrap();
        assert_eq!(metric(&m, "corral_job_restarts_total", name), job["restarts"].as_f64().unwrap(), "{name}");
    }
    assert!(metric(&m, "corral_job_restarts_total", "crashy") >= 2.0);
    assert_eq!(metric(&m, "corral_zombies_reaped_total", ""), cli["supervisor"]["zombies_reaped"].as_f64().unwrap());
    assert_eq!(metric(&m, "corral_orphans_killed_total", ""), cli["supervisor"]["orphans_killed"].as_f64().unwrap());
    // No [database]: no budget or database series.
    assert!(!m.keys().any(|(n, _)| n.starts_with("corral_budget") || n.starts_with("corral_db")), "{m:?}");

    assert_eq!(http(port, "GET", "/nope").code, 404);
    let post = http(port, "POST", "/status");
    assert_eq!(post.code, 405);
    assert_eq!(post.headers.get("allow").map(String::as_str), Some("GET, HEAD"));
}

#[test]
fn http_is_off_without_an_http_table() {
    let c = Corral::start("[jobs.a]\ncommand = [\"sh\", \"-c\", \"exec sleep 1000\", \"{dir}\"]\n");
    c.wait_state("a", "running", 5 * SEC);
    assert!(!c.output().contains("over HTTP"), "{}", c.output());
}

#[test]
fn http_port_in_use_fails_startup_with_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (dir, config, socket) = setup(&format!("[http]\nlisten = \"127.0.0.1:{port}\"\n\n[jobs.a]\ncommand = [\"sh\", \"-c\", \"exec sleep 1000\", \"{{dir}}\"]\n"));
    let mut c = Corral::spawn_in(dir, config, socket.clone(), &[]);
    let code = c.wait_exit(10 * SEC);
    assert_eq!(code, Some(1), "{}", c.output());
    assert!(c.output().contains(&format!("127.0.0.1:{port}")), "{}", c.output());
    assert!(!socket.exists(), "control socket left behind");
    drop(taken);
}

#[test]
fn http_metrics_and_health_follow_the_database() {
    let pg = TestPg::start_local(30);
    let port = free_port();
    let c = Corral::start(&format!(
        r#"
[database]
url = "{url}"
provider_reserve = 0
adhoc_reserve = 2
health_interval = "1h"
health_timeout = "3s"

[http]
listen = "127.0.0.1:{port}"

[jobs.worker]
command = ["sh", "-c", "exec sleep 1000", "{{dir}}"]
connections = {{ min = 1, max = 4 }}
"#,
        url = pg.url()
    ));
    let job = c.wait_state("worker", "running", 10 * SEC);

    let h = http(port, "GET", "/health");
    assert_eq!(h.code, 200, "{}", h.body);
    assert_eq!(h.json()["database"]["healthy"], true);
    assert!(!h.body.contains(pg.password()), "password in /health: {}", h.body);

    let m = metrics(port);
    let budget: Value = serde_json::from_str(&stdout(&c.ctl(&["budget", "--json"]))).unwrap();
    assert_eq!(metric(&m, "corral_budget_usable", ""), budget["usable"].as_f64().unwrap());
    assert_eq!(metric(&m, "corral_budget_granted", ""), budget["granted"].as_f64().unwrap());
    assert_eq!(metric(&m, "corral_job_quota", "worker"), job["quota"].as_f64().unwrap());
    assert_eq!(metric(&m, "corral_job_quota", "worker"), 4.0);
    assert_eq!(metric(&m, "corral_db_up", ""), 1.0);
    let latency = metric(&m, "corral_db_health_latency_seconds", "");
    assert!(latency > 0.0 && latency < 3.0, "latency {latency}");

    // The database goes away: /health checks afresh and says 503; jobs keep running.
    pg.stop_immediate();
    std::thread::sleep(Duration::from_millis(1100));
    let h = http(port, "GET", "/health");
    assert_eq!(h.code, 503, "{}", h.body);
    assert_eq!(h.json()["healthy"], false);
    assert_eq!(metric(&metrics(port), "corral_db_up", ""), 0.0);
    assert_eq!(c.job("worker")["state"], "running");
}

// ----- the shipped files -----

/// `[Section] -> key -> values` of a systemd unit (keys may repeat).
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("not key=value: {line:?}"));
        out.entry(section.clone()).or_default().entry(k.trim().to_string()).or_default().push(v.trim().to_string());
    }
    out
}

#[test]
fn systemd_unit_is_type_notify_and_fits_the_example_manifest() {
    let text = std::fs::read_to_string(repo().join("systemd/corral.service")).unwrap();
    let unit = parse_unit(&text);
    let svc = &unit["Service"];
    let one = |k: &str| -> &str {
        let v = svc.get(k).unwrap_or_else(|| panic!("[Service] has no {k}"));
        assert_eq!(v.len(), 1, "{k} set more than once");
        &v[0]
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(one("ExecStart"), "/usr/local/bin/corral run -c /etc/corral/supervisor.toml");
    assert_eq!(one("ExecReload"), "/usr/local/bin/corral reload");
    assert_eq!(one("KillMode"), "mixed");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("RuntimeDirectory"), "corral");
    let watchdog = humantime::parse_duration(one("WatchdogSec")).expect("WatchdogSec is a duration");
    let stop = humantime::parse_duration(one("TimeoutStopSec")).expect("TimeoutStopSec is a duration");
    assert!(unit["Install"].contains_key("WantedBy"));

    // The example manifest lives in the unit's runtime directory and stops in time.
    let path = repo().join("systemd/supervisor.toml");
    let cfg = corral::config::parse(&path, &std::fs::read_to_string(&path).unwrap(), &|v| {
        (v == "DATABASE_URL").then(|| "postgres://u:p@db.example.com/app".to_string())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.supervisor.socket.as_deref(), Some(Path::new("/run/corral/corral.sock")));
    assert!(cfg.supervisor.lock_dir.starts_with("/run/corral"));
    let longest = cfg.jobs.values().map(|j| j.stop_timeout).max().unwrap_or_default();
    // Jobs stop in parallel; adopted orphans then get 3 s.
    assert!(stop >= longest + Duration::from_secs(3), "TimeoutStopSec {stop:?} < stop_timeout {longest:?} + 3 s");
    let health_timeout = cfg.database.as_ref().map(|d| d.health_timeout).unwrap_or_default();
    assert!(watchdog > health_timeout, "WatchdogSec must outlast the first database check");

    // systemd's own checker, when this machine has it (never installed for the test).
    let Ok(found) = Command::new("systemd-analyze").arg("--version").output() else { return };
    if !found.status.success() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // verify insists that ExecStart= exists: point it at the binary under test.
    let unit_path = dir.path().join("corral.service");
    std::fs::write(&unit_path, text.replace("/usr/local/bin/corral", bin())).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit_path).output().unwrap();
    assert!(out.status.success(), "systemd-analyze verify:\n{}{}", stdout(&out), stderr(&out));
    let complaints = stderr(&out);
    assert!(!complaints.contains("corral.service"), "systemd-analyze verify complains:\n{complaints}");
}

#[test]
fn docker_image_runs_corral_as_pid_1_with_a_healthcheck() {
    let text = std::fs::read_to_string(repo().join("docker/Dockerfile")).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(has(r#"ENTRYPOINT ["corral", "run"]"#), "{text}");
    assert!(has("HEALTHCHECK") && has(r#"CMD ["corral", "health"]"#), "{text}");
    assert!(has("COPY docker/scraper.toml /etc/corral/supervisor.toml"));
    assert!(has("USER 10001"), "the image runs unprivileged");
    assert!(!lines.iter().any(|l| l.contains("tini") || l.contains("dumb-init")), "corral is the init");
    let compose = std::fs::read_to_string(repo().join("docker/compose.yaml")).unwrap();
    for needle in ["postgres:", "scraper-a:", "scraper-b:", "./scraper.toml:/etc/corral/supervisor.toml", "dockerfile: docker/Dockerfile", "init: false"] {
        assert!(compose.contains(needle), "compose.yaml lacks {needle:?}");
    }
    assert!(!compose.contains('\t'), "tabs are not YAML indentation");
}

/// Every shipped manifest passes `corral check`.
#[test]
fn corral_check_accepts_every_shipped_manifest() {
    fn tomls(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                tomls(&p, out);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    let mut files = vec![repo().join("supervisor.toml")];
    for d in ["examples", "systemd", "docker"] {
        tomls(&repo().join(d), &mut files);
    }
    assert!(files.len() >= 3, "{files:?}");
    let scratch = tempfile::tempdir().unwrap();
    for f in &files {
        let out = Command::new(bin())
            .args(["check", "-c"])
            .arg(f)
            .current_dir(scratch.path())
            .env("DATABASE_URL", "postgres://user:secret@127.0.0.1:1/app")
            .env_remove("CORRAL_CONFIG")
            .output()
            .unwrap();
        assert!(out.status.success(), "corral check {}:\n{}{}", f.display(), stdout(&out), stderr(&out));
        assert!(!stdout(&out).contains("secret") && !stderr(&out).contains("secret"), "password printed");
    }
}
