//! Docker and systemd for real (SPEC §7, §9), against the dockerd `./test` starts.
//!
//! - The minimal image of docker/Dockerfile (`--target corral`, FROM scratch, only /corral),
//!   built from the binary under test, run with `--network host`: corral as PID 1 supervises
//!   jobs, reaps orphans, answers `docker exec ... corral status`, reports Docker's
//!   HEALTHCHECK through `corral health`, and `docker stop` ends it with exit 0 well inside
//!   Docker's 10 s.
//! - systemd/corral.service, unchanged, under a real systemd: a Debian rootfs made with
//!   debootstrap (cached as a Docker image keyed by what it is made of), booted with systemd as
//!   PID 1. Active, `systemctl reload`, `Status=` following `corral status`, a corral frozen
//!   with SIGSTOP killed and restarted by `WatchdogSec=`, and `systemctl stop`.
//!
//! No registry is reachable: images are FROM scratch or imported. Nothing here skips: without
//! Docker (or debootstrap) the tests fail and say what to install.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::pg::TestPg;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn docker(args: &[&str]) -> Output {
    run(Command::new("docker").args(args))
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}{}", stdout(&out), stderr(&out));
    stdout(&out)
}

fn require_docker() {
    let out = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("no Docker engine answers (./test starts dockerd): {}", stderr(&o)),
        Err(e) => panic!("the Docker tests need docker.io (apt-get install docker.io; ./test does): {e}"),
    }
}

/// A client whose `docker build` uses BuildKit (which builds only the stages a target needs):
/// one with buildx, or a pre-23 client (Debian's docker.io 20.10) with DOCKER_BUILDKIT=1.
fn buildkit_client() -> PathBuf {
    if Command::new("docker").args(["buildx", "version"]).output().is_ok_and(|o| o.status.success()) {
        return PathBuf::from("docker");
    }
    for client in ["docker", "/usr/bin/docker"] {
        let out = Command::new(client).args(["version", "--format", "{{.Client.Version}}"]).output();
        let major = out.ok().and_then(|o| stdout(&o).trim().split('.').next()?.parse::<u32>().ok());
        if major.is_some_and(|m| m < 23) {
            return PathBuf::from(client);
        }
    }
    panic!("docker build needs BuildKit here: install docker-buildx, or use Debian's docker.io client (/usr/bin/docker)")
}

/// A container removed when the test ends, however it ends.
struct Container {
    name: String,
}

impl Container {
    fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("docker").arg("exec").arg(&self.name).args(args))
    }

    fn inspect(&self, format: &str) -> String {
        ok(docker(&["inspect", "--format", format, &self.name]), "docker inspect").trim().to_string()
    }

    fn logs(&self) -> String {
        let out = docker(&["logs", &self.name]);
        format!("{}{}", stdout(&out), stderr(&out))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- docker logs {} ---\n{}", self.name, self.logs());
        }
        let _ = Command::new("docker").args(["rm", "-f", &self.name]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

// ----- the FROM scratch image -----

/// docker/Dockerfile's `corral` stage with the binary under test as `dist/corral`.
fn scratch_image() -> String {
    let ctx = tempfile::Builder::new().prefix("corral-it-docker-").tempdir().unwrap();
    std::fs::create_dir_all(ctx.path().join("dist")).unwrap();
    std::fs::copy(bin(), ctx.path().join("dist/corral")).unwrap();
    let tag = format!("corral-it-scratch:{}", unique("t").trim_start_matches("t-"));
    let out = run(Command::new(buildkit_client())
        .env("DOCKER_BUILDKIT", "1")
        .args(["build", "-q", "--target", "corral", "--build-arg", "CORRAL_BINARY=context", "-t", &tag, "-f"])
        .arg(repo().join("docker/Dockerfile"))
        .arg(ctx.path()));
    ok(out, "docker build --target corral");
    tag
}

/// Host pids of the processes in the container (its init and every descendant), with states.
fn container_processes(init: i32) -> Vec<(i32, char)> {
    let mut out = vec![];
    let mut todo = vec![init];
    while let Some(pid) = todo.pop() {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()));
        if let Some(state) = state {
            out.push((pid, state));
        }
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            todo.extend(children.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out
}

#[test]
fn scratch_image_runs_corral_as_pid_1() {
    require_docker();
    let pg = TestPg::start_local(30);
    let image = scratch_image();
    let _image = ImageGuard(image.clone());
    let etc = tempfile::Builder::new().prefix("corral-it-docker-etc-").tempdir().unwrap();
    // `localhost`: through the /etc/hosts Docker writes, or corral's loopback fallback.
    let manifest = r#"[supervisor]
socket = "/tmp/corral.sock"
lock_dir = "/tmp/locks"
reap_interval = "1s"

[database]
url = "${DATABASE_URL}"
max_connections = 30
provider_reserve = 0
adhoc_reserve = 0
health_timeout = "5s"

[jobs.app]
command = ["/job", "say", "app up"]
connections = 1

[jobs.forker]
command = ["/job", "orphans", "5"]
"#;
    std::fs::write(etc.path().join("supervisor.toml"), manifest).unwrap();
    let url = pg.url().replace("127.0.0.1", "localhost");
    let c = Container { name: unique("corral-it-scratch") };
    let job = crate::dropin::static_job();
    ok(
        docker(&[
            "run", "-d", "--name", &c.name, "--network", "host",
            // The image's HEALTHCHECK command, checked every second for the test.
            "--health-interval", "1s", "--health-timeout", "10s", "--health-retries", "1", "--health-start-period", "0s",
            "-e", &format!("DATABASE_URL={url}"),
            "-v", &format!("{}:/etc/corral:ro", etc.path().display()),
            "-v", &format!("{}:/job:ro", job.display()),
            &image,
        ]),
        "docker run",
    );
    let init: i32 = c.inspect("{{.State.Pid}}").parse().unwrap();
    // Answers `docker exec ... corral status`: jobs running.
    let ready = poll(20 * SEC, || {
        let out = c.exec(&["/corral", "status", "--json"]);
        out.status.success() && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v["jobs"].as_array().is_some_and(|j| j.iter().all(|j| j["state"] == "running" || j["state"] == "starting")))
    });
    assert!(ready, "corral status in the container never showed the jobs\n{}", c.logs());
    let status: Value = serde_json::from_slice(&c.exec(&["/corral", "status", "--json"]).stdout).unwrap();
    assert_eq!(status["supervisor"]["pid"], 1, "corral is PID 1 in the container: {status}");
    assert!(c.logs().contains("[app] app up"), "{}", c.logs());

    // The orphans (reparented to corral, PID 1) are reaped: counted, and no zombie is left.
    assert!(poll(20 * SEC, || c.logs().contains("[forker] orphans 5")), "{}", c.logs());
    let reaped = poll(20 * SEC, || {
        let v: Value = serde_json::from_slice(&c.exec(&["/corral", "status", "--json"]).stdout).unwrap_or(Value::Null);
        v["supervisor"]["zombies_reaped"].as_u64().unwrap_or(0) >= 5 && container_processes(init).iter().all(|(_, s)| *s != 'Z')
    });
    assert!(reaped, "orphans not reaped: {:?}\n{}", container_processes(init), c.logs());

    // Docker's HEALTHCHECK runs `/corral health`: healthy with the database, unhealthy without.
    let health = |want: &str| poll(30 * SEC, || c.inspect("{{.State.Health.Status}}") == want);
    assert!(health("healthy"), "health {} \n{}", c.inspect("{{json .State.Health}}"), c.logs());
    pg.stop_immediate();
    assert!(health("unhealthy"), "health {}", c.inspect("{{json .State.Health}}"));
    let log = c.inspect("{{json .State.Health.Log}}");
    assert!(log.contains("database unhealthy"), "{log}");
    assert!(!log.contains(pg.password()) && !c.logs().contains(pg.password()), "the password was printed");
    // The jobs keep running while the database is down.
    assert!(c.exec(&["/corral", "status"]).status.success());

    // docker stop: SIGTERM, jobs stopped, namespace cleared, exit 0, well inside the 10 s.
    let t = Instant::now();
    ok(docker(&["stop", "-t", "10", &c.name]), "docker stop");
    let took = t.elapsed();
    assert_eq!(c.inspect("{{.State.ExitCode}}"), "0", "{}", c.logs());
    assert!(took < Duration::from_secs(8), "docker stop took {took:?}");
    assert!(c.logs().contains("all jobs stopped; exiting"), "{}", c.logs());
}

struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", &self.0]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

// ----- systemd -----

/// What the rootfs is made of; its hash names the cached image.
const DEBOOTSTRAP: &[&str] = &["--variant=minbase", "--include=systemd,systemd-sysv,dbus", "bookworm"];

fn mirror() -> String {
    std::env::var("CORRAL_TEST_DEBIAN_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into())
}

/// A Debian rootfs with systemd as an image, made once per machine: `docker import` of a
/// debootstrap run, tagged by a hash of its inputs. Concurrent test runs wait for one another
/// on a lock file instead of bootstrapping twice.
fn systemd_image() -> String {
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (DEBOOTSTRAP, mirror(), 1u32).hash(&mut h);
        format!("{:016x}", h.finish())
    };
    let tag = format!("corral-it-systemd:{key}");
    let exists = || docker(&["image", "inspect", "--format", "{{.Id}}", &tag]).status.success();
    if exists() {
        return tag;
    }
    let lock = std::fs::File::create(std::env::temp_dir().join(format!("corral-it-systemd-{key}.lock"))).unwrap();
    // SAFETY: flock on a file we own; released when `lock` is dropped.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0);
    if exists() {
        return tag;
    }
    let debootstrap = ["debootstrap", "/usr/sbin/debootstrap"].into_iter().find(|d| Command::new(d).arg("--version").output().is_ok());
    let debootstrap = debootstrap.expect("the systemd test needs debootstrap (apt-get install debootstrap; ./test does)");
    let dir = tempfile::Builder::new().prefix("corral-it-rootfs-").tempdir().unwrap();
    let root = dir.path().join("root");
    eprintln!("systemd test: debootstrap {} (once per machine, cached as {tag})", DEBOOTSTRAP.join(" "));
    let out = run(Command::new(debootstrap).args(DEBOOTSTRAP).arg(&root).arg(mirror()));
    ok(out, "debootstrap");
    let mut tar = Command::new("tar").arg("-C").arg(&root).args(["-c", "."]).stdout(Stdio::piped()).spawn().unwrap();
    let import = Command::new("docker").args(["import", "-", &tag]).stdin(tar.stdout.take().unwrap()).output().unwrap();
    assert!(tar.wait().unwrap().success(), "tar of the rootfs failed");
    ok(import, "docker import");
    tag
}

struct Systemd {
    c: Container,
}

impl Systemd {
    fn systemctl(&self, args: &[&str]) -> Output {
        self.c.exec(&[&["systemctl"][..], args].concat())
    }

    fn show(&self, prop: &str) -> String {
        stdout(&self.systemctl(&["show", "-p", prop, "--value", "corral"])).trim().to_string()
    }

    fn journal(&self) -> String {
        stdout(&self.c.exec(&["journalctl", "-u", "corral", "--no-pager", "-o", "cat"]))
    }
}

#[test]
fn systemd_runs_the_unit_unchanged() {
    require_docker();
    let image = systemd_image();
    let etc = tempfile::Builder::new().prefix("corral-it-systemd-").tempdir().unwrap();
    let manifest = etc.path().join("supervisor.toml");
    std::fs::write(
        &manifest,
        "[supervisor]\nsocket = \"/run/corral/corral.sock\"\nlock_dir = \"/run/corral/locks\"\n\n\
         [jobs.worker]\ncommand = [\"sleep\", \"100000\"]\nhealthy_after = \"2s\"\n",
    )
    .unwrap();
    let s = Systemd { c: Container { name: unique("corral-it-systemd") } };
    ok(
        docker(&[
            "run", "-d", "--name", &s.c.name,
            "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined",
            "--tmpfs", "/run", "--tmpfs", "/run/lock", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro", "--network", "host",
            "-v", &format!("{}:/usr/local/bin/corral:ro", bin()),
            "-v", &format!("{}:/etc/systemd/system/corral.service:ro", repo().join("systemd/corral.service").display()),
            "-v", &format!("{}:/etc/corral/supervisor.toml", manifest.display()),
            &image, "/sbin/init",
        ]),
        "docker run systemd",
    );
    let booted = poll(60 * SEC, || {
        let state = stdout(&s.systemctl(&["is-system-running"]));
        matches!(state.trim(), "running" | "degraded")
    });
    assert!(booted, "systemd did not boot: {}", stdout(&s.systemctl(&["is-system-running"])));
    let out = s.systemctl(&["start", "corral"]);
    assert!(out.status.success(), "systemctl start corral: {}\n{}", stderr(&out), s.journal());
    assert_eq!(s.show("ActiveState"), "active", "{}", s.journal());

    // Status= follows `corral status`: once the worker is RUNNING, within a second or so.
    let running_at = {
        let ok = poll(30 * SEC, || stdout(&s.c.exec(&["corral", "status"])).contains("RUNNING"));
        assert!(ok, "{}", s.journal());
        Instant::now()
    };
    let followed = poll(10 * SEC, || s.show("StatusText") == "1/1 jobs running");
    let lag = running_at.elapsed();
    assert!(followed, "StatusText {:?}\n{}", s.show("StatusText"), s.journal());
    assert!(lag < Duration::from_millis(2500), "Status= followed {lag:?} after corral status said RUNNING");

    // systemctl reload: corral reload, the job untouched.
    let worker = |s: &Systemd| -> Value {
        let v: Value = serde_json::from_slice(&s.c.exec(&["corral", "status", "--json"]).stdout).unwrap_or(Value::Null);
        v["jobs"][0].clone()
    };
    let pid = worker(&s)["pid"].clone();
    let out = s.systemctl(&["reload", "corral"]);
    assert!(out.status.success(), "systemctl reload: {}\n{}", stderr(&out), s.journal());
    assert!(s.journal().contains("reload: applied"), "{}", s.journal());
    assert_eq!(worker(&s)["pid"], pid, "reload restarted an unchanged job");
    assert_eq!(s.show("ActiveState"), "active");

    // WatchdogSec=30s: a frozen corral stops pinging; systemd kills and restarts it.
    let main_pid = s.show("MainPID");
    let out = s.c.exec(&["sh", "-c", &format!("kill -STOP {main_pid}")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let restarted = poll(90 * SEC, || {
        s.show("NRestarts") == "1" && s.show("ActiveState") == "active" && s.show("MainPID") != main_pid && s.show("MainPID") != "0"
    });
    assert!(restarted, "no watchdog restart: NRestarts={} MainPID={}\n{}", s.show("NRestarts"), s.show("MainPID"), s.journal());
    assert!(s.journal().to_lowercase().contains("watchdog"), "{}", s.journal());
    assert!(poll(30 * SEC, || worker(&s)["state"] == "running"), "{}", s.journal());

    // systemctl stop: STOPPING=1, jobs stopped, a clean exit (inactive, not failed).
    let t = Instant::now();
    let out = s.systemctl(&["stop", "corral"]);
    assert!(out.status.success(), "systemctl stop: {}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(20), "stop took {:?}", t.elapsed());
    assert_eq!(s.show("ActiveState"), "inactive", "{}", s.journal());
    assert_eq!(s.show("Result"), "success", "{}", s.journal());
    assert!(s.journal().contains("all jobs stopped; exiting"), "{}", s.journal());
    let _ = std::io::stderr().flush();
}
