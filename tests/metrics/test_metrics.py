"""The metrics module: per-image MSE, mean with a Student-t CI, its printed form, and AUROC."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from modinv.metrics import RunningMean, auroc, auroc_ci, format_ci, mean_summary, per_image_mse, summarize


def test_per_image_mse_by_hand():
    a = torch.zeros(2, 1, 2, 2)
    b = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.5, 0.5], [0.5, 0.5]]]])
    assert per_image_mse(a, b).tolist() == pytest.approx([0.5, 0.25])
    assert per_image_mse(a.half(), b.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="shape mismatch"):
        per_image_mse(a, b[:1])


def test_running_mean():
    running = RunningMean()
    with pytest.raises(ValueError):
        running.mean
    running.add(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    running.add(torch.tensor([[5.0, 9.0]]))
    assert running.count == 3 and running.mean.tolist() == pytest.approx([3.0, 5.0])


def test_summarize_matches_scipy_t_interval():
    x = np.array([0.1, 0.4, 0.35, 0.8, 0.05, 0.3])
    s = summarize(torch.tensor(x))
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert s["mse"] == pytest.approx(x.mean()) and s["ci95"] == pytest.approx([lo, hi])
    assert s["n"] == 6 and s["std"] == pytest.approx(x.std(ddof=1))
    assert summarize(list(x)) == s and summarize(x) == s
    assert summarize([2.0]) == {"mse": 2.0, "ci95": [2.0, 2.0], "n": 1, "std": 0.0}
    empty = summarize([])
    assert empty["n"] == 0 and math.isnan(empty["mse"]) and all(math.isnan(v) for v in empty["ci95"])


def test_format_ci():
    assert format_ci({"mse": 0.01234, "ci95": [0.01, 0.0145], "n": 3}) == "0.0123 (95% CI [0.0100, 0.0145])"
    assert format_ci({"mean": 0.5, "ci95": [0.25, 0.75]}, digits=2) == "0.50 (95% CI [0.25, 0.75])"
    assert format_ci(0.1, -0.2, 0.3, digits=3, signed=True) == "+0.100 (95% CI [-0.200, +0.300])"
    assert format_ci(summarize([])) == "n/a (95% CI [n/a, n/a])"
    assert format_ci({"mse": 1.0, "ci95": None}) == "1.0000 (95% CI [n/a, n/a])"


def test_auroc_hand_case_and_ties():
    # positives 3 and 1, negatives 2 and 1: pairs 3>2, 3>1, 1<2, 1=1 -> (1 + 1 + 0 + 0.5) / 4
    assert auroc([3, 1, 2, 1], [1, 1, 0, 0]) == pytest.approx(0.625)
    assert auroc(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([True, True, False])) == 1.0
    assert auroc([0.1, 0.9], [1, 0]) == 0.0
    assert auroc([1.0, float("nan"), 0.0], [1, 1, 0]) == 1.0  # non-finite scores dropped
    assert math.isnan(auroc([1.0, 2.0], [1, 1])) and math.isnan(auroc([], []))
    with pytest.raises(ValueError, match="labels"):
        auroc([1.0, 2.0], [1])


def test_auroc_is_mann_whitney_u():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.5, 1, 40).round(1), rng.normal(0, 1, 30).round(1)  # rounding makes ties
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic
    labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    assert auroc(np.r_[pos, neg], labels) == pytest.approx(u / (pos.size * neg.size))


def test_auroc_ci_hanley_mcneil():
    a, n_pos, n_neg = 0.8, 20, 30
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt((a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg))
    assert auroc_ci(a, n_pos, n_neg) == pytest.approx([a - 1.959964 * se, a + 1.959964 * se])
    assert auroc_ci(0.95, 3, 3)[1] == 1.0 and auroc_ci(0.05, 3, 3)[0] == 0.0  # clipped to [0, 1]
    assert auroc_ci(None, 3, 3) is None and auroc_ci(float("nan"), 3, 3) is None and auroc_ci(0.5, 0, 3) is None


def test_mean_summary_renames_the_mean():
    values = [0.2, 0.4, 0.9]
    s, m = summarize(values), mean_summary(values)
    assert m == {"mean": s["mse"], "ci95": s["ci95"], "n": 3, "std": s["std"]}


def test_summarize_with_bounds_stays_in_range_and_keeps_the_mse_key():
    from modinv.metrics import summarize_in_range

    values = [0.001, 0.002, 0.0015, 0.2]  # the demo's skewed case: the t interval goes below 0
    assert summarize(values)["ci95"][0] < 0
    bounded = summarize(values, low=0.0, high=1.0)
    assert bounded == {"mse": bounded["mean"], **summarize_in_range(values, 0.0, 1.0)}
    assert bounded["mse"] == pytest.approx(np.mean(values))
    assert 0 <= bounded["ci95"][0] <= bounded["mse"] <= bounded["ci95"][1] <= 1
    assert bounded["ci_method"] in ("bca_bootstrap", "percentile_bootstrap")
    assert format_ci(bounded, digits=3).startswith("0.051 (95% CI [0.")
    assert "ci_method" not in summarize(values)  # no bounds: the plain t interval, keys as before
