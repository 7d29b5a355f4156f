//! The control plane through the real binary (SPEC §1, §4, §10): every verb
//! via the CLI with its exit code, the `status` table and JSON shape, `logs`,
//! the socket protocol under hostile or careless clients, and the socket's
//! permissions and single-instance rules.
//!
//! Raw protocol tests speak to the socket with std `UnixStream`s, one JSON
//! object per line, exactly as a third-party client would.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

/// Send `request` bytes on a fresh connection and read one response line.
fn raw(socket: &Path, request: &[u8]) -> Value {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(10 * SEC)).unwrap();
    s.write_all(request).expect("write request");
    read_response(&mut BufReader::new(s))
}

fn read_response(r: &mut impl BufRead) -> Value {
    let mut line = String::new();
    r.read_line(&mut line).expect("read response");
    assert!(line.ends_with('\n'), "response is one full line: {line:?}");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("response is not JSON ({e}): {line:?}"))
}

fn error_kind(resp: &Value) -> &str {
    assert_eq!(resp["ok"], false, "expected an error: {resp}");
    resp["error"]["kind"].as_str().unwrap_or_else(|| panic!("error without kind: {resp}"))
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn pid_of(job: &Value) -> i64 {
    job["pid"].as_i64().unwrap_or_else(|| panic!("no pid: {job}"))
}

fn pids(c: &Corral) -> Vec<(String, Value)> {
    c.status()["jobs"].as_array().unwrap().iter().map(|j| (j["name"].as_str().unwrap().to_string(), j["pid"].clone())).collect()
}

/// Sockets the daemon has open (the listener plus one per connection).
fn socket_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

const SLEEPER: &str = r#"
[jobs.alpha]
command = ["sh", "-c", "exec sleep 100000", "{dir}"]
healthy_after = "0s"
"#;

// ----- status -----

#[test]
fn status_table_has_aligned_columns_and_status_job_selects_rows() {
    let c = Corral::start(
        r#"
[jobs.alpha]
command = ["sh", "-c", "exec sleep 100000", "{dir}"]
healthy_after = "0s"

[jobs.a_much_longer_job_name]
command = ["sh", "-c", "exec sleep 100000", "{dir}"]
autostart = false

[jobs.quitter]
command = ["sh", "-c", "exit 3"]
restart = "never"
"#,
    );
    let alpha = pid_of(&c.wait_state("alpha", "running", 10 * SEC));
    c.wait_state("quitter", "exited", 10 * SEC);

    let out = c.ctl(&["status"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "header and one row per job:\n{text}");
    let header = lines[0];
    let cols = ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "QUOTA", "CONN", "REASON"];
    let starts: Vec<usize> = cols.iter().map(|h| header.find(h).unwrap_or_else(|| panic!("no {h} in {header:?}"))).collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "columns in SPEC order: {header:?}");
    assert_eq!(starts[0], 0);
    // Every cell starts exactly under its header, after a blank.
    let cell = |row: &str, i: usize| -> String {
        let end = starts.get(i + 1).copied().unwrap_or(row.len()).min(row.len());
        row.get(starts[i]..end).unwrap_or("").trim().to_string()
    };
    for row in &lines[1..] {
        for (i, &s) in starts.iter().enumerate().skip(1) {
            if s >= row.len() {
                continue; // an empty last column
            }
            let b = row.as_bytes();
            assert_eq!(b[s - 1], b' ', "column {} not aligned in {row:?}\n{text}", cols[i]);
            if i < cols.len() - 1 {
                assert_ne!(b[s], b' ', "column {} not aligned in {row:?}\n{text}", cols[i]);
            }
        }
    }
    // Rows are in name order.
    let row = |name: &str| *lines.iter().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no row {name}:\n{text}"));
    let r = row("alpha");
    assert_eq!(cell(r, 1), "RUNNING");
    assert_eq!(cell(r, 2), alpha.to_string());
    assert!(cell(r, 3).starts_with("0:00:"), "uptime like supervisorctl: {r:?}");
    assert_eq!(cell(r, 4), "0");
    assert_eq!(cell(r, 6), "-", "no quota without a database");
    let r = row("a_much_longer_job_name");
    assert_eq!((cell(r, 1).as_str(), cell(r, 2).as_str(), cell(r, 3).as_str()), ("STOPPED", "-", "-"));
    let r = row("quitter");
    assert_eq!((cell(r, 1).as_str(), cell(r, 5).as_str()), ("EXITED", "exit 3"));

    // `status JOB...` shows only those jobs.
    let out = c.ctl(&["status", "alpha"]);
    assert_eq!(code(&out), 0);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().nth(1).unwrap().starts_with("alpha "), "{text}");
    let out = c.ctl(&["status", "alpha", "quitter", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["jobs"].as_array().unwrap().iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alpha", "quitter"]);

    // An unknown job is a refusal (1) that names it.
    let out = c.ctl(&["status", "alpha", "nosuch"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("no such job: nosuch"), "{}", stderr(&out));
}

#[test]
fn status_json_has_exactly_the_spec_field_names() {
    let c = Corral::start(
        r#"
[jobs.alpha]
command = ["sh", "-c", "exec sleep 100000", "{dir}"]
healthy_after = "0s"

[jobs.idle]
command = ["sh", "-c", "exec sleep 100000", "{dir}"]
autostart = false

[jobs.quitter]
command = ["sh", "-c", "exit 3"]
restart = "never"

[jobs.killed]
command = ["sh", "-c", "kill -9 $$$$"]
restart = "never"
"#,
    );
    c.wait_state("alpha", "running", 10 * SEC);
    c.wait_state("quitter", "exited", 10 * SEC);
    c.wait_state("killed", "exited", 10 * SEC);
    let out = c.ctl(&["status", "--json"]);
    assert_eq!(code(&out), 0);
    assert_eq!(stdout(&out).lines().count(), 1, "one JSON object on one line");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.get("config_error").is_some_and(Value::is_null), "{v}");
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 4);
    let spec: BTreeSet<&str> =
        ["name", "state", "pid", "uptime_s", "restarts", "last_exit", "quota", "connections", "reason"].into();
    for j in jobs {
        let keys: BTreeSet<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
        assert!(spec.is_subset(&keys), "missing SPEC §4 fields {:?} in {j}", spec.difference(&keys).collect::<Vec<_>>());
        assert!(j["restarts"].is_u64(), "{j}");
        assert!(j["quota"].is_null() && j["connections"].is_null() && j["reason"].is_null(), "{j}");
    }
    let job = |n: &str| jobs.iter().find(|j| j["name"] == n).unwrap();
    let a = job("alpha");
    assert_eq!(a["state"], "running");
    assert!(a["pid"].is_i64() && a["uptime_s"].is_number(), "{a}");
    assert!(a["last_exit"].is_null(), "{a}");
    let i = job("idle");
    assert_eq!(i["state"], "stopped");
    assert!(i["pid"].is_null() && i["uptime_s"].is_null(), "{i}");
    let q = job("quitter");
    assert_eq!(q["last_exit"], serde_json::json!({"code": 3, "signal": null}));
    assert!(q["pid"].is_null() && q["uptime_s"].is_null(), "{q}");
    let k = job("killed");
    assert_eq!(k["last_exit"], serde_json::json!({"code": null, "signal": 9}));
    // The human table names the signal.
    let text = stdout(&c.ctl(&["status", "killed"]));
    assert!(text.contains("SIGKILL"), "{text}");
}

// ----- start / stop / restart -----

#[test]
fn stop_returns_only_once_the_job_is_stopped_and_start_restart_give_new_pids() {
    // The job takes a while to stop (its TERM trap sleeps), so a `stop` that
    // answered early would be seen as `stopping` below.
    let c = Corral::start(
        r#"
[jobs.slowstop]
command = ["sh", "-c", "trap 'sleep 0.4; exit 0' TERM; while :; do sleep 0.05; done", "{dir}"]
healthy_after = "0s"
"#,
    );
    let first = pid_of(&c.wait_state("slowstop", "running", 10 * SEC));
    let t = Instant::now();
    let out = c.ctl(&["stop", "slowstop"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(t.elapsed() >= Duration::from_millis(350), "stop answered before the job had stopped ({:?})", t.elapsed());
    assert_eq!(stdout(&out).trim(), "slowstop: stopped (stopped)");
    let j = c.job("slowstop");
    assert_eq!(j["state"], "stopped", "{j}");
    assert!(j["pid"].is_null());
    assert!(!pid_alive(first as i32), "pid {first} survived stop");

    // Stopping a stopped job is fine.
    assert_eq!(code(&c.ctl(&["stop", "slowstop"])), 0);

    let out = c.ctl(&["start", "slowstop", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["jobs"][0]["name"], "slowstop");
    let second = pid_of(&v["jobs"][0]);
    assert_ne!(second, first);
    assert_eq!(pid_of(&c.wait_state("slowstop", "running", 10 * SEC)), second);

    let out = c.ctl(&["restart", "slowstop"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("slowstop: restarted"), "{}", stdout(&out));
    let third = pid_of(&c.wait_state("slowstop", "running", 10 * SEC));
    assert!(third != second && third != first);
    assert!(!pid_alive(second as i32));

    let out = c.ctl(&["stop", "all", "--json"]);
    assert_eq!(code(&out), 0);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["jobs"][0]["state"], "stopped");
}

#[test]
fn start_clears_fatal_and_a_start_that_fails_exits_1() {
    let c = Corral::start(
        r#"
[jobs.crash]
command = ["sh", "-c", "echo x >> {dir}/starts; exit 1"]
start_retries = 0
backoff = { initial = "50ms", max = "50ms" }

[jobs.missing]
command = ["{dir}/no-such-program"]
autostart = false
start_retries = 0
"#,
    );
    let j = c.wait_state("crash", "fatal", 10 * SEC);
    assert!(j["reason"].is_string(), "fatal shows its reason: {j}");
    let out = c.ctl(&["start", "crash"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    c.wait_job("crash", 10 * SEC, "a second start", |_| {
        std::fs::read_to_string(c.path("starts")).unwrap_or_default().lines().count() >= 2
    });

    let out = c.ctl(&["start", "missing"]);
    assert_eq!(code(&out), 1, "a start that cannot spawn is refused: {}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("missing") && err.contains("no-such-program"), "the error names job and program: {err}");
    let out = c.ctl(&["start", "nosuch"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("no such job: nosuch"));
    for verb in ["stop", "restart"] {
        let out = c.ctl(&[verb, "nosuch", "--json"]);
        assert_eq!(code(&out), 1, "{verb}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{verb} --json error is JSON: {e}"));
        assert_eq!(v["kind"], "unknown_job");
    }
}

// ----- logs -----

#[test]
fn logs_n_prints_the_last_n_lines() {
    let c = Corral::start(
        r#"
[jobs.counter]
command = ["sh", "-c", "seq 1 100; exec sleep 100000", "{dir}"]
"#,
    );
    assert!(
        poll(10 * SEC, || stdout(&c.ctl(&["logs", "counter", "-n", "1"])).trim() == "100"),
        "the 100 lines never arrived: {}",
        stdout(&c.ctl(&["logs", "counter"]))
    );
    let out = c.ctl(&["logs", "counter", "-n", "5"]);
    assert_eq!(code(&out), 0);
    assert_eq!(stdout(&out), "96\n97\n98\n99\n100\n");
    let out = c.ctl(&["logs", "counter"]);
    assert_eq!(stdout(&out).lines().count(), 20, "default is 20 lines");
    let out = c.ctl(&["logs", "counter", "-n", "3", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let lines = v["lines"].as_array().unwrap();
    assert_eq!(lines.iter().map(|l| l["line"].as_str().unwrap()).collect::<Vec<_>>(), ["98", "99", "100"]);
    assert_eq!(lines[0]["job"], "counter");
    assert_eq!(lines[0]["stream"], "stdout");
    assert!(lines[0]["ts"].is_number());
    let out = c.ctl(&["logs", "nosuch"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("no such job"));
}

/// Lines from a child's stdout, read on a thread so the test can use deadlines.
fn line_reader(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Run `corral logs ... -f` and collect up to `n` of its lines (10 s at most), then stop it.
fn follow(c: &Corral, args: &[&str], n: usize) -> Vec<String> {
    let mut child = Command::new(bin()).args(["-s"]).arg(&c.socket).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let rx = line_reader(child.stdout.take().unwrap());
    let mut got = Vec::new();
    let deadline = Instant::now() + 10 * SEC;
    while got.len() < n && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            got.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    got
}

#[test]
fn logs_follow_streams_new_lines() {
    let c = Corral::start(
        r#"
[jobs.ticker]
command = ["sh", "-c", "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.05; done", "{dir}"]
"#,
    );
    let got = follow(&c, &["logs", "ticker", "-n", "1", "-f"], 10);
    assert!(got.len() >= 10, "follow streamed only {got:?}");
    let n: Vec<u64> = got.iter().map(|l| l.strip_prefix("tick ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{l:?}"))).collect();
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "consecutive lines, none lost or repeated: {n:?}");
}

#[test]
fn logs_follow_of_a_job_with_instances_streams_all_of_them_and_nothing_else() {
    let c = Corral::start(
        r#"
[jobs.t]
command = ["sh", "-c", "while :; do echo tick $$CORRAL_INSTANCE; sleep 0.05; done"]
instances = 2

[jobs.other]
command = ["sh", "-c", "while :; do echo other; sleep 0.05; done"]
"#,
    );
    let got = follow(&c, &["logs", "t", "-n", "0", "-f"], 40);
    assert!(got.len() >= 40, "follow streamed only {got:?}");
    for i in 0..2 {
        assert!(got.iter().any(|l| l.contains(&format!(" t.{i} stdout: tick {i}"))), "no line of t.{i}: {got:?}");
    }
    assert!(got.iter().all(|l| l.contains(" t.0 stdout: tick 0") || l.contains(" t.1 stdout: tick 1")), "{got:?}");
}

#[test]
fn a_logs_follow_client_that_goes_away_is_dropped_even_when_the_job_is_silent() {
    let c = Corral::start(
        r#"
[jobs.quiet]
command = ["sh", "-c", "echo hello; exec sleep 100000", "{dir}"]
"#,
    );
    assert!(poll(10 * SEC, || stdout(&c.ctl(&["logs", "quiet"])).contains("hello")));
    let base = c.pid();
    // The connections of the clients above close asynchronously: take the
    // baseline once the count has held still for 300 ms.
    let (mut baseline, mut since) = (usize::MAX, Instant::now());
    assert!(poll(10 * SEC, || {
        let n = socket_fds(base);
        if n != baseline {
            (baseline, since) = (n, Instant::now());
        }
        since.elapsed() >= Duration::from_millis(300)
    }));
    let mut child = Command::new(bin())
        .args(["-s"])
        .arg(&c.socket)
        .args(["logs", "quiet", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = line_reader(child.stdout.take().unwrap());
    assert_eq!(rx.recv_timeout(10 * SEC).ok().as_deref(), Some("hello"));
    assert!(poll(5 * SEC, || socket_fds(base) == baseline + 1), "the follower's connection is open");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        poll(3 * SEC, || socket_fds(base) == baseline),
        "the daemon kept the dead follower's connection: {} sockets, baseline {baseline}",
        socket_fds(base)
    );
}

// ----- reload, shutdown, health, budget -----

#[test]
fn reload_shutdown_and_health_through_the_cli() {
    let mut c = Corral::start(SLEEPER);
    let pid = pid_of(&c.wait_state("alpha", "running", 10 * SEC));

    let out = c.ctl(&["reload"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("reload: applied"), "{}", stdout(&out));
    let out = c.ctl(&["reload", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["applied"], true);
    for k in ["added", "removed", "restart", "update"] {
        assert_eq!(v["plan"][k], serde_json::json!([]), "{v}");
    }

    let out = c.ctl(&["health"]);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).starts_with("healthy"), "{}", stdout(&out));
    let out = c.ctl(&["health", "--json"]);
    assert_eq!(code(&out), 0);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["healthy"].clone(), v["supervisor"].clone(), v["database"].clone()), (true.into(), true.into(), Value::Null));

    let out = c.ctl(&["shutdown"]);
    assert_eq!(code(&out), 0, "shutdown: {} {}", stdout(&out), stderr(&out));
    // `shutdown` answers once every job is stopped.
    assert!(!pid_alive(pid as i32), "job {pid} still alive after shutdown returned");
    assert_eq!(c.wait_exit(10 * SEC), Some(0));
    assert!(!c.socket.exists(), "the socket is removed on exit");
    let out = c.ctl(&["status"]);
    assert_eq!(code(&out), 3);
}

#[test]
fn budget_reserve_release_need_a_database_section() {
    let c = Corral::start(SLEEPER);
    for args in [&["budget"][..], &["reserve", "ops", "-n", "2"], &["reserve", "ops", "-n", "2", "--ttl", "5m"], &["release", "ops"]] {
        let out = c.ctl(args);
        assert_eq!(code(&out), 1, "{args:?}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(err.starts_with("error: ") && err.contains("[database]"), "{args:?}: clear message expected, got {err:?}");
        let mut json = args.to_vec();
        json.push("--json");
        let out = c.ctl(&json);
        assert_eq!(code(&out), 1);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?} --json: {e}"));
        assert_eq!(v["kind"], "no_database");
    }
}

// ----- exit codes -----

#[test]
fn bad_arguments_exit_2_and_no_supervisor_exits_3_naming_the_socket() {
    let (dir, _config, socket) = setup(SLEEPER);
    let run = |args: &[&str]| Command::new(bin()).arg("-s").arg(&socket).args(args).current_dir(dir.path()).output().unwrap();
    for args in [
        &["stop"][..],
        &["start"],
        &["logs", "x", "-n", "many"],
        &["logs", "--since", "the day before"],
        &["signal", "alpha"],
        &["signal", "alpha", "NOSUCHSIG"],
        &["completions", "tcsh"],
        &["reserve", "ops"],
        &["reserve", "ops", "-n", "2", "--ttl", "soon"],
        &["frobnicate"],
        &["status", "--jsn"],
    ] {
        let out = run(args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty());
    }
    // Nothing listens: no socket file at all, then a stale one.
    for verb in [&["status"][..], &["stop", "alpha"], &["shutdown"], &["health"]] {
        let out = run(verb);
        assert_eq!(code(&out), 3, "{verb:?}");
        assert!(stderr(&out).contains(socket.to_str().unwrap()), "{verb:?}: {}", stderr(&out));
    }
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let out = run(&["status"]);
    assert_eq!(code(&out), 3);
    assert!(stderr(&out).contains(socket.to_str().unwrap()), "{}", stderr(&out));
}

// ----- the protocol under careless and hostile clients -----

#[test]
fn malformed_unknown_and_oversized_requests_get_errors_and_the_daemon_keeps_serving() {
    let c = Corral::start(SLEEPER);
    let before = pid_of(&c.wait_state("alpha", "running", 10 * SEC));
    let s = &c.socket;

    assert_eq!(error_kind(&raw(s, b"{not json\n")), "bad_request");
    assert_eq!(error_kind(&raw(s, b"\xff\xfe\n")), "bad_request");
    assert_eq!(error_kind(&raw(s, b"{\"v\":1,\"cmd\":\"frobnicate\"}\n")), "bad_request");
    assert_eq!(error_kind(&raw(s, b"{\"v\":99,\"cmd\":\"status\"}\n")), "bad_request");
    assert_eq!(error_kind(&raw(s, b"{\"v\":1,\"cmd\":\"stop\",\"jobs\":[\"nosuch\"]}\n")), "unknown_job");
    assert_eq!(error_kind(&raw(s, b"{\"v\":1,\"cmd\":\"logs\",\"job\":\"nosuch\"}\n")), "unknown_job");
    // A request without a trailing newline, then EOF, is still answered.
    let mut conn = UnixStream::connect(s).unwrap();
    conn.write_all(b"{\"v\":1,\"cmd\":\"status\"}").unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    conn.set_read_timeout(Some(10 * SEC)).unwrap();
    assert_eq!(read_response(&mut BufReader::new(conn))["ok"], true);
    // Several requests on one connection, pipelined.
    let mut conn = UnixStream::connect(s).unwrap();
    conn.set_read_timeout(Some(10 * SEC)).unwrap();
    conn.write_all(b"{\"v\":1,\"cmd\":\"status\"}\nnope\n{\"v\":1,\"cmd\":\"health\"}\n").unwrap();
    let mut r = BufReader::new(conn);
    assert_eq!(read_response(&mut r)["result"]["type"], "status");
    assert_eq!(error_kind(&read_response(&mut r)), "bad_request");
    assert_eq!(read_response(&mut r)["result"]["type"], "health");
    // A client that goes away half-way through a request costs nothing.
    let mut conn = UnixStream::connect(s).unwrap();
    conn.write_all(b"{\"v\":1,\"cmd\":\"sta").unwrap();
    drop(conn);

    // 10 MiB without a newline: refused after the cap, connection closed.
    let conn = UnixStream::connect(s).unwrap();
    conn.set_read_timeout(Some(10 * SEC)).unwrap();
    let mut w = conn.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..10 {
            if w.write_all(&chunk).is_err() {
                return false; // the daemon hung up: expected
            }
        }
        let _ = w.write_all(b"\n");
        true
    });
    let mut r = BufReader::new(conn);
    let resp = read_response(&mut r);
    assert_eq!(error_kind(&resp), "bad_request");
    assert!(resp["error"]["message"].as_str().unwrap().contains("longer than"), "{resp}");
    let mut rest = String::new();
    assert_eq!(r.read_line(&mut rest).unwrap_or(0), 0, "connection closed after the refusal: {rest:?}");
    writer.join().unwrap();

    let after = c.status();
    assert_eq!(after["jobs"][0]["pid"], before, "the job was not disturbed");
    assert_eq!(after["jobs"][0]["state"], "running");
}

#[test]
fn fifty_parallel_clients_are_all_answered() {
    let c = Corral::start(
        r#"
[jobs.alpha]
command = ["sh", "-c", "exec sleep 100000", "{dir}"]
healthy_after = "0s"

[jobs.beta]
command = ["sh", "-c", "exec sleep 100000", "{dir}"]
healthy_after = "0s"
"#,
    );
    c.wait_state("alpha", "running", 10 * SEC);
    c.wait_state("beta", "running", 10 * SEC);
    let before = pids(&c);
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let socket = c.socket.clone();
            std::thread::spawn(move || {
                let req: &[u8] = match i % 5 {
                    0 => b"{\"v\":1,\"cmd\":\"status\"}\n",
                    1 => b"{\"v\":1,\"cmd\":\"status\",\"jobs\":[\"beta\"]}\n",
                    2 => b"garbage\n",
                    3 => b"{\"v\":1,\"cmd\":\"logs\",\"job\":\"alpha\",\"lines\":5}\n",
                    _ => b"{\"v\":1,\"cmd\":\"health\"}\n",
                };
                (i, raw(&socket, req))
            })
        })
        .collect();
    for t in threads {
        let (i, resp) = t.join().expect("client thread");
        if i % 5 == 2 {
            assert_eq!(error_kind(&resp), "bad_request");
        } else {
            assert_eq!(resp["ok"], true, "client {i}: {resp}");
        }
        if i % 5 == 0 {
            assert_eq!(resp["result"]["jobs"].as_array().map(Vec::len), Some(2), "{resp}");
        }
    }
    assert_eq!(pids(&c), before, "the jobs kept their pids");
}

#[test]
fn a_silent_client_does_not_block_others_and_is_eventually_dropped() {
    let c = Corral::start(SLEEPER);
    let silent = UnixStream::connect(&c.socket).unwrap();
    silent.set_read_timeout(Some(30 * SEC)).unwrap();
    let t = Instant::now();
    // Others are served while it sits there.
    for _ in 0..3 {
        assert_eq!(code(&c.ctl(&["status"])), 0);
    }
    assert_eq!(raw(&c.socket, b"{\"v\":1,\"cmd\":\"status\"}\n")["ok"], true);
    let resp = read_response(&mut BufReader::new(&silent));
    assert_eq!(error_kind(&resp), "bad_request");
    assert!(resp["error"]["message"].as_str().unwrap().contains("timed out"), "{resp}");
    let waited = t.elapsed();
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(20), "dropped after {waited:?}");
    let mut rest = Vec::new();
    assert_eq!((&silent).read_to_end(&mut rest).unwrap(), 0, "then the connection is closed");
    assert_eq!(code(&c.ctl(&["status"])), 0);
}

// ----- the socket itself -----

#[test]
fn the_socket_is_0600_by_default() {
    let c = Corral::start(SLEEPER);
    let mode = std::fs::metadata(&c.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
}

/// The gid of a group from /etc/group that is not the current one when
/// possible, so the test sees the chown happen.
fn some_group() -> (String, u32) {
    let groups = std::fs::read_to_string("/etc/group").unwrap();
    let own = unsafe { libc::getgid() };
    let parse = |l: &str| {
        let f: Vec<&str> = l.split(':').collect();
        Some((f.first()?.to_string(), f.get(2)?.parse::<u32>().ok()?))
    };
    let all: Vec<(String, u32)> = groups.lines().filter_map(parse).collect();
    if own == 0 {
        if let Some(g) = all.iter().find(|(n, _)| ["daemon", "nogroup", "users"].contains(&n.as_str())) {
            return g.clone();
        }
    }
    all.into_iter().find(|(_, gid)| *gid == own).expect("the current group in /etc/group")
}

#[test]
fn socket_group_makes_the_socket_0660_owned_by_that_group() {
    let (name, gid) = some_group();
    let c = Corral::start(&format!(
        "[supervisor]\nsocket = \"{{dir}}/corral.sock\"\nlock_dir = \"{{dir}}/locks\"\nsocket_group = \"{name}\"\n{SLEEPER}"
    ));
    let meta = std::fs::metadata(&c.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid, "socket group should be {name}");
    assert_eq!(code(&c.ctl(&["status"])), 0);
}

#[test]
fn a_second_corral_on_the_same_socket_refuses_naming_socket_and_pid() {
    let c = Corral::start(SLEEPER);
    let pid = pid_of(&c.wait_state("alpha", "running", 10 * SEC));
    let out = Command::new(bin()).args(["run", "-c"]).arg(&c.config).current_dir(c.dir.path()).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(err.contains(c.socket.to_str().unwrap()), "names the socket: {err}");
    assert!(err.contains(&format!("pid {}", c.pid())), "names the running corral's pid {}: {err}", c.pid());
    // The first one is untouched.
    assert!(c.socket.exists());
    assert_eq!(pid_of(&c.job("alpha")), pid);
}

#[test]
fn a_stale_socket_is_replaced() {
    let (dir, config, socket) = setup(SLEEPER);
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists() && UnixStream::connect(&socket).is_err());
    let c = Corral::spawn_in(dir, config, socket, &[]);
    c.wait_ready();
    c.wait_state("alpha", "running", 10 * SEC);
    c.wait_output("stale socket", Duration::from_secs(5));
}

#[test]
fn a_reservation_name_is_checked_like_a_job_name() {
    // An unreachable database with a fixed limit: reservations themselves work.
    let c = Corral::start(&format!(
        "[database]\nurl = \"postgres://u:p@127.0.0.1:1/db\"\nmax_connections = 60\nhealth_timeout = \"1s\"\n\n{SLEEPER}"
    ));
    for bad in ["a\nINFO forged line", "..", ".hidden", &"r".repeat(65), ""] {
        let out = c.ctl(&["reserve", bad, "-n", "1"]);
        assert_eq!(code(&out), 2, "{bad:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("invalid reservation name"), "{bad:?}: {}", stderr(&out));
    }
    let out = c.ctl(&["release", "a\nb"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let out = c.ctl(&["reserve", "ops.backfill-1", "-n", "1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!c.output().contains("INFO forged line"), "a newline in a name reached the log");
}
