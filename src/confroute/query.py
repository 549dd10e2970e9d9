"""Cheap features of a question, known before any model is called: what the first choice reads.

The cascade policy (cascade.py) picks the first model from these, so a question that the cheap
models will fail can go straight to a model that can answer it. They are computed from the
question alone: the panel's prompt template is stripped when the text carries it, so training
(traces hold the templated prompt) and serving (users send the bare question, or the template)
see the same values.
"""

from __future__ import annotations

import math
import re

import numpy as np

QUERY_FEATURES = ("log_chars", "numbers")  # the order of the policy's start weights
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def question_of(text: str, template: str | None) -> str:
    """`text` without the template's fixed parts around `{question}` (unchanged without them)."""
    if template and "{question}" in template:
        head, _, tail = template.partition("{question}")
        if text.startswith(head) and text.endswith(tail) and len(text) >= len(head) + len(tail):
            return text[len(head): len(text) - len(tail)]
    return text


def query_features(question: str) -> np.ndarray:
    """QUERY_FEATURES of one question: log(1 + characters) and how many numbers it holds."""
    q = question.strip()
    return np.array([math.log1p(len(q)), float(len(_NUMBER.findall(q)))])
