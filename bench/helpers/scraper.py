#!/usr/bin/env python3
"""The fleet benchmark's worker: a scraper whose database work goes through a real SQLAlchemy
QueuePool, as our users' scrapers do (bench/README.md, "fleet").

Each of WORKER_THREADS threads loops over work items while the worker is busy: check a connection
out of the pool, hold it for one ~50 ms transaction (`SELECT pg_sleep(0.05)`), give it back. While
idle, the threads do nothing and the pool keeps what it has open (SQLAlchemy keeps up to
pool_size connections after use).

The pool is sized from DB_POOL_SIZE / DB_MAX_OVERFLOW (corral sets them; the static setups set
them by hand). With WORKER_RESIZE=1 (under corral), SIGHUP re-reads CORRAL_QUOTA_FILE and resizes:
a new engine of the new size takes over, checkouts are capped at the new quota across old and new
engine, connections of the old engine are closed as they come back (never mid-transaction), and
the old engine is disposed once none is checked out. So the worker never opens more than its
quota, and what it gives back is closed as soon as its transactions end.

When it is busy (WORKER_MODE):
  rotate  worker WORKER_INDEX of WORKERS is busy in its turn: phase = (now - BENCH_T0) // PHASE_S,
          busy are workers 2*phase % WORKERS and the next one (two busy, four idle, rotating)
  busy    always;  idle  never;  file  while the file WORKER_BUSY_FILE exists

Output: STATS_FILE (JSON, written at exit: items per wall-clock second, errors by kind, the
checkout waits of items done in [WINDOW_START, WINDOW_END) as float32 in STATS_FILE + ".waits"),
and EVENTS_FILE (optional): "start", "ready", "resize" lines with CLOCK_MONOTONIC times.
"""

import os
import signal
import time

# corral may send quota_signal while Python is still importing SQLAlchemy: SIGHUP's default action
# would end the worker. Flags first (the handlers only set them); they are acted on in run().
FLAGS = {"stop": False, "resize": False}
signal.signal(signal.SIGHUP, lambda *_: FLAGS.__setitem__("resize", True))
signal.signal(signal.SIGTERM, lambda *_: FLAGS.__setitem__("stop", True))
signal.signal(signal.SIGINT, lambda *_: FLAGS.__setitem__("stop", True))

T_START = time.monotonic()
# "{index}" in a path is this worker's index (six instances of one corral job share one env).
_INDEX = os.environ.get("WORKER_INDEX", os.environ.get("CORRAL_INSTANCE", "0"))
EVENTS = os.environ.get("EVENTS_FILE", "").replace("{index}", _INDEX)


def event(kind, *fields):
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(" ".join([kind, f"{time.monotonic():.6f}", str(os.getpid())] + [str(x) for x in fields]) + "\n")


event("start")

import array  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402

from sqlalchemy import create_engine, exc, text  # noqa: E402


def env_int(name, default):
    v = os.environ.get(name, "").strip()
    return int(v) if v else default


def env_float(name, default):
    v = os.environ.get(name, "").strip()
    return float(v) if v else default


INDEX = env_int("WORKER_INDEX", env_int("CORRAL_INSTANCE", 0))
WORKERS = env_int("WORKERS", 6)
BUSY_AT_ONCE = env_int("BUSY_AT_ONCE", 2)
PHASE_S = env_float("PHASE_S", 10.0)
T0 = env_float("BENCH_T0", time.time())
MODE = os.environ.get("WORKER_MODE", "rotate")
BUSY_FILE = os.environ.get("WORKER_BUSY_FILE", "")
THREADS = env_int("WORKER_THREADS", 20)
HOLD_S = env_float("ITEM_HOLD_S", 0.05)
WINDOW = (env_float("WINDOW_START", 0.0), env_float("WINDOW_END", 1e12))
RESIZE = os.environ.get("WORKER_RESIZE") == "1"
POOL_TIMEOUT = env_float("DB_POOL_TIMEOUT", 30)
RETRY_S = 0.1  # after a failed item, as a scraper's retry would


def busy_now():
    if MODE == "busy":
        return True
    if MODE == "idle":
        return False
    if MODE == "file":
        return os.path.exists(BUSY_FILE)
    phase = int((time.time() - T0) // PHASE_S)
    first = (BUSY_AT_ONCE * phase) % WORKERS
    return (INDEX - first) % WORKERS < BUSY_AT_ONCE


def url():
    u = os.environ["DATABASE_URL"]
    for prefix in ("postgres://", "postgresql://"):
        if u.startswith(prefix):
            return "postgresql+psycopg2://" + u[len(prefix):]
    return u


def quota_now():
    """(pool_size, max_overflow): the quota file under corral, else the environment."""
    path = os.environ.get("CORRAL_QUOTA_FILE")
    if path and RESIZE:
        try:
            with open(path) as f:
                q = json.load(f)
            return int(q["pool_size"]), int(q["max_overflow"])
        except (OSError, ValueError, KeyError):
            pass
    return env_int("DB_POOL_SIZE", 5), env_int("DB_MAX_OVERFLOW", 10)


def make_engine(pool_size, max_overflow):
    return create_engine(
        url(),
        pool_size=max(pool_size, 1),
        max_overflow=max(max_overflow, 0),
        pool_timeout=POOL_TIMEOUT,
        pool_recycle=env_int("DB_POOL_RECYCLE", 1800),
        pool_pre_ping=True,  # as in our users' docs
    )


class Stopping(Exception):
    pass


class Gate:
    """Caps checkouts across the current and retired engines at the quota (resizing only)."""

    def __init__(self, limit, stop):
        self.cv = threading.Condition()
        self.limit = limit
        self.in_use = 0
        self.stop = stop

    def acquire(self, timeout):
        deadline = time.monotonic() + timeout
        with self.cv:
            while self.in_use >= self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise exc.TimeoutError(f"quota of {self.limit} checked out, timed out after {timeout}s")
                if self.stop.is_set():
                    raise Stopping()
                self.cv.wait(min(left, 0.1))
            self.in_use += 1

    def release(self):
        with self.cv:
            self.in_use -= 1
            self.cv.notify()

    def set_limit(self, n):
        with self.cv:
            self.limit = n
            self.cv.notify_all()


class Worker:
    def __init__(self):
        pool_size, overflow = quota_now()
        self.engine = make_engine(pool_size, overflow)
        self.quota = pool_size + overflow
        self.stop = threading.Event()
        self.gate = Gate(self.quota, self.stop) if RESIZE else None
        self.retired = []
        self.lock = threading.Lock()
        self.items = {}  # wall-clock second -> items done
        self.errors = {"too_many_clients": 0, "pool_timeout": 0, "other": 0}
        self.error_samples = {}
        self.waits = array.array("f")
        self.stats_lock = threading.Lock()
        event("ready", self.quota)

    def resize(self):
        pool_size, overflow = quota_now()
        quota = pool_size + overflow
        if quota == self.quota:
            return
        new = make_engine(pool_size, overflow)
        with self.lock:
            old, self.engine = self.engine, new
            self.retired.append(old)
            self.quota = quota
        self.gate.set_limit(quota)
        old.dispose()  # closes its idle connections now; the rest as they come back
        event("resize", quota)

    def sweep_retired(self):
        with self.lock:
            done = [e for e in self.retired if e.pool.checkedout() == 0]
            self.retired = [e for e in self.retired if e.pool.checkedout() > 0]
        for e in done:
            e.dispose()

    def item(self):
        t0 = time.monotonic()
        if self.gate:
            self.gate.acquire(POOL_TIMEOUT)
        try:
            engine = self.engine
            conn = engine.connect()
            waited = time.monotonic() - t0
            try:
                with conn.begin():
                    conn.execute(text("SELECT pg_sleep(:s)"), {"s": HOLD_S})
            finally:
                if engine is not self.engine:
                    conn.invalidate()  # a retired engine's connection: close it, don't pool it
                conn.close()
        finally:
            if self.gate:
                self.gate.release()
        now = time.time()
        with self.stats_lock:
            sec = int(now)
            self.items[sec] = self.items.get(sec, 0) + 1
            if WINDOW[0] <= now < WINDOW[1]:
                self.waits.append(waited * 1000.0)

    def failed(self, kind, e):
        now = time.time()
        with self.stats_lock:
            if WINDOW[0] <= now < WINDOW[1]:
                self.errors[kind] += 1
            self.error_samples.setdefault(kind, str(e).strip().splitlines()[0][:200])

    def thread(self):
        while not self.stop.is_set():
            if not busy_now():
                self.stop.wait(0.02)
                continue
            try:
                self.item()
            except Stopping:
                break
            except exc.TimeoutError as e:
                self.failed("pool_timeout", e)
            except exc.OperationalError as e:
                msg = str(e)
                kind = "too_many_clients" if ("too many clients" in msg or "connection slots are reserved" in msg) else "other"
                self.failed(kind, e)
                self.stop.wait(RETRY_S)
            except Exception as e:  # noqa: BLE001 - a scraper keeps going
                self.failed("other", e)
                self.stop.wait(RETRY_S)

    def run(self):
        # Handlers only set flags: a handler runs in the main thread between two bytecodes, and one
        # that took a lock (Event.set) while the main thread held it would deadlock the worker.
        flags = FLAGS
        threads = [threading.Thread(target=self.thread, daemon=True) for _ in range(THREADS)]
        for t in threads:
            t.start()
        while not flags["stop"]:
            time.sleep(0.01)  # a signal cuts it short
            if flags["resize"]:
                flags["resize"] = False
                if RESIZE:
                    self.resize()
            self.sweep_retired()
        self.stop.set()
        # Threads finish their item; one still waiting for a connection at the end is not waited for.
        deadline = time.monotonic() + 3
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        self.write_stats()
        self.engine.dispose()

    def write_stats(self):
        path = os.environ.get("STATS_FILE", "").replace("{index}", str(INDEX))
        if not path:
            return
        with self.stats_lock:
            data = {
                "index": INDEX,
                "pid": os.getpid(),
                "items": {str(k): v for k, v in sorted(self.items.items())},
                "errors": self.errors,
                "error_samples": self.error_samples,
                "quota": self.quota,
            }
            with open(path + ".waits", "wb") as f:
                self.waits.tofile(f)
        with open(path + ".tmp", "w") as f:
            json.dump(data, f)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    Worker().run()
