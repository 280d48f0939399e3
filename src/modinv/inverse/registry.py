"""Kinds of inverse components: JSON config in, ``nn.Module`` out (no eval, no pickle).

Every component kind has one build function taking JSON-able keyword arguments. The module it
returns carries ``config = {"kind": kind, **all arguments}``, so ``build_component(module.config)``
rebuilds the same architecture (the weights come from a safetensors file).

Component families live one per module: modinv's own are ``modinv.inverse.<family>`` (listed in
:data:`FAMILIES`); another package's are the module its model family declares
(``Family(inverse_family="mine", inverse_module="my_package.inverse")``, found through the
``modinv.models`` entry points) or registers with :func:`register_inverse_family`. A family module
holds ``@register`` builders, and ``paper_specs`` if it has paper components. A model names its
family in ``model.meta.inverse_family``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from types import ModuleType
from typing import Any, Callable, Mapping

from torch import nn

from modinv.errors import ModinvError
from modinv.models.registry import families as model_families

Builder = Callable[..., nn.Module]
_KINDS: dict[str, Builder] = {}  # kind -> builder
# Arguments a kind gained after chains were saved with it, and the value an old config (without the
# argument) implies: register(kind, legacy={...}); upgrade_config() fills them in on load.
_LEGACY: dict[str, dict[str, Any]] = {}
# modinv's own families: modules modinv.inverse.<family> whose import registers their kinds (on first look-up).
FAMILIES = ("detr", "vit", "swin", "auto")
_REGISTERED_FAMILIES: dict[str, str] = {}  # family -> module, from register_inverse_family


def _jsonable(obj: Any) -> Any:
    """A canonical JSON round-trip (tuples become lists) so configs compare equal after a reload."""
    try:
        return json.loads(json.dumps(obj))
    except TypeError as exc:
        raise ModinvError(f"component config is not JSON-able: {exc}") from None


def register(kind: str, legacy: Mapping[str, Any] | None = None) -> Callable[[Builder], Builder]:
    """Decorator: ``fn(**kwargs) -> nn.Module`` becomes the builder of ``kind``.

    ``legacy``: arguments added after chains were saved with this kind, with the value a saved config
    lacking them stood for (new builds take the function's defaults; :func:`upgrade_config` these).
    """

    def wrap(fn: Builder) -> Builder:
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
        _LEGACY[kind] = dict(legacy or {})
        return build

    return wrap


def register_inverse_family(family: str, module: str) -> None:
    """Make ``family`` (what a model's ``meta.inverse_family`` names) the components of ``module``,
    whose import registers its kinds; for families no model family declares."""
    known = family_modules().get(family)
    if known is not None and known != module:
        raise ModinvError(f"the inverse family {family!r} is {known} already")
    _REGISTERED_FAMILIES[family] = module


def family_modules() -> dict[str, str]:
    """Every inverse family and its module: modinv's own, those model families declare (plugins
    included) and those registered with :func:`register_inverse_family`."""
    found = {name: f"modinv.inverse.{name}" for name in FAMILIES}
    for family in model_families().values():
        if family.inverse_family and family.inverse_module:
            found.setdefault(family.inverse_family, family.inverse_module)
    return found | {name: module for name, module in _REGISTERED_FAMILIES.items() if name not in found}


def _load_families() -> None:
    for module in family_modules().values():
        importlib.import_module(module)


def family_module(family: str) -> ModuleType:
    """The module of an inverse family (``modinv.inverse.<family>`` for modinv's own)."""
    modules = family_modules()
    if family not in modules:
        raise ModinvError(f"unknown inverse family {family!r}; known families: {', '.join(modules)}")
    return importlib.import_module(modules[family])


def paper_specs_of(family: str) -> Callable[..., dict[str, dict[str, Any]]]:
    """``paper_specs(shapes, context, variants, stages)`` of ``family``: its paper components."""
    specs = getattr(family_module(family), "paper_specs", None)
    if specs is None:
        raise ModinvError(f"the inverse family {family!r} has no paper components (no paper_specs); use arch='auto'")
    return specs


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


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the values its kind's ``legacy`` arguments had before they existed
    (a config saved by :func:`register` lists every argument, so a missing one means an older save)."""
    _load_families()
    if not isinstance(config, dict) or config.get("kind") not in _LEGACY:
        return config  # build_component says what is wrong with it
    return {**_LEGACY[config["kind"]], **config}
