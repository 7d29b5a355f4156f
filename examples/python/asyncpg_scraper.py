#!/usr/bin/env python3
"""An asyncpg scraper skeleton that lets corral size its connection pool.

Run it as a corral job:

    [jobs.layer2]
    command      = ["python", "examples/python/asyncpg_scraper.py"]
    env          = { PYTHONUNBUFFERED = "1" }
    connections  = { min = 2, max = 10 }
    quota_signal = "SIGHUP"                      # we rebuild the pool on SIGHUP

asyncpg has no pool_size/max_overflow split: its pool holds between min_size
and max_size connections, so max_size is the whole quota corral granted
(CORRAL_CONN_QUOTA, or "quota" in the CORRAL_QUOTA_FILE JSON).

Two asyncpg specifics:

- asyncpg does not read PGAPPNAME (it is not libpq). It does honour
  application_name in the URL, which corral adds to DATABASE_URL; this script
  also passes it explicitly as a server setting, taken from the URL or, when
  the URL has none, from PGAPPNAME. Without it, corral cannot attribute the
  job's connections in pg_stat_activity and reports them as external.
- Through a transaction pooler (Supabase's Supavisor on port 6543, PgBouncer
  in transaction mode) asyncpg's prepared-statement cache breaks: set
  DB_STATEMENT_CACHE_SIZE=0 in the job's env. Note that such a pooler hides
  application_name from the server: corral sees the job's live use only
  through PgBouncer's admin console (pooler_admin_url), not through Supavisor.
"""

import asyncio
import json
import logging
import os
import signal
import sys
from urllib.parse import parse_qs, urlsplit

import asyncpg

log = logging.getLogger("scraper")

# Fallback when not run by corral: 5 connections, like a 2 + 3 SQLAlchemy pool.
DEFAULT_QUOTA = 5
DEFAULT_POOL_TIMEOUT = 30      # seconds to wait for a free connection
DEFAULT_POOL_RECYCLE = 1800    # seconds an idle connection may stay open
PAUSE = 2.0                    # seconds between two batches


def env_int(name, default):
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else default
    except ValueError:
        log.warning("ignoring %s=%r: not an integer", name, value)
        return default


def dsn():
    """DATABASE_URL in a form asyncpg accepts (postgres:// or postgresql://,
    without a SQLAlchemy "+driver" suffix). Empty: asyncpg then uses PGHOST,
    PGUSER, PGDATABASE, PGPASSWORD ... like libpq."""
    url = os.environ.get("DATABASE_URL", "").strip()
    scheme, sep, rest = url.partition("://")
    if sep and "+" in scheme:
        url = scheme.split("+", 1)[0] + "://" + rest
    return url or None


def application_name(url):
    """application_name from the URL's query, else PGAPPNAME, else None."""
    if url:
        values = parse_qs(urlsplit(url).query).get("application_name")
        if values and values[-1]:
            return values[-1]
    return os.environ.get("PGAPPNAME") or None


def current_quota():
    """The quota to use now: the quota file first (rewritten on every
    rebalance), then the environment we were started with, then a default."""
    path = os.environ.get("CORRAL_QUOTA_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return max(int(json.load(f)["quota"]), 1)
        except (OSError, ValueError, KeyError) as e:
            log.warning("cannot read quota file %s (%s); using the environment", path, e)
    quota = env_int("CORRAL_CONN_QUOTA", 0)
    if quota <= 0:
        quota = env_int("DB_POOL_SIZE", 0) + env_int("DB_MAX_OVERFLOW", 0)
    return quota if quota > 0 else DEFAULT_QUOTA


async def make_pool():
    """A pool that never holds more than the granted quota."""
    url = dsn()
    quota = current_quota()
    settings = {}
    app = application_name(url)
    if app:
        settings["application_name"] = app
    pool = await asyncpg.create_pool(
        url,
        # min_size connections are opened at once and kept even when idle:
        # keep it small so an idle scraper holds little.
        min_size=1,
        max_size=quota,
        # Closest asyncpg has to SQLAlchemy's pool_recycle: idle connections
        # are closed after this many seconds.
        max_inactive_connection_lifetime=env_int("DB_POOL_RECYCLE", DEFAULT_POOL_RECYCLE),
        server_settings=settings,
        statement_cache_size=env_int("DB_STATEMENT_CACHE_SIZE", 100),
    )
    log.info("pool: max_size=%d application_name=%s", quota, app or "(none)")
    return pool


async def scrape_one(pool, n):
    """One unit of work. Replace with the real thing. Hold a connection only
    while talking to the database, never while waiting on the network."""
    timeout = env_int("DB_POOL_TIMEOUT", DEFAULT_POOL_TIMEOUT)
    async with pool.acquire(timeout=timeout) as conn:
        await conn.fetchval("SELECT 1")
    print(f"processed item {n}", flush=True)


async def main():
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(levelname)s %(message)s",
        stream=sys.stderr,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    resize = asyncio.Event()
    # corral's stop_signal (SIGTERM by default) and Ctrl-C: finish the batch,
    # close the pool, exit before stop_timeout (or corral sends SIGKILL).
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # corral's quota_signal: the quota file has a new quota.
    loop.add_signal_handler(signal.SIGHUP, resize.set)

    pool = await make_pool()
    n = 0
    try:
        while not stop.is_set():
            if resize.is_set():
                resize.clear()
                # New pool first, then close the old one. close() waits for
                # connections still in use to be released; corral hands the
                # connections we gave back to other jobs only once it has
                # measured that we really closed them.
                old, pool = pool, await make_pool()
                try:
                    await asyncio.wait_for(old.close(), timeout=30)
                except asyncio.TimeoutError:
                    old.terminate()
            # One batch: as many concurrent fetches as the pool may hold.
            batch = [scrape_one(pool, n + i + 1) for i in range(pool.get_max_size())]
            for result in await asyncio.gather(*batch, return_exceptions=True):
                n += 1
                if isinstance(result, Exception):
                    log.error("item %d failed: %s", n, result)
            # Sleep, but wake at once on SIGTERM or SIGHUP.
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(resize.wait())]
            await asyncio.wait(waiters, timeout=PAUSE, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
    finally:
        await pool.close()
    log.info("stopped after %d items", n)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
