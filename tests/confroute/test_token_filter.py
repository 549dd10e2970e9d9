"""token_filter tool_call_args: which tokens a tool-calling answer's confidence reads."""

from __future__ import annotations

import numpy as np

from confroute.token_filter import argument_spans, tool_call_arrays
from confroute.tokens import token_arrays
from confroute.traces import Token, TopLogprob


def _tokens(pieces: list[tuple[str, float]]) -> list[Token]:
    return [Token(p, lp, [TopLogprob(p, lp), TopLogprob("x", lp - 1)]) for p, lp in pieces]


def test_argument_spans_follow_nested_json() -> None:
    text = ('<tool_call>{"name": "f", "arguments": {"a": {"b": [1, "}"]}, "c": "x"}}</tool_call>'
            '<tool_call>{"name": "g", "parameters": {"q": 2}}</tool_call> "arguments": oops')
    spans = argument_spans(text)
    assert [text[a:b] for a, b in spans] == ['{"a": {"b": [1, "}"]}, "c": "x"}', '{"q": 2}']


def test_only_the_arguments_tokens_are_kept() -> None:
    arr = token_arrays(_tokens([("<tool_call>", -4.0), ('{"name": "add", ', -4.0),
                                ('"arguments": ', -4.0), ('{"a": 3', -0.01), (', "b": 4}', -0.02),
                                ("}", -4.0), ("</tool_call>", -4.0)]))
    kept = tool_call_arrays(arr)
    assert kept.text == '{"a": 3, "b": 4}'
    np.testing.assert_array_equal(kept.logprob, [-0.01, -0.02])
    np.testing.assert_array_equal(kept.top, [[-0.01, -1.01], [-0.02, -1.02]])
    np.testing.assert_array_equal(kept.offsets, [0, 7, 16])


def test_a_text_answer_is_read_whole() -> None:
    arr = token_arrays(_tokens([("The", -0.1), (" answer is: 7", -0.2)]))
    assert tool_call_arrays(arr) is arr


def test_nested_keys_inside_found_arguments_are_skipped() -> None:
    inner = '{"arguments": {"arguments": {"x": 1}}}'
    text = f'{{"name": "f", "arguments": {inner}}}'
    assert [text[a:b] for a, b in argument_spans(text)] == [inner]
    assert argument_spans('"arguments": ' + "[" * 5000) == []  # deeper than json decodes
