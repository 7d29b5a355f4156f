//! The dashboard (SPEC §9, issue 18) in a real headless Chromium: the page shows the jobs,
//! their states and the budget of a real PostgreSQL, follows a `corral stop` without a
//! reload, and the `[http] token` keeps everything but `/health` closed. A screenshot of
//! the page is written with the test output (`target/tmp/dashboard.png`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use crate::browser::{artifact, publish, Browser};
use crate::budget::worker;
use crate::harness::{setup, stdout, Corral, SEC};
use crate::pg::TestPg;

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub(crate) struct Reply {
    pub code: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// One GET with extra header lines, on a fresh connection.
pub(crate) fn get(port: u16, path: &str, extra: &[(&str, &str)]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to corral's http port");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read reply");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end: {raw:?}"));
    let mut lines = head.lines();
    let code = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).expect("status line");
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    Reply { code, headers, body: body.to_string() }
}

const TOKEN: &str = "dash-T0ken/with+odd=chars";

fn enc(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// The state the page shows for `job`, as JS.
fn state_of(job: &str) -> String {
    format!("(document.querySelector('tr[data-job=\"{job}\"]') || {{dataset: {{}}}}).dataset.state")
}

#[test]
fn dashboard_in_a_real_browser_shows_the_budget_and_follows_a_stop_live() {
    let pg = TestPg::start_local(40);
    let port = free_port();
    let c = Corral::start(&format!(
        r#"
[database]
url = "{url}"
provider_reserve = 4
adhoc_reserve = 3
external_reserve = 1
health_interval = "2s"
health_timeout = "5s"

[budget]
service = "scraper"
rebalance_interval = "1s"

[http]
listen = "127.0.0.1:{port}"
token = "{TOKEN}"

[jobs.layer1_5]
command = ["{w}"]
on_duplicate = "ignore"  # other tests run the same worker
priority = 10
connections = {{ min = 2, max = 8 }}

[jobs.api_sync]
command = ["{w}"]
on_duplicate = "ignore"  # other tests run the same worker
connections = 3

[jobs.steady]
command = ["sh", "-c", "while true; do echo tick; sleep 1; done", "{{dir}}"]

[jobs.exporter]
command = ["sh", "-c", "exec sleep 1000", "{{dir}}"]
connections = 2

[jobs.flaky]
command = ["sh", "-c", "echo starting; sleep 2; echo crash >&2; exit 1", "{{dir}}"]
restart = "always"
backoff = {{ initial = "1s", max = "2s" }}
start_retries = 1000
"#,
        url = pg.url(),
        w = worker(),
    ));
    for job in ["layer1_5", "api_sync", "steady", "exporter"] {
        c.wait_state(job, "running", 20 * SEC);
    }
    let _ = c.ctl(&["reserve", "psql-debug", "-n", "2"]);
    // Live use read back from pg_stat_activity: the workers hold their quotas.
    c.wait_job("layer1_5", 30 * SEC, "its connections read live", |j| j["connections"].as_u64() >= Some(2));

    let mut b = Browser::start(1280, 1000);
    b.navigate(&format!("http://127.0.0.1:{port}/?token={}", enc(TOKEN)));
    b.wait_for(
        &format!("{} === 'running' && {} === 'running' && {} === 'running'", state_of("layer1_5"), state_of("api_sync"), state_of("steady")),
        60 * SEC,
        "the three long-running jobs shown running",
    );

    // The budget bar: one part per granted job with its quota, and the reserves.
    let budget: Value = serde_json::from_str(&stdout(&c.ctl(&["budget", "--json"]))).unwrap();
    for j in budget["jobs"].as_array().unwrap() {
        let (name, quota) = (j["name"].as_str().unwrap(), j["quota"].as_u64().unwrap());
        if quota == 0 {
            continue;
        }
        b.wait_for(
            &format!("[...document.querySelectorAll('#bar .seg.job')].some(s => s.title.startsWith('{name}: ') && s.dataset.count === '{quota}')"),
            20 * SEC,
            &format!("a bar part for {name} with its quota {quota}"),
        );
    }
    for (kind, key) in [("provider", "provider_reserve"), ("adhoc", "adhoc_reserve"), ("external", "external_reserve"), ("own", "own")] {
        let n = budget[key].as_u64().unwrap();
        b.wait_for(&format!("(document.querySelector('#bar .seg.{kind}') || {{dataset: {{}}}}).dataset.count === '{n}'"), 20 * SEC, &format!("the {kind} part of the bar ({n})"));
    }
    b.wait_for("(document.querySelector('#bar .seg.reservations') || {dataset: {}}).dataset.count === '2'", 20 * SEC, "the reservation in the bar");
    // Live use is overlaid on the grants.
    b.wait_for("[...document.querySelectorAll('#bar .seg.job')].some(s => Number(s.dataset.live) > 0)", 30 * SEC, "live use drawn in a job's part");
    b.wait_for(
        "document.querySelector('tr[data-job=\"layer1_5\"] .conn span').textContent.match(/^[1-9]\\d* \\/ [1-9]/) !== null",
        30 * SEC,
        "live connections against quota in the jobs table",
    );
    b.wait_for("document.getElementById('db-pill').textContent === 'healthy'", 20 * SEC, "database healthy");
    b.wait_for("document.getElementById('limit-line').textContent.includes('(server)')", 20 * SEC, "the limit's source");
    // /metrics has what the page shows, from the same answers.
    let m = get(port, "/metrics", &[("Authorization", &format!("Bearer {TOKEN}"))]);
    assert_eq!(m.code, 200);
    let value = |name: &str| -> f64 {
        m.body.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok())).unwrap_or_else(|| panic!("no {name} in\n{}", m.body))
    };
    for (metric, key) in [("corral_budget_limit", "limit"), ("corral_budget_usable", "usable"), ("corral_budget_provider_reserve", "provider_reserve"), ("corral_budget_own", "own")] {
        assert_eq!(value(metric), budget[key].as_f64().unwrap(), "{metric}");
    }
    assert_eq!(value("corral_budget_reserved"), 2.0);
    assert_eq!(value("corral_budget_reservation{name=\"psql-debug\"}"), 2.0);
    assert_eq!(value("corral_db_max_connections"), 40.0);
    assert_eq!(value("corral_job_state{job=\"layer1_5\",state=\"running\"}"), 1.0);
    assert_eq!(value("corral_job_state{job=\"layer1_5\",state=\"stopped\"}"), 0.0);
    assert!(value("corral_job_connections{job=\"layer1_5\"}") >= 1.0);
    assert!(m.body.lines().any(|l| l.starts_with("corral_budget_limit_source_info{source=\"server\",reason=\"") && l.ends_with("} 1")), "no limit source in\n{}", m.body);
    assert_eq!(value(&format!("corral_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), 1.0);
    let started = value("corral_start_time_seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(started > now - 600.0 && started <= now, "start time {started}");

    let text = b.eval("document.body.innerText").as_str().unwrap_or("").to_string();
    assert!(!text.contains(pg.password()), "the password reached the page:\n{text}");

    // The page follows a stop without a reload.
    assert_eq!(b.eval("window.__not_reloaded = 42"), serde_json::json!(42));
    let updates_before: u64 = b.eval("Number(document.body.dataset.updates)").as_u64().unwrap_or(0);
    let out = c.ctl(&["stop", "steady"]);
    assert!(out.status.success(), "stop: {}", String::from_utf8_lossy(&out.stderr));
    b.wait_for(&format!("{} === 'stopped'", state_of("steady")), 30 * SEC, "steady shown stopped after `corral stop`");
    assert_eq!(b.eval("window.__not_reloaded"), serde_json::json!(42), "the page was reloaded");
    assert!(b.eval("Number(document.body.dataset.updates)").as_u64().unwrap_or(0) > updates_before);
    // ... and lists it among the recent events, with the flaky job's restarts.
    b.wait_for(
        "[...document.querySelectorAll('#events li')].some(li => li.dataset.kind === 'control' && li.textContent.includes('steady') && li.textContent.includes('stop requested'))",
        30 * SEC,
        "the stop among the recent events",
    );
    b.wait_for("[...document.querySelectorAll('#events li')].some(li => li.dataset.kind === 'exit' && li.textContent.includes('flaky'))", 30 * SEC, "flaky's exit among the events");
    // The latency sparkline has readings.
    b.wait_for("document.querySelector('#spark polyline') !== null && document.getElementById('spark-note').textContent.includes('readings')", 30 * SEC, "latency readings in the sparkline");

    if std::env::var_os("CORRAL_UPDATE_DOCS").is_some() {
        // For the README: a minute of latency history.
        b.wait_for("/^([6-9]|\\d\\d+) readings/.test(document.getElementById('spark-note').textContent)", 180 * SEC, "six latency samples");
    }
    let shot = artifact("dashboard.png");
    b.screenshot(&shot);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "screenshot too small");
    publish(&shot);
}

#[test]
fn dashboard_token_guards_every_path_but_health() {
    let port = free_port();
    let c = Corral::start(&format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n\n[jobs.a]\ncommand = [\"sh\", \"-c\", \"exec sleep 1000\", \"{{dir}}\"]\n"
    ));
    c.wait_state("a", "running", 10 * SEC);
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/", "/status", "/budget", "/history", "/metrics", "/nope"] {
        for extra in [vec![], vec![("Authorization", "Bearer wrong")], vec![("Authorization", TOKEN)]] {
            let r = get(port, path, &extra);
            assert_eq!(r.code, 401, "{path} {extra:?}: {}", r.body);
            assert_eq!(r.headers.get("www-authenticate").map(String::as_str), Some("Bearer realm=\"corral\""));
            assert!(!r.body.contains("\"jobs\""), "{path} leaked: {}", r.body);
        }
        let sep = if path.contains('?') { '&' } else { '?' };
        for r in [get(port, path, &[("Authorization", &bearer)]), get(port, &format!("{path}{sep}token={}", enc(TOKEN)), &[])] {
            let want = match path {
                "/nope" => 404,
                "/budget" => 404, // no [database]
                _ => 200,
            };
            assert_eq!(r.code, want, "{path}: {}", r.body);
        }
        let wrong = get(port, &format!("{path}?token=x{}", enc(TOKEN)), &[]);
        assert_eq!(wrong.code, 401, "{path}");
    }
    assert_eq!(get(port, "/health", &[]).code, 200);
    let page = get(port, "/", &[("Authorization", &bearer)]);
    assert!(page.headers["content-type"].starts_with("text/html"), "{:?}", page.headers);
    assert!(page.headers["content-security-policy"].contains("default-src 'none'"), "{:?}", page.headers);
    assert!(page.body.contains("<script>") && !page.body.contains("<script src"), "the script is inline");

    // In the browser: without the token the page is refused.
    let mut b = Browser::start(800, 600);
    b.navigate(&format!("http://127.0.0.1:{port}/"));
    b.wait_for("document.body && document.body.innerText.includes('unauthorized')", 60 * SEC, "the 401 page");
    b.navigate(&format!("http://127.0.0.1:{port}/?token={}", enc(TOKEN)));
    b.wait_for(&format!("{} === 'running'", state_of("a")), 60 * SEC, "the job shown with the token");
    b.wait_for("document.getElementById('budget-card').hidden && document.getElementById('db-card').hidden", 10 * SEC, "no budget without a [database]");
}

#[test]
fn tokenless_listener_beyond_loopback_logs_a_warning() {
    let job = "[jobs.a]\ncommand = [\"sh\", \"-c\", \"exec sleep 1000\", \"{dir}\"]\n";
    for (listen, token, warns) in [("0.0.0.0", "", true), ("0.0.0.0", "token = \"t\"\n", false), ("127.0.0.1", "", false)] {
        let port = free_port();
        let (dir, config, socket) = setup(&format!("[http]\nlisten = \"{listen}:{port}\"\n{token}\n{job}"));
        let c = Corral::spawn_in(dir, config, socket, &[]);
        c.wait_ready();
        c.wait_output("over HTTP", 10 * SEC);
        assert_eq!(c.output().contains("without a token"), warns, "{listen} {token:?}:\n{}", c.output());
    }
}

#[test]
fn dashboard_in_fleet_scope_lists_the_members_and_their_jobs() {
    let pg = TestPg::start_local(40);
    let port = free_port();
    let member = |service: &str, http: &str, job: &str| {
        format!(
            "[supervisor]\nsocket = \"{{dir}}/corral.sock\"\nlock_dir = \"{{dir}}/locks\"\n\n\
             [database]\nurl = \"{url}\"\nprovider_reserve = 2\nadhoc_reserve = 3\nhealth_interval = \"2s\"\n\n\
             [budget]\nscope = \"fleet\"\nservice = \"{service}\"\nrebalance_interval = \"500ms\"\n\n{http}\n\
             [jobs.{job}]\ncommand = [\"sh\", \"-c\", \"exec sleep 1000\", \"{{dir}}\"]\nconnections = 2\n",
            url = pg.url()
        )
    };
    let a = Corral::start(&member("scraper", &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"), "crawl"));
    let b = Corral::start(&member("viewer", "", "render"));
    a.wait_state("crawl", "running", 30 * SEC);
    b.wait_state("render", "running", 30 * SEC);

    let mut br = Browser::start(1280, 1000);
    br.navigate(&format!("http://127.0.0.1:{port}/"));
    br.wait_for("!document.getElementById('fleet-card').hidden && document.querySelectorAll('#members tbody tr').length === 2", 60 * SEC, "two fleet members");
    let members = br.eval("[...document.querySelectorAll('#members tbody tr')].map(tr => tr.children[2].textContent).sort().join(',')");
    assert_eq!(members, serde_json::json!("scraper,viewer"));
    br.wait_for("[...document.querySelectorAll('#members tbody tr')].some(tr => tr.children[0].textContent.endsWith('(this one)'))", 10 * SEC, "this corral marked");
    // Both members' grants are parts of the one bar; the other member's job is named with its host.
    br.wait_for("[...document.querySelectorAll('#bar .seg.job')].some(s => s.title.startsWith('crawl: 2'))", 30 * SEC, "this member's job in the bar");
    br.wait_for("[...document.querySelectorAll('#bar .seg.job')].some(s => s.title.startsWith('render@') && s.dataset.count === '2')", 30 * SEC, "the other member's job in the bar");
    br.wait_for("document.getElementById('db').textContent.includes('coordination') && document.getElementById('db').textContent.includes('healthy')", 30 * SEC, "the coordination's health");

    let metrics = get(port, "/metrics", &[]);
    assert!(metrics.body.lines().any(|l| l == "corral_fleet_members 2"), "{}", metrics.body);
    assert!(metrics.body.lines().any(|l| l == "corral_fleet_coordination_up 1"), "{}", metrics.body);
}
