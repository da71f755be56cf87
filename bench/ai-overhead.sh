#!/usr/bin/env bash
# bench/ai-overhead.sh: the latency Fleetgate's AI gateway adds to one request at a time.
#
# Method: nginx on CPU 0 plays an OpenAI-compatible provider with fixed answers (a whole
# chat completion with its usage at /v1/chat/completions, and a streamed one — three SSE
# events, the last with usage, then [DONE] — at /sse/v1/chat/completions), and answers
# OTLP exports at /v1/traces. `fleetgate serve` (release, SQLite, one gateway worker, CPU 1)
# holds two `ai` routes with everything on: an API key is required, a route rate limit per
# API key, a `block` budget (its worst case reserved before the request is sent, settled
# after), a price override so every request is priced, usage recorded, and OpenTelemetry
# tracing with every request sampled and exported over OTLP/HTTP. `wrk -t1 -c1` (one
# request at a time, CPU 0) posts the same chat request to the provider directly and
# through the gateway, REPS interleaved repetitions of DURATION s each. Added latency is
# the gateway's percentile minus the direct percentile of the same repetition; the
# report gives the medians over repetitions. For the streamed answer wrk times the
# whole response, which is three small events sent at once, so the added time to the
# first token is at most the added time shown.
#
# Usage:  bench/ai-overhead.sh      Env: REPS=5 DURATION=10 NO_BUILD=1 FLEETGATE=… OUT=BENCHMARKS.md
# Writes the section `ai-overhead` of BENCHMARKS.md; raw outputs go to
# bench/out/ai-overhead-<timestamp>/ (git-ignored).
set -euo pipefail

REPS=${REPS:-5}
DURATION=${DURATION:-10}
OUT=${OUT:-BENCHMARKS.md}
log() { printf '[ai-overhead.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf 'ai-overhead.sh: error: %s\n' "$*" >&2
    exit 1
}
for v in REPS DURATION; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$ROOT"
# shellcheck source=lib/keep-sections.sh
source "$SCRIPT_DIR/lib/keep-sections.sh"
# shellcheck source=lib/fleetgate.sh
source "$SCRIPT_DIR/lib/fleetgate.sh"
case $OUT in /*) OUT_PATH=$OUT ;; *) OUT_PATH="$ROOT/$OUT" ;; esac
export PATH="$PATH:/usr/sbin:/sbin"
for c in nginx wrk curl taskset python3; do command -v "$c" >/dev/null || die "$c is missing (bench/proxy.sh installs them)"; done

if [[ -z ${NO_BUILD:-} ]]; then
    log "building fleetgate (release)"
    cargo build --release -q -p fleetgate
fi
FLEETGATE=${FLEETGATE:-"$ROOT/target/release/fleetgate"}
[[ -x $FLEETGATE ]] || die "$FLEETGATE is missing (unset NO_BUILD)"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RAW="$ROOT/bench/out/ai-overhead-$STAMP"
mkdir -p "$RAW"
WORK=$(mktemp -d)
PID=""
cleanup() {
    [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    [[ -f $WORK/up/nginx.pid ]] && kill "$(cat "$WORK/up/nginx.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

UP=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/up"
WHOLE='{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"house-llm","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}'
CHUNK='{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"house-llm","choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}]}'
LAST='{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"house-llm","choices":[{"index":0,"delta":{"content":" there."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}'
cat >"$WORK/up/nginx.conf" <<NGINX
$([[ $(id -u) -eq 0 ]] && echo "user root;")
worker_processes 1; daemon off; master_process on; pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log warn;
events { worker_connections 1024; }
http {
    access_log off; keepalive_timeout 120s; keepalive_requests 1000000;
    client_body_temp_path $WORK/up/b; proxy_temp_path $WORK/up/p; fastcgi_temp_path $WORK/up/f;
    uwsgi_temp_path $WORK/up/u; scgi_temp_path $WORK/up/s;
    server {
        listen 127.0.0.1:$UP;
        location = /v1/chat/completions { default_type application/json; return 200 '$WHOLE'; }
        location = /sse/v1/chat/completions {
            default_type text/event-stream;
            return 200 'data: $CHUNK

data: $LAST

data: [DONE]

';
        }
        location = /v1/traces { default_type application/x-protobuf; return 200 ''; }
    }
}
NGINX
taskset -c 0 nginx -p "$WORK/up" -e "$WORK/up/error.log" -c "$WORK/up/nginx.conf" >"$RAW/nginx.log" 2>&1 &
for _ in $(seq 50); do curl -s -o /dev/null -X POST "http://127.0.0.1:$UP/v1/chat/completions" && break; sleep 0.1; done

cat >"$WORK/fleetgate.toml" <<TOML
[tracing]
endpoint = "http://127.0.0.1:$UP"
protocol = "http/protobuf"
TOML
BENCH_CONFIG="$WORK/fleetgate.toml" start_fleetgate "$WORK/data" "$RAW/fleetgate.log"

json PUT /api/v1/settings '{"api":{"rate_limit_per_minute":0},"tracing":{"sample_ratio":1.0}}'
for p in plain:/v1 sse:/sse/v1; do
    json POST /api/v1/ai/providers "{\"name\":\"${p%%:*}\",\"kind\":\"openai_compatible\",\"base_url\":\"http://127.0.0.1:$UP${p#*:}\",\"api_key\":\"sk-bench-provider\",\"default_model\":\"house-llm\"}"
done
json PUT /api/v1/ai/prices/house-llm '{"input_usd_per_million":"1.00","output_usd_per_million":"2.00"}'
json POST /api/v1/ai/budgets '{"name":"bench","period":"monthly","limit_usd":"100000.00","alert_threshold":0.9,"action_on_exceed":"block"}'
KEY=$(api POST /api/v1/api-keys -H 'Content-Type: application/json' --data '{"name":"bench-caller","role":"viewer"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
LIMIT='"rate_limit":{"max":100000000,"window_ms":60000,"key":"api_key"}'
json POST /api/v1/routes "{\"id\":\"llm\",\"path\":\"/v1\",$LIMIT,\"ai\":{\"provider\":\"plain\",\"models\":[\"house-llm\"],\"budgets\":[\"bench\"]}}"
json POST /api/v1/routes "{\"id\":\"llm-sse\",\"path\":\"/sse/v1\",$LIMIT,\"ai\":{\"provider\":\"sse\",\"models\":[\"house-llm\"],\"budgets\":[\"bench\"]}}"

lua() { # lua FILE STREAM AUTH
    cat >"$1" <<LUA
wrk.method = "POST"
wrk.body = '{"model":"house-llm","messages":[{"role":"user","content":"Hello"}],"max_tokens":16$([[ $2 == 1 ]] && echo ',"stream":true')}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $3"
LUA
}
lua "$WORK/whole.lua" 0 "$KEY"
lua "$WORK/stream.lua" 1 "$KEY"
for _ in $(seq 100); do
    code=$(curl -s -o "$WORK/probe" -w '%{http_code}' -X POST -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        --data '{"model":"house-llm","messages":[{"role":"user","content":"Hello"}],"max_tokens":16}' "$GW/v1/chat/completions")
    [[ $code == 200 ]] && break
    sleep 0.1
done
[[ $code == 200 ]] || die "the AI route answered $code: $(head -c 300 "$WORK/probe")"
grep -q 'Hello there' "$WORK/probe" || die "the AI route's answer is not the provider's: $(head -c 300 "$WORK/probe")"
code=$(curl -s -o "$WORK/probe" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    --data '{"model":"house-llm","messages":[]}' "$GW/v1/chat/completions")
[[ $code == 401 ]] || die "the AI route answered $code without an API key (expected 401)"

# run NAME URL LUA: one wrk run, its output kept; prints "p50_us p99_us req_per_s non2xx".
run() {
    taskset -c 0 wrk -t1 -c1 -d"${DURATION}s" --latency -s "$3" "$2" >"$RAW/$1.txt" 2>&1
    python3 - "$RAW/$1.txt" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def us(s):
    v, u = float(re.match(r'([\d.]+)', s)[1]), re.search(r'(us|ms|s)$', s)[1]
    return v * {'us': 1, 'ms': 1e3, 's': 1e6}[u]
p = {m[1]: us(m[2]) for m in re.finditer(r'^\s+(50|99)(?:\.000)?%\s+(\S+)', t, re.M)}
rps = float(re.search(r'Requests/sec:\s+([\d.]+)', t)[1])
bad = re.search(r'Non-2xx or 3xx responses:\s+(\d+)', t)
print(f"{p['50']:.1f} {p['99']:.1f} {rps:.0f} {bad[1] if bad else 0}")
PY
}

taskset -c 0 wrk -t1 -c1 -d2s -s "$WORK/whole.lua" "$GW/v1/chat/completions" >/dev/null
: >"$RAW/runs.txt"
for rep in $(seq "$REPS"); do
    for target in direct-whole gateway-whole direct-stream gateway-stream; do
        case $target in
        direct-whole) url="http://127.0.0.1:$UP/v1/chat/completions" s=whole ;;
        gateway-whole) url="$GW/v1/chat/completions" s=whole ;;
        direct-stream) url="http://127.0.0.1:$UP/sse/v1/chat/completions" s=stream ;;
        gateway-stream) url="$GW/sse/v1/chat/completions" s=stream ;;
        esac
        r=$(run "$target-$rep" "$url" "$WORK/$s.lua")
        log "rep $rep $target: p50 p99 (µs), req/s, non-2xx: $r"
        echo "$rep $target $r" >>"$RAW/runs.txt"
    done
done
USAGE=$(api GET '/api/v1/ai/usage?group_by=model' | python3 -c 'import json,sys; t=json.load(sys.stdin)["totals"]; print(t["requests"], t["cost_usd"])')
SPANS=$(api GET /metrics | awk '/^fleetgate_otel_spans_exported_total/ {print $2}')
RSS=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
VERSION=$("$FLEETGATE" version 2>/dev/null | head -1)

REPORT=$(python3 - "$RAW/runs.txt" "$REPS" "$DURATION" "$USAGE" "${SPANS:-0}" "$RSS" "$VERSION" "$STAMP" <<'PY'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1])]
reps, dur, usage, spans, rss, version, stamp = sys.argv[2:9]
by = {}
for rep, target, p50, p99, rps, bad in rows:
    by.setdefault(rep, {})[target] = (float(p50), float(p99), float(rps), int(bad))
bad = sum(v[3] for r in by.values() for v in r.values())
med = lambda xs: st.median(xs)
out = []
out.append("## AI gateway: latency added to one request at a time (`bench/ai-overhead.sh`)\n")
out.append(f"Generated by `bench/ai-overhead.sh` ({reps} interleaved repetitions of {dur} s per target, "
           f"`wrk -t1 -c1`) at {stamp}; Fleetgate: `{version}`. Raw outputs: `bench/out/ai-overhead-{stamp}/` (git-ignored).\n")
out.append("Everything on: API-key auth, a per-key route rate limit, a `block` budget (worst case reserved, "
           "settled after), pricing and usage records, and OpenTelemetry tracing of every request (sample ratio 1, "
           "OTLP/HTTP export). The provider is nginx with fixed answers; *added* is the gateway's percentile minus "
           "the direct one in the same repetition (medians over repetitions). Target: p99 added ≤ 0.5 ms, and ≤ 0.5 ms "
           "to the first token when streaming.\n")
out.append("| answer | direct p50 | direct p99 | through Fleetgate p50 | through Fleetgate p99 | added p50 | **added p99** | target |")
out.append("|---|---:|---:|---:|---:|---:|---:|---|")
for kind, label in (("whole", "whole (JSON)"), ("stream", "streamed (SSE), whole stream timed")):
    d50 = med([by[r][f"direct-{kind}"][0] for r in by]); d99 = med([by[r][f"direct-{kind}"][1] for r in by])
    g50 = med([by[r][f"gateway-{kind}"][0] for r in by]); g99 = med([by[r][f"gateway-{kind}"][1] for r in by])
    a50 = med([by[r][f"gateway-{kind}"][0] - by[r][f"direct-{kind}"][0] for r in by])
    a99 = med([by[r][f"gateway-{kind}"][1] - by[r][f"direct-{kind}"][1] for r in by])
    ok = "met" if a99 <= 500 else "**not met**"
    out.append(f"| {label} | {d50:.0f} µs | {d99:.0f} µs | {g50:.0f} µs | {g99:.0f} µs | {a50:.0f} µs | **{a99:.0f} µs** | ≤ 500 µs: {ok} |")
out.append("")
out.append("| rep | target | p50 (µs) | p99 (µs) | req/s |")
out.append("|---:|---|---:|---:|---:|")
for rep, target, p50, p99, rps, _ in rows:
    out.append(f"| {rep} | {target} | {float(p50):.0f} | {float(p99):.0f} | {float(rps):.0f} |")
out.append("")
n, cost = usage.split()
out.append(f"- Answers other than 2xx: {bad}. Usage recorded by the gateway: {n} requests priced, {cost} USD; "
           f"spans exported over OTLP: {spans}; RSS of the process after the runs: {int(rss) / 1024:.1f} MiB.")
print("\n".join(out))
PY
)
printf '%s\n' "$REPORT" | tee "$RAW/section.md"
put_section "$OUT_PATH" ai-overhead "$RAW/section.md"
log "wrote the ai-overhead section of $OUT_PATH"
