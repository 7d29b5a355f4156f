//! corral as PID 1 of a fresh PID namespace (SPEC §7): `unshare --pid --fork
//! --mount-proc corral run`. Needs root (CAP_SYS_ADMIN); these tests fail,
//! never skip, when `unshare` cannot run (STYLE.md habit 10).
//!
//! The namespace is observed from the host: corral's host pid is the child of
//! the `unshare` process, and the namespace's processes are corral's
//! descendants (read from `/proc/<pid>/task/*/children`), which includes
//! zombies until they are reaped. `NSpid` in `/proc/<pid>/status` maps the
//! pids that jobs write (namespace pids) to host pids.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

/// corral running as PID 1 under `unshare`; the harness `Corral` holds the
/// `unshare` process (whose exit code is corral's).
struct Ns {
    c: Corral,
    /// corral's pid as seen from the host.
    host_pid: i32,
}

impl Drop for Ns {
    fn drop(&mut self) {
        // unshare ignores SIGTERM; corral (PID 1 inside) does not. Corral's own
        // Drop then waits for unshare to exit.
        if self.c.child.is_some() {
            unsafe { libc::kill(self.host_pid, libc::SIGTERM) };
        }
    }
}

fn require_unshare() {
    let out = Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "PID-1 tests need `unshare --pid --fork --mount-proc` (root or CAP_SYS_ADMIN); it failed{}: {}",
            if std::env::var("CI").as_deref() == Ok("true") { " under CI=true" } else { "" },
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("PID-1 tests need the `unshare` tool from util-linux: {e}"),
    }
}

fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// Every descendant of `pid` (host pids), zombies included.
fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children(p) {
            if !out.contains(&c) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

fn status_field(pid: i32, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
}

fn is_zombie(pid: i32) -> bool {
    status_field(pid, "State:").is_some_and(|s| s.starts_with('Z'))
}

/// The innermost pid of host pid `pid` (its pid inside the namespace).
fn ns_pid(pid: i32) -> Option<i32> {
    status_field(pid, "NSpid:")?.split_whitespace().last()?.parse().ok()
}

/// Host pid of the namespace process whose namespace pid is `inner`.
fn host_pid_of(ns: &Ns, inner: i32) -> Option<i32> {
    descendants(ns.host_pid).into_iter().find(|&p| ns_pid(p) == Some(inner))
}

fn ppid(pid: i32) -> Option<i32> {
    status_field(pid, "PPid:")?.parse().ok()
}

/// Start corral as PID 1 on `body`, after writing `files` (name, text with
/// `DIR` for the temp dir) into its directory.
fn start_pid1(body: &str, files: &[(&str, &str)]) -> Ns {
    require_unshare();
    let (dir, config, socket) = setup(body);
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text.replace("DIR", dir.path().to_str().unwrap())).unwrap();
    }
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"]).arg(bin()).args(["run", "-c"]).arg(&config);
    let c = Corral::from_command(cmd, dir, config, socket);
    let unshare_pid = c.pid();
    let mut host_pid = 0;
    let found = poll(Duration::from_secs(10), || {
        host_pid = children(unshare_pid)
            .into_iter()
            .find(|&p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|s| s.trim() == "corral"))
            .unwrap_or(0);
        host_pid != 0
    });
    assert!(found, "no corral child under unshare {unshare_pid}\n{}", c.output());
    assert_eq!(ns_pid(host_pid), Some(1), "corral is not PID 1 in its namespace");
    let ns = Ns { c, host_pid };
    ns.c.wait_ready();
    ns
}

#[test]
fn pid1_reaps_a_thousand_orphaned_grandchildren() {
    let ns = start_pid1(
        r#"
[jobs.spray]
command = ["sh", "-c", "i=0; while [ $i -lt 1000 ]; do (true &); i=$((i+1)); done; echo done > {dir}/spawned; exec sleep 1000"]
"#,
        &[],
    );
    let c = &ns.c;
    assert!(poll(Duration::from_secs(30), || c.path("spawned").exists()), "the job did not finish spawning\n{}", c.output());
    c.wait_output("running as PID 1", Duration::from_secs(5));

    // Every one of the 1,000 orphans was adopted and reaped by corral...
    let reaped = || c.status()["supervisor"]["zombies_reaped"].as_u64().unwrap_or(0);
    assert!(poll(Duration::from_secs(10), || reaped() >= 1000), "only {} orphans reaped", reaped());
    // ...and no zombie is left anywhere in the namespace.
    let zombies = || descendants(ns.host_pid).into_iter().filter(|&p| is_zombie(p)).collect::<Vec<_>>();
    assert!(poll(Duration::from_secs(5), || zombies().is_empty()), "zombies left in the namespace: {:?}", zombies());
    let live = descendants(ns.host_pid);
    assert!(live.len() <= 2, "leftover processes in the namespace: {live:?}");
    let j = c.job("spray");
    assert!(j["state"] == "starting" || j["state"] == "running", "{j}");

    // Nothing but the job is left: the final sweep finds an empty namespace
    // and needs neither its 3 s grace nor SIGKILL.
    let mut ns = ns;
    let t0 = Instant::now();
    unsafe { libc::kill(ns.host_pid, libc::SIGTERM) };
    assert_eq!(ns.c.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(2), "exit took {:?}\n{}", t0.elapsed(), ns.c.output());
    assert!(ns.c.output().contains("sigkill_needed=false"), "{}", ns.c.output());
}

#[test]
fn sigterm_to_pid1_stops_jobs_and_terminates_adopted_orphans_then_exits_0() {
    let (body, scripts) = (
        r#"
[jobs.adopter]
command = ["sh", "{dir}/adopter.sh"]
healthy_after = "100ms"

[jobs.polite]
command = ["sh", "-c", "trap 'echo polite bye; exit 0' TERM; echo ready > {dir}/polite.ready; sleep 1000 & wait"]
healthy_after = "100ms"
"#,
        [
            // Two orphans in their own sessions that answer SIGTERM, one that ignores it.
            (
                "adopter.sh",
                "(setsid sh DIR/orphan.sh &)\n(setsid sh DIR/orphan.sh &)\n(setsid sh DIR/deaf.sh &)\necho ready > DIR/adopter.ready\nexec sleep 1000\n",
            ),
            ("orphan.sh", "trap 'echo term >> DIR/got_term; exit 0' TERM\necho $$ >> DIR/orphans\nsleep 1000 &\nwait\n"),
            ("deaf.sh", "trap '' TERM\necho $$ >> DIR/orphans\nexec sleep 1000\n"),
        ],
    );
    let mut ns = start_pid1(body, &scripts);
    let dir = ns.c.dir.path().to_path_buf();
    let c = &ns.c;
    assert!(poll(Duration::from_secs(10), || c.path("adopter.ready").exists() && c.path("polite.ready").exists()));
    let inner: Vec<i32> = {
        let mut v = Vec::new();
        assert!(poll(Duration::from_secs(10), || {
            v = std::fs::read_to_string(c.path("orphans")).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect();
            v.len() == 3
        }));
        v
    };
    // Each orphan is adopted by PID 1 (its parent subshell exited).
    let mut hosts = Vec::new();
    for p in &inner {
        let mut h = None;
        assert!(
            poll(Duration::from_secs(5), || {
                h = host_pid_of(&ns, *p);
                h.is_some_and(|h| ppid(h) == Some(ns.host_pid))
            }),
            "orphan {p} (namespace pid) was not adopted by corral"
        );
        hosts.push(h.unwrap());
    }

    let t0 = Instant::now();
    unsafe { libc::kill(ns.host_pid, libc::SIGTERM) };
    let code = ns.c.wait_exit(Duration::from_secs(15));
    let took = t0.elapsed();
    assert_eq!(code, Some(0), "unshare reports corral's exit code");
    let out = ns.c.output();
    assert!(out.contains("[polite] polite bye"), "the job was not stopped gracefully\n{out}");
    // The orphans got SIGTERM from corral (the kernel's kill at namespace exit is SIGKILL, untrappable).
    let got_term = std::fs::read_to_string(dir.join("got_term")).unwrap_or_default();
    assert_eq!(got_term.lines().count(), 2, "both orphans should have handled SIGTERM\n{out}");
    assert!(out.contains("final sweep of the namespace done"), "{out}");
    assert!(out.contains("sigkill_needed=true"), "the deaf orphan needed SIGKILL\n{out}");
    assert!(took >= Duration::from_secs(3), "SIGKILL came before the 3 s grace: {took:?}");
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    for h in hosts {
        assert!(poll(Duration::from_secs(2), || !pid_alive(h)), "orphan {h} survived");
    }
}
