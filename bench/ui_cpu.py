#!/usr/bin/env python3
"""What watching costs (issue 18): CPU of `corral top` and of an open dashboard, 100 jobs.

Starts `corral run` with N sleeping jobs and `[http]`, then measures, each for WINDOW
seconds, the CPU time (utime + stime from /proc/PID/stat, all processes of the group)
of:

  1. corral alone (the baseline);
  2. `corral top` in a tmux pane (132x40), and corral meanwhile;
  3. headless Chromium with the dashboard open, and corral meanwhile.

and prints each as a percentage of one core. With CORRAL_BENCH_DATABASE_URL set, the
manifest gets a [database] and 20 of the jobs `connections = 1` (the page and `top` then
also draw the budget). Standard library only; needs tmux and chromium.

    python3 bench/ui_cpu.py [--jobs 100] [--window 60] [--bin target/release/corral]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")


def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # fields after the command: state(0) ppid(1) pgrp(2) ... utime(11) stime(12)
    return int(rest[2]), int(rest[11]) + int(rest[12])


def group_ticks(pgrp):
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            g, t = stat(int(d))
        except (OSError, IndexError, ValueError):
            continue
        if g == pgrp:
            total += t
    return total


def pid_ticks(pid):
    return stat(pid)[1]


def measure(window, **what):
    """CPU % of a core of each named counter (a function returning ticks) over `window` s."""
    before = {k: f() for k, f in what.items()}
    t0 = time.monotonic()
    time.sleep(window)
    dt = time.monotonic() - t0
    return {k: 100.0 * (f() - before[k]) / TICK / dt for k, f in what.items()}


class Page:
    """Chromium's page over --remote-debugging-pipe (fd 3 in, fd 4 out, NUL-separated JSON):
    only to read how often the dashboard updated during a window."""

    def __init__(self, to_fd, from_fd):
        self.to, self.buf, self.id = os.fdopen(to_fd, "wb", buffering=0), b"", 0
        self.from_fd = from_fd
        target = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)["sessionId"]

    def call(self, method, session=None, **params):
        self.id += 1
        msg = {"id": self.id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self.to.write(json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self.buf:
                chunk = os.read(self.from_fd, 65536)
                if not chunk:
                    raise RuntimeError("chromium closed its pipe")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\0", 1)
            m = json.loads(line)
            if m.get("id") == self.id:
                return m.get("result", {})

    def eval(self, expr):
        r = self.call("Runtime.evaluate", session=self.session, expression=expr, returnByValue=True)
        return r.get("result", {}).get("value")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_for(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--window", type=float, default=60)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "corral"))
    args = ap.parse_args()
    corral = os.path.abspath(args.bin)
    for tool in ("tmux", "chromium"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (apt-get install {tool})")
    db = os.environ.get("CORRAL_BENCH_DATABASE_URL")
    tmp = tempfile.mkdtemp(prefix="corral-uicpu-")
    sock = os.path.join(tmp, "corral.sock")
    port = free_port()
    lines = [f'[supervisor]\nsocket = "{sock}"\nlock_dir = "{tmp}/locks"\n']
    if db:
        lines.append(f'[database]\nurl = "{db}"\nprovider_reserve = 0\nadhoc_reserve = 2\n')
    lines.append(f'[http]\nlisten = "127.0.0.1:{port}"\n')
    for i in range(args.jobs):
        lines.append(f'[jobs.job{i:03}]\ncommand = ["sleep", "100000"]\non_duplicate = "ignore"\n')
        if db and i < 20:
            lines.append("connections = 1\n")
    cfg = os.path.join(tmp, "supervisor.toml")
    with open(cfg, "w") as f:
        f.write("\n".join(lines))
    procs = []
    tmux = ["tmux", "-f", "/dev/null", "-S", os.path.join(tmp, "tmux.sock")]
    try:
        d = subprocess.Popen([corral, "run", "-c", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(d)

        def running():
            out = subprocess.run([corral, "-s", sock, "status", "--json"], capture_output=True, text=True)
            return out.returncode == 0 and out.stdout.count('"state":"running"') == args.jobs

        wait_for(running, 60, f"{args.jobs} jobs running")
        time.sleep(5)
        daemon = lambda: pid_ticks(d.pid)
        results = []
        base = measure(args.window, corral=daemon)
        results.append(("corral alone", base["corral"], None))

        subprocess.run(tmux + ["new-session", "-d", "-s", "top", "-x", "132", "-y", "40", f"{corral} -s {sock} top"], check=True)
        top_pid = int(subprocess.run(tmux + ["list-panes", "-t", "top", "-F", "#{pane_pid}"], capture_output=True, text=True).stdout.split()[0])

        def top_shows():
            return "job000" in subprocess.run(tmux + ["capture-pane", "-p", "-t", "top"], capture_output=True, text=True).stdout

        wait_for(top_shows, 30, "corral top showing the jobs")
        time.sleep(3)
        # The pane's process group: its shell (if any) and `corral top`.
        r = measure(args.window, corral=daemon, top=lambda: group_ticks(top_pid))
        results.append(("corral top", r["top"], r["corral"] - base["corral"]))
        subprocess.run(tmux + ["kill-server"])

        profile = os.path.join(tmp, "chromium")
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()

        def pipes_on_3_and_4():
            a, b = os.dup(cmd_r), os.dup(out_w)
            a, b = (os.dup(a) if a in (3, 4) else a), (os.dup(b) if b in (3, 4) else b)
            os.dup2(a, 3)
            os.dup2(b, 4)

        ch = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "--window-size=1280,1000", f"http://127.0.0.1:{port}/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=pipes_on_3_and_4, close_fds=False)
        procs.append(ch)
        os.close(cmd_r)
        os.close(out_w)
        page = Page(cmd_w, out_r)
        updates = lambda: int(page.eval("Number(document.body && document.body.dataset.updates || 0)") or 0)
        wait_for(lambda: updates() > 2, 60, "the dashboard updating")
        time.sleep(10)  # start-up is not the steady state
        u0 = updates()
        r = measure(args.window, corral=daemon, browser=lambda: group_ticks(ch.pid))
        n = updates() - u0
        hidden = page.eval("document.hidden")
        results.append((f"dashboard (headless chromium, {n} page updates, hidden={hidden})", r["browser"], r["corral"] - base["corral"]))
    finally:
        subprocess.run(tmux + ["kill-server"], stderr=subprocess.DEVNULL)
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{args.jobs} jobs, {args.window:.0f} s windows, {os.cpu_count()} cores{', with [database]' if db else ''}")
    print("| watcher | its own CPU | extra CPU of corral |")
    print("|---|---|---|")
    for name, own, extra in results:
        print(f"| {name} | {own:.2f}% | {'-' if extra is None else f'{extra:+.2f}%'} |")


if __name__ == "__main__":
    main()
