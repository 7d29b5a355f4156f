#!/bin/sh
# A scraper with a connection pool sized by corral (SPEC §3): it reads its quota from
# CORRAL_QUOTA_FILE, prints it, and on SIGHUP (quota_signal) reads it again and resizes.
# With DATABASE_URL set and psql installed, it keeps DB_POOL_SIZE sessions busy, so
# `corral budget` shows its live use; without, it only prints what it would use.
state=$(mktemp)
trap 'rm -f "$state"' EXIT
trap 'resize' HUP
trap 'echo "stopping with quota $quota"; exit 0' TERM

resize() {
  # {"job":..,"service":..,"quota":Q,"pool_size":P,"max_overflow":O,"generation":G}
  set -- $(sed -n 's/.*"quota":\([0-9]*\),"pool_size":\([0-9]*\),"max_overflow":\([0-9]*\),"generation":\([0-9]*\).*/\1 \2 \3 \4/p' "$CORRAL_QUOTA_FILE")
  quota=$1
  echo "quota $1 (pool $2 + overflow $3)"
  echo "$4" > "$state"
  if [ -n "$DATABASE_URL" ] && command -v psql >/dev/null 2>&1; then
    i=0
    while [ "$i" -lt "$2" ]; do
      # A pool connection: busy while this quota generation lasts, then it closes itself.
      ( while [ "$(cat "$state" 2>/dev/null)" = "$4" ]; do
          psql -X -q "$DATABASE_URL" -c 'SELECT pg_sleep(2)' >/dev/null 2>&1 || sleep 1
        done ) &
      i=$((i + 1))
    done
  fi
}

resize
n=0
while :; do
  n=$((n + 1))
  [ $((n % 5)) -eq 0 ] && echo "scraped $n pages with quota $quota"
  sleep 1 &
  wait $!
done
