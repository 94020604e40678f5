# Loopback port helpers for the benchmark scripts; `source` this file.

# Ports handed out so far, so two servers started before either listens
# never get the same one.
BENCH_USED_PORTS=" "

# Sets the variable named $1 to a port of 127.0.0.1 that nothing accepts
# connections on, below the ephemeral range so that clients' own ports
# never take it. Called directly (not in $(...)), so the list of ports
# handed out persists.
free_port() {
    local -n chosen_port=$1
    local port
    while :; do
        port=$((20000 + RANDOM % 12000))
        [[ $BENCH_USED_PORTS == *" $port "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            BENCH_USED_PORTS+="$port "
            chosen_port=$port
            return
        fi
    done
}

# Waits up to 30 s for port $1 of 127.0.0.1 to accept connections; $2 names
# the server in the error message.
wait_port() {
    local port=$1 what=$2 i
    for ((i = 0; i < 300; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return
        fi
        sleep 0.1
    done
    echo "$what did not listen on port $port within 30 s" >&2
    exit 1
}
