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
# has the command; docs/install.md says how to refresh it). pyproject.toml keeps the ranges for people
# who install confroute as a library. llama-cpp-python builds from source the first time (about
# 7 minutes on 2 cores); pip caches the wheel.
# llama.cpp is built for x86-64-v3 (AVX2, FMA, F16C), not -march=native: on these machines the
# CPU reports AMX, a native build uses it, and llama_decode dies with SIGILL (illegal
# instruction) on any batch of a few dozen tokens, because the VM does not grant AMX state.
# pip's own wheel cache is keyed by the source, not by CMAKE_ARGS, so a machine that once built it
# natively would get that wheel back (CI did: SIGILL at the first batched decode). The wheel is
# therefore built with pip's cache off, into confroute's cache under a name that includes the
# build flags, and installed from there; the next install with the same flags reuses it.
if [ "$(uname -m)" = x86_64 ]; then
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
fi
LLAMA_PIN=$(grep -E '^llama-cpp-python==' requirements.lock)
BUILD_KEY=$(printf '%s|%s|%s' "$LLAMA_PIN" "${CMAKE_ARGS:-}" "$(uname -m)" | sha256sum | cut -c1-16)
WHEELS="${CONFROUTE_CACHE:-$HOME/.cache/confroute}/llama-wheels/$BUILD_KEY"
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building $LLAMA_PIN with CMAKE_ARGS='${CMAKE_ARGS:-}' (once per machine, about 7 minutes)"
  rm -rf "$WHEELS.tmp" && mkdir -p "$WHEELS.tmp"
  python -m pip wheel -q --no-cache-dir --no-deps -c requirements.lock -w "$WHEELS.tmp" "$LLAMA_PIN"
  rm -rf "$WHEELS" && mv "$WHEELS.tmp" "$WHEELS"
fi
python -m pip install -q -c requirements.lock --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-*.whl
python -m pip install -q -c requirements.lock -e ".[train,llama,dev,postgres]"
confroute models pull all
# A batched decode in a child process: a build the CPU cannot run fails here, in words, not
# later in the middle of the tests.
if ! python -m confroute.backends.selfcheck; then
  echo "error: the embedded llama.cpp build cannot decode on this CPU (see above). Rebuild it for" \
    "this machine: delete $WHEELS and set CMAKE_ARGS (for example -DGGML_NATIVE=OFF -DGGML_AVX2=OFF)" >&2
  exit 1
fi
if [ "${WITH_POSTGRES:-0}" = 1 ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "note: PostgreSQL not installed and no root apt-get: its tests are skipped, which fails" \
      "scripts/test.sh unless CONFROUTE_NO_SKIPS=0" >&2
  fi
fi
