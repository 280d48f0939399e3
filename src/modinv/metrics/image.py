"""Image metrics computed per image: MSE, PSNR, SSIM and LPIPS, and a running mean image.

Images are float B×C×H×W in [0, 1] (reconstructions and targets alike); every value is computed in
float32, one per image, so that callers can average them and attach a confidence interval
(:func:`summarize_metric`, a range-respecting interval from :mod:`modinv.metrics.bounded`).

PSNR and SSIM come from torchmetrics' functional API and LPIPS from its LPIPS network
(:mod:`modinv.metrics.lpips`) rather than hand-written formulas. Why torchmetrics (pinned to one
version in pyproject.toml): it is maintained by Lightning AI with regular releases and tests
against reference implementations, its functional metrics return per-image values
(``reduction="none"``), it works with the pinned torch without pulling anything but
``lightning-utilities``, and it ships LPIPS' learned heads inside the package so that only
torchvision's backbone weights must be present (piq's last release is from 2023 and it downloads
LPIPS weights at run time).

Settings, fixed here so that every report means the same thing:
- MSE: mean over pixels and channels of (x - y)²; range [0, 1] for [0, 1] images.
- PSNR (dB): 10·log10(1 / MSE) per image (data range 1); range [0, ∞): +∞ for a perfect
  reconstruction (strict JSON cannot hold it: summaries count such images in ``n_infinite`` and
  write the infinite mean as null).
- SSIM: Wang et al. (2004) with an 11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, data
  range 1, population (not sample) covariances, the SSIM map averaged over channels and over the
  pixels whose 11×11 window lies inside the image (a 5-pixel border is left out, as in Wang et
  al.'s code and scikit-image; torchmetrics' own mean also covers the border, computed on a
  reflection-padded image); range [-1, 1], 1 for a perfect reconstruction. These are scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1, channel_axis=...)``. Images need H, W >= 11.
- LPIPS: AlexNet backbone with LPIPS v0.1 linear heads, inputs scaled to [-1, 1]; range [0, ∞)
  (0 for identical images; lower is more similar). Computed only where the backbone weights exist.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from modinv.errors import ModinvError
from modinv.metrics.bounded import summarize_in_range
from modinv.metrics.lpips import Lpips


def per_image_mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error of each image pair (B values), computed in float32."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


class RunningMean:
    """Mean of many tensors of one shape, accumulated in float64 (e.g. a data set's mean image)."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.count = 0

    def add(self, batch: Tensor) -> None:
        """Add the B items of ``batch`` (B×...)."""
        s = batch.detach().double().sum(0).cpu()
        self.total = s if self.total is None else self.total + s
        self.count += batch.shape[0]

    @property
    def mean(self) -> Tensor:
        """The mean so far (float32); ValueError before anything was added."""
        if self.total is None:
            raise ValueError("no values added")
        return (self.total / self.count).float()


@dataclass(frozen=True)
class MetricInfo:
    """What a metric's numbers mean: its range (for intervals), direction and unit."""

    name: str
    low: float
    high: float
    higher_is_better: bool
    unit: str
    description: str


SSIM_SETTINGS = {"gaussian_kernel": True, "sigma": 1.5, "kernel_size": 11, "k1": 0.01, "k2": 0.03, "data_range": 1.0}

METRICS: dict[str, MetricInfo] = {
    "mse": MetricInfo("mse", 0.0, 1.0, False, "", "mean squared pixel error in [0, 1] pixel space"),
    "psnr": MetricInfo("psnr", 0.0, math.inf, True, "dB",
                       "peak signal-to-noise ratio 10·log10(1/MSE); +inf for a perfect reconstruction"),
    "ssim": MetricInfo("ssim", -1.0, 1.0, True, "",
                       "structural similarity (Gaussian 11×11 window, σ 1.5); 1 for a perfect reconstruction"),
    "lpips": MetricInfo("lpips", 0.0, math.inf, False, "",
                        "learned perceptual distance (AlexNet LPIPS); 0 for identical images"),
}
DEFAULT_METRICS: tuple[str, ...] = tuple(METRICS)


def parse_metrics(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"mse,psnr"`` or ``["mse", "psnr"]`` -> ``("mse", "psnr")`` in canonical order (None: all);
    an unknown name is a one-sentence :class:`ModinvError`."""
    if spec is None:
        return DEFAULT_METRICS
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ModinvError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}")
    return tuple(n for n in METRICS if n in names)


def per_image_psnr(reconstructions: Tensor, targets: Tensor) -> Tensor:
    """PSNR in dB of each image pair (B values, float32; +inf where the images are identical)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(reconstructions, targets)
    a, b = reconstructions.detach().float(), targets.detach().float()
    return peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=tuple(range(1, a.ndim))).float()


def per_image_ssim(reconstructions: Tensor, targets: Tensor) -> Tensor:
    """SSIM of each image pair (B values, float32) with :data:`SSIM_SETTINGS`."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(reconstructions, targets)
    if min(targets.shape[-2:]) < SSIM_SETTINGS["kernel_size"]:
        raise ValueError(f"SSIM needs images of at least {SSIM_SETTINGS['kernel_size']}×"
                         f"{SSIM_SETTINGS['kernel_size']} pixels, got {tuple(targets.shape[-2:])}")
    a, b = reconstructions.detach().float(), targets.detach().float()
    _, ssim_map = structural_similarity_index_measure(a, b, reduction="none", return_full_image=True, **SSIM_SETTINGS)
    pad = (SSIM_SETTINGS["kernel_size"] - 1) // 2  # average over the windows that lie inside the image
    return ssim_map[..., pad:-pad, pad:-pad].flatten(1).mean(1).float()


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"expected two B×C×H×W batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def image_metrics(reconstructions: Tensor, targets: Tensor, metrics: Sequence[str] = DEFAULT_METRICS,
                  lpips: Lpips | None = None) -> dict[str, Tensor]:
    """``{metric: B per-image float32 values}`` for the requested ``metrics`` (canonical order).

    ``"lpips"`` is computed only with an available ``lpips`` (:func:`~modinv.metrics.lpips.load_lpips`);
    otherwise it is left out of the result and the caller reports ``lpips.reason`` (or "no LPIPS
    network was loaded"), see :func:`not_computed`. Values are on the CPU.
    """
    names = parse_metrics(metrics)
    _check_pair(reconstructions, targets)
    out: dict[str, Tensor] = {}
    for name in names:
        if name == "mse":
            out[name] = per_image_mse(reconstructions.detach(), targets.detach())
        elif name == "psnr":
            out[name] = per_image_psnr(reconstructions, targets)
        elif name == "ssim":
            out[name] = per_image_ssim(reconstructions, targets)
        elif lpips is not None and lpips.available:
            out[name] = lpips(reconstructions, targets)
    return {k: v.cpu() for k, v in out.items()}


def not_computed(metrics: Sequence[str], lpips: Lpips | None) -> dict[str, str]:
    """``{metric: one sentence why}`` for the requested metrics that :func:`image_metrics` leaves out."""
    if "lpips" not in parse_metrics(metrics) or (lpips is not None and lpips.available):
        return {}
    return {"lpips": lpips.reason if lpips is not None else "no LPIPS network was loaded"}


def summarize_metric(name: str, values: Iterable[float] | Tensor | np.ndarray, confidence: float = 0.95) -> dict:
    """Mean, 95% CI inside the metric's range, n, std, CI method (see :func:`summarize_in_range`)."""
    info = METRICS[name]
    return summarize_in_range(values, info.low, info.high, confidence)


__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "MetricInfo",
    "RunningMean",
    "SSIM_SETTINGS",
    "image_metrics",
    "not_computed",
    "parse_metrics",
    "per_image_mse",
    "per_image_psnr",
    "per_image_ssim",
    "summarize_metric",
]
