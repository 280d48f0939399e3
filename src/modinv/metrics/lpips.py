"""LPIPS (Zhang et al. 2018), loaded without ever downloading anything.

LPIPS compares deep features of two images: a frozen ImageNet backbone (AlexNet by default, as
the LPIPS authors recommend for evaluation) and small learned 1×1 "linear" heads. torchmetrics
(pinned in pyproject.toml) ships the linear heads inside its package; the backbone weights are
torchvision's. They are taken from, in order: a file the user passes (a torchvision state dict of
that backbone: ``.pth``/``.pt`` read with ``weights_only=True``, or ``.safetensors``; by default it
must be torchvision's released file, checked by its SHA-256), or the torch
hub cache (``torch.hub.get_dir()/checkpoints/<torchvision's file name>``, where any earlier
``torchvision.models.alexnet(weights="DEFAULT")`` left them). Where neither exists, :func:`load_lpips`
returns an :class:`Lpips` whose ``reason`` says so in one sentence and nothing else fails.

This module uses torchmetrics' LPIPS network class (``_NoTrainLpips``) directly because its public
wrappers fetch missing backbone weights from the internet; the exact torchmetrics pin keeps that
class where it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

# LPIPS backbone name -> (torchvision builder, its weights enum)
BACKBONES = {"alex": ("alexnet", "AlexNet_Weights"), "vgg": ("vgg16", "VGG16_Weights"),
             "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights")}


@dataclass
class Lpips:
    """A ready LPIPS network (``net``), or the one sentence why LPIPS is not computed (``reason``)."""

    net: nn.Module | None
    reason: str | None = None
    source: str | None = None  # where the backbone weights came from
    backbone: str = "alex"

    @property
    def available(self) -> bool:
        return self.net is not None

    @torch.no_grad()
    def __call__(self, reconstructions: Tensor, targets: Tensor) -> Tensor:
        """Per-image LPIPS (B values, float32) of two B×3×H×W batches in [0, 1] (clamped into it)."""
        if self.net is None:
            raise RuntimeError(f"LPIPS not computed: {self.reason}")
        device = next(self.net.parameters()).device
        a, b = (t.detach().float().clamp(0, 1).to(device) for t in (reconstructions, targets))
        return self.net(a, b, normalize=True).flatten().float()


def cached_weights_path(backbone: str = "alex") -> Path:
    """Where torchvision keeps ``backbone``'s ImageNet weights in the torch hub cache."""
    import torchvision

    url = getattr(torchvision.models, BACKBONES[backbone][1]).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def release_digest_prefix(backbone: str = "alex") -> str:
    """The start of the SHA-256 of torchvision's released ``backbone`` weights, which torchvision
    writes into the file name (``alexnet-owt-7be5be79.pth``)."""
    return cached_weights_path(backbone).stem.rsplit("-", 1)[-1]


def _read_state(path: Path) -> dict[str, Tensor]:
    """The tensors of a weights file; ``ValueError`` (one line, never the unpickler's advice to
    load untrusted files with ``weights_only=False``) for anything else."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - text, a pickle of objects, a foreign format: all refused alike
        raise ValueError(f"it is not a file of tensors ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"it holds a {type(state).__name__}, not a state dict of tensors")
    return state


def _check_release(path: Path, backbone: str) -> None:
    """``ValueError`` unless ``path`` is torchvision's released ``backbone`` file (by its SHA-256):
    LPIPS's linear heads were calibrated on those weights only, so other weights of the same shapes
    (another training run, random ones) would give numbers that mean nothing."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    expected = release_digest_prefix(backbone)
    if not digest.hexdigest().startswith(expected):
        raise ValueError(f"it is not torchvision's released {BACKBONES[backbone][0]} weights file (its SHA-256 "
                         f"does not begin with {expected}), whose features LPIPS was calibrated on")


def _copy_backbone(net: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a torchvision ``features.N.*`` state dict into torchmetrics' sliced backbone, whose
    modules keep their torchvision index (``slice2.3`` is ``features.3``)."""
    names = {name.split(".")[1]: name for name, _ in net.named_modules() if name.count(".") == 1}
    mapped = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "features" and len(parts) >= 3 and parts[1] in names:
            mapped[".".join([names[parts[1]], *parts[2:]])] = value
    expected = set(net.state_dict())
    if set(mapped) != expected:
        raise ValueError(f"it does not hold the {len(expected)} 'features.*' tensors of the backbone")
    net.load_state_dict(mapped, strict=True)


def load_lpips(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
               backbone: str = "alex", verify: bool = True) -> Lpips:
    """LPIPS with ``backbone`` weights from ``weights`` (a file) or the local torch hub cache.

    Never downloads. When the weights are missing or unreadable, are not the backbone's tensors,
    or (``verify``, the default) are not torchvision's released file by its SHA-256, the result has
    ``net=None`` and a one-sentence ``reason`` (``"LPIPS not computed: " + reason`` is what reports
    print). ``verify=False`` accepts any weights of the right shapes (tests, experiments).
    """
    if backbone not in BACKBONES:
        return Lpips(None, f"unknown LPIPS backbone {backbone!r} (choose from {', '.join(BACKBONES)})",
                     backbone=backbone)
    path = Path(weights) if weights is not None else cached_weights_path(backbone)
    if not path.is_file():
        why = (f"the LPIPS weights file {str(path)!r} does not exist" if weights is not None else
               f"the {BACKBONES[backbone][0]} backbone weights are not in the local torch cache "
               f"({path}) and no weights file was given")
        return Lpips(None, why, backbone=backbone)
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    # pnet_rand: build the backbone without fetching it; the shipped linear heads load (pretrained=True)
    net = _NoTrainLpips(net=backbone, pretrained=True, pnet_rand=True)
    try:
        _copy_backbone(net.net, _read_state(path))
        if verify:
            _check_release(path, backbone)
    except (OSError, RuntimeError, ValueError) as exc:
        return Lpips(None, f"the weights in {str(path)!r} cannot be used as the {BACKBONES[backbone][0]} "
                           f"backbone ({str(exc).splitlines()[0]})", backbone=backbone)
    return Lpips(net.eval().to(device), source=str(path), backbone=backbone)


__all__ = ["BACKBONES", "Lpips", "cached_weights_path", "load_lpips", "release_digest_prefix"]
