#!/usr/bin/env bash
# The one command: set up (wrk, bench/.venv, the DB user), then run everything and
# write bench/RESULTS.md and bench/results.png.   bench/run.sh [--quick] [run.py options]
# The fault scenarios (bench/FAULTS.md) are apart: make bench-faults.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$HERE/setup.sh"
exec "$HERE/.venv/bin/python" "$HERE/run.py" "$@"
