"""Traces -> one feature table row per (item, model), with the cascade's cross-stage signal and cost.

Columns: item_id, dataset, model, stage (panel position), correct, prediction, prompt_tokens,
completion_tokens, cost, then every name of FEATURE_NAMES. `agree_prev` compares each answer with
the answers of the cheaper panel models on the same item, as the cascade would see them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import pandas as pd

from confroute.features import FEATURE_NAMES, FeatureConfig, extract_signals
from confroute.grading import get_grader
from confroute.panel import Panel
from confroute.traces import Trace

META_COLUMNS = (
    "item_id", "dataset", "model", "stage", "correct", "prediction",
    "prompt_tokens", "completion_tokens", "cost",
)


def build_table(
    traces: Iterable[Trace], panel: Panel, config: FeatureConfig = FeatureConfig()
) -> pd.DataFrame:
    """Feature table of every trace whose model is in the panel (others are ignored)."""
    order = {name: i for i, name in enumerate(panel.names)}
    by_item: dict[str, dict[str, Trace]] = defaultdict(dict)
    for t in traces:
        if t.model in order:
            by_item[t.item_id][t.model] = t
    grader = get_grader("numeric")
    rows, feats = [], []
    for item_id, per_model in by_item.items():
        previous: list[str | None] = []
        for name in panel.names:
            t = per_model.get(name)
            if t is None:
                previous.append(None)  # keeps later models' agreement honest about the gap
                continue
            feats.append(extract_signals(t, previous=previous, grader=grader, config=config))
            cost = panel.get(name).cost.of(t.usage.prompt_tokens, t.usage.completion_tokens)
            rows.append((item_id, t.dataset, name, order[name], bool(t.correct), t.prediction,
                         t.usage.prompt_tokens, t.usage.completion_tokens, cost))
            previous.append(t.prediction)
    table = pd.DataFrame(rows, columns=list(META_COLUMNS))
    x = np.vstack(feats) if feats else np.empty((0, len(FEATURE_NAMES)))
    return pd.concat([table, pd.DataFrame(x, columns=list(FEATURE_NAMES))], axis=1)


def complete_items(table: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """Only the items answered by every given model (what a cascade replay needs)."""
    counts = table[table["model"].isin(models)].groupby("item_id")["model"].nunique()
    keep = counts[counts == len(models)].index
    return table[table["item_id"].isin(keep)].reset_index(drop=True)
