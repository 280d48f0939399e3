"""Named staged models: ``load_model("detr-r50", weights="random")`` and friends."""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from modinv.errors import ModinvError
from modinv.models.base import StagedModel

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
    model = build(weights=str(weights), seed=seed, **extra, **options)
    model.weights = str(weights)
    return model.freeze().to(device)
