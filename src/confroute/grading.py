"""Final-answer extraction from free text, and graders that compare it with the gold answer.

Real small models write the answer many ways: "The answer is: 18", "#### 18", "\\boxed{18}",
"$1,250.00", "18 apples.", "-3", "3/4". The extractor prefers an explicit answer marker and falls
back to the last number in the text; it returns the answer's character span too, so the
confidence of the answer's own tokens can be read (features.answer_span signals).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

_NUM = r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?/\s?\d+(?:\.\d+)?)?"
_NUM_RE = re.compile(_NUM)
# Markers in order of trust; each captures the text right after the marker.
_MARKERS = (
    re.compile(r"answer\s*(?:is|=)?\s*[:：]?\s*\**\s*(?:\\\()?\s*(?:\\boxed\{)?", re.I),
    re.compile(r"####\s*"),
    re.compile(r"\\boxed\{\s*"),
)


@dataclass(frozen=True)
class Extraction:
    """An extracted answer: its normalised value and where it stands in the text."""

    value: str
    start: int
    end: int


def parse_number(text: str) -> Fraction | None:
    """Parse '1,250.00', '$18', '-3', '3/4', '18.' into an exact Fraction; None if not a number."""
    s = text.strip().rstrip(".").replace("$", "").replace(",", "").replace(" ", "")
    s = s.rstrip("%")
    if not s:
        return None
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            d = Fraction(den)
            return Fraction(num) / d if d != 0 else None
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def format_number(value: Fraction) -> str:
    """Canonical text of a number: integers without decimals, others as a short decimal."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


def extract_number(text: str) -> Extraction | None:
    """The final numeric answer of a response, preferring an explicit marker over the last number."""
    for marker in _MARKERS:
        hits = list(marker.finditer(text))
        for hit in reversed(hits):
            m = _NUM_RE.match(text, hit.end())
            if m is None:  # allow a few words between marker and number ("is $18")
                m = _NUM_RE.search(text[: hit.end() + 24], hit.end())
            if m is not None and (value := parse_number(m.group())) is not None:
                return Extraction(format_number(value), *_trim_span(text, m.start(), m.end()))
    for m in reversed(list(_NUM_RE.finditer(text))):
        if (value := parse_number(m.group())) is not None:
            return Extraction(format_number(value), *_trim_span(text, m.start(), m.end()))
    return None


def _trim_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start] in " $":
        start += 1
    return start, end


def numbers_equal(a: str, b: str, rel_tol: float = 1e-6) -> bool:
    """Compare two numeric strings exactly where possible, else with a relative tolerance."""
    x, y = parse_number(a), parse_number(b)
    if x is None or y is None:
        return False
    return x == y or math.isclose(float(x), float(y), rel_tol=rel_tol, abs_tol=1e-9)


class Grader(Protocol):
    """Extracts a prediction from a response and judges it against the gold answer."""

    def extract(self, response: str) -> Extraction | None: ...

    def is_correct(self, prediction: str | None, gold: str) -> bool: ...


class NumericGrader:
    """Math word problems: the final number must equal the gold number."""

    def extract(self, response: str) -> Extraction | None:
        return extract_number(response)

    def is_correct(self, prediction: str | None, gold: str) -> bool:
        return prediction is not None and numbers_equal(prediction, gold)


class ExactMatchGrader:
    """Free text: the last non-empty line (after an 'answer:' marker if any) equals the gold text."""

    _marker = re.compile(r"answer\s*(?:is)?\s*[:：]\s*", re.I)

    def extract(self, response: str) -> Extraction | None:
        hits = list(self._marker.finditer(response))
        start = hits[-1].end() if hits else response.rstrip().rfind("\n") + 1
        end = response.find("\n", start)
        end = len(response.rstrip()) if end < 0 else end
        value = _normalise_text(response[start:end])
        return Extraction(value, start, end) if value else None

    def is_correct(self, prediction: str | None, gold: str) -> bool:
        return prediction is not None and _normalise_text(prediction) == _normalise_text(gold)


def _normalise_text(s: str) -> str:
    return " ".join(s.strip().strip(".").strip('"').lower().split())


class ChoiceGrader:
    """Multiple choice: a letter A-J, as '(B)', 'Answer: B', 'The answer is B.'."""

    _patterns = (
        re.compile(r"answer\s*(?:is)?\s*[:：]?\s*\(?([A-J])\)?(?![A-Za-z])", re.I),
        re.compile(r"\(([A-J])\)"),
        re.compile(r"(?<![A-Za-z])([A-J])(?![A-Za-z])"),
    )

    def extract(self, response: str) -> Extraction | None:
        for pat in self._patterns:
            hits = list(pat.finditer(response))
            if hits:
                m = hits[-1]
                return Extraction(m.group(1).upper(), m.start(1), m.end(1))
        return None

    def is_correct(self, prediction: str | None, gold: str) -> bool:
        return prediction is not None and prediction.upper() == gold.strip().strip("()").upper()


GRADERS: dict[str, type[NumericGrader] | type[ExactMatchGrader] | type[ChoiceGrader]] = {
    "numeric": NumericGrader,
    "exact": ExactMatchGrader,
    "choice": ChoiceGrader,
}


def get_grader(name: str) -> Grader:
    """A grader by name: numeric, exact or choice."""
    try:
        return GRADERS[name]()
    except KeyError:
        raise ValueError(f"unknown grader {name!r}; choose one of {sorted(GRADERS)}") from None
