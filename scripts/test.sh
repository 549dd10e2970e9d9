#!/usr/bin/env bash
# The test command of the README (and of .ci/run): install from the repo's own files, lint, test.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_POSTGRES=1 bash scripts/setup.sh
. .venv/bin/activate
ruff check src training tests bench scripts
mypy
lint-imports --no-cache  # the layering contracts of pyproject.toml ([tool.importlinter])
# A skipped test fails the run (no PostgreSQL, no reference traces): set CONFROUTE_NO_SKIPS=0 to
# allow skips on a machine that cannot install PostgreSQL.
CONFROUTE_NO_SKIPS=${CONFROUTE_NO_SKIPS:-1} python -m pytest -q -p no:cacheprovider "$@"
