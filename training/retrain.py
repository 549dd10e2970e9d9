"""Retrain on the service's own traffic: decision log + feedback -> candidate -> gate -> promotion.

1. Rows: every logged decision since `--since` / `--since-version`, with the signals computed at
   decision time; a row is labeled only by feedback (training/inrows.py). Unlabeled rows are
   counted per model and decision, never guessed.
2. Data: the labeled rows, split by request id into training and a held-out slice (in-domain
   only); `--mix-reference` adds the earlier training data (`train.traces` / `train.table`) to
   the training side.
3. Candidate: fitted, evaluated and exported by the training pipeline (fit_panel, evaluate_panel,
   fit_policy_table, export_version) into a staging folder. With no training request answered by
   every panel model the policy cannot be refitted; the current version's policy is carried over
   and the report says so.
4. Comparison: candidate and current version, both loaded through the runtime scorer, on the SAME
   held-out rows: AUROC, ECE, Brier, log loss per model; and, when held-out requests have a
   labeled answer from every panel model (full cascades), the utility
   (1 - λ)·accuracy - λ·cost/cost_of_last_model of each version's own policy replayed at λ.
   Both are MLflow runs in one experiment, tagged role=candidate / role=current.
5. Gate: promote only if, for every model with enough held-out rows, the candidate is not worse
   than the current version by more than the configured margins (and not worse in utility);
   then move the version into models/ and switch models/current atomically; a running service
   picks it up by its hot reload. `dry_run`: all of the above in a temporary folder, no MLflow
   run, nothing written.

Selection bias. The log holds labels mostly where someone could check the answer that was served:
the accepted one. The cheapest model's labeled rows then come from answers it was confident
about (p >= τ) and its escalated answers stay unlabeled; the expensive models are labeled only on
the hard requests that reached them. A candidate fitted on such rows learns the confident side of
the cheap model and the hard side of the expensive ones, so it tends to overrate the cheap model
exactly where the threshold matters, and the held-out comparison is biased the same way.
Remedies, best first:
- feedback with the gold answer (`POST /v1/feedback {"gold": ...}`) grades every stage the
  request called, including the escalated answers of the cheaper models;
- exploration (CONFROUTE_EXPLORE_RATE=ε, chat endpoint): the service also runs the next model on
  a share ε of accepted answers and logs that stage with decision "explore" (served answer
  unchanged); with gold feedback this labels both sides of every threshold and gives full
  cascades for the utility replay (a /v1/route client explores by also sending the next model's
  answer now and then);
- mixing in the reference training data (`--mix-reference`), whose every answer is graded.
`label_counts` shows labeled rows per decision kind; a model labeled only on "accept" rows is
warned about.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import pandas as pd
from pydantic import Field

from confroute.grading import DEFAULT_GRADER, get_grader
from confroute.manifest import ManifestError, resolve_current, switch_current
from confroute.panel import Panel, StrictModel, load_panel, load_yaml_model
from confroute.scoring import Scorer
from training import registry, tracking
from training.config import TrainConfig
from training.export import export_version
from training.gate import Comparison, Gate, Verdict, compare, judge
from training.inrows import (
    in_domain_dataset,
    label_counts,
    labeled_table,
    log_rows,
    read_log,
    redact,
    since_version,
)
from training.train import (
    Dataset,
    TrainError,
    evaluate_panel,
    fit_panel,
    fit_policy_table,
    load_dataset,
    panel_info,
    run_params,
)

EXIT_REFUSED = 1  # the gate kept the current version
EXIT_NOT_ENOUGH_LABELS = 3  # no (or too few) labeled decisions: nothing was fitted or written


class NotEnoughLabels(TrainError):
    """The log has no labels, or too few for a model; nothing is fitted or written."""

    def __init__(self, message: str, counts: pd.DataFrame) -> None:
        super().__init__(message)
        self.counts = counts  # per model, as label_counts gives them


class RetrainConfig(StrictModel):
    """configs/retrain.yaml: how the candidate is fitted (`train`), judged (`lam`, `gate`), logged."""

    train: TrainConfig = TrainConfig(figures=False, bootstrap=200)
    lam: Annotated[float, Field(ge=0, le=1)] = 0.5  # λ of the utility comparison
    grader: str = DEFAULT_GRADER  # grades stages logged after their request's gold feedback
    experiment: str = "confroute-retrain"  # MLflow experiment of candidate and current runs
    gate: Gate = Gate()


def load_retrain_config(path: str | Path) -> RetrainConfig:
    config: RetrainConfig = load_yaml_model(path, RetrainConfig)
    return config


@dataclass(frozen=True)
class Options:
    """One invocation: which log, which slice of it, where versions live."""

    log: str
    since: float | None = None
    since_version: str | None = None
    mix_reference: bool = False
    dry_run: bool = False
    models_dir: Path = Path("models")


@dataclass
class RetrainResult:
    counts: pd.DataFrame  # per model: decisions, labeled, unlabeled, labeled per decision kind
    comparison: Comparison
    verdict: Verdict
    candidate: str
    current: str | None
    promoted: bool
    dry_run: bool
    runs: dict[str, str] = field(default_factory=dict)  # role -> MLflow run id
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict.promote else EXIT_REFUSED


def retrain(config: RetrainConfig, opts: Options) -> RetrainResult:
    """Read the log, fit a candidate, compare it with current, promote it if the gate passes."""
    panel = load_panel(config.train.panel)
    data, counts, notes = collect(config, opts, panel)
    current = current_scorer(opts.models_dir)
    with _staging(opts) as staging, _run(config, opts, "candidate") as run:
        version_dir, note = fit_candidate(config.train, data, panel, staging,
                                          run.run_id if run else None, current)
        notes += [note] if note else []
        candidate = Scorer.load(version_dir)
        held = data.table[data.test]
        comparison = compare(held, {"current": current, "candidate": candidate}, panel.names,
                             config.lam, config.train.ece_bins)
        verdict = judge(comparison, config.gate)
        runs = {}
        if run is not None:
            runs = log_runs(config, opts, run, data, counts, comparison, verdict, version_dir)
        promoted = verdict.promote and not opts.dry_run
        if promoted:
            promote(version_dir, opts.models_dir)
    return RetrainResult(counts, comparison, verdict, candidate.version,
                         current.version if current else None, promoted, opts.dry_run, runs, notes)


def collect(config: RetrainConfig, opts: Options, panel: Panel) -> tuple[Dataset, pd.DataFrame, list[str]]:
    """Labeled in-domain rows (+ reference), per-model counts, and warnings; NotEnoughLabels."""
    since = since_version(opts.log, opts.since_version) if opts.since_version else opts.since
    rows = log_rows(read_log(opts.log, since), panel, get_grader(config.grader))
    counts = label_counts(rows, panel.names)
    if counts["labeled"].sum() == 0:
        raise NotEnoughLabels(
            f"no labeled decisions in {redact(opts.log)}: {len(rows)} logged answers, none has "
            f"feedback; post labels to /v1/feedback (a gold answer grades every stage). "
            f"No candidate fitted, no version written", counts)
    reference = load_dataset(config.train, panel).table if opts.mix_reference else None
    data = in_domain_dataset(labeled_table(rows), reference, config.train.test_size,
                             config.train.seed)
    _check_training_rows(data, config.gate.min_labeled_rows, counts)
    return data, counts, bias_warnings(counts)


def _check_training_rows(data: Dataset, minimum: int, counts: pd.DataFrame) -> None:
    t = data.table[~data.test & (data.table["has_logprobs"] == 1).to_numpy()]
    n = t.groupby("model").size().reindex(counts.index, fill_value=0)
    short = n[n < minimum]
    if not short.empty:
        raise NotEnoughLabels(
            f"too few labeled rows to fit on (gate.min_labeled_rows={minimum}): "
            f"{', '.join(f'{m} {k}' for m, k in short.items())}; collect more feedback, add "
            f"--mix-reference, or lower gate.min_labeled_rows. No version written", counts)


def bias_warnings(counts: pd.DataFrame) -> list[str]:
    """Models whose labels come only from accepted answers while escalated ones went unlabeled."""
    out = []
    for model, c in counts.iterrows():
        if c["labeled"] and c["labeled"] == c["labeled_accept"] and c["unlabeled_not_accepted"]:
            out.append(f"{model}: labels only on accepted answers ({c['unlabeled_not_accepted']} "
                       f"escalated or skipped ones unlabeled): selection bias; post gold answers "
                       f"or enable exploration (CONFROUTE_EXPLORE_RATE)")
    return out


def current_scorer(models_dir: Path) -> Scorer | None:
    """The served version, or None when there is none yet (a first version is not compared)."""
    try:
        path = resolve_current(models_dir)
    except ManifestError:
        return None
    return Scorer.load(path)


def fit_candidate(
    train: TrainConfig, data: Dataset, panel: Panel, out: Path, run_id: str | None,
    current: Scorer | None,
) -> tuple[Path, str | None]:
    """Fit, evaluate, fit the policy (else carry current's over) and export into `out`."""
    fitted = fit_panel(train, data, panel.names)
    metrics = evaluate_panel(train, data, fitted)
    note = None
    try:
        policy = fit_policy_table(train, data, fitted, panel.names)
    except TrainError as exc:
        if current is None or current.manifest.policy is None:
            raise
        policy = current.manifest.policy
        note = f"policy carried over from {current.version} ({exc})"
    held_out = {m: data.table[(data.table["model"] == m).to_numpy() & data.test][data.features]
                .to_numpy(float) for m in fitted}
    version_dir, _ = export_version(
        out, fitted, held_out, panel=panel_info(panel), feature_names=data.features,
        feature_config=train.features, policy=policy, metrics=metrics,
        mlflow_run_id=run_id, switch=False,
        mlflow_tracking_uri=tracking.resolve_uri(train.tracking.uri) if run_id else None)
    return version_dir, note


def promote(version_dir: Path, models_dir: Path) -> Path:
    """Move the staged version into models/ and switch models/current to it (atomic rename)."""
    dest = Path(models_dir) / version_dir.name
    os.rename(version_dir, dest)
    switch_current(models_dir, dest.name)
    return dest


@contextlib.contextmanager
def _staging(opts: Options) -> Iterator[Path]:
    """A folder on the models' filesystem (rename stays atomic); a temp folder for a dry run."""
    if opts.dry_run:
        with tempfile.TemporaryDirectory(prefix="confroute-retrain-") as tmp:
            yield Path(tmp)
        return
    opts.models_dir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=".retrain-", dir=opts.models_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _run(config: RetrainConfig, opts: Options, role: str) -> Iterator[tracking.Run | None]:
    """An MLflow run tagged with its role, or None for a dry run."""
    if opts.dry_run:
        yield None
        return
    with tracking.start_run(config.train.tracking.uri, config.experiment, run_name=role,
                            tags={"role": role}) as run:
        yield run


def log_runs(
    config: RetrainConfig, opts: Options, run: tracking.Run, data: Dataset, counts: pd.DataFrame,
    comparison: Comparison, verdict: Verdict, version_dir: Path,
) -> dict[str, str]:
    """Candidate run (open): params, metrics, verdict, the version; a current run beside it."""
    slice_ = {"log": redact(opts.log), "since": opts.since, "since_version": opts.since_version,
              "lam": config.lam, "held_out_rows": int(data.test.sum())}
    run.log_params(run_params(config.train, data) | slice_ | {
        "mix_reference": opts.mix_reference,
        **{f"gate.{k}": v for k, v in config.gate.model_dump().items()}})
    run.log_metrics(comparison.flat("candidate") | {
        f"log.{k}.{m}": float(v) for m, c in counts.iterrows() for k, v in c.items()})
    runs = {"candidate": run.run_id}
    if comparison.versions.get("current"):
        with _run(config, opts, "current") as cur:
            assert cur is not None
            cur.log_params(slice_)
            cur.log_metrics(comparison.flat("current"))
            cur.set_tags({"version": comparison.versions["current"] or "",
                          "compared_with": run.run_id})
            runs["current"] = cur.run_id
    run.set_tags({"version": version_dir.name, "gate": "passed" if verdict.promote else "refused",
                  "promoted": str(verdict.promote), "compared_with": runs.get("current", ""),
                  "utility_basis": comparison.utility_basis})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "comparison.json").write_text(comparison.to_json(verdict), encoding="utf-8")
        run.log_artifacts(tmp, "retrain")
    run.log_artifacts(version_dir, "model")
    if config.train.registry.enabled and not opts.dry_run:
        name, uri = config.train.registry.name, config.train.tracking.uri
        number = registry.register(uri, name, run.run_id, version_dir.name)
        registry.set_alias(uri, name, registry.CHAMPION if verdict.promote else
                           registry.CHALLENGER, number)
        run.set_tags({"registered": f"models:/{name}/{number}"})
    return runs

