#!/usr/bin/env bash
# The test command of the README (and of .ci/run): install from the repo's own files, lint, test.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_POSTGRES=1 bash scripts/setup.sh
. .venv/bin/activate
ruff check src training tests bench
mypy
python -m pytest -q -p no:cacheprovider "$@"
