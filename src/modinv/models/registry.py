"""Named staged models: ``load_model("detr-r50", weights="random")``, ``list_models("vit*")`` and friends.

Families (:class:`~modinv.models.family.Family`) register themselves where they are defined. On
the first look-up the registry imports modinv's own adapter modules (every module of this package,
so a new adapter file is all a new built-in family takes) and loads, once, the entry points of the
group ``modinv.models`` that other packages declare, e.g. in their ``pyproject.toml``::

    [project.entry-points."modinv.models"]
    my-net = "my_package.modinv_family"      # a module that calls register_family(...) on import

An entry point may also name a :class:`Family`, a list of them, or a function returning either.
A plugin that fails to load is skipped with a warning naming it.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import operator
import pkgutil
import types
import warnings
from collections.abc import Iterable
from typing import Any, Callable

import torch

from modinv.errors import ModinvError
from modinv.models.base import StagedModel
from modinv.models.family import Family, register_family, registered
from modinv.runtime import check_seed, resolve_device

ENTRY_POINT_GROUP = "modinv.models"
_loaded = False


def _load_builtin() -> None:
    """Import every module of this package: modinv's adapters register their families on import."""
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{module.name}")


def _register_plugin(obj: Any, label: str) -> None:
    """Register what an entry point gave: a module (registered on import), a Family, a list of
    them, or a function returning either."""
    if isinstance(obj, types.ModuleType):
        return  # its import registered its families
    if callable(obj) and not isinstance(obj, Family):
        obj = obj()  # a function returning families (or registering them and returning None)
    if obj is None:
        return
    found = [obj] if isinstance(obj, Family) else obj
    if not isinstance(found, (list, tuple)) or not all(isinstance(f, Family) for f in found):
        raise ModinvError(f"the entry point {label} gives {type(obj).__name__}, not a module, a Family or a list of "
                          "them")
    for family in found:
        register_family(family)


def load_plugins(entry_points: Iterable[importlib.metadata.EntryPoint] | None = None) -> None:
    """Register the families of the ``modinv.models`` entry points (all installed ones by default)."""
    for ep in entry_points if entry_points is not None else importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        label = f"{ep.name} = {ep.value}"
        try:
            _register_plugin(ep.load(), label)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop modinv: say which and go on
            warnings.warn(f"skipped the model plugin {label!r} ({type(exc).__name__}: {exc})", stacklevel=2)


def families() -> dict[str, Family]:
    """Every registered family by name (modinv's own and the plugins'), without building a model."""
    global _loaded
    if not _loaded:
        _loaded = True  # first: a plugin that lists models while it loads does not start loading again
        try:
            _load_builtin()
        except BaseException:
            _loaded = False  # an adapter that failed to import fails the next look-up too
            raise
        load_plugins()
    return registered()


def _resolve(name: str) -> tuple[Family, dict[str, Any]]:
    """The family ``name`` belongs to and the builder's extra arguments (``source=`` of a prefix)."""
    known = families()
    if not isinstance(name, str):
        raise ModinvError(f"a model name is a string, got {type(name).__name__}")
    if name in known and not known[name].is_prefix:
        return known[name], {}
    for family in known.values():
        if family.is_prefix and name.startswith(family.name) and len(name) > len(family.name):
            return family, {"source": name[len(family.name):]}
    raise ModinvError(f"unknown model {name!r}; valid models: {', '.join(available_models())}")


def model_family(name: str) -> Family:
    """The declared family of a model name (for ``timm:resnet18``: the ``timm:`` prefix's)."""
    return _resolve(name)[0]


def available_models() -> list[str]:
    """Registered model names, then the prefixes (``timm:<name>``, ``hf:<name>``) that stage any model."""
    known = families().values()
    return sorted(f.name for f in known if not f.is_prefix) + [f.display_name for f in known if f.is_prefix]


def list_models(pattern: str | Iterable[str] = "*", task: str | None = None) -> list[str]:
    """Names of the registered models matching ``pattern`` (shell-style, e.g. ``"vit*"``; a list
    matches any of its patterns) and, if given, ``task``; prefixes are listed as ``timm:<name>``."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return [name for name in available_models()
            if any(fnmatch.fnmatchcase(name, p) for p in patterns)
            and (task is None or families()[name.removesuffix("<name>")].task == task)]


def _builder(family: Family) -> Callable[..., StagedModel]:
    if callable(family.builder):
        return family.builder
    module, func = family.builder.split(":")
    return getattr(importlib.import_module(module), func)


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
    family, extra = _resolve(name)
    device, seed = resolve_device(device, allow_meta=True), check_seed(seed)  # before anything is built
    if "input_size" in options:
        options["input_size"] = check_input_size(options["input_size"])
    model = _builder(family)(weights=str(weights), seed=seed, **extra, **options)
    model.weights = str(weights)
    model.seed = seed  # random weights are known by their seed (a chain records it)
    return model.freeze().to(device)
