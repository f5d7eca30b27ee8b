#!/usr/bin/env bash
# Run the test suite several times in a row while another process keeps one
# CPU core busy, as a loaded CI machine does, to catch tests that depend on
# which thread runs first. Stops at the first failing run and says which.
#
#   tests/stress.sh                       # the whole suite, 5 runs
#   tests/stress.sh --runs 10 -x -q       # 10 runs; the rest goes to pytest
#   tests/stress.sh --runs 1 tests/test_lifecycle.py
#
# PYTHON picks the interpreter (default: python3, e.g. from an active venv).
set -Euo pipefail

runs=5
if [ "${1:-}" = "--runs" ]; then
    runs=${2:?"--runs needs a number"}
    shift 2
fi
case $runs in
    '' | *[!0-9]* | 0)
        echo "--runs needs a whole number above 0, got '$runs'." >&2
        exit 2
        ;;
esac

cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

# The competing load: one core spinning for as long as this script runs.
"$python" -c 'while True: pass' &
busy=$!
stop_busy() {
    kill "$busy" 2>/dev/null || true
    wait "$busy" 2>/dev/null || true
}
trap stop_busy EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for ((run = 1; run <= runs; run++)); do
    printf '\n=== run %d of %d (busy loop: pid %d)\n' "$run" "$runs" "$busy"
    # No cache between runs: each run starts as a fresh clone does.
    if "$python" -m pytest -p no:cacheprovider "$@"; then
        continue
    else
        code=$?
    fi
    printf '\n=== FAILED on run %d of %d (pytest exit code %d)\n' "$run" "$runs" "$code" >&2
    exit "$code"
done
printf '\n=== all %d runs passed\n' "$runs"
