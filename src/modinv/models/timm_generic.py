"""Any timm model, staged at the feature maps timm reports (``load_model("timm:<name>")``).

timm lists for each model its ``feature_info``: the submodules whose outputs are its multi-scale
feature maps (for ``resnet18``: ``act1``, ``layer1`` … ``layer4`` at strides 2 … 32; for ViTs
``blocks.0`` … ``blocks.11``). ``indices`` picks some of them (default: all; negative indices count
from the end). Stage names are ``"f<i>"`` with ``i`` the feature index in timm's list (so
``indices=(1, 3)`` gives stages ``("f1", "f3")``, whatever else is chosen); ``model.stage_paths``
maps them to the module paths and ``model.feature_info`` holds timm's entries for them.

Normalisation (mean, std) and the default ``input_size`` come from the model's own
``pretrained_cfg``; for models with a fixed input size (ViTs, Swin) another ``input_size`` is passed
to timm as ``img_size`` (position embeddings are resized when pretrained weights are loaded).

Layouts (``model.meta.stage_layouts``): B×N×D token stages are ``"tokens"`` (ViT, DeiT: the class
and register tokens first; ``trace.context`` holds ``grid`` and ``num_prefix_tokens``); feature maps
are ``"nhwc"`` for models whose ``output_fmt`` is channels-last (timm's Swin keeps B×H×W×C), else
``"nchw"``. ``arch="auto"`` components read them from there.

``model.output(trace)`` is the model's own output (ImageNet logits for classifiers). ``model.meta``
declares the task ``"classification"`` when the model has a classifier head (``num_classes > 0``),
the ImageNet-1k class names when that head has 1000 outputs (timm's pretrained classifiers; other
heads get no names), the normalisation and timm's number of prefix (class, register) tokens.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from modinv.errors import ModinvError
from modinv.models.family import Family, register_family
from modinv.models.modules import ModuleStagedModel
from modinv.models.timm_loader import classifier_meta, create_timm_model


def _check_name(timm_name: str) -> None:
    import timm

    if not timm_name or not timm.is_model(timm_name):
        close = difflib.get_close_matches(timm_name or "", timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ModinvError(f"unknown timm model {timm_name!r}{hint}")


def _feature_indices(n: int, indices: Sequence[int] | int | None, timm_name: str) -> list[int]:
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        indices = [indices]
    chosen = []
    for i in indices:
        if not isinstance(i, int) or not -n <= i < n:
            raise ModinvError(f"timm model {timm_name!r} has {n} feature maps (indices 0..{n - 1}); got index {i!r}")
        chosen.append(i % n)
    if not chosen:
        raise ModinvError("indices must name at least one feature map")
    if chosen != sorted(set(chosen)):
        raise ModinvError(f"indices must be distinct and in increasing order, got {list(indices)}")
    return chosen


def _map_layout(net) -> str:
    """``"nhwc"`` for a timm model that keeps its feature maps channels-last (its ``output_fmt``, e.g.
    Swin), else ``"nchw"``."""
    fmt = getattr(net, "output_fmt", None)
    return "nhwc" if str(getattr(fmt, "value", fmt)).upper() == "NHWC" else "nchw"


def _token_context(net) -> dict:
    """``grid`` and ``num_prefix_tokens`` of a timm token model (one with ``num_prefix_tokens`` and a
    patch grid, e.g. ViT, DeiT); empty for the others."""
    prefix = getattr(net, "num_prefix_tokens", None)
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    if prefix is None or grid is None:
        return {}
    return {"grid": tuple(int(g) for g in grid), "num_prefix_tokens": int(prefix)}


def build(
    weights: str = "pretrained",
    seed: int = 0,
    source: str = "",
    indices: Sequence[int] | int | None = None,
    input_size: tuple[int, int] | None = None,
    num_classes: int | None = None,
    **_,
) -> ModuleStagedModel:
    """The timm model ``source`` staged at its feature maps ``indices`` (see the module docstring).

    ``weights``: ``"pretrained"`` (timm's published weights through the local cache first, then the
    hub, with a clear error offline), ``"random"`` (from ``seed``) or a path to a state dict file of
    this timm model. ``num_classes`` goes to timm (0: no classifier head, so no task; default: the
    model's own).
    """
    from timm.models import get_pretrained_cfg

    _check_name(source)
    options = {}
    cfg = get_pretrained_cfg(source)
    if input_size is not None and cfg is not None and getattr(cfg, "fixed_input_size", False):
        options["img_size"] = tuple(int(s) for s in input_size)
    if num_classes is not None:
        options["num_classes"] = int(num_classes)
    net = create_timm_model(source, weights, seed, **options)

    info = getattr(net, "feature_info", None)
    if not isinstance(info, (list, tuple)) or not info or not all(isinstance(e, dict) and "module" in e for e in info):
        raise ModinvError(
            f"timm model {source!r} reports no feature_info; stage it with modinv.models.from_module "
            "and dotted module paths instead"
        )
    chosen = _feature_indices(len(info), indices, source)
    stages = {f"f{i}": info[i]["module"] for i in chosen}
    pcfg = getattr(net, "pretrained_cfg", None) or {}
    mean, std = pcfg.get("mean"), pcfg.get("std")
    if input_size is None:
        input_size = tuple(pcfg.get("input_size", (3, 224, 224))[-2:])
    context = _token_context(net)
    model = ModuleStagedModel(
        net, stages, input_size, mean=mean, std=std, name=f"timm:{source}",
        **classifier_meta(net),
        num_prefix_tokens=int(getattr(net, "num_prefix_tokens", 0) or 0),
        stage_layouts=_map_layout(net), context=context,
    )
    model.feature_info = [dict(info[i]) for i in chosen]
    model.timm_name = source
    return model


register_family(Family(name="timm:", builder=build, summary="any timm model, staged at its feature maps (f<i>)",
                       weights=("timm's pretrained weights of the model",)))
