#!/usr/bin/env bash
# The main job on its embedded defaults: install, train on the shipped reference traces, serve.
# Serves the router on http://127.0.0.1:${PORT:-8000} with the embedded llama.cpp panel
# (configs/panel.cpu.yaml); nothing else needs to be running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
confroute train --config configs/train.yaml
exec confroute serve --host 127.0.0.1 --port "${PORT:-8000}"
