#!/usr/bin/env python3
"""The fleet benchmark: work done under a hard connection cap (bench/README.md, "fleet").

Started by bench/fleet, which installs what is missing and builds corral. Needs root (the
PostgreSQL server and PgBouncer run as the `postgres` user). Prints a Markdown report.

Sections (ONLY=throughput,reaction,scale):
  throughput  six SQLAlchemy workers, two busy at a time, rotating every 10 s, against
              max_connections 60 under (a) corral, (b) the users' static pools, (c) the safe
              static split, (d) PgBouncer in transaction mode
  reaction    stop -> another job's quota rises; idle -> active; crash -> running again
  scale       N corrals in fleet scope on one database: coordination load, sync latency,
              a killed member's share coming back, the invariant
"""

import argparse
import array
import json
import os
import pwd
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))
SCRAPER = os.path.join(HERE, "helpers", "scraper.py")
PG_BIN = "/usr/lib/postgresql/15/bin"
STARTED = []  # Popen objects to stop at the end (each in its own session)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def spawn(cmd, env=None, out=None, user=None):
    if user:
        cmd = ["runuser", "-u", user, "--"] + cmd
    f = open(out, "ab") if out else subprocess.DEVNULL
    p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT if out else subprocess.DEVNULL, start_new_session=True)
    STARTED.append(p)
    return p


def stop(p, sig=signal.SIGTERM, timeout=20):
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def stop_all():
    for p in reversed(STARTED):
        try:
            stop(p, timeout=10)
        except Exception:  # noqa: BLE001
            pass


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


# ----- PostgreSQL and PgBouncer ---------------------------------------------------------------


class Cluster:
    """A throwaway PostgreSQL 15 cluster run as `postgres`: superuser over the unix socket, the
    application role `app` (a password, pg_monitor, like a managed provider's role) over TCP."""

    def __init__(self, work, max_connections):
        self.dir = os.path.join(work, f"pg{max_connections}")
        os.makedirs(self.dir)
        pw = pwd.getpwnam("postgres")
        os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.max_connections = max_connections
        subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres"],
                       check=True, stdout=subprocess.DEVNULL)
        conf = {
            "max_connections": max_connections,
            "superuser_reserved_connections": 3,
            "listen_addresses": "'127.0.0.1'",
            "port": self.port,
            "unix_socket_directories": f"'{self.dir}'",
            "shared_preload_libraries": "'pg_stat_statements'",
            "pg_stat_statements.track": "all",
            "password_encryption": "'scram-sha-256'",
            "shared_buffers": "'128MB'",
            "log_min_messages": "warning",
        }
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("local all postgres trust\nhost all app 127.0.0.1/32 scram-sha-256\n")
        subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w", "start"],
                       check=True, stdout=subprocess.DEVNULL)
        self.admin = self.connect_admin()
        cur = self.admin.cursor()
        cur.execute(f"CREATE ROLE app LOGIN PASSWORD '{self.password}'")
        cur.execute("GRANT pg_monitor TO app")
        cur.execute("CREATE DATABASE app OWNER app")
        a2 = psycopg2.connect(host=self.dir, port=self.port, user="postgres", dbname="app")
        a2.autocommit = True
        a2.cursor().execute("CREATE EXTENSION pg_stat_statements")
        a2.close()
        self.postmaster = int(open(os.path.join(self.data, "postmaster.pid")).readline())

    def connect_admin(self, dbname="postgres"):
        c = psycopg2.connect(host=self.dir, port=self.port, user="postgres", dbname=dbname, application_name="bench-sampler")
        c.autocommit = True
        return c

    def url(self, port=None, app=None):
        u = f"postgresql://app:{self.password}@127.0.0.1:{port or self.port}/app"
        return u + (f"?application_name={app}" if app else "")

    def sql(self, q, args=None, dbname="postgres"):
        c = self.admin if dbname == "postgres" else self.connect_admin(dbname)
        cur = c.cursor()
        cur.execute(q, args)
        rows = cur.fetchall() if cur.description else []
        if c is not self.admin:
            c.close()
        return rows

    def app_backends(self):
        """Client backends of the app role, but for corral's own and the ad hoc probe's."""
        return self.sql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND usename = 'app' "
                        "AND application_name <> 'bench-adhoc' AND application_name NOT LIKE 'corral/%/\\_corral'")[0][0]

    def stop(self):
        try:
            self.admin.close()
        except Exception:  # noqa: BLE001
            pass
        subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Bouncer:
    """PgBouncer in transaction mode in front of `cluster`, its server pool capped at `pool`."""

    def __init__(self, work, cluster, pool):
        self.dir = os.path.join(work, "pgbouncer")
        os.makedirs(self.dir)
        self.port = free_port()
        ini = os.path.join(self.dir, "pgbouncer.ini")
        with open(ini, "w") as f:
            f.write(f"""[databases]
app = host=127.0.0.1 port={cluster.port} dbname=app user=app password={cluster.password}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.dir}/userlist.txt
pool_mode = transaction
default_pool_size = {pool}
max_db_connections = {pool}
reserve_pool_size = 0
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits,options
logfile = {self.dir}/pgbouncer.log
pidfile = {self.dir}/pgbouncer.pid
""")
        with open(os.path.join(self.dir, "userlist.txt"), "w") as f:
            f.write('"app" ""\n')
        pw = pwd.getpwnam("postgres")
        for p in os.listdir(self.dir):
            os.chown(os.path.join(self.dir, p), pw.pw_uid, pw.pw_gid)
        os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.proc = spawn(["pgbouncer", ini], user="postgres")

        def up():
            try:
                psycopg2.connect(cluster.url(self.port)).close()
                return True
            except psycopg2.Error:
                return False

        wait_for(up, 10, "pgbouncer")

    def stop(self):
        stop(self.proc)


def pgbouncer_version():
    try:
        return subprocess.run(["pgbouncer", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    except OSError:
        return "?"


# ----- samplers -------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Peak and time series of the app role's backends (every 50 ms, superuser connection)."""

    def __init__(self, cluster, query=None):
        super().__init__(daemon=True)
        self.cluster, self.halt = cluster, threading.Event()
        self.query = query
        self.peak, self.samples, self.series = 0, 0, []

    def run(self):
        c = self.cluster.connect_admin()
        cur = c.cursor()
        q = self.query or ("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND usename = 'app' "
                           "AND application_name <> 'bench-adhoc' AND application_name NOT LIKE 'corral/%/\\_corral'")
        while not self.halt.is_set():
            cur.execute(q)
            n = cur.fetchone()[0]
            self.peak = max(self.peak, n)
            self.samples += 1
            self.series.append((time.time(), n))
            self.halt.wait(0.05)
        c.close()

    def finish(self):
        self.halt.set()
        self.join()
        return self


class AdHoc(threading.Thread):
    """A person running psql by hand, every 2 s, straight to the server."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.cluster, self.halt = cluster, threading.Event()
        self.ok, self.tries, self.errors = 0, 0, {}

    def run(self):
        env = dict(os.environ, PGCONNECT_TIMEOUT="5", PGAPPNAME="bench-adhoc")
        while not self.halt.wait(2.0):
            self.tries += 1
            r = subprocess.run(["psql", self.cluster.url(), "-Atc", "SELECT 1"], env=env, capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip() == "1":
                self.ok += 1
            else:
                msg = (r.stderr.strip().splitlines() or ["?"])[-1][:160]
                self.errors[msg] = self.errors.get(msg, 0) + 1

    def finish(self):
        self.halt.set()
        self.join()
        return self


# ----- corral ---------------------------------------------------------------------------------


class Corral:
    def __init__(self, binary, work, name, body, env=None):
        self.bin = binary
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.socket = os.path.join(self.dir, "corral.sock")
        self.config = os.path.join(self.dir, "supervisor.toml")
        head = f'[supervisor]\nsocket = "{self.socket}"\nlock_dir = "{self.dir}/locks"\nstop_timeout = "10s"\n\n'
        with open(self.config, "w") as f:
            f.write(head + body)
        self.log = os.path.join(self.dir, "corral.log")
        self.proc = spawn([binary, "run", "-c", self.config], env=dict(os.environ, **(env or {})), out=self.log)
        wait_for(lambda: self.ctl("status").returncode == 0, 20, f"corral {name}")

    def ctl(self, *args):
        return subprocess.run([self.bin, "-s", self.socket, *args], capture_output=True, text=True)

    def json(self, *args):
        r = self.ctl(*args, "--json")
        return json.loads(r.stdout) if r.stdout.strip() else {}

    def jobs(self):
        return {j["name"]: j for j in self.json("status").get("jobs", [])}

    def quota_file(self, job):
        try:
            with open(os.path.join(self.dir, "quota", f"{job}.json")) as f:
                return json.load(f)["quota"]
        except (OSError, ValueError, KeyError):
            return None

    def stop(self):
        stop(self.proc, timeout=30)


def database_toml(url, extra=""):
    return f'[database]\nurl = "{url}"\nhealth_interval = "5m"\n{extra}\n'


def worker_env(index, t0, window, stats, extra=None):
    env = {
        "WORKER_INDEX": str(index), "WORKERS": "6", "BUSY_AT_ONCE": "2", "PHASE_S": "10", "BENCH_T0": f"{t0:.3f}",
        "WINDOW_START": f"{window[0]:.3f}", "WINDOW_END": f"{window[1]:.3f}", "STATS_FILE": stats,
        "WORKER_THREADS": "20", "ITEM_HOLD_S": "0.05", "PYTHONUNBUFFERED": "1",
    }
    env.update(extra or {})
    return env


def toml_env(env):
    return "{ " + ", ".join(f'{k} = "{v}"' for k, v in env.items()) + " }"


# ----- throughput -----------------------------------------------------------------------------


def usable_of(binary, work, cluster):
    """corral's usable for this server with the default reserves, from a corral of its own."""
    c = Corral(binary, work, "usable", database_toml(cluster.url()))
    try:
        b = c.json("budget")
        return b["usable"], b["limit"], b
    finally:
        c.stop()


def run_variant(args, cluster, name, usable, launch, settled=False):
    """One setup: launch the six workers, sample for the window, stop, collect."""
    vdir = os.path.join(args.work, "v-" + name)
    os.makedirs(vdir)
    if not settled:
        wait_for(lambda: cluster.app_backends() == 0, 30, "a database without app connections")
    t0 = time.time() + 3.0  # workers start up first; the rotation starts at t0
    window = (t0 + args.warmup, t0 + args.warmup + args.duration)
    stop_fn = launch(vdir, t0, window)
    sampler = Sampler(cluster)
    adhoc = AdHoc(cluster)
    while time.time() < window[0]:
        time.sleep(0.1)
    sampler.start()
    adhoc.start()
    while time.time() < window[1]:
        time.sleep(0.2)
    sampler.finish()
    adhoc.finish()
    stop_fn()
    items, waits, errors, samples = 0, [], {"too_many_clients": 0, "pool_timeout": 0, "other": 0}, {}
    per_worker = []
    for i in range(6):
        path = os.path.join(vdir, f"stats.{i}.json")
        try:
            with open(path) as f:
                st = json.load(f)
        except OSError:
            log(f"{name}: worker {i} left no stats")
            continue
        n = sum(v for k, v in st["items"].items() if window[0] <= int(k) < window[1])
        per_worker.append(n)
        items += n
        for k, v in st["errors"].items():
            errors[k] = errors.get(k, 0) + v
        samples.update(st.get("error_samples", {}))
        w = array.array("f")
        with open(path + ".waits", "rb") as f:
            w.frombytes(f.read())
        waits.extend(w)
    minutes = args.duration / 60.0
    res = {
        "name": name, "items": items, "items_per_min": items / minutes, "per_worker": per_worker,
        "wait_p50": pct(waits, 50), "wait_p99": pct(waits, 99), "wait_p999": pct(waits, 99.9),
        "wait_mean": statistics.mean(waits) if waits else float("nan"), "checkouts": len(waits),
        "errors": errors, "error_samples": samples, "peak": sampler.peak, "usable": usable,
        "above_usable_s": sum(0.05 for _, n in sampler.series if n > usable),
        "adhoc_ok": adhoc.ok, "adhoc_tries": adhoc.tries, "adhoc_errors": adhoc.errors,
    }
    log(f"{name}: {items} items ({res['items_per_min']:.0f}/min), wait p50 {res['wait_p50']:.1f} ms p99 {res['wait_p99']:.1f} ms, "
        f"errors {errors}, peak {sampler.peak}/{usable}, ad hoc {adhoc.ok}/{adhoc.tries}")
    return res


def static_launch(cluster, pool_size, overflow, port=None):
    def launch(vdir, t0, window):
        procs = []
        for i in range(6):
            env = worker_env(i, t0, window, os.path.join(vdir, f"stats.{i}.json"),
                             {"DB_POOL_SIZE": str(pool_size), "DB_MAX_OVERFLOW": str(overflow), "DB_POOL_TIMEOUT": "30",
                              "DATABASE_URL": cluster.url(port, app=f"bench/worker{i}")})
            procs.append(spawn([sys.executable, SCRAPER], env=dict(os.environ, **env), out=os.path.join(vdir, f"worker{i}.log")))

        def stop_fn():
            for p in procs:
                os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                stop(p)
        return stop_fn
    return launch


CORRAL_BUDGET = os.environ.get("CORRAL_BUDGET", 'service = "scraper"\nidle_after = "1s"\nrebalance_interval = "500ms"\n')
BUDGET_WORDS = ", ".join(f"`{l.strip()}`" for l in CORRAL_BUDGET.strip().splitlines() if not l.startswith("service"))
CORRAL_CONNECTIONS = os.environ.get("CORRAL_CONNECTIONS", "{ min = 1, max = 20, overflow = 2 }")


def corral_jobs(workers, env_of):
    out = []
    for i in range(workers):
        out.append(f'[jobs.worker{i}]\ncommand = ["{sys.executable}", "{SCRAPER}"]\nconnections = {CORRAL_CONNECTIONS}\n'
                   f'quota_signal = "SIGHUP"\non_duplicate = "ignore"\nsingle_instance = false\nenv = {toml_env(env_of(i))}\n')
    return "\n".join(out)


def corral_launch(args, cluster):
    def launch(vdir, t0, window):
        body = database_toml(cluster.url()) + "\n[budget]\n" + CORRAL_BUDGET + "\n" + corral_jobs(
            6, lambda i: worker_env(i, t0, window, os.path.join(vdir, f"stats.{i}.json"), {"WORKER_RESIZE": "1"}))
        c = Corral(args.corral, vdir, "corral", body)
        return c.stop
    return launch


def throughput(args, cluster):
    usable, limit, plan = usable_of(args.corral, os.path.join(args.work, "plan-t"), cluster)
    split = usable // 6
    log(f"limit {limit}, usable {usable} (corral's plan with the default reserves); safe split {split} each")
    out = {"limit": limit, "usable": usable, "split": split, "plan": {k: plan.get(k) for k in ("limit", "provider_reserve", "adhoc_reserve", "own", "usable")}}
    variants = {
        "corral": lambda: run_variant(args, cluster, "corral", usable, corral_launch(args, cluster)),
        "static": lambda: run_variant(args, cluster, "static", usable, static_launch(cluster, 10, 5)),
        "split": lambda: run_variant(args, cluster, "split", usable, static_launch(cluster, split - min(2, split - 1), min(2, split - 1))),
        "pgbouncer": lambda: run_pgbouncer(args, cluster, usable),
    }
    out["variants"] = {}
    for name in args.variants:
        out["variants"][name] = variants[name]()
    return out


def run_pgbouncer(args, cluster, usable):
    wait_for(lambda: cluster.app_backends() == 0, 30, "a database without app connections")
    b = Bouncer(args.work, cluster, usable)
    try:
        # Client pools as large as a busy worker's threads: PgBouncer alone caps the backends.
        return run_variant(args, cluster, "pgbouncer", usable, static_launch(cluster, 18, 2, port=b.port), settled=True)
    finally:
        b.stop()


# ----- reaction -------------------------------------------------------------------------------


def read_events(path):
    ev = []
    try:
        with open(path) as f:
            for line in f:
                p = line.split()
                ev.append((p[0], float(p[1]), int(p[2]), p[3:]))
    except OSError:
        pass
    return ev


def reaction(args, cluster, usable):
    rounds = args.reaction_rounds
    share = usable // 3
    minimum = int(re.search(r"min = (\d+)", CORRAL_CONNECTIONS).group(1))
    out = {"share": share, "min": minimum}
    rdir = os.path.join(args.work, "reaction")
    os.makedirs(rdir)
    wait_for(lambda: cluster.app_backends() == 0, 30, "a database without app connections")

    def body(budget, env_of):
        return database_toml(cluster.url()) + "\n[budget]\n" + budget + "\n" + corral_jobs(3, env_of)

    # 1. stop -> the others' quotas rise. The default rebalance_interval (30 s): the hand-over
    #    must not depend on it. Three busy workers, 2..20 each: 15 + 15 + 15 of 45; one stops.
    env = lambda i: {"WORKER_INDEX": str(i), "WORKER_MODE": "busy", "WORKER_RESIZE": "1", "WORKER_THREADS": "20",
                     "EVENTS_FILE": os.path.join(rdir, "stop-events.{index}"), "PYTHONUNBUFFERED": "1"}
    c = Corral(args.corral, rdir, "stop", body('service = "scraper"\n', env))
    first, alln, resized = [], [], []
    try:
        wait_for(lambda: all(j["state"] == "running" for j in c.jobs().values()), 60, "three running workers")
        for r in range(rounds):
            victim = f"worker{r % 3}"
            others = [f"worker{i}" for i in range(3) if f"worker{i}" != victim]
            wait_for(lambda: len({c.quota_file(o) for o in others + [victim]}) == 1 and cluster.app_backends() >= usable - 3, 60, "an even split in use")
            before = {o: c.quota_file(o) for o in others}
            t0 = time.monotonic()
            c.ctl("stop", victim)
            t_first = t_all = None
            deadline = t0 + 30
            while time.monotonic() < deadline and t_all is None:
                now = time.monotonic()
                risen = [o for o in others if (c.quota_file(o) or 0) > before[o]]
                if risen and t_first is None:
                    t_first = now - t0
                if len(risen) == len(others):
                    t_all = now - t0
                time.sleep(0.002)
            first.append(t_first)
            alln.append(t_all)
            # The workers' own "resize" events: when their pools had the new size.
            ev = [e for o in others for e in read_events(os.path.join(rdir, f"stop-events.{o[-1]}")) if e[0] == "resize" and e[1] > t0]
            if ev:
                resized.append(max(e[1] for e in ev) - t0)
            c.ctl("start", victim)
            log(f"reaction stop #{r}: first {t_first}, all {t_all}")
    finally:
        c.stop()
    out["stop"] = {"first": first, "all": alln, "resized": resized}

    # 2. idle -> active, with the benchmark's settings (readings every 1 s, idle after 2 s).
    wait_for(lambda: cluster.app_backends() == 0, 30, "a database without app connections")
    busy_file = os.path.join(rdir, "busy0")
    env = lambda i: {"WORKER_INDEX": str(i), "WORKER_MODE": "file" if i == 0 else "busy", "WORKER_BUSY_FILE": busy_file,
                     "WORKER_RESIZE": "1", "EVENTS_FILE": os.path.join(rdir, "idle-events.{index}"), "PYTHONUNBUFFERED": "1"}
    c = Corral(args.corral, rdir, "idle", body(CORRAL_BUDGET, env))
    rise, grown = [], []
    try:
        for r in range(rounds):
            if os.path.exists(busy_file):
                os.unlink(busy_file)
            wait_for(lambda: c.quota_file("worker0") == minimum, 60, "worker0 idle at its minimum")
            time.sleep(0.5 + (r % 5) * 0.2)  # a different phase against the reading period each round
            t0 = time.monotonic()
            open(busy_file, "w").close()
            while time.monotonic() < t0 + 30 and (c.quota_file("worker0") or 0) < share:
                time.sleep(0.002)
            t = time.monotonic() - t0
            rise.append(t)
            ev = [e for e in read_events(os.path.join(rdir, "idle-events.0")) if e[0] == "resize" and e[1] > t0 and int(e[3][0]) >= share]
            if ev:
                grown.append(min(e[1] for e in ev) - t0)
            log(f"reaction idle->active #{r}: {t:.3f} s")
    finally:
        if os.path.exists(busy_file):
            os.unlink(busy_file)
        c.stop()
    out["idle_active"] = {"quota": rise, "resized": grown}

    # 3. crash -> running again with its quota (default rebalance_interval again).
    wait_for(lambda: cluster.app_backends() == 0, 30, "a database without app connections")
    env = lambda i: {"WORKER_INDEX": str(i), "WORKER_MODE": "busy", "WORKER_RESIZE": "1",
                     "EVENTS_FILE": os.path.join(rdir, "crash-events.{index}"), "PYTHONUNBUFFERED": "1"}
    c = Corral(args.corral, rdir, "crash", body('service = "scraper"\n', env) .replace('on_duplicate = "ignore"', 'on_duplicate = "ignore"\nbackoff = { initial = "0s", max = "0s" }'))
    spawned, ready, running = [], [], []
    try:
        for r in range(rounds):
            wait_for(lambda: all(j["state"] == "running" for j in c.jobs().values()) and cluster.app_backends() >= usable - 3, 60, "three busy workers")
            job = c.jobs()["worker0"]
            pid, quota = job["pid"], job["quota"]
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            t_run = None
            while time.monotonic() < t0 + 30:
                j = c.jobs().get("worker0", {})
                if j.get("pid") not in (None, pid) and j.get("quota") == quota:
                    t_run = time.monotonic() - t0
                    break
                time.sleep(0.005)
            path = os.path.join(rdir, "crash-events.0")
            # The new process writes "ready" once Python and SQLAlchemy are loaded and its pool is made.
            wait_for(lambda: any(e[0] == "ready" and e[1] > t0 for e in read_events(path)), 30, "the new worker's pool")
            ev = [e for e in read_events(path) if e[1] > t0]
            st = [e[1] - t0 for e in ev if e[0] == "start"]
            rd = [e[1] - t0 for e in ev if e[0] == "ready" and int(e[3][0]) == quota]
            spawned.append(min(st) if st else None)
            ready.append(min(rd) if rd else None)
            running.append(t_run)
            log(f"reaction crash #{r}: spawned {spawned[-1]}, pool ready {ready[-1]}, status {t_run}")
            time.sleep(1.0)
    finally:
        c.stop()
    out["crash"] = {"spawned": spawned, "ready": ready, "status": running}
    return out


# ----- scale ----------------------------------------------------------------------------------


def proc_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def postgres_cpu(cluster, app_like=None):
    """CPU seconds so far of the server's processes (or of the backends whose application_name
    is LIKE app_like), by pid."""
    if app_like:
        pids = [r[0] for r in cluster.sql("SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s", (app_like,))]
    else:
        pids = [cluster.postmaster] + [int(p) for p in os.listdir("/proc") if p.isdigit() and ppid(int(p)) == cluster.postmaster]
    return {p: c for p in pids if (c := proc_cpu(p)) is not None}


def ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def cpu_delta(a, b):
    return sum(b[p] - a[p] for p in b if p in a)


def scale(args, worker_bin):
    results = []
    for n in args.scale:
        # A database sized so that the fleet is short of connections: about 5 per corral for its
        # jobs (busy ones want 10), after corral's 2 own each and the default reserves.
        m = args.scale_max_connections or int((7 * n + 9) / 0.9) + 1
        cluster = Cluster(args.work, m)
        try:
            results.append(scale_one(args, cluster, n, worker_bin))
        except Exception as e:  # noqa: BLE001 - report it, go on with the next N
            log(f"scale {n} failed: {e}")
            results.append({"n": n, "max_connections": m, "failed": str(e)})
        finally:
            stop_all_corrals()
            cluster.stop()
    return results


SCALE_CORRALS = []


def stop_all_corrals():
    for c in SCALE_CORRALS:
        try:
            c.stop()
        except Exception:  # noqa: BLE001
            pass
    SCALE_CORRALS.clear()


def scale_one(args, cluster, n, worker_bin):
    sdir = os.path.join(args.work, f"scale{n}")
    os.makedirs(sdir)
    interval = args.scale_interval
    jobs = (f'[jobs.busy]\ncommand = ["{worker_bin}"]\nconnections = {{ min = 1, max = 10, overflow = 0 }}\nquota_signal = "SIGHUP"\n'
            f'on_duplicate = "ignore"\nsingle_instance = false\nautostart = false\n\n'
            f'[jobs.idle]\ncommand = ["{worker_bin}"]\nconnections = {{ min = 1, max = 10, overflow = 0 }}\nquota_signal = "SIGHUP"\n'
            f'on_duplicate = "ignore"\nsingle_instance = false\nautostart = false\nenv = {{ WORKER_IDLE = "1" }}\n')
    log(f"scale: starting {n} corrals (fleet scope, rebalance_interval {interval})")
    env = {"CORRAL_LOG": "info,corral::daemon::supervisor=debug"}
    for i in range(n):
        body = database_toml(cluster.url()) + f'\n[budget]\nscope = "fleet"\nservice = "svc{i:02d}"\nrebalance_interval = "{interval}"\n\n' + jobs
        SCALE_CORRALS.append(Corral(args.corral, sdir, f"c{i:02d}", body, env=env))
    corrals = list(SCALE_CORRALS)
    wait_for(lambda: len(corrals[0].json("budget").get("members", [])) == n, 120, f"{n} members")
    # Jobs start once every member has joined: members that join later find the database full
    # (the fleet does not hold connections back for corrals that have not registered yet).
    for c in corrals:
        c.ctl("start", "all")
    def not_running():
        return [f"{c.dir[-3:]}/{j['name']}: {j['state']} {j.get('reason') or ''}" for c in corrals for j in c.jobs().values() if j["state"] != "running"]
    try:
        wait_for(lambda: not not_running(), 180, "every job running")
    except RuntimeError:
        raise RuntimeError(f"not every job running after 180 s: {not_running()[:6]}")
    time.sleep(3 * float(interval.rstrip("s")))  # grants settle (idle jobs shrink to their minimum)
    usable = corrals[0].json("budget")["usable"]
    sampler = Sampler(cluster, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'corral/%' AND application_name NOT LIKE 'corral/%/\\_corral'")
    own_q = ("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'corral/%/\\_corral'")
    own = cluster.sql(own_q)[0][0]
    cluster.sql("SELECT pg_stat_statements_reset()", dbname="app")
    xact0 = cluster.sql("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'app'")[0][0]
    cpu_all0, cpu_own0 = postgres_cpu(cluster), postgres_cpu(cluster, "corral/%/\\_corral")
    logs0 = {c.log: os.path.getsize(c.log) for c in corrals}
    sampler.start()
    t0 = time.monotonic()
    time.sleep(args.scale_window)
    elapsed = time.monotonic() - t0
    cpu_all1, cpu_own1 = postgres_cpu(cluster), postgres_cpu(cluster, "corral/%/\\_corral")
    xact1 = cluster.sql("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'app'")[0][0]
    stmts = cluster.sql("SELECT query, calls, total_exec_time, mean_exec_time, max_exec_time FROM pg_stat_statements s "
                        "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = 'app' ORDER BY calls DESC", dbname="app")
    job_calls = sum(r[1] for r in stmts if "pg_sleep" in r[0])
    coord = [r for r in stmts if "pg_sleep" not in r[0] and "pg_stat_statements" not in r[0]]
    coord_calls = sum(r[1] for r in coord)
    lock = [r for r in coord if "pg_advisory_xact_lock" in r[0]]
    syncs_per_s = sum(r[1] for r in lock) / elapsed if lock else 0
    # Sync latency: corral logs each sync's duration at debug level (snapshot to answer).
    lat = []
    for c in corrals:
        with open(c.log, errors="replace") as f:
            f.seek(logs0[c.log])
            lat += [float(m.group(1)) for m in re.finditer(r'fleet sync ms="([0-9.]+)" ok=true', f.read())]
    # A member dies with its jobs (a container killed): its share comes back to the others.
    victim = corrals[-1]
    survivor = corrals[0]
    granted_before = survivor.json("budget")["granted"]
    vjobs = [j["pid"] for j in victim.jobs().values() if j.get("pid")]
    tk = time.monotonic()
    os.killpg(victim.proc.pid, signal.SIGKILL)
    for p in vjobs:
        try:
            os.killpg(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    victim.proc.wait()
    t_expired = t_back = None
    while time.monotonic() < tk + 20 * float(interval.rstrip("s")) + 30:
        b = survivor.json("budget")
        if t_expired is None and len(b.get("members", [])) == n - 1:
            t_expired = time.monotonic() - tk
        if t_expired is not None and b.get("granted", 0) >= granted_before:
            t_back = time.monotonic() - tk
            break
        time.sleep(0.1)
    sampler.finish()
    SCALE_CORRALS.remove(victim)
    res = {
        "n": n, "max_connections": cluster.max_connections, "interval": interval, "window_s": elapsed, "usable": usable, "own_connections": own,
        "peak": sampler.peak, "samples": sampler.samples,
        "xact_per_s": (xact1 - xact0) / elapsed, "coord_stmts_per_s": coord_calls / elapsed, "job_stmts_per_s": job_calls / elapsed,
        "syncs_per_s": syncs_per_s,
        "lock_wait_mean_ms": statistics.mean([r[3] for r in lock]) if lock else None,
        "lock_wait_max_ms": max([r[4] for r in lock]) if lock else None,
        "coord_exec_ms_per_s": sum(r[2] for r in coord) / elapsed,
        "pg_cpu_all_pct": 100 * cpu_delta(cpu_all0, cpu_all1) / elapsed,
        "pg_cpu_own_pct": 100 * cpu_delta(cpu_own0, cpu_own1) / elapsed,
        "sync_ms_p50": pct(lat, 50), "sync_ms_p99": pct(lat, 99), "sync_ms_max": max(lat) if lat else None, "syncs_logged": len(lat),
        "killed_expired_s": t_expired, "killed_share_back_s": t_back, "granted_before": granted_before,
        "top_statements": [(r[0][:90].replace("\n", " "), r[1], round(r[3], 3)) for r in coord[:8]],
    }
    log(f"scale {n}: {json.dumps({k: v for k, v in res.items() if k != 'top_statements'})}")
    return res


# ----- report ---------------------------------------------------------------------------------


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def fmt_ms(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    return f"{1000 * med(xs):.0f} ms ({1000 * min(xs):.0f}–{1000 * max(xs):.0f}, n={len(xs)})"


NAMES = {
    "corral": "(a) corral, `quota_signal` resizing",
    "static": "(b) static pools 10 + 5 per worker (users' docs)",
    "split": "(c) safe static split (usable / 6 each)",
    "pgbouncer": "(d) PgBouncer, transaction mode, pool = usable",
}


def render(res, args):
    out = []
    t = res.get("throughput")
    if t:
        v = t["variants"]
        out.append(f"Throughput: {args.duration:.0f} s measured after {args.warmup:.0f} s of warm-up; PostgreSQL 15 with `max_connections = 60` "
                   f"(limit {t['limit']} for the app role after 3 superuser slots); corral's plan with the default reserves: "
                   f"usable **{t['usable']}** (provider {t['plan']['provider_reserve']}, ad hoc {t['plan']['adhoc_reserve']}, own {t['plan']['own']}); "
                   f"safe split {t['split']} per worker.\n")
        out.append("| setup | items/min | checkout wait p50 / p99 / p99.9 (ms) | mean wait (ms) | \"too many clients\" | pool timeouts | other errors | peak backends / usable | ad hoc psql ok |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for k in ("corral", "static", "split", "pgbouncer"):
            if k not in v:
                continue
            r = v[k]
            over = f" ({r['above_usable_s']:.0f} s above)" if r["peak"] > r["usable"] else ""
            out.append(f"| {NAMES[k]} | {r['items_per_min']:,.0f} | {r['wait_p50']:.1f} / {r['wait_p99']:.1f} / {r['wait_p999']:.0f} | {r['wait_mean']:.1f} | {r['errors']['too_many_clients']} | "
                       f"{r['errors']['pool_timeout']} | {r['errors']['other']} | {r['peak']} / {r['usable']}{over} | {r['adhoc_ok']}/{r['adhoc_tries']} |")
        out.append("")
        if "corral" in v:
            a = v["corral"]["items_per_min"]
            ratios = [f"{NAMES[k].split(' ', 1)[0]} {a / v[k]['items_per_min']:.2f}x" for k in ("static", "split", "pgbouncer") if k in v and v[k]["items_per_min"]]
            out.append("corral's items divided by each setup's: " + ", ".join(ratios) + ".\n")
            if "split" in v:
                ok = a >= 1.4 * v["split"]["items_per_min"] and sum(v["corral"]["errors"].values()) == 0 and v["corral"]["peak"] <= v["corral"]["usable"]
                out.append(f"- {'reached' if ok else 'MISSED'}: corral at least 1.4x the items of the safe split, with 0 errors and never above usable "
                           f"({a / v['split']['items_per_min']:.2f}x, {sum(v['corral']['errors'].values())} errors, peak {v['corral']['peak']} / {v['corral']['usable']})")
            if "static" in v:
                s = v["static"]
                shows = s["errors"]["too_many_clients"] > 0 or s["adhoc_ok"] < s["adhoc_tries"]
                out.append(f"- {'reached' if shows else 'MISSED'}: the users' static pools show the errors they hit "
                           f"({s['errors']['too_many_clients']} \"too many clients\", ad hoc psql {s['adhoc_ok']}/{s['adhoc_tries']}, peak {s['peak']} / {s['usable']})")
        samples = {k: r["error_samples"] for k, r in v.items() if r["error_samples"]}
        for k, sm in samples.items():
            for kind, msg in sm.items():
                out.append(f"- {k}, {kind}: `{msg}`")
        for k, r in v.items():
            for msg, n in r["adhoc_errors"].items():
                out.append(f"- {k}, ad hoc psql failed {n}x: `{msg}`")
        out.append("")
    r = res.get("reaction")
    if r:
        out.append("Reaction (median, min–max, n rounds):\n")
        out.append("| event | until | time |")
        out.append("|---|---|---:|")
        out.append(f"| stop of one of three busy workers (`rebalance_interval` 30 s, the default) | the first other's quota file raised | {fmt_ms(r['stop']['first'])} |")
        out.append(f"| | both others' quota files raised | {fmt_ms(r['stop']['all'])} |")
        out.append(f"| | both others' pools resized (worker's own event) | {fmt_ms(r['stop']['resized'])} |")
        out.append(f"| idle worker turns busy (the throughput settings: {BUDGET_WORDS}) | its quota file at its share ({r['share']}) | {fmt_ms(r['idle_active']['quota'])} |")
        out.append(f"| | its pool resized to it | {fmt_ms(r['idle_active']['resized'])} |")
        out.append(f"| SIGKILL of a busy worker (`backoff` 0 s) | the new process started | {fmt_ms(r['crash']['spawned'])} |")
        out.append(f"| | its pool built with its quota (Python + SQLAlchemy start-up) | {fmt_ms(r['crash']['ready'])} |")
        out.append(f"| | `corral status` shows the new pid with its quota | {fmt_ms(r['crash']['status'])} |")
        stop_med = med(r["stop"]["all"])
        out.append("")
        out.append(f"- {'reached' if stop_med <= 1.0 else 'MISSED'}: stop -> the others' quotas rise, median at most 1 s ({1000 * stop_med:.0f} ms)")
        out.append("")
    s = res.get("scale")
    if s:
        out.append(f"Fleet at scale: N corrals in fleet scope (each its own service) on one PostgreSQL whose `max_connections` leaves about 5 connections per corral for jobs, "
                   f"2 jobs each (`corral-pg-worker`, min 1 max 10: one busy, one idle), `rebalance_interval = \"{args.scale_interval}\"`, "
                   f"measured over {args.scale_window:.0f} s.\n")
        out.append("| N | max_connections | syncs/s | coordination statements/s | transactions/s (all) | PG CPU, corral's backends | PG CPU, all | sync p50 / p99 / max (ms) | lock wait mean / max (ms) | corral's own connections | peak job backends / usable | killed member expired | its share back |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for x in s:
            if "failed" in x:
                out.append(f"| {x['n']} | {x['max_connections']} | failed: {x['failed']} |" + " |" * 11)
                continue
            lw = f"{x['lock_wait_mean_ms']:.2f} / {x['lock_wait_max_ms']:.2f}" if x["lock_wait_mean_ms"] is not None else "n/a"
            f = lambda v: f"{v:.1f} s" if v is not None else "not seen"
            out.append(f"| {x['n']} | {x['max_connections']} | {x['syncs_per_s']:.1f} | {x['coord_stmts_per_s']:.0f} | {x['xact_per_s']:.0f} | {x['pg_cpu_own_pct']:.1f}% | {x['pg_cpu_all_pct']:.1f}% | "
                       f"{x['sync_ms_p50']:.1f} / {x['sync_ms_p99']:.1f} / {x['sync_ms_max']:.1f} | {lw} | {x['own_connections']} | {x['peak']} / {x['usable']} | "
                       f"{f(x['killed_expired_s'])} | {f(x['killed_share_back_s'])} |")
        out.append("")
        big = next((x for x in reversed(s) if "failed" not in x), None) or {"n": "-", "top_statements": []}
        out.append(f"Most frequent coordination statements at N = {big['n']} (calls, mean ms):\n")
        for q, calls, mean in big["top_statements"]:
            out.append(f"- {calls} x {mean} ms: `{q}`")
        out.append("")
    return "\n".join(out)


def save(a, res):
    """What is measured so far, so that a later failure loses nothing."""
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", help="temp dir (not needed with --render)")
    ap.add_argument("--corral")
    ap.add_argument("--worker", help="corral-pg-worker binary (scale section)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--render")
    a = ap.parse_args()
    q = a.quick
    a.duration = float(os.environ.get("DURATION", 60 if q else 180))
    a.warmup = float(os.environ.get("WARMUP", 10))
    a.variants = os.environ.get("VARIANTS", "corral,static,split,pgbouncer").split(",")
    a.reaction_rounds = int(os.environ.get("REACTION_ROUNDS", 5 if q else 10))
    a.scale = [int(x) for x in os.environ.get("SCALE_N", "10" if q else "10,25,50").split(",")]
    a.scale_interval = os.environ.get("SCALE_INTERVAL", "5s")
    a.scale_window = float(os.environ.get("SCALE_WINDOW", 30 if q else 60))
    a.scale_max_connections = int(os.environ.get("SCALE_MAX_CONNECTIONS", 0))
    only = os.environ.get("ONLY", "throughput,reaction,scale").split(",")
    if a.render:
        res = json.load(open(a.render))
        for k, v in res.get("settings", {}).items():
            setattr(a, k, v)
        print(render(res, a))
        return
    if not (a.work and a.corral and a.worker):
        ap.error("--work, --corral and --worker are needed (bench/fleet gives them)")
    res = {}
    started = time.monotonic()
    try:
        if "throughput" in only or "reaction" in only:
            cluster = Cluster(a.work, 60)
            try:
                if "throughput" in only:
                    res["throughput"] = throughput(a, cluster)
                    save(a, res)
                if "reaction" in only:
                    res["reaction"] = reaction(a, cluster, usable_of(a.corral, os.path.join(a.work, "plan-r"), cluster)[0])
                    save(a, res)
            finally:
                stop_all()
                cluster.stop()
        if "scale" in only:
            res["scale"] = scale(a, a.worker)
    finally:
        stop_all()
    res["minutes"] = (time.monotonic() - started) / 60
    res["settings"] = {"duration": a.duration, "warmup": a.warmup, "reaction_rounds": a.reaction_rounds, "scale": a.scale,
                       "scale_interval": a.scale_interval, "scale_window": a.scale_window, "scale_max_connections": a.scale_max_connections}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    print(render(res, a))
    print(f"Run: DURATION={a.duration:.0f} WARMUP={a.warmup:.0f} REACTION_ROUNDS={a.reaction_rounds} SCALE_N={','.join(map(str, a.scale))} "
          f"SCALE_INTERVAL={a.scale_interval} SCALE_WINDOW={a.scale_window:.0f}; {res['minutes']:.1f} min.")


if __name__ == "__main__":
    main()
