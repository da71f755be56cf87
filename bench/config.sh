#!/usr/bin/env bash
# bench/config.sh: how long a configuration change takes, from the API write to the
# gateway serving it, with 1,000 routes and 100,000 published redirects in force.
#
# Method: `fleetgate serve` (release build, SQLite, one gateway worker) on CPU 1; the
# client and a small upstream on CPU 0. The configuration holds one upstream and 1,000
# prefix routes (imported as one document) and a project with 100,000 published
# redirects (imported as CSV, then published). Then CHANGES times, in turn: one route
# is created through the API (POST /api/v1/routes, the write timed from request to
# answer), and the client asks the gateway for the new route's path over a kept-alive
# connection until it answers 200 instead of 404 (the change-to-served time, from the
# start of the write). Every tenth change is a route update instead, and its new path
# is what the client waits for. The report gives p50/p99/max of both times.
#
# Usage:  bench/config.sh
# Env:    CHANGES=100 ROUTES=1000 REDIRECTS=100000 NO_BUILD=1 KEEP_TMP=1 OUT=BENCHMARKS.md
# Writes the section `config-path` of BENCHMARKS.md; raw outputs go to
# bench/out/config-<timestamp>/ (git-ignored).
set -euo pipefail

CHANGES=${CHANGES:-100}
ROUTES=${ROUTES:-1000}
REDIRECTS=${REDIRECTS:-100000}
OUT=${OUT:-BENCHMARKS.md}

log() { printf '[config.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf 'config.sh: error: %s\n' "$*" >&2
    exit 1
}
for v in CHANGES ROUTES REDIRECTS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
((CHANGES >= 1)) || die "CHANGES must be at least 1"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$ROOT"
# shellcheck source=lib/keep-sections.sh
source "$SCRIPT_DIR/lib/keep-sections.sh"
# shellcheck source=lib/fleetgate.sh
source "$SCRIPT_DIR/lib/fleetgate.sh"
case $OUT in /*) OUT_PATH=$OUT ;; *) OUT_PATH="$ROOT/$OUT" ;; esac

missing=()
for c in curl taskset python3; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null || die "missing ${missing[*]}"
    log "installing ${missing[*]}"
    pkgs=()
    for m in "${missing[@]}"; do case $m in taskset) pkgs+=(util-linux) ;; *) pkgs+=("$m") ;; esac; done
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
taskset -c 0 true 2>/dev/null && taskset -c 1 true 2>/dev/null || die "needs CPUs 0 and 1"

if [[ -z ${NO_BUILD:-} ]]; then
    log "building fleetgate (release)"
    cargo build --release -q -p fleetgate
fi
FLEETGATE=${FLEETGATE:-"$ROOT/target/release/fleetgate"}
[[ -x $FLEETGATE ]] || die "$FLEETGATE is missing (unset NO_BUILD)"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RAW="$ROOT/bench/out/config-$STAMP"
mkdir -p "$RAW"
WORK=$(mktemp -d)
PID=""
UP_PID=""
cleanup() {
    for p in $PID $UP_PID; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    [[ -n ${KEEP_TMP:-} ]] && log "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

UP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# The upstream: answers 200 to everything, on kept-alive connections.
taskset -c 0 python3 - "$UP_PORT" >"$RAW/upstream.log" 2>&1 <<'EOF' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        # One write for the whole answer: a head and a body written apart would meet
        # Nagle's algorithm and the gateway's delayed ACK (40 ms) on every request.
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.wfile.flush()
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
UP_PID=$!

start_fleetgate "$WORK/data" "$RAW/fleetgate.log"
API_PORT=${API##*:}

json PUT /api/v1/settings '{"api":{"rate_limit_per_minute":0}}'
python3 - "$ROUTES" "$UP_PORT" >"$WORK/config.json" <<'EOF'
import json, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
print(json.dumps({
    "format_version": 1,
    "settings": {"api": {"rate_limit_per_minute": 0}},
    "upstreams": [{"name": "up", "targets": [{"url": f"http://127.0.0.1:{port}"}]}],
    "routes": [{"id": f"r{i:04}", "path": f"/svc-{i}", "upstream": "up"} for i in range(n)],
}))
EOF
log "importing $ROUTES routes"
api POST /api/v1/import -H 'Content-Type: application/json' --data-binary @"$WORK/config.json" >/dev/null

json POST /api/v1/namespaces '{"name":"bench"}'
json POST /api/v1/namespaces/bench/projects '{"name":"big","hosts":["big.test"]}'
python3 - "$REDIRECTS" >"$WORK/big.csv" <<'EOF'
import sys
n = int(sys.argv[1])
print("type,source,target,status")
for i in range(n):
    k = i % 10
    if k < 8:
        print(f"BASIC,/page-{i}/index.html,/new/{i},MOVED_PERMANENT")
    else:
        print(f"REGEX,^/blog-{i}/(\\d+)$,/articles/{i}/$1,FOUND")
EOF
log "importing and publishing $REDIRECTS redirects"
api POST /api/v1/namespaces/bench/projects/big/redirects/import -H 'Content-Type: text/csv' \
    --data-binary @"$WORK/big.csv" >/dev/null
api POST /api/v1/namespaces/bench/projects/big/publish >/dev/null
for _ in $(seq 600); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: big.test' "$GW/page-1/index.html")
    [[ $code == 301 ]] && break
    sleep 0.05
done
[[ $code == 301 ]] || die "the published set never went live"
RSS_BEFORE=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")

log "measuring $CHANGES changes"
taskset -c 0 python3 - "$API_PORT" "$GW_PORT" "$TOKEN" "$CHANGES" "$RAW/changes.csv" <<'EOF'
import http.client, json, sys, time
api_port, gw_port, token, changes, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
import socket
def connect(port):
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.connect()
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c
api = connect(api_port)
gw = connect(gw_port)
auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

def call(method, path, body):
    api.request(method, path, body=json.dumps(body), headers=auth)
    r = api.getresponse()
    data = r.read()
    if r.status >= 300:
        sys.exit(f"{method} {path}: {r.status} {data[:300]!r}")

def status(path):
    gw.request("GET", path)
    r = gw.getresponse()
    r.read()
    return r.status

rows = []
for i in range(changes):
    if i % 10 == 9:
        # An update: route r0000 moves to a new path.
        kind, path = "update", f"/moved-{i}"
        t0 = time.perf_counter()
        call("PUT", "/api/v1/routes/r0000", {"path": path, "upstream": "up"})
    else:
        kind, path = "create", f"/probe-{i}"
        t0 = time.perf_counter()
        call("POST", "/api/v1/routes", {"id": f"probe-{i:03}", "path": path, "upstream": "up"})
    t_write = time.perf_counter() - t0
    deadline = t0 + 10
    while status(path) != 200:
        if time.perf_counter() > deadline:
            sys.exit(f"change {i} ({kind} {path}) not served after 10 s")
    t_served = time.perf_counter() - t0
    rows.append((i, kind, t_write * 1000, t_served * 1000))
with open(out, "w") as f:
    f.write("change,kind,write_ms,served_ms\n")
    for r in rows:
        f.write(f"{r[0]},{r[1]},{r[2]:.3f},{r[3]:.3f}\n")
EOF
RSS_AFTER=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
ROUTES_NOW=$(api GET /api/v1/routes?limit=1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')

STATS=$(python3 - "$RAW/changes.csv" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
def q(xs, p):
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(p * (len(xs) - 1)))))
    return xs[k]
for col in ("write_ms", "served_ms"):
    xs = [float(r[col]) for r in rows]
    print(f"{col} {q(xs, 0.5):.1f} {q(xs, 0.99):.1f} {max(xs):.1f}")
EOF
)
read -r _ W50 W99 WMAX <<<"$(sed -n 1p <<<"$STATS")"
read -r _ S50 S99 SMAX <<<"$(sed -n 2p <<<"$STATS")"
log "write p50 $W50 ms p99 $W99 ms; served p50 $S50 ms p99 $S99 ms"

SECTION="$WORK/section.md"
{
    echo "## Configuration change to the data plane"
    echo
    echo "\`bench/config.sh\` at $(git rev-parse --short HEAD) ($(date -u +%Y-%m-%d)): \`fleetgate serve\` (release, SQLite, one gateway"
    echo "worker on CPU 1) holding $ROUTES prefix routes and a project with $REDIRECTS published redirects;"
    echo "$CHANGES changes through the API, one at a time (nine route creations, then one route update,"
    echo "repeated; $ROUTES_NOW routes at the end). *Write*: the API request, from sending it to its answer"
    echo "(validated and compiled inside the write transaction, committed as a revision, published)."
    echo "*Served*: from sending the write until the gateway answers the changed path (polled over a"
    echo "kept-alive connection)."
    echo
    echo "| | p50 | p99 | max | target |"
    echo "|---|---|---|---|---|"
    echo "| write | $W50 ms | $W99 ms | $WMAX ms | p99 < 20 ms |"
    echo "| change to served | $S50 ms | $S99 ms | $SMAX ms | p99 < 100 ms |"
    echo
    echo "RSS of the process: $((RSS_BEFORE / 1024)) MiB with the configuration loaded, $((RSS_AFTER / 1024)) MiB after the changes."
    echo "Per-change times: \`bench/out/config-$STAMP/changes.csv\` (not committed)."
} >"$SECTION"
put_section "$OUT_PATH" config-path "$SECTION"
log "wrote the config-path section of $OUT"
