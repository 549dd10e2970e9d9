"""In-process decision latency for bench/service.py --only decision: decoded arrays -> decision
(signals, ONNX, calibration, policy) and the parts before it, with before/after comparisons."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from servers import PANEL, ROOT, source_env


def percentiles(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1e6
    return {"p50_us": round(float(np.percentile(a, 50)), 1),
            "p99_us": round(float(np.percentile(a, 99)), 1)}


def timed(fn: Any, n: int) -> dict[str, float]:
    for _ in range(min(50, n)):
        fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return percentiles(samples)


def decision_latency(models_dir: Path, body: bytes, n: int) -> dict[str, Any]:
    from confroute.engine import Engine, StageInput
    from confroute.grading import NumericGrader
    from confroute.service.route import decode
    from confroute.tokens import token_arrays

    engine = Engine(models_dir, None, NumericGrader(), 0.5)
    # engine.versions since 2026-12-08; a baseline before that reloads on the engine itself
    v = getattr(engine, "versions", engine).reload()
    req = decode(body, batch=False)[0]
    assert req.choices and req.choices[0].logprobs and req.choices[0].logprobs.content
    tokens = req.choices[0].logprobs.content
    arr = token_arrays(tokens)
    stage = StageInput(PANEL[0], arr, None, "stop", 300, ())
    x = engine.signals(v, stage)[0][None]
    return {
        "version": v.version,
        "decide_from_arrays": timed(lambda: engine.decide(v, stage, 0.5), n),
        "of_which_signals_with_answer_extraction": timed(lambda: engine.signals(v, stage), n),
        "of_which_onnx_and_calibration": timed(lambda: v.scorer.predict(PANEL[0], x), n),
        "of_which_policy": timed(lambda: v.policy.decide(PANEL[0], 0.7, 0.5), n),
        "msgspec_decode": timed(lambda: decode(body, batch=False), n),
        "token_arrays": timed(lambda: token_arrays(tokens), n),
        "answer_extraction": timed(lambda: engine.grader.extract(arr.text), n),
    }


_DECISION_KEYS = ("decide_from_arrays", "of_which_signals_with_answer_extraction",
                  "of_which_onnx_and_calibration", "of_which_policy")


def _decision_summary(runs: dict[str, list[dict[str, Any]]], n: int, rounds: int
                      ) -> dict[str, Any]:
    """Median p50 of each side over its rounds, and version / baseline ratios."""
    med = {side: {k: float(np.median([r[k]["p50_us"] for r in rs])) for k in _DECISION_KEYS}
           for side, rs in runs.items()}
    return {"rounds": rounds, "iterations": n,
            "version": {"id": runs["version"][0]["version"], **med["version"]},
            "baseline": {"id": runs["baseline"][0]["version"], **med["baseline"]},
            "ratio_version_over_baseline": {
                k: round(med["version"][k] / med["baseline"][k], 3) for k in _DECISION_KEYS},
            "per_round": runs, "load_average": os.getloadavg()}


def compare_decisions(models_dir: Path, baseline: Path, body: bytes, n: int, rounds: int
                      ) -> dict[str, Any]:
    """decision_latency of two versions in alternating rounds; median p50 of each, and ratios."""
    runs: dict[str, list[dict[str, Any]]] = {"version": [], "baseline": []}
    for _ in range(rounds):
        runs["baseline"].append(decision_latency(baseline, body, n))
        runs["version"].append(decision_latency(models_dir, body, n))
    return _decision_summary(runs, n, rounds)


def compare_decision_sources(models_dir: Path, baseline_src: Path, n: int, rounds: int
                             ) -> dict[str, Any]:
    """decision_latency of one version under this tree's code and `baseline_src`'s (another
    checkout's `src`), each round a fresh process per tree, alternating; medians and ratios."""
    runs: dict[str, list[dict[str, Any]]] = {"version": [], "baseline": []}
    for _ in range(rounds):
        for side, src in (("baseline", baseline_src), ("version", None)):
            out = subprocess.run(
                [sys.executable, str(Path(__file__).with_name("service.py")), "--only",
                 "decision", "--models-dir", str(models_dir), "--iterations", str(n)],
                env=source_env(src), cwd=ROOT, check=True, capture_output=True)
            runs[side].append(json.loads(out.stdout)["decision"])
    return {**_decision_summary(runs, n, rounds), "baseline_src": str(baseline_src)}
