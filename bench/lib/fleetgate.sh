# Sourced by bench scripts that drive one `fleetgate serve` through its API.
#
# start_fleetgate DATA_DIR LOG: starts the release binary $FLEETGATE on CPU 1 (or on the
# CPUs in $FLEETGATE_CPUS, a taskset list) with one
# gateway worker, a fresh bootstrap token and free ports, and waits for its API. Sets
# PID, TOKEN, API (base URL), GW (gateway base URL), GW_PORT and NODE_PORT (the node
# listener). $BENCH_CONFIG, when set, is a TOML configuration file passed with --config.
# Needs `die` and python3.
start_fleetgate() {
    local data=$1 log=$2 api_port tls_port
    free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
    api_port=$(free_port)
    GW_PORT=$(free_port)
    tls_port=$(free_port)
    NODE_PORT=$(free_port)
    TOKEN="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    (
        while read -r var; do unset "$var"; done < <(compgen -e | grep '^FLEETGATE_' || true)
        export FLEETGATE_BOOTSTRAP_TOKEN="$TOKEN" FLEETGATE_ADMIN_PASSWORD="$TOKEN-admin"
        export FLEETGATE_LOG_LEVEL=warn FLEETGATE_GATEWAY_WORKERS=1
        # A private Docker engine of the calling script, if it started one.
        if [[ -n ${BENCH_DOCKER_SOCKET:-} ]]; then export FLEETGATE_DOCKER_SOCKET=$BENCH_DOCKER_SOCKET; fi
        local config=()
        if [[ -n ${BENCH_CONFIG:-} ]]; then config=(--config "$BENCH_CONFIG"); fi
        exec taskset -c "${FLEETGATE_CPUS:-1}" "$FLEETGATE" "${config[@]}" serve --data-dir "$data" \
            --listen "127.0.0.1:$api_port" --gateway-listen "127.0.0.1:$GW_PORT" \
            --gateway-tls-listen "127.0.0.1:$tls_port" --node-listen "127.0.0.1:$NODE_PORT"
    ) >"$log" 2>&1 &
    PID=$!
    API="http://127.0.0.1:$api_port"
    GW="http://127.0.0.1:$GW_PORT"
    for _ in $(seq 100); do curl -fs "$API/health" >/dev/null 2>&1 && break; sleep 0.1; done
    curl -fs "$API/health" >/dev/null || die "fleetgate did not start; see $log"
}

# api METHOD PATH [curl args...]: prints the body, dies on a non-2xx answer (with the body).
api() {
    local m=$1 p=$2
    shift 2
    local out
    out=$(curl -sS -X "$m" -H "Authorization: Bearer $TOKEN" -w "\n%{http_code}" "$@" "$API$p") || die "API $m $p failed"
    [[ ${out##*$'\n'} == 2?? ]] || die "API $m $p answered ${out##*$'\n'}: ${out%$'\n'*}"
    printf "%s\n" "${out%$'\n'*}"
}

# json METHOD PATH BODY: a JSON request whose answer is not needed.
json() { api "$1" "$2" -H 'Content-Type: application/json' --data "$3" >/dev/null; }
