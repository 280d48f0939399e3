"""Metrics that every report uses: per-image MSE, PSNR, SSIM, LPIPS, means with 95% CIs that stay
inside each metric's range (and their printed form), AUROC.

Layer: same level as ``training`` (imports nothing above ``inverse``); analyses, the demo and the
CLI take their numbers from here so that a metric is defined once.
"""

from modinv.metrics.bounded import CI_METHODS, summarize_in_range
from modinv.metrics.image import (DEFAULT_METRICS, METRICS, MetricInfo, RunningMean, image_metrics, not_computed,
                                  parse_metrics, per_image_mse, per_image_psnr, per_image_ssim, summarize_metric)
from modinv.metrics.lpips import Lpips, load_lpips
from modinv.metrics.intervals import CI_METHOD, as_float_array, format_ci, mean_summary, summarize
from modinv.metrics.ranking import AUROC_DEFINITION, auroc, auroc_ci

__all__ = [
    "AUROC_DEFINITION",
    "CI_METHOD",
    "CI_METHODS",
    "DEFAULT_METRICS",
    "METRICS",
    "Lpips",
    "MetricInfo",
    "image_metrics",
    "load_lpips",
    "not_computed",
    "parse_metrics",
    "per_image_psnr",
    "per_image_ssim",
    "summarize_in_range",
    "summarize_metric",
    "RunningMean",
    "as_float_array",
    "auroc",
    "auroc_ci",
    "format_ci",
    "mean_summary",
    "per_image_mse",
    "summarize",
]
