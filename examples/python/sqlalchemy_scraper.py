#!/usr/bin/env python3
"""A SQLAlchemy scraper skeleton that lets corral size its connection pool.

Run it as a corral job:

    [jobs.layer1_5]
    command      = ["python", "examples/python/sqlalchemy_scraper.py"]
    env          = { PYTHONUNBUFFERED = "1" }   # lines reach `corral logs` at once
    connections  = { min = 2, max = 15, overflow = 5 }
    quota_signal = "SIGHUP"                      # we rebuild the pool on SIGHUP

What corral gives the job (README, "What a job receives"):

    DATABASE_URL       the supervisor's URL plus application_name=corral/<service>/<job>
    DB_POOL_SIZE       SQLAlchemy pool_size      } their sum is the job's quota
    DB_MAX_OVERFLOW    SQLAlchemy max_overflow   }
    DB_POOL_TIMEOUT    SQLAlchemy pool_timeout (s), 30 unless the job's env sets it
    DB_POOL_RECYCLE    SQLAlchemy pool_recycle (s), 1800 unless the job's env sets it
    CORRAL_QUOTA_FILE  JSON with the current split, rewritten when the quota changes:
                       {"job": ..., "service": ..., "quota": 6, "pool_size": 5,
                        "max_overflow": 1, "generation": 2}

What this script no longer does, because corral does it: checking for a
duplicate of itself (single_instance / on_duplicate), killing zombie Chrome
processes (reaping and `orphans = "kill"`), restart-on-crash loops, and
guessing a pool size that keeps the whole fleet under the database's limit.

Without corral (plain `python sqlalchemy_scraper.py`) it falls back to a small
pool (2 + 3) and to libpq's defaults (PGHOST, PGUSER, PGAPPNAME, ...) when
DATABASE_URL is not set.
"""

import json
import logging
import os
import signal
import sys
import threading

from sqlalchemy import create_engine, text

log = logging.getLogger("scraper")

# Fallbacks when not run by corral: a conservative pool of 2 + 3 connections.
DEFAULT_POOL_SIZE = 2
DEFAULT_MAX_OVERFLOW = 3
DEFAULT_POOL_TIMEOUT = 30
DEFAULT_POOL_RECYCLE = 1800
# Pause between two units of work, in seconds.
PAUSE = 2.0


def env_int(name, default):
    """An integer from the environment, or `default` when unset or malformed."""
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else default
    except ValueError:
        log.warning("ignoring %s=%r: not an integer", name, value)
        return default


def database_url():
    """DATABASE_URL in a form SQLAlchemy accepts.

    corral passes the URL you gave it in [database] url, with
    application_name added, so connections show up in pg_stat_activity as
    corral/<service>/<job>. SQLAlchemy 1.4+ refuses the "postgres://" scheme
    that Supabase and Heroku hand out, so it is rewritten here.
    """
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        # No URL: let libpq fill in host, user, database and application_name
        # from PGHOST, PGUSER, PGDATABASE, PGAPPNAME, ~/.pgpass ...
        return "postgresql+psycopg2://"
    if url.startswith("postgres://"):
        url = "postgresql+psycopg2://" + url[len("postgres://"):]
    elif url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def pool_settings():
    """The pool size to use now: the quota file first (it is rewritten on
    every rebalance), then the environment we were started with, then the
    stand-alone defaults."""
    settings = {
        "pool_size": env_int("DB_POOL_SIZE", DEFAULT_POOL_SIZE),
        "max_overflow": env_int("DB_MAX_OVERFLOW", DEFAULT_MAX_OVERFLOW),
        "generation": 0,
    }
    path = os.environ.get("CORRAL_QUOTA_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                quota = json.load(f)
            settings["pool_size"] = int(quota["pool_size"])
            settings["max_overflow"] = int(quota["max_overflow"])
            settings["generation"] = int(quota.get("generation", 0))
        except (OSError, ValueError, KeyError) as e:
            # corral writes the file atomically (write + rename), so a read
            # never sees half a file; this only happens outside corral.
            log.warning("cannot read quota file %s (%s); using the environment", path, e)
    # SQLAlchemy wants pool_size >= 1 for a QueuePool that can hold anything.
    settings["pool_size"] = max(settings["pool_size"], 1)
    settings["max_overflow"] = max(settings["max_overflow"], 0)
    return settings


def make_engine():
    """A new engine whose pool never opens more than pool_size + max_overflow
    connections, i.e. the quota corral granted."""
    s = pool_settings()
    engine = create_engine(
        database_url(),
        pool_size=s["pool_size"],
        max_overflow=s["max_overflow"],
        pool_timeout=env_int("DB_POOL_TIMEOUT", DEFAULT_POOL_TIMEOUT),
        pool_recycle=env_int("DB_POOL_RECYCLE", DEFAULT_POOL_RECYCLE),
        # Test a connection before handing it out: survives a database
        # restart or a connection dropped by `enforce = "terminate"`.
        pool_pre_ping=True,
    )
    log.info(
        "pool: pool_size=%d max_overflow=%d (quota %d, generation %d)",
        s["pool_size"], s["max_overflow"], s["pool_size"] + s["max_overflow"], s["generation"],
    )
    return engine


class Signals:
    """Signal handlers only set flags; the main loop acts on them between two
    units of work, where no connection is checked out."""

    def __init__(self):
        self.resize = False
        self.stop = False
        # Waiting on an Event lets a signal cut the pause short.
        self.wake = threading.Event()
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)

    def _on_hup(self, signum, frame):
        # corral's quota_signal: the quota file has a new split.
        self.resize = True
        self.wake.set()

    def _on_stop(self, signum, frame):
        # corral's stop_signal (SIGTERM by default). Finish the current item
        # and exit before stop_timeout, or corral sends SIGKILL.
        self.stop = True
        self.wake.set()

    def pause(self, seconds):
        self.wake.wait(seconds)
        self.wake.clear()


def scrape_one(engine, n):
    """One unit of work. Replace with the real thing: fetch a page, parse it,
    write the rows. Keep each transaction short so the connection goes back
    to the pool (and corral sees the job's real use)."""
    with engine.begin() as conn:
        conn.execute(text("SELECT 1"))
    print(f"processed item {n}", flush=True)


def main():
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(levelname)s %(message)s",
        stream=sys.stderr,
    )
    signals = Signals()
    engine = make_engine()
    n = 0
    try:
        while not signals.stop:
            if signals.resize:
                signals.resize = False
                # Build the new pool first, then dispose of the old one:
                # dispose() closes the old pool's idle connections now, and
                # corral hands the connections we gave back to other jobs only
                # once it has measured that we really closed them.
                old, engine = engine, make_engine()
                old.dispose()
            n += 1
            try:
                scrape_one(engine, n)
            except Exception:  # keep scraping; a crash loop helps nobody
                log.exception("item %d failed", n)
            signals.pause(PAUSE)
    finally:
        engine.dispose()
    log.info("stopped after %d items", n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
