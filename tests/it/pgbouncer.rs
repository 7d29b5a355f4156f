//! A real PgBouncer (Debian's package) in front of a test cluster, started by the test.
//!
//! Owns: its temp dir (ini, userlist, log, pid file), a free port, running it in the
//! foreground (as `postgres` when we are root: PgBouncer refuses to run as root), waiting until
//! it accepts connections, and stopping it on drop. It must not skip: a missing binary panics
//! with the install command.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pg::{free_port, is_root, postgres_ids, TestPg};

pub const INSTALL_HINT: &str = "apt-get install -y pgbouncer";

/// The admin console's user and password.
const ADMIN: &str = "pgb_admin";
const ADMIN_PASSWORD: &str = "pgb_admin_pw";

pub struct TestPgBouncer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    password: String,
}

/// The pool's settings.
pub struct Pool<'a> {
    pub mode: &'a str,
    pub pool_size: u32,
    pub max_client_conn: u32,
}

fn binary() -> PathBuf {
    for p in ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    which("pgbouncer").unwrap_or_else(|| panic!("pgbouncer not found. Install it: {INSTALL_HINT}"))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

impl TestPgBouncer {
    /// PgBouncer for database `app` of `pg` (the `app` role, its password from `pg`).
    pub fn start(pg: &TestPg, pool: Pool<'_>) -> TestPgBouncer {
        let bin = binary();
        let as_postgres = is_root();
        let mut dir = tempfile::Builder::new().prefix("corral-pgb-").tempdir_in("/tmp").expect("tempdir");
        if as_postgres {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let password = pg.password().to_string();
        let d = dir.path().to_path_buf();
        let d = d.as_path();
        std::fs::write(d.join("userlist.txt"), format!("\"app\" \"{password}\"\n\"{ADMIN}\" \"{ADMIN_PASSWORD}\"\n")).unwrap();
        let mut last = String::new();
        for _ in 0..10 {
            let port = free_port();
            let ini = format!(
                "[databases]\napp = host=127.0.0.1 port={pgport} dbname=app\n\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = scram-sha-256\nauth_file = {d}/userlist.txt\nadmin_users = {ADMIN}\n\
                 pool_mode = {mode}\ndefault_pool_size = {size}\nmax_client_conn = {clients}\n\
                 query_wait_timeout = 5\nserver_login_retry = 1\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n",
                pgport = pg.port(),
                d = d.display(),
                mode = pool.mode,
                size = pool.pool_size,
                clients = pool.max_client_conn,
            );
            std::fs::write(d.join("pgbouncer.ini"), ini).unwrap();
            if as_postgres {
                let (uid, gid) = postgres_ids();
                for f in ["userlist.txt", "pgbouncer.ini"] {
                    std::os::unix::fs::chown(d.join(f), Some(uid), Some(gid)).expect("chown");
                }
            }
            let mut cmd = if as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&bin);
                c
            } else {
                Command::new(&bin)
            };
            cmd.arg(d.join("pgbouncer.ini")).current_dir(d).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run pgbouncer: {e}. Install: {INSTALL_HINT}"));
            let mut b = TestPgBouncer { dir, port, child: Some(child), password: password.clone() };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return b;
                }
                if let Some(Ok(Some(_))) = b.child.as_mut().map(|c| c.try_wait()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            last = b.log();
            b.stop();
            dir = std::mem::replace(&mut b.dir, tempfile::tempdir().unwrap());
        }
        panic!("pgbouncer did not start; last log:\n{last}");
    }

    /// The jobs' URL through PgBouncer (role `app`).
    pub fn url(&self) -> String {
        format!("postgres://app:{}@127.0.0.1:{}/app", self.password, self.port)
    }

    /// The admin console (`SHOW CONFIG`, ...).
    pub fn admin_url(&self) -> String {
        format!("postgres://{ADMIN}:{ADMIN_PASSWORD}@127.0.0.1:{}/pgbouncer", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        // The pid file names PgBouncer itself (runuser is its parent).
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("pgbouncer.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                unsafe { libc::kill(pid, libc::SIGINT) };
            }
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestPgBouncer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- pgbouncer log ---\n{}", self.log());
        }
        self.stop();
    }
}
