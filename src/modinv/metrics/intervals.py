"""Means with 95% confidence intervals, and the one way they are printed."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
from scipy import stats
from torch import Tensor

from modinv.metrics.bounded import as_float_array, summarize_in_range

CI_METHOD = "95% Student-t confidence interval of the mean over images"


def summarize(
    values: Iterable[float] | Tensor | np.ndarray,
    confidence: float = 0.95,
    low: float = -math.inf,
    high: float = math.inf,
) -> dict:
    """``{"mse": mean, "ci95": [lo, hi], "n": n, "std": sd}``: the mean of ``values`` and its interval.

    Without bounds: a Student-t interval (for differences of errors, which can be negative). With one
    value the interval is degenerate ([mean, mean]); with none, mean is NaN.
    With a finite ``low`` or ``high`` (the quantity's range, e.g. ``low=0, high=1`` for per-image
    MSEs of [0, 1] images) the interval stays inside the range:
    :func:`modinv.metrics.bounded.summarize_in_range`'s bootstrap, whose keys (``"mean"``,
    ``"ci_method"``, ``"range"``, ``"n_infinite"``) are added to the ones above.
    (The key is ``mse`` because most summaries are of per-image MSEs; it is the mean of ``values``.)
    """
    if math.isfinite(low) or math.isfinite(high):
        bounded = summarize_in_range(values, low, high, confidence)
        return {"mse": bounded["mean"], **bounded}
    x = as_float_array(values)
    n = int(x.size)
    if n == 0:
        return {"mse": math.nan, "ci95": [math.nan, math.nan], "n": 0, "std": math.nan}
    mean = float(x.mean())
    if n == 1:
        return {"mse": mean, "ci95": [mean, mean], "n": 1, "std": 0.0}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))
    return {"mse": mean, "ci95": [mean - half, mean + half], "n": n, "std": sd}


def mean_summary(values: Iterable[float] | Tensor | np.ndarray, confidence: float = 0.95) -> dict:
    """:func:`summarize` of a quantity that is not an MSE: ``{"mean", "ci95", "n", "std"}``."""
    summary = summarize(values, confidence)
    return {"mean": summary.pop("mse"), **summary}


def _number(value: float | None, digits: int, signed: bool) -> str:
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):{'+' if signed else ''}.{digits}f}"


def format_ci(
    summary_or_mean: Mapping | float | None,
    lo: float | None = None,
    hi: float | None = None,
    digits: int = 4,
    signed: bool = False,
) -> str:
    """``"0.0123 (95% CI [0.0101, 0.0145])"``: the one printed form of a mean and its interval.

    Pass either a summary (a mapping with ``"ci95"`` and ``"mse"`` or ``"mean"``, as
    :func:`summarize` returns) or the mean with ``lo`` and ``hi``. ``signed`` prints a sign on every
    number (for differences); missing or non-finite numbers print as ``n/a``.
    """
    if isinstance(summary_or_mean, Mapping):
        s = summary_or_mean
        mean = s["mse"] if "mse" in s else s.get("mean")
        lo, hi = (s.get("ci95") or (None, None)) if lo is None and hi is None else (lo, hi)
    else:
        mean = summary_or_mean
    lo_s, hi_s = (_number(v, digits, signed) for v in (lo, hi))
    return f"{_number(mean, digits, signed)} (95% CI [{lo_s}, {hi_s}])"


__all__ = ["CI_METHOD", "as_float_array", "format_ci", "mean_summary", "summarize"]
