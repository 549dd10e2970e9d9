"""Simulated panels: the development workload of the cascade policy (bench/panel_zoo.py).

A panel is 3-6 models, cheapest first, answering the same questions. Everything is drawn from one
seeded generator, per panel, before any router sees it; the ranges were set from what real panels
and the literature show, never by looking at how the router scores on them:

- models: 3-6 (uniform). Real panels we know of hold 3-6 sizes of one family (Qwen2.5 0.5B-32B is
  6; the kept-back panels of issue 35 hold 4 and 5).
- price ratio, cheapest to dearest: log-uniform on [2, 200] (the issue's 2x-200x; real per-token
  list prices across 1B-405B span ~100x). Models in between are log-uniform in that span, sorted.
  Each answer's cost is its price times a length drawn log-normal (sigma 0.3, the spread of answer
  lengths in the reference traces), longer on harder questions.
- accuracy: the strongest model's marginal accuracy is uniform on [0.35, 0.95]; the cheapest's
  is below it by a gap that is, with probability 1/4, uniform on [0, 0.05] (a cheap model nearly as
  good as the dear ones, as on MAWPS-like tasks) and otherwise uniform on [0.05, 0.5] (as on GSM8K
  with 0.5B-32B models). Models in between are spaced on that line with jitter (sd 0.02); with
  probability 1/4 the dearest model is not the best: it swaps places with the second dearest (seen
  in life, e.g. a coder model on word problems, and on 300 questions by chance).
- correctness: model j is right on question i when `skill_j - load_j * d_i + noise_ij > 0`, with
  one shared difficulty d_i ~ N(0, 1), loads uniform on [0.5, 1.5] and noise sd uniform on
  [0.3, 1.2]: errors are correlated through the question (a question hard for one model is hard
  for the others) by amounts that differ from panel to panel. skill_j is set so the marginal
  accuracy is the drawn one.
- confidence per model, its quality drawn per model: with probability 0.1 useless and constant,
  0.1 only 0/1 (a binary self-check), 0.8 graded: `sharp_j * latent_ij + N(0, 1)` with sharpness
  uniform on [0, 2] (0: no signal; 2: AUROC ~0.9). Graded values are mapped to a log-probability-
  like scale with a per-model offset and spread, so raw scales differ between models, and 2% of
  them are -inf (a backend's empty logprob), as real traces show.

`draw_panel(seed, n_items)` returns one `ZooPanel` whose first `n_train` items a router may
label; the rest are the unseen questions. Deterministic in (seed, n_items).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

PRICE_RATIO = (2.0, 200.0)
STRONG_ACCURACY = (0.35, 0.95)
NEAR_GAP, WIDE_GAP, P_NEAR = (0.0, 0.05), (0.05, 0.5), 0.25
P_DEAREST_NOT_BEST = 0.25
LOAD, NOISE = (0.5, 1.5), (0.3, 1.2)
P_CONSTANT, P_BINARY = 0.1, 0.1
SHARPNESS = (0.0, 2.0)
P_NEG_INF = 0.02
LENGTH_SD = 0.3


@dataclass(frozen=True)
class ZooPanel:
    """One simulated panel: (n_items, M) arrays in panel order (cheapest first)."""

    seed: int
    models: list[str]
    correct: np.ndarray  # bool
    cost: np.ndarray  # absolute cost of each answer
    confidence: np.ndarray  # raw confidence signal (may be -inf; constant or 0/1 for some models)
    kinds: list[str]  # per model: constant | binary | graded(sharpness)
    price: np.ndarray  # (M,) price per unit length
    target_accuracy: np.ndarray  # (M,) the drawn marginal accuracies

    def split(self, n_train: int) -> tuple[ZooPanel, ZooPanel]:
        """The first n_train items (the labeled ones) and the rest (the unseen ones)."""
        return self._rows(slice(0, n_train)), self._rows(slice(n_train, None))

    def _rows(self, s: slice) -> ZooPanel:
        return ZooPanel(self.seed, self.models, self.correct[s], self.cost[s],
                        self.confidence[s], self.kinds, self.price, self.target_accuracy)


def _accuracies(rng: np.random.Generator, m: int) -> np.ndarray:
    strong = rng.uniform(*STRONG_ACCURACY)
    gap = rng.uniform(*(NEAR_GAP if rng.random() < P_NEAR else WIDE_GAP))
    weak = max(strong - gap, 0.03)
    acc = np.linspace(weak, strong, m) + np.r_[0.0, rng.normal(0, 0.02, m - 2), 0.0]
    acc = np.clip(acc, 0.02, 0.98)
    if rng.random() < P_DEAREST_NOT_BEST:
        acc[-1], acc[-2] = acc[-2], acc[-1]
    return acc


def draw_panel(seed: int, n_items: int) -> ZooPanel:
    """One panel and its n_items questions (module docstring: where each range comes from)."""
    rng = np.random.default_rng(seed)
    m = int(rng.integers(3, 7))
    ratio = float(np.exp(rng.uniform(*np.log(PRICE_RATIO))))
    price = np.sort(np.r_[1.0, np.exp(rng.uniform(0, np.log(ratio), m - 2)), ratio])
    acc = _accuracies(rng, m)
    load, noise = rng.uniform(*LOAD, m), rng.uniform(*NOISE, m)
    scale = np.sqrt(load**2 + noise**2)  # sd of -load * d + noise
    skill = norm.ppf(acc) * scale
    d = rng.normal(0, 1, n_items)
    latent = skill[None, :] - load[None, :] * d[:, None] + rng.normal(0, 1, (n_items, m)) * noise
    correct = latent > 0
    length = np.exp(rng.normal(0, LENGTH_SD, (n_items, m)) + 0.15 * d[:, None])
    cost = price[None, :] * length
    conf = np.empty((n_items, m))
    kinds = []
    for j in range(m):
        u = rng.random()
        z = latent[:, j] / scale[j]
        if u < P_CONSTANT:
            conf[:, j], kind = -0.5, "constant"
        elif u < P_CONSTANT + P_BINARY:
            conf[:, j], kind = (z + rng.normal(0, 1, n_items) > 0).astype(float), "binary"
        else:
            sharp = rng.uniform(*SHARPNESS)
            raw = sharp * z + rng.normal(0, 1, n_items)
            offset, spread = rng.uniform(-3, -0.2), rng.uniform(0.2, 1.5)
            conf[:, j] = offset + spread * raw / np.sqrt(1 + sharp**2)
            conf[rng.random(n_items) < P_NEG_INF, j] = -np.inf
            kind = f"graded({sharp:.2f})"
        kinds.append(kind)
    models = [f"m{j}" for j in range(m)]
    return ZooPanel(seed, models, correct, cost, conf, kinds, price, acc)
