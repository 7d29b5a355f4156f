#!/usr/bin/env python3
"""A variant of sqlalchemy_scraper.py that keeps its whole quota busy: one thread
per connection corral granted (pool_size + max_overflow), each running short
transactions back to back. It is what a scraper under load does to a pool, and
what a session pooler punishes when the pools add up to more than its pool
size: the client beyond it is refused ("no more connections allowed").

Every failed unit of work is printed as a line starting with "item failed:",
so a test (or you) can count them in `corral logs`. On SIGHUP it rebuilds its
pool from the quota file, like sqlalchemy_scraper.py.

    [jobs.busy]
    command      = ["python3", "examples/python/sqlalchemy_busy_scraper.py"]
    env          = { PYTHONUNBUFFERED = "1" }
    connections  = { min = 1, max = 4, overflow = 1 }
    quota_signal = "SIGHUP"
"""

import logging
import os
import sys
import threading
import time

from sqlalchemy import text

# The engine, pool settings and signal handling of the plain example.
from sqlalchemy_scraper import Signals, make_engine, pool_settings

log = logging.getLogger("busy")

# How long each transaction holds its connection, in seconds.
HOLD = float(os.environ.get("SCRAPER_HOLD", "0.2"))


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.engine = make_engine()
        self.done = 0
        self.failed = 0


def worker(state, signals, generation):
    while not signals.stop and state.generation == generation:
        engine = state.engine
        try:
            with engine.begin() as conn:
                conn.execute(text("SELECT pg_sleep(:s)"), {"s": HOLD})
            with state.lock:
                state.done += 1
        except Exception as e:  # keep going: count it and print it
            with state.lock:
                state.failed += 1
            print(f"item failed: {type(e).__name__}: {str(e).splitlines()[0]}", flush=True)
            time.sleep(0.2)


def start_workers(state, signals):
    s = pool_settings()
    n = s["pool_size"] + s["max_overflow"]
    state.generation = s["generation"]
    threads = [threading.Thread(target=worker, args=(state, signals, s["generation"]), daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    print(f"busy with {n} connections (generation {s['generation']})", flush=True)
    return threads


def main():
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(), format="%(levelname)s %(message)s", stream=sys.stderr)
    signals = Signals()
    state = State()
    threads = start_workers(state, signals)
    last = time.monotonic()
    while not signals.stop:
        if signals.resize:
            signals.resize = False
            # Stop the old workers (they finish their transaction), then swap the pool.
            state.generation = -1
            for t in threads:
                t.join()
            old, state.engine = state.engine, make_engine()
            old.dispose()
            threads = start_workers(state, signals)
        if time.monotonic() - last >= 5:
            last = time.monotonic()
            with state.lock:
                print(f"processed {state.done} items, {state.failed} failed", flush=True)
        signals.pause(0.5)
    state.generation = -1
    for t in threads:
        t.join()
    state.engine.dispose()
    print(f"stopped: processed {state.done} items, {state.failed} failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
