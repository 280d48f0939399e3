"""Model families as data: what a model is, readable without building it.

A family registers itself where it is defined, next to its builder::

    register_family(Family(name="my-net", builder=build, stages=("s1", "s2"),
                           stage_shapes={"s1": (64, 56, 56), "s2": (128, 28, 28)}, input_size=(224, 224),
                           task="classification", mean=IMAGENET_MEAN, std=IMAGENET_STD))

:mod:`modinv.models.registry` finds the families of modinv's own adapters and those of other
packages (entry-point group ``modinv.models``), builds models by name and lists them
(``modinv models``, :func:`modinv.list_models`) from this data alone. An adapter builds its
model's ``meta`` from its family (:meth:`Family.meta`), so task, normalisation, inverse family,
recipes and weights note are declared once; its ``stage_shapes()`` must agree with the declared
shapes (a test checks every built-in family).

This module imports no adapter, so that the listing stays fast.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modinv.errors import ModinvError
from modinv.models.base import TASKS, ModelMeta
from modinv.models.recipes import RECIPE_NAMES, Recipe, recipe_names

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*:?$")  # "detr-r50", or a prefix such as "timm:"


@dataclass(frozen=True)
class Family:
    """One loadable model name and what it declares, as plain data.

    ``builder`` is the function ``(weights, seed, **options) -> StagedModel`` or its
    ``"module:function"`` (imported when a model is built). A name ending in ``:`` is a prefix:
    ``load_model("timm:resnet18")`` calls its builder with ``source="resnet18"``; its stages depend
    on the source, so it declares none. ``stage_shapes`` are per-sample shapes at ``input_size``
    (the default size), without the image. ``weights`` names where ``weights="pretrained"`` comes
    from. ``inverse_module`` is the module whose import registers the family's inverse component
    kinds (default: ``modinv.inverse.<inverse_family>``, modinv's own). ``recipes`` maps each
    training recipe the family declares besides ``modinv`` (every model's default) to its
    :class:`~modinv.models.recipes.Recipe`. ``weights_note`` says in one phrase what
    ``weights="pretrained"`` loads, for reports; ``offline_pretrained`` declares that those weights
    load without the network (the offline demo runs on such a family).
    """

    name: str
    builder: Callable[..., Any] | str
    summary: str = ""
    task: str | None = None
    stages: tuple[str, ...] = ()
    stage_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    input_size: tuple[int, int] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    weights: tuple[str, ...] = ()
    inverse_family: str | None = None
    inverse_module: str | None = None
    recipes: Mapping[str, Recipe] = field(default_factory=dict)
    weights_note: str | None = None
    offline_pretrained: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise ModinvError(f"a model family name is lower-case letters, digits, '.', '_' or '-' (a prefix "
                              f"ends in ':'), got {self.name!r}")
        if not (callable(self.builder) or (isinstance(self.builder, str) and self.builder.count(":") == 1)):
            raise ModinvError(f"the builder of model family {self.name!r} must be a function or 'module:function', "
                              f"got {self.builder!r}")
        if self.task is not None and self.task not in TASKS:
            raise ModinvError(f"task of model family {self.name!r} must be one of {', '.join(TASKS)} or None, "
                              f"got {self.task!r}")
        if set(self.stage_shapes) - set(self.stages):
            raise ModinvError(f"model family {self.name!r} gives shapes of stages it does not list: "
                              f"{sorted(set(self.stage_shapes) - set(self.stages))}")
        if self.is_prefix and self.stages:
            raise ModinvError(f"the prefix {self.name!r} stages whatever model follows it; it declares no stages")
        self._check_recipes()

    def _check_recipes(self) -> None:
        if not isinstance(self.recipes, Mapping):
            raise ModinvError(f"the recipes of model family {self.name!r} map a name to a Recipe, "
                              f"got {type(self.recipes).__name__}")
        for name, recipe in self.recipes.items():
            if name not in RECIPE_NAMES or name == "modinv" or not isinstance(recipe, Recipe) or recipe.name != name:
                raise ModinvError(f"model family {self.name!r} declares recipe {name!r} as {recipe!r}; a family "
                                  f"declares Recipe objects of their own names among {', '.join(RECIPE_NAMES[1:])}")

    def meta(self, **runtime: Any) -> ModelMeta:
        """The :class:`ModelMeta` of a model built from this family: the declared task,
        normalisation, inverse family, recipes and weights note, plus ``runtime``, what only the
        built model knows (class names, layouts, learning rates...). Redeclaring a declared field
        is refused, so each fact has one source."""
        declared = dict(task=self.task, mean=self.mean, std=self.std, inverse_family=self.inverse_family,
                        recipes=dict(self.recipes), weights_note=self.weights_note)
        twice = sorted(set(runtime) & set(declared))
        if twice:
            raise ModinvError(f"model family {self.name!r} declares {', '.join(twice)} already; the built model "
                              "takes them from the family")
        return ModelMeta(**declared, **runtime)

    @property
    def is_prefix(self) -> bool:
        """Whether the name is a prefix (``"timm:"``) that a source name completes."""
        return self.name.endswith(":")

    @property
    def display_name(self) -> str:
        """``"timm:<name>"`` for a prefix, else the name."""
        return self.name + "<name>" if self.is_prefix else self.name

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of the image (``"img"``, 3×H×W) and of every declared stage."""
        image = {"img": (3, *self.input_size)} if self.input_size else {}
        return {**image, **{s: tuple(self.stage_shapes[s]) for s in self.stages if s in self.stage_shapes}}

    def describe(self) -> dict[str, Any]:
        """The family as JSON-able data (what ``modinv models --json`` prints)."""
        return {
            "name": self.display_name, "summary": self.summary, "task": self.task, "stages": list(self.stages),
            "shapes": {s: list(v) for s, v in self.shapes().items()},
            "input_size": list(self.input_size) if self.input_size else None,
            "mean": list(self.mean) if self.mean else None, "std": list(self.std) if self.std else None,
            "weights": list(self.weights), "inverse_family": self.inverse_family, "recipes": recipe_names(self),
            "weights_note": self.weights_note, "offline_pretrained": self.offline_pretrained,
        }


_FAMILIES: dict[str, Family] = {}  # name -> family, in registration order


def register_family(family: Family) -> Family:
    """Make ``family`` loadable and listed by its name; returns it. A second family under a name
    already taken is refused (registering the same declaration again, e.g. on re-import, is not)."""
    if not isinstance(family, Family):
        raise ModinvError(f"register_family takes a modinv.models.family.Family, got {type(family).__name__}")
    known = _FAMILIES.get(family.name)
    if known is not None and _key(known) != _key(family):
        raise ModinvError(f"a model family named {family.name!r} is registered already (by "
                          f"{_origin(known)}); choose another name")
    _FAMILIES[family.name] = family
    return family


def registered() -> dict[str, Family]:
    """Every family registered so far, by name (without looking for more: see the registry)."""
    return dict(_FAMILIES)


def _key(family: Family) -> tuple:
    builder = family.builder
    where = builder if isinstance(builder, str) else f"{builder.__module__}:{builder.__qualname__}"
    return (where, family.stages, tuple(family.stage_shapes.items()), family.input_size, family.task)


def _origin(family: Family) -> str:
    builder = family.builder
    return builder.split(":")[0] if isinstance(builder, str) else getattr(builder, "__module__", "?")
