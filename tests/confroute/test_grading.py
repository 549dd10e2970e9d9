"""Answer extraction and graders, on answers as real models write them.

fixtures/real_responses.jsonl holds real SmolLM2-135M and Qwen2.5-Coder responses from the
reference run; each `expected` was written by reading the response, not by running the extractor.
"""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from confroute import grading
from confroute.grading import (
    ChoiceGrader,
    ExactMatchGrader,
    Extraction,
    NumericGrader,
    extract_number,
    format_number,
    get_grader,
    numbers_equal,
    parse_number,
)

REAL = Path(__file__).parent / "fixtures" / "real_responses.jsonl"


def _real() -> list[dict[str, Any]]:
    return [json.loads(line) for line in REAL.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("row", _real(), ids=lambda r: f"{r['model']}-{r['item_id']}")
def test_real_responses(row: dict[str, Any]) -> None:
    ext = extract_number(row["response"])
    assert ext is not None, row["note"]
    assert ext.value == row["expected"], row["note"]
    # the span points at the answer in the text, so its tokens can be found
    assert parse_number(row["response"][ext.start : ext.end]) == parse_number(row["expected"])


def test_real_responses_cover_both_families_and_truncation() -> None:
    rows = _real()
    assert len(rows) >= 30
    assert {r["model"] for r in rows} >= {"smollm2-135m", "qwen2.5-coder-0.5b"}
    assert any(r["finish_reason"] == "length" for r in rows)


def test_real_grading_against_gold() -> None:
    """The grader's verdict follows from the expected extraction and the gold answer."""
    g = NumericGrader()
    for row in _real():
        ext = g.extract(row["response"])
        assert g.is_correct(ext.value if ext else None, row["gold"]) == (
            Fraction(row["expected"]) == Fraction(row["gold"])
        )


@pytest.mark.parametrize(
    ("text", "value", "span"),
    [
        ("The answer is: 18", "18", "18"),
        ("#### 18", "18", "18"),
        ("so the total is \\boxed{18}.", "18", "18"),
        ("She pays $1,250.00 in total.", "1250", "1,250.00"),
        ("The answer is: $1,234,567.50", "1234567.5", "1,234,567.50"),
        ("She has 18 apples.", "18", "18"),
        ("The answer is 18.", "18", "18"),
        ("The answer is 18 .", "18", "18"),
        ("The answer is -3", "-3", "-3"),
        ("The answer is −4", "-4", "−4"),
        ("The temperature fell from 20 to -5", "-5", "-5"),
        ("The answer is 3/4", "0.75", "3/4"),
        ("\\boxed{\\frac{3}{4}}", "0.75", "\\frac{3}{4}"),
        ("It costs 0.5.", "0.5", "0.5"),
        ("The answer is: 5 dollars", "5", "5"),
        ("The answer is: 18%", "18", "18"),
        ("**Answer:** 18", "18", "18"),
        ("The answer is: **18**", "18", "18"),
        ("The final answer is $\\boxed{1,250}$.", "1250", "1,250"),
        ("Therefore, the answer is \\( \\boxed{42} \\).", "42", "42"),
        ("The answer is:\n\n\\[\n\\boxed{18}\n\\]", "18", "18"),
        ("The answer is: 12,000,000", "12000000", "12,000,000"),
        ("The answer is: 2 x 3 = 6", "6", "6"),
        ("The answer is \\( 5 \\times 3 = 15 \\)", "15", "15"),
        ("The answer is: 20 / 4 = 5.", "5", "5"),
        ("the answer is 1/3", "0.333333333333333", "1/3"),
        ("The answer is $-5", "-5", "-5"),
    ],
)
def test_written_forms(text: str, value: str, span: str) -> None:
    ext = extract_number(text)
    assert ext is not None
    assert (ext.value, text[ext.start : ext.end]) == (value, span)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        # the marker's number wins over later numbers in the explanation
        ("The answer is: 18. She started with 20 apples and gave 2 away.", "18"),
        ("#### 7\nCheck: 3 + 4 = 7, and 10 - 3 = 7 too, so 12 is wrong.", "7"),
        # a subtraction is not a negative number
        ("x = 20 - 5", "5"),
        ("she has 5-3=2", "2"),
        ("Then 64 - 12", "12"),
        # "answered" is not a marker
        ("She answered 5 questions, so in total 8.", "8"),
        # a marker without a number falls back to the last number
        ("The answer is the number of apples left. 10 - 4 = 6", "6"),
        ("Answer: N\n\nSo she has 7 left.", "7"),
        # code identifiers are not markers
        ("final_answer = 12\nprint(final_answer)\n```output\n13\n```\nSo 13.", "13"),
    ],
)
def test_marker_and_number_rules(text: str, value: str) -> None:
    ext = extract_number(text)
    assert ext is not None and ext.value == value


@pytest.mark.parametrize("text", ["", "No idea.", "The answer is: N", "$", "- / ="])
def test_no_number_gives_none(text: str) -> None:
    assert extract_number(text) is None
    assert NumericGrader().extract(text) is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1,250.00", Fraction(1250)),
        ("$18", Fraction(18)),
        ("-3", Fraction(-3)),
        ("3/4", Fraction(3, 4)),
        ("18.", Fraction(18)),
        ("12.5%", Fraction(25, 2)),
        ("\\frac{1}{8}", Fraction(1, 8)),
        ("1/0", None),
        ("abc", None),
        ("", None),
    ],
)
def test_parse_number(text: str, value: Fraction | None) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Fraction(18), "18"),
        (Fraction(-7), "-7"),
        (Fraction(1, 4), "0.25"),
        (Fraction(2469135, 2), "1234567.5"),  # no exponent, no lost digits
        (Fraction(1, 10**7), "0.0000001"),
        (Fraction(10**20), "100000000000000000000"),
    ],
)
def test_format_number(value: Fraction, text: str) -> None:
    assert format_number(value) == text
    assert parse_number(text) == value


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("18", "18.0", True),
        ("0.75", "3/4", True),
        ("1,234", "1234", True),
        ("0.333333333333333", "1/3", True),
        ("18", "19", False),
        ("18", "-18", False),
        ("0.1", "0.1001", False),
        ("x", "18", False),
    ],
)
def test_numbers_equal(a: str, b: str, equal: bool) -> None:
    assert numbers_equal(a, b) is equal


def test_numeric_grader_is_correct() -> None:
    g = get_grader("numeric")
    assert g.is_correct("1250", "1,250")
    assert g.is_correct("5", "5.0")
    assert not g.is_correct(None, "5")
    assert not g.is_correct("6", "5")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Let me think.\nThe answer is: Paris.", "paris"),
        ("Answer:\nNew   York", "new york"),
        ("Some reasoning.\n\n\"Blue\"\n", "blue"),
        ("The answer is: Mount Everest\nIt is the tallest.", "mount everest"),
        ("The answer is:", None),
        ("", None),
    ],
)
def test_exact_match_extract(text: str, value: str | None) -> None:
    ext = ExactMatchGrader().extract(text)
    assert (ext.value if ext else None) == value


def test_exact_match_is_correct() -> None:
    g = get_grader("exact")
    assert g.is_correct("paris", "Paris.")
    assert g.is_correct("new  york", "New York")
    assert not g.is_correct("paris", "London")
    assert not g.is_correct(None, "Paris")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("The answer is B.", "B"),
        ("Answer: (C)", "C"),
        ("**Answer:** C", "C"),
        ("I think A is wrong, so the answer is D", "D"),
        ("The answer is a bit tricky, but (B) fits.", "B"),  # lower-case "a" is a word
        ("I pick option C, I think.", "C"),  # the pronoun "I" is not choice I
        ("A farmer has 3 cows. Looking at the options I would say\nB", "B"),
        ("A farmer has 3 cows, so I would pick the second.", None),
        ("Nothing here", None),
    ],
)
def test_choice_extract(text: str, value: str | None) -> None:
    ext = ChoiceGrader().extract(text)
    assert (ext.value if ext else None) == value
    if ext is not None:
        assert text[ext.start : ext.end] == value


def test_choice_is_correct() -> None:
    g = get_grader("choice")
    assert g.is_correct("B", "(b)")
    assert not g.is_correct("B", "C")
    assert not g.is_correct(None, "C")


def test_unknown_grader() -> None:
    with pytest.raises(ValueError, match=r"unknown grader 'fuzzy'.*choice.*exact.*numeric"):
        get_grader("fuzzy")


@pytest.mark.parametrize(
    "text",
    ["The ANSWER is 5. answer: 7", "answeranswer is 3", "Answer=answer is 4",
     "xanswer is 3 answer 9", "ſome anſwer is 4", "İstanbul: the answer is 3", "ß answer: 8, answer 9",
     "no marker, 41 - 28 = 13", ""],
)
def test_answer_marker_lookup_matches_a_full_regex_scan(text: str) -> None:
    # The marker is found with str.rfind on the case-folded text: same hits as scanning with
    # the regex, last first, including case variants, overlaps and folds that move characters.
    marker = grading._MARKERS[0]
    fast = [m.span() for m in grading._hits_last_first(marker, text)]
    assert fast == [m.span() for m in reversed(list(marker.finditer(text)))]


def test_numbers_beyond_int_and_float_limits_neither_crash_nor_hang() -> None:
    """Answers a model or a client may send: 5,000 digits (past int()'s 4,300-digit limit),
    decimals past float, huge exponents (Fraction would build the integer)."""
    g = NumericGrader()
    huge = "9" * 5000
    assert g.extract(f"The answer is: 00{huge}") == Extraction(huge, 15, 15 + 5002)
    beyond_float = "9" * 400 + ".5"
    got = g.extract(f"The answer is: {beyond_float}")
    assert got is not None and parse_number(got.value) == parse_number(beyond_float)
    assert format_number(Fraction(10**400 + 1, 2)) == f"{10**400 + 1}/2"
    assert parse_number("1e99999999") is None and parse_number("1E-400") is None
    assert parse_number("1e300") == 10**300
    assert not numbers_equal("7", "1e300") and not numbers_equal("7", "9" * 400)
    assert numbers_equal("9" * 400, "9" * 400)
    assert not g.is_correct("7", "1e999") and g.is_correct("1000", "1e3")
    # found by fuzzing the service: a later huge exponent, a decimal whose exact fraction needs
    # more digits than Python prints (was a ValueError: a 500 on /v1/route)
    assert parse_number("1e1/1e9999999") is None and parse_number("1e1/1e2") == Fraction(1, 10)
    long_decimal = "1" * 4299 + "." + "1" * 4299
    assert parse_number(long_decimal) is None and g.extract(f"answer: {long_decimal}") is None


def test_a_long_sum_without_a_result_is_read_in_linear_time() -> None:
    """A sum after the marker with no "=": the equation regex once split each run of blanks
    between neighbouring terms every possible way (9 terms took 10 s, 25 would take years)."""
    # in a child process with a timeout: a regex holds the GIL, so a hang cannot be timed out
    # from a thread. The bound is far above what it takes: a guard, not a speed test.
    code = ("import json, sys; from confroute.grading import extract_number as x; "
            "print(json.dumps([[e.value, e.start, e.end] for e in map(x, json.load(sys.stdin))]))")
    texts = ["The answer is " + f"{b}+{b}".join(["1"] * 25) + " x" for b in (" ", "   ", " \t ")]
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), text=True,
                         capture_output=True, timeout=120, check=True).stdout
    assert json.loads(out) == [["1", 14, 15]] * 3
