"""Kinds of inverse components: JSON config in, ``nn.Module`` out (no eval, no pickle).

Every component kind has one build function taking JSON-able keyword arguments. The module it
returns carries ``config = {"kind": kind, **all arguments}``, so ``build_component(module.config)``
rebuilds the same architecture (the weights come from a safetensors file).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from typing import Any, Callable

from torch import nn

from modinv.errors import ModinvError

_KINDS: dict[str, Callable[..., nn.Module]] = {}
# Modules whose import registers kinds; imported on first look-up.
_FAMILIES = ("modinv.inverse.detr", "modinv.inverse.vit", "modinv.inverse.auto")


def _jsonable(obj: Any) -> Any:
    """A canonical JSON round-trip (tuples become lists) so configs compare equal after a reload."""
    try:
        return json.loads(json.dumps(obj))
    except TypeError as exc:
        raise ModinvError(f"component config is not JSON-able: {exc}") from None


def register(kind: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: ``fn(**kwargs) -> nn.Module`` becomes the builder of ``kind``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def build(**kwargs: Any) -> nn.Module:
            try:
                bound = signature.bind(**kwargs)
            except TypeError as exc:
                raise ModinvError(f"bad arguments for inverse component {kind!r}: {exc}") from None
            bound.apply_defaults()
            config = _jsonable({"kind": kind, **bound.arguments})
            module = fn(**{k: v for k, v in config.items() if k != "kind"})
            module.config = config
            return module

        if kind in _KINDS:
            raise ValueError(f"inverse component kind {kind!r} registered twice")
        _KINDS[kind] = build
        return build

    return wrap


def _load_families() -> None:
    for name in _FAMILIES:
        importlib.import_module(name)


def component_kinds() -> list[str]:
    """Every registered kind, e.g. ``detr.bb``, ``vit.enc``, ``auto.tokens``."""
    _load_families()
    return sorted(_KINDS)


def build_component(config: dict[str, Any]) -> nn.Module:
    """Rebuild a component from its JSON config (``{"kind": ..., **constructor kwargs}``)."""
    _load_families()
    if not isinstance(config, dict) or "kind" not in config:
        raise ModinvError(f"an inverse component config is a dict with a 'kind', got {config!r}")
    kind = config["kind"]
    if kind not in _KINDS:
        raise ModinvError(f"unknown inverse component kind {kind!r}; valid kinds: {', '.join(sorted(_KINDS))}")
    return _KINDS[kind](**{k: v for k, v in config.items() if k != "kind"})
