//! A real PostgreSQL for integration tests: a throwaway cluster per `TestPg`, or the server
//! named by `CORRAL_TEST_DATABASE_URL`. Never a mock (STYLE.md habit 10).
//!
//! Owns: finding the server binaries, `initdb`, `pg_ctl start/stop`, the roles and database the
//! tests use, picking a free port, and removing everything on drop. It must not skip: when the
//! binaries are missing it panics with the install command, so CI fails loudly instead of
//! passing a test that never ran.
//!
//! Each throwaway cluster has its own temp dir (data dir, unix socket dir, server log) and its
//! own TCP port on 127.0.0.1, so any number of tests may start clusters concurrently. Two roles:
//! - `postgres`, the superuser, reachable only over the unix socket with `trust` ([`TestPg::admin_url`]);
//! - `app`, a normal LOGIN role with a random PASSWORD and `pg_monitor` membership (like the
//!   application role of a managed provider, which can read every session in pg_stat_activity),
//!   reachable over TCP with scram-sha-256 only ([`TestPg::url`]). Its password is random and
//!   distinctive so tests can assert it never leaks into output ([`TestPg::password`]).
//!
//! Only std, tempfile and tokio-postgres (URL parsing) are used; server control goes through the
//! PostgreSQL command-line tools via `std::process::Command`, so this works from sync and async
//! tests alike.
#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The command that makes this harness work on a Debian/Ubuntu machine (and CI).
pub const INSTALL_HINT: &str = "apt-get install -y postgresql";

/// Environment variable naming an existing server to use instead of a throwaway cluster.
pub const ENV_URL: &str = "CORRAL_TEST_DATABASE_URL";
/// Optional superuser URL for that server; defaults to `CORRAL_TEST_DATABASE_URL`.
pub const ENV_ADMIN_URL: &str = "CORRAL_TEST_ADMIN_DATABASE_URL";
/// Optional override of the directory holding initdb, pg_ctl, postgres and psql.
pub const ENV_BINDIR: &str = "CORRAL_TEST_PG_BINDIR";

const ROLE: &str = "app";
const DATABASE: &str = "app";
const SUPERUSER: &str = "postgres";

/// A PostgreSQL server for one test. Dropping it stops a throwaway cluster and deletes it.
pub struct TestPg {
    inner: Inner,
}

enum Inner {
    External {
        url: String,
        admin_url: String,
        password: String,
    },
    Local(Cluster),
}

/// The certificates of a TLS cluster ([`TestPg::start_tls`]), made fresh by the test with
/// rcgen: a CA, and a server certificate it signed for `localhost` only (so `127.0.0.1` is a
/// host name mismatch), plus a second CA that signed nothing the server presents.
pub struct TlsFiles {
    /// The CA that signed the server's certificate, PEM and DER.
    pub ca_pem: PathBuf,
    pub ca_der: PathBuf,
    /// A CA unrelated to the server ("certificate not trusted").
    pub wrong_ca_pem: PathBuf,
    /// The names in the server's certificate.
    pub server_names: Vec<String>,
}

struct Cluster {
    /// Its Drop deletes the data dir, socket and log; `TestPg::drop` stops the server first.
    dir: tempfile::TempDir,
    /// `ssl = on` and only `hostssl` lines in pg_hba.conf.
    tls: Option<TlsFiles>,
    bindir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    max_connections: u32,
    superuser_reserved: u32,
    password: String,
    /// Running as root: initdb and postgres refuse root, so they run as the `postgres` user.
    as_postgres: bool,
    running: AtomicBool,
}

impl TestPg {
    /// Starts a throwaway cluster with `max_connections` (superuser_reserved_connections is
    /// `min(3, max_connections / 4)`), or, when `CORRAL_TEST_DATABASE_URL` is set, uses that
    /// server as it is (`max_connections` is then whatever the server has).
    ///
    /// Panics (never skips) when the server binaries are missing or the cluster cannot start.
    pub fn start(max_connections: u32) -> TestPg {
        if let Ok(url) = std::env::var(ENV_URL) {
            if !url.trim().is_empty() {
                let admin_url = std::env::var(ENV_ADMIN_URL)
                    .ok()
                    .filter(|s| !s.trim().is_empty())
                    .unwrap_or_else(|| url.clone());
                let password = password_of(&url);
                return TestPg {
                    inner: Inner::External {
                        url,
                        admin_url,
                        password,
                    },
                };
            }
        }
        Self::start_local(max_connections)
    }

    /// Always a throwaway cluster, even when `CORRAL_TEST_DATABASE_URL` is set:
    /// for fault tests that stop and restart the server.
    pub fn start_local(max_connections: u32) -> TestPg {
        TestPg {
            inner: Inner::Local(Cluster::create(max_connections, false)),
        }
    }

    /// A throwaway cluster the way Supabase runs one: `ssl = on`, and pg_hba.conf accepts TCP
    /// connections only over TLS (`hostssl`), so a plaintext login is refused. The CA and the
    /// server certificate (for `localhost`) are generated for this cluster: [`TestPg::tls`].
    pub fn start_tls(max_connections: u32) -> TestPg {
        TestPg {
            inner: Inner::Local(Cluster::create(max_connections, true)),
        }
    }

    /// The certificates of a [`TestPg::start_tls`] cluster.
    pub fn tls(&self) -> &TlsFiles {
        self.local("tls").tls.as_ref().expect("a cluster started with TestPg::start_tls")
    }

    /// [`TestPg::url`] with `localhost` as the host (the name in the server's certificate).
    pub fn url_localhost(&self) -> String {
        self.url().replace("@127.0.0.1:", "@localhost:")
    }

    /// URL of the normal role over TCP, with its password. What corral and its jobs get.
    pub fn url(&self) -> String {
        match &self.inner {
            Inner::External { url, .. } => url.clone(),
            Inner::Local(c) => format!(
                "postgres://{ROLE}:{}@127.0.0.1:{}/{DATABASE}",
                c.password, c.port
            ),
        }
    }

    /// Superuser URL: over the unix socket with trust auth on a throwaway cluster.
    pub fn admin_url(&self) -> String {
        match &self.inner {
            Inner::External { admin_url, .. } => admin_url.clone(),
            Inner::Local(c) => format!(
                "postgres://{SUPERUSER}@{}:{}/postgres",
                percent_encode(&c.dir.path().to_string_lossy()),
                c.port
            ),
        }
    }

    /// The password inside [`TestPg::url`] (empty when an external URL has none): tests grep
    /// output for it to prove it never leaks.
    pub fn password(&self) -> &str {
        match &self.inner {
            Inner::External { password, .. } => password,
            Inner::Local(c) => &c.password,
        }
    }

    /// True when the server comes from `CORRAL_TEST_DATABASE_URL` (shared, not ours to stop).
    pub fn is_external(&self) -> bool {
        matches!(self.inner, Inner::External { .. })
    }

    /// TCP port of a throwaway cluster (the URL's port for an external server, 5432 if absent).
    pub fn port(&self) -> u16 {
        match &self.inner {
            Inner::Local(c) => c.port,
            Inner::External { url, .. } => url
                .parse::<tokio_postgres::Config>()
                .ok()
                .and_then(|c| c.get_ports().first().copied())
                .unwrap_or(5432),
        }
    }

    /// The server's max_connections: as configured, or read from an external server.
    pub fn max_connections(&self) -> u32 {
        match &self.inner {
            Inner::Local(c) => c.max_connections,
            Inner::External { .. } => self.setting_u32("max_connections"),
        }
    }

    /// The server's superuser_reserved_connections.
    pub fn superuser_reserved_connections(&self) -> u32 {
        match &self.inner {
            Inner::Local(c) => c.superuser_reserved,
            Inner::External { .. } => self.setting_u32("superuser_reserved_connections"),
        }
    }

    /// Data directory of a throwaway cluster.
    pub fn data_dir(&self) -> &Path {
        &self.local("data_dir").data
    }

    /// Directory holding the unix socket of a throwaway cluster.
    pub fn socket_dir(&self) -> &Path {
        self.local("socket_dir").dir.path()
    }

    /// The server log of a throwaway cluster (empty for an external server). Print it when a
    /// test fails.
    pub fn log(&self) -> String {
        match &self.inner {
            Inner::Local(c) => fs::read_to_string(&c.log).unwrap_or_default(),
            Inner::External { .. } => String::new(),
        }
    }

    /// Runs SQL as the superuser through psql and returns its unaligned, tuples-only output
    /// (trimmed, `|` between columns). Several `;`-separated statements run as one implicit
    /// transaction, so send CREATE DATABASE alone. Panics with psql's error on failure.
    pub fn admin_sql(&self, sql: &str) -> String {
        self.psql(&self.admin_url(), sql)
    }

    /// Runs SQL through psql against any URL (e.g. [`TestPg::url`]); see [`TestPg::admin_sql`].
    pub fn psql(&self, url: &str, sql: &str) -> String {
        let psql = match &self.inner {
            Inner::Local(c) => c.bindir.join("psql"),
            Inner::External { .. } => find_bindir()
                .map(|b| b.join("psql"))
                .filter(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from("psql")),
        };
        let mut cmd = Command::new(&psql);
        clean_env(&mut cmd);
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ]);
        let out = run(&mut cmd, "psql");
        if !out.status.success() {
            panic!(
                "psql failed ({}): {sql}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Kills the server the way a crash would (`pg_ctl stop -m immediate`): every client
    /// connection breaks at once. For fault tests; panics on an external server.
    pub fn stop_immediate(&self) {
        let c = self.local("stop_immediate");
        c.stop("immediate");
    }

    /// Starts the server again on the same port and data dir after [`TestPg::stop_immediate`]
    /// (crash recovery runs; with no data to recover it takes well under a second).
    pub fn start_again(&self) {
        let c = self.local("start_again");
        // The port was free a moment ago; something else may have bound it since. Retry on the
        // same port for a while: clients hold the URL, so a new port would not do.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match c.pg_start() {
                Ok(()) => return,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(250))
                }
                Err(e) => panic!("cannot restart test cluster on port {}: {e}", c.port),
            }
        }
    }

    fn local(&self, what: &str) -> &Cluster {
        match &self.inner {
            Inner::Local(c) => c,
            Inner::External { .. } => panic!(
                "TestPg::{what} needs a throwaway cluster, but {ENV_URL} is set: unset it to run \
                 this test"
            ),
        }
    }

    fn setting_u32(&self, name: &str) -> u32 {
        let v = self.admin_sql(&format!(
            "SELECT setting FROM pg_settings WHERE name = '{name}'"
        ));
        v.parse().unwrap_or(0)
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        if let Inner::Local(c) = &self.inner {
            if c.running.load(Ordering::SeqCst) {
                // Immediate: nothing to keep, and it never waits for clients to go away.
                c.stop("immediate");
            }
        }
        // The TempDir inside the cluster is dropped after this and removes the directory.
    }
}

impl Cluster {
    fn create(max_connections: u32, tls: bool) -> Cluster {
        assert!(max_connections >= 1, "max_connections must be at least 1");
        let bindir = find_bindir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in \
                 `pg_config --bindir`, /usr/lib/postgresql/<version>/bin or PATH (or \
                 ${ENV_BINDIR}). Install them: {INSTALL_HINT}"
            )
        });
        let as_postgres = is_root();
        // As root the server runs as `postgres`, which must be able to enter every parent of
        // the dir: /tmp is world-traversable, $TMPDIR may not be. Unix socket paths are limited
        // to ~107 bytes, so a long $TMPDIR falls back to /tmp too.
        let base = if as_postgres {
            PathBuf::from("/tmp")
        } else {
            let t = std::env::temp_dir();
            if t.as_os_str().len() > 60 {
                PathBuf::from("/tmp")
            } else {
                t
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("corral-pg-")
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("cannot create a temp dir in {}: {e}", base.display()));
        if as_postgres {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", dir.path().display()));
        }
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        let superuser_reserved = (max_connections / 4).min(3);
        let mut cluster = Cluster {
            data,
            log,
            bindir,
            port: 0,
            max_connections,
            superuser_reserved,
            password: format!("corral_pw_{:016x}", random_u64()),
            as_postgres,
            running: AtomicBool::new(false),
            tls: None,
            dir,
        };
        cluster.initdb();
        if tls {
            cluster.tls = Some(cluster.make_tls());
        }
        cluster.start_on_free_port();
        cluster.create_role_and_database();
        cluster
    }

    /// A command for a server tool, as `postgres` when we are root (initdb and pg_ctl refuse
    /// to run as root).
    fn tool(&self, name: &str) -> Command {
        let path = self.bindir.join(name);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        clean_env(&mut cmd);
        // The caller's cwd (e.g. /root) may be unreadable for `postgres`; tools warn or fail.
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn initdb(&self) {
        let mut cmd = self.tool("initdb");
        cmd.arg("-D").arg(&self.data).args([
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            // The admin uses the unix socket without a password; every TCP login (the app
            // role) must present one, so redaction tests exercise a real password.
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ]);
        let out = run(&mut cmd, "initdb");
        if !out.status.success() {
            panic!(
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// CA, server certificate and key into the data dir (owned by the server's user, key 0600
    /// as PostgreSQL demands), the CAs for clients into `client/`, and a pg_hba.conf with
    /// `hostssl` lines only.
    fn make_tls(&self) -> TlsFiles {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let ca = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, cn);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate().expect("CA key");
            let cert = p.self_signed(&key).expect("CA cert");
            (cert, key)
        };
        let (ca_cert, ca_key) = ca("corral test CA");
        let (wrong_cert, _) = ca("some other CA");
        let names = vec!["localhost".to_string()];
        let mut p = CertificateParams::new(names.clone()).expect("server params");
        p.distinguished_name.push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().expect("server key");
        let cert = p.signed_by(&key, &ca_cert, &ca_key).expect("server cert");
        let write = |path: &Path, bytes: &[u8], mode: u32| {
            fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
            if self.as_postgres {
                let (uid, gid) = postgres_ids();
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
            }
        };
        write(&self.data.join("server.crt"), cert.pem().as_bytes(), 0o644);
        write(&self.data.join("server.key"), key.serialize_pem().as_bytes(), 0o600);
        write(
            &self.data.join("pg_hba.conf"),
            b"local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\nhostssl all all ::1/128 scram-sha-256\n",
            0o600,
        );
        let client = self.dir.path().join("client");
        fs::create_dir_all(&client).expect("client dir");
        let files = TlsFiles {
            ca_pem: client.join("ca.pem"),
            ca_der: client.join("ca.der"),
            wrong_ca_pem: client.join("wrong-ca.pem"),
            server_names: names,
        };
        fs::write(&files.ca_pem, ca_cert.pem()).expect("ca.pem");
        fs::write(&files.ca_der, ca_cert.der()).expect("ca.der");
        fs::write(&files.wrong_ca_pem, wrong_cert.pem()).expect("wrong-ca.pem");
        files
    }

    fn start_on_free_port(&mut self) {
        let mut last_err = String::new();
        for _ in 0..20 {
            self.port = free_port();
            match self.pg_start() {
                Ok(()) => return,
                // Another test (or process) took the port between our probe and the server's
                // bind: pick another.
                Err(e) => last_err = e,
            }
        }
        panic!("cannot start a test cluster after 20 ports; last error: {last_err}");
    }

    fn pg_start(&self) -> Result<(), String> {
        let opts = format!(
            "-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections={max} \
             -c superuser_reserved_connections={sr} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c shared_buffers=16MB -c max_wal_senders=0 \
             -c wal_level=minimal -c log_min_messages=warning{ssl}",
            port = self.port,
            sock = self.dir.path().display(),
            max = self.max_connections,
            sr = self.superuser_reserved,
            ssl = if self.tls.is_some() {
                format!(
                    " -c ssl=on -c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key",
                    d = self.data.display()
                )
            } else {
                String::new()
            },
        );
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "-o", &opts, "start"]);
        let out = run(&mut cmd, "pg_ctl start");
        if out.status.success() {
            self.running.store(true, Ordering::SeqCst);
            Ok(())
        } else {
            // pg_ctl may leave a postmaster behind only when it timed out; stop it to be sure.
            let _ = self.stop_quiet("immediate");
            Err(format!(
                "pg_ctl start on port {} failed ({}): {}\n--- server log tail ---\n{}",
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                tail(&fs::read_to_string(&self.log).unwrap_or_default(), 20)
            ))
        }
    }

    fn stop(&self, mode: &str) {
        if let Err(e) = self.stop_quiet(mode) {
            panic!("pg_ctl stop -m {mode} failed: {e}");
        }
    }

    fn stop_quiet(&self, mode: &str) -> Result<(), String> {
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "-m", mode, "stop"]);
        let out = run(&mut cmd, "pg_ctl stop");
        self.running.store(false, Ordering::SeqCst);
        // "not running" is fine: the goal is a stopped server.
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || stderr.contains("PID file") || stderr.contains("not running") {
            Ok(())
        } else {
            Err(format!("{}: {}", out.status, stderr.trim()))
        }
    }

    fn create_role_and_database(&self) {
        let admin = format!(
            "postgres://{SUPERUSER}@{}:{}/postgres",
            percent_encode(&self.dir.path().to_string_lossy()),
            self.port
        );
        let mut cmd = Command::new(self.bindir.join("psql"));
        clean_env(&mut cmd);
        // One -c per statement: CREATE DATABASE cannot run inside the implicit transaction of a
        // multi-statement string.
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &admin])
            .args([
                "-c",
                &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{}'", self.password),
                "-c",
                &format!("GRANT pg_monitor TO {ROLE}"),
                "-c",
                &format!("CREATE DATABASE {DATABASE} OWNER {ROLE}"),
            ]);
        let out = run(&mut cmd, "psql");
        if !out.status.success() {
            panic!(
                "creating role/database failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn run(cmd: &mut Command, what: &str) -> Output {
    // stdin closed so a tool can never wait for a password prompt.
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({cmd:?}): {e}. Install: {INSTALL_HINT}"))
}

/// PG* variables of the caller would redirect the tools (PGDATA, PGHOST, PGOPTIONS...).
fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
}

/// The directory holding initdb, pg_ctl, postgres: `$CORRAL_TEST_PG_BINDIR`, then
/// `pg_config --bindir`, then the highest `/usr/lib/postgresql/<version>/bin`, then initdb on
/// PATH resolved through symlinks (e.g. /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin).
/// Debian's /usr/bin wrappers (pg_wrapper) are not server bin dirs, hence the checks.
pub fn find_bindir() -> Option<PathBuf> {
    fn is_server_bindir(p: &Path) -> bool {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| p.join(b).is_file())
    }
    if let Ok(d) = std::env::var(ENV_BINDIR) {
        let p = PathBuf::from(d);
        if is_server_bindir(&p) {
            return Some(p);
        }
    }
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
    {
        if out.status.success() {
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if is_server_bindir(&p) {
                return Some(p);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            is_server_bindir(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        if let Ok(real) = fs::canonicalize(dir.join("initdb")) {
            if let Some(parent) = real.parent() {
                if is_server_bindir(parent) {
                    return Some(parent.to_path_buf());
                }
            }
        }
    }
    None
}

/// A port nobody listens on. Taken below the kernel's ephemeral range when possible, so that
/// outgoing client connections (which use ephemeral ports) can never occupy it while the server
/// is down between `stop_immediate` and `start_again`; bind(0) otherwise.
pub fn free_port() -> u16 {
    let lo = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    if lo >= 12_000 {
        let start = lo - 10_000;
        for _ in 0..200 {
            let port = (start + (random_u64() % 10_000) as u32) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

pub fn is_root() -> bool {
    // Effective uid from /proc (std has no geteuid); the second field of "Uid:".
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

pub fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "postgres"]).output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .expect("numeric id"),
            _ => panic!(
                "running as root, the test cluster must run as the `postgres` user, which does \
                 not exist. Install the server (it creates the user): {INSTALL_HINT}"
            ),
        }
    };
    (id("-u"), id("-g"))
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// Percent-encodes everything but unreserved characters: a socket directory as URL host.
fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn password_of(url: &str) -> String {
    url.parse::<tokio_postgres::Config>()
        .ok()
        .and_then(|c| {
            c.get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned())
        })
        .unwrap_or_default()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
