"""Image metrics (MSE, PSNR, SSIM, LPIPS) and range-respecting confidence intervals.

PSNR and SSIM are checked against scikit-image on the same images. Settings that make SSIM
comparable: scikit-image ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1.0, channel_axis=-1)`` (K1 0.01, K2 0.03, 11×11 window,
border windows left out) vs :func:`per_image_ssim`. Tolerances: |ΔSSIM| <= 1e-5 and
|ΔPSNR| <= 1e-4 dB (our values are float32, scikit-image's float64).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from modinv.errors import ModinvError
from modinv.fileio import to_json
from modinv.metrics.bounded import summarize_in_range
from modinv.metrics.image import (
    METRICS,
    image_metrics,
    not_computed,
    parse_metrics,
    per_image_psnr,
    per_image_ssim,
    summarize_metric,
)
from modinv.metrics.lpips import cached_weights_path, load_lpips


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Three smooth 3×40×52 targets in [0, 1] and noisy reconstructions of them."""
    g = torch.Generator().manual_seed(0)
    targets = torch.nn.functional.avg_pool2d(torch.rand(3, 3, 40, 52, generator=g), 3, 1, 1)
    recon = (targets + 0.08 * torch.randn(targets.shape, generator=g)).clamp(0, 1)
    return recon, targets


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).double().numpy()


def test_psnr_matches_scikit_image(pair):
    recon, targets = pair
    ours = per_image_psnr(recon, targets)
    assert ours.dtype == torch.float32 and ours.shape == (3,)
    for i in range(3):
        ref = sk_psnr(_hwc(targets[i]), _hwc(recon[i]), data_range=1.0)
        assert abs(ours[i].item() - ref) <= 1e-4
        assert 15 < ref < 30  # a non-trivial case


def test_ssim_matches_scikit_image(pair):
    recon, targets = pair
    ours = per_image_ssim(recon, targets)
    for i in range(3):
        ref = sk_ssim(_hwc(targets[i]), _hwc(recon[i]), gaussian_weights=True, sigma=1.5,
                      use_sample_covariance=False, data_range=1.0, channel_axis=-1)
        assert abs(ours[i].item() - ref) <= 1e-5
        assert 0.3 < ref < 0.95


def test_ssim_rejects_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="at least 11"):
        per_image_ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_perfect_reconstruction_gives_mse_0_ssim_1_psnr_inf(pair):
    _, targets = pair
    values = image_metrics(targets.clone(), targets, metrics=("mse", "psnr", "ssim"))
    assert list(values) == ["mse", "psnr", "ssim"]
    assert torch.equal(values["mse"], torch.zeros(3))
    assert torch.allclose(values["ssim"], torch.ones(3), atol=1e-6)
    assert torch.isinf(values["psnr"]).all() and (values["psnr"] > 0).all()
    psnr = summarize_metric("psnr", values["psnr"])
    assert psnr["mean"] == math.inf and psnr["n_infinite"] == 3
    strict = json.loads(to_json(psnr))  # strict JSON holds no inf: the mean is written as null
    assert strict["mean"] is None and strict["n_infinite"] == 3
    ssim = summarize_metric("ssim", values["ssim"])
    assert ssim["mean"] == pytest.approx(1.0, abs=1e-6) and ssim["ci95"][1] <= 1.0


def test_image_metrics_values_and_order(pair):
    recon, targets = pair
    values = image_metrics(recon, targets, metrics=("ssim", "mse"))
    assert list(values) == ["mse", "ssim"]
    assert torch.allclose(values["mse"], (recon - targets).pow(2).mean((1, 2, 3)))
    assert all(v.dtype == torch.float32 and v.shape == (3,) for v in values.values())


def test_parse_metrics():
    assert parse_metrics("psnr, MSE") == ("mse", "psnr")
    assert parse_metrics(None) == tuple(METRICS)
    with pytest.raises(ModinvError, match="unknown metric"):
        parse_metrics("mse,fid")


def test_range_respecting_interval_stays_in_range_where_t_does_not():
    x = np.array([0.0005, 0.001, 0.0008, 0.0012, 0.2, 0.0009, 0.0011, 0.0007])  # skewed MSEs near 0
    half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    assert x.mean() - half < 0  # a Student-t interval leaves [0, 1] here
    s = summarize_metric("mse", x)
    lo, hi = s["ci95"]
    assert 0.0 <= lo <= s["mean"] <= hi <= 1.0
    assert s["ci_method"] == "bca_bootstrap" and s["range"] == [0.0, 1.0]
    assert summarize_metric("mse", x) == s  # seeded: the same values give the same interval
    ssim = summarize_metric("ssim", [0.999, 0.9995, 1.0, 0.2, 0.998])
    assert -1.0 <= ssim["ci95"][0] <= ssim["mean"] <= ssim["ci95"][1] <= 1.0


def test_interval_special_cases():
    assert summarize_in_range([0.3], 0, 1)["ci95"] == [0.3, 0.3]
    same = summarize_in_range([0.2, 0.2, 0.2], 0, 1)
    assert same["ci95"] == [same["mean"], same["mean"]] == pytest.approx([0.2, 0.2])
    assert same["ci_method"] == "degenerate"
    assert math.isnan(summarize_in_range([], 0, 1)["mean"])
    unbounded = summarize_in_range([1.0, 2.0, 4.0])  # no bound: the Student-t interval
    half = stats.t.ppf(0.975, 2) * np.std([1.0, 2.0, 4.0], ddof=1) / math.sqrt(3)
    assert unbounded["ci_method"] == "student_t"
    assert unbounded["ci95"] == pytest.approx([7 / 3 - half, 7 / 3 + half])
    with pytest.raises(ValueError, match="range"):
        summarize_in_range([0.5, 1.5], 0, 1)
    assert summarize_metric("ssim", [1.0000001, 0.5])["ci95"][1] <= 1.0  # float32 rounding is clipped


def test_lpips_not_computed_without_weights(pair, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    lpips = load_lpips()
    assert not lpips.available
    assert "not in the local torch cache" in lpips.reason and "\n" not in lpips.reason
    recon, targets = pair
    values = image_metrics(recon, targets, lpips=lpips)  # everything else is still computed
    assert list(values) == ["mse", "psnr", "ssim"]
    assert not_computed(("mse", "lpips"), lpips) == {"lpips": lpips.reason}
    assert not_computed(("mse",), lpips) == {}
    assert "does not exist" in load_lpips(tmp_path / "nothing.pth").reason


def _alexnet_features(path):
    """A torchvision AlexNet ``features.*`` state dict with seeded random weights, saved to ``path``."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.alexnet(weights=None)
    torch.save({k: v for k, v in net.state_dict().items() if k.startswith("features.")}, path)
    return path


def test_lpips_from_a_file_and_from_the_cache(pair, tmp_path, monkeypatch):
    recon, targets = pair
    lpips = load_lpips(_alexnet_features(tmp_path / "alexnet.pth"), verify=False)  # random: not the release
    assert lpips.available, lpips.reason
    values = image_metrics(recon, targets, lpips=lpips)
    assert list(values) == ["mse", "psnr", "ssim", "lpips"]
    assert (values["lpips"] > 0).all() and values["lpips"].shape == (3,)
    assert torch.allclose(lpips(targets, targets), torch.zeros(3), atol=1e-6)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    cached = cached_weights_path()
    cached.parent.mkdir(parents=True)
    (tmp_path / "alexnet.pth").rename(cached)
    from_cache = load_lpips(verify=False)
    assert from_cache.available and from_cache.source == str(cached)
    assert torch.allclose(from_cache(recon, targets), values["lpips"])


def test_lpips_rejects_a_file_of_the_wrong_network(tmp_path):
    torch.save({"features.0.weight": torch.zeros(2, 3, 1, 1)}, tmp_path / "bad.pth")
    lpips = load_lpips(tmp_path / "bad.pth")
    assert not lpips.available and "cannot be used" in lpips.reason



def test_lpips_refuses_weights_that_are_not_the_release(tmp_path):
    """Was: another network's (or random) AlexNet weights of the right shapes gave numbers."""
    lpips = load_lpips(_alexnet_features(tmp_path / "alexnet.pth"))
    assert not lpips.available and "\n" not in lpips.reason
    assert "is not torchvision's released alexnet weights file (its SHA-256 does not begin with 7be5be79)" in lpips.reason


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (self.marker,)


@pytest.mark.parametrize("content", ["text", "pickle", "list", "fake safetensors"])
def test_lpips_weights_that_are_no_tensor_file_are_one_sentence(tmp_path, content):
    """Was a traceback; the unpickler's own message advises weights_only=False, never to be shown."""
    marker = tmp_path / "pickle-ran"
    path = tmp_path / ("w.safetensors" if content == "fake safetensors" else "w.pth")
    if content in ("text", "fake safetensors"):
        path.write_text("these are not weights\n")
    elif content == "pickle":
        torch.save({"features.0.weight": torch.zeros(1), "x": _Payload(marker)}, path)
    else:
        torch.save([torch.zeros(1)], path)
    lpips = load_lpips(path)
    assert not lpips.available and "\n" not in lpips.reason and "cannot be used" in lpips.reason
    assert "weights_only" not in lpips.reason and not marker.exists()
