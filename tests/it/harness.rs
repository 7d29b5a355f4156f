//! Test harness: runs the real `corral` binary in its own temp dir with its own
//! socket and config, waits on conditions with deadlines, and prints the
//! daemon's output when a test fails.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_corral")
}

/// A running `corral run` with its own directory.
pub struct Corral {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub output: Arc<Mutex<String>>,
    /// The threads copying corral's stdout and stderr into `output`.
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// A fresh temp dir with a config file written from `body`. The body may use
/// `{dir}` for the temp dir; a `[supervisor]` header with socket and lock_dir is
/// prepended unless the body has its own `[supervisor]` table.
pub fn setup(body: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::Builder::new().prefix("corral-it-").tempdir().expect("tempdir");
    let socket = dir.path().join("corral.sock");
    let body = body.replace("{dir}", dir.path().to_str().unwrap());
    let text = if body.contains("[supervisor]") {
        body
    } else {
        format!(
            "[supervisor]\nsocket = \"{}\"\nlock_dir = \"{}\"\n\n{body}",
            socket.display(),
            dir.path().join("locks").display()
        )
    };
    let config = dir.path().join("supervisor.toml");
    std::fs::write(&config, text).unwrap();
    (dir, config, socket)
}

impl Corral {
    /// Start corral on `body` and wait until its socket answers.
    pub fn start(body: &str) -> Corral {
        let (dir, config, socket) = setup(body);
        let c = Corral::spawn_in(dir, config, socket, &[]);
        c.wait_ready();
        c
    }

    pub fn spawn_in(dir: tempfile::TempDir, config: PathBuf, socket: PathBuf, env: &[(&str, &str)]) -> Corral {
        let mut cmd = Command::new(bin());
        cmd.args(["run", "-c"]).arg(&config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Corral::from_command(cmd, dir, config, socket)
    }

    /// Run `cmd` (corral itself, or a wrapper such as `unshare` around it) in `dir`, capturing
    /// its output.
    pub fn from_command(mut cmd: Command, dir: tempfile::TempDir, config: PathBuf, socket: PathBuf) -> Corral {
        cmd.current_dir(dir.path()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn corral");
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for stream in [child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>), child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>)]
            .into_iter()
            .flatten()
        {
            let out = output.clone();
            readers.push(std::thread::spawn(move || capture(stream, out)));
        }
        Corral { child: Some(child), dir, config, socket, output, readers }
    }

    /// Start corral on `body` with its stdout and stderr on pipes nobody reads (a stuck log
    /// driver, a terminal paused with Ctrl-S). The read ends are returned: keep them open, or
    /// corral's writes fail (EPIPE) instead of blocking. Its output is not captured.
    pub fn start_unread(body: &str) -> (Corral, Vec<std::os::fd::OwnedFd>) {
        let (dir, config, socket) = setup(body);
        let (out_r, out_w) = nix::unistd::pipe().expect("pipe");
        let (err_r, err_w) = nix::unistd::pipe().expect("pipe");
        let mut cmd = Command::new(bin());
        cmd.args(["run", "-c"]).arg(&config).current_dir(dir.path()).stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
        let child = cmd.spawn().expect("spawn corral");
        let c = Corral { child: Some(child), dir, config, socket, output: Arc::new(Mutex::new(String::new())), readers: Vec::new() };
        c.wait_ready();
        (c, vec![out_r, err_r])
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn wait_ready(&self) {
        let ok = poll(Duration::from_secs(15), || self.try_status().is_some());
        if !ok {
            panic!("corral did not answer on {}\n--- output ---\n{}", self.socket.display(), self.output());
        }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Run a client command against this corral.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin()).arg("-s").arg(&self.socket).args(args).current_dir(self.dir.path()).output().expect("run corral client")
    }

    pub fn try_status(&self) -> Option<Value> {
        let out = self.ctl(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn status(&self) -> Value {
        self.try_status().unwrap_or_else(|| panic!("status failed\n--- output ---\n{}", self.output()))
    }

    pub fn job(&self, name: &str) -> Value {
        let st = self.status();
        st["jobs"].as_array().unwrap().iter().find(|j| j["name"] == name).cloned().unwrap_or(Value::Null)
    }

    /// Wait until job `name` satisfies `pred`, or fail with the daemon output.
    pub fn wait_job(&self, name: &str, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let j = self.try_status().map(|s| {
                s["jobs"].as_array().unwrap().iter().find(|j| j["name"] == name).cloned().unwrap_or(Value::Null)
            });
            if let Some(j) = &j {
                if pred(j) {
                    return j.clone();
                }
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {name}: {what}; last: {j:?}\n--- output ---\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Value {
        self.wait_job(name, timeout, &format!("state {state}"), |j| j["state"] == state)
    }

    /// Wait until the daemon's output contains `needle`.
    pub fn wait_output(&self, needle: &str, timeout: Duration) {
        if !poll(timeout, || self.output().contains(needle)) {
            panic!("timed out waiting for output {needle:?}\n--- output ---\n{}", self.output());
        }
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Wait for corral to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                // Everything corral wrote before exiting is in `output` once the readers hit EOF.
                let until = Instant::now() + Duration::from_secs(2);
                while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return st.code();
            }
            if Instant::now() > deadline {
                panic!("corral did not exit in {timeout:?}\n--- output ---\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn write_config(&self, body: &str) {
        let body = body.replace("{dir}", self.dir.path().to_str().unwrap());
        let text = if body.contains("[supervisor]") {
            body
        } else {
            format!(
                "[supervisor]\nsocket = \"{}\"\nlock_dir = \"{}\"\n\n{body}",
                self.socket.display(),
                self.dir.path().join("locks").display()
            )
        };
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- corral output ({}) ---\n{}", self.dir.path().display(), self.output());
        }
    }
}

fn capture(mut r: Box<dyn Read + Send>, out: Arc<Mutex<String>>) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// Poll `cond` every 10 ms until true or the deadline passes.
pub fn poll(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still answers kill(0); look at /proc state too.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn wait_file_pid(path: &Path, timeout: Duration) -> i32 {
    let mut pid = None;
    poll(timeout, || {
        pid = read_pid(path);
        pid.is_some()
    });
    pid.unwrap_or_else(|| panic!("no pid in {}", path.display()))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub const SEC: Duration = Duration::from_secs(1);
