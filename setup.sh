#!/usr/bin/env bash
# One entry point for a fresh machine with only python3 and git:
#   bash setup.sh repro   # create .venv if missing, install the locked deps, run `dvc repro`
#   bash setup.sh test    # same set-up, then the test suite
# Idempotent: the install is skipped while the two lock files are unchanged since the last install.
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
stamp=$venv/.installed-lock-sha256
locks="requirements.lock requirements-nodeps.txt"
want=$(python3 -c 'import hashlib,sys; print(hashlib.sha256(b"".join(open(f,"rb").read() for f in sys.argv[1:])).hexdigest())' $locks)

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv"
    python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing $locks into $venv (first run takes a few minutes)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.lock
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
    echo "$want" > "$stamp"
else
    echo "setup: $venv is up to date"
fi
export PATH="$PWD/$venv/bin:$PATH"
# Offline by default: no hub look-ups, no telemetry.
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
export HF_HUB_DISABLE_TELEMETRY=1 DVC_NO_ANALYTICS=1

case "${1:-}" in
    repro) shift; exec dvc repro "$@" ;;
    test)  shift; exec python -m pytest "$@" ;;
    "")    echo "setup: environment ready; activate with 'source $venv/bin/activate'" ;;
    *)     echo "usage: bash setup.sh [repro|test] [extra args]" >&2; exit 2 ;;
esac
