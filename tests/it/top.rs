//! `corral top` in a real terminal (tmux): the pane shows the jobs and the budget of a real
//! PostgreSQL, keys stop, start and restart the selected job and open its logs, `q` exits
//! 0 and gives the terminal back. The pane, colours included, is rendered to a PNG by
//! headless Chromium (`target/tmp/top.png`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::browser::{artifact, publish, Browser};
use crate::budget::worker;
use crate::harness::{bin, Corral, SEC};
use crate::pg::TestPg;

/// A tmux server of our own (its own socket), killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn start(dir: &Path, width: u16, height: u16, command: &str) -> Tmux {
        let found = Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success());
        assert!(found, "tmux not found: the `corral top` tests need it (apt-get install tmux, or run ./test)");
        let t = Tmux { socket: dir.join("tmux.sock") };
        let out = t
            .cmd(&["new-session", "-d", "-s", "top", "-x", &width.to_string(), "-y", &height.to_string(), command])
            .output()
            .expect("run tmux");
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        t
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        // No user config: the test sees tmux's defaults.
        c.arg("-f").arg("/dev/null").arg("-S").arg(&self.socket).args(args);
        c
    }

    fn capture(&self, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-t", "top"];
        if escapes {
            args.push("-e");
        }
        let out = self.cmd(&args).output().expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let out = self.cmd(&["send-keys", "-t", "top", keys]).output().expect("send-keys");
        assert!(out.status.success(), "send-keys {keys}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.capture(false);
            if pred(&screen) {
                return screen;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for the pane: {what}\n--- pane ---\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_text(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for(needle, timeout, |s| s.contains(needle))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]).output();
    }
}

/// The row of `job` in the jobs table.
fn row<'a>(screen: &'a str, job: &str) -> &'a str {
    screen.lines().find(|l| l.trim_start_matches(['│', ' ', '>']).starts_with(&format!("{job} "))).unwrap_or("")
}

#[test]
fn top_in_tmux_shows_the_jobs_and_drives_them_with_keys() {
    let pg = TestPg::start_local(30);
    let c = Corral::start(&format!(
        r#"
[database]
url = "{url}"
provider_reserve = 2
adhoc_reserve = 3
health_interval = "2s"

[budget]
service = "scraper"
rebalance_interval = "1s"

[jobs.alpha]
command = ["sh", "-c", "while true; do sleep 1; done", "{{dir}}"]

[jobs.beta]
command = ["sh", "-c", "i=0; while true; do i=$((i+1)); echo beta-log-line $i; sleep 0.5; done", "{{dir}}"]

[jobs.worker]
command = ["{w}"]
on_duplicate = "ignore"  # other tests run the same worker
connections = {{ min = 2, max = 6 }}
"#,
        url = pg.url(),
        w = worker(),
    ));
    for job in ["alpha", "beta", "worker"] {
        c.wait_state(job, "running", 20 * SEC);
    }
    c.wait_job("worker", 30 * SEC, "live connections read", |j| j["connections"].as_u64() >= Some(1));
    let command = format!("{} -s {} top; echo TOP-EXIT=$?; sleep 600", bin(), c.socket.display());
    let tmux = Tmux::start(c.dir.path(), 132, 32, &command);

    let screen = tmux.wait_for("the three jobs running and the budget", 30 * SEC, |s| {
        ["alpha", "beta", "worker"].iter().all(|j| row(s, j).contains("running")) && s.contains("budget: limit")
    });
    assert!(screen.contains("> alpha"), "the first job is selected:\n{screen}");
    tmux.wait_for("worker's live connections against its quota", 30 * SEC, |s| row(s, "worker").contains("/6"));

    // x stops the selected job, s starts it again, r restarts it (a new pid).
    tmux.keys("x");
    c.wait_state("alpha", "stopped", 30 * SEC);
    tmux.wait_for("alpha stopped", 10 * SEC, |s| row(s, "alpha").contains("stopped") && s.contains("stop alpha: stopped"));
    tmux.keys("s");
    let pid = c.wait_state("alpha", "running", 30 * SEC)["pid"].as_i64().unwrap();
    tmux.wait_for("alpha running again", 10 * SEC, |s| row(s, "alpha").contains("running") && s.contains("start alpha: "));
    tmux.keys("r");
    c.wait_job("alpha", 30 * SEC, "a new pid after restart", |j| j["state"] == "running" && j["pid"].as_i64().is_some_and(|p| p != pid));
    tmux.wait_text("restart alpha: ", 10 * SEC);
    tmux.wait_text("alpha restart requested", 10 * SEC);

    // The pane, in colour, as a PNG: jobs table, budget bar, events.
    tmux.wait_for("a quiet screen, alpha running", 20 * SEC, |s| !s.contains('…') && row(s, "alpha").contains("running"));
    screenshot(&tmux.capture(true), c.dir.path());

    // Down, then l: beta's logs; Esc: back to the table.
    tmux.keys("j");
    tmux.wait_text("> beta", 10 * SEC);
    tmux.keys("l");
    tmux.wait_for("beta's logs", 10 * SEC, |s| s.contains("logs: beta") && s.contains("beta-log-line"));
    tmux.keys("Escape");
    tmux.wait_text("jobs: 3", 10 * SEC);

    tmux.keys("q");
    let screen = tmux.wait_text("TOP-EXIT=", 10 * SEC);
    assert!(screen.contains("TOP-EXIT=0"), "{screen}");
    // The alternate screen is gone: the table is not left behind.
    assert!(!screen.contains("jobs: 3"), "{screen}");
}

#[test]
fn top_without_a_terminal_or_a_daemon_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin()).arg("-s").arg(dir.path().join("none.sock")).arg("top").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a terminal"), "{out:?}");

    // In a terminal but with no corral: exit 3, as every client.
    let command = format!("{} -s {} top; echo TOP-EXIT=$?; sleep 600", bin(), dir.path().join("none.sock").display());
    let tmux = Tmux::start(dir.path(), 100, 20, &command);
    let screen = tmux.wait_text("TOP-EXIT=", 20 * SEC);
    assert!(screen.contains("TOP-EXIT=3") && screen.contains("no corral answers"), "{screen}");
}

/// A container of our own (FROM scratch: corral, `sleep` and their libraries), removed on drop.
struct Container {
    name: String,
    image: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.name]).output();
        let _ = Command::new("docker").args(["rmi", "-f", &self.image]).output();
    }
}

/// Copy `bin` and the shared libraries `ldd` names into `root` at the same paths.
fn copy_with_libs(bin: &Path, root: &Path, as_name: &str) {
    std::fs::copy(bin, root.join(as_name)).unwrap();
    let ldd = Command::new("ldd").arg(bin).output().expect("ldd");
    for lib in String::from_utf8_lossy(&ldd.stdout).split_whitespace().filter(|w| w.starts_with('/')) {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
}

#[test]
fn top_works_in_docker_exec_it() {
    let docker_ok = Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success());
    assert!(docker_ok, "no Docker engine answers: apt-get install docker.io and start dockerd (./test does both)");
    let dir = tempfile::Builder::new().prefix("corral-it-docker-top-").tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("data/locks")).unwrap();
    copy_with_libs(Path::new(bin()), &root, "corral");
    copy_with_libs(Path::new("/bin/sleep"), &root, "sleep");
    std::fs::write(
        root.join("data/supervisor.toml"),
        "[supervisor]\nsocket = \"/data/corral.sock\"\nlock_dir = \"/data/locks\"\n\n\
         [jobs.sleeper]\ncommand = [\"/sleep\", \"1000\"]\n\n[jobs.napper]\ncommand = [\"/sleep\", \"2000\"]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY root/ /\nENTRYPOINT [\"/corral\", \"run\", \"-c\", \"/data/supervisor.toml\"]\n").unwrap();
    let id = format!("{}-{}", std::process::id(), fastrand::u32(..));
    let c = Container { name: format!("corral-it-top-{id}"), image: format!("corral-it-top:{id}") };
    let build = Command::new("docker").args(["build", "-q", "-t", &c.image]).arg(dir.path()).output().unwrap();
    assert!(build.status.success(), "docker build: {}", String::from_utf8_lossy(&build.stderr));
    let run = Command::new("docker").args(["run", "-d", "--name", &c.name, &c.image]).output().unwrap();
    assert!(run.status.success(), "docker run: {}", String::from_utf8_lossy(&run.stderr));
    let up = crate::harness::poll(30 * SEC, || {
        Command::new("docker").args(["exec", &c.name, "/corral", "-s", "/data/corral.sock", "status"]).output().is_ok_and(|o| {
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            o.status.success() && out.matches("RUNNING").count() == 2
        })
    });
    if !up {
        let logs = Command::new("docker").args(["logs", &c.name]).output().unwrap();
        let status = Command::new("docker").args(["exec", &c.name, "/corral", "-s", "/data/corral.sock", "status"]).output().unwrap();
        panic!(
            "corral in the container did not start its jobs\n--- status ---\n{}{}\n--- docker logs ---\n{}{}",
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr),
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr)
        );
    }

    let command = format!("docker exec -it {} /corral -s /data/corral.sock top; echo TOP-EXIT=$?; sleep 600", c.name);
    let tmux = Tmux::start(dir.path(), 120, 30, &command);
    tmux.wait_for("both jobs running in the container", 30 * SEC, |s| row(s, "sleeper").contains("running") && row(s, "napper").contains("running"));
    tmux.keys("x");
    tmux.wait_for("napper stopped from inside docker exec", 30 * SEC, |s| row(s, "napper").contains("stopped"));
    tmux.keys("q");
    let screen = tmux.wait_text("TOP-EXIT=", 20 * SEC);
    assert!(screen.contains("TOP-EXIT=0"), "{screen}");
}

// ----- the pane as a PNG -----

const PALETTE: [&str; 16] = [
    "#1e1e1e", "#cd3131", "#0dbc79", "#e5e510", "#2472c8", "#bc3fbc", "#11a8cd", "#e5e5e5", "#666666", "#f14c4c", "#23d18b",
    "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#ffffff",
];

fn color256(n: u32) -> String {
    match n {
        0..=15 => PALETTE[n as usize].to_string(),
        16..=231 => {
            let n = n - 16;
            let v = |c: u32| if c == 0 { 0 } else { 55 + c * 40 };
            format!("#{:02x}{:02x}{:02x}", v(n / 36), v(n / 6 % 6), v(n % 6))
        }
        _ => {
            let g = 8 + (n - 232) * 10;
            format!("#{g:02x}{g:02x}{g:02x}")
        }
    }
}

#[derive(Clone, Default)]
struct Sgr {
    fg: Option<String>,
    bg: Option<String>,
    bold: bool,
    dim: bool,
    reverse: bool,
}

impl Sgr {
    fn apply(&mut self, params: &str) {
        let p: Vec<u32> = params.split(';').map(|x| x.parse().unwrap_or(0)).collect();
        let mut i = 0;
        while i < p.len() {
            match p[i] {
                0 => *self = Sgr::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                7 => self.reverse = true,
                22 => (self.bold, self.dim) = (false, false),
                27 => self.reverse = false,
                n @ 30..=37 => self.fg = Some(PALETTE[(n - 30) as usize].into()),
                39 => self.fg = None,
                n @ 40..=47 => self.bg = Some(PALETTE[(n - 40) as usize].into()),
                49 => self.bg = None,
                n @ 90..=97 => self.fg = Some(PALETTE[(n - 90 + 8) as usize].into()),
                n @ 100..=107 => self.bg = Some(PALETTE[(n - 100 + 8) as usize].into()),
                n @ (38 | 48) => {
                    let c = match p.get(i + 1) {
                        Some(5) => {
                            i += 2;
                            p.get(i).map(|&c| color256(c))
                        }
                        Some(2) => {
                            i += 4;
                            Some(format!("#{:02x}{:02x}{:02x}", p.get(i - 2).unwrap_or(&0), p.get(i - 1).unwrap_or(&0), p.get(i).unwrap_or(&0)))
                        }
                        _ => None,
                    };
                    if n == 38 {
                        self.fg = c;
                    } else {
                        self.bg = c;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }

    fn style(&self) -> String {
        let (mut fg, mut bg) = (self.fg.clone().unwrap_or("#d4d4d4".into()), self.bg.clone().unwrap_or("#1e1e1e".into()));
        if self.reverse {
            std::mem::swap(&mut fg, &mut bg);
        }
        let mut s = format!("color:{fg};background:{bg};");
        if self.bold {
            s.push_str("font-weight:bold;");
        }
        if self.dim {
            s.push_str("opacity:.7;");
        }
        s
    }
}

/// `capture-pane -e` text (SGR escapes) as an HTML page of one `<pre>`.
fn ansi_to_html(text: &str) -> String {
    let mut out = String::new();
    let mut sgr = Sgr::default();
    let mut chars = text.chars().peekable();
    let mut run = String::new();
    let flush = |run: &mut String, sgr: &Sgr, out: &mut String| {
        if !run.is_empty() {
            out.push_str(&format!("<span style=\"{}\">{}</span>", sgr.style(), run));
            run.clear();
        }
    };
    while let Some(ch) = chars.next() {
        if ch == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            let mut params = String::new();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    if c == 'm' {
                        flush(&mut run, &sgr, &mut out);
                        sgr.apply(&params);
                    }
                    break;
                }
                params.push(c);
            }
            continue;
        }
        match ch {
            '<' => run.push_str("&lt;"),
            '>' => run.push_str("&gt;"),
            '&' => run.push_str("&amp;"),
            '\n' => {
                flush(&mut run, &sgr, &mut out);
                out.push('\n');
            }
            c => run.push(c),
        }
    }
    flush(&mut run, &sgr, &mut out);
    format!(
        "<!doctype html><meta charset=utf-8><body style=\"margin:0;background:#1e1e1e\"><pre style=\"margin:0;padding:10px;font:14px/1.15 'DejaVu Sans Mono',monospace;color:#d4d4d4;display:inline-block\">{out}</pre></body>"
    )
}

fn screenshot(ansi: &str, dir: &Path) {
    let page = dir.join("top.html");
    std::fs::write(&page, ansi_to_html(ansi)).unwrap();
    let mut b = Browser::start(1600, 200);
    b.navigate(&format!("file://{}", page.display()));
    b.wait_for("document.querySelector('pre') !== null", 30 * SEC, "the pane's HTML");
    let width = b.eval("Math.ceil(document.querySelector('pre').getBoundingClientRect().width)").as_u64().unwrap_or(1600);
    b.set_width(width as u32);
    let shot = artifact("top.png");
    b.screenshot(&shot);
    publish(&shot);
}

#[test]
fn ansi_colours_become_styles() {
    let html = ansi_to_html("\x1b[32mok\x1b[0m \x1b[1;7mX\x1b[0m \x1b[38;5;196mr\x1b[38;2;1;2;3mt\x1b[39m<&>");
    assert!(html.contains("color:#0dbc79;background:#1e1e1e;\">ok</span>"), "{html}");
    assert!(html.contains("color:#1e1e1e;background:#d4d4d4;font-weight:bold;\">X"), "{html}");
    assert!(html.contains("color:#ff0000;") && html.contains("color:#010203;"), "{html}");
    assert!(html.contains("&lt;&amp;&gt;"), "{html}");
}
