"""The policy kinds by name: what a manifest's `policy` table (or a looper config) becomes.

A stored table names its kind (`kind`); tables written before kinds were named are format 1
(route and thresholds). A table of an unknown kind or format is refused, naming the known ones,
instead of being read as another kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from confroute.cascade import CascadePolicy
from confroute.formula import FormulaPolicy
from confroute.policy import ThresholdPolicy
from confroute.policy_api import FittedPolicy

KINDS: dict[str, Callable[[Mapping[str, Any]], Any]] = {  # each returns that kind's Policy
    ThresholdPolicy.kind: ThresholdPolicy.from_dict,
    CascadePolicy.kind: CascadePolicy.from_dict,
    FormulaPolicy.kind: FormulaPolicy.from_dict,
}
_UNNAMED = {1: ThresholdPolicy.kind}  # format -> kind, for tables that do not name theirs


def kind_of(d: Mapping[str, Any]) -> str:
    """The kind a stored table names, or ValueError saying which kinds there are."""
    kind = d.get("kind") if "kind" in d else _UNNAMED.get(d.get("format"))  # type: ignore[arg-type]
    if kind not in KINDS:
        raise ValueError(f"policy kind {d.get('kind')!r} (format {d.get('format')!r}) is not one "
                         f"this runtime serves: {sorted(KINDS)}")
    return str(kind)


def load_policy(d: Mapping[str, Any]) -> FittedPolicy:
    """A version's stored table as the FittedPolicy of its kind (ValueError when it is not one).
    `formula` is registered for its JSON form but never served from a version: the engine
    builds it from the looper's config."""
    if not isinstance(d, Mapping):
        raise ValueError(f"a policy table is a JSON object, got {type(d).__name__}")
    policy = KINDS[kind_of(d)](d)
    if not isinstance(policy, FittedPolicy):
        raise ValueError(f"a version serves a policy fitted to a λ grid; kind {policy.kind!r} is "
                         "built from a router config (--router-config), not stored")
    return policy
