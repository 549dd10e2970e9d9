#!/usr/bin/env bash
# Generate the shipped reference traces (issue 3): every panel model on every set, resumable.
# Working files go to var/traces/<set>.<model>.jsonl (ignored); a set whose three models are all
# done is packed into data/reference-traces/<set>.traces.npz (columnar). Re-running skips what is already
# generated, so it can be stopped and restarted at any time. MODELS picks which models this
# process runs (two processes, one per core, can share the work: see the card).
set -euo pipefail
cd "$(dirname "$0")/../.."
PANEL=${PANEL:-configs/panel.cpu.yaml}
ALL="smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b"
MODELS=${MODELS:-$ALL}
SETS=${SETS:-"multiarith:test:150 gsm8k:test:200 svamp:test:150 singleop:test:200 addsub:test:200 gsm8k:train:500"}
mkdir -p var/traces data/reference-traces
# Work from an earlier session is committed under data/reference-traces/ (finished sets) and
# partial/ (new items only): rebuild the working files this checkout lacks from both.
# Before committing: python training/scripts/partial_traces.py save
python training/scripts/partial_traces.py restore
for spec in $SETS; do
  IFS=: read -r name split limit <<<"$spec"
  for model in $MODELS; do
    echo "== $(date -Is) $model on $name:$split (first $limit)"
    confroute generate --panel "$PANEL" --models "$model" --dataset "$name:$split" --limit "$limit" \
      --out "var/traces/${name}_${split}.${model}.jsonl"
    echo "== $(date -Is) done $model on $name:$split"
  done
  works=()
  for model in $ALL; do works+=("var/traces/${name}_${split}.${model}.jsonl"); done
  python -m training.pack_traces --expect "$limit" "data/reference-traces/${name}_${split}.traces.npz" "${works[@]}" \
    || echo "== $name:$split not complete for every model yet; not packed"
done
echo "== $(date -Is) all done"
