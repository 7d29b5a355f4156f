#!/usr/bin/env bash
# Benchmark: round-trip time of `corral status` with 100 jobs versus
# `supervisorctl status` on the same 100 programs (`sleep 100000`).
# Usage: bench/status.sh [RUNS]   (default 50; see bench/README.md)
set -euo pipefail

RUNS="${1:-${RUNS:-50}}"
JOBS="${JOBS:-100}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

need_root_apt() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: $1 is missing and installing it needs root (apt-get install -y $2)" >&2
        exit 2
    fi
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

if ! command -v supervisorctl >/dev/null; then
    echo "installing supervisor (apt-get install -y supervisor)..." >&2
    need_root_apt supervisorctl supervisor
fi
if ! command -v hyperfine >/dev/null && [ "$(id -u)" -eq 0 ]; then
    echo "installing hyperfine (optional)..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null 2>&1; } \
        || echo "hyperfine not available: timing with a Python loop" >&2
fi

echo "building corral (release)..." >&2
cargo build --release --quiet --bin corral
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
CORRAL="$TARGET_DIR/release/corral"

WORK="$(mktemp -d /tmp/corral-bench.XXXXXX)"
CORRAL_PID=""
cleanup() {
    if [ -n "$CORRAL_PID" ] && kill -0 "$CORRAL_PID" 2>/dev/null; then
        kill -TERM "$CORRAL_PID" 2>/dev/null || true
        wait "$CORRAL_PID" 2>/dev/null || true
    fi
    if [ -f "$WORK/supervisord.pid" ]; then
        supervisorctl -c "$WORK/supervisord.conf" shutdown >/dev/null 2>&1 || true
        for _ in $(seq 1 100); do
            kill -0 "$(cat "$WORK/supervisord.pid" 2>/dev/null)" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# --- supervisord: its own socket, pidfile and logs in $WORK ---
{
    cat <<CONF
[unix_http_server]
file=$WORK/supervisor.sock
chmod=0700

[supervisord]
logfile=$WORK/supervisord.log
pidfile=$WORK/supervisord.pid
childlogdir=$WORK/childlogs
user=root

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://$WORK/supervisor.sock
CONF
    for i in $(seq -w 1 "$JOBS"); do
        printf '\n[program:job%s]\ncommand=sleep 100000\nstartsecs=0\nautorestart=true\n' "$i"
    done
} >"$WORK/supervisord.conf"
mkdir -p "$WORK/childlogs"

# --- corral: the same programs ---
{
    printf '[supervisor]\nsocket = "%s/corral.sock"\nlock_dir = "%s/locks"\n' "$WORK" "$WORK"
    for i in $(seq -w 1 "$JOBS"); do
        # Both supervisors run the same command line: corral must not take
        # supervisord's copies for duplicates (SPEC §7).
        printf '\n[jobs.job%s]\ncommand = ["sleep", "100000"]\nhealthy_after = "0s"\non_duplicate = "ignore"\n' "$i"
    done
} >"$WORK/supervisor.toml"

echo "starting supervisord and corral with $JOBS programs each..." >&2
supervisord -c "$WORK/supervisord.conf"
"$CORRAL" run -c "$WORK/supervisor.toml" >"$WORK/corral.log" 2>&1 &
CORRAL_PID=$!

SUPCTL=(supervisorctl -c "$WORK/supervisord.conf" status)
CORCTL=("$CORRAL" -s "$WORK/corral.sock" status)

wait_running() { # NAME COMMAND... : until JOBS lines say RUNNING
    local name=$1; shift
    for _ in $(seq 1 300); do
        local n
        n=$("$@" 2>/dev/null | grep -c RUNNING || true)
        if [ "$n" -eq "$JOBS" ]; then return 0; fi
        sleep 0.1
    done
    echo "error: $name did not get $JOBS programs running" >&2
    exit 1
}
wait_running supervisord "${SUPCTL[@]}"
wait_running corral "${CORCTL[@]}"
echo "all $JOBS programs running under both; timing $RUNS status round trips each" >&2

python3 - "$RUNS" "$WORK" "${CORCTL[*]}" "${SUPCTL[*]}" <<'PY'
import json, os, shutil, statistics, subprocess, sys, time

runs, work, corral, supctl = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(" "), sys.argv[4].split(" ")

def loop(cmd):
    for _ in range(3):  # warm-up: page cache, Python bytecode cache
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append((time.perf_counter() - t) * 1000)
    return times

def hyperfine(cmds):
    out = os.path.join(work, "hyperfine.json")
    subprocess.run(["hyperfine", "-N", "-i", "--style", "none", "--warmup", "3", "--runs", str(runs),
                    "--export-json", out] + [" ".join(c) for c in cmds],
                   check=True, stdout=subprocess.DEVNULL)
    res = json.load(open(out))["results"]
    return [[t * 1000 for t in r["times"]] for r in res]

tool = "hyperfine" if shutil.which("hyperfine") else "python perf_counter loop"
if shutil.which("hyperfine"):
    c, s = hyperfine([corral, supctl])
else:
    c, s = loop(corral), loop(supctl)

print(f"status round trip, {runs} runs each, 100 programs, timed with {tool} (ms)")
print(f"{'':<22}{'median':>9}{'min':>9}{'max':>9}")
for name, t in (("corral status", c), ("supervisorctl status", s)):
    print(f"{name:<22}{statistics.median(t):>9.2f}{min(t):>9.2f}{max(t):>9.2f}")
print(f"ratio supervisorctl/corral (median): {statistics.median(s) / statistics.median(c):.1f}x")
PY

# For context: the daemons alone, without starting a client process (corral's
# JSON line over its socket; supervisord's XML-RPC getAllProcessInfo, which is
# what `supervisorctl status` calls). Needs the Python that has supervisor's
# package (Debian's /usr/bin/python3 after apt-get install supervisor).
PYSUP=/usr/bin/python3
"$PYSUP" -c 'import supervisor.xmlrpc' 2>/dev/null || PYSUP=python3
"$PYSUP" - "$RUNS" "$WORK" <<'PY'
import socket, statistics, sys, time
runs, work = int(sys.argv[1]), sys.argv[2]

def corral():
    s = socket.socket(socket.AF_UNIX)
    s.connect(f"{work}/corral.sock")
    s.sendall(b'{"v":1,"cmd":"status"}\n')
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        buf += chunk
    s.close()
    assert buf.count(b'"running"') >= 100, buf[:200]

calls = [("corral socket", corral)]
try:
    import xmlrpc.client
    from supervisor.xmlrpc import SupervisorTransport
    def supervisord():
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{work}/supervisor.sock"))
        assert len(proxy.supervisor.getAllProcessInfo()) >= 100
    calls.append(("supervisord XML-RPC", supervisord))
except ImportError:
    pass

print(f"daemon only, no client process ({runs} runs, ms)")
for name, f in calls:
    for _ in range(3):
        f()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        f()
        t.append((time.perf_counter() - t0) * 1000)
    print(f"{name:<22}{statistics.median(t):>9.2f}{min(t):>9.2f}{max(t):>9.2f}")
PY
