//! `[alerts]` (SPEC §9, issue 19) on the real binary, with a real HTTP receiver on loopback
//! (plain and TLS), real alert commands, and a real PostgreSQL stopped and started.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::dashboard::{free_port, get};
use crate::harness::{poll, setup, stderr, Corral, SEC};
use crate::pg::TestPg;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// 200 "ok" to every POST.
    Answer,
    /// Reads the request, then never answers (the connection stays open).
    Hang,
}

/// A webhook receiver on 127.0.0.1 (a port of its own): records every JSON body it is sent.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<(Instant, String, Value)>>>,
}

impl Receiver {
    fn start(mode: Mode) -> Receiver {
        Receiver::start_with(mode, None)
    }

    fn start_with(mode: Mode, tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let port = listener.local_addr().unwrap().port();
        let got: Arc<Mutex<Vec<(Instant, String, Value)>>> = Arc::default();
        let sink = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (sink, tls) = (sink.clone(), tls.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    match tls {
                        Some(cfg) => {
                            let Ok(conn) = rustls::ServerConnection::new(cfg) else { return };
                            serve(rustls::StreamOwned::new(conn, stream), mode, &sink);
                        }
                        None => serve(stream, mode, &sink),
                    }
                });
            }
        });
        Receiver { port, got }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/T000/B000/s3cr3t-path", self.port)
    }

    fn all(&self) -> Vec<Value> {
        self.got.lock().unwrap().iter().map(|(_, _, v)| v.clone()).collect()
    }

    fn of(&self, event: &str) -> Vec<Value> {
        self.all().into_iter().filter(|v| v["event"] == event).collect()
    }

    /// Poll until at least `n` alerts of `event` arrived.
    fn wait_for(&self, c: &Corral, event: &str, n: usize, timeout: Duration) -> Vec<Value> {
        if !poll(timeout, || self.of(event).len() >= n) {
            panic!("no {n} {event} alert(s) within {timeout:?}; got {:#?}\n--- corral ---\n{}", self.all(), c.output());
        }
        self.of(event)
    }
}

fn serve<S: Read + Write>(stream: S, mode: Mode, sink: &Mutex<Vec<(Instant, String, Value)>>) {
    let mut r = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if r.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
        let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| Value::String(format!("not JSON ({e}): {}", String::from_utf8_lossy(&body))));
        sink.lock().unwrap().push((Instant::now(), path, v));
        if mode == Mode::Hang {
            std::thread::sleep(Duration::from_secs(600));
            return;
        }
        let s = r.get_mut();
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok").is_err() || s.flush().is_err() {
            return;
        }
    }
}

/// The value of one series in a `/metrics` page (0 when absent).
fn metric(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .fold(0.0, |a, b| a + b)
}

fn restarts(c: &Corral, job: &str) -> u64 {
    c.job(job)["restarts"].as_u64().unwrap_or(0)
}

#[test]
fn a_fatal_job_sends_one_alert_with_its_redacted_stderr_tail_and_one_recovery() {
    let rx = Receiver::start(Mode::Answer);
    let c = Corral::start(&format!(
        r#"
[alerts]
webhook = "{url}"
command = ["sh", "-c", "cat >> {{dir}}/alerts.jsonl"]
min_interval = "1m"

[jobs.crasher]
command = ["sh", "-c", "if [ -f {{dir}}/ok ]; then exec sleep 1000; fi; echo 'connecting to postgres://app:hunter2@db:5432/app' >&2; echo 'password=hunter2 rejected' >&2; echo 'Traceback: boom' >&2; exit 3"]
start_retries = 2
backoff = {{ initial = "50ms", max = "100ms" }}
healthy_after = "500ms"
"#,
        url = rx.url()
    ));
    c.wait_state("crasher", "fatal", 20 * SEC);
    let fatal = rx.wait_for(&c, "fatal", 1, 10 * SEC);
    let a = &fatal[0];
    assert_eq!(a["job"], "crasher", "{a}");
    for key in ["event", "job", "service", "host", "message", "text", "at", "details"] {
        assert!(a.get(key).is_some(), "{key} missing: {a}");
    }
    assert_eq!(a["details"]["exit"]["code"], 3, "{a}");
    let tail: Vec<&str> = a["details"]["stderr_tail"].as_array().unwrap().iter().filter_map(|l| l.as_str()).collect();
    assert!(tail.iter().any(|l| l.contains("Traceback: boom")), "{a}");
    assert!(!a.to_string().contains("hunter2"), "a password reached the alert: {a}");
    assert!(a["text"].as_str().unwrap().contains("crasher"), "{a}");
    assert!(rx.got.lock().unwrap().iter().all(|(_, p, _)| p == "/hooks/T000/B000/s3cr3t-path"));
    assert!(!c.output().contains("s3cr3t-path"), "the webhook's secret path reached corral's log");

    // The command got the same JSON on stdin, and was reaped as an alert command (not a zombie).
    let file = c.path("alerts.jsonl");
    assert!(poll(10 * SEC, || std::fs::read_to_string(&file).is_ok_and(|t| t.contains("\"event\":\"fatal\""))), "{}", c.output());
    assert_eq!(c.status()["supervisor"]["zombies_reaped"], 0, "{}", c.status());

    // The job runs again: one recovery.
    std::fs::write(c.path("ok"), "").unwrap();
    let out = c.ctl(&["start", "crasher"]);
    assert!(out.status.success(), "{}", stderr(&out));
    c.wait_state("crasher", "running", 10 * SEC);
    let recovered = rx.wait_for(&c, "recovered", 1, 10 * SEC);
    assert_eq!(recovered[0]["job"], "crasher");
    // Nothing else follows: exactly one fatal and one recovery.
    std::thread::sleep(Duration::from_millis(800)); // a window in which a duplicate would show
    assert_eq!((rx.of("fatal").len(), rx.of("recovered").len()), (1, 1), "{:#?}", rx.all());
}

#[test]
fn a_flapping_job_sends_a_bounded_number_of_alerts_and_counts_the_rest() {
    let rx = Receiver::start(Mode::Answer);
    let port = free_port();
    let c = Corral::start(&format!(
        r#"
[http]
listen = "127.0.0.1:{port}"

[alerts]
webhook = "{url}"
min_interval = "2s"
crash_loop = {{ restarts = 3, window = "1m" }}

[jobs.flapper]
command = ["sh", "-c", "echo flap >&2; exit 1"]
restart = "always"
start_retries = 10000
backoff = {{ initial = "20ms", max = "20ms" }}
healthy_after = "10s"
"#,
        url = rx.url()
    ));
    let run = 8 * SEC;
    let t0 = Instant::now();
    rx.wait_for(&c, "crash_loop", 1, 10 * SEC);
    while t0.elapsed() < run {
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = c.ctl(&["stop", "flapper"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let total_restarts = restarts(&c, "flapper");
    // crash_loop fires from the third restart in the window on: every one after is an event.
    let events = total_restarts.saturating_sub(2);
    // The last summary goes out when the interval after the stop ends.
    let accounted = |alerts: &[Value]| -> u64 {
        alerts.iter().map(|a| if a["details"]["summary"] == true { 0 } else { 1 } + a["details"]["suppressed"].as_u64().unwrap_or(0)).sum()
    };
    let done = poll(10 * SEC, || accounted(&rx.of("crash_loop")) >= events);
    let alerts = rx.of("crash_loop");
    let sent = alerts.len() as u64;
    eprintln!("FIGURES flood: {total_restarts} restarts in {:.1}s -> {events} crash_loop events -> {sent} alerts sent ({} summaries)", t0.elapsed().as_secs_f64(), alerts.iter().filter(|a| a["details"]["summary"] == true).count());
    assert!(done, "alerts account for {} of {events} events: {alerts:#?}", accounted(&alerts));
    assert_eq!(accounted(&alerts), events, "{alerts:#?}");
    assert!(total_restarts > 50, "the job flapped only {total_restarts} times\n{}", c.output());
    // At most one per 2 s interval (plus the first and the final summary) for ~10 s.
    let elapsed = t0.elapsed().as_secs();
    assert!(sent <= 2 + elapsed / 2, "{sent} alerts in {elapsed}s: {alerts:#?}");
    let summary = alerts.iter().find(|a| a["details"]["summary"] == true).expect("a summary");
    assert!(summary["message"].as_str().unwrap().contains("suppressed"), "{summary}");
    let page = get(port, "/metrics", &[]).body;
    let suppressed = metric(&page, "corral_alerts_suppressed_total", &[("event", "crash_loop")]);
    assert_eq!(suppressed as u64, events - alerts.iter().filter(|a| a["details"]["summary"] != true).count() as u64, "{page}");
    assert_eq!(metric(&page, "corral_alerts_sent_total", &[("event", "crash_loop"), ("sink", "webhook")]) as u64, sent, "{page}");
}

/// Status latency (ms) of `corral status --json` over `d`: (max, median, samples).
fn status_latency(c: &Corral, d: Duration) -> (f64, f64, usize) {
    let mut ms = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < d {
        let t = Instant::now();
        let out = c.ctl(&["status", "--json"]);
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() - 1], ms[ms.len() / 2], ms.len())
}

fn flapping_with_alerts_to(url: &str, port: u16) -> Corral {
    Corral::start(&format!(
        r#"
[http]
listen = "127.0.0.1:{port}"

[alerts]
webhook = "{url}"
min_interval = "0s"
timeout = "1s"
retries = 1
crash_loop = {{ restarts = 1, window = "1m" }}

[jobs.flapper]
command = ["sh", "-c", "exit 1"]
restart = "always"
start_retries = 10000
backoff = {{ initial = "50ms", max = "50ms" }}
healthy_after = "10s"

[jobs.steady]
command = ["sleep", "1000"]
on_duplicate = "ignore"  # other tests run the same command
"#
    ))
}

#[test]
fn a_hanging_or_down_receiver_never_delays_status_or_restarts() {
    for (what, rx) in [("hanging", Some(Receiver::start(Mode::Hang))), ("down", None)] {
        let url = match &rx {
            Some(r) => r.url(),
            // Nothing listens there: every connection is refused.
            None => format!("http://127.0.0.1:{}/hook", free_port()),
        };
        let port = free_port();
        let c = flapping_with_alerts_to(&url, port);
        let r0 = restarts(&c, "flapper");
        let t0 = Instant::now();
        let (max, median, n) = status_latency(&c, 6 * SEC);
        let restarted = restarts(&c, "flapper") - r0;
        let secs = t0.elapsed().as_secs_f64();
        let page = get(port, "/metrics", &[]).body;
        let retries = metric(&page, "corral_alert_retries_total", &[("sink", "webhook")]);
        let dropped = metric(&page, "corral_alerts_dropped_total", &[("sink", "webhook")]);
        let sent = metric(&page, "corral_alerts_sent_total", &[]);
        eprintln!(
            "FIGURES {what} receiver: status over {n} calls max {max:.1} ms, median {median:.1} ms; {restarted} restarts in {secs:.1}s (backoff 50 ms); retries {retries}, dropped {dropped}, sent {sent}"
        );
        // A status call is a client process start plus one round trip: milliseconds (the bound
        // leaves room for a machine busy with other builds; the figures above are the measure).
        assert!(median < 200.0 && max < 2000.0, "{what}: status took {median:.1} ms (median), {max:.1} ms (max)\n{}", c.output());
        // 50 ms backoff plus a spawn: ~15 restarts a second; allow a loaded machine.
        assert!(restarted as f64 >= secs * 4.0, "{what}: only {restarted} restarts in {secs:.1}s\n{}", c.output());
        assert_eq!(c.job("steady")["state"], "running");
        assert!(retries >= 1.0, "{what}: no retry counted\n{page}");
        assert!(dropped >= 1.0, "{what}: nothing dropped although the receiver never answers\n{page}");
        assert_eq!(sent, 0.0, "{page}");
        if let Some(rx) = &rx {
            assert!(!rx.of("crash_loop").is_empty(), "the hanging receiver never saw a request");
        }
    }
}

#[test]
fn database_down_and_up_alerts_with_a_real_postgres() {
    let pg = TestPg::start_local(20);
    let rx = Receiver::start(Mode::Answer);
    let c = Corral::start(&format!(
        r#"
[database]
url = "{db}"
health_interval = "1s"
health_timeout = "2s"

[alerts]
webhook = "{url}"
events = ["database_down"]

[jobs.steady]
command = ["sleep", "1000"]
on_duplicate = "ignore"  # other tests run the same command
"#,
        db = pg.url(),
        url = rx.url()
    ));
    assert!(poll(20 * SEC, || c.ctl(&["health"]).status.success()), "{}", c.output());
    assert!(rx.all().is_empty(), "{:#?}", rx.all());
    let stopped = Instant::now();
    pg.stop_immediate();
    let down = rx.wait_for(&c, "database_down", 1, 20 * SEC);
    let down_after = stopped.elapsed();
    let err = down[0]["details"]["error"].as_str().unwrap_or_default().to_string();
    assert!(!err.is_empty(), "{}", down[0]);
    assert!(!down[0].to_string().contains(pg.password()), "the password reached the alert: {}", down[0]);
    assert_eq!(c.job("steady")["state"], "running");
    let started = Instant::now();
    pg.start_again();
    let up = rx.wait_for(&c, "database_up", 1, 30 * SEC);
    eprintln!("FIGURES database_down {:.1}s after the stop ({err}); database_up {:.1}s after the start", down_after.as_secs_f64(), started.elapsed().as_secs_f64());
    assert!(up[0]["details"]["latency_ms"].as_f64().is_some(), "{}", up[0]);
    // One of each: the failures in between are one episode.
    assert_eq!((rx.of("database_down").len(), rx.of("database_up").len()), (1, 1), "{:#?}", rx.all());
    assert_eq!(rx.all().len(), 2, "only database events were selected: {:#?}", rx.all());
}

#[test]
fn alert_test_sends_one_test_alert_over_https_and_fails_clearly_when_nobody_answers() {
    let (dir, ca) = test_ca();
    let rx = Receiver::start_with(Mode::Answer, Some(ca.clone()));
    let (_d, config, _s) = setup(&format!(
        "[alerts]\nwebhook = \"https://localhost:{}/hook\"\ncommand = [\"sh\", \"-c\", \"cat > {{dir}}/test.json\"]\n\n[jobs.a]\ncommand = [\"true\"]\nautostart = false\n",
        rx.port
    ));
    let ca_file = dir.path().join("ca.pem");
    let out = std::process::Command::new(crate::harness::bin()).args(["alert-test", "-c"]).arg(&config).env("SSL_CERT_FILE", &ca_file).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(rx.of("test").len(), 1, "{:#?}", rx.all());
    let from_cmd: Value = serde_json::from_str(&std::fs::read_to_string(config.with_file_name("test.json")).unwrap()).unwrap();
    assert_eq!(from_cmd["event"], "test");

    // Without the CA: the certificate is not trusted, and the error says what to do.
    let out = std::process::Command::new(crate::harness::bin()).args(["alert-test", "-c"]).arg(&config).env("SSL_CERT_FILE", "/nonexistent").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("SSL_CERT_FILE"), "{}", stderr(&out));

    // Nobody listens: exit 1 with the reason.
    let (_d, config, _s) = setup(&format!("[alerts]\nwebhook = \"http://127.0.0.1:{}/x\"\ntimeout = \"2s\"\n\n[jobs.a]\ncommand = [\"true\"]\n", free_port()));
    let out = std::process::Command::new(crate::harness::bin()).args(["alert-test", "-c"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("failed") && stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}

#[test]
fn the_daemon_posts_over_https_with_the_system_roots() {
    let (dir, ca) = test_ca();
    let rx = Receiver::start_with(Mode::Answer, Some(ca));
    let (d, config, socket) = setup(&format!(
        "[alerts]\nwebhook = \"https://localhost:{}/hook\"\n\n[jobs.dies]\ncommand = [\"sh\", \"-c\", \"echo bye >&2; exit 7\"]\nstart_retries = 1\nbackoff = {{ initial = \"10ms\", max = \"10ms\" }}\n",
        rx.port
    ));
    let ca_file = dir.path().join("ca.pem");
    let c = Corral::spawn_in(d, config, socket, &[("SSL_CERT_FILE", ca_file.to_str().unwrap())]);
    c.wait_ready();
    let fatal = rx.wait_for(&c, "fatal", 1, 20 * SEC);
    assert_eq!(fatal[0]["details"]["exit"]["code"], 7);
}

#[test]
fn check_rejects_a_bad_alerts_section_with_line_and_column() {
    let (_d, config, _s) = setup("[alerts]\nwebhook = \"http://127.0.0.1:9/x\"\nevents = [\"fatl\"]\n\n[jobs.a]\ncommand = [\"true\"]\n");
    let out = std::process::Command::new(crate::harness::bin()).args(["check", "-c"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    // The harness prepends a 4-line [supervisor] table.
    assert!(err.contains("supervisor.toml:7:11") && err.contains("did you mean \"fatal\""), "{err}");
    let (_d, config, _s) = setup("[alerts]\nwebhook = \"https://hooks.slack.com/services/T/B/X\"\nmin_interval = \"1m\"\n\n[jobs.a]\ncommand = [\"true\"]\n");
    let out = std::process::Command::new(crate::harness::bin()).args(["check", "-c"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("alerts: to webhook https://hooks.slack.com:443/…") && text.contains("min_interval 1m"), "{text}");
    assert!(!text.contains("T/B/X"), "the webhook's secret path was printed: {text}");
}

/// A CA and a certificate for `localhost` it signed (like the TLS cluster's), as a rustls
/// server config; `ca.pem` in the returned dir.
fn test_ca() -> (tempfile::TempDir, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let dir = tempfile::tempdir().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "corral alerts test CA");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    let ca = p.self_signed(&ca_key).unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    (dir, Arc::new(cfg))
}

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/prometheus/corral.rules.yml");

fn promtool(args: &[&str]) -> std::process::Output {
    std::process::Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool ({e}): install it with `apt-get install prometheus` (./test does)"))
}

/// One scrape as Prometheus would store it with a plain scrape config: corral's `job` label
/// becomes `exported_job`, and the target adds `job` and `instance`.
fn scrape(port: u16) -> std::collections::BTreeMap<String, f64> {
    let body = get(port, "/metrics", &[]).body;
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("prometheus text");
    parsed
        .samples
        .into_iter()
        .filter_map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => return None,
            };
            let mut labels: std::collections::BTreeMap<String, String> =
                s.labels.iter().map(|(k, v)| (if k == "job" { "exported_job".to_string() } else { k.clone() }, v.clone())).collect();
            labels.insert("job".into(), "corral".into());
            labels.insert("instance".into(), "corral:9464".into());
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))).collect();
            Some((format!("{}{{{}}}", s.metric, l.join(",")), v))
        })
        .collect()
}

/// The annotations of `alert` in the rules file, rendered for `labels` (they use only `$labels`).
fn annotations(alert: &str, labels: &[(&str, &str)]) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(RULES).unwrap();
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("- alert: ") {
            inside = name == alert;
        } else if inside {
            for key in ["summary", "description"] {
                if let Some(v) = t.strip_prefix(&format!("{key}: ")) {
                    let mut v = v.trim_matches('"').to_string();
                    for (k, val) in labels {
                        v = v.replace(&format!("{{{{ $labels.{k} }}}}"), val);
                    }
                    out.push((key.to_string(), v));
                }
            }
        }
    }
    assert_eq!(out.len(), 2, "annotations of {alert} not found in {RULES}");
    out
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn expect(alert: &str, eval: &str, firing: &[&[(&str, &str)]]) -> String {
    let mut y = format!("      - eval_time: {eval}\n        alertname: {alert}\n        exp_alerts:");
    if firing.is_empty() {
        y.push_str(" []\n");
        return y;
    }
    y.push('\n');
    for labels in firing {
        y.push_str("          - exp_labels:\n");
        for (k, v) in *labels {
            y.push_str(&format!("              {k}: {}\n", yaml_str(v)));
        }
        y.push_str("            exp_annotations:\n");
        for (k, v) in annotations(alert, labels) {
            y.push_str(&format!("              {k}: {}\n", yaml_str(&v)));
        }
    }
    y
}

#[test]
fn prometheus_rules_pass_promtool_on_series_scraped_from_the_real_binary() {
    let check = promtool(&["check", "rules", RULES]);
    assert!(check.status.success(), "{}{}", String::from_utf8_lossy(&check.stdout), stderr(&check));

    let pg = TestPg::start_local(20);
    let port = free_port();
    let c = Corral::start(&format!(
        r#"
[database]
url = "{db}"
provider_reserve = 0
adhoc_reserve = 2
health_interval = "1s"
health_timeout = "2s"

[budget]
rebalance_interval = "300ms"

[http]
listen = "127.0.0.1:{port}"

[jobs.crasher]
command = ["sh", "-c", "exit 3"]
start_retries = 2
backoff = {{ initial = "10ms", max = "10ms" }}

[jobs.flapper]
command = ["sh", "-c", "exit 1"]
restart = "always"
start_retries = 10000
backoff = {{ initial = "200ms", max = "200ms" }}
healthy_after = "10s"

[jobs.worker]
command = ["{w}"]
on_duplicate = "ignore"  # other tests run the same worker
connections = {{ min = 1, max = 100 }}
"#,
        db = pg.url(),
        w = crate::budget::worker()
    ));
    c.wait_state("crasher", "fatal", 20 * SEC);
    c.wait_state("worker", "running", 20 * SEC);
    let saturated = poll(30 * SEC, || {
        let out = c.ctl(&["budget", "--json"]);
        let b: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        b["usable"].as_u64().is_some_and(|u| u > 0 && b["live"].as_u64() == Some(u))
    });
    assert!(saturated, "the worker never held the whole budget\n{}", c.output());

    // Each scrape stands for one minute of a Prometheus that scrapes every minute.
    let mut scrapes = Vec::new();
    for _ in 0..8 {
        scrapes.push(scrape(port));
        std::thread::sleep(SEC);
    }
    pg.stop_immediate();
    assert!(poll(20 * SEC, || scrape(port).get("corral_db_up{instance=\"corral:9464\",job=\"corral\"}") == Some(&0.0)), "{}", c.output());
    for _ in 0..4 {
        scrapes.push(scrape(port));
        std::thread::sleep(SEC);
    }
    let names: std::collections::BTreeSet<&String> = scrapes.iter().flat_map(|s| s.keys()).collect();
    let mut y = format!("rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n", yaml_str(RULES));
    for name in &names {
        let values: Vec<String> = scrapes.iter().map(|s| s.get(*name).map_or("_".to_string(), |v| format!("{v}"))).collect();
        y.push_str(&format!("      - series: {}\n        values: {}\n", yaml_str(name), yaml_str(&values.join(" "))));
    }
    y.push_str("    alert_rule_test:\n");
    let target: &[(&str, &str)] = &[("instance", "corral:9464"), ("job", "corral")];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> { target.iter().copied().chain(extra.iter().copied()).collect() };
    let fatal = with(&[("exported_job", "crasher"), ("state", "fatal"), ("severity", "critical")]);
    let looping = with(&[("exported_job", "flapper"), ("severity", "warning")]);
    let warning = with(&[("severity", "warning")]);
    let critical = with(&[("severity", "critical")]);
    y.push_str(&expect("CorralJobFatal", "7m", &[&fatal[..]]));
    y.push_str(&expect("CorralJobCrashLooping", "7m", &[&looping[..]]));
    y.push_str(&expect("CorralBudgetHigh", "7m", &[&warning[..]]));
    y.push_str(&expect("CorralBudgetLowAvailability", "7m", &[&warning[..]]));
    y.push_str(&expect("CorralDatabaseDown", "7m", &[]));
    y.push_str(&expect("CorralJobOverQuota", "7m", &[]));
    y.push_str(&expect("CorralAlertsDropped", "7m", &[]));
    y.push_str(&expect("CorralDatabaseDown", "11m", &[&critical[..]]));
    let file = c.path("corral.rules.test.yml");
    std::fs::write(&file, &y).unwrap();
    let out = promtool(&["test", "rules", file.to_str().unwrap()]);
    assert!(out.status.success(), "promtool test rules failed:\n{}{}\n--- test file ---\n{y}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    eprintln!("FIGURES promtool: {} series from {} scrapes of the real binary, 8 alert tests passed", names.len(), scrapes.len());
}
