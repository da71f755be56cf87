#!/usr/bin/env bash
# bench/proxy.sh: Fleetgate's gateway side by side with nginx and haproxy, in one run.
#
# Method (see /work/shared/PERFORMANCE.md): a 1 KiB upstream (nginx) and the load generator
# (wrk -t1 -c64) on CPU 0, the proxy under test on CPU 1 with one worker thread and a
# keep-alive pool to the upstream; interleaved repetitions; medians of per-repetition ratios
# to nginx. Every proxy carries a 1,000-prefix route table plus the benchmarked /bench route.
#
# Usage:  bench/proxy.sh                       (from any directory)
# Env:    REPS=5        interleaved repetitions
#         DURATION=10   seconds of each measured wrk run
#         WARMUP=2      seconds of warm-up load before each measured run (0 = none)
#         CONNECTIONS=64 wrk connections
#         OUT=BENCHMARKS.md  report to write (relative to the repo root)
#         KEEP_TMP=1    keep the temporary work directory (configs, logs, data dir)
#         NO_BUILD=1    skip `cargo build --release -p fleetgate` (use the existing binary)
#         BIN=path      with WORKERS=2: measure this Fleetgate binary instead of target/release/fleetgate
#                       (implies NO_BUILD=1; the report names it)
#         WAIT_QUIET=30 before each measured run, wait up to this many seconds for a second in which
#                       processes this script did not start use < QUIET_PCT % of a CPU (0 = never wait)
#         QUIET_PCT=10  that threshold; a run during which such load reached it is "contended"
#         RETRIES=2     how many times a contended run is repeated in place (the last attempt counts)
#         NICE=0        nice value for the upstream, the proxies and wrk (e.g. -10 on a shared host so
#                       other work takes less of CPUs 0 and 1; negative values need root)
#         WORKERS=1     1: the method above, writing BENCHMARKS.md apart from its marked sections.
#                       2: the two-worker comparison instead: each proxy runs twice, with one worker and
#                       with two (nginx worker_processes, haproxy nbthread, Fleetgate
#                       FLEETGATE_GATEWAY_WORKERS), and the upstream (nginx, 2 workers), wrk (-t2) and
#                       every proxy share CPUs 0 and 1; only the `two-workers` section of $OUT is rewritten.
# Raw wrk outputs and logs are also kept under bench/out/<timestamp>/ (git-ignored).
set -euo pipefail

REPS=${REPS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
OUT=${OUT:-BENCHMARKS.md}
ROUTES=1000 # plus the benchmarked /bench route
BODY_BYTES=1024

# shellcheck source=lib/keep-sections.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/keep-sections.sh"

log() { printf '[proxy.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf 'proxy.sh: error: %s\n' "$*" >&2
    exit 1
}

NICE=${NICE:-0}
[[ $NICE =~ ^-?[0-9]+$ ]] && ((NICE >= -20 && NICE <= 19)) || die "NICE must be an integer from -20 to 19 (got '$NICE')"
PRIO=""
((NICE == 0)) || PRIO="nice -n $NICE"
WAIT_QUIET=${WAIT_QUIET:-30}
QUIET_PCT=${QUIET_PCT:-10}
RETRIES=${RETRIES:-2}
WORKERS=${WORKERS:-1}
[[ $WORKERS == 1 || $WORKERS == 2 ]] || die "WORKERS must be 1 or 2 (got '$WORKERS')"
# Placement: WORKERS=1 pins the upstream and wrk to CPU 0 and the proxy to CPU 1; WORKERS=2 lets
# all of them share both CPUs (the load generator competes with the proxy there).
if ((WORKERS == 1)); then
    LOAD_CPUS=0 PROXY_CPUS=1 UP_WORKERS=1 WRK_THREADS=1
else
    LOAD_CPUS=0,1 PROXY_CPUS=0,1 UP_WORKERS=2 WRK_THREADS=2
fi
for v in REPS DURATION WARMUP CONNECTIONS WAIT_QUIET QUIET_PCT RETRIES; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
((REPS >= 1)) || die "REPS must be at least 1"
((DURATION >= 1 && DURATION <= 600)) || die "DURATION must be between 1 and 600 seconds"
((WARMUP <= 60)) || die "WARMUP must be at most 60 seconds"
((CONNECTIONS >= 1)) || die "CONNECTIONS must be at least 1"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$ROOT"
[[ -f Cargo.toml && -d crates/fleetgate ]] || die "$ROOT does not look like the Fleetgate workspace"

case $OUT in /*) OUT_PATH=$OUT ;; *) OUT_PATH="$ROOT/$OUT" ;; esac
STARTED_EPOCH=$(date +%s)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)

# ---------------------------------------------------------------------------- prerequisites
missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}; run as root so the script can apt-get install them"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and apt-get is not available"
    log "installing missing Debian packages for: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    pkgs=()
    for m in "${missing[@]}"; do
        case $m in
        nginx) ;; # handled below: nginx-light, else nginx
        *) pkgs+=("$m") ;;
        esac
    done
    if ((${#pkgs[@]})); then
        apt-get install -y -qq "${pkgs[@]}" >/dev/null || die "apt-get install ${pkgs[*]} failed"
    fi
    if [[ " ${missing[*]} " == *" nginx "* ]]; then
        apt-get install -y -qq nginx-light >/dev/null 2>&1 ||
            apt-get install -y -qq nginx >/dev/null || die "apt-get install nginx-light / nginx failed"
    fi
fi
export PATH="$PATH:/usr/sbin:/sbin"
NGINX=$(command -v nginx) || die "nginx not found after installation"
HAPROXY=$(command -v haproxy) || die "haproxy not found after installation"
WRK=$(command -v wrk) || die "wrk not found after installation"

if ((NICE < 0)); then nice -n "$NICE" true 2>/dev/null && [[ $(nice -n "$NICE" nice) == "$NICE" ]] ||
    die "cannot run at NICE=$NICE (needs root)"; fi
taskset -c 0 true 2>/dev/null && taskset -c 1 true 2>/dev/null ||
    die "CPUs 0 and 1 must both be available (nproc=$(nproc)); this method needs 2 CPUs"

# Debian starts packaged daemons on install where an init system runs: make sure no system nginx
# or haproxy is competing for CPU 1 (we only report it; we never stop processes we did not start).
preexisting=$( (pgrep -x nginx; pgrep -x haproxy; pgrep -x wrk) | tr '\n' ' ' || true)
[[ -z $preexisting ]] || log "warning: nginx/haproxy/wrk processes not started by this script are running (pids $preexisting)"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------------------- build
BIN=${BIN:-}
[[ -z $BIN || $WORKERS == 2 ]] || die "BIN is only for WORKERS=2"
[[ -z $BIN || -x $BIN ]] || die "BIN=$BIN is not an executable"
if [[ ${NO_BUILD:-0} != 1 && -z $BIN ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust or set NO_BUILD=1 with an existing build"
    log "building: cargo build --release -p fleetgate"
    cargo build --release -p fleetgate >&2 || die "cargo build --release -p fleetgate failed (see above)"
fi
[[ -n $BIN || -x target/release/fleetgate ]] || die "target/release/fleetgate is missing"

# ---------------------------------------------------------------------------- work dir + cleanup
WORK=$(mktemp -d /tmp/fleetgate-bench.XXXXXX)
chmod 755 "$WORK"
RAW="$ROOT/bench/out/proxy-$STAMP"
mkdir -p "$RAW"
# Run a private copy so a concurrent rebuild of target/release cannot swap the binary mid-run.
FLEETGATE="$WORK/fleetgate"
cp "${BIN:-target/release/fleetgate}" "$FLEETGATE"

PIDS=()    # long-running processes this script started directly (its own children)
CUR_WRK="" # the wrk run in progress, if any
ours() { [[ -r /proc/$1/stat ]] && [[ $(awk '{print $4}' "/proc/$1/stat" 2>/dev/null) == "$$" ]]; }
cleanup() {
    local rc=$? pid i alive workers=()
    trap - EXIT INT TERM
    [[ -z $CUR_WRK ]] || kill -TERM "$CUR_WRK" 2>/dev/null || true
    # Only signal processes that are still this shell's children (never a reused pid); an nginx
    # master stops its workers itself, but remember them in case it has to be killed.
    for pid in "${PIDS[@]}"; do
        if ours "$pid"; then
            workers+=($(pgrep -P "$pid" 2>/dev/null || true))
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for i in $(seq 50); do
        alive=0
        for pid in "${PIDS[@]}"; do ours "$pid" && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do ours "$pid" && kill -KILL "$pid" 2>/dev/null; done
    for pid in "${workers[@]}"; do
        # Orphaned nginx workers (only if their master had to be killed) are re-parented; match
        # them by their command line before signalling.
        grep -qa "nginx: worker" "/proc/$pid/cmdline" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    done
    wait 2>/dev/null || true
    # Keep the logs of the run next to the raw wrk outputs.
    cp "$WORK"/*.log "$RAW"/ 2>/dev/null || true
    if [[ ${KEEP_TMP:-0} == 1 || $rc -ne 0 ]]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------------------- helpers
USED_PORTS=" "
free_port() {
    # Below the kernel's ephemeral range so outgoing connections never take it first.
    local low hi p _
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range
    hi=$((low > 12000 ? low - 1 : 30000))
    for _ in $(seq 500); do
        p=$((10000 + (RANDOM * 32768 + RANDOM) % (hi - 10000)))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if [[ -z $(ss -Hatn "( sport = :$p )" 2>/dev/null) ]]; then
            USED_PORTS+="$p "
            echo "$p"
            return 0
        fi
    done
    die "no free loopback port found"
}

# wait_http NAME PID URL: until URL answers (any HTTP status) or the process dies / 30 s pass.
wait_http() {
    local name=$1 pid=$2 url=$3 i
    for i in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || die "$name exited during startup (log: $WORK/$name.log):
$(tail -n 20 "$WORK/$name.log" 2>/dev/null)"
        if curl -s -o /dev/null --max-time 1 "$url"; then return 0; fi
        sleep 0.1
    done
    die "$name did not answer on $url within 30 s (log: $WORK/$name.log)"
}

# check_body NAME URL: the route must answer 200 with the 1 KiB body.
check_body() {
    local name=$1 url=$2 got
    got=$(curl -s -o "$WORK/check-$name.body" -w '%{http_code} %{size_download}' --max-time 5 "$url") || true
    [[ $got == "200 $BODY_BYTES" ]] ||
        die "$name: GET $url answered '$got' (want '200 $BODY_BYTES'); body: $(head -c 300 "$WORK/check-$name.body" 2>/dev/null)"
}

rss_kib() { awk '/^VmRSS:/ {print $2; f=1} END {if (!f) print 0}' "/proc/$1/status" 2>/dev/null || echo 0; }

# CPU used by processes this script did not start (other work on a shared host), so every run
# can be judged: snap_cpu writes "pid ppid ticks comm" for every process; foreign_cpu BEFORE AFTER
# SECONDS prints "<% of one CPU> <top consumers>" for non-descendants of this shell. Processes that
# both start and exit between the snapshots are missed, so it is a lower bound.
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
snap_cpu() {
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{
        l = $0; o = index(l, "("); c = 0
        for (i = length(l); i > 0; i--) if (substr(l, i, 1) == ")") { c = i; break }
        if (!o || !c) next
        comm = substr(l, o + 1, c - o - 1); gsub(/ /, "_", comm)
        n = split(substr(l, c + 2), f, " ")
        print $1, f[2], f[12] + f[13], comm }' >"$1"
}
foreign_cpu() {
    awk -v self="$$" -v secs="$3" -v hz="$CLK_TCK" '
        FNR == NR { before[$1] = $3; next }
        { ppid[$1] = $2; ticks[$1] = $3; comm[$1] = $4 }
        END {
            for (p in ticks) {
                q = p; ours = 0
                for (d = 0; d < 64 && q != "" && q != 0; d++) { if (q == self) { ours = 1; break }; q = ppid[q] }
                if (ours || p == self) continue
                dt = ticks[p] - ((p in before) ? before[p] : 0)
                if (dt <= 0) continue
                total += dt; by[comm[p]] += dt
            }
            pct = total / hz / secs * 100
            top = ""
            for (k = 0; k < 3; k++) {
                best = ""; bv = 0
                for (c in by) if (by[c] > bv) { bv = by[c]; best = c }
                if (best == "" || bv / hz / secs * 100 < 1) break
                top = top (top == "" ? "" : ", ") best " " sprintf("%.0f%%", bv / hz / secs * 100)
                delete by[best]
            }
            printf "%.0f\t%s\n", pct, (top == "" ? "-" : top)
        }' "$1" "$2"
}

pids_cpu() { # pids_cpu BEFORE AFTER SECONDS PID... -> % of one CPU used by those processes (all threads)
    local b=$1 a=$2 secs=$3
    shift 3
    awk -v secs="$secs" -v hz="$CLK_TCK" -v want=" $* " '
        FNR == NR { before[$1] = $3; next }
        index(want, " " $1 " ") { total += $3 - before[$1] }
        END { printf "%.0f\n", total / hz / secs * 100 }' "$b" "$a"
}

median() { # numbers on stdin, one a line -> median (or "nan")
    sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "nan"; exit}
        if (NR%2) print a[(NR+1)/2]; else printf "%.6f\n", (a[NR/2]+a[NR/2+1])/2}'
}
div() { awk -v a="$1" -v b="$2" 'BEGIN {if (a=="" || b=="" || a=="nan" || b=="nan" || b+0==0) print "nan"; else printf "%.6f\n", a/b}'; }
fmt() { awk -v x="$1" -v f="$2" 'BEGIN {if (x=="" || x=="nan") print "–"; else printf f, x}'; }

NGINX_USER_LINE=""
[[ $(id -u) -eq 0 ]] && NGINX_USER_LINE="user root;"

# ---------------------------------------------------------------------------- upstream (CPU 0)
UP_PORT=$(free_port)
NGX_PORT=$(free_port)
HAP_PORT=$(free_port)
FG_API_PORT=$(free_port)
FG_TLS_PORT=$(free_port)
FG_GW_PORT=$(free_port)

mkdir -p "$WORK/upstream" "$WORK/nginx" "$WORK/haproxy"
BODY=$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x')

nginx_common() { # $1 = prefix dir, $2 = worker processes (default 1)
    cat <<EOF
$NGINX_USER_LINE
worker_processes ${2:-1};
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile 8192;
events { worker_connections 4096; }
EOF
}

{
    nginx_common "$WORK/upstream" "$UP_WORKERS"
    cat <<EOF
http {
    access_log off;
    client_body_temp_path $WORK/upstream/tmp-body;
    proxy_temp_path $WORK/upstream/tmp-proxy;
    fastcgi_temp_path $WORK/upstream/tmp-fastcgi;
    uwsgi_temp_path $WORK/upstream/tmp-uwsgi;
    scgi_temp_path $WORK/upstream/tmp-scgi;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        default_type text/plain;
        location / { return 200 "$BODY"; }
    }
}
EOF
} >"$WORK/upstream/nginx.conf"

"$NGINX" -t -q -p "$WORK/upstream" -e "$WORK/upstream/error.log" -c "$WORK/upstream/nginx.conf" 2>"$WORK/upstream.log" ||
    die "upstream nginx config invalid: $(cat "$WORK/upstream.log")"
$PRIO taskset -c "$LOAD_CPUS" "$NGINX" -p "$WORK/upstream" -e "$WORK/upstream/error.log" -c "$WORK/upstream/nginx.conf" \
    >>"$WORK/upstream.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
wait_http upstream "$UP_PID" "http://127.0.0.1:$UP_PORT/"
check_body upstream "http://127.0.0.1:$UP_PORT/bench"
log "upstream nginx on 127.0.0.1:$UP_PORT (CPU $LOAD_CPUS)"

# ---------------------------------------------------------------------------- nginx proxy (CPU 1)
# start_nginx NAME PORT WORKERS: nginx as the proxy under $WORK/NAME (log $WORK/NAME.log); sets NGX_PID.
start_nginx() {
    local name=$1 port=$2 workers=$3 i
    mkdir -p "$WORK/$name"
    {
        nginx_common "$WORK/$name" "$workers"
        cat <<EOF
http {
    access_log off;
    client_body_temp_path $WORK/$name/tmp-body;
    proxy_temp_path $WORK/$name/tmp-proxy;
    fastcgi_temp_path $WORK/$name/tmp-fastcgi;
    uwsgi_temp_path $WORK/$name/tmp-uwsgi;
    scgi_temp_path $WORK/$name/tmp-scgi;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    upstream bench {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
EOF
        for ((i = 0; i < ROUTES; i++)); do
            printf '        location /svc%d { proxy_pass http://bench; }\n' "$i"
        done
        cat <<EOF
        location /bench { proxy_pass http://bench; }
    }
}
EOF
    } >"$WORK/$name/nginx.conf"

    "$NGINX" -t -q -p "$WORK/$name" -e "$WORK/$name/error.log" -c "$WORK/$name/nginx.conf" 2>"$WORK/$name.log" ||
        die "proxy nginx config invalid: $(cat "$WORK/$name.log")"
    $PRIO taskset -c "$PROXY_CPUS" "$NGINX" -p "$WORK/$name" -e "$WORK/$name/error.log" -c "$WORK/$name/nginx.conf" \
        >>"$WORK/$name.log" 2>&1 &
    NGX_PID=$!
    PIDS+=("$NGX_PID")
    wait_http "$name" "$NGX_PID" "http://127.0.0.1:$port/bench"
    check_body "$name" "http://127.0.0.1:$port/bench"
    log "$name proxy on 127.0.0.1:$port (CPU $PROXY_CPUS$( ((WORKERS == 1)) || echo ", $workers worker(s)"))"
}

# ---------------------------------------------------------------------------- haproxy (CPU 1)
{
    for ((i = 0; i < ROUTES; i++)); do echo "/svc$i"; done
    echo "/bench"
} >"$WORK/haproxy/routes.lst"
# start_haproxy NAME PORT THREADS: haproxy under $WORK/NAME (log $WORK/NAME.log); sets HAP_PID.
start_haproxy() {
    local name=$1 port=$2 threads=$3
    mkdir -p "$WORK/$name"
    cat >"$WORK/$name/haproxy.cfg" <<EOF
global
    nbthread $threads
    maxconn 4096
    pidfile $WORK/$name/haproxy.pid

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 120s

frontend fe
    bind 127.0.0.1:$port
    acl route path_beg -f $WORK/haproxy/routes.lst
    use_backend bench if route

backend bench
    http-reuse always
    server up 127.0.0.1:$UP_PORT
EOF
    "$HAPROXY" -c -q -f "$WORK/$name/haproxy.cfg" >"$WORK/$name.log" 2>&1 ||
        die "haproxy config invalid: $(cat "$WORK/$name.log")"
    $PRIO taskset -c "$PROXY_CPUS" "$HAPROXY" -db -f "$WORK/$name/haproxy.cfg" >>"$WORK/$name.log" 2>&1 &
    HAP_PID=$!
    PIDS+=("$HAP_PID")
    wait_http "$name" "$HAP_PID" "http://127.0.0.1:$port/bench"
    check_body "$name" "http://127.0.0.1:$port/bench"
    log "$name on 127.0.0.1:$port (CPU $PROXY_CPUS$( ((WORKERS == 1)) || echo ", $threads thread(s)"))"
}

# ---------------------------------------------------------------------------- Fleetgate (CPU 1)
TOKEN="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
ADMIN_PASSWORD="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" # set so none is generated and logged

# api METHOD PATH JSON WANT_STATUS (to the instance start_fleetgate last started)
api() {
    local code
    code=$(curl -sS -o "$WORK/api-response.json" -w '%{http_code}' --max-time 30 -X "$1" \
        -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        --data "$3" "$API$2") || die "Fleetgate API $1 $2: request failed"
    [[ $code == "$4" ]] || die "Fleetgate API $1 $2 answered $code (want $4): $(head -c 500 "$WORK/api-response.json")"
}

# start_fleetgate NAME API_PORT GW_PORT TLS_PORT [GATEWAY_WORKERS]: a configured `fleetgate serve`
# (data dir $WORK/NAME-data, log $WORK/NAME.log); sets FG_PID, API, FG_REVISION and FG_THREADS.
# Without GATEWAY_WORKERS the gateway takes its default (one worker per CPU it may run on).
start_fleetgate() {
    local name=$1 api_port=$2 gw_port=$3 tls_port=$4 gw_workers=${5:-} i
    local routes="$WORK/routes${name#fleetgate}"
    mkdir -p "$WORK/$name-data"
    (
        # Nothing from the caller's FLEETGATE_* environment may change what is measured.
        while read -r var; do unset "$var"; done < <(compgen -e | grep '^FLEETGATE_' || true)
        export FLEETGATE_BOOTSTRAP_TOKEN="$TOKEN" FLEETGATE_ADMIN_PASSWORD="$ADMIN_PASSWORD"
        export FLEETGATE_LOG_LEVEL=warn TOKIO_WORKER_THREADS=1
        [[ -z $gw_workers ]] || export FLEETGATE_GATEWAY_WORKERS="$gw_workers"
        exec $PRIO taskset -c "$PROXY_CPUS" "$FLEETGATE" serve --data-dir "$WORK/$name-data" \
            --listen "127.0.0.1:$api_port" --gateway-listen "127.0.0.1:$gw_port" \
            --gateway-tls-listen "127.0.0.1:$tls_port"
    ) >"$WORK/$name.log" 2>&1 &
    FG_PID=$!
    PIDS+=("$FG_PID")
    API="http://127.0.0.1:$api_port"
    wait_http "$name" "$FG_PID" "$API/health"
    wait_http "$name" "$FG_PID" "http://127.0.0.1:$gw_port/"

    log "configuring Fleetgate${name#fleetgate}: settings, upstream, $ROUTES + 1 routes"
    api PUT /api/v1/settings '{"api":{"rate_limit_per_minute":0}}' 200
    api POST /api/v1/upstreams "{\"name\":\"bench\",\"targets\":[{\"url\":\"http://127.0.0.1:$UP_PORT\"}],\"circuit_breaker\":{\"enabled\":true}}" 201

    # All route POSTs go through one curl process (one keep-alive connection) from a config file.
    mkdir -p "$routes"
    {
        echo 'silent'
        echo 'show-error'
        route_block() { # id path
            cat <<EOF
url = "$API/api/v1/routes"
request = "POST"
header = "Authorization: Bearer $TOKEN"
header = "Content-Type: application/json"
data = "{\"id\":\"$1\",\"path\":\"$2\",\"upstream\":\"bench\"}"
output = "$routes/$1.json"
write-out = "$1 %{http_code}\n"
max-time = 30
EOF
        }
        for ((i = 0; i < ROUTES; i++)); do
            route_block "r$i" "/svc$i"
            echo 'next'
        done
        route_block bench /bench
    } >"$routes.curl"
    curl -K "$routes.curl" >"$routes.status" || die "route creation: curl failed"
    bad=$(awk '$2 != "201"' "$routes.status" | head -n 3)
    created=$(awk '$2 == "201"' "$routes.status" | wc -l)
    if [[ -n $bad || $created -ne $((ROUTES + 1)) ]]; then
        first=$(echo "$bad" | head -n 1 | cut -d' ' -f1)
        die "route creation: $created of $((ROUTES + 1)) answered 201; first failures: $bad; body: $(head -c 400 "$routes/$first.json" 2>/dev/null)"
    fi
    total_routes=$(curl -s -H "Authorization: Bearer $TOKEN" "$API/api/v1/routes?limit=1" | grep -o '"total":[0-9]*' | cut -d: -f2 || true)
    [[ $total_routes == $((ROUTES + 1)) ]] || die "Fleetgate lists ${total_routes:-?} routes, want $((ROUTES + 1))"

    # The built-in gateway must serve the newest revision before measuring.
    FG_REVISION=""
    for i in $(seq 600); do
        kill -0 "$FG_PID" 2>/dev/null || die "fleetgate exited while applying the configuration: $(tail -n 20 "$WORK/$name.log")"
        h=$(curl -s --max-time 2 "$API/health" || true)
        rev=$(grep -o '"revision":[0-9]*' <<<"$h" | cut -d: -f2 || true)
        grev=$(grep -o '"gateway_revision":[0-9]*' <<<"$h" | cut -d: -f2 || true)
        if [[ -n $rev && $rev == "$grev" ]]; then
            FG_REVISION=$rev
            break
        fi
        sleep 0.1
    done
    [[ -n $FG_REVISION ]] || die "Fleetgate's gateway never reached the newest revision within 60 s (last /health: $h)"
    check_body "$name" "http://127.0.0.1:$gw_port/bench"
    FG_THREADS=$(awk '/^Threads:/ {print $2}' "/proc/$FG_PID/status")
    log "Fleetgate${name#fleetgate} gateway on 127.0.0.1:$gw_port (CPU $PROXY_CPUS$([[ -z $gw_workers ]] || echo ", $gw_workers worker(s)")), API on $API, revision $FG_REVISION, $FG_THREADS threads"
}

# ---------------------------------------------------------------------------- start the proxies
if ((WORKERS == 1)); then
    start_nginx nginx "$NGX_PORT" 1
    start_haproxy haproxy "$HAP_PORT" 1
    start_fleetgate fleetgate "$FG_API_PORT" "$FG_GW_PORT" "$FG_TLS_PORT"
else
    # Every proxy twice, one worker and two, under the same placement (CPUs 0 and 1).
    NGX2_PORT=$(free_port)
    HAP2_PORT=$(free_port)
    FG2_API_PORT=$(free_port)
    FG2_TLS_PORT=$(free_port)
    FG2_GW_PORT=$(free_port)
    start_nginx nginx-w1 "$NGX_PORT" 1
    NGX1_PID=$NGX_PID
    start_nginx nginx-w2 "$NGX2_PORT" 2
    NGX2_PID=$NGX_PID
    start_haproxy haproxy-w1 "$HAP_PORT" 1
    HAP1_PID=$HAP_PID
    start_haproxy haproxy-w2 "$HAP2_PORT" 2
    HAP2_PID=$HAP_PID
    start_fleetgate fleetgate-w1 "$FG_API_PORT" "$FG_GW_PORT" "$FG_TLS_PORT" 1
    FG1_PID=$FG_PID
    start_fleetgate fleetgate-w2 "$FG2_API_PORT" "$FG2_GW_PORT" "$FG2_TLS_PORT" 2
    FG2_PID=$FG_PID
fi

# ---------------------------------------------------------------------------- measurement
TARGETS=(upstream nginx haproxy fleetgate)
declare -A URL PID_OF LABEL
URL[upstream]="http://127.0.0.1:$UP_PORT/bench"
URL[nginx]="http://127.0.0.1:$NGX_PORT/bench"
URL[haproxy]="http://127.0.0.1:$HAP_PORT/bench"
URL[fleetgate]="http://127.0.0.1:$FG_GW_PORT/bench"
PID_OF[upstream]=$UP_PID
PID_OF[nginx]=$NGX_PID
PID_OF[haproxy]=$HAP_PID
PID_OF[fleetgate]=$FG_PID
LABEL[upstream]="direct to upstream (ceiling)"
LABEL[nginx]="nginx"
LABEL[haproxy]="haproxy"
LABEL[fleetgate]="Fleetgate"
if ((WORKERS == 2)); then
    TARGETS=(upstream nginx-w1 nginx-w2 haproxy-w1 haproxy-w2 fleetgate-w1 fleetgate-w2)
    URL[nginx-w1]="http://127.0.0.1:$NGX_PORT/bench"
    URL[nginx-w2]="http://127.0.0.1:$NGX2_PORT/bench"
    URL[haproxy-w1]="http://127.0.0.1:$HAP_PORT/bench"
    URL[haproxy-w2]="http://127.0.0.1:$HAP2_PORT/bench"
    URL[fleetgate-w1]="http://127.0.0.1:$FG_GW_PORT/bench"
    URL[fleetgate-w2]="http://127.0.0.1:$FG2_GW_PORT/bench"
    PID_OF[nginx-w1]=$NGX1_PID
    PID_OF[nginx-w2]=$NGX2_PID
    PID_OF[haproxy-w1]=$HAP1_PID
    PID_OF[haproxy-w2]=$HAP2_PID
    PID_OF[fleetgate-w1]=$FG1_PID
    PID_OF[fleetgate-w2]=$FG2_PID
fi

proxy_rss_kib() { # nginx: its worker process(es); others: the process itself
    local t=$1 sum=0 p
    case $t in
    upstream) echo "" ;;
    nginx*)
        for p in $(pgrep -P "${PID_OF[$t]}"); do sum=$((sum + $(rss_kib "$p"))); done
        echo "$sum"
        ;;
    *) rss_kib "${PID_OF[$t]}" ;;
    esac
}

to_ms() { # wrk time like 612.00us / 1.20ms / 2.01s / 1.00m
    awk -v t="$1" 'BEGIN {
        if (t=="") {print "nan"; exit}
        v=t+0; u=t; sub(/^[0-9.]+/, "", u)
        if (u=="us") v/=1000; else if (u=="ms") v=v; else if (u=="s") v*=1000; else if (u=="m") v*=60000; else if (u=="h") v*=3600000
        printf "%.6f\n", v }'
}

run_wrk() { # run_wrk SECONDS URL OUTFILE
    timeout -k 5 $(($1 + 30)) $PRIO taskset -c "$LOAD_CPUS" "$WRK" -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$1s" --latency "$2" >"$3" 2>&1 &
    CUR_WRK=$!
    wait "$CUR_WRK" || true
    CUR_WRK=""
}

declare -A RPS P50 P99 RSS FAIL NON2XX SOCKERR REQS DEAD FOREIGN FOREIGN_TOP PCPU CPUUS
RESULTS="$RAW/results.tsv"
printf 'rep\ttarget\treq_per_s\tp50_ms\tp99_ms\trss_kib\trequests\tnon_2xx\tsocket_errors\tproxy_cpu_pct\tforeign_cpu_pct\tfailure\n' >"$RESULTS"

# Shared host: give other work a chance to finish before a measured run (bounded by WAIT_QUIET).
wait_quiet() {
    local waited=0 load
    ((WAIT_QUIET > 0)) || return 0
    while :; do
        snap_cpu "$WORK/cpu.q0"
        sleep 1
        snap_cpu "$WORK/cpu.q1"
        load=$(foreign_cpu "$WORK/cpu.q0" "$WORK/cpu.q1" 1 | cut -f1)
        ((load < QUIET_PCT)) && break
        waited=$((waited + 1))
        if ((waited >= WAIT_QUIET)); then
            log "host still busy after ${WAIT_QUIET}s (other processes ${load}% CPU); measuring anyway"
            break
        fi
    done
    WAITED_TOTAL=$((WAITED_TOTAL + waited))
}
WAITED_TOTAL=0
REDONE=()

measure() { # measure TARGET REP
    local t=$1 r=$2 out="$RAW/rep$2-$1.txt" pid=${PID_OF[$1]} reason=""
    if [[ -n ${DEAD[$t]:-} ]]; then
        FAIL[$t,$r]="not run: process had exited"
        return
    fi
    wait_quiet
    if ((WARMUP > 0)); then run_wrk "$WARMUP" "${URL[$t]}" "$RAW/rep$r-$t.warmup.txt"; fi
    snap_cpu "$WORK/cpu.before"
    local t0 t1
    t0=$(date +%s.%N)
    run_wrk "$DURATION" "${URL[$t]}" "$out"
    t1=$(date +%s.%N)
    snap_cpu "$WORK/cpu.after"
    IFS=$'\t' read -r FOREIGN[$t,$r] FOREIGN_TOP[$t,$r] < <(foreign_cpu "$WORK/cpu.before" "$WORK/cpu.after" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')")
    RSS[$t,$r]=$(proxy_rss_kib "$t")
    local pids
    case $t in
    upstream) pids=$(pgrep -P "$UP_PID" | tr '\n' ' ' || true) ;;
    nginx*) pids=$(pgrep -P "$pid" | tr '\n' ' ' || true) ;;
    *) pids=$pid ;;
    esac
    # shellcheck disable=SC2086
    PCPU[$t,$r]=$(pids_cpu "$WORK/cpu.before" "$WORK/cpu.after" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" $pids)
    RPS[$t,$r]=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    # CPU time of the proxy per request, in µs: comparable even when the proxy had to share CPU 1.
    CPUUS[$t,$r]=$(awk -v c="${PCPU[$t,$r]}" -v q="${RPS[$t,$r]}" 'BEGIN {if (q+0 > 0) printf "%.3f\n", c / 100 / q * 1e6; else print "nan"}')
    P50[$t,$r]=$(to_ms "$(awk '$1=="50%" {print $2}' "$out")")
    P99[$t,$r]=$(to_ms "$(awk '$1=="99%" {print $2}' "$out")")
    REQS[$t,$r]=$(awk '/requests in/ {print $1}' "$out")
    NON2XX[$t,$r]=$(awk -F: '/Non-2xx or 3xx responses/ {gsub(/ /, "", $2); print $2}' "$out")
    NON2XX[$t,$r]=${NON2XX[$t,$r]:-0}
    SOCKERR[$t,$r]=$(awk '/Socket errors:/ {gsub(/,/, ""); print $4+$6+$8+$10}' "$out")
    SOCKERR[$t,$r]=${SOCKERR[$t,$r]:-0}
    [[ -n ${RPS[$t,$r]} ]] || {
        RPS[$t,$r]=0
        reason="wrk produced no result ($(head -c 200 "$out" | tr '\n' ' '))"
    }
    local non2xx=${NON2XX[$t,$r]} sockerr=${SOCKERR[$t,$r]}
    ((non2xx == 0)) || reason+="${reason:+; }$non2xx non-2xx responses"
    ((sockerr == 0)) || reason+="${reason:+; }$(awk '/Socket errors:/ {sub(/^ *Socket errors: /, ""); print}' "$out") socket errors"
    if ! kill -0 "$pid" 2>/dev/null; then
        DEAD[$t]=1
        reason+="${reason:+; }process exited during the run"
    fi
    FAIL[$t,$r]=$reason
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "${RPS[$t,$r]}" "${P50[$t,$r]}" "${P99[$t,$r]}" \
        "${RSS[$t,$r]}" "${REQS[$t,$r]:-0}" "${NON2XX[$t,$r]}" "${SOCKERR[$t,$r]}" "${PCPU[$t,$r]}" "${FOREIGN[$t,$r]}" "$reason" >>"$RESULTS"
    log "rep $r $t: $(fmt "${RPS[$t,$r]}" '%.0f') req/s, p50 $(fmt "${P50[$t,$r]}" '%.3f') ms, p99 $(fmt "${P99[$t,$r]}" '%.3f') ms, its CPU ${PCPU[$t,$r]}%, other processes ${FOREIGN[$t,$r]}% CPU${reason:+  FAILED: $reason}"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
snap_cpu "$WORK/cpu.before"
sleep 1
snap_cpu "$WORK/cpu.after"
IFS=$'\t' read -r IDLE_FOREIGN IDLE_FOREIGN_TOP < <(foreign_cpu "$WORK/cpu.before" "$WORK/cpu.after" 1)
MEASURE_START=$(date +%s)
log "measuring: $REPS interleaved repetitions x ${#TARGETS[@]} targets x (${WARMUP}s warm-up + ${DURATION}s), wrk -t$WRK_THREADS -c$CONNECTIONS"
for ((r = 1; r <= REPS; r++)); do
    # Rotate the order every repetition so no target always runs first or last.
    for ((k = 0; k < ${#TARGETS[@]}; k++)); do
        t=${TARGETS[$(((k + r - 1) % ${#TARGETS[@]}))]}
        for ((attempt = 0; attempt <= RETRIES; attempt++)); do
            measure "$t" "$r"
            [[ -z ${FAIL[$t,$r]:-} && -n ${FOREIGN[$t,$r]:-} ]] && ((${FOREIGN[$t,$r]} >= QUIET_PCT)) || break
            if ((attempt < RETRIES)); then
                REDONE+=("rep $r $t (${FOREIGN[$t,$r]}%)")
                log "rep $r $t was contended (other processes ${FOREIGN[$t,$r]}% CPU): measuring it again"
            fi
        done
    done
done
MEASURE_SECS=$(($(date +%s) - MEASURE_START))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------- WORKERS=2: its own section
# The two-worker comparison writes only the `two-workers` section of $OUT, then ends here.
two_workers_report() {
    local r p t a b content v
    ok() { [[ -n ${RPS[$1,$2]:-} && -z ${FAIL[$1,$2]:-} ]]; }
    med2() { # med2 ARRAYNAME TARGET -> median over clean runs
        local -n arr=$1
        local r
        for ((r = 1; r <= REPS; r++)); do if ok "$2" "$r" && [[ -n ${arr[$2,$r]:-} ]]; then echo "${arr[$2,$r]}"; fi; done | median
    }
    ratio2() { # ratio2 A B -> median over repetitions of RPS[A]/RPS[B] where both ran cleanly
        local r
        for ((r = 1; r <= REPS; r++)); do
            if ok "$1" "$r" && ok "$2" "$r"; then div "${RPS[$1,$r]}" "${RPS[$2,$r]}"; fi
        done | median
    }
    cell2() { if ok "$1" "$2"; then fmt "${RPS[$1,$2]}" '%.0f'; else echo "FAILED"; fi; }
    rcell() { if ok "$1" "$3" && ok "$2" "$3"; then fmt "$(div "${RPS[$1,$3]}" "${RPS[$2,$3]}")" '%.3f'; else echo '–'; fi; }
    declare -A NAME=([nginx]=nginx [haproxy]=haproxy [fleetgate]=Fleetgate)
    declare -A WHAT=([nginx]='`worker_processes`' [haproxy]='`nbthread`' [fleetgate]='`FLEETGATE_GATEWAY_WORKERS`')
    content=$(mktemp)
    {
        echo "## Two workers on two cores (\`WORKERS=2 bench/proxy.sh\`)"
        echo
        echo "Generated by \`WORKERS=2 REPS=$REPS DURATION=$DURATION$( ((NICE == 0)) || echo " NICE=$NICE") bench/proxy.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC')"
        if [[ -n $BIN ]]; then
            echo "(raw outputs: \`bench/out/proxy-$STAMP/\`, git-ignored); Fleetgate: the release binary \`$BIN\` (\`$("$FLEETGATE" version 2>&1 | sed -n 1p)\`)."
        else
            echo "(raw outputs: \`bench/out/proxy-$STAMP/\`, git-ignored); Fleetgate built from commit \`$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\`"
            echo "(\"$(git log -1 --format=%s 2>/dev/null | cut -c1-80)\")$( (($(git status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock 2>/dev/null | wc -l) > 0)) && echo " plus uncommitted changes")."
        fi
        echo "Every proxy, the upstream (nginx, 2 workers) and wrk (\`-t2 -c$CONNECTIONS\`) share CPUs 0 and 1: on two cores the"
        echo "load generator and the upstream compete with the proxy, so no proxy can reach 2× here; the point is each"
        echo "proxy's scaling next to nginx's under the same placement."
        echo
        echo "| proxy | 1 worker: req/s | p50 | p99 | its CPU | CPU/request | 2 workers: req/s | p50 | p99 | its CPU | CPU/request | scaling (2 ÷ 1) | clean runs |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for p in nginx haproxy fleetgate; do
            a=$p-w1 b=$p-w2
            printf '| %s | %s | %s ms | %s ms | %s | %s µs | %s | %s ms | %s ms | %s | %s µs | **%s×** | %s/%s, %s/%s |\n' "${NAME[$p]}" \
                "$(fmt "$(med2 RPS "$a")" '%.0f')" "$(fmt "$(med2 P50 "$a")" '%.3f')" "$(fmt "$(med2 P99 "$a")" '%.3f')" "$(fmt "$(med2 PCPU "$a")" '%.0f%%')" \
                "$(fmt "$(med2 CPUUS "$a")" '%.1f')" \
                "$(fmt "$(med2 RPS "$b")" '%.0f')" "$(fmt "$(med2 P50 "$b")" '%.3f')" "$(fmt "$(med2 P99 "$b")" '%.3f')" "$(fmt "$(med2 PCPU "$b")" '%.0f%%')" \
                "$(fmt "$(med2 CPUUS "$b")" '%.1f')" \
                "$(fmt "$(ratio2 "$b" "$a")" '%.3f')" \
                "$(for ((r = 1; r <= REPS; r++)); do ok "$a" "$r" && echo x; done | wc -l)" "$REPS" \
                "$(for ((r = 1; r <= REPS; r++)); do ok "$b" "$r" && echo x; done | wc -l)" "$REPS"
        done
        printf '| direct to upstream (no proxy) | %s | %s ms | %s ms | %s | %s µs | | | | | | | %s/%s |\n' \
            "$(fmt "$(med2 RPS upstream)" '%.0f')" "$(fmt "$(med2 P50 upstream)" '%.3f')" "$(fmt "$(med2 P99 upstream)" '%.3f')" \
            "$(fmt "$(med2 PCPU upstream)" '%.0f%%')" "$(fmt "$(med2 CPUUS upstream)" '%.1f')" "$(for ((r = 1; r <= REPS; r++)); do ok upstream "$r" && echo x; done | wc -l)" "$REPS"
        echo
        echo "Scaling is the median of per-repetition ratios (2-worker req/s ÷ 1-worker req/s of the same proxy);"
        echo "medians use clean runs only. Fleetgate ÷ nginx: **$(fmt "$(ratio2 fleetgate-w1 nginx-w1)" '%.3f')×** with 1 worker,"
        echo "**$(fmt "$(ratio2 fleetgate-w2 nginx-w2)" '%.3f')×** with 2 workers. \"Its CPU\": user + system time of the proxy's"
        echo "processes during the run, in % of one CPU (200% = both CPUs); \"CPU/request\": that time ÷ requests served,"
        echo "which shows the cost of a second worker (shared state, wakeups) even where the host's noise moves req/s."
        echo
        echo "| rep | nginx 1 | nginx 2 | scaling | haproxy 1 | haproxy 2 | scaling | Fleetgate 1 | Fleetgate 2 | scaling | direct |"
        echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for ((r = 1; r <= REPS; r++)); do
            printf '| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$r" \
                "$(cell2 nginx-w1 "$r")" "$(cell2 nginx-w2 "$r")" "$(rcell nginx-w2 nginx-w1 "$r")" \
                "$(cell2 haproxy-w1 "$r")" "$(cell2 haproxy-w2 "$r")" "$(rcell haproxy-w2 haproxy-w1 "$r")" \
                "$(cell2 fleetgate-w1 "$r")" "$(cell2 fleetgate-w2 "$r")" "$(rcell fleetgate-w2 fleetgate-w1 "$r")" \
                "$(cell2 upstream "$r")"
        done
        echo
        v=""
        for ((r = 1; r <= REPS; r++)); do
            for t in "${TARGETS[@]}"; do
                [[ -z ${FAIL[$t,$r]:-} ]] || v+="${v:+; }rep $r $t: ${FAIL[$t,$r]}"
            done
        done
        [[ -z $v ]] && echo "- No failed run (only 2xx, no socket errors, every process up)." || echo "- Failed runs (left out): $v."
        v=""
        for ((r = 1; r <= REPS; r++)); do
            for t in "${TARGETS[@]}"; do
                if [[ -n ${FOREIGN[$t,$r]:-} ]] && ((${FOREIGN[$t,$r]} >= QUIET_PCT)); then v+="${v:+, }rep $r $t (${FOREIGN[$t,$r]}%)"; fi
            done
        done
        if [[ -n $v ]]; then
            echo "- Contended runs (processes this script did not start used ≥ ${QUIET_PCT}% of a CPU): $v."
        else
            echo "- No contended run: other processes used < ${QUIET_PCT}% of a CPU during every measured run."
        fi
        ((${#REDONE[@]} == 0)) || echo "- Measured again because contended (the last attempt counts): $(IFS=';'; echo "${REDONE[*]}" | sed 's/;/, /g')."
        echo "- Load average before / after: $LOAD_BEFORE / $LOAD_AFTER; waiting for a quiet host took ${WAITED_TOTAL} s; run time $(($(date +%s) - STARTED_EPOCH)) s."
        echo "- Method: $REPS interleaved repetitions (order rotating) of a ${WARMUP} s warm-up and a ${DURATION} s"
        echo "  \`taskset -c 0,1 wrk -t2 -c$CONNECTIONS --latency\` run per target. Each proxy is started twice, with 1 and 2"
        echo "  workers (nginx ${WHAT[nginx]}, haproxy ${WHAT[haproxy]}, Fleetgate ${WHAT[fleetgate]}), all under"
        echo "  \`taskset -c 0,1\`, otherwise configured as in the one-worker method (1,000 + 1 routes, keep-alive upstream"
        echo "  pools, Fleetgate's breaker on and \`TOKIO_WORKER_THREADS=1\` for its manager runtime). The upstream nginx runs"
        echo "  2 workers on CPUs 0,1 for every target. $NGINX_V2, $HAPROXY_V2."
    } >"$content"
    put_section "$OUT_PATH" two-workers "$content"
    rm -f "$content"
    cp "$OUT_PATH" "$RAW/"
    log "wrote the two-workers section of $OUT: scaling nginx $(fmt "$(ratio2 nginx-w2 nginx-w1)" '%.3f')×, haproxy $(fmt "$(ratio2 haproxy-w2 haproxy-w1)" '%.3f')×, Fleetgate $(fmt "$(ratio2 fleetgate-w2 fleetgate-w1)" '%.3f')×"
}
if ((WORKERS == 2)); then
    NGINX_V2=$("$NGINX" -v 2>&1 | sed -n 1p)
    HAPROXY_V2=$("$HAPROXY" -v 2>&1 | sed -n 1p | sed "s/ - https.*//")
    two_workers_report
    exit 0
fi

# If Fleetgate failed, capture the symptom: status codes over a short diagnostic run and its log.
FG_DIAG=""
fg_failed=0
for ((r = 1; r <= REPS; r++)); do [[ -z ${FAIL[fleetgate,$r]:-} ]] || fg_failed=1; done
if ((fg_failed)) && [[ -z ${DEAD[fleetgate]:-} ]]; then
    log "Fleetgate had failed runs: collecting status codes over a 3 s diagnostic run"
    cat >"$WORK/codes.lua" <<'EOF'
codes = {}
sample = ""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
    local k = tostring(status)
    codes[k] = (codes[k] or 0) + 1
    if status >= 400 and sample == "" then sample = string.sub(body or "", 1, 300) end
end
function done(summary, latency, requests)
    for _, t in ipairs(threads) do
        local c = t:get("codes")
        local keys = {}
        for k in pairs(c) do table.insert(keys, k) end
        table.sort(keys)
        for _, k in ipairs(keys) do io.write("status " .. k .. ": " .. c[k] .. "\n") end
        io.write("first error body: " .. t:get("sample") .. "\n")
    end
end
EOF
    timeout -k 5 40 $PRIO taskset -c 0 "$WRK" -t1 -c"$CONNECTIONS" -d3s -s "$WORK/codes.lua" "${URL[fleetgate]}" >"$RAW/fleetgate-diagnostic.txt" 2>&1 || true
    FG_DIAG=$(grep -E '^(status |first error body)' "$RAW/fleetgate-diagnostic.txt" || true)
fi
sed 's/\x1b\[[0-9;]*m//g' "$WORK/fleetgate.log" | grep -v -e "$TOKEN" -e "$ADMIN_PASSWORD" >"$WORK/fleetgate-clean.log" || true
FG_LOG_LINES=$(grep -c . "$WORK/fleetgate-clean.log" || true)
FG_LOG_TAIL=$(grep . "$WORK/fleetgate-clean.log" | tail -n 15 | cut -c1-400 || true)

# ---------------------------------------------------------------------------- statistics
ok() { [[ -n ${RPS[$1,$2]:-} && -z ${FAIL[$1,$2]:-} ]]; }
med_of() { # med_of ARRAYNAME TARGET -> median over successful reps
    local -n arr=$1
    local r
    for ((r = 1; r <= REPS; r++)); do if ok "$2" "$r" && [[ -n ${arr[$2,$r]:-} ]]; then echo "${arr[$2,$r]}"; fi; done | median
}
declare -A MED_RPS MED_P50 MED_P99 MED_RSS MED_PCPU MED_CPUUS NOK
for t in "${TARGETS[@]}"; do
    MED_RPS[$t]=$(med_of RPS "$t")
    MED_P50[$t]=$(med_of P50 "$t")
    MED_P99[$t]=$(med_of P99 "$t")
    MED_RSS[$t]=$(med_of RSS "$t")
    MED_PCPU[$t]=$(med_of PCPU "$t")
    MED_CPUUS[$t]=$(med_of CPUUS "$t")
    n=0
    for ((r = 1; r <= REPS; r++)); do if ok "$t" "$r"; then n=$((n + 1)); fi; done
    NOK[$t]=$n
done

# Per-repetition ratios (only where both runs of that repetition succeeded).
declare -A RATIO
ratio_pairs=("fleetgate nginx" "haproxy nginx" "upstream nginx" "fleetgate haproxy")
for ((r = 1; r <= REPS; r++)); do
    for pair in "${ratio_pairs[@]}"; do
        read -r a b <<<"$pair"
        if ok "$a" "$r" && ok "$b" "$r"; then
            RATIO[$a/$b,$r]=$(div "${RPS[$a,$r]}" "${RPS[$b,$r]}")
        else
            RATIO[$a/$b,$r]=nan
        fi
    done
    if ok fleetgate "$r" && ok nginx "$r"; then
        RATIO[p99,$r]=$(div "${P99[fleetgate,$r]}" "${P99[nginx,$r]}")
        # Throughput per CPU-second of the proxy, relative to nginx = nginx's CPU/request ÷ Fleetgate's.
        RATIO[cpu,$r]=$(div "${CPUUS[nginx,$r]}" "${CPUUS[fleetgate,$r]}")
    else
        RATIO[p99,$r]=nan
        RATIO[cpu,$r]=nan
    fi
    if ok haproxy "$r" && ok nginx "$r"; then
        RATIO[cpu-haproxy,$r]=$(div "${CPUUS[nginx,$r]}" "${CPUUS[haproxy,$r]}")
    else
        RATIO[cpu-haproxy,$r]=nan
    fi
done
med_ratio() { # key -> median over reps, ignoring nan
    local r
    for ((r = 1; r <= REPS; r++)); do [[ ${RATIO[$1,$r]} == nan ]] || echo "${RATIO[$1,$r]}"; done | median
}
declare -A MED_RATIO
for key in fleetgate/nginx haproxy/nginx upstream/nginx fleetgate/haproxy p99 cpu cpu-haproxy; do MED_RATIO[$key]=$(med_ratio "$key"); done

# Target: Fleetgate >= 1.0x nginx req/s per core, p99 no worse than nginx, 1,000-route table loaded.
rps_ratio=${MED_RATIO[fleetgate/nginx]}
p99_ratio=${MED_RATIO[p99]}
verdict_reasons=()
if ((fg_failed)); then verdict_reasons+=("Fleetgate had failed runs (non-2xx responses, socket errors or exit)"); fi
if [[ $rps_ratio == nan ]]; then
    verdict_reasons+=("no repetition where both Fleetgate and nginx ran cleanly")
else
    awk -v x="$rps_ratio" 'BEGIN {exit !(x >= 1.0)}' ||
        verdict_reasons+=("req/s is $(fmt "$rps_ratio" '%.3f')× nginx (needs ≥ 1.000×)")
fi
if [[ $p99_ratio != nan ]]; then
    awk -v x="$p99_ratio" 'BEGIN {exit !(x <= 1.0)}' ||
        verdict_reasons+=("p99 is $(fmt "$p99_ratio" '%.3f')× nginx's (needs ≤ 1.000×)")
fi
if ((${#verdict_reasons[@]})); then
    VERDICT="NOT MET"
else
    VERDICT="MET"
fi

# ---------------------------------------------------------------------------- versions + machine
NGINX_V=$("$NGINX" -v 2>&1 | sed -n 1p)
HAPROXY_V=$("$HAPROXY" -v 2>&1 | sed -n 1p)
WRK_V=$("$WRK" -v 2>&1 | sed -n 1p | cut -c1-60 || true)
FG_V=$("$FLEETGATE" version 2>&1 | sed -n 1p)
GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
GIT_SUBJECT=$(git log -1 --format=%s 2>/dev/null | cut -c1-100 || true)
GIT_DIRTY=$(git status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock 2>/dev/null | wc -l)
GIT_UNTRACKED=$(git status --porcelain -- crates 2>/dev/null | grep -c '^??' || true)
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
MEM_TOTAL=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
TOTAL_SECS=$(($(date +%s) - STARTED_EPOCH))

# ---------------------------------------------------------------------------- report
foreign_cell() {
    local v=${FOREIGN[$1,$2]:-} top=${FOREIGN_TOP[$1,$2]:--}
    if [[ -z $v ]]; then echo '–'; elif [[ $top == - ]]; then echo "$v%"; else echo "$v% ($top)"; fi
}
mib() { awk -v k="$1" 'BEGIN {if (k=="" || k=="nan") print "–"; else printf "%.1f MiB", k/1024}'; }
ratio_cell() { fmt "$1" '%.3f'; }
{
    echo "# Gateway benchmark: Fleetgate vs nginx vs haproxy"
    echo
    echo "Generated by \`bench/proxy.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'); every number below was measured"
    echo "by that run (raw outputs: \`bench/out/proxy-$STAMP/\`, git-ignored). Re-run with"
    echo "\`REPS=$REPS DURATION=$DURATION$( ((NICE == 0)) || echo " NICE=$NICE") bench/proxy.sh\`."
    echo
    echo "## Target"
    echo
    echo "> Fleetgate ≥ 1.0× nginx requests/s per core and p99 no worse than nginx, with a 1,000-route table loaded"
    echo
    echo "**$VERDICT** — Fleetgate/nginx req/s (median of per-repetition ratios): **$(ratio_cell "$rps_ratio")×**;"
    echo "Fleetgate/nginx p99 (median of per-repetition ratios): **$(ratio_cell "$p99_ratio")×**."
    if ((${#verdict_reasons[@]})); then
        echo "Not met because: $(IFS=';'; echo "${verdict_reasons[*]}" | sed 's/;/; /g')."
    fi
    verdict_contended=""
    for ((r = 1; r <= REPS; r++)); do
        for t in nginx fleetgate; do
            if [[ -n ${FOREIGN[$t,$r]:-} ]] && ((${FOREIGN[$t,$r]} >= QUIET_PCT)); then verdict_contended+="${verdict_contended:+, }rep $r $t"; fi
        done
    done
    if [[ -n $verdict_contended ]]; then
        echo "**Caution:** this verdict rests on runs during which other processes used ≥ ${QUIET_PCT}% of a CPU"
        echo "($verdict_contended); see \"Failures and anomalies\"."
    fi
    echo
    echo "For context (not the target's definition): per CPU-second of the proxy process, Fleetgate serves"
    echo "**$(ratio_cell "${MED_RATIO[cpu]}")×** as many requests as nginx (haproxy: $(ratio_cell "${MED_RATIO[cpu-haproxy]}")×); median CPU per request:"
    echo "nginx $(fmt "${MED_CPUUS[nginx]}" '%.1f') µs, haproxy $(fmt "${MED_CPUUS[haproxy]}" '%.1f') µs, Fleetgate $(fmt "${MED_CPUUS[fleetgate]}" '%.1f') µs."
    echo "The proxies used a median of $(fmt "${MED_PCPU[nginx]}" '%.0f')% (nginx), $(fmt "${MED_PCPU[haproxy]}" '%.0f')% (haproxy) and $(fmt "${MED_PCPU[fleetgate]}" '%.0f')% (Fleetgate) of CPU 1;"
    echo "where that is well below 100%, other work on the host took CPU 1 and req/s understates a whole core."
    echo
    echo "## Results (medians over $REPS interleaved repetitions of ${DURATION} s each)"
    echo
    echo "| target (1 worker on CPU 1, keep-alive pool upstream) | req/s | ÷ nginx | p50 | p99 | RSS after run | its CPU | CPU/request | clean runs |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in upstream nginx haproxy fleetgate; do
        case $t in
        nginx) rc="1.000" ;;
        *) rc=$(ratio_cell "${MED_RATIO[$t/nginx]}") ;;
        esac
        printf '| %s | %s | %s | %s ms | %s ms | %s | %s | %s µs | %s/%s |\n' "${LABEL[$t]}" "$(fmt "${MED_RPS[$t]}" '%.0f')" "$rc" \
            "$(fmt "${MED_P50[$t]}" '%.3f')" "$(fmt "${MED_P99[$t]}" '%.3f')" \
            "$([[ $t == upstream ]] && echo '–' || mib "${MED_RSS[$t]}")" "$(fmt "${MED_PCPU[$t]}" '%.0f%%')" \
            "$(fmt "${MED_CPUUS[$t]}" '%.1f')" "${NOK[$t]}" "$REPS"
    done
    echo
    echo "Fleetgate ÷ haproxy (median of per-repetition ratios): **$(ratio_cell "${MED_RATIO[fleetgate/haproxy]}")×**."
    echo "\"÷ nginx\" is the median of per-repetition ratios, not the ratio of the medians. Medians use clean runs only."
    echo
    echo "### Per repetition"
    echo
    echo "| rep | order | nginx req/s | haproxy req/s | Fleetgate req/s | upstream req/s | Fleetgate ÷ nginx | haproxy ÷ nginx | upstream ÷ nginx | Fleetgate ÷ haproxy | Fleetgate p99 ÷ nginx p99 | Fleetgate ÷ nginx per CPU-second |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for ((r = 1; r <= REPS; r++)); do
        order=""
        for ((k = 0; k < ${#TARGETS[@]}; k++)); do order+="${order:+ → }${TARGETS[$(((k + r - 1) % ${#TARGETS[@]}))]}"; done
        cell() { if ok "$1" "$r"; then fmt "${RPS[$1,$r]}" '%.0f'; else echo "FAILED"; fi; }
        printf '| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$r" "$order" \
            "$(cell nginx)" "$(cell haproxy)" "$(cell fleetgate)" "$(cell upstream)" \
            "$(ratio_cell "${RATIO[fleetgate/nginx,$r]}")" "$(ratio_cell "${RATIO[haproxy/nginx,$r]}")" \
            "$(ratio_cell "${RATIO[upstream/nginx,$r]}")" "$(ratio_cell "${RATIO[fleetgate/haproxy,$r]}")" \
            "$(ratio_cell "${RATIO[p99,$r]}")" "$(ratio_cell "${RATIO[cpu,$r]}")"
    done
    printf '| **median** | | %s | %s | %s | %s | **%s** | %s | %s | **%s** | **%s** | %s |\n' \
        "$(fmt "${MED_RPS[nginx]}" '%.0f')" "$(fmt "${MED_RPS[haproxy]}" '%.0f')" "$(fmt "${MED_RPS[fleetgate]}" '%.0f')" \
        "$(fmt "${MED_RPS[upstream]}" '%.0f')" "$(ratio_cell "${MED_RATIO[fleetgate/nginx]}")" \
        "$(ratio_cell "${MED_RATIO[haproxy/nginx]}")" "$(ratio_cell "${MED_RATIO[upstream/nginx]}")" \
        "$(ratio_cell "${MED_RATIO[fleetgate/haproxy]}")" "$(ratio_cell "${MED_RATIO[p99]}")" "$(ratio_cell "${MED_RATIO[cpu]}")"
    echo
    echo "### Every run"
    echo
    echo "| rep | target | req/s | p50 | p99 | RSS | requests | non-2xx | socket errors | its CPU | other processes' CPU | failure |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    for ((r = 1; r <= REPS; r++)); do
        for t in upstream nginx haproxy fleetgate; do
            printf '| %d | %s | %s | %s ms | %s ms | %s | %s | %s | %s | %s | %s | %s |\n' "$r" "$t" \
                "$(fmt "${RPS[$t,$r]:-}" '%.0f')" "$(fmt "${P50[$t,$r]:-}" '%.3f')" "$(fmt "${P99[$t,$r]:-}" '%.3f')" \
                "$([[ $t == upstream ]] && echo '–' || mib "${RSS[$t,$r]:-}")" "${REQS[$t,$r]:-–}" \
                "${NON2XX[$t,$r]:-–}" "${SOCKERR[$t,$r]:-–}" "$([[ -n ${PCPU[$t,$r]:-} ]] && echo "${PCPU[$t,$r]}%" || echo '–')" \
                "$(foreign_cell "$t" "$r")" "${FAIL[$t,$r]:-none}"
        done
    done
    echo
    echo "## Failures and anomalies"
    echo
    any_fail=0
    for t in "${TARGETS[@]}"; do
        for ((r = 1; r <= REPS; r++)); do
            if [[ -n ${FAIL[$t,$r]:-} ]]; then
                echo "- rep $r, ${LABEL[$t]}: ${FAIL[$t,$r]} (counted as a failed run; excluded from medians and ratios)"
                any_fail=1
            fi
        done
    done
    ((any_fail)) || echo "- No failed run: every run answered only 2xx, without socket errors, and every process stayed up."
    contended=""
    for ((r = 1; r <= REPS; r++)); do
        for t in "${TARGETS[@]}"; do
            if [[ -n ${FOREIGN[$t,$r]:-} ]] && (( ${FOREIGN[$t,$r]} >= QUIET_PCT )); then
                contended+="${contended:+, }rep $r $t (${FOREIGN[$t,$r]}%)"
            fi
        done
    done
    if [[ -n $contended ]]; then
        echo "- Contended runs — processes this script did not start used ≥ ${QUIET_PCT}% of a CPU meanwhile: $contended."
        echo "  Their req/s and latencies (and the ratios of their repetitions) reflect a shared host, not the proxy alone."
    else
        echo "- No contended run: other processes used < ${QUIET_PCT}% of a CPU during every measured run."
    fi
    if ((${#REDONE[@]})); then
        echo "- Measured again because they were contended (RETRIES=$RETRIES; the last attempt is the one reported): $(IFS=';'; echo "${REDONE[*]}" | sed 's/;/, /g')."
    fi
    echo "- Waiting for a quiet host (WAIT_QUIET=${WAIT_QUIET}s per run, threshold ${QUIET_PCT}%) took ${WAITED_TOTAL} s in total."
    if [[ -n $FG_DIAG ]]; then
        echo "- Fleetgate diagnostic run (3 s, same load, status codes counted by a wrk Lua script):"
        echo
        echo '```'
        echo "$FG_DIAG"
        echo '```'
    fi
    echo "- Fleetgate log (\`FLEETGATE_LOG_LEVEL=warn\`) had $FG_LOG_LINES line(s) during the whole run."
    if ((FG_LOG_LINES > 0)); then
        echo "  Last lines:"
        echo
        echo '```'
        echo "$FG_LOG_TAIL"
        echo '```'
    fi
    echo
    echo "## Machine"
    echo
    echo "- $(nproc) CPUs: $CPU_MODEL; $MEM_TOTAL RAM; kernel $(uname -r) ($(uname -m))"
    echo "- Load average (1/5/15 min) before measuring: $LOAD_BEFORE; after: $LOAD_AFTER"
    echo "- CPU used by processes this script did not start (the host is shared), in % of one CPU (200% = both):"
    fmed=$(for k in "${!FOREIGN[@]}"; do echo "${FOREIGN[$k]}"; done | median)
    fmax=$(for k in "${!FOREIGN[@]}"; do echo "${FOREIGN[$k]}"; done | sort -g | tail -n 1)
    echo "  ${IDLE_FOREIGN}% in the second before measuring$([[ $IDLE_FOREIGN_TOP == - ]] || echo " ($IDLE_FOREIGN_TOP)");"
    echo "  during the measured runs median $(fmt "$fmed" '%.0f')%, max $(fmt "$fmax" '%.0f')% (per run in the table above; a lower bound)."
    echo "  Such load shifts absolute req/s and latency; ratios within a repetition are the more robust number."
    echo "- Run time: ${TOTAL_SECS} s in total, of which ${MEASURE_SECS} s of measurement"
    echo
    echo "## Versions"
    echo
    echo "- $NGINX_V (Debian package)"
    echo "- $HAPROXY_V"
    echo "- $FG_V, built with \`cargo build --release -p fleetgate\` from commit \`$GIT_COMMIT\` (\"$GIT_SUBJECT\")"
    if ((GIT_DIRTY > 0 || GIT_UNTRACKED > 0)); then
        echo "  plus the working tree's uncommitted changes ($GIT_DIRTY modified tracked file(s) under crates/ and Cargo.*, $GIT_UNTRACKED untracked path(s) under crates/)"
    fi
    echo "- rustc: $(rustc --version 2>/dev/null || echo unknown)"
    echo "- $WRK_V"
    echo
    echo "## Method"
    echo
    echo "- CPU 0: the upstream and wrk. CPU 1: the proxy under test (\`taskset -c 1\`), one worker thread."
    if ((NICE != 0)); then
        echo "- Upstream, proxies and wrk ran at \`nice -n $NICE\` (NICE=$NICE) so that other work on the shared host"
        echo "  took less of CPUs 0 and 1; otherwise the method is unchanged."
    else
        echo "- Everything at the default scheduling priority (NICE=0)."
    fi
    echo "- Upstream: nginx, \`worker_processes 1\`, one \`location /\` answering \`return 200\` with a fixed"
    echo "  $BODY_BYTES-byte \`text/plain\` body, keep-alive (\`keepalive_requests 1000000\`), access log off."
    echo "- Load: \`taskset -c 0 wrk -t1 -c$CONNECTIONS -d${DURATION}s --latency http://127.0.0.1:<port>/bench\`;"
    echo "  before every measured run a ${WARMUP} s warm-up run of the same load against the same target (discarded)."
    echo "  $REPS repetitions; each runs all four targets, the order rotating by one position per repetition."
    echo "- \"Direct to upstream\" is wrk against the upstream itself (upstream and wrk share CPU 0, CPU 1 idle): the ceiling."
    echo "- A run fails if wrk reports any non-2xx response (\"Non-2xx or 3xx responses\"), any socket error,"
    echo "  or the process exits; failed runs are listed above and left out of medians and ratios."
    echo "- RSS: \`VmRSS\` from \`/proc/<pid>/status\` right after each measured run — nginx: sum of its"
    echo "  worker process(es) (master excluded); haproxy: its single process; Fleetgate: the whole"
    echo "  \`fleetgate serve\` process, which also holds the manager (API, SQLite store, dashboard)."
    echo "- \"Its CPU\": user + system time of the proxy process(es) during the measured run (all threads; for"
    echo "  the direct row, the upstream's worker), in % of one CPU. Well below 100% means the proxy waited"
    echo "  rather than computed. Kernel time spent in softirq for loopback traffic is not attributed to it."
    echo "- \"Other processes' CPU\": CPU time of processes this script did not start, from \`/proc/*/stat\`"
    echo "  before and after the run (a lower bound: processes that start and exit in between are missed)."
    echo "- \"CPU/request\": its CPU time divided by the requests served (µs), same caveat about softirq time."
    echo "- Instructions per request (callgrind) are not measured by this script."
    echo
    echo "What each proxy had:"
    echo
    echo "- **nginx**: \`worker_processes 1\`, \`access_log off\`; \`upstream bench { server 127.0.0.1:<upstream>;"
    echo "  keepalive 64; keepalive_requests 1000000; }\`; server-level \`proxy_http_version 1.1;"
    echo "  proxy_set_header Connection \"\";\`; client \`keepalive_requests 1000000\`; $ROUTES prefix"
    echo "  locations \`location /svc<i> { proxy_pass http://bench; }\` (i = 0..$((ROUTES - 1))) plus \`location /bench\`."
    echo "  No other headers added (no X-Forwarded-For)."
    echo "- **haproxy**: \`nbthread 1\`, \`mode http\`, \`option http-keep-alive\`, no \`log\` lines; frontend"
    echo "  \`acl route path_beg -f routes.lst\` (a file of $((ROUTES + 1)) prefixes: /svc0 … /svc$((ROUTES - 1)) and /bench),"
    echo "  \`use_backend bench if route\`; backend \`http-reuse always\`, one server. Run in the foreground (\`-db\`)."
    echo "- **Fleetgate**: \`TOKIO_WORKER_THREADS=1 taskset -c 1 fleetgate serve --data-dir <tmp> --listen"
    echo "  127.0.0.1:<p> --gateway-listen 127.0.0.1:<p2>\` with \`FLEETGATE_BOOTSTRAP_TOKEN\` and"
    echo "  \`FLEETGATE_LOG_LEVEL=warn\` (and \`FLEETGATE_ADMIN_PASSWORD\`; $FG_THREADS OS threads once configured). Configured through its API:"
    echo "  \`PUT /api/v1/settings {\"api\":{\"rate_limit_per_minute\":0}}\`, one upstream \`bench\` (one target,"
    echo "  \`circuit_breaker.enabled: true\`), then $ROUTES routes \`{\"id\":\"r<i>\",\"path\":\"/svc<i>\",\"upstream\":\"bench\"}\`"
    echo "  and \`{\"id\":\"bench\",\"path\":\"/bench\",\"upstream\":\"bench\"}\` — $((ROUTES + 1)) routes, each a new"
    echo "  revision; measured once \`GET /health\` showed \`gateway_revision\` = \`revision\` = $FG_REVISION."
    echo "  The gateway's defaults otherwise (its own forwarded headers, metrics, breaker accounting)."
    echo "- Before measuring, each target's /bench was checked to answer 200 with the $BODY_BYTES-byte body."
} >"$OUT_PATH.new"
# Sections other bench scripts own (bench/redirects.sh, the matcher's criterion numbers) stay.
keep_sections "$OUT_PATH" "$OUT_PATH.new"
mv "$OUT_PATH.new" "$OUT_PATH"
cp "$OUT_PATH" "$RAW/"

log "wrote $OUT: $VERDICT (Fleetgate/nginx $(ratio_cell "$rps_ratio")×, p99 ratio $(ratio_cell "$p99_ratio")×); total ${TOTAL_SECS} s"
