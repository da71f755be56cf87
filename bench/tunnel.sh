#!/usr/bin/env bash
# TCP throughput on loopback through Fleetgate tunnels: plain loopback (no tunnel)
# vs a direct-mode tunnel vs a tunnel through a relay, all in one process
# (crates/tunnel/examples/throughput.rs), plus the seal/open criterion benchmark.
#
#   bench/tunnel.sh [MiB per run, default 512] [repetitions, default 3]
#
# Built with the release profile; FAST_BUILD=1 turns off LTO and uses 16 codegen
# units to shorten the build (numbers then come out somewhat lower).
set -euo pipefail
cd "$(dirname "$0")/.."
MIB="${1:-512}"
REPS="${2:-3}"
if [[ "${FAST_BUILD:-0}" == 1 ]]; then
  export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
fi
cargo build --release -p fleetgate-tunnel --example throughput
bin="${CARGO_TARGET_DIR:-target}/release/examples/throughput"
for i in $(seq "$REPS"); do
  echo "# run $i"
  "$bin" "$MIB"
done
if [[ "${SKIP_CRITERION:-0}" != 1 ]]; then
  cargo bench -p fleetgate-tunnel --bench seal -- --warm-up-time 1 --measurement-time 3
fi
