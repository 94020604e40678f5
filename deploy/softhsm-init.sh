#!/usr/bin/env bash
# Creates a SoftHSM token for otpgate development in a directory of its own.
# Run with --help for the options. The export line goes to stdout and every
# other message to stderr, so `eval "$(deploy/softhsm-init.sh)"` also works.
set -euo pipefail

readonly DEFAULT_LABEL="otpgate"
readonly DEFAULT_PIN="otpgate-dev-pin"
readonly DEFAULT_SO_PIN="otpgate-dev-so-pin"

usage() {
    cat <<EOF
Usage: softhsm-init.sh [--dir DIR] [--label LABEL] [--pin PIN] [--so-pin PIN]

Creates a SoftHSM token for otpgate development and prints the
'export SOFTHSM2_CONF=...' line that selects it. Writes DIR/softhsm2.conf
(token directory DIR/tokens, file object store) unless that file exists.
Does nothing when the configuration already has a token with LABEL, so it is
safe to run again.

Options (each falls back to an environment variable, then to a default):
  --dir DIR       directory for softhsm2.conf and the tokens
                  (SOFTHSM_DIR; default \${XDG_DATA_HOME:-\$HOME/.local/share}/otpgate/softhsm)
  --label LABEL   token label, at most 32 bytes; must match hsm.token_label
                  (SOFTHSM_TOKEN_LABEL; default $DEFAULT_LABEL)
  --pin PIN       user PIN, 4 to 255 characters; otpgate reads it from hsm.pin_env
                  or hsm.pin_file (OTPGATE_HSM_PIN; default $DEFAULT_PIN)
  --so-pin PIN    security officer PIN, 4 to 255 characters
                  (SOFTHSM_SO_PIN; default $DEFAULT_SO_PIN)
  -h, --help      print this help and exit

The default PINs are for development only. PINs given as options are visible
to other local users in the process list; prefer the environment variables.
EOF
}

die() {
    echo "softhsm-init.sh: $*" >&2
    exit 1
}

dir="${SOFTHSM_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/otpgate/softhsm}"
label="${SOFTHSM_TOKEN_LABEL:-$DEFAULT_LABEL}"
pin="${OTPGATE_HSM_PIN:-$DEFAULT_PIN}"
so_pin="${SOFTHSM_SO_PIN:-$DEFAULT_SO_PIN}"

while (($# > 0)); do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --dir | --label | --pin | --so-pin)
            (($# >= 2)) || die "missing value for $1; run with --help for the options"
            case "$1" in
                --dir) dir="$2" ;;
                --label) label="$2" ;;
                --pin) pin="$2" ;;
                --so-pin) so_pin="$2" ;;
            esac
            shift 2
            ;;
        *)
            die "unknown argument '$1'; run with --help for the options"
            ;;
    esac
done

[[ -n "$dir" ]] || die "the token directory is empty; pass --dir DIR"
if [[ -z "$label" || ${#label} -gt 32 ]]; then
    die "invalid token label '$label': it must be 1 to 32 bytes long"
fi
if ((${#pin} < 4 || ${#pin} > 255)); then
    die "invalid user PIN: SoftHSM accepts PINs of 4 to 255 characters"
fi
if ((${#so_pin} < 4 || ${#so_pin} > 255)); then
    die "invalid security officer PIN: SoftHSM accepts PINs of 4 to 255 characters"
fi
command -v softhsm2-util >/dev/null ||
    die "softhsm2-util not found; install it with 'apt-get install softhsm2'"

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
conf="$dir/softhsm2.conf"
export SOFTHSM2_CONF="$conf"

if [[ -e "$conf" ]]; then
    echo "Using the existing $conf" >&2
else
    # The token directory contains key material, so only this user may read it.
    [[ -d "$dir/tokens" ]] || mkdir -m 0700 "$dir/tokens"
    cat >"$conf" <<EOF
# SoftHSM configuration written by deploy/softhsm-init.sh.
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
EOF
    echo "Wrote $conf" >&2
fi

# Prints 1 when a token with the label exists. softhsm2-util pads labels
# with spaces to 32 bytes, so the padding is removed before comparing.
token_exists() {
    softhsm2-util --show-slots | awk -v label="$label" '
        /^[[:space:]]*Label:/ {
            sub(/^[[:space:]]*Label:[[:space:]]*/, "")
            sub(/[[:space:]]+$/, "")
            if ($0 == label) found = 1
        }
        END { print found + 0 }'
}

if [[ "$(token_exists)" == 1 ]]; then
    echo "Token '$label' already exists in $conf; left unchanged." >&2
else
    softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$pin" >&2 ||
        die "softhsm2-util --init-token failed for token '$label' in $conf"
    echo "Created token '$label'." >&2
    if [[ "$pin" == "$DEFAULT_PIN" || "$so_pin" == "$DEFAULT_SO_PIN" ]]; then
        echo "The token uses a default development PIN; do not keep real seeds in it." >&2
    fi
fi

printf 'export SOFTHSM2_CONF=%q\n' "$conf"
