#!/usr/bin/env bash
# bench/deployments.sh: the footprint of `fleetgate serve` hosting deployments.
#
# Starts the release binary (bench/lib/fleetgate.sh), measures its resident memory and
# CPU while idle with no deployment, then creates N process-driver deployments through
# the API (each one service, `sleep infinity` under `restart: always`, with a domain so
# that it also gets its gateway route and upstream), waits until every service runs,
# and measures again over SECONDS of idleness: VmRSS of the fleetgate process (sampled
# every second: median and max) and its CPU time (utime + stime from /proc/<pid>/stat)
# as a percentage of one core. The apps' own processes are not counted: they are the
# operator's. Prints one line per phase.
#
# Usage:  bench/deployments.sh [N=50] [SECONDS=60]
# Env:    FLEETGATE=target/release/fleetgate (build it first: cargo build --release -p fleetgate)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50}
SECS=${2:-60}
FLEETGATE=${FLEETGATE:-target/release/fleetgate}
die() { echo "deployments.sh: $*" >&2; exit 1; }
for c in curl jq python3 taskset; do command -v $c >/dev/null || die "$c is missing"; done
[[ -x $FLEETGATE ]] || die "no $FLEETGATE: cargo build --release -p fleetgate"
# shellcheck source=lib/fleetgate.sh
source "$(dirname "$0")/lib/fleetgate.sh"
WORK=$(mktemp -d /tmp/fleetgate-deployments.XXXXXX)
cleanup() { kill "${PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
FLEETGATE_CPUS=${FLEETGATE_CPUS:-0,1}
start_fleetgate "$WORK/data" "$WORK/fleetgate.log"
AUTH="Authorization: Bearer $TOKEN"
TICK=$(getconf CLK_TCK)

# measure LABEL: SECS seconds of samples of the fleetgate process.
measure() {
    local label=$1 t0 t1 rss=()
    t0=$(awk '{print $14 + $15}' "/proc/$PID/stat")
    for _ in $(seq "$SECS"); do
        rss+=("$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status")")
        sleep 1
    done
    t1=$(awk '{print $14 + $15}' "/proc/$PID/stat")
    printf '%s\n' "${rss[@]}" | sort -n | awk -v label="$label" -v cpu="$(( t1 - t0 ))" \
        -v tick="$TICK" -v secs="$SECS" '
        { v[NR] = $1 }
        END {
            printf "%s: RSS median %.1f MiB, max %.1f MiB; CPU %.2f%% of a core over %d s\n",
                label, v[int((NR + 1) / 2)] / 1024, v[NR] / 1024, 100 * cpu / tick / secs, secs
        }'
}

sleep 2
measure "idle, no deployment"
for i in $(seq "$N"); do
    compose=$'services:\n  app:\n    command: ["sleep", "infinity"]\n    restart: always\n'
    service="domains: [app-$i.bench.test]"$'\n'"port: $((20000 + i))"$'\n'
    code=$(jq -n --arg n "app-$i" --arg c "$compose" --arg s "$service" \
        '{name: $n, compose: $c, service: $s}' |
        curl -s -o "$WORK/create.json" -w '%{http_code}' -H "$AUTH" \
            -H 'Content-Type: application/json' -d @- "$API/api/v1/deployments")
    [[ $code == 201 ]] || die "creating app-$i answered $code: $(cat "$WORK/create.json")"
done
for _ in $(seq 60); do
    running=$(curl -s -H "$AUTH" "$API/api/v1/deployments" | jq '[.items[] | select(.status == "running")] | length')
    [[ $running == "$N" ]] && break
    sleep 1
done
[[ $running == "$N" ]] || die "only $running of $N deployments run"
routes=$(curl -s -H "$AUTH" "$API/api/v1/routes?limit=1000" | jq '.total')
echo "deployments running: $running; gateway routes: $routes"
sleep 5
measure "idle, $N deployments"
