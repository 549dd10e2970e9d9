"""The runtime scorer: a verified model version -> calibrated P(correct), with onnxruntime only.

Each panel model's ONNX graph maps float32 features (n, F) to the base classifier's uncalibrated
P(correct); the calibration from the manifest is applied with numpy. Rows without logprobs
(has_logprobs == 0) get NaN: there is nothing to judge, and the policy escalates them. No
LightGBM or scikit-learn is imported here, so a serving-only install stays small.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from confroute.features import FEATURE_NAMES
from confroute.manifest import Calibration, Identity, Isotonic, Manifest, ManifestError, verify


@dataclass(frozen=True)
class _Model:
    session: ort.InferenceSession
    input: str
    outputs: list[str]
    calibrate: Callable[[np.ndarray], np.ndarray]


def _session(path: Path) -> ort.InferenceSession:
    """One thread per call: single-row latency, and the service scales by processes."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own kinds (InvalidProtobuf, Fail, ...)
        raise ManifestError(f"{path}: onnxruntime cannot load it: {exc}") from None


class Scorer:
    """Calibrated P(correct) per panel model from a verified version directory."""

    def __init__(self, manifest: Manifest, models: dict[str, _Model], path: Path) -> None:
        self.manifest = manifest
        self.version = manifest.version
        self.models = manifest.panel.names  # panel order, cheapest first
        self.path = path
        self._models = models
        self._n_features = len(manifest.feature_names)
        self._has_logprobs = _index(manifest.feature_names, "has_logprobs")

    @classmethod
    def load(
        cls, version_dir: str | Path, feature_names: Sequence[str] | None = FEATURE_NAMES
    ) -> Scorer:
        """Verify the version (ManifestError on any mismatch) and open one session per model."""
        path = Path(version_dir).resolve()
        manifest = verify(path, feature_names)
        models = {name: _open(path, manifest, name) for name in manifest.panel.names}
        return cls(manifest, models, path)

    def predict(self, model: str, X: np.ndarray) -> np.ndarray:
        """Calibrated P(correct) for feature rows (n, F) in manifest order; NaN without logprobs."""
        m = self._models.get(model)
        if m is None:
            raise KeyError(f"model {model!r} is not in version {self.version}: {self.models}")
        x = np.ascontiguousarray(X, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self._n_features:
            raise ValueError(f"expected features of shape (n, {self._n_features}), got {X.shape}")
        p = m.calibrate(m.session.run(m.outputs, {m.input: x})[0])
        h = self._has_logprobs
        if h is not None and (len(x) > 1 or not x[0, h] >= 0.5):  # one scored row: no extra pass
            p[~(x[:, h] >= 0.5)] = np.nan  # NaN or 0: no logprobs
        return p


def _open(path: Path, manifest: Manifest, name: str) -> _Model:
    """Open one model's session and check its input width against the manifest's features."""
    entry = manifest.models[name]
    session = _session(path / entry.file)
    inputs = session.get_inputs()
    width = inputs[0].shape[1] if inputs and len(inputs[0].shape) == 2 else None
    if len(inputs) != 1 or inputs[0].name != entry.input or width != len(manifest.feature_names):
        raise ManifestError(
            f"{entry.file}: expects input {inputs[0].name!r} of shape {inputs[0].shape}, manifest "
            f"says {entry.input!r} with {len(manifest.feature_names)} features"
        )
    if entry.output not in {o.name for o in session.get_outputs()}:
        raise ManifestError(f"{entry.file}: has no output {entry.output!r}")
    return _Model(session, entry.input, [entry.output], calibrator(entry.calibration))


def calibrator(cal: Calibration) -> Callable[[np.ndarray], np.ndarray]:
    """The manifest's calibration as a function of the base P(correct) (float64 out)."""
    if isinstance(cal, Isotonic):
        x, y = np.asarray(cal.x, dtype=np.float64), np.asarray(cal.y, dtype=np.float64)
        return lambda f: np.interp(f, x, y)
    if isinstance(cal, Identity):
        return lambda f: np.asarray(f, dtype=np.float64).copy()
    a, b = cal.a, cal.b  # Platt, scikit-learn's sign convention
    return lambda f: 1.0 / (1.0 + np.exp(a * np.asarray(f, dtype=np.float64) + b))


def _index(names: Sequence[str], name: str) -> int | None:
    return list(names).index(name) if name in names else None
