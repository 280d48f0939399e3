"""Means with 95% confidence intervals that stay inside the metric's range.

A Student-t interval ``mean ± t·sd/√n`` is symmetric, so for a skewed, bounded quantity (per-image
MSE piles up near 0) it can leave the range: the demo once printed an MSE interval of
[-0.0763, 0.2051]. For a metric with a finite bound this module uses a **BCa bootstrap** of the
mean (bias-corrected and accelerated, Efron 1987; ``scipy.stats.bootstrap``, 9,999 resamples,
fixed seed so that the same values always give the same interval). A bootstrap interval is made of
means of resamples of the data, so it lies inside the data's own [min, max] and therefore inside
the metric's range; BCa corrects the plain percentile interval's bias and skewness. Quantities
unbounded on both sides (differences of errors) keep the Student-t interval. Every summary says
which method it used (``ci_method``) and the range it respected (``range``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import numpy as np
from scipy import stats
from torch import Tensor

BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
_SLACK = 1e-5  # float32 rounding tolerated at a bound
_MAX_BATCH_ELEMENTS = 4_000_000  # bootstrap resamples are drawn in batches of at most this many values

CI_METHODS = {
    "bca_bootstrap": f"BCa bootstrap of the mean ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}); "
                     "lies inside the metric's range",
    "percentile_bootstrap": f"percentile bootstrap of the mean ({BOOTSTRAP_RESAMPLES} resamples, seed "
                            f"{BOOTSTRAP_SEED}; used where BCa is undefined); lies inside the metric's range",
    "student_t": "Student-t interval of the mean (the quantity is unbounded on both sides)",
    "degenerate": "no spread to estimate (one value, or all values equal): the interval is [mean, mean]",
    "undefined": "no interval (no values, or a value is infinite: the mean is infinite)",
}


def as_float_array(values: Iterable[float] | Tensor | np.ndarray) -> np.ndarray:
    """``values`` as a flat float64 numpy array (tensors detached and moved to the CPU)."""
    if isinstance(values, Tensor):
        return values.detach().cpu().double().numpy().ravel()
    if not isinstance(values, np.ndarray):
        values = list(values)
    return np.asarray(values, dtype=np.float64).ravel()


def _student_t(x: np.ndarray, confidence: float) -> list[float]:
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * sd / math.sqrt(x.size))
    return [mean - half, mean + half]


def _bootstrap(x: np.ndarray, confidence: float, method: str) -> list[float]:
    batch = max(1, _MAX_BATCH_ELEMENTS // x.size)
    with warnings.catch_warnings():  # a degenerate BCa interval comes back as NaN, handled below
        warnings.simplefilter("ignore")
        res = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
                              method=method, vectorized=True, batch=batch,
                              rng=np.random.default_rng(BOOTSTRAP_SEED))
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def summarize_in_range(values: Iterable[float] | Tensor | np.ndarray, low: float = -math.inf,
                       high: float = math.inf, confidence: float = 0.95) -> dict:
    """``{"mean", "ci95": [lo, hi], "n", "std", "ci_method", "range": [low, high], "n_infinite"}``.

    ``low``/``high``: the metric's range (e.g. 0 and 1 for MSE of [0, 1] images, -1 and 1 for
    SSIM); the interval never leaves it. With a finite bound the interval is a BCa bootstrap
    (percentile bootstrap where BCa is undefined), without one a Student-t interval (see the module
    docstring). NaN values are ignored; a value more than 1e-5 outside the range raises ValueError
    (a bug upstream; float32 rounding within 1e-5 is clipped).
    An infinite value (PSNR of a perfect reconstruction) makes the mean infinite and the interval
    undefined (NaN; strict JSON writes both as null) and is counted in ``n_infinite``.
    """
    x = as_float_array(values)
    x = x[~np.isnan(x)]
    if low > high:
        raise ValueError(f"empty range [{low}, {high}]")
    if x.size and (x.min() < low - _SLACK or x.max() > high + _SLACK):
        raise ValueError(f"values in [{x.min()}, {x.max()}] leave the metric's range [{low}, {high}]")
    x = np.clip(x, low, high)  # float32 rounding (an SSIM of 1.0000001) stays inside the range
    finite = np.isfinite(x)
    out = {"mean": math.nan, "ci95": [math.nan, math.nan], "n": int(x.size), "std": math.nan,
           "ci_method": "undefined", "range": [low, high], "n_infinite": int((~finite).sum())}
    if x.size == 0:
        return out
    if not finite.all():
        return out | {"mean": float(x.mean())}  # ±inf: a mean (and any interval) is infinite
    mean = float(x.mean())
    out |= {"mean": mean, "std": float(x.std(ddof=1)) if x.size > 1 else 0.0}
    if x.size == 1 or x.min() == x.max():
        return out | {"ci95": [mean, mean], "ci_method": "degenerate"}
    if math.isinf(low) and math.isinf(high):
        return out | {"ci95": _student_t(x, confidence), "ci_method": "student_t"}
    ci, method = _bootstrap(x, confidence, "BCa"), "bca_bootstrap"
    if not all(math.isfinite(v) for v in ci):
        ci, method = _bootstrap(x, confidence, "percentile"), "percentile_bootstrap"
    lo, hi = (min(max(v, low), high) for v in ci)  # a no-op guard: resampled means lie in the data's hull
    return out | {"ci95": [min(lo, mean), max(hi, mean)], "ci_method": method}


__all__ = ["BOOTSTRAP_RESAMPLES", "CI_METHODS", "as_float_array", "summarize_in_range"]
