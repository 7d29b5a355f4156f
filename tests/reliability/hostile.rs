//! corral never dies and never stalls, whatever jobs do and whatever a file contains
//! (SPEC §7, §8, §10). Each test attacks the real binary while a prober asks `status` over
//! and over, and reports the worst `status` latency and corral's RSS before and after
//! (printed; the bounds asserted are generous, as the machine is loaded).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{self, poll, stderr, Corral, SEC};
use crate::{fd_count, rss_kb, zombies_of};

/// The worst latency any `status` may take during an attack. A frozen actor (the bugs these
/// tests pin) never answers at all; a healthy one answers in milliseconds.
const STATUS_BOUND: Duration = Duration::from_secs(5);

/// Asks `status --json` in a loop on its own thread and records the slowest answer; a
/// status that fails or hangs past the bound counts as that long.
struct Prober {
    stop: Arc<AtomicBool>,
    worst: Arc<Mutex<(Duration, u32, u32)>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(socket: &Path) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(Mutex::new((Duration::ZERO, 0, 0)));
        let (s, w, socket) = (stop.clone(), worst.clone(), socket.to_path_buf());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let t = Instant::now();
                let ok = status_within(&socket, STATUS_BOUND * 2);
                let took = t.elapsed();
                let mut w = w.lock().unwrap();
                w.0 = w.0.max(took);
                w.1 += 1;
                if !ok {
                    w.2 += 1;
                }
                drop(w);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Prober { stop, worst, handle: Some(handle) }
    }

    /// (worst latency, probes, failed probes).
    fn finish(mut self) -> (Duration, u32, u32) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        *self.worst.lock().unwrap()
    }
}

/// One `status` request on the socket, answered within `timeout`.
fn status_within(socket: &Path, timeout: Duration) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else { return false };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    if s.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n").is_err() {
        return false;
    }
    let mut line = String::new();
    let mut r = std::io::BufReader::new(s);
    std::io::BufRead::read_line(&mut r, &mut line).is_ok() && line.contains("\"ok\":true")
}

fn report(attack: &str, probe: (Duration, u32, u32), rss: (u64, u64)) {
    eprintln!(
        "ATTACK {attack}: worst status {:.0} ms over {} probes ({} failed); RSS {} kB before, {} kB after",
        probe.0.as_secs_f64() * 1000.0,
        probe.1,
        probe.2,
        rss.0,
        rss.1
    );
}

fn check_probe(attack: &str, probe: (Duration, u32, u32)) {
    assert!(probe.1 > 0, "{attack}: no probe ran");
    assert_eq!(probe.2, 0, "{attack}: {} status requests failed or hung", probe.2);
    assert!(probe.0 < STATUS_BOUND, "{attack}: a status took {:?}", probe.0);
}

#[test]
fn stdout_never_read_never_freezes_supervision() {
    // A job floods its output, another crashes every 200 ms, and nobody reads corral's stdout
    // or stderr: both pipes fill within milliseconds.
    let (mut c, _unread) = Corral::start_unread(
        "[jobs.flood]\ncommand = [\"yes\", \"a line of output that nobody will ever read, again and again\"]\n\n\
         [jobs.crasher]\ncommand = [\"sh\", \"-c\", \"echo going down; exit 1\"]\nrestart = \"always\"\nhealthy_after = \"0s\"\n\
         backoff = { initial = \"200ms\", max = \"200ms\" }\non_duplicate = \"ignore\"\n",
    );
    let pid = c.pid();
    let rss0 = rss_kb(pid);
    let prober = Prober::start(&c.socket);
    let restarts = |c: &Corral| c.job("crasher")["restarts"].as_u64().unwrap_or(0);
    let first = restarts(&c);
    // Restarts keep coming while both pipes are full: the reaper and the timers run.
    assert!(poll(30 * SEC, || restarts(&c) >= first + 10), "the crashing job stopped being restarted: {}", c.job("crasher"));
    let dropped = c.job("flood")["output_dropped"].as_u64().unwrap_or(0);
    assert!(dropped > 0, "a flood into an unread stdout must count dropped lines: {}", c.job("flood"));
    assert!(poll(10 * SEC, || zombies_of(pid).len() <= 1), "zombies pile up: {:?}", zombies_of(pid));
    // The ring buffer for `corral logs` is still filled.
    let logs = c.ctl(&["logs", "flood", "-n", "3"]);
    assert!(logs.status.success() && harness::stdout(&logs).contains("nobody will ever read"), "{}", stderr(&logs));
    // And /metrics-style counters are on status: a second reading is not smaller.
    assert!(c.job("flood")["output_dropped"].as_u64().unwrap_or(0) >= dropped);
    // corral's own lines that its unread stderr could not take are counted too.
    let status: serde_json::Value = serde_json::from_slice(&c.ctl(&["status", "--json"]).stdout).unwrap_or_default();
    assert!(status["supervisor"]["log_lines_dropped"].is_u64(), "{status}");
    let probe = prober.finish();
    let rss1 = rss_kb(pid);
    report("stdout and stderr never read, a job flooding output, a job crash-looping", probe, (rss0, rss1));
    check_probe("stdout never read", probe);
    // The sinks are bounded: a flood of gigabytes costs a few MiB at most.
    assert!(rss1 < rss0 + 16 * 1024, "RSS grew from {rss0} kB to {rss1} kB");
    // SIGTERM is obeyed although nothing drains the pipes.
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_exit(30 * SEC), Some(0));
}

/// Writes one hostile file at the given path.
type Writer = Box<dyn Fn(&Path)>;

/// The attacks of the hostile-reload test: (what, how to write it over the config).
fn hostile_files() -> Vec<(&'static str, Writer)> {
    let nest = |n: usize| format!("{}x{}", "${A:-".repeat(n), "}".repeat(n));
    let write = |text: String| -> Writer { Box::new(move |p: &Path| std::fs::write(p, &text).unwrap()) };
    vec![
        ("70,000 nested ${A:-...} defaults", write(format!("[jobs.steady]\ncommand = [\"sleep\", \"3600\"]\nenv = {{ X = \"{}\" }}\n", nest(70_000)))),
        (
            "3,000 jobs with an unknown key",
            write((0..3000).map(|i| format!("[jobs.j{i}]\ncommand = [\"x\"]\nbogus = 1\n")).collect()),
        ),
        ("a manifest over the size limit", write(format!("[jobs.steady]\ncommand = [\"sleep\", \"3600\"]\n# {}\n", "x".repeat(5 << 20)))),
        ("an empty file", write(String::new())),
        ("100,000 nested arrays", write(format!("a = {}{}\n", "[".repeat(100_000), "]".repeat(100_000)))),
        ("a 70,000-character job name", write(format!("[jobs.{}]\ncommand = [\"x\"]\n", "n".repeat(70_000)))),
        (
            "a backoff of 2^64 seconds",
            write("[jobs.steady]\ncommand = [\"sleep\", \"3600\"]\nbackoff = { initial = \"18446744073709551615s\", max = \"18446744073709551615s\" }\n".into()),
        ),
        ("reap_interval = 1ns", write("[supervisor]\nreap_interval = \"1ns\"\n[jobs.steady]\ncommand = [\"sleep\", \"3600\"]\n".into())),
        ("job names . and ..", write("[jobs.\".\"]\ncommand = [\"x\"]\n[jobs.\"..\"]\ncommand = [\"x\"]\n".into())),
        ("binary garbage", Box::new(|p: &Path| std::fs::write(p, (0..65_536u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>()).unwrap())),
        (
            "a FIFO in place of the file",
            Box::new(|p: &Path| {
                let tmp = p.with_extension("fifo");
                nix::unistd::mkfifo(&tmp, nix::sys::stat::Mode::S_IRWXU).unwrap();
                std::fs::rename(&tmp, p).unwrap();
            }),
        ),
        ("a directory in place of the file", Box::new(|p: &Path| {
            let _ = std::fs::remove_file(p);
            std::fs::create_dir(p).unwrap();
        })),
    ]
}

#[test]
fn hostile_reload_keeps_the_running_config_and_the_daemon_answering() {
    let body = "[jobs.steady]\ncommand = [\"sleep\", \"3600\"]\n";
    let c = Corral::start(body);
    let pid = c.pid();
    let steady = c.wait_state("steady", "running", 20 * SEC)["pid"].clone();
    let rss0 = rss_kb(pid);
    let valid = std::fs::read_to_string(&c.config).unwrap();
    for (attack, write) in hostile_files() {
        let prober = Prober::start(&c.socket);
        let t = Instant::now();
        write(&c.config);
        let out = c.ctl(&["reload"]);
        let took = t.elapsed();
        let probe = prober.finish();
        report(&format!("reload of {attack} (rejected in {:.0} ms)", took.as_secs_f64() * 1000.0), probe, (rss0, rss_kb(pid)));
        assert_eq!(out.status.code(), Some(2), "{attack}: reload must be refused with a config error: {}", stderr(&out));
        assert!(stderr(&out).starts_with("error: "), "{attack}: {}", stderr(&out));
        assert!(stderr(&out).len() < 16 * 1024, "{attack}: the error is {} bytes long", stderr(&out).len());
        check_probe(attack, probe);
        let st = c.status();
        assert!(st["config_error"].as_str().is_some_and(|e| !e.is_empty()), "{attack}: {st}");
        assert_eq!(c.job("steady")["pid"], steady, "{attack}: the running job was touched");
        assert!(harness::pid_alive(pid), "{attack}: corral died");
        // Back to the valid file (a directory or FIFO is removed first).
        if c.config.is_dir() {
            std::fs::remove_dir(&c.config).unwrap();
        } else {
            std::fs::remove_file(&c.config).unwrap();
        }
        std::fs::write(&c.config, &valid).unwrap();
        let out = c.ctl(&["reload"]);
        assert!(out.status.success(), "{attack}: the valid file again: {}", stderr(&out));
    }
    assert_eq!(c.status()["config_error"], serde_json::Value::Null);

    // A valid reload of 3,000 jobs (not autostarted: no one spawns 3,000 processes here) is
    // parsed off the actor and applied while status keeps answering.
    let prober = Prober::start(&c.socket);
    let t = Instant::now();
    let mut big = valid.clone();
    for i in 0..3000 {
        big.push_str(&format!("[jobs.idle{i}]\ncommand = [\"sleep\", \"1\"]\nautostart = false\n"));
    }
    std::fs::write(&c.config, &big).unwrap();
    let out = c.ctl(&["reload"]);
    let took = t.elapsed();
    let probe = prober.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(c.status()["jobs"].as_array().map(|j| j.len()), Some(3001));
    let rss1 = rss_kb(pid);
    report(&format!("valid reload adding 3,000 jobs (applied in {:.0} ms)", took.as_secs_f64() * 1000.0), probe, (rss0, rss1));
    check_probe("valid reload of 3,000 jobs", probe);
    assert_eq!(c.job("steady")["pid"], steady);
    std::fs::write(&c.config, &valid).unwrap();
    assert!(c.ctl(&["reload"]).status.success());
    eprintln!("after removing the 3,000 jobs again: RSS {} kB", rss_kb(pid));
}

#[test]
fn hostile_manifests_never_crash_check_or_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("supervisor.toml");
    for (attack, write) in hostile_files() {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&path);
        write(&path);
        let t = Instant::now();
        let out = std::process::Command::new(harness::bin()).args(["check", "-c"]).arg(&path).output().unwrap();
        let took = t.elapsed();
        eprintln!("check on {attack}: exit {:?} in {:.0} ms", out.status.code(), took.as_secs_f64() * 1000.0);
        assert_eq!(out.status.code(), Some(2), "{attack}: check must exit 2 (not crash): {}", stderr(&out));
        assert!(stderr(&out).starts_with("error: "), "{attack}: {}", stderr(&out));
        assert!(stderr(&out).contains(&*path.to_string_lossy()), "{attack}: the error names the file: {}", stderr(&out));
        // `run` on it refuses to start, with the same error, and starts nothing.
        let out = std::process::Command::new(harness::bin()).args(["run", "-c"]).arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{attack}: run: {}", stderr(&out));
    }
}

#[test]
fn garbage_on_the_control_socket_gets_error_replies_and_the_daemon_carries_on() {
    // A [database] nobody listens on, with a fixed limit: reservations work (and are logged).
    let c = Corral::start(
        "[database]\nurl = \"postgres://u:p@127.0.0.1:1/db\"\nmax_connections = 60\nhealth_timeout = \"1s\"\n\n\
         [jobs.steady]\ncommand = [\"sleep\", \"3600\"]\n",
    );
    c.wait_state("steady", "running", 20 * SEC);
    let ok = c.ctl(&["reserve", "fine", "-n", "1"]);
    assert!(ok.status.success(), "a valid reservation works: {}", stderr(&ok));
    let pid = c.pid();
    let (rss0, fds0) = (rss_kb(pid), fd_count(pid));
    let prober = Prober::start(&c.socket);
    let mut rng = fastrand::Rng::with_seed(12);
    let mut replies = 0;
    for i in 0..300 {
        let mut s = UnixStream::connect(&c.socket).unwrap();
        s.set_read_timeout(Some(10 * SEC)).unwrap();
        let mut line: Vec<u8> = match i % 3 {
            0 => (0..rng.usize(0..512)).map(|_| rng.u8(..)).filter(|b| *b != b'\n').collect(),
            // Near-valid requests: known verbs with wrong or hostile fields.
            1 => format!(
                "{{\"v\":1,\"cmd\":\"{}\",\"jobs\":[\"{}\"],\"name\":\"{}\",\"count\":{},\"ttl_s\":{}}}",
                ["status", "start", "stop", "reserve", "release", "logs", "nope"][rng.usize(..7)],
                ["steady", "all", "..", "x\\ny", ""][rng.usize(..5)],
                ["r", "..", "a\\nINFO forged", "", "é"][rng.usize(..5)],
                [-1i64, 0, 5, i64::MAX][rng.usize(..4)],
                ["1", "-1", "1e308", "null", "\"x\""][rng.usize(..5)]
            )
            .into_bytes(),
            _ => b"{\"v\":1,\"cmd\":\"reserve\",\"name\":\"a\\nb\",\"count\":1}".to_vec(),
        };
        // Never stop the daemon or its job from here.
        if line.windows(8).any(|w| w == b"shutdown") || line.windows(4).any(|w| w == b"stop") {
            continue;
        }
        line.push(b'\n');
        s.write_all(&line).unwrap();
        let mut answer = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut answer);
        if answer.starts_with("{\"ok\":") {
            replies += 1;
        }
    }
    let probe = prober.finish();
    report("300 garbage and near-valid control requests", probe, (rss0, rss_kb(pid)));
    check_probe("control garbage", probe);
    assert!(replies > 150, "most requests get a reply line: {replies}");
    assert!(harness::pid_alive(pid));
    assert_eq!(c.job("steady")["state"], "running");
    assert!(poll(10 * SEC, || fd_count(pid) <= fds0 + 2), "fds: {} (were {fds0})", fd_count(pid));
    // A reservation name with a newline never reaches the log.
    assert!(!c.output().contains("INFO forged"), "a forged log line got through");
}
