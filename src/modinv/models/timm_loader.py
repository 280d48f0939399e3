"""Build a named timm model from any of modinv's weight sources: "pretrained", "random" or a file.

One place for what every timm-backed adapter does with ``weights`` (ViT, DeiT, Swin, ``timm:``),
with the input size it is built for (:func:`check_input_size`) and the normalisation of its
pretrained config (:func:`pretrained_normalisation`):

- ``"pretrained"``: timm's published weights through the local Hugging Face cache first, then the
  hub with a time-out; offline without a cached copy it fails with one sentence
  (:func:`modinv.models.weights.from_hub`) that says how to supply the file instead.
- ``"random"``: timm's own initialisation under ``seed`` (the caller's RNG is left alone).
- a path: a .safetensors (or weights-only .pth) state dict, read *before* the model is built (a bad
  path fails fast), passed through the model family's own timm converter
  (``checkpoint_filter_fn`` of its timm module: resampled position embeddings, relative position
  tables, foreign key layouts) and loaded strictly.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from modinv.data.base import check_size
from modinv.data.imagenet import imagenet_class_names
from modinv.errors import ModinvError, brief
from modinv.models.weights import from_hub, is_path, load_into, load_state_file, seeded

if TYPE_CHECKING:
    from modinv.models.base import ModelMeta
    from modinv.models.family import Family


def check_input_size(input_size: Any, multiple: int, what: str, requirement: str | None = None) -> tuple[int, int]:
    """``(H, W)`` from ``input_size``, or one sentence when it is not two positive multiples of
    ``multiple`` (the model's patch size times its downsampling): "``what`` needs an input size
    ``requirement``" (default: made of whole ``multiple``-pixel cells)."""
    h, w = check_size(input_size)  # two positive whole numbers (224.7 is refused, not truncated)
    if h % multiple or w % multiple:
        requirement = requirement or f"made of whole {multiple}-pixel cells"
        raise ModinvError(f"{what} needs an input size {requirement}, got {h}×{w}")
    return h, w


def pretrained_normalisation(net: nn.Module, timm_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of the timm model's own pretrained config (what its weights expect)."""
    cfg = getattr(net, "pretrained_cfg", None) or {}
    if "mean" not in cfg or "std" not in cfg:
        raise ModinvError(f"timm model {timm_name!r} carries no normalisation in its pretrained config")
    return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


def classifier_meta(net: nn.Module) -> dict[str, Any]:
    """``task`` and ``class_names`` of :class:`~modinv.models.base.ModelMeta` for a timm network: a
    classifier when it has a head, with the ImageNet class names when the head has 1000 classes."""
    classes = int(getattr(net, "num_classes", 0) or 0)
    return {"task": "classification" if classes > 0 else None,
            "class_names": imagenet_class_names() if classes == 1000 else None}


def family_meta(family: Family, net: nn.Module, **runtime: Any) -> ModelMeta:
    """The ``meta`` of a timm-backed adapter of ``family``: the family's declarations
    (:meth:`~modinv.models.family.Family.meta`) with the class names of ``net``'s head; a network
    built without a head (``num_classes=0``) has no task."""
    head = classifier_meta(net)
    meta = family.meta(class_names=head["class_names"], **runtime)
    return meta if head["task"] is not None else dataclasses.replace(meta, task=None)


def how_to_supply(timm_name: str) -> str:
    """The second half of the offline error: where to get the file and how to pass it."""
    try:
        from timm.models import get_pretrained_cfg

        hub_id = get_pretrained_cfg(timm_name).hf_hub_id
    except Exception:  # a timm without the config, or an unknown name
        hub_id = None
    where = f"model.safetensors of https://huggingface.co/{hub_id}" if hub_id else f"timm's weights of {timm_name!r}"
    return (
        f"download {where} where the hub is reachable and pass the local .safetensors (or .pth) file "
        "as weights=PATH (--weights PATH), or use weights='random'"
    )


def strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """``state`` without ``prefix`` when every key has it (an adapter's state dict, e.g. ``swin.``)."""
    if prefix and state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _convert(state: dict[str, Tensor], net: nn.Module, source: str) -> dict[str, Tensor]:
    """``state`` through timm's ``checkpoint_filter_fn`` of ``net``'s family, where it has one."""
    convert = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
    if convert is None:
        return state
    try:
        return convert(state, net)
    except Exception as exc:
        raise ModinvError(f"weights in {source!r} do not fit this model ({brief(exc)})") from None


def create_timm_model(timm_name: str, weights: str | os.PathLike, seed: int = 0, adapter_prefix: str = "",
                      **kwargs: Any) -> nn.Module:
    """``timm.create_model(timm_name, **kwargs)`` with ``weights`` from one of the sources above.

    ``adapter_prefix`` (e.g. ``"swin."``) is removed from a weights file's keys when all carry it, so
    the state dict of a modinv adapter (what fine-tuning saves) loads as well as timm's own.
    """
    import timm

    if not is_path(weights) and str(weights) == "pretrained":
        with seeded(seed):
            return from_hub(lambda: timm.create_model(timm_name, pretrained=True, **kwargs),
                            f"{timm_name} (timm)", how_to_supply(timm_name))
    state = source = None
    if is_path(weights):
        source = os.fspath(weights)
        state = strip_prefix(load_state_file(source), adapter_prefix)
    with seeded(seed):
        net = timm.create_model(timm_name, pretrained=False, **kwargs)
    if state is not None:
        load_into(net, _convert(state, net, source), source)
    return net
