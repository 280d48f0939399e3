"""Named staged models: ``load_model("detr-r50", weights="random")`` and friends."""

from __future__ import annotations

import importlib
import operator
from typing import Any, Callable

import torch

from modinv.errors import ModinvError
from modinv.models.base import StagedModel
from modinv.runtime import check_seed, resolve_device

# name -> "module:function" of a builder taking (weights, seed, **options) and returning a StagedModel.
# Builders are imported lazily so that `import modinv` stays fast and light. A prefix's builder also
# takes ``source=``: the text after the prefix (a timm name, a Hugging Face id or folder).
_BUILDERS: dict[str, str] = {
    "detr-r50": "modinv.models.detr:build",
    "vit-b16": "modinv.models.vit:build",
    "vit-b16-noselfattn": "modinv.models.vit:build_no_self_attention",
    "deit-b16": "modinv.models.vit:build_deit",
    "mobilenet-v2": "modinv.models.mobilenet:build",
    "swin-b": "modinv.models.swin:build",
}
_PREFIXES: dict[str, str] = {
    "timm:": "modinv.models.timm_generic:build",
    "hf:": "modinv.models.hf:build",
}


def available_models() -> list[str]:
    """Registered model names, then the prefixes (``timm:<name>``, ``hf:<name>``) that stage any model."""
    return sorted(_BUILDERS) + [p + "<name>" for p in _PREFIXES]


def _builder(name: str) -> tuple[Callable[..., StagedModel], dict[str, Any]]:
    target, extra = _BUILDERS.get(name), {}
    if target is None:
        for prefix, tgt in _PREFIXES.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                target, extra = tgt, {"source": name[len(prefix):]}
    if target is None:
        raise ModinvError(f"unknown model {name!r}; valid models: {', '.join(available_models())}")
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func), extra


# The most pixels an input may have: a frozen forward pass (and the dry run that measures the stage
# shapes) at more would not fit in memory for token models (2048×2048 is 16,384 ViT tokens).
MAX_INPUT_PIXELS = 2048 * 2048


def check_input_size(size: Any) -> tuple[int, int]:
    """``size`` as ``(H, W)``, or one sentence when it is not two positive whole numbers of at most
    :data:`MAX_INPUT_PIXELS` pixels in all."""
    try:
        h, w = (operator.index(v) for v in size)
    except (TypeError, ValueError):
        raise ModinvError(f"input_size must be (height, width) in pixels, got {size!r}") from None
    if h < 1 or w < 1:
        raise ModinvError(f"input_size must be positive, got {h}×{w}")
    if h * w > MAX_INPUT_PIXELS:
        raise ModinvError(f"input size {h}×{w} is {h * w:,} pixels, above the {MAX_INPUT_PIXELS:,} (2048×2048) a "
                          "model can run at in memory")
    return h, w


def load_model(
    name: str,
    weights: str = "pretrained",
    seed: int = 0,
    device: str | torch.device = "cpu",
    **options: Any,
) -> StagedModel:
    """A frozen, eval-mode :class:`StagedModel`.

    ``weights`` is ``"pretrained"`` (the published weights; a clear error when they cannot be
    fetched), ``"random"`` (the same architecture, initialised from ``seed``) or a local path.
    ``options`` go to the adapter (e.g. ``input_size=(H, W)``, ``indices=`` for timm models).
    """
    build, extra = _builder(name)
    device, seed = resolve_device(device), check_seed(seed)  # before anything is built
    if "input_size" in options:
        options["input_size"] = check_input_size(options["input_size"])
    model = build(weights=str(weights), seed=seed, **extra, **options)
    model.weights = str(weights)
    model.seed = seed  # random weights are known by their seed (a chain records it)
    return model.freeze().to(device)
