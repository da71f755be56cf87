#!/usr/bin/env bash
# bench/redirects.sh: Fleetgate's gateway answering redirects with 100,000 rules against
# the same gateway with 10 rules, in one process and one run.
#
# Method: `fleetgate serve` (release build) on CPU 1 with one gateway worker, wrk -t1 on
# CPU 0. Two projects are published: `big.test` with 100,000 mixed rules (70% BASIC, 20%
# BASIC_HOST, 10% REGEX with literal prefixes, plus 1,000 regexes without one) imported
# as CSV, and `small.test` with 10 rules of the same kinds. For each case — an exact hit
# (BASIC), an exact host hit (BASIC_HOST), a miss (no rule, no route: the gateway's 404)
# and a regex hit with `$n` substitution — the two hosts are measured in interleaved
# repetitions; the report gives req/s and the median of per-repetition ratios big/small.
# The 100,000-row CSV import and the publish are timed with curl on the way.
#
# Usage:  bench/redirects.sh
# Env:    REPS=3 DURATION=5 WARMUP=1 CONNECTIONS=32 NO_BUILD=1 KEEP_TMP=1 OUT=BENCHMARKS.md
# Writes the section `redirects-gateway` of BENCHMARKS.md; raw outputs go to
# bench/out/redirects-<timestamp>/ (git-ignored).
set -euo pipefail

REPS=${REPS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONNECTIONS=${CONNECTIONS:-32}
OUT=${OUT:-BENCHMARKS.md}
RULES=100000

log() { printf '[redirects.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf 'redirects.sh: error: %s\n' "$*" >&2
    exit 1
}
for v in REPS DURATION WARMUP CONNECTIONS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
((REPS >= 1 && DURATION >= 1)) || die "REPS and DURATION must be at least 1"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$ROOT"
# shellcheck source=lib/keep-sections.sh
source "$SCRIPT_DIR/lib/keep-sections.sh"
# shellcheck source=lib/fleetgate.sh
source "$SCRIPT_DIR/lib/fleetgate.sh"
case $OUT in /*) OUT_PATH=$OUT ;; *) OUT_PATH="$ROOT/$OUT" ;; esac

missing=()
for c in wrk curl taskset python3; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
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
FLEETGATE="$ROOT/target/release/fleetgate"
[[ -x $FLEETGATE ]] || die "$FLEETGATE is missing (unset NO_BUILD)"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RAW="$ROOT/bench/out/redirects-$STAMP"
mkdir -p "$RAW"
WORK=$(mktemp -d)
PID=""
cleanup() {
    [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    [[ -n ${KEEP_TMP:-} ]] && log "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

start_fleetgate "$WORK/data" "$RAW/fleetgate.log"

json PUT /api/v1/settings '{"api":{"rate_limit_per_minute":0}}'
json POST /api/v1/namespaces '{"name":"bench"}'
json POST /api/v1/namespaces/bench/projects '{"name":"big","hosts":["big.test"]}'
json POST /api/v1/namespaces/bench/projects '{"name":"small","hosts":["small.test"]}'

# rules.csv N HOST: the mixed set; row i's kind is fixed by i so the hit URLs are known.
python3 - "$RULES" big.test >"$WORK/big.csv" <<'EOF'
import sys
n, host = int(sys.argv[1]), sys.argv[2]
print("type,source,target,status")
no_prefix = 1000
for i in range(n - no_prefix):
    k = i % 10
    if k < 7:
        print(f"BASIC,/page-{i}/index.html?ref=news,/new/{i},MOVED_PERMANENT")
    elif k < 9:
        print(f"BASIC_HOST,{host}/shop-{i}/item,https://shop.example.com/{i},FOUND")
    else:
        print(f"REGEX,^/blog-{i}/(\\d+)/(.*)$,/articles/{i}/$1?slug=$2,PERMANENT_REDIRECT")
for j in range(no_prefix):
    if j % 2:
        print(f"REGEX,(?i)^/legacy-{j}/(.*)$,/modern/{j}/$1,FOUND")
    else:
        print(f"REGEX,.*/file-{j}\\.php$,/files/{j},FOUND")
EOF
cat >"$WORK/small.csv" <<'EOF'
type,source,target,status
BASIC,/page-0/index.html?ref=news,/new/0,MOVED_PERMANENT
BASIC,/page-1/index.html?ref=news,/new/1,MOVED_PERMANENT
BASIC,/page-2/index.html?ref=news,/new/2,MOVED_PERMANENT
BASIC,/page-3/index.html?ref=news,/new/3,MOVED_PERMANENT
BASIC_HOST,small.test/shop-7/item,https://shop.example.com/7,FOUND
BASIC_HOST,small.test/shop-8/item,https://shop.example.com/8,FOUND
REGEX,^/blog-9/(\d+)/(.*)$,/articles/9/$1?slug=$2,PERMANENT_REDIRECT
REGEX,^/blog-19/(\d+)/(.*)$,/articles/19/$1?slug=$2,PERMANENT_REDIRECT
REGEX,(?i)^/legacy-1/(.*)$,/modern/1/$1,FOUND
REGEX,.*/file-0\.php$,/files/0,FOUND
EOF
ROWS=$(($(wc -l <"$WORK/big.csv") - 1))
log "importing $ROWS rows ($(du -k "$WORK/big.csv" | cut -f1) KiB of CSV)"
IMPORT_S=$(curl -fsS -o "$RAW/import.json" -w '%{time_total}' -X POST -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: text/csv' --data-binary @"$WORK/big.csv" "$API/api/v1/namespaces/bench/projects/big/redirects/import") ||
    die "import failed: $(cat "$RAW/import.json" 2>/dev/null)"
api POST /api/v1/namespaces/bench/projects/small/redirects/import -H 'Content-Type: text/csv' --data-binary @"$WORK/small.csv" >/dev/null
PUBLISH_S=$(curl -fsS -o "$RAW/publish.json" -w '%{time_total}' -X POST -H "Authorization: Bearer $TOKEN" \
    "$API/api/v1/namespaces/bench/projects/big/publish") || die "publish failed"
api POST /api/v1/namespaces/bench/projects/small/publish >/dev/null
# The compiled set is live once the last rule answers.
t0=$(date +%s.%N)
for _ in $(seq 600); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: big.test' "$GW/legacy-999/x")
    [[ $code == 302 ]] && break
    sleep 0.05
done
[[ $code == 302 ]] || die "the 100k set never went live"
LIVE_S=$(python3 -c "import time; print(f'{time.time() - $t0:.2f}')")
COMPILE_LOG=$(grep -o '"ms":[0-9]*' "$RAW/fleetgate.log" | tail -1 || true)
RSS_KIB=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")

declare -A URL
URL[exact]="/page-4200/index.html?ref=news"      # i=4200: k=0 → BASIC
URL[host]="/shop-4207/item"                      # i=4207: k=7 → BASIC_HOST
URL[miss]="/nothing/here/at-all?q=1"
URL[regex]="/blog-4209/2024/hello-world"          # i=4209: k=9 → REGEX
declare -A WANT=([exact]=301 [host]=302 [miss]=404 [regex]=308)
declare -A SMALL_URL=([exact]="/page-3/index.html?ref=news" [host]="/shop-7/item" [miss]="/nothing/here/at-all?q=1" [regex]="/blog-9/2024/hello-world")
for c in exact host miss regex; do
    for h in big small; do
        u=${URL[$c]}
        [[ $h == small ]] && u=${SMALL_URL[$c]}
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $h.test" "$GW$u")
        [[ $code == "${WANT[$c]}" ]] || die "$h.test$u answered $code, want ${WANT[$c]}"
    done
done

# wrk needs the Host header as a script-free option: -H works for it.
run() { # run CASE HOSTNAME SECONDS OUT
    local u=${URL[$1]}
    [[ $2 == small ]] && u=${SMALL_URL[$1]}
    taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d"$3s" --latency -H "Host: $2.test" "$GW$u" >"$4" 2>&1 || true
}
rps_of() { awk '/Requests\/sec/ {print $2}' "$1"; }
p99_of() { awk '$1 == "99%" {print $2}' "$1"; }

declare -A RPS
for r in $(seq "$REPS"); do
    for c in exact host miss regex; do
        for h in small big; do
            ((WARMUP > 0)) && run "$c" "$h" "$WARMUP" /dev/null
            run "$c" "$h" "$DURATION" "$RAW/rep$r-$c-$h.txt"
            RPS[$r,$c,$h]=$(rps_of "$RAW/rep$r-$c-$h.txt")
            log "rep $r $c $h: ${RPS[$r,$c,$h]} req/s"
        done
    done
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
SECTION="$WORK/section.md"
{
    echo "## Redirects through the gateway: 100,000 rules vs 10"
    echo
    echo "Generated by \`bench/redirects.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') (REPS=$REPS, DURATION=${DURATION}s,"
    echo "wrk -t1 -c$CONNECTIONS on CPU 0, \`fleetgate serve\` with one gateway worker on CPU 1; raw outputs in"
    echo "\`bench/out/redirects-$STAMP/\`). Both projects are served by the same process, by host."
    echo
    echo "| case | URL | 10 rules req/s | 100k rules req/s | ratio 100k/10 (median) | target | |"
    echo "|---|---|---|---|---|---|---|"
    for c in exact host miss regex; do
        small=$(for r in $(seq "$REPS"); do echo "${RPS[$r,$c,small]}"; done | median)
        big=$(for r in $(seq "$REPS"); do echo "${RPS[$r,$c,big]}"; done | median)
        ratio=$(for r in $(seq "$REPS"); do python3 -c "print(${RPS[$r,$c,big]} / ${RPS[$r,$c,small]})"; done | median)
        target=0.9
        [[ $c == regex ]] && target=0.7
        met=$(python3 -c "print('MET' if $ratio >= $target else 'NOT MET')")
        printf '| %s | `%s` | %.0f | %.0f | %.3f× | ≥ %s× | %s |\n' "$c" "${URL[$c]}" "$small" "$big" "$ratio" "$target" "$met"
    done
    echo
    echo "Loading the 100,000-rule set ($ROWS rows, CSV) into the running manager:"
    echo
    echo "| step | measured | target |"
    echo "|---|---|---|"
    met=$(python3 -c "print('MET' if $IMPORT_S < 10 else 'NOT MET')")
    echo "| \`POST …/redirects/import\` (validate all, write drafts) | ${IMPORT_S} s | < 10 s ($met) |"
    echo "| \`POST …/publish\` | ${PUBLISH_S} s | |"
    echo "| publish answered → last rule live in the gateway (load + compile + swap) | ${LIVE_S} s | |"
    echo "| gateway process RSS with both sets loaded | $((RSS_KIB / 1024)) MiB | |"
    [[ -n $COMPILE_LOG ]] && echo && echo "Compile time the manager logged for the last set: \`$COMPILE_LOG\`."
} >"$SECTION"
put_section "$OUT_PATH" redirects-gateway "$SECTION"
cp "$SECTION" "$RAW/"
log "wrote the redirects-gateway section of $OUT"
