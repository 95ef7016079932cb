# shellcheck shell=bash
# Shared by scripts/demo and scripts/test; sourced, not run. Moves to the repository
# root, so every path below is relative to it.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

# The embedded servers, logs and Celery beat's schedule live here (git-ignored).
DATA_DIR="${PREFERENCE_DESK_DATA_DIR:-.data}"
export PREFERENCE_DESK_DATA_DIR="$DATA_DIR"

if [[ -t 1 ]]; then BOLD=$'\033[1m' RESET=$'\033[0m'; else BOLD='' RESET=''; fi

header() { printf '\n%s==> %s%s\n' "$BOLD" "$*" "$RESET"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# The first Python 3.11+ on PATH ($PYTHON first, when set).
find_python() {
    local candidate
    for candidate in ${PYTHON:+"$PYTHON"} python3 python3.14 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

# ensure_venv REQUIREMENTS_FILE: create .venv if needed, install the requirements unless
# a stamp shows these exact requirement files are installed already, and activate it.
ensure_venv() {
    local requirements=$1 python digest stamp
    if ! .venv/bin/python -c '' 2>/dev/null; then
        python=$(find_python) || die "Python 3.11 or newer is needed (or set PYTHON=/path/to/python3.11)"
        header "Creating .venv with $("$python" --version)"
        "$python" -m venv --clear .venv ||
            die "could not create .venv (on Debian or Ubuntu: apt-get install python3-venv)"
    fi
    .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die ".venv has a Python older than 3.11; delete .venv and run this again"

    # requirements-dev.txt includes requirements.txt, so hash every requirements file.
    digest=$(cat requirements*.txt | .venv/bin/python -c \
        'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
    stamp=".venv/.installed-${requirements%.txt}.sha256"
    if [[ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]]; then
        header "Installing $requirements into .venv (a few minutes the first time)"
        .venv/bin/python -m pip install --disable-pip-version-check --quiet -r "$requirements"
        printf '%s\n' "$digest" >"$stamp"
    fi

    export VIRTUAL_ENV="$ROOT/.venv"
    export PATH="$VIRTUAL_ENV/bin:$PATH"
    unset PYTHONHOME
}

# Embedded servers in use, and those this script started and so must stop.
EMBEDDED_SERVICES=()
STARTED_SERVICES=()

# DATABASE_URL and CELERY_BROKER_URL are used as they are when set; whichever is not set
# is pointed at an embedded server (scripts/services.py), started if it is not running.
ensure_services() {
    local wanted=() output
    [[ -n "${DATABASE_URL:-}" ]] || wanted+=(postgres)
    [[ -n "${CELERY_BROKER_URL:-}" ]] || wanted+=(redis)
    if ((${#wanted[@]} == 0)); then
        header "Using DATABASE_URL and CELERY_BROKER_URL from the environment"
        return 0
    fi
    # shellcheck disable=SC2034  # read by scripts/demo
    EMBEDDED_SERVICES=("${wanted[@]}")
    header "Embedded ${wanted[*]} (files in $DATA_DIR/)"
    output=$(python scripts/services.py env "${wanted[@]}") ||
        die "could not start the embedded ${wanted[*]}; see $DATA_DIR/logs/"
    eval "$output"
    export DATABASE_URL CELERY_BROKER_URL
    read -r -a STARTED_SERVICES <<<"$(sed -n 's/^# started: //p' <<<"$output")"
    grep '^export' <<<"$output" | sed 's/^export /  /'
}

stop_started_services() {
    if ((${#STARTED_SERVICES[@]})); then
        python scripts/services.py stop "${STARTED_SERVICES[@]}" || true
        STARTED_SERVICES=()
    fi
}
