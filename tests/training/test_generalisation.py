"""Learning curves and leave-one-set-out: whole-pipeline refits on real reference traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from confroute.panel import load_panel
from confroute.traces import read_traces
from training.config import TrainConfig
from training.generalisation import learning_curve, leave_one_set_out, summarize
from training.table import build_table

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "data" / "reference-traces"


@pytest.fixture(scope="module")
def table() -> object:
    panel = load_panel(ROOT / "configs/panel.cpu.yaml")
    full = build_table(read_traces(TRACES), panel)
    keep = np.sort(full["item_id"].unique())[::4]  # 163 items from every set, for speed
    return full[full["item_id"].isin(keep)].reset_index(drop=True)


@pytest.fixture(scope="module")
def config() -> TrainConfig:
    return TrainConfig(panel=ROOT / "configs/panel.cpu.yaml", classifier="logistic",
                       bootstrap=0, figures=False, folds=3)


def test_learning_curve_refits_on_nested_training_sets(table: object, config: TrainConfig) -> None:
    names = load_panel(config.panel).names
    lc = learning_curve(config, table, names, sizes=(40, "all"), repeats=2, test_size=0.3)
    runs = lc["runs"]
    assert [(r["repeat"], r["size"]) for r in runs] == [(0, "40"), (0, "all"), (1, "40"),
                                                        (1, "all")]
    assert runs[0]["n_train"] == 40 and runs[1]["n_train"] > 100
    assert runs[0]["n_test"] == runs[1]["n_test"]  # one held-out set per repeat
    for r in runs:
        assert {"router", "single_models", "route_thresholds", "fixed_formula"} <= set(r["apgr"])
    rows = {r["size"]: r for r in lc["summary"]}
    g = rows["all"]["gain_vs_single_models"]
    assert g["mean"] == pytest.approx(np.mean([r["apgr"]["router"] - r["apgr"]["single_models"]
                                               for r in runs if r["size"] == "all"]))
    assert g["ci95"][0] <= g["mean"] <= g["ci95"][1]


def test_leave_one_set_out_never_trains_on_the_left_out_set(table: object,
                                                             config: TrainConfig) -> None:
    names = load_panel(config.panel).names
    out = leave_one_set_out(config, table, names, n_boot=20)
    sets = {r["left_out"] for r in out["runs"]}
    assert sets == set(table["dataset"].unique())
    n_items = table["item_id"].nunique()
    for r in out["runs"]:
        left = table.loc[table["dataset"] == r["left_out"], "item_id"].nunique()
        assert r["n_test"] == left and r["n_train"] <= n_items - left
        lo, hi = r["gain_ci"]["single_models"]
        assert lo <= hi
    assert all("ci95" in row["gain_vs_single_models"] for row in out["summary"])


def test_leave_one_set_out_of_one_set_says_so(table: object, config: TrainConfig) -> None:
    one = table[table["dataset"] == table["dataset"].iloc[0]]  # type: ignore[index]
    with pytest.raises(ValueError, match="needs items from two datasets or more"):
        leave_one_set_out(config, one, load_panel(config.panel).names, n_boot=20)


def test_summary_of_runs() -> None:
    runs = [{"k": "a", "n_train": 10, "n_test": 5, "apgr": {"router": 0.6, "single_models": 0.5}},
            {"k": "a", "n_train": 10, "n_test": 5, "apgr": {"router": 0.7, "single_models": 0.5}}]
    [row] = summarize(runs, "k", ["a", "b"])
    assert row["router"]["mean"] == pytest.approx(0.65)
    gain = row["gain_vs_single_models"]
    assert gain["mean"] == pytest.approx(0.15) and gain["share_positive"] == 1.0
    assert gain["ci95"][0] < 0.15 < gain["ci95"][1]  # t-interval over two runs is wide
