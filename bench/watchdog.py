#!/usr/bin/env python3
"""The watchdog's cost with 100 jobs (issue 14): corral's own CPU time per minute while 100
idle jobs run, without any check, with a liveness probe each (command, tcp or http), with
stall_after each, and with memory_max each (the tree-memory sampler).

    python3 bench/watchdog.py [--corral target/release/corral] [--window 30]

CPU time is corral's utime+stime from /proc/PID/stat (probe processes are separate and
reported apart: their children's CPU shows in corral's cutime+cstime once reaped).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    """(corral's on-CPU seconds over all its threads, in ns precision from schedstat;
    its reaped children's CPU seconds, in clock ticks)."""
    on_cpu = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                on_cpu += int(f.read().split()[0])
        except OSError:
            pass  # a blocking-pool thread that just ended: its time is lost (small)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # cutime cstime are fields 16-17 (1-based) -> 13..14 after the comm split
    cu, cs = (int(x) for x in fields[13:15])
    return on_cpu / 1e9, (cu + cs) / TICK


def status(corral, sock):
    out = subprocess.run([corral, "-s", sock, "status", "--json"], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else None


def run(corral, name, job_extra, window, jobs=100, port=None):
    d = tempfile.mkdtemp(prefix="corral-bench-wd-")
    sock = os.path.join(d, "corral.sock")
    lines = [f'[supervisor]\nsocket = "{sock}"\nlock_dir = "{d}/locks"\n']
    for i in range(jobs):
        lines.append(f'[jobs.j{i}]\ncommand = ["sleep", "{100000 + i}"]\non_duplicate = "ignore"\n{job_extra}\n')
    cfg = os.path.join(d, "supervisor.toml")
    with open(cfg, "w") as f:
        f.write("\n".join(lines))
    p = subprocess.Popen([corral, "run", "-c", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            st = status(corral, sock)
            if st and sum(1 for j in st["jobs"] if j["state"] == "running") == jobs:
                break
            time.sleep(0.2)
        time.sleep(3)  # past start-up
        c0, k0 = cpu(p.pid)
        t0 = time.time()
        time.sleep(window)
        c1, k1 = cpu(p.pid)
        el = time.time() - t0
        st = status(corral, sock) or {"jobs": []}
        restarts = sum(j["restarts"] for j in st["jobs"])
        per_min = (c1 - c0) / el * 60 * 1000
        probes = (k1 - k0) / el * 60 * 1000
        procs = sum(1 for x in os.listdir("/proc") if x.isdigit())
        print(f"{name:<28} ({procs} processes on the machine) corral {per_min:8.1f} ms CPU/min   probe processes {probes:8.1f} ms CPU/min   restarts {restarts}")
        return per_min
    finally:
        p.terminate()
        p.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", default="target/release/corral")
    ap.add_argument("--window", type=float, default=30)
    a = ap.parse_args()
    # A listener for tcp/http probes (answers 200 to anything).
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(512)
    port = srv.getsockname()[1]
    http = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tempfile.gettempdir())
    line = http.stdout.readline()
    hport = int(line.split("port ")[1].split()[0])
    try:
        print(f"100 idle jobs, {a.window:.0f} s window each")
        run(a.corral, "no checks", "", a.window)
        run(a.corral, "stall_after = 10m", 'stall_after = "10m"', a.window)
        run(a.corral, "liveness tcp every 10s", f'liveness = {{ tcp = "127.0.0.1:{port}", interval = "10s" }}', a.window)
        run(a.corral, "liveness http every 10s", f'liveness = {{ http = "http://127.0.0.1:{hport}/", interval = "10s" }}', a.window)
        run(a.corral, "liveness command every 10s", 'liveness = { command = ["true"], interval = "10s" }', a.window)
        run(a.corral, "memory_max (1 s sampling)", 'memory_max = "1GiB"', a.window)
    finally:
        http.terminate()


if __name__ == "__main__":
    main()
