"""The StagedModel interface: a frozen vision model cut into named processing stages.

Stage 0 is always the image, named ``"img"`` (float B×3×H×W in [0, 1]); the model's own stages
follow in processing order. A :class:`Trace` holds every stage's representation for one batch plus
the ``context`` that later stages need besides the previous representation (DETR's position
embeddings and pixel mask, token grids). ``run`` continues the forward pass from a possibly edited
stage, which is what the token-noise and intermediate-layer analyses rely on.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from modinv.errors import ModinvError
from modinv.models.roles import PredictionStage, TokenGrid, as_tokens, from_tokens, missing_role, scatter_tokens

IMAGE = "img"
TASKS = ("detection", "classification")
LAYOUTS = ("nchw", "nhwc", "tokens")  # per-sample shapes C×H×W, H×W×C, N×D (see ModelMeta.stage_layouts)


@dataclass(frozen=True)
class ModelMeta:
    """What code outside ``models/`` may know about a model, declared once by its adapter.

    A registered family's adapter builds it with :meth:`modinv.models.family.Family.meta`: the
    family's declared task, normalisation, inverse family, recipes and weights note, plus what only
    the built model knows (class names, layouts, rates); ``timm:``/``hf:``/``from_module`` models
    build it at run time.

    Analyses, training and the CLI ask these fields ("is this a detector?" is ``task ==
    "detection"``); they never test a model's name or class, nor reach into an adapter's modules.

    ``stage_layouts`` says how each stage's tensor is laid out, the one place that does: ``"nchw"``
    (B×C×H×W feature maps, as torchvision and most CNNs keep them), ``"nhwc"`` (channels-last
    B×H×W×C maps, as timm's Swin keeps them) or ``"tokens"`` (B×N×D sequences: ``num_prefix_tokens``
    class/register tokens first, then the patch grid row by row). A stage it leaves out is read from
    its rank (:func:`stage_layout`): N×D tokens, C×H×W maps, D vectors. ``arch="auto"`` inverse
    components are chosen by it (``stage_shapes()`` reports shapes as the tensors are).
    ``finetune_stage`` is the stage j the paper's λ fine-tuning inverts from (None: the caller names one).
    """

    task: str | None = None  # "detection", "classification" or None (no task head)
    class_names: tuple[str, ...] | None = None  # index -> name of the task output's classes
    mean: tuple[float, float, float] | None = None  # input normalisation applied inside the adapter
    std: tuple[float, float, float] | None = None
    inverse_family: str | None = None  # module modinv.inverse.<family> holding the paper's components
    learning_rates: Mapping[str, float] = field(default_factory=dict)  # the paper's per-stage Adam rates
    num_prefix_tokens: int = 0  # class/register tokens before the patch tokens of token stages
    stage_layouts: Mapping[str, str] = field(default_factory=dict)  # stage -> one of LAYOUTS
    finetune_stage: str | None = None  # the paper's stage j of λ fine-tuning (Eq. 3): its inverse starts there
    weights_note: str | None = None  # what weights="pretrained" loads, in one phrase, for reports
    recipes: Mapping[str, Any] = field(default_factory=dict)  # name -> models.recipes.Recipe besides "modinv"

    def __post_init__(self) -> None:
        if self.task is not None and self.task not in TASKS:
            raise ModinvError(f"task must be one of {', '.join(TASKS)} or None, got {self.task!r}")
        bad = {s: v for s, v in self.stage_layouts.items() if v not in LAYOUTS}
        if bad:
            raise ModinvError(f"stage layouts must be one of {', '.join(LAYOUTS)}, got {bad}")


def stage_layout(layouts: Mapping[str, str], stage: str, shape: tuple[int, ...]) -> str:
    """The layout of ``stage`` (per-sample ``shape``): the declared one, else read from the rank
    (``"tokens"`` for N×D, ``"nchw"`` for C×H×W, ``"vector"`` for D); one sentence when a declared
    layout does not fit the rank."""
    declared = layouts.get(stage)
    rank = len(shape)
    if declared is None:
        return {1: "vector", 2: "tokens", 3: "nchw"}.get(rank, f"rank{rank}")
    if rank != (2 if declared == "tokens" else 3):
        raise ModinvError(f"stage {stage!r} is declared {declared!r} but has shape {tuple(shape)}")
    return declared


@dataclass
class Trace:
    """Representations of one batch at every stage reached, in processing order."""

    stages: dict[str, Tensor]
    context: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, stage: str) -> Tensor:
        try:
            return self.stages[stage]
        except KeyError:
            raise KeyError(f"trace has no stage {stage!r}; it holds {list(self.stages)}") from None

    def __contains__(self, stage: object) -> bool:
        return stage in self.stages

    def edit(self, stage: str, value: Tensor) -> "Trace":
        """A copy whose ``stage`` is replaced by ``value`` (context shared, other stages kept)."""
        if stage not in self.stages:
            raise KeyError(f"trace has no stage {stage!r}; it holds {list(self.stages)}")
        stages = dict(self.stages)
        stages[stage] = value
        return Trace(stages, self.context)

    def detach(self) -> "Trace":
        return Trace({k: v.detach() for k, v in self.stages.items()}, _map_tensors(self.context, Tensor.detach))

    def to(self, device: torch.device | str) -> "Trace":
        move = lambda t: t.to(device)  # noqa: E731
        return Trace({k: move(v) for k, v in self.stages.items()}, _map_tensors(self.context, move))

    @property
    def batch_size(self) -> int:
        return next(iter(self.stages.values())).shape[0]


def _map_tensors(obj: Any, fn) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


class StagedModel(nn.Module):
    """A frozen model whose forward pass is exposed stage by stage.

    Adapters set ``name``, ``stages`` and ``input_size`` and implement :meth:`prepare` and
    :meth:`step` (or override :meth:`_advance` when stages cannot be computed one after another),
    :meth:`output` and :meth:`stage_modules`; :meth:`layers` where the model has layer-wise
    representations of a stage's shape.
    """

    name: str
    stages: tuple[str, ...]
    input_size: tuple[int, int]
    weights: str = "random"
    meta: ModelMeta = ModelMeta()

    # -- input normalisation, shared by the adapters ---------------------------------------------
    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """The per-channel input normalisation that :meth:`normalize` applies, as buffers that
        follow the model across devices and stay out of its state dict."""
        for name, value in (("mean", mean), ("std", std)):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """[0, 1] images -> the input the wrapped network expects (:meth:`set_normalization`)."""
        return (images - self.mean) / self.std

    # -- what adapters implement -------------------------------------------------------------
    def prepare(self, images: Tensor) -> dict[str, Any]:
        """Context for the stages of this batch (position embeddings, masks, grid sizes)."""
        return {}

    def step(self, stage: str, x: Tensor, context: dict[str, Any]) -> Tensor:
        """Compute ``stage`` from the representation of the stage before it."""
        raise NotImplementedError

    def output(self, trace: Trace) -> Any:
        """The wrapped model's own task output, computed from the last stage of ``trace``."""
        raise NotImplementedError

    def stage_modules(self) -> dict[str, list[nn.Module]]:
        """The forward modules that produce each stage (used for parameter counts)."""
        raise NotImplementedError

    def layers(self, images: Tensor) -> dict[str, list[Tensor]]:
        """Every intermediate layer output of multi-layer stages, shaped like that stage (the role
        "stacks of same-shape intermediate layers"; absent by default)."""
        raise missing_role("layers", "stacks of same-shape intermediate layers", self)

    # -- roles (modinv.models.roles): what analyses and training ask instead of stage names ----------
    def layer_stacks(self) -> tuple[str, ...]:
        """The stages whose layers :meth:`layers` gives (each layer shaped like a stage); none by default."""
        return ()

    def token_stages(self) -> dict[str, TokenGrid]:
        """The stages whose tokens sit on a patch grid, in processing order (none by default)."""
        return {}

    def token_stage(self, stage: str, who: str = "this analysis") -> TokenGrid:
        """The declared :class:`TokenGrid` of ``stage``, or one sentence naming the missing role."""
        grid = self.token_stages().get(stage)
        if grid is None:
            raise missing_role(who, f"a token stage {stage!r} on a patch grid", self)
        return grid

    def token_position(self, trace: Trace, stage: str) -> Tensor | None:
        """The position embedding of the spatial tokens of ``stage`` (B×N×D or 1×N×D), where its
        :class:`TokenGrid` declares a ``position``; None elsewhere."""
        return None

    def token_content(self, trace: Trace, stage: str) -> Tensor:
        """B×N×D spatial tokens of ``stage`` (prefix tokens dropped, maps read row by row), float32,
        with an ``"embedded"`` position embedding taken out: what the tokens say about their patch."""
        grid = self.token_stage(stage)
        x = as_tokens(trace[stage], grid.layout)[:, grid.num_prefix_tokens:].float()
        if x.shape[1] != grid.n_tokens:
            raise ModinvError(f"{self.name}'s {stage!r} has {x.shape[1]} spatial tokens, not the "
                              f"{grid.grid[0]}×{grid.grid[1]} grid it declares")
        pos = self.token_position(trace, stage)
        if pos is not None and grid.position == "embedded":
            x = x - pos.to(x.device, torch.float32)
        return x

    def replace_tokens(self, trace: Trace, stage: str, indices: Tensor, values: Tensor) -> Tensor:
        """``trace[stage]`` with its spatial tokens ``indices`` (B×k, row-major grid cells) set to
        ``values`` (B×D, one vector per image) plus each token's own position embedding where the
        stage has one (:meth:`token_position`), in the stage's own layout."""
        grid = self.token_stage(stage)
        x = trace[stage]
        tokens = scatter_tokens(as_tokens(x, grid.layout), indices, values, self.token_position(trace, stage),
                                grid.num_prefix_tokens)
        return from_tokens(tokens, grid.layout, x)

    def prediction_stage(self) -> PredictionStage | None:
        """The stage that is the task output and what it holds (None: the output is not a stage)."""
        return None

    def detections(self, trace: Trace, sizes: Tensor | None = None) -> list[dict[str, Tensor]]:
        """Per image the detector's detections from ``trace``: ``scores`` (Q), ``labels`` (Q, int64
        class indices), ``boxes`` (Q×4 xyxy pixels of ``sizes``, B×2 (h, w), default the input
        size), on the CPU; the post-processing of a detector's adapter (absent by default)."""
        raise missing_role("detection", "a detector's post-processing of raw outputs into detections", self)

    def class_scores(self, trace: Trace) -> Tensor:
        """B×classes logits of a classifier from ``trace`` (its :meth:`output` when that is one)."""
        out = self.output(trace)
        if self.meta.task != "classification" or not isinstance(out, Tensor) or out.ndim != 2:
            raise missing_role("top-1 accuracy", "class logits (a classification task)", self)
        return out

    def task_targets(self, batch: Mapping[str, Any], device: torch.device | str = "cpu") -> Any:
        """The targets of :meth:`task_loss` from a collated batch: by default int64 class labels (an
        ImageNet-style source) for cross-entropy; a detector's adapter declares its own."""
        label = batch.get("label")
        if not isinstance(label, Tensor):
            raise ModinvError(f"the objective of {self.name!r} is cross-entropy on class labels: fine-tune with "
                              "λ < 1 on an imagenet:ROOT source (one folder per class)")
        return label.to(device)

    def task_loss(self, output: Any, targets: Any) -> Tensor:
        """The task loss L_OBJ of :meth:`output` against :meth:`task_targets`: by default cross-entropy
        on B×classes logits; a detector's adapter declares its own."""
        if not isinstance(output, Tensor) or output.ndim != 2:
            raise ModinvError(f"model {self.name!r} does not output class logits (B×classes); it cannot be "
                              "fine-tuned with cross-entropy")
        if int(targets.max()) >= output.shape[1]:
            raise ModinvError(f"class label {int(targets.max())} is outside the model's {output.shape[1]} classes")
        return torch.nn.functional.cross_entropy(output.float(), targets)

    # -- the shared machinery -----------------------------------------------------------------
    @property
    def all_stages(self) -> tuple[str, ...]:
        """``("img",) + stages``."""
        return (IMAGE,) + tuple(self.stages)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def previous(self, stage: str) -> str:
        """The stage whose representation ``stage`` is computed from (``"img"`` for the first)."""
        return self.all_stages[self.stage_index(stage) - 1]

    def stage_index(self, stage: str) -> int:
        """Position of ``stage`` in ``all_stages`` (0 is the image)."""
        try:
            return self.all_stages.index(stage)
        except ValueError:
            raise ModinvError(
                f"unknown stage {stage!r} for model {self.name!r}; valid stages: {', '.join(self.stages)}"
            ) from None

    def check_images(self, images: Tensor) -> None:
        """Raise one clear sentence unless ``images`` is a B×3×H×W batch at ``input_size`` of values
        in [0, 1] (1e-3 of rounding allowed) as float32, or float16/bfloat16, which the adapters'
        float32 normalisation promotes. float64 is refused (the network computes in float32: use
        ``images.float()``), uint8 too (``images.float() / 255``); NaN, infinities and 0–255 floats
        are refused with their range, where they would pass silently and give wrong features."""
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ModinvError(f"images must be a float tensor of shape B×3×H×W, got {shape}")
        if images.dtype == torch.uint8:
            raise ModinvError("images must be float in [0, 1], got uint8 (0–255) values; use images.float() / 255")
        if not images.is_floating_point():
            raise ModinvError(f"images must be float in [0, 1], got dtype {str(images.dtype).removeprefix('torch.')}")
        if images.dtype == torch.float64:
            raise ModinvError("images must be float32 in [0, 1], got float64 (the model computes in float32); "
                              "convert them with images.float()")
        if tuple(images.shape[-2:]) != tuple(self.input_size):
            h, w = self.input_size
            raise ModinvError(
                f"model {self.name!r} takes {h}×{w} images, got {images.shape[-2]}×{images.shape[-1]}; "
                "resize them (the data sources do) or load the model with another input_size"
            )
        if images.device.type == "meta" and self.device.type != "meta":  # nothing to copy to the model
            raise ModinvError("images are meta-device tensors, which hold no values; pass real images")
        if images.numel() and images.device.type != "meta":  # a meta tensor (shape dry runs) has no values
            lo, hi = torch.stack(torch.aminmax(images.detach())).tolist()  # NaN propagates to both
            if lo != lo or hi != hi:
                raise ModinvError("images must hold values in [0, 1], but these contain NaN")
            if lo < -1e-3 or hi > 1 + 1e-3:
                hint = "they look like 0–255 pixel values: divide them by 255" if 1 < hi <= 255 and lo >= 0 \
                    else "clamp or rescale them"
                raise ModinvError(f"images must hold values in [0, 1], but these range from {lo:g} to {hi:g}; {hint}")

    def trace(self, images: Tensor, end: str | None = None) -> Trace:
        """Run ``images`` (float B×3×H×W in [0, 1]) through the stages up to ``end`` (default: all)."""
        self.check_images(images)
        images = images.to(self.device)
        start = Trace({IMAGE: images}, self.prepare(images))
        return self.run(start, IMAGE, end or self.stages[-1])

    def run(self, trace: Trace, start: str, end: str) -> Trace:
        """Continue the forward pass from ``trace[start]`` (possibly edited) to ``end``.

        Stages up to ``start`` are kept from ``trace``; later ones are recomputed.
        """
        i, j = self.stage_index(start), self.stage_index(end)
        if j <= i:
            raise ModinvError(f"run needs start before end, got start={start!r}, end={end!r}")
        kept = {name: trace[name] for name in self.all_stages[: i + 1] if name in trace}
        kept.update(self._advance(kept, start, end, trace.context))
        return Trace(kept, trace.context)

    def _advance(self, stages: dict[str, Tensor], start: str, end: str, context: dict[str, Any]) -> dict[str, Tensor]:
        """Compute the stages after ``start`` up to ``end`` one after another with :meth:`step`."""
        i, j = self.stage_index(start), self.stage_index(end)
        x, out = stages[start], {}
        for name in self.all_stages[i + 1 : j + 1]:
            x = self.step(name, x, context)
            out[name] = x
        return out

    def forward(self, images: Tensor) -> Trace:
        return self.trace(images)

    def stage_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of every stage (including ``"img"``), from a dry run on one blank image."""
        if getattr(self, "_stage_shapes", None) is None:
            blank = torch.zeros(1, 3, *self.input_size, device=self.device)
            with torch.no_grad():
                trace = self.trace(blank)
            self._stage_shapes = {k: tuple(v.shape[1:]) for k, v in trace.stages.items()}
        return dict(self._stage_shapes)

    def parameter_counts(self) -> dict[str, int]:
        """Forward parameters of the modules producing each stage."""
        return {
            stage: sum(p.numel() for m in modules for p in m.parameters())
            for stage, modules in self.stage_modules().items()
        }

    def freeze(self) -> "StagedModel":
        """Eval mode, no gradients: how the model produces targets for inverse components."""
        self.eval()
        self.requires_grad_(False)
        return self

    def fuse_for_inference(self) -> None:
        """Adapter hook, called on a :meth:`fast_copy` before any cast: rewrite modules so that
        forward passes cost less and give the same outputs (e.g. fold frozen BatchNorm into the
        convolution before it). The default changes nothing."""

    def fast_copy(self, dtype: torch.dtype | None = None,
                  memory_format: torch.memory_format = torch.contiguous_format) -> "StagedModel":
        """A frozen copy for forward passes in its fastest form; this model is left unchanged.

        Floating weights and buffers are cast once to ``dtype`` (None: kept), so that a forward
        pass under autocast casts no weight per call and the layers between matrix products
        (normalisation, residual sums) compute in ``dtype`` too; the input normalisation stays
        float32. :meth:`fuse_for_inference` runs first, in float32. The weights of 2-D convolutions are laid out in ``memory_format`` (channels-last
        convolutions then keep their activations channels-last: no reorder per layer).
        """
        fast = copy.deepcopy(self).freeze()
        fast.fuse_for_inference()
        if dtype is not None:
            fast.to(dtype)
            for name in ("mean", "std"):  # constants of the input, not weights: float32 like the images
                if isinstance(getattr(fast, name, None), Tensor):
                    setattr(fast, name, getattr(fast, name).float())
        if memory_format != torch.contiguous_format:
            for m in fast.modules():
                if isinstance(m, nn.modules.conv._ConvNd) and m.weight.ndim == 4:
                    m.to(memory_format=memory_format)
        return fast
