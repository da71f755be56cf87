#!/usr/bin/env bash
# bench/memory.sh: where `fleetgate serve`'s resident memory goes, with bench/proxy.sh's load.
#
# Starts a 1 KiB nginx upstream (CPU 0) and `fleetgate serve` as bench/proxy.sh does (CPU 1,
# TOKIO_WORKER_THREADS=1, one gateway worker), configures it through its API with 1,000 prefix
# routes plus /bench, runs `wrk -t1 -c64` against /bench (2 s warm-up, then DURATION s), and
# prints VmRSS at idle after start, after the configuration was applied and right after the
# run, each split by /proc/<pid>/smaps into: the fleetgate binary (file-backed), other files
# (shared libraries), mimalloc's arena, the C allocator's heaps (SQLite allocates through
# malloc), stacks and other anonymous memory. The smaps files are kept in $OUT.
#
# With MODE=edge, the process measured is a gateway-only `fleetgate edge` (CPU 1,
# TOKIO_WORKER_THREADS=1) registered with a `fleetgate manager` on CPU 0: the routes are
# created through the manager's API as before, reach the edge over the node link, and wrk
# runs against the edge's gateway. That is the data plane of a fleet, without the store,
# the API and the dashboard in its process.
#
# Usage:  bench/memory.sh            Env: FLEETGATE=target/release/fleetgate DURATION=10
#                                         MODE=serve|edge OUT=bench/out/memory-<timestamp>
# Needs nginx, wrk, curl and taskset (bench/proxy.sh installs them). Not a quiet-host
# measurement like bench/proxy.sh; memory hardly depends on CPU contention.
set -euo pipefail
cd "$(dirname "$0")/.."
FLEETGATE=${FLEETGATE:-target/release/fleetgate}
DURATION=${DURATION:-10}
MODE=${MODE:-serve}
[[ $MODE == serve || $MODE == edge ]] || { echo "memory.sh: MODE must be serve or edge" >&2; exit 1; }
OUT=${OUT:-bench/out/memory-$(date -u +%Y%m%dT%H%M%SZ)}
ROUTES=1000
die() { echo "memory.sh: $*" >&2; exit 1; }
export PATH="$PATH:/usr/sbin:/sbin"
for c in nginx wrk curl taskset python3; do command -v $c >/dev/null || die "$c is missing"; done
[[ -x $FLEETGATE ]] || die "no $FLEETGATE: cargo build --release -p fleetgate"
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/fleetgate-memory.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port) API_PORT=$(port) GW=$(port) TLS=$(port) NODE_PORT=$(port)

mkdir -p "$WORK/up"
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')
cat >"$WORK/up/nginx.conf" <<EOF
$([[ $(id -u) -eq 0 ]] && echo "user root;")
worker_processes 1; daemon off; master_process on; pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log warn;
events { worker_connections 4096; }
http {
    access_log off; keepalive_timeout 120s; keepalive_requests 1000000;
    client_body_temp_path $WORK/up/b; proxy_temp_path $WORK/up/p; fastcgi_temp_path $WORK/up/f;
    uwsgi_temp_path $WORK/up/u; scgi_temp_path $WORK/up/s;
    server { listen 127.0.0.1:$UP backlog=4096; default_type text/plain; location / { return 200 "$BODY"; } }
}
EOF
taskset -c 0 nginx -p "$WORK/up" -e "$WORK/up/error.log" -c "$WORK/up/nginx.conf" >"$WORK/up.log" 2>&1 &
PIDS+=($!)

TOKEN="memory-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
(
    while read -r var; do unset "$var"; done < <(compgen -e | grep '^FLEETGATE_' || true)
    export FLEETGATE_BOOTSTRAP_TOKEN=$TOKEN FLEETGATE_ADMIN_PASSWORD="$TOKEN-admin"
    export FLEETGATE_LOG_LEVEL=warn TOKIO_WORKER_THREADS=1
    if [[ $MODE == edge ]]; then
        exec taskset -c 0 "$FLEETGATE" manager --data-dir "$WORK/data" --listen "127.0.0.1:$API_PORT" \
            --node-listen "127.0.0.1:$NODE_PORT"
    fi
    exec taskset -c 1 "$FLEETGATE" serve --data-dir "$WORK/data" --listen "127.0.0.1:$API_PORT" \
        --gateway-listen "127.0.0.1:$GW" --gateway-tls-listen "127.0.0.1:$TLS" \
        --node-listen "127.0.0.1:$NODE_PORT"
) >"$OUT/fleetgate.log" 2>&1 &
PID=$!
PIDS+=("$PID")
API="http://127.0.0.1:$API_PORT"
for _ in $(seq 300); do curl -s -o /dev/null --max-time 1 "$API/health" && break; sleep 0.1; done

if [[ $MODE == edge ]]; then
    # The measured process is the edge; the manager only configures it.
    node=$(curl -sS -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        --data '{"name":"memory-edge"}' "$API/api/v1/nodes")
    NODE_ID=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$node")
    (
        while read -r var; do unset "$var"; done < <(compgen -e | grep '^FLEETGATE_' || true)
        export FLEETGATE_EDGE_TOKEN
        FLEETGATE_EDGE_TOKEN=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["registration_token"])' "$node")
        export FLEETGATE_LOG_LEVEL=warn TOKIO_WORKER_THREADS=1
        exec taskset -c 1 "$FLEETGATE" edge --data-dir "$WORK/edge" --gateway-listen "127.0.0.1:$GW" \
            --manager "wss://localhost:$NODE_PORT" --manager-ca-cert "$WORK/data/node-tls.crt"
    ) >"$OUT/edge.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    for _ in $(seq 300); do
        curl -s -H "Authorization: Bearer $TOKEN" "$API/api/v1/nodes/$NODE_ID" | grep -q '"status":"online"' && break
        sleep 0.1
    done
fi

# snap FILE LABEL: VmRSS and its split by mapping, from /proc/$PID/smaps (kept as smaps-FILE.txt).
snap() {
    cp "/proc/$PID/smaps" "$OUT/smaps-$1.txt"
    printf '%s (%s threads)\n' "$2" "$(awk '/^Threads:/ {print $2}' "/proc/$PID/status")" | tee -a "$OUT/rss.txt"
    python3 - "$OUT/smaps-$1.txt" "$(readlink -f "$FLEETGATE")" <<'PY' | tee -a "$OUT/rss.txt"
import re, sys
maps, cur = [], None
for line in open(sys.argv[1]):
    m = re.match(r'^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$', line)
    if m:
        cur = {'start': int(m[1], 16), 'size': int(m[2], 16) - int(m[1], 16), 'name': m[4].strip(), 'Rss': 0, 'AnonHugePages': 0}
        maps.append(cur)
    elif cur is not None and line.split(':')[0] in ('Rss', 'AnonHugePages'):
        cur[line.split(':')[0]] = int(line.split()[1])
def kind(m):
    if m['name'] == sys.argv[2]: return 'fleetgate binary (text, read-only data, data)'
    if m['name'].startswith('/'): return 'other files (shared libraries)'
    if m['name'] == '[stack]': return 'main thread stack'
    if m['name'].startswith('['): return 'other ([vdso], [heap], ...)'
    if m['size'] >= 1 << 30: return "mimalloc arena"
    if m['start'] % (64 << 20) == 0 and m['size'] <= 64 << 20: return 'C malloc heaps of threads (SQLite)'
    return 'other anonymous (thread stacks, ...)'
tot, thp, by = 0, 0, {}
for m in maps:
    by[kind(m)] = by.get(kind(m), 0) + m['Rss']; tot += m['Rss']; thp += m['AnonHugePages']
for k, v in sorted(by.items(), key=lambda kv: -kv[1]):
    print(f'  {v / 1024:6.1f} MiB  {k}')
print(f'  {tot / 1024:6.1f} MiB  VmRSS (of which transparent huge pages: {thp / 1024:.1f} MiB)')
PY
}
sleep 2
snap start "idle after start"

api() {
    local code
    code=$(curl -sS -o "$WORK/resp" -w '%{http_code}' -X "$1" -H "Authorization: Bearer $TOKEN" \
        -H 'Content-Type: application/json' --data "$3" "$API$2")
    [[ $code == "$4" ]] || die "$1 $2 answered $code: $(head -c 300 "$WORK/resp")"
}
api PUT /api/v1/settings '{"api":{"rate_limit_per_minute":0}}' 200
api POST /api/v1/upstreams "{\"name\":\"bench\",\"targets\":[{\"url\":\"http://127.0.0.1:$UP\"}],\"circuit_breaker\":{\"enabled\":true}}" 201
{
    echo silent
    block() { printf 'url = "%s"\nrequest = "POST"\nheader = "Authorization: Bearer %s"\nheader = "Content-Type: application/json"\ndata = "{\\"id\\":\\"%s\\",\\"path\\":\\"%s\\",\\"upstream\\":\\"bench\\"}"\noutput = "/dev/null"\nwrite-out = "%%{http_code}\\n"\n' "$API/api/v1/routes" "$TOKEN" "$1" "$2"; }
    for ((i = 0; i < ROUTES; i++)); do block "r$i" "/svc$i"; echo next; done
    block bench /bench
} >"$WORK/routes.curl"
created=$(curl -K "$WORK/routes.curl" | grep -c '^201$' || true)
((created == ROUTES + 1)) || die "$created of $((ROUTES + 1)) routes created"
for _ in $(seq 600); do
    h=$(curl -s "$API/health")
    rev=$(grep -o '"revision":[0-9]*' <<<"$h" | cut -d: -f2 || true)
    if [[ $MODE == edge ]]; then
        n=$(curl -s -H "Authorization: Bearer $TOKEN" "$API/api/v1/nodes/$NODE_ID")
        [[ -n $rev && $(grep -o '"applied_revision":[0-9]*' <<<"$n" | cut -d: -f2 || true) == "$rev" ]] && break
    else
        [[ -n $rev && $rev == "$(grep -o '"gateway_revision":[0-9]*' <<<"$h" | cut -d: -f2 || true)" ]] && break
    fi
    sleep 0.1
done
[[ $(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://127.0.0.1:$GW/bench") == "200 1024" ]] ||
    die "/bench does not answer 200 with 1 KiB"
sleep 2
snap configured "configured: $((ROUTES + 1)) routes, revision $rev applied"

taskset -c 0 wrk -t1 -c64 -d2s "http://127.0.0.1:$GW/bench" >/dev/null
taskset -c 0 wrk -t1 -c64 -d"${DURATION}s" "http://127.0.0.1:$GW/bench" >"$OUT/wrk.txt"
snap loaded "right after wrk -c64 -d${DURATION}s ($(awk '/Requests\/sec/ {printf "%.0f req/s", $2}' "$OUT/wrk.txt"))"
echo "smaps and wrk output in $OUT"
