#!/bin/sh
# A scraper that leaves its "headless browser" behind: it starts a background
# child in a new session (so it escapes the job's process group, like a
# daemonizing Chrome helper), then exits. corral adopts the orphan and the
# periodic sweep (reap_interval) terminates it.
setsid sleep 600 >/dev/null 2>&1 &
echo "launched browser helper pid $!, now exiting without cleaning up"
sleep 5
exit 0
