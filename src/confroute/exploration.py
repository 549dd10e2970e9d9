"""Route exploration: with probability ε a choice of the serving policy is replaced by one drawn
uniformly from everything it could have chosen, and the probability of what was chosen (the
propensity) goes into the decision log, so that another policy or λ can be estimated on the
logged traffic without bias (training/counterfactual.py).

Two kinds of choice: the first model of a request (any panel model), and after each answer,
accepting it or calling one of the later models. The served answer is the one the explored
route reached; a decision that exploration changed reads reason `explored`. With ε = 0 every
choice is the policy's and its propensity is 1. `allowed` bounds what exploration may pick (the
service: models whose call could cost at most CONFROUTE_EXPLORE_ROUTE_MAX_COST); the policy's
own choice is always among the candidates, and the propensity is over the candidates. The draw
and the propensity are one function each, used by the service and by the offline simulation.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace

from confroute.policy_api import Decision, Start

ACCEPT = "accept"


def mixed(chosen: str, policy: str, n_options: int, eps: float) -> float:
    """P(chosen) when the policy's choice is kept with probability 1 - ε and otherwise one of
    n_options is drawn uniformly (the policy's own among them)."""
    return (1.0 - eps) * (chosen == policy) + eps / n_options


def _candidates(opts: Sequence[str], policy: str,
                allowed: Callable[[str], bool] | None) -> list[str]:
    return [o for o in opts if o in (policy, ACCEPT) or allowed is None or allowed(o)]


def explore_first(start: Start, models: Sequence[str], eps: float, rng: random.Random,
                  allowed: Callable[[str], bool] | None = None) -> tuple[Start, float]:
    """The first model (the policy's, or with probability ε any allowed panel model) and its
    propensity."""
    cands = _candidates(models, start.model, allowed)
    if eps <= 0 or len(cands) == 1:
        return start, 1.0
    chosen = rng.choice(cands) if rng.random() < eps else start.model
    prob = mixed(chosen, start.model, len(cands), eps)
    return (start if chosen == start.model else Start(chosen, start.values, "explored")), prob


def options(model: str, models: Sequence[str]) -> list[str]:
    """What may follow an answer of `model`: accepting it, or calling a later panel model."""
    return [ACCEPT, *models[models.index(model) + 1:]] if model in models else [ACCEPT]


def explore_decision(decision: Decision, model: str, models: Sequence[str], eps: float,
                     rng: random.Random, allowed: Callable[[str], bool] | None = None
                     ) -> tuple[Decision, float]:
    """The decision on `model`'s answer (the policy's, or with probability ε one of accepting or
    calling an allowed later model) and the propensity of the choice made."""
    policy = ACCEPT if decision.decision == "accept" else decision.next_model or ACCEPT
    opts = _candidates(options(model, models), policy, allowed)
    if eps <= 0 or len(opts) == 1:
        return decision, 1.0
    chosen = rng.choice(opts) if rng.random() < eps else policy
    prob = mixed(chosen, policy, len(opts), eps)
    if chosen == policy:
        return decision, prob
    if chosen == ACCEPT:
        return Decision("accept", decision.threshold, None, "explored", decision.values), prob
    if chosen == options(model, models)[1]:
        return replace(decision, decision="escalate", next_model=chosen, reason="explored"), prob
    return replace(decision, decision="skip_ahead", next_model=chosen, reason="explored"), prob
