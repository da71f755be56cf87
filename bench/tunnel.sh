#!/usr/bin/env bash
# TCP throughput and round-trip latency on loopback through Fleetgate tunnels:
# plain loopback (no tunnel) vs a direct-mode tunnel vs a tunnel through a relay,
# all in one process (crates/tunnel/examples/throughput.rs), and vs an SSH
# port-forward (`ssh -L`, the everyday alternative) to the same server; plus the
# seal/open criterion benchmark.
#
#   bench/tunnel.sh [MiB per run, default 512] [repetitions, default 3] [round trips, default 2000]
#
# The SSH comparison runs a private sshd on a loopback port (host and client keys
# made for the run, nothing of the system's configuration used); it needs sshd and
# ssh, installed with apt-get when run as root, and is skipped with a note
# otherwise (or with NO_SSH=1).
#
# Built with the release profile; FAST_BUILD=1 turns off LTO and uses 16 codegen
# units to shorten the build (numbers then come out somewhat lower).
set -euo pipefail
cd "$(dirname "$0")/.."
MIB="${1:-512}"
REPS="${2:-3}"
TRIPS="${3:-2000}"
log() { printf '[tunnel.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
  for _ in $(seq 100); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# The SSH forward: a private sshd and `ssh -N -L forward:127.0.0.1:server`.
ssh_forward=""
if [[ "${NO_SSH:-0}" != 1 ]]; then
  if ! command -v ssh >/dev/null || [[ ! -x /usr/sbin/sshd ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      log "installing openssh-server and openssh-client"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null
    fi
  fi
  if command -v ssh >/dev/null && [[ -x /usr/sbin/sshd ]]; then
    server_port=$(free_port)
    ssh_port=$(free_port)
    forward_port=$(free_port)
    ssh-keygen -q -t ed25519 -N '' -f "$tmp/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$tmp/client_key"
    cp "$tmp/client_key.pub" "$tmp/authorized_keys"
    cat >"$tmp/sshd_config" <<CONF
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $tmp/host_key
AuthorizedKeysFile $tmp/authorized_keys
PidFile $tmp/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
CONF
    mkdir -p /run/sshd 2>/dev/null || true
    /usr/sbin/sshd -D -f "$tmp/sshd_config" -E "$tmp/sshd.log" &
    pids+=($!)
    wait_port "$ssh_port" || { cat "$tmp/sshd.log" >&2; exit 1; }
    ssh -v -N -i "$tmp/client_key" -p "$ssh_port" \
      -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
      -L "127.0.0.1:$forward_port:127.0.0.1:$server_port" "$(id -un)@127.0.0.1" 2>"$tmp/ssh.log" &
    pids+=($!)
    wait_port "$forward_port" || { cat "$tmp/ssh.log" >&2; exit 1; }
    ssh_forward="127.0.0.1:$forward_port"
    log "ssh $(ssh -V 2>&1); $(grep -m1 -o 'cipher: [^ ]*' "$tmp/ssh.log" || echo 'cipher: ?')"
  else
    log "no sshd/ssh (run as root to install them): the SSH comparison is skipped"
  fi
fi

if [[ "${FAST_BUILD:-0}" == 1 ]]; then
  export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
fi
cargo build --release -p fleetgate-tunnel --example throughput
bin="${CARGO_TARGET_DIR:-target}/release/examples/throughput"
for i in $(seq "$REPS"); do
  echo "# run $i"
  if [[ -n "$ssh_forward" ]]; then
    SERVER_PORT="$server_port" SSH_FORWARD="$ssh_forward" "$bin" "$MIB" "$TRIPS"
  else
    "$bin" "$MIB" "$TRIPS"
  fi
done
if [[ "${SKIP_CRITERION:-0}" != 1 ]]; then
  cargo bench -p fleetgate-tunnel --bench seal -- --warm-up-time 1 --measurement-time 3
fi
