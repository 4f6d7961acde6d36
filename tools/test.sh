#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then run it.
# Usage: bash tools/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test]"
export GRAPHIR_HYPOTHESIS_PROFILE=${GRAPHIR_HYPOTHESIS_PROFILE:-ci}
exec "$PY" -m pytest -q "$@"
