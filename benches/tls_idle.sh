#!/usr/bin/env bash
# RSS per idle TLS connection, and requests/s over TLS, for one or more
# otpgate binaries (default: target/release/otpgate, built by the caller).
#
#   benches/tls_idle.sh [OTPGATE_BINARY ...]
#
# Starts bench_upstream, redis-server and a SoftHSM token on free ports of
# 127.0.0.1 and in a temporary directory. For each binary it then starts
# `otpgate serve` with a self-signed TLS listener, opens
# BENCH_TLS_CONNECTIONS (2000) idle TLS connections with
# benches/idle_tls_client.py and reads the gateway's RSS. After that it runs
# wrk over TLS three times for 5 s. Everything stops on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${BENCH_TLS_CONNECTIONS:-2000}
BINARIES=("$@")
((${#BINARIES[@]})) || BINARIES=(target/release/otpgate)
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d /tmp/otpgate-tls-bench.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 1
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

source benches/ports.sh

free_port UPSTREAM_PORT
free_port REDIS_PORT
free_port HTTP_PORT
free_port TLS_PORT
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -days 2 -subj /CN=localhost 2>/dev/null
target/release/examples/bench_upstream --listen "127.0.0.1:$UPSTREAM_PORT" --threads 1 >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
mkdir -p "$WORK/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK/tokens" >"$WORK/softhsm2.conf"
export SOFTHSM2_CONF=$WORK/softhsm2.conf OTPGATE_BENCH_HSM_PIN=4711-tls
softhsm2-util --init-token --free --label otpgate-tls-bench --so-pin 0815-tls --pin "$OTPGATE_BENCH_HSM_PIN" >/dev/null
cat >"$WORK/otpgate.toml" <<CONFIG
[listen]
http = "127.0.0.1:$HTTP_PORT"

[listen.tls]
address = "127.0.0.1:$TLS_PORT"
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"

[upstream]
address = "127.0.0.1:$UPSTREAM_PORT"

[app]
session_cookie = "sessionid"
public_paths = ["/about"]

[[app.login]]
path = "/login"
body = "form"

[redis]
url = "redis://127.0.0.1:$REDIS_PORT/"

[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "otpgate-tls-bench"
pin_env = "OTPGATE_BENCH_HSM_PIN"
CONFIG
wait_port "$REDIS_PORT" redis-server
"${BINARIES[0]}" hsm init --config "$WORK/otpgate.toml" >/dev/null

for binary in "${BINARIES[@]}"; do
    "$binary" serve --config "$WORK/otpgate.toml" 2>>"$WORK/gateway.log" &
    gateway=$!
    PIDS+=("$gateway")
    wait_port "$TLS_PORT" "otpgate serve"
    curl -sk -o /dev/null "https://127.0.0.1:$TLS_PORT/about"
    before=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$gateway/status")
    python3 benches/idle_tls_client.py "$TLS_PORT" "$CONNECTIONS" 6 >"$WORK/client.out" &
    client=$!
    for ((i = 0; i < 600; i++)); do
        grep -q '^ready' "$WORK/client.out" && break
        kill -0 "$client" 2>/dev/null || { echo "the idle TLS client failed" >&2; exit 1; }
        sleep 0.2
    done
    sleep 2
    held=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$gateway/status")
    wait "$client"
    echo "$binary: $(cat "$WORK/client.out"); RSS $before KiB before, $held KiB with the connections," \
        "$(awk -v a="$held" -v b="$before" -v n="$CONNECTIONS" 'BEGIN {printf "%.1f", (a - b) / n}') KiB per connection"
    for run in 1 2 3; do
        echo "  wrk over TLS, run $run: $(wrk -t1 -c50 -d5s "https://127.0.0.1:$TLS_PORT/about" | awk '/^Requests\/sec:/ {print $2}') requests/s"
    done
    kill -INT "$gateway"
    wait "$gateway" 2>/dev/null || true
done
