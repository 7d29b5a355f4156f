//! Drop-in everywhere (SPEC §1, §9): the static binary, `cargo install` giving `corral`
//! alone, the binary in an empty chroot (users, `localhost` and DNS without NSS, supervising a
//! job and reaching PostgreSQL), completions and man page, `signal`, `logs` of every job,
//! `--json` before the verb, colour and NO_COLOR, and secrets from files.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::pg::TestPg;

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

// ----- the static binary -----

/// The program headers of an ELF file: (PT_INTERP present, DT_NEEDED count). Enough of ELF64
/// little-endian to tell a static executable from a dynamic one without `ldd` or `file`.
fn elf_dynamic_parts(bytes: &[u8]) -> (bool, usize) {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(bytes[4], 2, "not ELF64");
    let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let (mut interp, mut needed) = (false, 0);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let kind = u32::from_le_bytes(bytes[ph..ph + 4].try_into().unwrap());
        match kind {
            3 => interp = true,
            2 => {
                let (off, size) = (u64_at(ph + 8), u64_at(ph + 32));
                needed += bytes[off..off + size].chunks(16).filter(|d| u64::from_le_bytes(d[..8].try_into().unwrap()) == 1).count();
            }
            _ => {}
        }
    }
    (interp, needed)
}

#[test]
fn release_binary_is_static() {
    // target/release/corral (target/debug/corral for a debug `cargo test`): the binary a plain
    // `cargo build --release` leaves there, through .cargo/config.toml.
    let bytes = std::fs::read(bin()).unwrap();
    let (interp, needed) = elf_dynamic_parts(&bytes);
    let hint = "build through .cargo/config.toml (a RUSTC_WRAPPER in the environment replaces its wrapper)";
    assert!(!interp, "{} has a dynamic loader (PT_INTERP): {hint}", bin());
    assert_eq!(needed, 0, "{} needs shared libraries: {hint}", bin());
    // ldd agrees (it ships with glibc, so it is there wherever this test builds).
    if let Ok(out) = Command::new("ldd").arg(bin()).output() {
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(text.contains("statically linked") || text.contains("not a dynamic executable"), "ldd {}: {text}", bin());
    }
    // The test's own ELF reader, checked on something dynamic: the test binary itself.
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert!(elf_dynamic_parts(&me).1 > 0, "the ELF reader sees no DT_NEEDED in a dynamic test binary");
}

#[test]
fn cargo_install_gives_corral_alone() {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata: {}", stderr(&out));
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pkg = meta["packages"].as_array().unwrap().iter().find(|p| p["name"] == "corral").unwrap();
    let defaults: Vec<&str> = pkg["features"]["default"].as_array().map(|d| d.iter().filter_map(|f| f.as_str()).collect()).unwrap_or_default();
    // What `cargo install --path .` installs: the bins whose required features are on by default.
    let installed: Vec<&str> = pkg["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .filter(|t| t["required-features"].as_array().is_none_or(|r| r.iter().all(|f| defaults.contains(&f.as_str().unwrap()))))
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(installed, ["corral"]);
    for key in ["repository", "readme", "rust_version", "license"] {
        assert!(pkg[key].is_string(), "Cargo.toml lacks {key}");
    }
    assert!(!pkg["keywords"].as_array().unwrap().is_empty() && !pkg["categories"].as_array().unwrap().is_empty());
    for license in ["LICENSE-MIT", "LICENSE-APACHE"] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(license)).unwrap();
        assert!(text.contains(if license.ends_with("MIT") { "MIT License" } else { "Apache License" }), "{license}");
    }
}

// ----- a static job for places without a shell -----

/// tests/it/helpers/job.c, compiled with `cc -static` once per test run into cargo's
/// CARGO_TARGET_TMPDIR (written aside, then renamed: concurrent runs never see half a file).
pub fn static_job() -> PathBuf {
    static JOB: OnceLock<PathBuf> = OnceLock::new();
    JOB.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let out = dir.join("corral-it-job");
        let part = dir.join(format!("corral-it-job.{}", std::process::id()));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/helpers/job.c");
        let built = Command::new("cc").args(["-static", "-O1", "-o"]).arg(&part).arg(&src).output();
        match built {
            Ok(o) if o.status.success() => {
                std::fs::rename(&part, &out).unwrap();
                out
            }
            Ok(o) => panic!("cc -static {}: {}", src.display(), stderr(&o)),
            Err(e) => panic!("a C compiler is needed for the static test job (apt-get install gcc libc6-dev): {e}"),
        }
    })
    .clone()
}

// ----- an empty chroot -----

const JOB_UID: u32 = 4321;
const JOB_GID: u32 = 4322;
const OPS_GID: u32 = 4400;

/// A root holding only /corral, /job, passwd and group files and the manifest: no libc, no NSS
/// modules, no /etc/hosts (so `localhost` must resolve without it), no /dev.
struct Chroot {
    root: tempfile::TempDir,
}

impl Chroot {
    fn new(manifest: &str, resolv_conf: Option<&str>) -> Chroot {
        let root = tempfile::Builder::new().prefix("corral-it-chroot-").tempdir().unwrap();
        let r = root.path();
        for d in ["etc", "run", "proc", "home/jobuser"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::copy(bin(), r.join("corral")).unwrap();
        std::fs::copy(static_job(), r.join("job")).unwrap();
        std::fs::write(r.join("etc/passwd"), format!("root:x:0:0:root:/root:/bin/sh\njobuser:x:{JOB_UID}:{JOB_GID}::/home/jobuser:/bin/false\n")).unwrap();
        std::fs::write(r.join("etc/group"), format!("root:x:0:\njobuser:x:{JOB_GID}:\nops:x:{OPS_GID}:jobuser\n")).unwrap();
        std::fs::write(r.join("etc/corral.toml"), manifest).unwrap();
        if let Some(conf) = resolv_conf {
            std::fs::write(r.join("etc/resolv.conf"), conf).unwrap();
        }
        Chroot { root }
    }

    /// `corral run` as PID 1 of a new PID namespace, chrooted, with its own /proc.
    fn run(self, env: &[(&str, &str)]) -> ChrootCorral {
        require_unshare();
        let r = self.root.path().to_path_buf();
        let mut cmd = Command::new("unshare");
        cmd.arg("--pid").arg("--fork").arg("--kill-child").arg(format!("--mount-proc={}", r.join("proc").display()));
        cmd.arg("chroot").arg(&r).args(["/corral", "run", "-c", "/etc/corral.toml"]);
        cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let c = Corral::from_command(cmd, self.root, r.join("etc/corral.toml"), r.join("run/corral.sock"));
        c.wait_ready();
        ChrootCorral { c }
    }
}

struct ChrootCorral {
    c: Corral,
}

impl ChrootCorral {
    /// A client inside the chroot.
    fn inside(&self, args: &[&str]) -> std::process::Output {
        Command::new("chroot").arg(self.c.dir.path()).args(["/corral", "-s", "/run/corral.sock"]).args(args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).output().unwrap()
    }
}

impl Drop for ChrootCorral {
    fn drop(&mut self) {
        // unshare ignores SIGTERM; corral, PID 1 inside, gets it (it is unshare's child).
        let unshare = self.c.pid();
        let pids: Vec<i32> = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        for pid in pids {
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

fn require_unshare() {
    let out = Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]).output();
    assert!(
        out.as_ref().is_ok_and(|o| o.status.success()),
        "the chroot tests need root and `unshare` (util-linux): {out:?}"
    );
}

const CHROOT_MANIFEST: &str = r#"[supervisor]
socket = "/run/corral.sock"
socket_group = "ops"
lock_dir = "/run/locks"

[database]
url = "${DATABASE_URL}"
max_connections = 20
provider_reserve = 0
adhoc_reserve = 0

[jobs.whoami]
command = ["/job", "id"]
user = "jobuser"
healthy_after = "0s"
"#;

/// Supervises a job as a user from /etc/passwd, binds its socket for a group from /etc/group,
/// and its own database connection (to `host`) is healthy, asked from inside the chroot.
fn chroot_supervises_and_reaches_postgres(pg: &TestPg, host: &str, resolv_conf: Option<&str>) {
    let url = pg.url().replace("127.0.0.1", host);
    assert!(url.contains(&format!("@{host}:")), "{url}");
    let c = Chroot::new(CHROOT_MANIFEST, resolv_conf).run(&[("DATABASE_URL", &url)]);
    let out = c.inside(&["health", "--json"]);
    let health: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(code(&out), 0, "corral health in the chroot: {health}\n{}\n--- output ---\n{}", stderr(&out), c.c.output());
    assert_eq!(health["healthy"], true, "{health}");
    assert_eq!(health["database"]["healthy"], true, "{health}");
    c.c.wait_output(&format!("[whoami] uid={JOB_UID} gid={JOB_GID} groups=0 user=jobuser home=/home/jobuser"), 10 * SEC);
    let sock = std::fs::metadata(c.c.dir.path().join("run/corral.sock")).unwrap();
    assert_eq!((sock.gid(), sock.mode() & 0o777), (OPS_GID, 0o660), "socket_group from /etc/group");
    assert!(poll(10 * SEC, || stdout(&c.inside(&["status"])).contains("RUNNING")), "{}", stdout(&c.inside(&["status"])));
    assert!(!c.c.output().contains(pg.password()), "the password was printed");
}

#[test]
fn chroot_by_ip() {
    let pg = TestPg::start_local(30);
    chroot_supervises_and_reaches_postgres(&pg, "127.0.0.1", None);
}

#[test]
fn chroot_by_localhost_without_etc_hosts() {
    let pg = TestPg::start_local(30);
    chroot_supervises_and_reaches_postgres(&pg, "localhost", None);
}

/// A DNS server for one test on its own loopback address (127.x.y.z:53): `db.corral.test` is
/// 127.0.0.1 (A), with no AAAA; any other name is NXDOMAIN. Lives until dropped.
struct TestDns {
    addr: Ipv4Addr,
    stop: Arc<AtomicBool>,
    queries: Arc<std::sync::Mutex<Vec<String>>>,
}

impl TestDns {
    fn start() -> TestDns {
        let sock = (0..50)
            .find_map(|_| {
                let addr = Ipv4Addr::new(127, fastrand::u8(1..=254), fastrand::u8(1..=254), fastrand::u8(1..=254));
                UdpSocket::bind(SocketAddr::from((addr, 53))).ok()
            })
            .expect("bind a DNS server on 127.x.y.z:53 (needs root)");
        let addr = match sock.local_addr().unwrap() {
            SocketAddr::V4(a) => *a.ip(),
            SocketAddr::V6(_) => unreachable!(),
        };
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, q) = (stop.clone(), queries.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
                let Ok(query) = simple_dns::Packet::parse(&buf[..n]) else { continue };
                let Some(question) = query.questions.first() else { continue };
                let name = question.qname.to_string();
                q.lock().unwrap().push(format!("{name} {:?}", question.qtype));
                let mut reply = simple_dns::Packet::new_reply(query.id());
                reply.questions.push(question.clone());
                if name.eq_ignore_ascii_case("db.corral.test") {
                    if question.qtype == simple_dns::QTYPE::TYPE(simple_dns::TYPE::A) {
                        let rdata = simple_dns::rdata::RData::A(simple_dns::rdata::A { address: u32::from(Ipv4Addr::LOCALHOST) });
                        reply.answers.push(simple_dns::ResourceRecord::new(question.qname.clone(), simple_dns::CLASS::IN, 60, rdata));
                    }
                } else {
                    *reply.rcode_mut() = simple_dns::RCODE::NameError;
                }
                let _ = sock.send_to(&reply.build_bytes_vec().unwrap(), from);
            }
        });
        TestDns { addr, stop, queries }
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn chroot_by_name_through_dns_and_a_search_domain() {
    let pg = TestPg::start_local(30);
    let dns = TestDns::start();
    // `db` has no dot: with ndots 1 the search domain comes first (resolv.conf(5)).
    let conf = format!("nameserver {}\nsearch corral.test\n", dns.addr);
    chroot_supervises_and_reaches_postgres(&pg, "db", Some(&conf));
    let asked = dns.queries.lock().unwrap().clone();
    assert!(asked.iter().any(|q| q.starts_with("db.corral.test")), "the DNS server was not asked: {asked:?}");
}

// ----- completions and man page -----

#[test]
fn bash_completion_loads_and_completes_verbs() {
    let script = stdout(&Command::new(bin()).args(["completions", "bash"]).output().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("corral.bash");
    std::fs::write(&file, &script).unwrap();
    // Source it and ask for completions of `corral sig` and `corral logs --s`, as bash would.
    let probe = format!(
        "source {}; COMP_WORDS=(corral sig); COMP_CWORD=1; _corral corral sig corral; echo \"verbs: ${{COMPREPLY[*]}}\"; \
         COMP_WORDS=(corral logs --s); COMP_CWORD=2; _corral corral --s logs; echo \"flags: ${{COMPREPLY[*]}}\"",
        file.display()
    );
    let out = Command::new("bash").args(["--norc", "--noprofile", "-c", &probe]).output().expect("bash");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("verbs: signal"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("flags:") && l.contains("--since") && l.contains("--socket")), "{text}");
    for shell in ["zsh", "fish"] {
        let out = Command::new(bin()).args(["completions", shell]).output().unwrap();
        assert_eq!(code(&out), 0);
        for verb in ["signal", "logs", "completions", "budget"] {
            assert!(stdout(&out).contains(verb), "{shell} completion lacks {verb}");
        }
    }
    let out = Command::new(bin()).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(code(&out), 2, "an unknown shell is a usage error");
}

#[test]
fn man_pages_list_every_verb() {
    let out = Command::new(bin()).arg("man").output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let page = stdout(&out);
    assert!(page.contains(".TH corral 1"), "{page}");
    for verb in ["run", "status", "signal", "logs", "completions", "man", "shutdown"] {
        assert!(page.contains(&format!("corral\\-{verb}")) || page.contains(verb), "man page lacks {verb}");
    }
    assert!(page.contains("NO_COLOR") && page.contains("_FILE"), "the man page explains the environment");
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("man1");
    let out = Command::new(bin()).args(["man", "--dir"]).arg(&target).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for page in ["corral.1", "corral-signal.1", "corral-logs.1"] {
        let text = std::fs::read_to_string(target.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let logs = std::fs::read_to_string(target.join("corral-logs.1")).unwrap();
    assert!(logs.contains("since"), "corral-logs.1 documents --since");
}

// ----- signal -----

const TRAPPER: &str = r#"
[jobs.trapper]
command = ["sh", "-c", "trap 'echo got HUP' HUP; trap 'echo got USR1' USR1; echo ready; while :; do sleep 0.1; done"]

[jobs.other]
command = ["sh", "-c", "trap 'echo other USR1' USR1; echo ready; while :; do sleep 0.1; done"]

[jobs.idle]
command = ["sleep", "1000"]
autostart = false
"#;

#[test]
fn signal_sends_to_each_jobs_main_process() {
    let c = Corral::start(TRAPPER);
    c.wait_output("[trapper] ready", 10 * SEC);
    c.wait_output("[other] ready", 10 * SEC);
    let pid = c.job("trapper")["pid"].as_i64().unwrap();

    let out = c.ctl(&["signal", "trapper", "HUP"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("trapper: sent SIGHUP to pid {pid}\n"));
    c.wait_output("[trapper] got HUP", 10 * SEC);

    // `all` skips jobs without a process; names and numbers both work (10 = SIGUSR1).
    let out = c.ctl(&["--json", "signal", "all", "10"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["jobs"].as_array().unwrap().iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["other", "trapper"]);
    c.wait_output("[trapper] got USR1", 10 * SEC);
    c.wait_output("[other] other USR1", 10 * SEC);
    assert_eq!(c.job("trapper")["pid"].as_i64(), Some(pid), "a signal is not a restart");

    // A named job without a process is refused; the others still get the signal.
    let out = c.ctl(&["signal", "idle", "trapper", "sighup"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("idle: not running (stopped)"), "{}", stderr(&out));
    assert!(stdout(&out).contains("trapper: sent SIGHUP"), "{}", stdout(&out));
    let out = c.ctl(&["signal", "nosuch", "HUP"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("no such job: nosuch"), "{}", stderr(&out));
    for bad in [&["signal", "trapper", "HUPP"][..], &["signal", "trapper"], &["signal"]] {
        let out = c.ctl(bad);
        assert_eq!(code(&out), 2, "{bad:?}: {}", stderr(&out));
    }
    // Raw protocol: an unknown signal name is a bad request, not a crash.
    let mut s = std::os::unix::net::UnixStream::connect(&c.socket).unwrap();
    std::io::Write::write_all(&mut s, b"{\"v\":1,\"cmd\":\"signal\",\"jobs\":[\"trapper\"],\"signal\":\"SIGNOPE\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert!(line.contains("bad_request") && line.contains("unknown signal"), "{line}");
    assert_eq!(c.job("trapper")["pid"].as_i64(), Some(pid), "still the same process");
}

// ----- logs of every job -----

#[test]
fn logs_without_a_job_merges_every_job_with_time_and_stream() {
    let c = Corral::start(
        r#"
[jobs.alpha]
command = ["sh", "-c", "echo alpha one; while [ ! -e {dir}/beta-said ]; do sleep 0.05; done; echo alpha err >&2; sleep 0.05; echo alpha two; exec sleep 100000"]

[jobs.beta]
command = ["sh", "-c", "echo beta one; touch {dir}/beta-said; exec sleep 100000"]
"#,
    );
    c.wait_output("[alpha] alpha two", 10 * SEC);
    c.wait_output("[beta] beta one", 10 * SEC);
    let out = c.ctl(&["logs"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    // Every line once, with time, job and stream; merged in time order.
    let mut rest: Vec<&str> = lines.iter().map(|l| l.split_once(' ').map(|(_, r)| r).unwrap_or(l)).collect();
    let times: Vec<std::time::SystemTime> = lines
        .iter()
        .map(|l| humantime::parse_rfc3339(l.split(' ').next().unwrap()).unwrap_or_else(|_| panic!("no RFC 3339 time in front: {l}")))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "not in time order: {text}");
    assert_eq!(rest[2..], ["alpha stderr: alpha err", "alpha stdout: alpha two"], "{text}");
    rest.sort();
    assert_eq!(rest, ["alpha stderr: alpha err", "alpha stdout: alpha one", "alpha stdout: alpha two", "beta stdout: beta one"], "{text}");
    // -n counts lines across jobs; --json goes before the verb too.
    let out = c.ctl(&["--json", "logs", "-n", "2"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<(&str, &str)> = v["lines"].as_array().unwrap().iter().map(|l| (l["job"].as_str().unwrap(), l["line"].as_str().unwrap())).collect();
    assert_eq!(got, [("alpha", "alpha err"), ("alpha", "alpha two")]);
    // --since: a duration back from now, or a time.
    assert_eq!(stdout(&c.ctl(&["logs", "--since", "1h"])).lines().count(), 4);
    assert_eq!(stdout(&c.ctl(&["logs", "--since", "2999-01-01T00:00:00Z"])), "");
    assert_eq!(stdout(&c.ctl(&["logs", "alpha", "--since", "1h"])), "alpha one\nalpha err\nalpha two\n", "one job: its lines as written");
    let out = c.ctl(&["logs", "--since", "last tuesday"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}

#[test]
fn logs_follow_without_a_job_streams_every_job() {
    let c = Corral::start(
        r#"
[jobs.ping]
command = ["sh", "-c", "while :; do echo ping; sleep 0.1; done"]

[jobs.pong]
command = ["sh", "-c", "while :; do echo pong >&2; sleep 0.1; done"]
"#,
    );
    let mut child = Command::new(bin()).arg("-s").arg(&c.socket).args(["logs", "-f", "-n", "0"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let reader = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut ping, mut pong) = (false, false);
    let deadline = std::time::Instant::now() + 10 * SEC;
    while !(ping && pong) && std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            ping |= l.ends_with(" ping stdout: ping");
            pong |= l.ends_with(" pong stderr: pong");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ping && pong, "follow of every job saw ping={ping} pong={pong}");
}

// ----- colour -----

/// Run `cmd` under a pseudo-terminal (util-linux `script`), returning what it printed.
fn on_a_terminal(cmd: &str, env: &[(&str, &str)]) -> String {
    let mut c = Command::new("script");
    c.args(["-qefc", cmd, "/dev/null"]).env_remove("NO_COLOR");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("script (util-linux) runs a command on a pseudo-terminal");
    stdout(&out)
}

#[test]
fn states_are_coloured_on_a_terminal_unless_no_color() {
    let c = Corral::start(SLEEPER_AND_FATAL);
    c.wait_state("sleeper", "running", 10 * SEC);
    c.wait_state("broken", "fatal", 20 * SEC);
    let cmd = format!("{} -s {} status", bin(), c.socket.display());
    let tty = on_a_terminal(&cmd, &[]);
    assert!(tty.contains("\x1b[32mRUNNING\x1b[0m"), "{tty:?}");
    assert!(tty.contains("\x1b[1;31mFATAL\x1b[0m"), "{tty:?}");
    let no_color = on_a_terminal(&cmd, &[("NO_COLOR", "1")]);
    assert!(no_color.contains("RUNNING") && !no_color.contains('\x1b'), "{no_color:?}");
    let piped = stdout(&c.ctl(&["status"]));
    assert!(piped.contains("RUNNING") && !piped.contains('\x1b'), "not a terminal: {piped:?}");
}

const SLEEPER_AND_FATAL: &str = r#"
[jobs.sleeper]
command = ["sleep", "100000"]
healthy_after = "0s"
on_duplicate = "ignore"   # other tests on this machine sleep too

[jobs.broken]
command = ["sh", "-c", "exit 3"]
start_retries = 1
backoff = { initial = "10ms", max = "10ms" }
"#;

#[test]
fn corrals_own_log_honours_no_color() {
    // A supervisor whose only job shuts it down: its whole log, on a terminal.
    let (dir, config, socket) = setup("");
    let body = format!("[jobs.bye]\ncommand = [\"{}\", \"-s\", \"{}\", \"shutdown\"]\nrestart = \"never\"\n", bin(), socket.display());
    let text = std::fs::read_to_string(&config).unwrap() + &body;
    std::fs::write(&config, text).unwrap();
    let cmd = format!("{} run -c {}", bin(), config.display());
    let coloured = on_a_terminal(&cmd, &[]);
    assert!(coloured.contains("supervising") && coloured.contains('\x1b'), "tracing colours a terminal: {coloured:?}");
    let plain = on_a_terminal(&cmd, &[("NO_COLOR", "1")]);
    assert!(plain.contains("supervising") && plain.contains("all jobs stopped"), "{plain:?}");
    assert!(!plain.contains('\x1b'), "NO_COLOR=1 but the log has escapes: {plain:?}");
    drop(dir);
}

// ----- secrets from files -----

#[test]
fn the_database_url_comes_from_a_file_and_is_never_echoed() {
    let pg = TestPg::start(30);
    let (dir, config, socket) = setup("[database]\nurl = \"${DATABASE_URL}\"\nmax_connections = 30\n\n[jobs.app]\ncommand = [\"sh\", \"-c\", \"echo url=$DATABASE_URL | sed 's/:[^:@]*@/:***@/'; exec sleep 100000\"]\nconnections = 1\n");
    let secret = dir.path().join("database_url");
    // As `docker secret` and `echo URL > file` write it: with a trailing newline.
    std::fs::write(&secret, format!("{}\n", pg.url())).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut c = Corral::spawn_in(dir, config.clone(), socket, &[("DATABASE_URL_FILE", secret.to_str().unwrap())]);
    c.wait_ready();
    let out = c.ctl(&["health"]);
    assert_eq!(code(&out), 0, "{}{}\n--- output ---\n{}", stdout(&out), stderr(&out), c.output());
    // The job gets the URL as DATABASE_URL (with its application_name).
    let masked = pg.url().replace(&format!(":{}@", pg.password()), ":***@");
    c.wait_output(&format!("url={masked}"), 10 * SEC);
    c.wait_output("application_name=corral", 10 * SEC);
    let check = Command::new(bin()).args(["check", "-c"]).arg(&config).env_remove("DATABASE_URL").env("DATABASE_URL_FILE", &secret).output().unwrap();
    assert_eq!(code(&check), 0, "{}", stderr(&check));
    let budget = c.ctl(&["budget", "--json"]);
    for text in [c.output(), stdout(&check), stderr(&check), stdout(&budget), stdout(&c.ctl(&["status", "--json"]))] {
        assert!(!text.contains(pg.password()), "the password was echoed: {text}");
    }
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_exit(15 * SEC), Some(0));

    // A secret that cannot be read is a config error naming the variable and the path.
    let missing = check_with_secret(&config, "/run/secrets/nope");
    assert_eq!(code(&missing), 2);
    let err = stderr(&missing);
    assert!(err.contains("cannot read DATABASE_URL from DATABASE_URL_FILE=/run/secrets/nope"), "{err}");
    // The variable itself wins over the file.
    let both = Command::new(bin()).args(["check", "-c"]).arg(&config).env("DATABASE_URL", "postgres://u:p@127.0.0.1:1/x").env("DATABASE_URL_FILE", "/run/secrets/nope").output().unwrap();
    assert_eq!(code(&both), 0, "{}", stderr(&both));
}

fn check_with_secret(config: &Path, secret: &str) -> std::process::Output {
    Command::new(bin()).args(["check", "-c"]).arg(config).env_remove("DATABASE_URL").env("DATABASE_URL_FILE", secret).output().unwrap()
}
