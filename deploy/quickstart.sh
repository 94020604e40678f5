#!/usr/bin/env bash
# Quick start on Debian: installs the missing system packages, builds otpgate
# and the demo application, then runs Redis, the demo application and the
# gateway on 127.0.0.1 until Ctrl-C. Redis data, the SoftHSM token, the
# configuration and the logs stay in .quickstart/ in the repository, so a
# second run keeps the members' 2FA enrollments. Delete that folder to start
# from scratch.
set -euo pipefail

readonly GATEWAY_PORT=8080
readonly APP_PORT=8000
readonly ADMIN_PORT=9090
readonly REDIS_PORT=6380
readonly TOKEN_LABEL="otpgate"
# Development PIN of the quick-start token, the same as the default of deploy/softhsm-init.sh.
readonly HSM_PIN="otpgate-dev-pin"
readonly PACKAGES=(softhsm2 redis-server oathtool libssl-dev pkg-config)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly repo
readonly state="$repo/.quickstart"
readonly config="$state/otpgate.toml"
readonly logs="$state/logs"
readonly bin="${CARGO_TARGET_DIR:-$repo/target}/debug"

# Background processes started by this script, in start order, and their names.
pids=()
declare -A names=()

usage() {
    cat <<EOF
Usage: deploy/quickstart.sh

Installs the Debian packages that are missing, with sudo unless run as root:
  ${PACKAGES[*]}
builds otpgate and the demo application (debug profile), and runs on 127.0.0.1:
  gateway   port $GATEWAY_PORT (admin listener port $ADMIN_PORT)
  demo app  port $APP_PORT
  Redis     port $REDIS_PORT
State and logs are kept in .quickstart/. Press Ctrl-C to stop everything.
EOF
}

say() {
    printf 'quickstart: %s\n' "$*" >&2
}

die() {
    say "error: $*"
    exit 1
}

install_packages() {
    if ! command -v dpkg-query >/dev/null; then
        local tool
        for tool in softhsm2-util redis-server oathtool pkg-config; do
            command -v "$tool" >/dev/null ||
                die "$tool not found and this is not a Debian system; install the equivalents of: ${PACKAGES[*]}"
        done
        return
    fi

    local missing=() package
    for package in "${PACKAGES[@]}"; do
        if [[ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)" != "install ok installed" ]]; then
            missing+=("$package")
        fi
    done
    ((${#missing[@]} > 0)) || return 0

    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null ||
            die "packages ${missing[*]} are missing and sudo is not installed; run 'apt-get install ${missing[*]}' as root"
        sudo=(sudo)
    fi
    say "installing ${missing[*]}"
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# Succeeds when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

check_ports_free() {
    local port name
    for port in "$REDIS_PORT" "$APP_PORT" "$GATEWAY_PORT" "$ADMIN_PORT"; do
        case "$port" in
            "$REDIS_PORT") name="Redis" ;;
            "$APP_PORT") name="the demo app" ;;
            "$GATEWAY_PORT") name="the gateway" ;;
            "$ADMIN_PORT") name="the gateway's admin listener" ;;
        esac
        if port_open "$port"; then
            die "port $port on 127.0.0.1 (for $name) is already in use; stop the program listening there (see: ss -ltnp 'sport = :$port') and run the script again"
        fi
    done
}

# Starts a command in the background with its output in logs/NAME.log, in
# a session of its own: Ctrl-C then reaches only this script, which stops
# the processes in order instead of racing them to report an exit.
start() {
    local name="$1"
    shift
    setsid "$@" >"$logs/$name.log" 2>&1 &
    pids+=("$!")
    names[$!]="$name"
}

# Waits up to 30 s for PORT to accept connections while the process PID runs.
wait_for_port() {
    local port="$1" pid="$2" name="${names[$2]}" attempt
    for ((attempt = 0; attempt < 300; attempt++)); do
        port_open "$port" && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            say "$name exited during startup; the last lines of $logs/$name.log:"
            tail -n 20 "$logs/$name.log" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
    die "timed out after 30 s waiting for $name to listen on 127.0.0.1:$port; see $logs/$name.log"
}

# Stops the background processes, newest first, and waits for them to exit.
# shellcheck disable=SC2317 # only reached through the EXIT trap
stop_all() {
    local index pid name attempt
    for ((index = ${#pids[@]} - 1; index >= 0; index--)); do
        pid="${pids[index]}"
        name="${names[$pid]}"
        kill -0 "$pid" 2>/dev/null || continue
        kill -TERM "$pid" 2>/dev/null || true
        for ((attempt = 0; attempt < 100; attempt++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name (pid $pid) did not stop within 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}

# shellcheck disable=SC2317 # the EXIT trap
on_exit() {
    local status=$?
    trap - EXIT INT TERM
    if ((${#pids[@]} > 0)); then
        say "stopping the gateway, the demo app and Redis"
        stop_all
        say "stopped"
    fi
    exit "$status"
}

# Writes the quick-start configuration from the example unless it exists, so
# that edits to .quickstart/otpgate.toml survive the next run.
write_config() {
    if [[ -e "$config" ]]; then
        say "using the existing $config (delete it to write a fresh one)"
        return
    fi
    sed -e "/^\[listen\]/,/^\[upstream\]/ s|^http = .*|http = \"127.0.0.1:$GATEWAY_PORT\"|" \
        -e "/^\[upstream\]/,/^\[app\]/ s|^address = .*|address = \"127.0.0.1:$APP_PORT\"|" \
        -e "/^\[redis\]/,/^\[hsm\]/ s|^url = .*|url = \"redis://127.0.0.1:$REDIS_PORT/\"|" \
        -e "/^\[hsm\]/,/^\[totp\]/ s|^token_label = .*|token_label = \"$TOKEN_LABEL\"|" \
        -e "/^\[admin\]/,/^\[log\]/ s|^listen = .*|listen = \"127.0.0.1:$ADMIN_PORT\"|" \
        "$repo/deploy/otpgate.example.toml" >"$config.new"
    local expected
    for expected in "http = \"127.0.0.1:$GATEWAY_PORT\"" \
        "address = \"127.0.0.1:$APP_PORT\"" \
        "url = \"redis://127.0.0.1:$REDIS_PORT/\"" \
        "token_label = \"$TOKEN_LABEL\"" \
        "listen = \"127.0.0.1:$ADMIN_PORT\"" \
        'pin_env = "OTPGATE_HSM_PIN"'; do
        grep -qxF "$expected" "$config.new" ||
            die "deploy/otpgate.example.toml no longer has a line the script can turn into '$expected'"
    done
    mv "$config.new" "$config"
    say "wrote $config"
}

main() {
    case "${1:-}" in
        "") ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument '$1'; run with --help for the usage" ;;
    esac

    trap on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP

    install_packages
    command -v cargo >/dev/null ||
        die "cargo not found; install Rust 1.85 or newer (https://rustup.rs) and run the script again"
    check_ports_free

    say "building otpgate and the demo app (a first build takes several minutes)"
    (cd "$repo" && cargo build -p otpgate -p otpgate-demo-app --bin otpgate --bin demo-app)

    mkdir -p "$state/redis" "$logs"
    export OTPGATE_HSM_PIN="$HSM_PIN"
    "$repo/deploy/softhsm-init.sh" --dir "$state/softhsm" --label "$TOKEN_LABEL" >/dev/null
    export SOFTHSM2_CONF="$state/softhsm/softhsm2.conf"
    write_config
    "$bin/otpgate" check-config --config "$config" >/dev/null
    "$bin/otpgate" hsm init --config "$config"

    # Ports can be taken while cargo builds, so they are checked again here.
    check_ports_free
    start redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$state/redis" \
        --appendonly yes --save "" --daemonize no
    wait_for_port "$REDIS_PORT" "${pids[-1]}"
    start demo-app "$bin/demo-app" --listen "127.0.0.1:$APP_PORT"
    wait_for_port "$APP_PORT" "${pids[-1]}"
    start otpgate "$bin/otpgate" serve --config "$config"
    wait_for_port "$GATEWAY_PORT" "${pids[-1]}"

    cat <<EOF

otpgate is running in front of the demo app.

  Open         http://127.0.0.1:$GATEWAY_PORT/login
  Log in as    bob, password builder-42 (no 2FA yet)
  Logs         .quickstart/logs/

To run otpgate commands in another shell, from $repo:
  export SOFTHSM2_CONF=$SOFTHSM2_CONF
  export OTPGATE_HSM_PIN=$HSM_PIN
  $bin/otpgate user status alice --config .quickstart/otpgate.toml

Press Ctrl-C to stop the gateway, the demo app and Redis.
EOF

    # Returns when one of the processes exits. Ctrl-C interrupts the wait and runs on_exit.
    local exited="" status=0
    wait -n -p exited "${pids[@]}" || status=$?
    [[ -n "$exited" ]] || die "waiting for the background processes failed with status $status"
    die "${names[$exited]} exited with status $status; see $logs/${names[$exited]}.log"
}

main "$@"
