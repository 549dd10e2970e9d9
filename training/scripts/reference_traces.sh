#!/usr/bin/env bash
# Generate the shipped reference traces (issue 3): every panel model on every set, resumable.
# Working files go to var/traces/ (ignored); each finished set is compacted into data/reference-traces/.
# Re-running skips what is already generated, so it can be stopped and restarted at any time.
set -euo pipefail
cd "$(dirname "$0")/../.."
PANEL=${PANEL:-configs/panel.cpu.yaml}
mkdir -p var/traces data/reference-traces
for spec in multiarith:test:150 gsm8k:test:200 svamp:test:150 gsm8k:train:150; do
  IFS=: read -r name split limit <<<"$spec"
  work="var/traces/${name}_${split}.jsonl"
  for model in smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b; do
    echo "== $(date -Is) $model on $name:$split (first $limit)"
    confroute generate --panel "$PANEL" --models "$model" --dataset "$name:$split" --limit "$limit" --out "$work"
  done
  python -m training.compact "$work" "data/reference-traces/${name}_${split}.jsonl.gz"
done
echo "== $(date -Is) all done"
