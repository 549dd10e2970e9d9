"""The looper's `token_filter: tool_call_args`: a tool-calling answer's confidence reads only the
tokens of its calls' arguments.

Servers that return logprobs for tool calls (vLLM, llama.cpp's server) return them for the raw
generated text, e.g. Qwen's `<tool_call>\n{"name": "add", "arguments": {"a": 3}}\n</tool_call>`:
each call's arguments are the JSON value after an `"arguments":` key (`"parameters":` in some
chat templates), found with the json module's own decoder so nested braces and strings are
handled. As in the looper, an answer without such tokens (a text answer) is read whole.
"""

from __future__ import annotations

import json
import re

import numpy as np

from confroute.tokens import TokenArrays, select

_KEY = re.compile(r'"(?:arguments|parameters)"\s*:\s*')
_DECODER = json.JSONDecoder()


def argument_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the JSON values after every `"arguments":` key in `text`."""
    spans: list[tuple[int, int]] = []
    for m in _KEY.finditer(text):
        if spans and m.start() < spans[-1][1]:
            continue  # inside arguments already found: decoding it again is wasted (quadratic)
        try:
            _, end = _DECODER.raw_decode(text, m.end())
        except (ValueError, RecursionError):  # no JSON value after it (cut off, prose), or one
            continue  # nested deeper than Python's decoder goes: not a call's arguments
        spans.append((m.end(), end))
    return spans


def tool_call_arrays(arr: TokenArrays) -> TokenArrays:
    """The tokens overlapping the answer's tool-call arguments; `arr` itself when there are none."""
    spans = argument_spans(arr.text)
    if not spans:
        return arr
    starts, ends = arr.offsets[:-1], arr.offsets[1:]
    keep = np.zeros(starts.size, dtype=bool)
    for a, b in spans:
        keep |= (starts < b) & (ends > a)
    return select(arr, keep) if keep.any() else arr
