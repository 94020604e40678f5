#!/usr/bin/env bash
# Side-by-side benchmarks of otpgate; results and method are in BENCHMARKS.md.
#
#  1. Scale: verification latency with 1,000 and 1,000,000 enrolled members
#     (benches/scale.rs, which starts its own SoftHSM token and Redis servers).
#  2. Pass-through of a verified session: wrk against otpgate (default
#     settings, and again with app.identity_header set), nginx and a plain
#     pingora proxy in front of one fixed upstream, and against the upstream
#     directly.
#  3. Second-factor verifications per second through HTTP, beside
#     Vault::verify alone on the same token.
#  4. Peak RSS of each proxy under the load of (2), and RSS with 10,000 idle
#     keep-alive connections.
#
# Every server listens on 127.0.0.1 only and is stopped on exit. Every load
# is bounded in time or count. Settings (environment variables):
#   BENCH_RUNS (5)             runs of each measurement; the table shows medians
#   BENCH_DURATION (10)        seconds of each wrk run
#   BENCH_CONNECTIONS (50)     wrk connections
#   BENCH_FIXED_RATE (10000), BENCH_FIXED_RATE_SECS (5)   requests/s and seconds of the fixed-rate latency runs in (2)
#   BENCH_SCALE_SMALL (1000), BENCH_SCALE_LARGE (1000000)   members in (1)
#   BENCH_SCALE_ROUNDS (5), BENCH_SCALE_SAMPLES (5000)      rounds and verifications per size and round in (1)
#   BENCH_2FA_MEMBERS (3000), BENCH_2FA_CONCURRENCY (32)    pending logins and concurrent requests in (3)
#   BENCH_IDLE_CONNECTIONS (10000), BENCH_IDLE_HOLD_SECS (10)   idle connections in (4)
#   BENCH_SKIP_SCALE (0)       1 skips (1)
#   BENCH_KEEP_WORK (0)        1 keeps the temporary directory with logs and wrk output
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${BENCH_RUNS:-5}
DURATION=${BENCH_DURATION:-10}
CONNECTIONS=${BENCH_CONNECTIONS:-50}
FIXED_RATE=${BENCH_FIXED_RATE:-10000}
FIXED_RATE_SECS=${BENCH_FIXED_RATE_SECS:-5}
SCALE_SMALL=${BENCH_SCALE_SMALL:-1000}
SCALE_LARGE=${BENCH_SCALE_LARGE:-1000000}
SCALE_ROUNDS=${BENCH_SCALE_ROUNDS:-5}
SCALE_SAMPLES=${BENCH_SCALE_SAMPLES:-5000}
TWOFACTOR_MEMBERS=${BENCH_2FA_MEMBERS:-3000}
TWOFACTOR_CONCURRENCY=${BENCH_2FA_CONCURRENCY:-32}
IDLE_CONNECTIONS=${BENCH_IDLE_CONNECTIONS:-10000}
IDLE_HOLD_SECS=${BENCH_IDLE_HOLD_SECS:-10}
SKIP_SCALE=${BENCH_SKIP_SCALE:-0}
KEEP_WORK=${BENCH_KEEP_WORK:-0}

HSM_MODULE=/usr/lib/softhsm/libsofthsm2.so
HSM_LABEL=otpgate-bench
export OTPGATE_BENCH_HSM_PIN=4711-bench
export OTPGATE_BENCH_ADMIN_TOKEN=bench-admin-token-0123456789
# Path of every request in (2) and (4): not public, so otpgate checks the session.
REQUEST_PATH=/dashboard

# ---------------------------------------------------------------- set-up

missing=()
for pair in wrk:wrk nginx:nginx redis-server:redis-server softhsm2-util:softhsm2 oathtool:oathtool curl:curl; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 10,000 idle connections need that many descriptors in the client and in
# each proxy; children inherit this limit.
ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < IDLE_CONNECTIONS + 1000)); then
    echo "ulimit -n is $(ulimit -n); lowering BENCH_IDLE_CONNECTIONS to $(($(ulimit -n) - 1000))" >&2
    IDLE_CONNECTIONS=$(($(ulimit -n) - 1000))
fi

echo "building (release) ..."
cargo build --release --bin otpgate --example bench_upstream --example plain_proxy --example bench_client
SCALE_BIN=$(cargo bench --bench scale --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -n 1)
[[ -x $SCALE_BIN ]] || { echo "could not find the scale bench executable" >&2; exit 1; }
BIN=target/release
EXAMPLES=target/release/examples

# Signal that stops a process: SIGTERM, except SIGINT for the pingora
# servers, which handle SIGTERM with a graceful shutdown of up to 300 s.
# (Background jobs of a script ignore SIGINT unless they install a handler,
# as pingora does.)
declare -A STOP_SIGNAL
# Stops one process that this script started, by its PID; SIGKILL after 10 s.
stop_pid() {
    local pid=$1 i
    kill -"${STOP_SIGNAL[$pid]:-TERM}" "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

WORK=$(mktemp -d /tmp/otpgate-bench.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    if [[ $KEEP_WORK == 1 ]]; then
        echo "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

source benches/ports.sh

# Prints a field of /proc/PID/status (VmRSS, VmHWM) in KiB, summed over PIDs.
proc_kib() {
    local field=$1 total=0 pid value
    shift
    for pid in "$@"; do
        value=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/status")
        total=$((total + value))
    done
    echo "$total"
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'
}

# Prints yes when "$1 $2 $3" holds, for example "0.93 >= 0.9".
check() {
    awk -v a="$1" -v b="$3" -v op="$2" 'BEGIN {ok = (op == ">=") ? a >= b : a <= b; print ok ? "yes" : "NO"}'
}

result() {
    sed -n "s/^RESULT $1=//p" "$2" | tail -n 1
}

# ------------------------------------------------------------- (1) scale

if [[ $SKIP_SCALE != 1 ]]; then
    echo
    echo "== (1) scale: $SCALE_SMALL and $SCALE_LARGE members"
    "$SCALE_BIN" --small "$SCALE_SMALL" --large "$SCALE_LARGE" --rounds "$SCALE_ROUNDS" --samples "$SCALE_SAMPLES" | tee "$WORK/scale.txt"
fi

# ------------------------------------------------------------ the servers

free_port UPSTREAM_PORT
"$EXAMPLES/bench_upstream" --listen "127.0.0.1:$UPSTREAM_PORT" --threads 2 >"$WORK/upstream.log" 2>&1 &
UPSTREAM_PID=$!
PIDS+=("$UPSTREAM_PID")
wait_port "$UPSTREAM_PORT" bench_upstream

free_port REDIS_PORT
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly yes --dir "$WORK" >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_port "$REDIS_PORT" redis-server

mkdir -p "$WORK/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK/tokens" >"$WORK/softhsm2.conf"
export SOFTHSM2_CONF=$WORK/softhsm2.conf
softhsm2-util --init-token --free --label "$HSM_LABEL" --so-pin 0815-bench --pin "$OTPGATE_BENCH_HSM_PIN" >/dev/null

free_port GATEWAY_PORT
free_port ADMIN_PORT
# The per-address limits are raised because every benchmark request comes
# from 127.0.0.1; the counters are still incremented on every request.
cat >"$WORK/otpgate.toml" <<EOF
[listen]
http = "127.0.0.1:$GATEWAY_PORT"

[upstream]
address = "127.0.0.1:$UPSTREAM_PORT"

[app]
session_cookie = "sessionid"
public_paths = ["/about"]

[[app.login]]
path = "/login"
body = "form"
success_status = [302, 303]

[rate_limit]
password_per_address = { limit = 1000000, window_secs = 900 }
second_factor_per_address = { limit = 1000000, window_secs = 900 }

[redis]
url = "redis://127.0.0.1:$REDIS_PORT/"

[hsm]
module = "$HSM_MODULE"
token_label = "$HSM_LABEL"
pin_env = "OTPGATE_BENCH_HSM_PIN"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token_env = "OTPGATE_BENCH_ADMIN_TOKEN"
EOF
"$BIN/otpgate" hsm init --config "$WORK/otpgate.toml" >/dev/null

GATEWAY_PID=
start_gateway() {
    "$BIN/otpgate" serve --config "$WORK/otpgate.toml" 2>>"$WORK/gateway.log" &
    GATEWAY_PID=$!
    PIDS+=("$GATEWAY_PID")
    STOP_SIGNAL[$GATEWAY_PID]=INT
    wait_port "$GATEWAY_PORT" "otpgate serve"
}

# A second gateway on the same Redis and token, with the identity header
# on, to show what adding one request header costs.
free_port IDENTITY_PORT
free_port IDENTITY_ADMIN_PORT
sed -e "s/127.0.0.1:$GATEWAY_PORT/127.0.0.1:$IDENTITY_PORT/" -e "s/127.0.0.1:$ADMIN_PORT/127.0.0.1:$IDENTITY_ADMIN_PORT/" \
    -e 's/^public_paths = .*/&\nidentity_header = "X-Otpgate-User"/' "$WORK/otpgate.toml" >"$WORK/otpgate-identity.toml"
IDENTITY_PID=
start_identity_gateway() {
    "$BIN/otpgate" serve --config "$WORK/otpgate-identity.toml" 2>>"$WORK/gateway-identity.log" &
    IDENTITY_PID=$!
    PIDS+=("$IDENTITY_PID")
    STOP_SIGNAL[$IDENTITY_PID]=INT
    wait_port "$IDENTITY_PORT" "otpgate serve (identity header)"
}

free_port PLAIN_PORT
PLAIN_PID=
start_plain() {
    "$EXAMPLES/plain_proxy" --listen "127.0.0.1:$PLAIN_PORT" --upstream "127.0.0.1:$UPSTREAM_PORT" 2>>"$WORK/plain.log" &
    PLAIN_PID=$!
    PIDS+=("$PLAIN_PID")
    STOP_SIGNAL[$PLAIN_PID]=INT
    wait_port "$PLAIN_PORT" plain_proxy
}

free_port NGINX_PORT
mkdir -p "$WORK/nginx/tmp"
# One worker process, as pingora runs one worker thread by default.
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $(ulimit -n);
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections $((IDLE_CONNECTIONS + 4000)); }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    keepalive_requests 100000000;
    upstream app {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 128;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
NGINX_PID=
start_nginx() {
    nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' 2>>"$WORK/nginx/error.log" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_port "$NGINX_PORT" nginx
}
# The master and its worker.
nginx_pids() {
    echo "$NGINX_PID" $(pgrep -P "$NGINX_PID")
}

start_gateway
start_identity_gateway
start_plain
start_nginx

# A verified session: a member without 2FA logs in through the gateway,
# which flags the application's session as "no2fa" and passes it on.
SESSION_ID=$(curl -s -o /dev/null -D - --data 'username=bench-no2fa&password=any-password' "http://127.0.0.1:$GATEWAY_PORT/login" |
    tr -d '\r' | sed -n 's/^set-cookie: sessionid=\([^;]*\).*/\1/Ip' | head -n 1)
[[ -n $SESSION_ID ]] || { echo "the login through the gateway set no sessionid cookie" >&2; exit 1; }
COOKIE="Cookie: sessionid=$SESSION_ID"
status=$(curl -s -o /dev/null -w '%{http_code}' -H "$COOKIE" "http://127.0.0.1:$GATEWAY_PORT$REQUEST_PATH")
[[ $status == 200 ]] || { echo "the verified session got HTTP $status from the gateway" >&2; exit 1; }
status=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: sessionid=not-a-session" "http://127.0.0.1:$GATEWAY_PORT$REQUEST_PATH")
[[ $status == 401 ]] || { echo "an unknown session got HTTP $status from the gateway, expected 401" >&2; exit 1; }
status=$(curl -s -o /dev/null -w '%{http_code}' -H "$COOKIE" "http://127.0.0.1:$IDENTITY_PORT$REQUEST_PATH")
[[ $status == 200 ]] || { echo "the verified session got HTTP $status from the gateway with the identity header" >&2; exit 1; }
echo "verified session cookie obtained; an unknown session cookie gets 401"

# ----------------------------------------------------- (2) pass-through

echo
echo "== (2) pass-through: wrk -t1 -c$CONNECTIONS -d${DURATION}s, $RUNS runs, order rotated per run"
declare -A PORT=([upstream]=$UPSTREAM_PORT [nginx]=$NGINX_PORT [plain]=$PLAIN_PORT [otpgate]=$GATEWAY_PORT [otpgate_id]=$IDENTITY_PORT)
declare -A RPS P50 P99 ERRORS
TARGETS=(upstream nginx plain otpgate otpgate_id)

# Converts a wrk latency such as 612.00us, 1.20ms or 1.01s to milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) printf "%.3f", substr(v, 1, length(v) - 2) / 1000;
        else if (v ~ /ms$/) printf "%.3f", substr(v, 1, length(v) - 2);
        else if (v ~ /s$/) printf "%.3f", substr(v, 1, length(v) - 1) * 1000;
    }'
}

RSS_IDLE_GATEWAY=$(proc_kib VmRSS "$GATEWAY_PID")
RSS_IDLE_PLAIN=$(proc_kib VmRSS "$PLAIN_PID")
RSS_IDLE_NGINX=$(proc_kib VmRSS $(nginx_pids))

# Prints the CPU time (user + system) the given processes used so far, in
# clock ticks. Field 2 of /proc/PID/stat may contain spaces, so fields are
# counted after its closing parenthesis.
cpu_ticks() {
    local total=0 pid stat
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat")
        stat=${stat##*) }
        total=$((total + $(awk '{print $12 + $13}' <<<"$stat")))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)
# CPU microseconds per request of a process group during one wrk run.
per_request_us() {
    awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}'
}
declare -A CPU_PROXY CPU_UPSTREAM CPU_REDIS

for ((run = 1; run <= RUNS; run++)); do
    for ((i = 0; i < ${#TARGETS[@]}; i++)); do
        target=${TARGETS[$(((i + run - 1) % ${#TARGETS[@]}))]}
        out="$WORK/wrk-$target-$run.txt"
        case $target in
            upstream) proxy_pids= ;;
            otpgate) proxy_pids=$GATEWAY_PID ;;
            otpgate_id) proxy_pids=$IDENTITY_PID ;;
            plain) proxy_pids=$PLAIN_PID ;;
            nginx) proxy_pids=$(nginx_pids) ;;
        esac
        proxy_before=$(cpu_ticks $proxy_pids)
        upstream_before=$(cpu_ticks "$UPSTREAM_PID")
        redis_before=$(cpu_ticks "$REDIS_PID")
        wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s --latency -H "$COOKIE" \
            "http://127.0.0.1:${PORT[$target]}$REQUEST_PATH" >"$out"
        requests=$(awk '/ requests in / {print $1}' "$out")
        CPU_PROXY[$target,$run]=$(per_request_us $(($(cpu_ticks $proxy_pids) - proxy_before)) "$requests")
        CPU_UPSTREAM[$target,$run]=$(per_request_us $(($(cpu_ticks "$UPSTREAM_PID") - upstream_before)) "$requests")
        CPU_REDIS[$target,$run]=$(per_request_us $(($(cpu_ticks "$REDIS_PID") - redis_before)) "$requests")
        RPS[$target,$run]=$(awk '/^Requests\/sec:/ {print $2}' "$out")
        P50[$target,$run]=$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")
        P99[$target,$run]=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
        ERRORS[$target,$run]=$(awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$out")
        printf 'run %d %-10s %10s req/s  p50 %7s ms  p99 %7s ms  errors %s  CPU µs/request: proxy %s, upstream %s, redis %s\n' \
            "$run" "$target" "${RPS[$target,$run]}" "${P50[$target,$run]}" "${P99[$target,$run]}" "${ERRORS[$target,$run]}" \
            "${CPU_PROXY[$target,$run]}" "${CPU_UPSTREAM[$target,$run]}" "${CPU_REDIS[$target,$run]}"
    done
done

# Latency below saturation: the same number of connections, but a fixed
# request rate that every target sustains, so queueing at a saturated
# worker does not decide the percentiles.
echo
echo "== (2) latency at a fixed $FIXED_RATE requests/s for ${FIXED_RATE_SECS} s over $CONNECTIONS connections, $RUNS runs"
declare -A FR_P50 FR_P99 FR_FAILED
for ((run = 1; run <= RUNS; run++)); do
    for ((i = 0; i < ${#TARGETS[@]}; i++)); do
        target=${TARGETS[$(((i + run - 1) % ${#TARGETS[@]}))]}
        out="$WORK/fixed-rate-$target-$run.txt"
        "$EXAMPLES/bench_client" fixed-rate --addr "127.0.0.1:${PORT[$target]}" --rate "$FIXED_RATE" --connections "$CONNECTIONS" \
            --secs "$FIXED_RATE_SECS" --path "$REQUEST_PATH" --header "$COOKIE" >"$out"
        FR_P50[$target,$run]=$(result fixed_rate_p50_ms "$out")
        FR_P99[$target,$run]=$(result fixed_rate_p99_ms "$out")
        FR_FAILED[$target,$run]=$(result fixed_rate_failed "$out")
        printf 'run %d %-10s p50 %7s ms  p99 %7s ms  failed %s\n' "$run" "$target" "${FR_P50[$target,$run]}" "${FR_P99[$target,$run]}" "${FR_FAILED[$target,$run]}"
    done
done

HWM_LOAD_GATEWAY=$(proc_kib VmHWM "$GATEWAY_PID")
HWM_LOAD_PLAIN=$(proc_kib VmHWM "$PLAIN_PID")
HWM_LOAD_NGINX=$(proc_kib VmHWM $(nginx_pids))

# ---------------------------------------------- (4) idle connections

echo
echo "== (4) $IDLE_CONNECTIONS idle keep-alive connections, held ${IDLE_HOLD_SECS} s, on freshly started proxies"
stop_pid "$GATEWAY_PID"
stop_pid "$IDENTITY_PID"
stop_pid "$PLAIN_PID"
stop_pid "$NGINX_PID"
start_gateway
start_plain
start_nginx
declare -A RSS_BEFORE RSS_HELD HWM_HELD FDS_HELD OPEN_AFTER
for target in otpgate plain nginx; do
    case $target in
        otpgate) pids=$GATEWAY_PID ;;
        plain) pids=$PLAIN_PID ;;
        nginx) pids=$(nginx_pids) ;;
    esac
    # One request first, so the upstream connection pool exists.
    curl -s -o /dev/null -H "$COOKIE" "http://127.0.0.1:${PORT[$target]}$REQUEST_PATH"
    RSS_BEFORE[$target]=$(proc_kib VmRSS $pids)
    out="$WORK/idle-$target.txt"
    "$EXAMPLES/bench_client" idle --addr "127.0.0.1:${PORT[$target]}" --connections "$IDLE_CONNECTIONS" \
        --hold-secs "$IDLE_HOLD_SECS" --path "$REQUEST_PATH" --header "$COOKIE" >"$out" 2>"$WORK/idle-$target.err" &
    client=$!
    PIDS+=("$client")
    for ((i = 0; i < 1200; i++)); do
        grep -q '^ready' "$out" && break
        kill -0 "$client" 2>/dev/null || break
        sleep 0.1
    done
    grep -q '^ready' "$out" || { echo "the idle client for $target did not get ready" >&2; cat "$WORK/idle-$target.err" >&2; exit 1; }
    sleep 2
    RSS_HELD[$target]=$(proc_kib VmRSS $pids)
    FDS_HELD[$target]=0
    for pid in $pids; do
        FDS_HELD[$target]=$((FDS_HELD[$target] + $(ls "/proc/$pid/fd" | wc -l)))
    done
    wait "$client"
    HWM_HELD[$target]=$(proc_kib VmHWM $pids)
    OPEN_AFTER[$target]=$(result idle_open_after_hold "$out")
    printf '%-8s RSS before %6d KiB, with connections %7d KiB, peak %7d KiB, %d descriptors, %s of %s still open after %s s\n' \
        "$target" "${RSS_BEFORE[$target]}" "${RSS_HELD[$target]}" "${HWM_HELD[$target]}" "${FDS_HELD[$target]}" \
        "${OPEN_AFTER[$target]}" "$(result idle_connected "$out")" "$IDLE_HOLD_SECS"
done

# ------------------------------------------- (3) second-factor rate

echo
echo "== (3) second factor through HTTP: $TWOFACTOR_MEMBERS pending logins, $TWOFACTOR_CONCURRENCY concurrent requests, $RUNS runs"
declare -A TF
for ((run = 1; run <= RUNS; run++)); do
    out="$WORK/twofactor-$run.txt"
    "$EXAMPLES/bench_client" second-factor --config "$WORK/otpgate.toml" --gateway "http://127.0.0.1:$GATEWAY_PORT" \
        --members "$TWOFACTOR_MEMBERS" --concurrency "$TWOFACTOR_CONCURRENCY" --prefix "run$run" \
        --gateway-pid "$GATEWAY_PID" --redis-pid "$REDIS_PID" | tee "$out"
    for key in http_per_sec http_p50_ms http_p99_ms hsm1_per_sec hsm2_per_sec; do
        TF[$key,$run]=$(result "twofactor_$key" "$out")
    done
    TF[gateway_cpu_us,$run]=$(per_request_us "$(result twofactor_gateway_cpu_ticks "$out")" "$TWOFACTOR_MEMBERS")
    TF[redis_cpu_us,$run]=$(per_request_us "$(result twofactor_redis_cpu_ticks "$out")" "$TWOFACTOR_MEMBERS")
    echo "CPU per verification: gateway ${TF[gateway_cpu_us,$run]} µs, Redis ${TF[redis_cpu_us,$run]} µs"
done

# ----------------------------------------------------------------- table

runs_of() {
    local -n values=$1
    local key=$2 run list=()
    for ((run = 1; run <= RUNS; run++)); do
        list+=("${values[$key,$run]}")
    done
    echo "${list[@]}"
}
per_run_ratio() {
    local -n a=$1
    local -n b=$3
    local key_a=$2 key_b=$4 run list=()
    for ((run = 1; run <= RUNS; run++)); do
        list+=("$(ratio "${a[$key_a,$run]}" "${b[$key_b,$run]}")")
    done
    echo "${list[@]}"
}

echo
echo "== results (medians of $RUNS runs; ratios are medians of the per-run ratios)"
echo
echo "| Measurement | Value | Reference | Ratio | Per-run ratios | Target | Met |"
echo "|---|---:|---:|---:|---|---|---|"
if [[ $SKIP_SCALE != 1 ]]; then
    S=$WORK/scale.txt
    echo "| (1) verification p50, $(result scale_large_members "$S") vs $(result scale_small_members "$S") members | $(result scale_large_p50_us "$S") µs | $(result scale_small_p50_us "$S") µs | $(result scale_p50_ratio "$S") | $SCALE_ROUNDS rounds | ≤ 1.2 | $(check "$(result scale_p50_ratio "$S")" "<=" 1.2) |"
    echo "| (1) verification p99, same | $(result scale_large_p99_us "$S") µs | $(result scale_small_p99_us "$S") µs | $(result scale_p99_ratio "$S") | | | |"
    echo "| (1) Redis memory per member | $(result scale_large_bytes_per_member "$S") B | $(result scale_small_bytes_per_member "$S") B | | | | |"
fi
for target in upstream nginx plain otpgate otpgate_id; do
    declare "MED_RPS_$target=$(median $(runs_of RPS "$target"))"
    declare "MED_P99_$target=$(median $(runs_of P99 "$target"))"
done
R_NGINX=$(median $(per_run_ratio RPS otpgate RPS nginx))
R_PLAIN=$(median $(per_run_ratio RPS otpgate RPS plain))
R_P99=$(median $(per_run_ratio P99 otpgate P99 nginx))
R_UP=$(median $(per_run_ratio RPS upstream RPS otpgate))
R_ID_PLAIN=$(median $(per_run_ratio RPS otpgate_id RPS plain))
R_ID_NGINX=$(median $(per_run_ratio RPS otpgate_id RPS nginx))
R_ID_P99=$(median $(per_run_ratio P99 otpgate_id P99 nginx))
echo "| (2) req/s, otpgate vs nginx | $MED_RPS_otpgate | $MED_RPS_nginx | $R_NGINX | $(per_run_ratio RPS otpgate RPS nginx) | ≥ 0.9 | $(check "$R_NGINX" ">=" 0.9) |"
echo "| (2) req/s, otpgate vs plain pingora | $MED_RPS_otpgate | $MED_RPS_plain | $R_PLAIN | $(per_run_ratio RPS otpgate RPS plain) | ≥ 0.95 | $(check "$R_PLAIN" ">=" 0.95) |"
echo "| (2) p99 latency, otpgate vs nginx | $MED_P99_otpgate ms | $MED_P99_nginx ms | $R_P99 | $(per_run_ratio P99 otpgate P99 nginx) | ≤ 1.25 | $(check "$R_P99" "<=" 1.25) |"
echo "| (2) req/s, otpgate with identity header vs plain pingora | $MED_RPS_otpgate_id | $MED_RPS_plain | $R_ID_PLAIN | $(per_run_ratio RPS otpgate_id RPS plain) | ≥ 0.95 | $(check "$R_ID_PLAIN" ">=" 0.95) |"
echo "| (2) req/s, otpgate with identity header vs nginx | $MED_RPS_otpgate_id | $MED_RPS_nginx | $R_ID_NGINX | $(per_run_ratio RPS otpgate_id RPS nginx) | ≥ 0.9 | $(check "$R_ID_NGINX" ">=" 0.9) |"
echo "| (2) p99 latency, otpgate with identity header vs nginx | $MED_P99_otpgate_id ms | $MED_P99_nginx ms | $R_ID_P99 | $(per_run_ratio P99 otpgate_id P99 nginx) | ≤ 1.25 | $(check "$R_ID_P99" "<=" 1.25) |"
R_FR_P99=$(median $(per_run_ratio FR_P99 otpgate FR_P99 nginx))
R_FR_ID_P99=$(median $(per_run_ratio FR_P99 otpgate_id FR_P99 nginx))
R_FR_PLAIN_P99=$(median $(per_run_ratio FR_P99 plain FR_P99 nginx))
echo "| (2) p99 latency at $FIXED_RATE req/s, otpgate vs nginx | $(median $(runs_of FR_P99 otpgate)) ms | $(median $(runs_of FR_P99 nginx)) ms | $R_FR_P99 | $(per_run_ratio FR_P99 otpgate FR_P99 nginx) | ≤ 1.25 | $(check "$R_FR_P99" "<=" 1.25) |"
echo "| (2) p99 latency at $FIXED_RATE req/s, otpgate with identity header vs nginx | $(median $(runs_of FR_P99 otpgate_id)) ms | $(median $(runs_of FR_P99 nginx)) ms | $R_FR_ID_P99 | $(per_run_ratio FR_P99 otpgate_id FR_P99 nginx) | ≤ 1.25 | $(check "$R_FR_ID_P99" "<=" 1.25) |"
echo "| (2) p99 latency at $FIXED_RATE req/s, plain pingora vs nginx | $(median $(runs_of FR_P99 plain)) ms | $(median $(runs_of FR_P99 nginx)) ms | $R_FR_PLAIN_P99 | $(per_run_ratio FR_P99 plain FR_P99 nginx) | | |"
echo "| (2) p50 latency at $FIXED_RATE req/s: otpgate, nginx, plain pingora, upstream alone | $(median $(runs_of FR_P50 otpgate)) ms | $(median $(runs_of FR_P50 nginx)) ms | $(median $(runs_of FR_P50 plain)) ms | $(median $(runs_of FR_P50 upstream)) ms | | |"
echo "| (2) req/s, upstream alone vs otpgate | $MED_RPS_upstream | $MED_RPS_otpgate | $R_UP | $(per_run_ratio RPS upstream RPS otpgate) | upstream not the limit | |"
echo "| (2) p99 latency, plain pingora and upstream alone | $MED_P99_plain ms | $MED_P99_upstream ms | | | | |"
for target in otpgate otpgate_id plain nginx; do
    echo "| (2) $target: CPU µs per request in the proxy, in Redis | $(median $(runs_of CPU_PROXY "$target")) | $(median $(runs_of CPU_REDIS "$target")) | | | | |"
done
echo "| (2) CPU per request, otpgate + its Redis vs plain pingora | $(median $(runs_of CPU_PROXY otpgate)) + $(median $(runs_of CPU_REDIS otpgate)) µs | $(median $(runs_of CPU_PROXY plain)) µs | $(ratio "$(awk -v a="$(median $(runs_of CPU_PROXY otpgate))" -v b="$(median $(runs_of CPU_REDIS otpgate))" 'BEGIN {print a + b}')" "$(median $(runs_of CPU_PROXY plain))") | | | |"
echo "| (2) upstream CPU µs per request when reached directly | $(median $(runs_of CPU_UPSTREAM upstream)) | | | | | |"
TF_HTTP=$(median $(runs_of TF http_per_sec))
TF_HSM1=$(median $(runs_of TF hsm1_per_sec))
TF_HSM2=$(median $(runs_of TF hsm2_per_sec))
echo "| (3) verifications/s, HTTP vs Vault::verify alone (1 thread) | $TF_HTTP | $TF_HSM1 | $(median $(per_run_ratio TF http_per_sec TF hsm1_per_sec)) | $(per_run_ratio TF http_per_sec TF hsm1_per_sec) | | |"
echo "| (3) verifications/s, HTTP vs Vault::verify alone (2 threads) | $TF_HTTP | $TF_HSM2 | $(median $(per_run_ratio TF http_per_sec TF hsm2_per_sec)) | $(per_run_ratio TF http_per_sec TF hsm2_per_sec) | | |"
echo "| (3) HTTP latency p50 / p99 at $TWOFACTOR_CONCURRENCY concurrent | $(median $(runs_of TF http_p50_ms)) ms | $(median $(runs_of TF http_p99_ms)) ms | | | | |"
echo "| (3) CPU µs per verification in the gateway, in Redis | $(median $(runs_of TF gateway_cpu_us)) | $(median $(runs_of TF redis_cpu_us)) | | | | |"
echo "| (4) peak RSS after (2), otpgate vs plain pingora | $HWM_LOAD_GATEWAY KiB | $HWM_LOAD_PLAIN KiB | $(ratio "$HWM_LOAD_GATEWAY" "$HWM_LOAD_PLAIN") | | | |"
echo "| (4) peak RSS after (2), otpgate vs nginx (master + worker) | $HWM_LOAD_GATEWAY KiB | $HWM_LOAD_NGINX KiB | $(ratio "$HWM_LOAD_GATEWAY" "$HWM_LOAD_NGINX") | | | |"
echo "| (4) RSS before (2), otpgate / plain pingora / nginx | $RSS_IDLE_GATEWAY KiB | $RSS_IDLE_PLAIN KiB / $RSS_IDLE_NGINX KiB | | | | |"
echo "| (4) RSS with $IDLE_CONNECTIONS idle connections, otpgate vs plain pingora | ${RSS_HELD[otpgate]} KiB | ${RSS_HELD[plain]} KiB | $(ratio "${RSS_HELD[otpgate]}" "${RSS_HELD[plain]}") | | | |"
echo "| (4) RSS with $IDLE_CONNECTIONS idle connections, otpgate vs nginx | ${RSS_HELD[otpgate]} KiB | ${RSS_HELD[nginx]} KiB | $(ratio "${RSS_HELD[otpgate]}" "${RSS_HELD[nginx]}") | | | |"
for target in otpgate plain nginx; do
    per_connection=$(awk -v a="${RSS_HELD[$target]}" -v b="${RSS_BEFORE[$target]}" -v n="$IDLE_CONNECTIONS" 'BEGIN {printf "%.1f", (a - b) / n}')
    echo "| (4) $target: RSS added per idle connection, peak RSS | $per_connection KiB | ${HWM_HELD[$target]} KiB | | ${OPEN_AFTER[$target]} still open after ${IDLE_HOLD_SECS} s | | |"
done
