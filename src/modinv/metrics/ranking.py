"""AUROC: how well a score ranks the positive class above the negative one, with its interval."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from scipy import stats
from torch import Tensor

from modinv.metrics.intervals import as_float_array

AUROC_DEFINITION = ("P(score of a positive > score of a negative) + 0.5 P(tie) = Mann-Whitney U / "
                    "(n_pos n_neg) from mid-ranks; 95% CI: Hanley & McNeil (1982)")


def auroc(scores: Iterable[float] | Tensor | np.ndarray, labels: Iterable | Tensor | np.ndarray) -> float:
    """P(a positive scores higher than a negative) + 0.5·P(tie): the Mann-Whitney U / (n_pos·n_neg)
    from the mid-ranks of all scores. ``labels`` are truthy for the positive class. Items whose score
    is NaN or infinite are dropped; NaN when either class is then empty (strict JSON writes null)."""
    x, y = as_float_array(scores), as_float_array(labels)
    if x.shape != y.shape:
        raise ValueError(f"auroc: {x.size} scores but {y.size} labels")
    keep = np.isfinite(x)
    pos, neg = x[keep & (y != 0)], x[keep & (y == 0)]
    if pos.size == 0 or neg.size == 0:
        return math.nan
    ranks = stats.rankdata(np.concatenate([pos, neg]))  # mid-ranks: ties share their average rank
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def auroc_ci(a: float | None, n_pos: int, n_neg: int, confidence: float = 0.95) -> list[float] | None:
    """Hanley & McNeil's (1982) normal-approximation interval of an AUROC ``a``, clipped to [0, 1];
    None when ``a`` is missing or NaN or a class is empty."""
    if a is None or not math.isfinite(a) or n_pos == 0 or n_neg == 0:
        return None
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    half = float(stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(max(var, 0.0)))
    return [max(0.0, a - half), min(1.0, a + half)]
