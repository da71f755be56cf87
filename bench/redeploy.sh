#!/usr/bin/env bash
# bench/redeploy.sh: zero-downtime redeploys of a two-service app.
#
# Starts the release binary (bench/lib/fleetgate.sh) and deploys bench/lib/release_app.py
# as two services (`web`, routed by a domain, asks `api` on every request; both listen
# on $PORT, so each release gets ports of its own and is switched blue-green). Then runs
# bench/lib/redeploy_load.py through the gateway — RATE requests a second, open loop,
# latency counted from when each request was due, and WEBSOCKETS WebSockets echoing a
# frame a second, each reopened every 4–10 s — twice: STEADY seconds without a change,
# then while REDEPLOYS releases are deployed one after another (PUT of a new
# compose.yml, which answers once the new release serves). Prints one JSON line per
# phase and the ratio of the p99s. Failed requests and WebSockets closed by the other
# side are counted in each phase.
#
# DRIVER=process (default) runs the services as processes; DRIVER=docker starts a
# private dockerd (no bridge: host network) and runs them in containers made from a
# busybox-static rootfs with the host's /usr mounted read-only (python3).
#
# PAUSE seconds pass between one redeploy's answer and the next PUT (default 1; 0 sends
# them back to back, when the new instances' start-up competes for the host's CPU with
# the gateway and the load).
#
# CONTROL=1 (process driver only) replaces each redeploy by a start of the same two app
# processes outside Fleetgate (same program, ports of their own, stopped once both
# listen): the start-ups' cost to the host without any switch, for comparison.
#
# Usage:  bench/redeploy.sh [REDEPLOYS=20] [RATE=500] [WEBSOCKETS=50] [STEADY=20]
# Env:    FLEETGATE=target/release/fleetgate  DRIVER=process|docker  PAUSE=1
set -euo pipefail
cd "$(dirname "$0")/.."
REDEPLOYS=${1:-20}
RATE=${2:-500}
SOCKETS=${3:-50}
STEADY=${4:-20}
DRIVER=${DRIVER:-process}
PAUSE=${PAUSE:-1}
FLEETGATE=${FLEETGATE:-target/release/fleetgate}
die() { echo "redeploy.sh: $*" >&2; exit 1; }
for c in curl jq python3 taskset; do command -v $c >/dev/null || die "$c is missing"; done
[[ -x $FLEETGATE ]] || die "no $FLEETGATE: cargo build --release -p fleetgate"
# shellcheck source=lib/fleetgate.sh
source "$(dirname "$0")/lib/fleetgate.sh"
WORK=$(mktemp -d /tmp/fleetgate-redeploy.XXXXXX)
DOCKERD=
cleanup() {
    kill "${PID:-}" 2>/dev/null || true
    [[ -n $DOCKERD ]] && kill "$DOCKERD" 2>/dev/null
    wait 2>/dev/null || true
    rm -rf "$WORK" 2>/dev/null || true
}
trap cleanup EXIT
APP=$WORK/release_app.py
cp bench/lib/release_app.py "$APP"

if [[ $DRIVER == docker ]]; then
    command -v dockerd >/dev/null || die "dockerd is missing (Debian: docker.io)"
    [[ -x /bin/busybox ]] || die "no /bin/busybox (Debian: busybox-static)"
    dockerd --host "unix://$WORK/docker.sock" --data-root "$WORK/docker" --exec-root "$WORK/exec" \
        --pidfile "$WORK/dockerd.pid" --bridge none --iptables=false --ip6tables=false \
        >"$WORK/dockerd.log" 2>&1 &
    DOCKERD=$!
    for _ in $(seq 100); do [[ -S $WORK/docker.sock ]] && break; sleep 0.2; done
    [[ -S $WORK/docker.sock ]] || die "dockerd did not start; see $WORK/dockerd.log"
    mkdir -p "$WORK/rootfs/bin" "$WORK/rootfs/tmp" "$WORK/rootfs/app"
    cp /bin/busybox "$WORK/rootfs/bin/"
    ln -s busybox "$WORK/rootfs/bin/sh"
    # The host's /usr is mounted; the loader and libraries are found through it.
    ln -s usr/lib "$WORK/rootfs/lib"
    ln -s usr/lib64 "$WORK/rootfs/lib64"
    cp "$APP" "$WORK/rootfs/app/release_app.py"
    tar -C "$WORK/rootfs" -cf - . | DOCKER_HOST="unix://$WORK/docker.sock" docker import - fleetgate-bench/app:1 >/dev/null
    export BENCH_DOCKER_SOCKET=$WORK/docker.sock
    IMAGE="    image: fleetgate-bench/app:1
    network_mode: host
    volumes: [\"/usr:/usr:ro\"]"
    APP=/app/release_app.py
else
    IMAGE=""
fi

FLEETGATE_CPUS=${FLEETGATE_CPUS:-0,1}
start_fleetgate "$WORK/data" "$WORK/fleetgate.log"
WEB_PORT=$(free_port)
API_PORT=$(free_port)
HOSTNAME=app.bench.test

compose() {
    cat <<YAML
services:
  web:
$IMAGE
    command: ["python3", "-u", "$APP", "\$PORT"]
    environment:
      RELEASE: "$1"
      BACKEND_URL: "http://127.0.0.1:\${PORT_API}/"
    depends_on: [api]
  api:
$IMAGE
    command: ["python3", "-u", "$APP", "\$PORT"]
    environment:
      RELEASE: "api-$1"
    ports: ["$API_PORT:$API_PORT"]
YAML
}
SERVICE="domains: [$HOSTNAME]
service: web
port: $WEB_PORT
driver: $DRIVER
healthcheck:
  path: /health
  interval: 1s
  timeout: 1s
deploy:
  strategy: blue-green
  drain_timeout: 60s
"
json POST /api/v1/deployments "$(jq -n --arg c "$(compose 1)" --arg s "$SERVICE" '{name:"bench", compose:$c, service:$s}')"
for _ in $(seq 100); do
    [[ $(curl -s -H "Host: $HOSTNAME" "$GW/") == "release 1 release api-1" ]] && break
    sleep 0.2
done
[[ $(curl -s -H "Host: $HOSTNAME" "$GW/") == "release 1 release api-1" ]] || die "the app did not answer through the gateway"

phase() {
    local stop=$WORK/stop-$1
    taskset -c 0 python3 bench/lib/redeploy_load.py "127.0.0.1:$GW_PORT" "$HOSTNAME" "$RATE" "$SOCKETS" "$stop" >"$WORK/$1.json" &
    LOAD=$!
}

phase steady
sleep "$STEADY"
touch "$WORK/stop-steady"
wait "$LOAD"

phase redeploys
sleep 3
t0=$(date +%s.%N)
for r in $(seq 2 $((REDEPLOYS + 1))); do
    if [[ ${CONTROL:-0} == 1 ]]; then
        p1=$(free_port); p2=$(free_port)
        RELEASE=$r python3 -u "$APP" "$p1" >/dev/null 2>&1 & c1=$!
        RELEASE=$r python3 -u "$APP" "$p2" >/dev/null 2>&1 & c2=$!
        until curl -fs "http://127.0.0.1:$p1/health" >/dev/null && curl -fs "http://127.0.0.1:$p2/health" >/dev/null; do sleep 0.05; done
        kill "$c1" "$c2"; wait "$c1" "$c2" 2>/dev/null || true
        sleep "$PAUSE"
        continue
    fi
    code=$(curl -s -o "$WORK/put.json" -w '%{http_code}' -X PUT -H "Authorization: Bearer $TOKEN" \
        -H 'Content-Type: application/json' --data "$(jq -n --arg c "$(compose "$r")" '{compose:$c}')" \
        "$API/api/v1/deployments/bench")
    [[ $code == 200 ]] || die "redeploy $r answered $code: $(cat "$WORK/put.json")"
    sleep "$PAUSE"
done
t1=$(date +%s.%N)
sleep 3
touch "$WORK/stop-redeploys"
wait "$LOAD"
releases=$(api GET /api/v1/deployments/bench/releases | jq '[.items[] | .state] | group_by(.) | map({(.[0]): length}) | add')
steady=$(cat "$WORK/steady.json")
during=$(cat "$WORK/redeploys.json")
echo "driver=$DRIVER steady: $steady"
echo "driver=$DRIVER redeploys ($REDEPLOYS in $(echo "$t1 - $t0" | bc) s, pause $PAUSE s): $during"
echo "driver=$DRIVER releases: $releases"
echo "driver=$DRIVER p99 ratio (redeploys / steady): $(jq -n --argjson a "$during" --argjson b "$steady" '($a.p99_ms / $b.p99_ms * 100 | round) / 100')"
