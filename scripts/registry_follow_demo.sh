#!/usr/bin/env bash
# Two `confroute serve` instances on one MLflow registry follow a promotion of `champion`
# (docs/benchmarks.md, 2026-12-08): train two versions into a scratch SQLite store, serve
# models:/confroute@champion on ports 8041 and 8042 with --follow-alias, move the alias, time it.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${WORK:-/tmp/confroute-registry-demo}
mkdir -p "$W"
sed 's/^classifier: .*/classifier: lightgbm/' configs/train.yaml > "$W/train-lgbm.yaml"
export MLFLOW_TRACKING_URI=sqlite:///$W/mlflow.db
rm -rf "$W/mlflow.db" "$W/train-models" "$W/a" "$W/b"
.venv/bin/confroute train --config configs/train.yaml --out $W/train-models > $W/train1.log 2>&1
.venv/bin/confroute train --config $W/train-lgbm.yaml --out $W/train-models > $W/train2.log 2>&1
.venv/bin/python - <<'PY'
from mlflow import MlflowClient
c = MlflowClient()  # MLFLOW_TRACKING_URI
for mv in c.search_model_versions("name='confroute'"):
    print(mv.version, mv.tags.get("confroute.version"), mv.aliases)
c.set_registered_model_alias("confroute", "champion", "1")
PY
for n in a b; do mkdir -p $W/$n; done
.venv/bin/confroute serve --port 8041 --models-dir $W/a/models --decision-log $W/a/d.db --version models:/confroute@champion --follow-alias --follow-interval-s 2 > $W/a/serve.log 2>&1 &
.venv/bin/confroute serve --port 8042 --models-dir $W/b/models --decision-log $W/b/d.db --version models:/confroute@champion --follow-alias --follow-interval-s 2 > $W/b/serve.log 2>&1 &
sleep 25
.venv/bin/python - <<'PY'
import time, httpx
from mlflow import MlflowClient
c = MlflowClient()  # MLFLOW_TRACKING_URI
def v(p): return httpx.get(f"http://127.0.0.1:{p}/healthz", timeout=5).json().get("version")
print("before", v(8041), v(8042))
target = c.get_model_version("confroute", "2").tags["confroute.version"]
t0 = time.monotonic(); c.set_registered_model_alias("confroute", "champion", "2")
seen = {}
while len(seen) < 2 and time.monotonic() - t0 < 60:
    for p in (8041, 8042):
        if p not in seen and v(p) == target:
            seen[p] = time.monotonic() - t0
    time.sleep(0.05)
print("promoted to", target, "followed after", {k: round(x, 2) for k, x in seen.items()})
PY
pkill -f "confroute serve --port 804" || true
