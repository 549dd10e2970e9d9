"""Final-answer extraction from free text, and graders that compare it with the gold answer.

Real small models write the answer many ways: "The answer is: 18", "#### 18", "\\boxed{18}",
"$1,250.00", "18 apples.", "-3", "3/4". The extractor prefers an explicit answer marker and falls
back to the last number in the text; it returns the answer's character span too, so the
confidence of the answer's own tokens can be read (features.answer_span signals).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Final, Protocol

# A number as written in prose: "1,250.00", "$18", "-3", "3/4", "\\frac{3}{4}". A minus is a sign
# only when it touches the digits and does not follow a number ("20 - 5" is a subtraction).
_DIGITS = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
_SIGN = r"(?:(?<![\w)\]])(?<![\d)\]]\s)[-−](?=\$?\d))?"
_FRAC = r"\\[dt]?frac\{\s*-?\d+\s*\}\{\s*\d+\s*\}"
_NUM = rf"{_SIGN}(?:{_FRAC}|\$?\s?{_DIGITS}(?:[ \t]?/[ \t]?{_DIGITS})?)"
_NUM_RE = re.compile(_NUM)
# "41 - 28 = 13" written right after a marker: the answer is the result after the last "=".
# The blanks are possessive (`*+`): with plain `*` a run of blanks could be split between
# neighbouring terms in many ways, and a long sum with no "=" took exponential time.
_EQUATION = re.compile(
    rf"(?:[ \t]*+(?:[-+*/×x÷−]|\\times|\\cdot|\\div)[ \t]*+\(?[ \t]*+{_NUM}[ \t]*+\)?)*"
    r"[ \t]*+=[ \t]*+"
)
_FRAC_PARTS = re.compile(r"\{\s*(-?\d+)\s*\}\{\s*(\d+)\s*\}")
_EXPONENT = re.compile(r"[eE]\s*([-+]?\d{1,12})")
# Longer numbers are not read as numbers: their exact value could need more digits than Python
# prints (4,300), and no answer is that long.
_MAX_NUMBER_CHARS = 3000
# Markers in order of trust; each captures the text right after the marker.
_MARKERS = (
    re.compile(r"\banswer\b\s*(?:is|=)?\s*[:：]?\s*\**\s*(?:\\\(|\\\[)?\s*(?:\\boxed\{)?", re.I),
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
    """Parse '1,250.00', '$18', '-3', '3/4', '\\frac{3}{4}', '18.' into a Fraction; None if not."""
    s = text.strip().rstrip(".").replace("$", "").replace(",", "").replace(" ", "")
    s = s.rstrip("%").replace("−", "-")
    if frac := _FRAC_PARTS.search(s):
        s = f"{'-' if s.startswith('-') else ''}{frac.group(1)}/{frac.group(2)}"
    if not s or len(s) > _MAX_NUMBER_CHARS or any(
            abs(int(e)) > 300 for e in _EXPONENT.findall(s)):
        return None  # Fraction("1e99999999") would build a 100-million-digit integer
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            d = Fraction(den)
            return Fraction(num) / d if d != 0 else None
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def format_number(value: Fraction) -> str:
    """Canonical text of a number: integers without decimals, others as a plain decimal."""
    if value.denominator == 1:
        return str(value.numerator)
    try:
        text = f"{float(value):.15g}"  # enough digits that "1234567.5" survives; no exponent below
    except OverflowError:  # beyond float: exact, as a fraction parse_number reads back
        return f"{value.numerator}/{value.denominator}"
    return text if "e" not in text else f"{float(value):.15f}".rstrip("0").rstrip(".")


def extract_number(text: str) -> Extraction | None:
    """The final number of a response: after the last explicit marker, else the last number."""
    for marker in _MARKERS:
        for hit in _hits_last_first(marker, text):
            m = _NUM_RE.match(text, hit.end())
            if m is None:  # allow a few words between marker and number ("is actually 18")
                m = _NUM_RE.search(text, hit.end(), hit.end() + 24)  # no copy of the text
            if m is not None and (found := _extraction(text, _follow_equation(text, m))):
                return found
    for m in reversed(list(_NUM_RE.finditer(text))):
        if found := _extraction(text, m):
            return found
    return None


def _hits_last_first(marker: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    """marker.finditer(text), last hit first. The "answer" marker is looked up with str.rfind on
    the case-folded text and matched only there (a regex scan of the whole text cost most of the
    extraction); any marker match starts with "answer" and cannot contain another one."""
    if marker is not _MARKERS[0] or len(folded := text.casefold()) != len(text):
        yield from reversed(list(marker.finditer(text)))  # folding moved characters: scan it
        return
    end = len(folded)
    while (pos := folded.rfind("answer", 0, end)) >= 0:
        if hit := marker.match(text, pos):
            yield hit
        end = pos + len("answer") - 1  # the next candidate starts before this one


def _follow_equation(text: str, m: re.Match[str]) -> re.Match[str]:
    """After a marker, "41 - 28 = 13" means 13: follow "=" signs to the last result."""
    while (eq := _EQUATION.match(text, m.end())) and (nxt := _NUM_RE.match(text, eq.end())):
        m = nxt
    return m


def _extraction(text: str, m: re.Match[str]) -> Extraction | None:
    raw = m.group()
    if raw.isascii() and raw.isdigit():  # the common case, without Fraction ("007" -> "7")
        value = raw.lstrip("0") or "0"  # what str(int(raw)) gives, at any length
    elif (number := parse_number(raw)) is not None:
        value = format_number(number)
    else:
        return None
    start, end = m.start(), m.end()
    while start < end and text[start] in " $":
        start += 1
    return Extraction(value, start, end)


def numbers_equal(a: str, b: str, rel_tol: float = 1e-6) -> bool:
    """Compare two numeric strings exactly where possible, else with a relative tolerance."""
    x, y = parse_number(a), parse_number(b)
    if x is None or y is None:
        return False
    if x == y:
        return True
    try:
        return math.isclose(float(x), float(y), rel_tol=rel_tol, abs_tol=1e-9)
    except OverflowError:  # beyond float, and not exactly equal
        return False


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
    """Free text: the line after the last 'answer:' marker (else the last line) equals the gold."""

    _marker = re.compile(r"\banswer\b\s*(?:is)?\s*[:：]\s*", re.I)

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
    """Multiple choice: a letter A-J, as '(B)', 'Answer: B', 'The answer is B.', 'Option C'.

    Only a capital letter counts, and a bare letter only on a line of its own, so the article "A"
    and the pronoun "I" in prose are never taken for a choice.
    """

    _patterns = (
        re.compile(r"\banswer\b\s*(?:is)?\s*[:：]?\s*\**\s*\(?((?-i:[A-J]))\)?(?![A-Za-z])", re.I),
        re.compile(r"\(([A-J])\)"),
        re.compile(r"\b(?:option|choice)\s+\(?((?-i:[A-J]))\b", re.I),
        re.compile(r"^[ \t*]*([A-J])[ \t]*[.):]?[ \t*]*$", re.M),
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


DEFAULT_GRADER: Final = "numeric"  # the grader of a version, trace or dataset that names none

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
