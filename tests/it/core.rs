//! The core supervisor against real processes (SPEC §4, §7): restarts and
//! backoff, restart policies, stopping whole process groups, reaping and
//! orphans as subreaper, single-instance locks, duplicates, and shutdown.
//!
//! Every test has its own temp dir, socket and lock dir, and every job command
//! names that dir (or a per-test number), so the duplicate scans of tests
//! running in parallel never match each other's processes.
//!
//! In job commands `$$` is corral's escape for a literal `$` (SPEC §2
//! expansion), so the shell's `$$` is written `$$$$`.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

/// Nanosecond timestamps, one per line, as written by `date +%s%N`.
fn stamps(path: &Path) -> Vec<u128> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|s| s.lines().count()).unwrap_or(0)
}

fn pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn gaps_ms(t: &[u128]) -> Vec<u128> {
    t.windows(2).map(|w| (w[1] - w[0]) / 1_000_000).collect()
}

/// (state letter, ppid) from /proc/<pid>/stat.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = s.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

fn wait_gone(pid: i32, timeout: Duration) -> bool {
    poll(timeout, || !Path::new(&format!("/proc/{pid}")).exists())
}

/// A number no other test (or concurrent test run) uses in a command line.
fn unique_arg(k: u32) -> String {
    (100_000 + std::process::id() * 10 + k).to_string()
}

// ----- restarts and backoff -----

#[test]
fn crashing_job_backs_off_exponentially_then_goes_fatal_and_start_clears_it() {
    let c = Corral::start(
        r#"
[jobs.crash]
command = ["sh", "-c", "date +%s%N >> {dir}/starts; exit 1"]
backoff = { initial = "100ms", max = "2s" }
healthy_after = "1s"
start_retries = 4
"#,
    );
    let starts = c.path("starts");
    let j = c.wait_state("crash", "fatal", 15 * SEC);
    let t = stamps(&starts);
    assert_eq!(t.len(), 5, "start_retries = 4 means exactly 5 starts; got {t:?}");
    let reason = j["reason"].as_str().unwrap_or("");
    assert!(reason.contains("5 failed starts"), "reason: {reason}");
    assert!(reason.contains("exit code 1"), "reason: {reason}");
    assert_eq!(j["last_exit"]["code"], 1);
    assert_eq!(j["pid"], serde_json::Value::Null);

    // Delays 100, 200, 400, 800 ms (+ up to 25% jitter): a gap can never be
    // shorter than its delay, and the series clearly grows.
    let g = gaps_ms(&t);
    for (i, (gap, base)) in g.iter().zip([100u128, 200, 400, 800]).enumerate() {
        assert!(*gap >= base - 5, "gap {i} is {gap} ms, below the {base} ms backoff; gaps {g:?}");
    }
    assert!(g[3] > 2 * g[0] && g[2] > g[0], "backoff does not grow: gaps {g:?}");

    // Stays fatal: no more starts (the next one would be due after 1.6 s).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines(&starts), 5);
    assert_eq!(c.job("crash")["state"], "fatal");

    // `corral start` clears fatal and starts a fresh series.
    let out = c.ctl(&["start", "crash"]);
    assert_eq!(out.status.code(), Some(0), "start: {} {}", stdout(&out), stderr(&out));
    c.wait_job("crash", 15 * SEC, "fatal again after a fresh series", |j| j["state"] == "fatal" && lines(&starts) == 10);
    let g = gaps_ms(&stamps(&starts)[5..]);
    assert!(g[0] >= 95 && g[0] < 700, "the fresh series restarts after backoff.initial again: gaps {g:?}");
}

#[test]
fn a_run_past_healthy_after_resets_the_backoff() {
    // Runs 1-4 crash at once (delays 100, 200, 400, then 800 ms would be next);
    // run 4 lives past healthy_after, then crashes: run 5 must follow after
    // backoff.initial (~100 ms), not the grown 1.6 s.
    let c = Corral::start(
        r#"
[jobs.flaky]
command = ["sh", "-c", "n=$(cat {dir}/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > {dir}/n; date +%s%N >> {dir}/starts; if [ $n -eq 4 ]; then sleep 0.6; date +%s%N > {dir}/healthy_end; exit 1; fi; if [ $n -ge 5 ]; then exec sleep 300; fi; exit 1"]
backoff = { initial = "100ms", max = "5s" }
healthy_after = "300ms"
start_retries = 10
"#,
    );
    let starts = c.path("starts");
    c.wait_job("flaky", 15 * SEC, "run 5 started", |_| lines(&starts) >= 5);
    let t = stamps(&starts);
    let end = stamps(&c.path("healthy_end"))[0];
    let gap = (t[4] - end) / 1_000_000;
    let g = gaps_ms(&t[..4]);
    assert!(g[2] >= 395, "runs 1-3 should have grown the delay to 400 ms: gaps {g:?}");
    assert!((95..600).contains(&gap), "after a healthy run the restart delay is backoff.initial, got {gap} ms (crash gaps {g:?})");
    let j = c.wait_state("flaky", "running", 5 * SEC);
    assert_eq!(j["restarts"], 4);
    assert_eq!(j["last_exit"]["code"], 1);
}

#[test]
fn restart_never_stays_exited_with_its_exit_code() {
    let c = Corral::start(
        r#"
[jobs.once]
command = ["sh", "-c", "echo x >> {dir}/starts; exit 3"]
restart = "never"
backoff = { initial = "50ms", max = "50ms" }
"#,
    );
    let j = c.wait_state("once", "exited", 10 * SEC);
    assert_eq!(j["last_exit"]["code"], 3);
    assert_eq!(j["last_exit"]["signal"], serde_json::Value::Null);
    assert_eq!(j["restarts"], 0);
    // A restart would come 50 ms later: give it six times that.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines(&c.path("starts")), 1);
    assert_eq!(c.job("once")["state"], "exited");
}

#[test]
fn success_codes_are_not_failures_under_on_failure() {
    let c = Corral::start(
        r#"
[jobs.ok]
command = ["sh", "-c", "echo x >> {dir}/ok_starts; exit 3"]
restart = "on-failure"
success_codes = [0, 3]
backoff = { initial = "50ms", max = "50ms" }

[jobs.bad]
command = ["sh", "-c", "echo x >> {dir}/bad_starts; exit 4"]
restart = "on-failure"
success_codes = [0, 3]
backoff = { initial = "50ms", max = "50ms" }
start_retries = 1
"#,
    );
    let j = c.wait_state("ok", "exited", 10 * SEC);
    assert_eq!(j["last_exit"]["code"], 3);
    let b = c.wait_state("bad", "fatal", 10 * SEC);
    assert_eq!(b["last_exit"]["code"], 4);
    assert_eq!(lines(&c.path("bad_starts")), 2, "exit code 4 is a failure: restarted once, then fatal");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines(&c.path("ok_starts")), 1, "exit code 3 is a success: no restart");
    assert_eq!(c.job("ok")["state"], "exited");
    assert_eq!(c.job("ok")["restarts"], 0);
}

// ----- stopping -----

#[test]
fn stop_kills_the_whole_process_group_including_grandchildren() {
    let c = Corral::start(
        r#"
[jobs.fam]
command = ["sh", "-c", "sleep 300 & echo $! >> {dir}/kids; sleep 300 & echo $! >> {dir}/kids; echo ready > {dir}/ready; wait"]
"#,
    );
    assert!(poll(10 * SEC, || c.path("ready").exists() && pids(&c.path("kids")).len() == 2));
    let kids = pids(&c.path("kids"));
    assert!(kids.iter().all(|&p| pid_alive(p)));
    let main = c.wait_state("fam", "running", 5 * SEC)["pid"].as_i64().unwrap() as i32;

    let out = c.ctl(&["stop", "fam"]);
    assert_eq!(out.status.code(), Some(0), "stop: {}", stderr(&out));
    assert_eq!(c.job("fam")["state"], "stopped");
    assert!(!pid_alive(main));
    for k in kids {
        assert!(poll(5 * SEC, || !pid_alive(k)), "grandchild {k} survived `corral stop`");
    }
}

#[test]
fn a_job_ignoring_sigterm_is_sigkilled_after_stop_timeout() {
    let c = Corral::start(
        r#"
[jobs.stubborn]
command = ["sh", "-c", "trap '' TERM; echo ready > {dir}/ready; while :; do sleep 0.1; done"]
stop_timeout = "1s"
"#,
    );
    assert!(poll(10 * SEC, || c.path("ready").exists()));
    let t0 = Instant::now();
    let out = c.ctl(&["stop", "stubborn"]);
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(0), "stop: {}", stderr(&out));
    assert!(took >= Duration::from_secs(1), "stopped after {took:?}, before stop_timeout");
    assert!(took < Duration::from_secs(5), "SIGKILL came late: {took:?}");
    let j = c.job("stubborn");
    assert_eq!(j["state"], "stopped");
    assert_eq!(j["last_exit"]["signal"], 9);
    assert_eq!(j["last_exit"]["code"], serde_json::Value::Null);
}

// ----- reaping and orphans (not PID 1: child subreaper) -----

#[test]
fn orphans_are_reparented_to_corral_and_reaped() {
    let mut c = Corral::start(
        r#"
[supervisor]
socket = "{dir}/corral.sock"
lock_dir = "{dir}/locks"
orphans = "keep"

[jobs.forker]
command = ["sh", "-c", "(sleep 30 & echo $! > {dir}/orphan); exec sleep 1000"]
"#,
    );
    let orphan = wait_file_pid(&c.path("orphan"), 10 * SEC);
    let me = c.pid();
    assert!(
        poll(5 * SEC, || proc_stat(orphan).map(|s| s.1) == Some(me)),
        "orphan {orphan} has ppid {:?}, not corral's {me}",
        proc_stat(orphan)
    );
    let before = c.status()["supervisor"]["zombies_reaped"].as_u64().unwrap();
    unsafe { libc::kill(orphan, libc::SIGKILL) };
    assert!(wait_gone(orphan, 5 * SEC), "orphan {orphan} was not reaped: {:?}", proc_stat(orphan));
    let after = c.status()["supervisor"]["zombies_reaped"].as_u64().unwrap();
    assert_eq!(after, before + 1);
    // The job itself is untouched.
    let j = c.job("forker");
    assert!(j["state"] == "starting" || j["state"] == "running", "{j}");

    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_exit(10 * SEC), Some(0));
}

#[test]
fn the_sweep_kills_stray_orphans_that_left_the_jobs_group() {
    // One orphan escapes into its own session (stray: killed by the sweep);
    // another stays in the live job's process group (the job's: kept).
    let c = Corral::start(
        r#"
[supervisor]
socket = "{dir}/corral.sock"
lock_dir = "{dir}/locks"
orphans = "kill"
reap_interval = "1s"

[jobs.leaky]
command = ["sh", "-c", "(setsid sh -c 'echo $$$$ > {dir}/stray; exec sleep 300' &); (sleep 300 & echo $! > {dir}/kept); exec sleep 1000"]
"#,
    );
    let stray = wait_file_pid(&c.path("stray"), 10 * SEC);
    let kept = wait_file_pid(&c.path("kept"), 10 * SEC);
    assert!(poll(5 * SEC, || proc_stat(stray).map(|s| s.1) == Some(c.pid())), "stray not adopted: {:?}", proc_stat(stray));
    assert!(wait_gone(stray, 5 * SEC), "the sweep did not terminate stray orphan {stray}: {:?}", proc_stat(stray));
    c.wait_output("orphans_killed=1", 5 * SEC);
    assert!(c.status()["supervisor"]["orphans_killed"].as_u64().unwrap() >= 1);
    assert!(pid_alive(kept), "an orphan in the live job's process group was killed");
    let j = c.job("leaky");
    assert!(j["state"] == "starting" || j["state"] == "running", "{j}");
}

// ----- single instance -----

#[test]
fn the_job_lock_keeps_one_instance_across_corrals_and_a_killed_corral() {
    let shared = tempfile::Builder::new().prefix("corral-it-locks-").tempdir().unwrap();
    let sd = shared.path().display().to_string();
    let body = format!(
        r#"
[supervisor]
socket = "{{dir}}/corral.sock"
lock_dir = "{sd}/locks"

[jobs.solo]
command = ["sh", "-c", "echo $$$$ >> {sd}/pids; exec sleep 1000"]
healthy_after = "100ms"
"#
    );
    let mut a = Corral::start(&body);
    let ja = a.wait_state("solo", "running", 10 * SEC);
    let held = ja["pid"].as_i64().unwrap() as i32;

    {
        let b = Corral::start(&body);
        let jb = b.wait_state("solo", "waiting", 10 * SEC);
        let reason = jb["reason"].as_str().unwrap_or("");
        assert!(reason.contains(&format!("pid {held}")), "reason should name the holder {held}: {reason}");
    }

    // corral A dies without cleaning up; its job keeps the lock.
    a.signal(libc::SIGKILL);
    a.wait_exit(5 * SEC);
    assert!(pid_alive(held), "the job died with its supervisor");

    let c = Corral::start(&body);
    let jc = c.wait_state("solo", "waiting", 10 * SEC);
    assert!(jc["reason"].as_str().unwrap_or("").contains(&format!("pid {held}")), "{jc}");
    assert_eq!(pids(&shared.path().join("pids")), vec![held], "a second copy was started");

    unsafe { libc::kill(held, libc::SIGKILL) };
    let jc = c.wait_state("solo", "running", 10 * SEC);
    let new = jc["pid"].as_i64().unwrap() as i32;
    assert_ne!(new, held);
    assert_eq!(pids(&shared.path().join("pids")), vec![held, new]);
}

#[test]
fn on_duplicate_refuse_waits_for_a_process_started_by_hand() {
    let n = unique_arg(1);
    let mut dup = Command::new("sleep").arg(&n).spawn().unwrap();
    let dup_pid = dup.id() as i32;
    let c = Corral::start(&format!(
        r#"
[jobs.dup]
command = ["sleep", "{n}"]
single_instance = false
on_duplicate = "refuse"
"#
    ));
    let j = c.wait_state("dup", "waiting", 10 * SEC);
    let reason = j["reason"].as_str().unwrap_or("");
    assert!(reason.contains("duplicate") && reason.contains(&dup_pid.to_string()), "reason: {reason}");
    assert!(pid_alive(dup_pid), "refuse must not touch the duplicate");
    // The duplicate goes away: the job starts on its next retry.
    dup.kill().unwrap();
    dup.wait().unwrap();
    let j = c.wait_state("dup", "running", 10 * SEC);
    assert_ne!(j["pid"].as_i64().unwrap() as i32, dup_pid);
}

#[test]
fn on_duplicate_kill_terminates_the_duplicate_then_runs_the_job() {
    let n = unique_arg(2);
    let mut dup = Command::new("sleep").arg(&n).spawn().unwrap();
    let dup_pid = dup.id() as i32;
    let c = Corral::start(&format!(
        r#"
[jobs.dup]
command = ["sleep", "{n}"]
single_instance = false
on_duplicate = "kill"
"#
    ));
    // The duplicate is our child: reap it as soon as corral's SIGTERM lands.
    let mut status = None;
    assert!(
        poll(10 * SEC, || {
            status = dup.try_wait().unwrap();
            status.is_some()
        }),
        "duplicate {dup_pid} was not killed\n{}",
        c.output()
    );
    assert_eq!(status.unwrap().signal(), Some(libc::SIGTERM));
    let j = c.wait_state("dup", "running", 10 * SEC);
    assert_ne!(j["pid"].as_i64().unwrap() as i32, dup_pid);
    c.wait_output("killing duplicate", 5 * SEC);
}

// ----- shutdown -----

#[test]
fn sigterm_stops_all_jobs_in_parallel_and_exits_0() {
    let job = |n: &str| {
        format!(
            r#"
[jobs.{n}]
command = ["sh", "-c", "trap 'echo {n} stopping; sleep 1; echo {n} done; exit 0' TERM; echo ready > {{dir}}/{n}.ready; while :; do sleep 0.1; done"]
stop_timeout = "10s"
"#
        )
    };
    let mut c = Corral::start(&format!("{}{}{}", job("j1"), job("j2"), job("j3")));
    for n in ["j1", "j2", "j3"] {
        assert!(poll(10 * SEC, || c.path(&format!("{n}.ready")).exists()), "{n} not ready");
    }
    let t0 = Instant::now();
    c.signal(libc::SIGTERM);
    let code = c.wait_exit(10 * SEC);
    let took = t0.elapsed();
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_millis(2500), "3 jobs taking 1 s each stopped in {took:?}: not in parallel");
    assert!(took >= Duration::from_secs(1), "corral exited before its jobs finished: {took:?}");
    let out = c.output();
    for n in ["j1", "j2", "j3"] {
        assert!(out.contains(&format!("[{n}] {n} stopping")), "no stop line of {n}\n{out}");
        assert!(out.contains(&format!("[{n}] {n} done")), "no last line of {n}\n{out}");
    }
}

#[test]
fn a_second_sigint_kills_jobs_at_once() {
    let mut c = Corral::start(
        r#"
[jobs.deaf]
command = ["sh", "-c", "trap '' TERM; echo ready > {dir}/ready; while :; do sleep 0.1; done"]
stop_timeout = "30s"
"#,
    );
    assert!(poll(10 * SEC, || c.path("ready").exists()));
    let main = c.job("deaf")["pid"].as_i64().unwrap() as i32;
    c.signal(libc::SIGINT);
    // Signals coalesce: the first must be handled before the second is sent.
    c.wait_output("SIGINT: stopping all jobs", 5 * SEC);
    assert!(pid_alive(main), "the job ignores SIGTERM and should still run");
    let t0 = Instant::now();
    c.signal(libc::SIGINT);
    let code = c.wait_exit(10 * SEC);
    assert!(t0.elapsed() < Duration::from_secs(3), "second SIGINT did not kill at once: {:?}", t0.elapsed());
    assert_eq!(code, Some(0));
    assert!(!pid_alive(main));
}

// ----- never held back, never stuck (SPEC §7, §10) -----

#[test]
fn a_job_paused_with_sigstop_stops_on_its_stop_signal_without_waiting_for_sigkill() {
    let c = Corral::start(
        r#"
[jobs.paused]
command = ["sh", "-c", "echo $$$$ > {dir}/pid; exec sleep 1000"]
stop_timeout = "60s"
"#,
    );
    let pid = wait_file_pid(&c.path("pid"), 10 * SEC);
    c.wait_state("paused", "running", 10 * SEC);
    unsafe { libc::kill(-pid, libc::SIGSTOP) };
    assert!(poll(5 * SEC, || proc_stat(pid).is_some_and(|(s, _)| s == 'T')), "not stopped: {:?}", proc_stat(pid));
    let out = c.ctl(&["stop", "paused"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let j = c.job("paused");
    assert_eq!(j["last_exit"]["signal"], libc::SIGTERM, "ended by SIGTERM after SIGCONT, not by the SIGKILL of stop_timeout: {j}");
}

#[test]
fn lock_files_are_private_and_a_held_lock_names_its_real_holder() {
    use std::os::unix::fs::PermissionsExt;
    let c = Corral::start(
        r#"
[jobs.solo]
command = ["sh", "-c", "exec sleep 1000", "{dir}"]
healthy_after = "100ms"
"#,
    );
    let old = c.wait_state("solo", "running", 10 * SEC)["pid"].as_i64().unwrap();
    let (dir, file) = (c.path("locks"), c.path("locks/solo.lock"));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!((mode(&dir), mode(&file)), (0o700, 0o600), "others must not be able to open a lock");
    assert!(c.ctl(&["stop", "solo"]).status.success());
    // Something else takes the lock while the file still names the old job's (dead) pid.
    let held = std::fs::OpenOptions::new().read(true).open(&file).unwrap();
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    let out = c.ctl(&["start", "solo"]);
    assert_eq!(out.status.code(), Some(1));
    let reason = c.job("solo")["reason"].as_str().unwrap_or_default().to_string();
    let me = format!("held by pid {} (", std::process::id());
    assert!(reason.contains(&me), "the reason must name the live holder, not the old job {old}: {reason}");
    drop(held);
    c.wait_state("solo", "running", 10 * SEC);
}
