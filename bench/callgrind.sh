#!/usr/bin/env bash
# Instructions per proxied request, user space, counted by valgrind's callgrind:
# the repeatable companion of bench/proxy.sh's req/s (see PERFORMANCE.md).
#
# Starts a 1 KiB nginx upstream, nginx as a proxy and Fleetgate (release build,
# 1 worker, $ROUTES + 1 routes), each under callgrind with instrumentation switched on
# only around a fixed `h2load --h1` run of $REQUESTS requests over 64
# connections, and prints Ir per request for both. The top functions of
# Fleetgate's profile go to $OUT/fleetgate.top, and the `callgrind` section of
# BENCHMARKS.md ($REPORT) is rewritten with the numbers of this run.
#
#   REQUESTS=20000 ROUTES=1000 bench/callgrind.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/keep-sections.sh
source bench/lib/keep-sections.sh
REPORT="${REPORT:-BENCHMARKS.md}"

REQUESTS="${REQUESTS:-20000}"
ROUTES="${ROUTES:-1000}"
OUT="${OUT:-bench/out/callgrind-$(date -u +%Y%m%dT%H%M%SZ)}"
FLEETGATE="${FLEETGATE:-target/release/fleetgate}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

die() { echo "callgrind.sh: $*" >&2; exit 1; }
export PATH="$PATH:/usr/sbin:/sbin"
need=()
for pair in valgrind:valgrind callgrind_control:valgrind callgrind_annotate:valgrind h2load:nghttp2-client nginx:nginx-light curl:curl; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if ((${#need[@]})); then
    [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null ||
        die "missing packages ${need[*]}; run as root on Debian so the script can install them"
    echo "callgrind.sh: installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null ||
        die "apt-get install ${need[*]} failed"
fi
[[ -x $FLEETGATE ]] || die "no $FLEETGATE: cargo build --release -p fleetgate"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_http() { # url
    for _ in $(seq 1 600); do
        curl -fs -o /dev/null --max-time 2 "$1" && return 0
        sleep 0.1
    done
    die "$1 never answered"
}

BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')
UP_PORT=$(free_port)
NG_PORT=$(free_port)
mkdir -p "$OUT/upstream" "$OUT/nginx"
cat >"$OUT/upstream/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $OUT/upstream/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$UP_PORT backlog=4096; location / { return 200 "$BODY"; } }
}
EOF
taskset -c 0 nginx -p "$OUT/upstream" -e "$OUT/upstream/error.log" -c "$OUT/upstream/nginx.conf" &
PIDS+=($!)
wait_http "http://127.0.0.1:$UP_PORT/"

# count NAME PID URL: switches collection on for one h2load run, then dumps.
count() {
    local name=$1 pid=$2 url=$3
    h2load --h1 -c64 -n2000 "$url" >/dev/null # warm the pools, outside the count
    callgrind_control -i on "$pid" >/dev/null
    h2load --h1 -c64 -n"$REQUESTS" "$url" >"$OUT/$name.h2load"
    callgrind_control -i off "$pid" >/dev/null
    callgrind_control -d "$name" "$pid" >/dev/null
    grep -q "$REQUESTS succeeded" "$OUT/$name.h2load" || die "$name: not every request succeeded: $(grep succeeded "$OUT/$name.h2load")"
}

# nginx as the proxy, one worker, the upstream through a keep-alive pool.
cat >"$OUT/nginx/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $OUT/nginx/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream bench { server 127.0.0.1:$UP_PORT; keepalive 128; }
    server {
        listen 127.0.0.1:$NG_PORT backlog=4096;
        location / { proxy_pass http://bench; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
taskset -c 1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/nginx.%p.out" \
    nginx -p "$OUT/nginx" -e "$OUT/nginx/error.log" -c "$OUT/nginx/nginx.conf" 2>"$OUT/nginx.valgrind" &
NG_PID=$!
PIDS+=("$NG_PID")
wait_http "http://127.0.0.1:$NG_PORT/bench"
count nginx "$NG_PID" "http://127.0.0.1:$NG_PORT/bench"

# Fleetgate, one gateway worker, configured through its API before counting.
FG_API=$(free_port)
FG_GW=$(free_port)
TOKEN="bench-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
(
    while read -r var; do unset "$var"; done < <(compgen -e | grep '^FLEETGATE_' || true)
    export FLEETGATE_BOOTSTRAP_TOKEN="$TOKEN" FLEETGATE_ADMIN_PASSWORD="$TOKEN-admin"
    export FLEETGATE_LOG_LEVEL=warn TOKIO_WORKER_THREADS=1
    exec taskset -c 1 valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$OUT/fleetgate.%p.out" \
        "$FLEETGATE" serve --data-dir "$OUT/fleetgate-data" --listen "127.0.0.1:$FG_API" \
        --gateway-listen "127.0.0.1:$FG_GW" --gateway-tls-listen 127.0.0.1:0
) 2>"$OUT/fleetgate.valgrind" &
FG_PID=$!
PIDS+=("$FG_PID")
API="http://127.0.0.1:$FG_API"
wait_http "$API/health"
auth=(-H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json')
curl -fsS -o /dev/null "${auth[@]}" -X PUT --data '{"api":{"rate_limit_per_minute":0}}' "$API/api/v1/settings"
curl -fsS -o /dev/null "${auth[@]}" --data "{\"name\":\"bench\",\"targets\":[{\"url\":\"http://127.0.0.1:$UP_PORT\"}],\"circuit_breaker\":{\"enabled\":true}}" "$API/api/v1/upstreams"
{
    for ((i = 0; i < ROUTES; i++)); do
        printf 'url = "%s/api/v1/routes"\nheader = "Authorization: Bearer %s"\nheader = "Content-Type: application/json"\ndata = "{\\"id\\":\\"r%d\\",\\"path\\":\\"/svc%d\\",\\"upstream\\":\\"bench\\"}"\noutput = "/dev/null"\nnext\n' "$API" "$TOKEN" "$i" "$i"
    done
    printf 'url = "%s/api/v1/routes"\nheader = "Authorization: Bearer %s"\nheader = "Content-Type: application/json"\ndata = "{\\"id\\":\\"bench\\",\\"path\\":\\"/bench\\",\\"upstream\\":\\"bench\\"}"\noutput = "/dev/null"\n' "$API" "$TOKEN"
} >"$OUT/routes.curl"
curl -fsS -K "$OUT/routes.curl"
for _ in $(seq 1 600); do
    curl -fs -o /dev/null "http://127.0.0.1:$FG_GW/bench" && break
    sleep 0.1
done
count fleetgate "$FG_PID" "http://127.0.0.1:$FG_GW/bench"

ir() { # profile file -> total Ir
    callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}'
}
nginx_ir=0
for f in "$OUT"/nginx.*.out.*; do nginx_ir=$((nginx_ir + $(ir "$f"))); done
fg_file=$(ls "$OUT"/fleetgate.*.out.* | head -n 1)
fg_ir=$(ir "$fg_file")
callgrind_annotate --inclusive=no "$fg_file" >"$OUT/fleetgate.annotate" 2>/dev/null || true
head -n 60 "$OUT/fleetgate.annotate" >"$OUT/fleetgate.top"
printf 'requests counted: %d\n' "$REQUESTS"
printf 'nginx:     %d instructions/request\n' $((nginx_ir / REQUESTS))
printf 'Fleetgate: %d instructions/request (%sx nginx)\n' $((fg_ir / REQUESTS)) "$(awk -v a="$fg_ir" -v b="$nginx_ir" 'BEGIN {printf "%.2f", a / b}')"
echo "profiles and the top of Fleetgate's in $OUT"

# The section of BENCHMARKS.md this script owns.
per_req() { awk -v n="$1" -v r="$REQUESTS" 'BEGIN {printf "%\047d", n / r}'; }
incl_of() { # function-name pattern -> inclusive Ir of the first matching line
    callgrind_annotate --inclusive=yes --threshold=100 "$fg_file" 2>/dev/null |
        awk -v pat="$1" '!done && index($0, pat) {gsub(",", "", $1); print $1; done = 1}'
}
gw_ir=$(incl_of 'fleetgate_proxy::server::serve')
mt_ir=$(incl_of 'tokio::runtime::scheduler::multi_thread::worker::Context::run_task ')
section=$(mktemp)
{
    echo "## Instructions per request (callgrind)"
    echo
    echo "Generated by \`bench/callgrind.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') from commit \`$(git rev-parse --short HEAD)\`:"
    echo "user-space instructions (Ir) counted by valgrind's callgrind over a fixed \`h2load --h1 -c64 -n$REQUESTS\`"
    echo "run against \`/bench\`, after a 2,000-request warm-up; nginx (1 worker, keep-alive pool) and Fleetgate"
    echo "(release build, 1 gateway worker, $((ROUTES + 1)) routes) in front of the same 1 KiB nginx upstream."
    echo "Repeatable to well under 1%, where req/s drifts by ~20% with the host."
    echo
    echo "| proxy | instructions/request | ÷ nginx |"
    echo "|---|---:|---:|"
    echo "| nginx 1.22 | $(per_req "$nginx_ir") | 1.00 |"
    echo "| Fleetgate (whole process) | $(per_req "$fg_ir") | $(awk -v a="$fg_ir" -v b="$nginx_ir" 'BEGIN {printf "%.2f", a / b}') |"
    echo
    echo "Of Fleetgate's count, the client connections' tasks (\`server::serve\`, inclusive: parsing,"
    echo "routing, the upstream exchange, writing the response) took $(per_req "${gw_ir:-0}") per request; the"
    echo "manager's tasks (its multi-thread runtime: the once-a-second metrics sampler, the store)"
    echo "took $(per_req "${mt_ir:-0}"), a share valgrind inflates since it slows requests, not the clock."
    echo
    echo "Where Fleetgate's go (self cost per request, top functions):"
    echo
    echo "| function | instructions/request |"
    echo "|---|---:|"
    awk -v r="$REQUESTS" '/^ *[0-9,]+ .*\(/ && !/PROGRAM TOTALS/ {
            n = $1; gsub(",", "", n); f = $0; sub(/^[^)]*\) +/, "", f); sub(/ \[[^]]*\]$/, "", f)
            if (!sub(/^\?\?\?:/, "", f)) sub(/^[^ ]*\.[A-Za-z]+:/, "", f)
            if (++k <= 12) printf "| `%s` | %\047d |\n", f, n / r }' "$OUT/fleetgate.annotate"
} >"$section"
put_section "$REPORT" callgrind "$section"
rm -f "$section"
echo "wrote the callgrind section of $REPORT"
