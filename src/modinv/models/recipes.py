"""Training recipes as data: ``modinv`` (the default) and each family's ``paper`` recipe.

A :class:`Recipe` is every training setting in which the authors' scripts (github
``wiskott-lab/inverse-tvm``, commit 4f7d512) differ from modinv's default, held as values that the
training code reads; a model family declares its recipes (``Family.recipes``, listed by ``modinv
models``), and its built models carry them (``model.meta.recipes``).
``--recipe paper`` reproduces what their scripts ran, quirks included (README: "The paper's
recipe"), so that the paper's numbers can be reproduced; the default recipe is sound and fast.

Where their scripts disagree, each paper recipe follows the script that trains the component set
modinv's ``arch="paper"`` builds (their ``parallel_training/modular_in_parallel.py`` for DETR and
ViT/DeiT, ``inv_swin/train.py`` for Swin): the per-component scripts train other bb⁻¹ classes (the
local DETR bb⁻¹, a ViT bb⁻¹ that subtracts the position embedding) or one component alone, while
these train exactly the components whose outputs the paper's Fig. 3/4 chains compose. ViT-B/16's
input normalisation is the exception: the paper trained every ViT-B/16 component on COCO (Sec. 3.3),
through ``tools/coco_utils.py:28-30`` (ImageNet statistics), not the ImageNet script's none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from modinv.errors import ModinvError

RECIPE_NAMES = ("modinv", "paper")  # every name a family may declare (checked before a model loads)
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PRECISIONS = ("auto", "float32")
COMPONENT_MODES = ("train", "eval")
LOSS_SPACES = ("pixels", "normalized")


@dataclass(frozen=True)
class Recipe:
    """The settings of one training recipe (``None``/empty: modinv's default for that setting)."""

    name: str
    batch_size: int | None = None  # global batch (None: the command's default)
    optimizer: str = "adam"  # one optimiser per component
    learning_rates: Mapping[str, float] = field(default_factory=dict)  # stage -> rate (else the model's)
    variant_learning_rates: Mapping[str, float] = field(default_factory=dict)  # "stage=variant" -> rate
    scheduler: str | None = None  # None: constant rate
    grad_clip: float = 1.0  # gradient-norm clip per optimiser
    precision: str = "auto"  # "auto": bf16 autocast where native; "float32": never autocast
    component_mode: str = "train"  # "eval": components train in eval mode (BatchNorm keeps its running stats)
    image_loss_space: str = "pixels"  # bb⁻¹'s loss on [0, 1] pixels or on normalised images
    input_normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # (mean, std); None: the weights'
    classic_learning_rates: Mapping[str, float] = field(default_factory=dict)  # classic path from stage -> rate
    classic_joint: bool = False  # classic: one optimiser (one clip) over the whole path
    finetune_batch_size: int | None = None  # λ fine-tuning's global batch (None: the command's default)
    finetune_learning_rate: float | None = None  # λ fine-tuning: θ's and every φ component's rate
    finetune_component_mode: str | None = None  # λ fine-tuning's component mode (None: component_mode)
    source: str = ""  # where the settings come from

    def __post_init__(self) -> None:
        for value, valid, what in ((self.precision, PRECISIONS, "precision"),
                                   (self.component_mode, COMPONENT_MODES, "component mode"),
                                   (self.finetune_component_mode or "train", COMPONENT_MODES, "fine-tuning mode"),
                                   (self.image_loss_space, LOSS_SPACES, "image loss space")):
            if value not in valid:
                raise ModinvError(f"recipe {self.name!r}: {what} must be one of {', '.join(valid)}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-able (what ``config.json`` and the manifest record)."""
        out = asdict(self)
        out["learning_rates"] = dict(self.learning_rates)
        out["variant_learning_rates"] = dict(self.variant_learning_rates)
        out["classic_learning_rates"] = dict(self.classic_learning_rates)
        if self.input_normalization is not None:
            out["input_normalization"] = {"mean": list(self.input_normalization[0]),
                                          "std": list(self.input_normalization[1])}
        return out


MODINV = Recipe(name="modinv", source="modinv's defaults (DESIGN.md, Training)")

_PAPER = dict(name="paper", precision="float32", component_mode="eval", image_loss_space="normalized",
              classic_joint=True)

DETR_PAPER = Recipe(
    **_PAPER, batch_size=32,
    learning_rates={"bb": 1e-3, "enc": 1e-3, "dec": 1e-3, "pred": 1e-3},
    variant_learning_rates={"bb=local": 3e-3},  # the local bb⁻¹'s own script, modules/inv_detr/inv_bb/train.py:18
    classic_learning_rates={"bb": 1e-3, "enc": 1e-3, "dec": 1e-6, "pred": 1e-6},
    finetune_batch_size=16, finetune_learning_rate=1e-5,
    source="modules/inv_detr/parallel_training/modular_in_parallel.py (classic: e2e_in_parallel.py; "
           "finetune: modules/finetuned_detr/train.py)",
)
VIT_PAPER = Recipe(
    **_PAPER, batch_size=64, learning_rates={"bb": 1e-3, "enc": 1e-4},
    input_normalization=IMAGENET_STATS, classic_learning_rates={"bb": 1e-3, "enc": 1e-4},
    finetune_batch_size=32, finetune_learning_rate=1e-5, finetune_component_mode="train",
    source="modules/inv_vit/parallel_training/modular_in_parallel.py; input: tools/coco_utils.py:28-30 "
           "(classic: e2e_in_parallel.py; finetune: modules/finetuned_vit/train.py)",
)
DEIT_PAPER = Recipe(
    **_PAPER, batch_size=64, learning_rates={"bb": 1e-3, "enc": 1e-4},
    classic_learning_rates={"bb": 1e-3, "enc": 1e-4}, finetune_batch_size=32, finetune_learning_rate=1e-5,
    finetune_component_mode="train",
    source="modules/inv_vit/parallel_training/modular_in_parallel.py (init_vit deit3; classic: e2e_in_parallel.py; "
           "finetune: modules/finetuned_vit/train.py)",
)
SWIN_PAPER = Recipe(
    **_PAPER, batch_size=128, learning_rates={s: 1e-4 for s in ("bb", "s1", "s2", "s3", "s4")},
    classic_learning_rates={"bb": 1e-3, "s1": 1e-3, "s2": 1e-3, "s3": 1e-4, "s4": 1e-4},
    source="modules/inv_swin/train.py (classic: parallel_training/modular_in_parallel.py)",
)


def recipe_names(meta: Any) -> list[str]:
    """The recipes a model's metadata offers: ``modinv`` and those it declares."""
    return ["modinv", *[n for n in getattr(meta, "recipes", {}) if n != "modinv"]]


def get_recipe(model: Any, name: str) -> Recipe:
    """The recipe ``name`` of ``model`` (``modinv`` for every model); one sentence for another name."""
    if name == "modinv":
        return MODINV
    recipes = getattr(model.meta, "recipes", {}) or {}
    if name not in recipes:
        raise ModinvError(f"model {model.name!r} has no recipe {name!r}; its recipes: "
                          f"{', '.join(recipe_names(model.meta))}")
    return recipes[name]


def train_settings(recipe: Recipe, stages: list[str] | None = None, classic_stage: str | None = None,
                   finetune: bool = False, variants: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The :class:`~modinv.training.config.TrainConfig` settings a recipe decides (a command's explicit
    options go on top): batch, rates (a classic run: the rate of its path, for every component;
    fine-tuning: its own rate and batch), clipping, precision, component mode, bb⁻¹'s loss space and
    the recipe's name. ``stages``: the components the run trains; ``variants``: their variants
    (``{"bb": "local"}``), some of which train at a rate of their own."""
    rates = dict(recipe.learning_rates)
    for stage, variant in (variants or {}).items():
        rates[stage] = recipe.variant_learning_rates.get(f"{stage}={variant}", rates.get(stage))
    rates = {s: r for s, r in rates.items() if r is not None}
    if finetune and recipe.finetune_learning_rate is not None:
        rates = {s: recipe.finetune_learning_rate for s in (stages or [])}
    elif classic_stage is not None and classic_stage in recipe.classic_learning_rates:
        rates = {s: recipe.classic_learning_rates[classic_stage] for s in (stages or [])}
    mode = recipe.finetune_component_mode if finetune and recipe.finetune_component_mode else recipe.component_mode
    out: dict[str, Any] = {"recipe": recipe.name, "grad_clip": recipe.grad_clip,
                           "component_mode": mode, "image_loss_space": recipe.image_loss_space,
                           "joint_clip": classic_stage is not None and recipe.classic_joint}
    batch = recipe.finetune_batch_size if finetune else recipe.batch_size
    if batch is not None:
        out["batch_size"] = batch
    if recipe.precision == "float32":
        out["amp"] = "off"
    if stages is not None:
        rates = {s: r for s, r in rates.items() if s in stages}
    out["lr"] = rates
    return out
