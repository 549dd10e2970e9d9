"""Compiled kernels of the hot path (numba), imported on first use.

`signals_kernel` computes every signal of confroute.features in one pass over the tokens, for the
common case of complete top-k (k >= 2, no NaN). It is parity-tested against
`features.reference_signals`, which defines each signal; see that module for their meaning.
Compiled once per machine and cached beside this file (numba's `cache=True`).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def signals_kernel(lp: np.ndarray, top: np.ndarray, probs: np.ndarray, a0: int, a1: int,
                   window: int, tail: int, bottom_frac: float, length: float, truncated: float,
                   found: float, agree_prev: float) -> np.ndarray:
    """The 17 signals in FEATURE_NAMES order; lp (n,), top (n, k) sorted descending, k >= 2,
    probs = np.exp(top).

    `probs` comes from numpy, whose exp is vectorised (SIMD): a scalar exp per alternative here is
    a libm call that LLVM cannot vectorise (pip's llvmlite has no SVML), and was half the kernel's
    time. The entropy's exp(top_j - top_0) is then probs_j / probs_0 (within 2 ulp), except for a
    peak below -300, where probs_0 would lose precision and exp is called here.

    Returns an empty array when `top` holds a NaN: the caller then uses the reference definitions.
    """
    n, k = top.shape
    conf = np.empty(n)
    s_lp = s_conf = s_margin = s_h = 0.0
    min_lp, max_h = np.inf, -np.inf
    for i in range(n):
        peak = top[i, 0]
        ratio = peak > -300.0
        inv = 1.0 / probs[i, 0] if ratio else 0.0
        c, total, ed = peak, 1.0, 0.0  # the top token's own terms: exp(0) = 1, 0 * 1 = 0
        for j in range(1, k):
            c += top[i, j]
            d = top[i, j] - peak
            e = probs[i, j] * inv if ratio else np.exp(d)
            total += e
            ed += e * d
        if np.isnan(c):
            return np.empty(0)
        conf[i] = -c / k
        h = np.log(total) - ed / total
        s_lp += lp[i]
        s_conf += conf[i]
        s_margin += top[i, 0] - top[i, 1]
        s_h += h
        min_lp = min(min_lp, lp[i])
        max_h = max(max_h, h)
    w = min(window, n)
    groups = np.empty(n - w + 1)
    run = 0.0
    for i in range(w):
        run += conf[i]
    groups[0] = run / w
    for i in range(w, n):
        run += conf[i] - conf[i - w]
        groups[i - w + 1] = run / w
    n_low = max(1, int(np.ceil(bottom_frac * groups.size)))
    low = np.partition(groups, n_low - 1)[:n_low]  # the n_low smallest, in no particular order
    out = np.empty(17)
    out[0], out[1], out[2], out[3], out[4] = 1.0, s_lp / n, min_lp, s_conf / n, s_margin / n
    out[5], out[6] = low.mean(), low.min()
    out[7] = conf[max(0, n - tail):].mean() if tail > 0 else conf.mean()
    if a1 > a0:
        out[8], out[9], out[10] = lp[a0:a1].mean(), lp[a0:a1].min(), conf[a0:a1].mean()
    else:
        out[8] = out[9] = out[10] = np.nan
    out[11], out[12], out[13] = s_h / n, max_h, length
    out[14], out[15], out[16] = truncated, found, agree_prev
    return out
