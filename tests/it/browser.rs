//! A real headless Chromium driven over the DevTools protocol through a pipe
//! (`--remote-debugging-pipe`: commands in on fd 3, replies and events out on fd 4, each
//! message a JSON object ended by a NUL byte). No WebDriver, no port, no extra package.
//! Chromium and everything it spawns run in their own process group, killed on drop.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Browser {
    child: Child,
    to: File,
    from: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    width: u32,
    height: u32,
    _profile: tempfile::TempDir,
    pub stderr: PathBuf,
}

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe2");
    (fds[0], fds[1])
}

impl Browser {
    /// Start Chromium with a fresh profile and one page of `width` x `height` CSS pixels.
    pub fn start(width: u32, height: u32) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} not found: the dashboard tests need Debian's chromium (apt-get install chromium, or run ./test)"
        );
        let profile = tempfile::Builder::new().prefix("corral-chromium-").tempdir().expect("profile dir");
        let stderr = profile.path().join("chromium.stderr");
        // Ours: write commands to `cmd_w`, read replies from `out_r`.
        let (cmd_r, cmd_w) = pipe();
        let (out_r, out_w) = pipe();
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--no-first-run",
            "--no-default-browser-check",
            "--mute-audio",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size={width},{height}"))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr).expect("stderr file"))
        .process_group(0);
        unsafe {
            cmd.pre_exec(move || {
                // Out of the way first, so that neither end already sits on fd 3 or 4.
                let a = libc::fcntl(cmd_r, libc::F_DUPFD, 10);
                let b = libc::fcntl(out_w, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(a);
                libc::close(b);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn chromium");
        unsafe {
            libc::close(cmd_r);
            libc::close(out_w);
        }
        let to = unsafe { File::from_raw_fd(cmd_w) };
        let reader = unsafe { File::from_raw_fd(out_r) };
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            loop {
                let mut buf = Vec::new();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        buf.pop_if(|b| *b == 0);
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut b = Browser { child, to, from, next_id: 0, session: String::new(), width, height, _profile: profile, stderr };
        let target = b.browser_call("Target.createTarget", json!({"url": "about:blank"}))["targetId"].as_str().expect("targetId").to_string();
        let session = b.browser_call("Target.attachToTarget", json!({"targetId": target, "flatten": true}))["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        b.session = session;
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        b.viewport(height);
        b
    }

    /// Make the page `width` CSS pixels wide (screenshots of content of a known width).
    pub fn set_width(&mut self, width: u32) {
        self.width = width;
        let h = self.height;
        self.viewport(h);
    }

    fn viewport(&mut self, height: u32) {
        let w = self.width;
        self.call("Emulation.setDeviceMetricsOverride", json!({"width": w, "height": height, "deviceScaleFactor": 1, "mobile": false}));
    }

    fn send(&mut self, method: &str, params: Value, session: Option<String>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap_or_else(|e| panic!("chromium pipe closed ({e}); stderr:\n{}", self.stderr_text()));
        // Chromium's first answer can take long on a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer from chromium to {method} ({e}); stderr:\n{}", self.stderr_text()));
            if m["id"] == json!(id) {
                if let Some(err) = m.get("error") {
                    panic!("chromium: {method} failed: {err}");
                }
                return m["result"].clone();
            }
        }
    }

    fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None)
    }

    /// A command to the page.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let s = self.session.clone();
        self.send(method, params, Some(s))
    }

    pub fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url}));
        assert!(r.get("errorText").is_none(), "navigate to {url}: {r}");
    }

    /// Evaluate `expr` in the page; its value (JSON), or Null when it threw.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true, "awaitPromise": true}));
        if r.get("exceptionDetails").is_some() {
            return Value::Null;
        }
        r["result"]["value"].clone()
    }

    /// Poll `expr` until it is `true`, or panic with `what` and the page's text.
    pub fn wait_for(&mut self, expr: &str, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(expr) == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body ? document.body.innerText : ''");
                panic!("timed out waiting for the page: {what}\n--- page text ---\n{}", text.as_str().unwrap_or(""));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the whole page, as tall as its content, written to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        // Measured in a short viewport: the page's own height, not the window's.
        self.viewport(100);
        let h = self.eval("document.documentElement.scrollHeight").as_u64().unwrap_or(self.height as u64).max(100) as u32;
        self.viewport(h);
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let height = self.height;
        self.viewport(height);
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().expect("screenshot data")).expect("base64 png");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn stderr_text(&self) -> String {
        let t = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        t.lines().filter(|l| !l.contains("dbus")).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Where a test writes what it shows (screenshots): `target/tmp/<name>`, printed so that the
/// test output names it. With `CORRAL_UPDATE_DOCS=1` the file is also copied to `docs/`.
pub fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

pub fn publish(path: &Path) {
    println!("screenshot: {}", path.display());
    if std::env::var_os("CORRAL_UPDATE_DOCS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        let to = docs.join(path.file_name().unwrap());
        std::fs::copy(path, &to).unwrap();
        println!("copied to {}", to.display());
    }
}
