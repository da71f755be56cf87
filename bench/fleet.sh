#!/usr/bin/env bash
# bench/fleet.sh: one manager and a fleet of simulated edges on its node listener.
#
# Method: for each fleet size in SESSIONS, a fresh `fleetgate serve` (release build,
# SQLite in a temporary directory, one gateway worker) on CPU 1 holding one upstream
# and ROUTES routes; the simulator (`fleet-sim`, an example of fleetgate-edge, one
# thread) on CPU 0. The simulator creates the nodes through the API, connects one
# session per node (at most CONNECT_PARALLEL setting up at once: TCP, a full TLS
# handshake, the WebSocket upgrade, registration with the node's token), each
# joining config sync and acking the snapshot it is sent; then every session sends
# `stats` (two flows, ~2.2 KiB) every second and `health` every 15 s. Over a steady
# window of STEADY seconds it takes the manager's CPU (utime + stime from
# /proc/<pid>/stat, in % of one core) and its memory (VmRSS, VmHWM); then it makes
# CHANGES route creations through the API, one every ~2 s, each timed from just
# before the write to the last `config_ack` of the fleet for the new revision.
# Every session parses and checks the first copy of a snapshot frame it is sent;
# a copy identical to one another session already checked is acked without
# parsing it again (VERIFY_EACH=1: every session parses every copy, as ten
# thousand real edges would, each on its own CPU, at ~0.2 ms of the simulator's
# one core per copy). The run-queue wait (schedstat, summed over the manager's
# threads) is how long they were runnable but not running: behind other
# processes on CPU 1, or behind each other.
#
# Usage:  bench/fleet.sh
# Env:    SESSIONS="1000 10000" STEADY=30 CHANGES=5 ROUTES=20 CONNECT_PARALLEL=256
#         FLEETGATE_CPUS=1 SIM_CPUS=0 (taskset lists) VERIFY_EACH=1 PERF=1 NO_BUILD=1 FLEETGATE=<binary> SIM=<fleet-sim binary> KEEP_TMP=1
#         OUT=BENCHMARKS.md
# Writes the section `fleet` of BENCHMARKS.md; raw outputs go to
# bench/out/fleet-<timestamp>/ (git-ignored).
set -euo pipefail

SESSIONS=${SESSIONS:-"1000 10000"}
STEADY=${STEADY:-30}
CHANGES=${CHANGES:-5}
ROUTES=${ROUTES:-20}
CONNECT_PARALLEL=${CONNECT_PARALLEL:-256}
OUT=${OUT:-BENCHMARKS.md}

log() { printf '[fleet.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf 'fleet.sh: error: %s\n' "$*" >&2
    exit 1
}
for v in STEADY CHANGES ROUTES CONNECT_PARALLEL; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
for n in $SESSIONS; do [[ $n =~ ^[1-9][0-9]*$ ]] || die "SESSIONS holds '$n', not a count"; done

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$ROOT"
# shellcheck source=lib/keep-sections.sh
source "$SCRIPT_DIR/lib/keep-sections.sh"
# shellcheck source=lib/fleetgate.sh
source "$SCRIPT_DIR/lib/fleetgate.sh"
case $OUT in /*) OUT_PATH=$OUT ;; *) OUT_PATH="$ROOT/$OUT" ;; esac

for c in curl taskset python3; do command -v "$c" >/dev/null 2>&1 || die "missing $c"; done
taskset -c 0 true 2>/dev/null && taskset -c 1 true 2>/dev/null || die "needs CPUs 0 and 1"

# Two descriptors per session (the simulator's end and the manager's), and a few more.
max=0
for n in $SESSIONS; do ((n > max)) && max=$n; done
want=$((max + 4096))
ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) >= want)) || die "ulimit -n is $(ulimit -n); $want needed for $max sessions"

TARGET_DIR=${CARGO_TARGET_DIR:-"$ROOT/target"}
if [[ -z ${NO_BUILD:-} ]]; then
    log "building fleetgate and fleet-sim (release)"
    cargo build --release -q -p fleetgate
    cargo build --release -q -p fleetgate-edge --example fleet-sim
fi
FLEETGATE=${FLEETGATE:-"$TARGET_DIR/release/fleetgate"}
SIM=${SIM:-"$TARGET_DIR/release/examples/fleet-sim"}
[[ -x $FLEETGATE ]] || die "$FLEETGATE is missing (unset NO_BUILD)"
[[ -x $SIM ]] || die "$SIM is missing (unset NO_BUILD)"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RAW="$ROOT/bench/out/fleet-$STAMP"
mkdir -p "$RAW"
WORK=$(mktemp -d)
PID=""
cleanup() {
    [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    [[ -n ${KEEP_TMP:-} ]] && log "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for n in $SESSIONS; do
    log "fleet of $n: starting the manager"
    start_fleetgate "$WORK/data-$n" "$RAW/fleetgate-$n.log"
    json PUT /api/v1/settings '{"api":{"rate_limit_per_minute":0}}'
    python3 - "$ROUTES" >"$WORK/config.json" <<'EOF'
import json, sys
n = int(sys.argv[1])
print(json.dumps({
    "format_version": 1,
    "settings": {"api": {"rate_limit_per_minute": 0}},
    "upstreams": [{"name": "up", "targets": [{"url": "http://127.0.0.1:9"}]}],
    "routes": [{"id": f"r{i:04}", "path": f"/svc-{i}", "upstream": "up"} for i in range(n)],
}))
EOF
    api POST /api/v1/import -H 'Content-Type: application/json' --data-binary @"$WORK/config.json" >/dev/null
    log "fleet of $n: running the simulator"
    if [[ -n ${PERF:-} ]]; then
        # Profiles of the manager: the steady window, then the changes.
        (
            until grep -q 'steady window' "$RAW/sim-$n.log" 2>/dev/null; do sleep 0.2; done
            perf record -q -e cpu-clock -F 499 -p "$PID" -o "$RAW/perf-steady-$n.data" -- sleep "$STEADY" 2>/dev/null
            perf record -q -e cpu-clock -F 499 -p "$PID" -o "$RAW/perf-changes-$n.data" -- sleep $((CHANGES * 4)) 2>/dev/null
        ) &
    fi
    taskset -c "${SIM_CPUS:-0}" "$SIM" --api "127.0.0.1:${API##*:}" --token "$TOKEN" --node "127.0.0.1:$NODE_PORT" \
        --pid "$PID" --sessions "$n" --steady "$STEADY" --changes "$CHANGES" \
        --connect-parallel "$CONNECT_PARALLEL" ${VERIFY_EACH:+--verify-each} \
        >"$RAW/result-$n.json" 2>"$RAW/sim-$n.log" ||
        die "the simulator failed; see $RAW/sim-$n.log"
    kill "$PID" && wait "$PID" 2>/dev/null || true
    PID=""
    rm -rf "$WORK/data-$n"
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

SECTION="$WORK/section.md"
{
    echo "## Fleet: one manager, thousands of edge sessions"
    echo
    echo "\`bench/fleet.sh\` at $(git rev-parse --short HEAD) ($(date -u +%Y-%m-%d)): \`fleetgate serve\` (release, SQLite) on CPU ${FLEETGATE_CPUS:-1}"
    echo "with $ROUTES routes; the simulator (\`fleet-sim\`, one thread) on CPU ${SIM_CPUS:-0}. Sessions register with"
    echo "their token (full TLS handshake each, $CONNECT_PARALLEL setting up at once), join config sync, send"
    echo "\`stats\` every second and \`health\` every 15 s. Steady window $STEADY s; $CHANGES route creations"
    echo "through the API, each timed from just before the write to the last \`config_ack\` of the fleet."
    echo "CPU in % of one core (utime + stime over the window). Load average before / after: $LOAD_BEFORE / $LOAD_AFTER."
    echo
    python3 - "$RAW" $SESSIONS <<'EOF'
import json, sys
raw, sizes = sys.argv[1], sys.argv[2:]
rows = [json.load(open(f"{raw}/result-{n}.json")) for n in sizes]
def f(x, unit=""):
    return "–" if x is None else f"{x:g}{unit}"
print("| sessions | " + " | ".join(str(r["sessions"]) for r in rows) + " | target |")
print("|---|" + "---:|" * len(rows) + "---|")
def row(name, get, target=""):
    print(f"| {name} | " + " | ".join(get(r) for r in rows) + f" | {target} |")
row("all connected and registered", lambda r: f(r["connect"]["all_connected_s"], " s"))
row("per-session setup p50 / p99", lambda r: f'{f(r["connect"]["per_session_ms"]["p50"])} / {f(r["connect"]["per_session_ms"]["p99"], " ms")}')
row("manager CPU while connecting", lambda r: f(r["connect"]["manager_cpu_pct"], " %"))
row("manager CPU, steady", lambda r: f(r["steady"]["manager_cpu_pct"], " %"))
row("manager run-queue wait, steady", lambda r: f(r["steady"].get("manager_wait_pct"), " %"))
row("simulator CPU, steady", lambda r: f(r["steady"]["sim_cpu_pct"], " %"))
row("manager RSS, steady", lambda r: f(r["steady"]["memory"]["rss_mib"], " MiB"), "< 1024 MiB")
row("manager RSS after the changes / VmHWM", lambda r: f'{f(r["changes"]["memory"]["rss_mib"])} / {f(r["changes"]["memory"]["hwm_mib"], " MiB")}', "< 1024 MiB")
row("change → last ack, p50 / max", lambda r: f'{f(r["changes"]["last_ack_ms"]["p50"])} / {f(r["changes"]["last_ack_ms"]["max"], " ms")}', "< 1000 ms")
row("API write, p50", lambda r: f(sorted(c["write_ms"] for c in r["changes"]["each"])[len(r["changes"]["each"]) // 2], " ms"))
def mean(r, k):
    xs = [c.get(k) for c in r["changes"]["each"] if c.get(k) is not None]
    return round(sum(xs) / len(xs), 1) if xs else None
row("manager CPU / run-queue wait during a change (mean)", lambda r: f'{f(mean(r, "manager_cpu_pct"))} / {f(mean(r, "manager_wait_pct"), " %")}')
row("simulator CPU during a change (mean)", lambda r: f(mean(r, "sim_cpu_pct"), " %"))
row("change → last ack, each", lambda r: ", ".join(f(c["last_ack_ms"]) for c in r["changes"]["each"]) + " ms")
row("snapshot frame", lambda r: f(r["snapshot_frame_bytes"], " B"))
row("manager RSS idle (nodes created)", lambda r: f(r["memory_idle"]["rss_mib"], " MiB"))
row("disconnects / refused snapshots / digest mismatches", lambda r: f'{r["disconnects"]} / {r["refused_snapshots"]} / {r["digest_mismatches"]}')
row("every session parses every snapshot", lambda r: "yes" if r.get("verify_each") else "first copy only")
EOF
    echo
    echo "Raw results: \`bench/out/fleet-$STAMP/\` (not committed)."
} >"$SECTION"
cat "$SECTION" >&2
put_section "$OUT_PATH" fleet "$SECTION"
log "wrote the fleet section of $OUT"
