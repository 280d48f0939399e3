"""Per-image errors and their summaries (mean with a 95% confidence interval)."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from scipy import stats
from torch import Tensor


def per_image_mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error of each image pair (B values), computed in float32."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


def summarize(values: Iterable[float] | Tensor | np.ndarray, confidence: float = 0.95) -> dict:
    """``{"mse": mean, "ci95": [lo, hi], "n": n, "std": sd}`` with a Student-t interval.

    With one value the interval is degenerate ([mean, mean]); with none, mean is NaN.
    """
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    n = int(x.size)
    if n == 0:
        return {"mse": math.nan, "ci95": [math.nan, math.nan], "n": 0, "std": math.nan}
    mean = float(x.mean())
    if n == 1:
        return {"mse": mean, "ci95": [mean, mean], "n": 1, "std": 0.0}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))
    return {"mse": mean, "ci95": [mean - half, mean + half], "n": n, "std": sd}


class RunningMean:
    """Mean of many tensors of one shape, accumulated in float64 (e.g. a data set's mean image)."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.count = 0

    def add(self, batch: Tensor) -> None:
        s = batch.detach().double().sum(0).cpu()
        self.total = s if self.total is None else self.total + s
        self.count += batch.shape[0]

    @property
    def mean(self) -> Tensor:
        if self.total is None:
            raise ValueError("no values added")
        return (self.total / self.count).float()

