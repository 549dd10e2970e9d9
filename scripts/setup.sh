#!/usr/bin/env bash
# Install confroute and everything it needs from this repository's own files (idempotent).
# Used by both README commands. Creates .venv (Python 3.11), installs the package with the
# pipeline, llama.cpp and dev extras, fetches and verifies the reference GGUF models into
# ~/.cache/confroute, and installs PostgreSQL from Debian for the decision-log tests if asked.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "confroute needs Python 3.11"'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q "pip==26.3"
# Every package at the version CI tested: requirements.lock, made by `uv pip compile` (its header
# has the command; the README says how to refresh it). pyproject.toml keeps the ranges for people
# who install confroute as a library. llama-cpp-python builds from source the first time (about
# 7 minutes on 2 cores); pip caches the wheel.
# llama.cpp is built for x86-64-v3 (AVX2, FMA, F16C), not -march=native: on these machines the
# CPU reports AMX, a native build uses it, and llama_decode dies with SIGILL (illegal
# instruction) on any batch of a few dozen tokens, because the VM does not grant AMX state.
if [ "$(uname -m)" = x86_64 ]; then
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
fi
python -m pip install -q -c requirements.lock -e ".[train,llama,dev,postgres]"
confroute models pull all
if [ "${WITH_POSTGRES:-0}" = 1 ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "note: PostgreSQL not installed and no root apt-get: its tests are skipped, which fails" \
      "scripts/test.sh unless CONFROUTE_NO_SKIPS=0" >&2
  fi
fi
