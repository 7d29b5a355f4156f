#!/usr/bin/env python3
"""corral versus supervisord, s6, runit, tini and dumb-init (issue 7).

`bench.py --render FILE` prints the report of an earlier `bench/run --json FILE`.
Otherwise started by bench/run, which installs the peers, builds corral and compiles the
two C helpers; see bench/README.md for what each figure means. Standard
library only. Prints a Markdown report; never fails on a figure.
"""
import argparse
import fcntl
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")

# --------------------------------------------------------------------------
# bookkeeping: everything we start is registered here and killed at exit


class Reg:
    work = None  # our temp dir: any process whose exe or cwd is inside is ours
    popens = []


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def now_ns():
    return time.monotonic_ns()


def pids_all():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def our_strays():
    """Processes started by this run: exe or cwd inside Reg.work."""
    out = []
    me = os.getpid()
    for pid in pids_all():
        if pid == me:
            continue
        for link in ("exe", "cwd"):
            try:
                if os.readlink(f"/proc/{pid}/{link}").startswith(Reg.work + "/"):
                    out.append(pid)
                    break
            except OSError:
                pass
    return out


def kill_pid(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def cleanup():
    for p in Reg.popens:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                kill_pid(p.pid)
        try:
            p.wait(timeout=5)
        except Exception:
            pass
    Reg.popens = []
    if Reg.work:
        for _ in range(3):
            strays = our_strays()
            if not strays:
                break
            for pid in strays:
                kill_pid(pid)
            time.sleep(0.2)


def spawn(argv, env=None, out=None, cwd=None):
    """Start a process in its own session (so cleanup can kill its group)."""
    f = open(out, "ab") if out else subprocess.DEVNULL
    p = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT if out else subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True)
    if out:
        f.close()
    Reg.popens.append(p)
    return p


def forget(p):
    if p in Reg.popens:
        Reg.popens.remove(p)


def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            s = read(f"/proc/{pid}/task/{tid}/children", "")
            out += [int(x) for x in s.split()]
    except OSError:
        pass
    return out


def rss_kb(pid):
    s = read(f"/proc/{pid}/status", "")
    for line in s.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kb(pid):
    s = read(f"/proc/{pid}/smaps_rollup", "")
    for line in s.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def cpu(pid):
    """(utime+stime in ticks, on-CPU ns summed over live threads)"""
    s = read(f"/proc/{pid}/stat", "")
    ticks = 0
    if s:
        f = s[s.rindex(")") + 2:].split()
        ticks = int(f[11]) + int(f[12])
    ns = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            ss = read(f"/proc/{pid}/task/{tid}/schedstat", "")
            if ss:
                ns += int(ss.split()[0])
    except OSError:
        pass
    return ticks, ns


def stamps(path):
    """[(kind, ns, pid)] from a BENCH_STAMP file"""
    out = []
    s = read(path, "")
    for line in s.splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def flock_wait(path, timeout):
    """Block until nobody holds `path` (every job gone); seconds or None."""
    res = {}

    def run():
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            res["t"] = now_ns()
        finally:
            os.close(fd)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(timeout)
    return res.get("t")


# --------------------------------------------------------------------------
# the supervisors of many jobs


class Peer:
    name = "?"

    def __init__(self, run, d, n, mode, uptime_ms=0, fast_crash=False):
        self.run, self.d, self.n, self.mode = run, d, n, mode
        self.fast_crash = fast_crash
        os.makedirs(d, exist_ok=True)
        self.stamp = os.path.join(d, "stamps")
        self.lock = os.path.join(d, "jobs.lock")
        open(self.lock, "w").close()
        self.env = dict(os.environ, BENCH_MODE=mode, BENCH_STAMP=self.stamp, BENCH_LOCK=self.lock,
                        BENCH_UPTIME_MS=str(uptime_ms))
        self.p = None
        self.prepare()

    def start(self):
        self.t_launch = now_ns()
        self.p = spawn(self.argv(), env=self.env, out=os.path.join(self.d, "supervisor.out"), cwd=self.d)

    def tree(self):
        return [self.p.pid]

    def wait_running(self, timeout=120):
        """ns from launch until n distinct jobs have started, or None"""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = [s for s in stamps(self.stamp) if s[0] == "S"]
            first = {}
            for _, ns, pid in st:
                first.setdefault(pid, ns)
            if len(first) >= self.n:
                return sorted(first.values())[self.n - 1] - self.t_launch
            if self.p.poll() is not None:
                return None
            time.sleep(0.01)
        return None

    def stop_request(self):
        os.kill(self.p.pid, signal.SIGTERM)

    def finish(self, timeout=15):
        """after the jobs are down: make the supervisor exit, then clean up"""
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self):
        if self.p and self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except OSError:
                pass
        if self.p:
            try:
                self.p.wait(timeout=5)
            except Exception:
                pass
            forget(self.p)
        # jobs and helpers of this peer that escaped the group
        for pid in our_strays():
            try:
                if os.readlink(f"/proc/{pid}/cwd").startswith(self.d) or \
                        self.env["BENCH_STAMP"] in read(f"/proc/{pid}/environ", ""):
                    kill_pid(pid)
            except OSError:
                pass


class Corral(Peer):
    name = "corral"

    def prepare(self):
        r = self.run
        conf = [f'[supervisor]\nsocket = "{self.d}/corral.sock"\nlock_dir = "{self.d}/locks"\n'
                f'stop_timeout = "{r.kill_timeout}s"\n']
        for i in range(self.n):
            conf.append(f'\n[jobs.job{i:03d}]\ncommand = ["{r.benchjob}"]\nrestart = "always"\n'
                        'on_duplicate = "ignore"\n')
            if self.fast_crash:
                conf.append('backoff = { initial = "0s", max = "0s" }\nhealthy_after = "0s"\n')
        self.conf = os.path.join(self.d, "supervisor.toml")
        with open(self.conf, "w") as f:
            f.write("".join(conf))
        chk = subprocess.run([r.corral, "check", "-c", self.conf], capture_output=True, text=True)
        if chk.returncode != 0:
            raise SystemExit(f"corral check failed: {chk.stdout}{chk.stderr}")

    def argv(self):
        return [self.run.corral, "run", "-c", self.conf]

    def status_cmd(self):
        return [self.run.corral, "-s", f"{self.d}/corral.sock", "status"]


class Supervisord(Peer):
    name = "supervisord"

    def prepare(self):
        r = self.run
        d = self.d
        os.makedirs(f"{d}/childlogs", exist_ok=True)
        conf = f"""[unix_http_server]
file={d}/supervisor.sock
chmod=0700

[supervisord]
nodaemon=true
logfile={d}/supervisord.log
pidfile={d}/supervisord.pid
childlogdir={d}/childlogs
user=root
minfds={max(1024, 8 * self.n + 64)}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{d}/supervisor.sock

[program:job]
command={r.benchjob}
process_name=%(program_name)s_%(process_num)03d
numprocs={self.n}
startsecs=0
autorestart=true
stopwaitsecs={r.kill_timeout}
"""
        self.conf = f"{d}/supervisord.conf"
        with open(self.conf, "w") as f:
            f.write(conf)

    def argv(self):
        return ["supervisord", "-n", "-c", self.conf]

    def status_cmd(self):
        return ["supervisorctl", "-c", self.conf, "status"]


class S6(Peer):
    name = "s6"

    def prepare(self):
        self.scan = f"{self.d}/scan"
        for i in range(self.n):
            sd = f"{self.scan}/job{i:03d}"
            os.makedirs(sd)
            os.symlink(self.run.benchjob, f"{sd}/run")
            with open(f"{sd}/timeout-kill", "w") as f:
                f.write(f"{int(self.run.kill_timeout * 1000)}\n")
            # readiness: without it s6-supervise pauses 1 s before every respawn
            with open(f"{sd}/notification-fd", "w") as f:
                f.write("3\n")
        self.env["BENCH_NOTIFY_FD"] = "3"
        with open(f"{self.d}/svstat-all", "w") as f:
            f.write(f'#!/bin/sh\nfor d in {self.scan}/*/; do s6-svstat "$d"; done\n')
        os.chmod(f"{self.d}/svstat-all", 0o755)

    def argv(self):
        return ["s6-svscan", "-c", str(max(1000, 2 * self.n)), self.scan]

    def tree(self):
        return [self.p.pid] + children(self.p.pid)

    def status_cmd(self):
        return [f"{self.d}/svstat-all"]


class Runit(Peer):
    name = "runit"

    def prepare(self):
        self.scan = f"{self.d}/scan"
        self.svcs = []
        for i in range(self.n):
            sd = f"{self.scan}/job{i:03d}"
            os.makedirs(sd)
            os.symlink(self.run.benchjob, f"{sd}/run")
            self.svcs.append(sd)
        self.sv = None

    def argv(self):
        return ["runsvdir", self.scan]

    def tree(self):
        return [self.p.pid] + children(self.p.pid)

    def status_cmd(self):
        return ["sv", "status"] + self.svcs

    def stop_request(self):
        # runsv has no kill timeout of its own: `sv -w SECS force-stop` sends
        # down (TERM, CONT) to every service and KILL to those still up after SECS.
        self.sv = spawn(["sv", "-w", str(self.run.kill_timeout), "force-stop"] + self.svcs,
                        out=f"{self.d}/sv.out")

    def finish(self, timeout=15):
        if self.sv:
            try:
                self.sv.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            forget(self.sv)
        # SIGHUP: runsvdir sends TERM to every runsv (exit once down) and exits
        kill_pid(self.p.pid, signal.SIGHUP)
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self._runsv_left():
            time.sleep(0.05)
        self.kill()

    def _runsv_left(self):
        left = []
        for pid in our_strays():
            try:
                if os.readlink(f"/proc/{pid}/cwd").startswith(self.d):
                    left.append(pid)
            except OSError:
                pass
        return left


PEERS = {"corral": Corral, "supervisord": Supervisord, "s6": S6, "runit": Runit}

# --------------------------------------------------------------------------
# measurements


def med(xs):
    return statistics.median(xs) if xs else None


class Results:
    def __init__(self):
        self.data = {}  # (metric, peer) -> [samples]
        self.notes = {}  # (metric, peer) -> text

    def add(self, metric, peer, value):
        if value is None:
            return
        self.data.setdefault((metric, peer), []).append(value)

    def get(self, metric, peer):
        return self.data.get((metric, peer), [])

    def note(self, metric, peer, text):
        self.notes[(metric, peer)] = text


def cycle(run, res, cls, n, mode, tag, with_stop_metric=None, with_rss=True, with_start=True):
    d = run.newdir(f"{cls.name}-{tag}")
    peer = cls(run, d, n, mode)
    try:
        peer.start()
        t_run = peer.wait_running()
        if t_run is None:
            log(f"  {cls.name}: {n} jobs did not all start (see {d})")
            res.note(f"start{n}", cls.name, "did not start all jobs")
            return
        if with_start:
            res.add(f"start{n}", cls.name, t_run / 1e6)
        if with_rss:
            time.sleep(run.settle)
            pids = peer.tree()
            res.add(f"rss{n}", cls.name, sum(rss_kb(p) for p in pids) / 1024)
            res.add(f"pss{n}", cls.name, sum(pss_kb(p) for p in pids) / 1024)
            res.add(f"procs{n}", cls.name, len(pids))
        t0 = now_ns()
        peer.stop_request()
        t1 = flock_wait(peer.lock, 60)
        if with_stop_metric:
            if t1 is None:
                res.note(with_stop_metric, cls.name, "jobs still up after 60 s")
            else:
                res.add(with_stop_metric, cls.name, (t1 - t0) / 1e6)
        peer.finish()
    finally:
        peer.kill()


def multi_job(run, res):
    peers = [PEERS[p] for p in run.peers if p in PEERS]
    for n, reps in ((1, run.reps), (100, run.reps), (500, run.reps_500)):
        log(f"== {n} job(s): start time, RSS, graceful stop ({reps} rounds)")
        for rep in range(reps):
            for cls in peers:
                log(f"  round {rep + 1}/{reps}: {cls.name}")
                cycle(run, res, cls, n, "sleep", f"n{n}-r{rep}",
                      with_stop_metric=f"stop{n}" if n > 1 else None, with_start=n > 1)
    log(f"== 100 jobs ignoring SIGTERM: stop with a {run.kill_timeout} s kill timeout ({run.reps_term} rounds)")
    for rep in range(run.reps_term):
        for cls in peers:
            log(f"  round {rep + 1}/{run.reps_term}: {cls.name}")
            cycle(run, res, cls, 100, "ignore-term", f"term-r{rep}", with_stop_metric="stopterm",
                  with_rss=False, with_start=False)


def status_and_idle(run, res):
    peers = [PEERS[p] for p in run.peers if p in PEERS]
    log(f"== 100 jobs under every supervisor at once: status round trips, then {run.idle_seconds} s idle")
    live = []
    try:
        for cls in peers:
            peer = cls(run, run.newdir(f"{cls.name}-idle"), 100, "sleep")
            peer.start()
            live.append(peer)
        for peer in live:
            if peer.wait_running() is None:
                log(f"  {peer.name}: not all 100 jobs started")
        time.sleep(run.settle)
        for peer in live:
            log(f"  status: {peer.name}")
            for t in time_command(run, peer.status_cmd()):
                res.add("status", peer.name, t)
        time.sleep(max(run.settle, 2))
        before = {p.name: [cpu(x) for x in p.tree()] for p in live}
        threads = {p.name: sum(len(os.listdir(f"/proc/{x}/task")) for x in p.tree()) for p in live}
        t0 = time.monotonic()
        log(f"  idle window: {run.idle_seconds} s")
        time.sleep(run.idle_seconds)
        elapsed = time.monotonic() - t0
        for p in live:
            after = [cpu(x) for x in p.tree()]
            ticks = sum(a[0] for a in after) - sum(b[0] for b in before[p.name])
            ns = sum(a[1] for a in after) - sum(b[1] for b in before[p.name])
            per_min = 60.0 / elapsed
            res.add("idle_ticks", p.name, ticks * 1000.0 / CLK_TCK * per_min)
            res.add("idle_sched", p.name, ns / 1e6 * per_min)
            nthreads = sum(len(os.listdir(f"/proc/{x}/task")) for x in p.tree())
            if nthreads != threads[p.name]:
                res.note("idle_sched", p.name, f"threads {threads[p.name]} -> {nthreads}")
        for p in live:
            p.stop_request()
        for p in live:
            flock_wait(p.lock, 30)
            p.finish()
    finally:
        for p in live:
            p.kill()


def time_command(run, argv):
    """ms per run of argv; hyperfine -N when installed, else a Python loop"""
    if shutil.which("hyperfine"):
        out = os.path.join(run.work, "hyperfine.json")
        cmd = " ".join(argv)
        r = subprocess.run(["hyperfine", "-N", "-i", "--style", "none", "--warmup", "3", "--runs",
                            str(run.status_runs), "--export-json", out, cmd],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if r.returncode == 0:
            return [t * 1000 for t in json.load(open(out))["results"][0]["times"]]
    for _ in range(3):
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times = []
    for _ in range(run.status_runs):
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append((time.perf_counter() - t) * 1000)
    return times


def crash(run, res):
    peers = [PEERS[p] for p in run.peers if p in PEERS]
    for label, uptime, samples, cap in (("crash_fast", 0, run.crash_samples, run.crash_cap),
                                        ("crash_slow", run.slow_uptime_ms, run.slow_samples,
                                         run.slow_samples * (run.slow_uptime_ms / 1000 + 1) + 5)):
        log(f"== crash-to-respawn, job up {uptime} ms before it exits 1 ({samples} respawns, at most {cap:.0f} s)")
        for cls in peers:
            d = run.newdir(f"{cls.name}-{label}")
            peer = cls(run, d, 1, "crash", uptime_ms=uptime, fast_crash=True)
            try:
                peer.start()
                deadline = time.monotonic() + cap
                lat = []
                while time.monotonic() < deadline:
                    lat = respawn_latencies(stamps(peer.stamp))
                    if len(lat) >= samples or peer.p.poll() is not None:
                        break
                    time.sleep(0.02)
                peer.kill()
                lat = respawn_latencies(stamps(peer.stamp))[:samples]
                log(f"  {cls.name}: {len(lat)} respawns")
                for x in lat:
                    res.add(label, cls.name, x)
                if len(lat) < samples:
                    res.note(label, cls.name, f"{len(lat)} respawns in {cap:.0f} s")
            finally:
                peer.kill()


def respawn_latencies(st):
    """next start minus previous exit, in ms"""
    out = []
    last_exit = None
    for kind, ns, pid in st:
        if kind == "E":
            last_exit = (ns, pid)
        elif kind == "S" and last_exit and pid != last_exit[1]:
            out.append((ns - last_exit[0]) / 1e6)
            last_exit = None
    return out


# --------------------------------------------------------------------------
# PID 1 in a PID namespace: reaping orphaned zombies


def pid1_argv(run, init, d, mode, out):
    reap = [run.reapbench, mode, str(run.reap_n), out]
    if init == "tini":
        return ["tini", "--"] + reap
    if init == "dumb-init":
        return ["dumb-init"] + reap
    reap += ["--term-init", "--timeout", str(run.reap_timeout)]
    if init == "supervisord":
        conf = f"{d}/supervisord.conf"
        with open(conf, "w") as f:
            f.write(f"""[supervisord]
nodaemon=true
logfile={d}/supervisord.log
pidfile={d}/supervisord.pid
childlogdir={d}
user=root

[program:reap]
command={' '.join(reap)}
startsecs=0
autorestart=false
""")
        return ["supervisord", "-n", "-c", conf]
    if init == "corral":
        conf = f"{d}/supervisor.toml"
        cmd = ", ".join(json.dumps(a) for a in reap)
        with open(conf, "w") as f:
            f.write(f'[supervisor]\nsocket = "{d}/corral.sock"\nlock_dir = "{d}/locks"\n\n'
                    f'[jobs.reap]\ncommand = [{cmd}]\nrestart = "never"\nhealthy_after = "0s"\n'
                    'on_duplicate = "ignore"\n')
        return [run.corral, "run", "-c", conf]
    raise ValueError(init)


def pid1(run, res):
    inits = [i for i in run.peers if i in ("tini", "dumb-init", "supervisord", "corral")]
    log(f"== PID 1 in a PID namespace: {run.reap_n} orphans, {run.reap_reps} rounds at once and "
        f"{run.stream_reps} as a stream ({run.reap_timeout} s limit)")
    gave_up = set()
    plan = [("zombies", r) for r in range(run.reap_reps)] + [("stream", r) for r in range(run.stream_reps)]
    for mode, rep in plan:
        for init in inits:
            if (init, mode) in gave_up:
                continue
            d = run.newdir(f"pid1-{init}-{mode}-{rep}")
            out = f"{d}/result.json"
            argv = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"] + \
                pid1_argv(run, init, d, mode, out)
            p = spawn(argv, out=f"{d}/init.out", cwd=d)
            try:
                p.wait(timeout=run.reap_timeout + 150)
            except subprocess.TimeoutExpired:
                pass
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait()
            forget(p)
            line = read(out, "").strip().splitlines()
            key = "reap_zombies" if mode == "zombies" else "lag_stream"
            if not line:
                log(f"  {init} {mode}: no result (see {d})")
                res.note(key, init, "no result")
                continue
            r = json.loads(line[-1])
            if r["forked"] < run.reap_n:
                res.note(key, init, f"only {r['forked']} orphans made")
            if mode == "stream":
                res.add("peak_stream", init, r["peak_zombies"])
                res.add("spawn_stream", init, r["spawn_ms"])
            if r["timed_out"]:
                log(f"  {init} {mode}: {r['left']} of {r['forked']} still there {run.reap_timeout} s "
                    f"after the last orphan was made")
                done = r["forked"] - r["left"]
                rate = f"; {done / max(r['reap_ms'] / 1000, 0.001):.0f} reaped/s" if mode == "zombies" else ""
                res.note(key, init, f"> {run.reap_timeout} s: {r['left']} of {r['forked']} left{rate}")
                gave_up.add((init, mode))
            else:
                log(f"  {init} {mode}: {r['reap_ms']:.1f} ms after the last orphan, "
                    f"peak {r['peak_zombies']} zombies")
                res.add(key, init, r["reap_ms"])


# --------------------------------------------------------------------------
# report

METRICS = [
    # key, label, unit, format, lower is better
    ("rss1", "idle RSS, 1 job (supervisor + helpers)", "MB", "{:.1f}"),
    ("rss100", "idle RSS, 100 jobs", "MB", "{:.1f}"),
    ("rss500", "idle RSS, 500 jobs", "MB", "{:.1f}"),
    ("pss100", "idle PSS, 100 jobs (shared pages split)", "MB", "{:.1f}"),
    ("pss500", "idle PSS, 500 jobs", "MB", "{:.1f}"),
    ("start100", "launch until 100 jobs running", "ms", "{:.0f}"),
    ("start500", "launch until 500 jobs running", "ms", "{:.0f}"),
    ("crash_fast", "crash-to-respawn, job exits at once", "ms", "{:.2f}"),
    ("crash_slow", "crash-to-respawn, job up 1.1 s first", "ms", "{:.2f}"),
    ("status", "`status` round trip, 100 jobs", "ms", "{:.1f}"),
    ("stop100", "graceful stop, 100 jobs", "ms", "{:.0f}"),
    ("stop500", "graceful stop, 500 jobs", "ms", "{:.0f}"),
    ("stopterm", "stop, 100 jobs ignoring SIGTERM (2 s kill timeout)", "ms", "{:.0f}"),
    ("idle_ticks", "idle CPU, 100 jobs (utime+stime)", "ms/min", "{:.0f}"),
    ("idle_sched", "idle CPU, 100 jobs (schedstat)", "ms/min", "{:.2f}"),
    ("reap_zombies", "PID 1: reap 10,000 zombies orphaned at once", "ms", "{:.0f}"),
    ("peak_stream", "PID 1: peak zombies, 10,000 orphans made one by one", "", "{:.0f}"),
    ("lag_stream", "PID 1: last of those made until all reaped", "ms", "{:.1f}"),
]

COLS = ["corral", "supervisord", "s6", "runit", "tini", "dumb-init"]


def fmt_cell(res, key, peer, fmt):
    xs = res.get(key, peer)
    note = res.notes.get((key, peer))
    if not xs:
        return note or ""
    m = fmt.format(med(xs))
    if len(xs) > 1:
        m += f" ({fmt.format(min(xs))}–{fmt.format(max(xs))})"
    if note:
        m += f" [{note}]"
    return m


def report(run, res):
    cols = [c for c in COLS if any(res.get(k, c) or (k, c) in res.notes for k, *_ in METRICS)]
    lines = []
    lines.append("Median (min–max) of n samples per peer (n: the most any peer got; s6 and runit manage one")
    lines.append("respawn a second when the job exits at once, and supervisord's PID 1 rounds stop at the limit).\n")
    lines.append("| metric | unit | n | " + " | ".join(cols) + " |")
    lines.append("|---|---|---:|" + "---:|" * len(cols))
    for key, label, unit, fmt in METRICS:
        if not any(res.get(key, c) or (key, c) in res.notes for c in cols):
            continue
        n = max(len(res.get(key, c)) for c in cols)
        lines.append(f"| {label} | {unit} | {n} | " + " | ".join(fmt_cell(res, key, c, fmt) for c in cols) + " |")
    lines.append("")
    peers = [c for c in cols if c != "corral"]
    lines.append("corral's median divided by the peer's (below 1: corral uses less / is faster):\n")
    lines.append("| metric | " + " | ".join(peers) + " |")
    lines.append("|---|" + "---:|" * len(peers))
    for key, label, unit, fmt in METRICS:
        if key.startswith("peak"):
            continue
        c = med(res.get(key, "corral"))
        if c is None:
            continue
        row = []
        for p in peers:
            m = med(res.get(key, p))
            if m is None or m == 0:
                note = res.notes.get((key, p), "")
                row.append("< 1/100" if note.startswith(">") and c > 0 else "")
                continue
            r = c / m
            row.append(f"{r:.3f}" if r < 0.1 else f"{r:.2f}")
        if any(row):
            lines.append(f"| {label} | " + " | ".join(row) + " |")
    lines.append("")
    lines += targets(res)
    return "\n".join(lines)


def targets(res):
    def m(k, p):
        return med(res.get(k, p))

    out = ["Targets for corral:", ""]

    def line(ok, text):
        out.append(f"- {'reached' if ok else ('MISSED' if ok is not None else 'not measured')}: {text}")

    c, s, s6 = m("rss100", "corral"), m("rss100", "supervisord"), m("rss100", "s6")
    line(None if None in (c, s, s6) else (c <= s / 4 and c < s6),
         f"idle RSS with 100 jobs at most 1/4 of supervisord's and below s6's total: "
         f"corral {c and round(c, 2)} MB, supervisord {s and round(s, 2)} MB (1/4 = {s and round(s / 4, 2)}), "
         f"s6 {s6 and round(s6, 1)} MB")
    c = m("crash_fast", "corral")
    c2 = m("crash_slow", "corral")
    line(None if c is None else (c < 5 and (c2 is None or c2 < 5)),
         f"crash-to-respawn median under 5 ms: {c and round(c, 2)} ms (job exits at once), "
         f"{c2 and round(c2, 2)} ms (job up 1.1 s first)")
    c, t = m("reap_zombies", "corral"), m("reap_zombies", "tini")
    line(None if None in (c, t) else c <= 1.2 * t,
         f"reaping 10,000 zombies at most 20% slower than tini: corral {c and round(c)} ms, "
         f"tini {t and round(t)} ms (ratio {c and t and round(c / t, 2)})")
    c = m("start500", "corral")
    others = {p: m("start500", p) for p in ("supervisord", "s6", "runit") if m("start500", p) is not None}
    line(None if c is None or not others else all(c < v for v in others.values()),
         f"500 jobs running sooner than every peer: corral {c and round(c)} ms; " +
         ", ".join(f"{p} {round(v)} ms" for p, v in others.items()))
    c, s = m("status", "corral"), m("status", "supervisord")
    line(None if None in (c, s) else s / c >= 5,
         f"`status` at least 5x faster than supervisorctl: {c and round(c, 2)} ms vs {s and round(s, 1)} ms "
         f"({c and s and round(s / c, 1)}x)")
    c, c2 = m("idle_ticks", "corral"), m("idle_sched", "corral")
    line(None if c is None else (c < 10 and (c2 is None or c2 < 10)),
         f"idle CPU under 10 ms per minute: {c and round(c)} ms/min (utime+stime), "
         f"{c2 is not None and round(c2, 2)} ms/min (schedstat)")
    return out


# --------------------------------------------------------------------------


class Run:
    def newdir(self, name):
        self.seq += 1
        d = os.path.join(self.work, f"{self.seq:03d}-{name}")
        os.makedirs(d)
        return d


def env_int(name, default):
    return int(os.environ.get(name, default))


def run_line(params, elapsed, busy_before, others, load0):
    return (f"Run: {params}; {elapsed / 60:.1f} min. Machine busy {busy_before:.0f}% (of all CPUs) in the "
            f"5 s before the run; during the run, processes other than the benchmark's used about "
            f"{others:.0f}% of the CPUs (/proc/stat minus the benchmark's own CPU time); load average "
            f"{' '.join(load0)} before.")


def render(path):
    d = json.load(open(path))
    res = Results()
    for k, v in d["samples"].items():
        metric, peer = k.split("/", 1)
        res.data[(metric, peer)] = v
    for k, v in d["notes"].items():
        metric, peer = k.split("/", 1)
        res.notes[(metric, peer)] = v
    print(report(None, res))
    print()
    print(run_line(d["params"], d["elapsed_s"], d.get("busy_before_pct", 0), d.get("others_pct", 0),
                   d.get("load_before", [])))


def cpu_totals():
    """(busy jiffies, all jiffies) of the whole machine"""
    f = [int(x) for x in read("/proc/stat", "cpu 0 0 0 0").splitlines()[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return sum(f) - idle, sum(f)


def ours_jiffies():
    t = os.times()
    return (t.user + t.system + t.children_user + t.children_system) * CLK_TCK


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--corral", required=True)
    ap.add_argument("--benchjob", required=True)
    ap.add_argument("--reapbench", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write raw samples here")
    ap.add_argument("--only", default=os.environ.get("ONLY", "multi,status,crash,pid1"))
    if len(sys.argv) == 3 and sys.argv[1] == "--render":
        # bench.py --render FILE: the report of an earlier --json file
        render(sys.argv[2])
        return
    a = ap.parse_args()
    q = a.quick
    run = Run()
    run.seq = 0
    run.work, run.corral, run.benchjob, run.reapbench = a.work, a.corral, a.benchjob, a.reapbench
    run.peers = os.environ.get("PEERS", "corral,supervisord,s6,runit,tini,dumb-init").split(",")
    run.reps = env_int("REPS", 2 if q else 5)
    run.reps_500 = env_int("REPS_500", 1 if q else 3)
    run.reps_term = env_int("REPS_TERM", 1 if q else 3)
    run.idle_seconds = env_int("IDLE_SECONDS", 10 if q else 60)
    run.crash_samples = env_int("CRASH_SAMPLES", 10 if q else 30)
    run.crash_cap = env_int("CRASH_SECONDS", 4 if q else 8)
    run.slow_samples = env_int("SLOW_SAMPLES", 3 if q else 8)
    run.slow_uptime_ms = env_int("SLOW_UPTIME_MS", 1100)
    run.status_runs = env_int("STATUS_RUNS", 10 if q else 30)
    run.reap_n = env_int("REAP_N", 10000)
    run.reap_reps = env_int("REAP_REPS", 2 if q else 7)
    run.stream_reps = env_int("STREAM_REPS", 1 if q else 3)
    run.reap_timeout = env_int("REAP_TIMEOUT", 5 if q else 15)
    run.kill_timeout = env_int("KILL_TIMEOUT", 2)
    run.settle = float(os.environ.get("SETTLE_SECONDS", 1))
    Reg.work = a.work
    res = Results()

    def on_signal(sig, frame):
        raise SystemExit(130)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    load0 = read("/proc/loadavg", "").split()[:3]
    b0, a0 = cpu_totals()
    time.sleep(5)
    b1, a1 = cpu_totals()
    busy_before = 100.0 * (b1 - b0) / max(1, a1 - a0)
    t0 = time.monotonic()
    o0 = ours_jiffies()
    try:
        only = a.only.split(",")
        if "multi" in only:
            multi_job(run, res)
        if "status" in only:
            status_and_idle(run, res)
        if "crash" in only:
            crash(run, res)
        if "pid1" in only:
            pid1(run, res)
    finally:
        cleanup()
    load1 = read("/proc/loadavg", "").split()[:3]
    elapsed = time.monotonic() - t0
    b2, a2 = cpu_totals()
    others = 100.0 * max(0, (b2 - b1) - (ours_jiffies() - o0)) / max(1, a2 - a1)
    params = (f"REPS={run.reps} REPS_500={run.reps_500} REPS_TERM={run.reps_term} IDLE_SECONDS={run.idle_seconds} "
              f"CRASH_SAMPLES={run.crash_samples} SLOW_SAMPLES={run.slow_samples} STATUS_RUNS={run.status_runs} "
              f"REAP_N={run.reap_n} REAP_REPS={run.reap_reps} STREAM_REPS={run.stream_reps} "
              f"REAP_TIMEOUT={run.reap_timeout} "
              f"KILL_TIMEOUT={run.kill_timeout}")
    print(report(run, res))
    print()
    print(run_line(params, elapsed, busy_before, others, load0))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"params": params, "elapsed_s": elapsed, "load_before": load0, "load_after": load1,
                       "busy_before_pct": busy_before, "others_pct": others,
                       "samples": {f"{k}/{p}": v for (k, p), v in res.data.items()},
                       "notes": {f"{k}/{p}": v for (k, p), v in res.notes.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
