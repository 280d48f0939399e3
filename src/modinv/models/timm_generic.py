"""Any timm model, staged at the feature maps timm reports (``load_model("timm:<name>")``).

timm lists for each model its ``feature_info``: the submodules whose outputs are its multi-scale
feature maps (for ``resnet18``: ``act1``, ``layer1`` … ``layer4`` at strides 2 … 32; for ViTs
``blocks.0`` … ``blocks.11``). ``indices`` picks some of them (default: all; negative indices count
from the end). Stage names are ``"f<i>"`` with ``i`` the feature index in timm's list (so
``indices=(1, 3)`` gives stages ``("f1", "f3")``, whatever else is chosen); ``model.stage_paths``
maps them to the module paths and ``model.feature_info`` holds timm's entries for them.

Normalisation (mean, std) and the default ``input_size`` come from the model's own
``pretrained_cfg``; for models with a fixed input size (ViTs) another ``input_size`` is passed to
timm as ``img_size`` (position embeddings are resized when pretrained weights are loaded).
``model.output(trace)`` is the model's own output (ImageNet logits for classifiers).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from modinv.errors import ModinvError
from modinv.models.modules import ModuleStagedModel
from modinv.models.weights import from_hub, is_path, load_into, load_state_file, seeded


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


def build(
    weights: str = "pretrained",
    seed: int = 0,
    timm_name: str = "",
    indices: Sequence[int] | int | None = None,
    input_size: tuple[int, int] | None = None,
    **_,
) -> ModuleStagedModel:
    """``timm_name`` staged at its feature maps ``indices`` (see the module docstring).

    ``weights``: ``"pretrained"`` (timm's published weights via the Hugging Face hub or timm's
    cache, with a network time-out and a clear error offline), ``"random"`` (from ``seed``) or a
    path to a state dict file of this timm model.
    """
    import timm
    from timm.models import get_pretrained_cfg

    _check_name(timm_name)
    options = {}
    cfg = get_pretrained_cfg(timm_name)
    if input_size is not None and cfg is not None and getattr(cfg, "fixed_input_size", False):
        options["img_size"] = tuple(int(s) for s in input_size)
    if weights == "pretrained":
        how = (
            "make the Hugging Face hub reachable once (timm caches the weights), or pass weights=PATH "
            f"to a state dict file of timm model {timm_name!r}"
        )
        net = from_hub(lambda: timm.create_model(timm_name, pretrained=True, **options), f"timm model {timm_name!r}", how)
    else:
        with seeded(seed):
            net = timm.create_model(timm_name, pretrained=False, **options)
        if is_path(weights):
            load_into(net, load_state_file(weights), str(weights))

    info = getattr(net, "feature_info", None)
    if not isinstance(info, (list, tuple)) or not info or not all(isinstance(e, dict) and "module" in e for e in info):
        raise ModinvError(
            f"timm model {timm_name!r} reports no feature_info; stage it with modinv.models.from_module "
            "and dotted module paths instead"
        )
    chosen = _feature_indices(len(info), indices, timm_name)
    stages = {f"f{i}": info[i]["module"] for i in chosen}
    pcfg = getattr(net, "pretrained_cfg", None) or {}
    mean, std = pcfg.get("mean"), pcfg.get("std")
    if input_size is None:
        input_size = tuple(pcfg.get("input_size", (3, 224, 224))[-2:])
    model = ModuleStagedModel(net, stages, input_size, mean=mean, std=std, name=f"timm:{timm_name}")
    model.feature_info = [dict(info[i]) for i in chosen]
    model.timm_name = timm_name
    return model
