"""Drift report: PSI/KS flag a shifted signal and leave an unchanged one alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from confroute.features import FEATURE_NAMES
from training.drift import calibration, drift_report, psi


def _frame(model: str, n: int, shift: float, rng: np.random.Generator) -> pd.DataFrame:
    data = {name: rng.normal(0, 1, n) for name in FEATURE_NAMES}
    data["avg_logprob"] = rng.normal(-0.5 + shift, 0.2, n)
    data["p_correct"] = rng.uniform(0, 1, n)
    return pd.DataFrame({"model": model, **data})


def test_psi_is_zero_for_same_distribution_and_large_for_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 5000)
    assert psi(ref, rng.normal(0, 1, 5000)) < 0.02
    assert psi(ref, rng.normal(1.5, 1, 5000)) > 0.5


def test_psi_constant_reference_and_empty() -> None:
    assert psi(np.ones(10), np.ones(5)) == 0.0
    assert psi(np.ones(10), np.zeros(5)) == float("inf")
    assert np.isnan(psi(np.array([]), np.ones(3)))


def test_drift_report_flags_only_the_moved_signal() -> None:
    rng = np.random.default_rng(1)
    reference = _frame("m", 2000, 0.0, rng)
    recent = _frame("m", 400, -0.6, rng)
    report = drift_report(reference, recent)["models"]["m"]
    assert report["flagged"] == ["avg_logprob"]
    row = next(r for r in report["signals"] if r["signal"] == "avg_logprob")
    assert row["recent_mean"] == pytest.approx(-1.1, abs=0.05)


def test_too_few_recent_rows_are_not_flagged() -> None:
    rng = np.random.default_rng(2)
    report = drift_report(_frame("m", 500, 0, rng), _frame("m", 10, -2.0, rng))
    assert report["models"]["m"]["flagged"] == []


def test_calibration_of_a_calibrated_and_a_miscalibrated_predictor() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, p.size) < p).astype(float)
    assert calibration(p, y)["ece"] < 0.02
    assert calibration(np.full_like(p, 0.9), y)["ece"] == pytest.approx(0.4, abs=0.02)
    assert calibration(p, np.full_like(p, np.nan))["n_labeled"] == 0
