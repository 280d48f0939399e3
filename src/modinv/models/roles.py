"""Roles: what analyses and training ask a model for instead of its stage names or classes.

A :class:`~modinv.models.base.StagedModel` declares its roles through a few methods (defaults: the
role is absent); an analysis that needs one asks for it and otherwise refuses with
:func:`missing_role`'s one sentence, e.g. "structure needs a prediction stage with class and box
outputs; swin-b declares none".

- :class:`TokenGrid` (``model.token_stages()``): the stages whose tokens sit on a patch grid, with
  their prefix (class, register) tokens, their layout, the window grid of windowed attention (Swin)
  and how positions reach them (``"added"`` beside the tokens at every layer, as DETR's sine
  embedding; ``"embedded"`` once into the tokens, as a ViT's learned embedding; None). The model
  replaces tokens with ``model.replace_tokens`` (position embedding included) and gives their
  content with ``model.token_content``.
- :class:`PredictionStage` (``model.prediction_stage()``): the stage that *is* the task output and
  what it holds (``("class", "box")`` for DETR's ``pred``); ``model.detections(trace)`` turns raw
  outputs into detections (the post-processing lives beside the adapter), ``model.class_scores``
  into class logits.
- the task targets and loss (``model.task_targets(batch)``, ``model.task_loss(output, targets)``)
  and the stacks of same-shape intermediate layers (``model.layers(images)``).

The helpers here (layout conversion, the token scatter) are what the default implementations on
:class:`~modinv.models.base.StagedModel` use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from modinv.errors import ModinvError

POSITIONS = ("added", "embedded")
TOKEN_LAYOUTS = ("tokens", "nhwc", "nchw")


@dataclass(frozen=True)
class TokenGrid:
    """A stage whose spatial tokens sit on a ``grid`` (rows, columns), row by row.

    ``layout``: ``"tokens"`` (B×N×D, ``num_prefix_tokens`` first), ``"nhwc"`` (B×H×W×C, one token per
    map position) or ``"nchw"``. ``window``: the window (rows, columns of tokens) that attention is
    restricted to at this stage (Swin), None for global attention. ``position``: ``"added"`` (a
    position embedding enters every layer beside the tokens, DETR), ``"embedded"`` (it was added to
    the tokens once, a ViT's embedding stage) or None (no explicit positions at this stage).
    """

    grid: tuple[int, int]
    num_prefix_tokens: int = 0
    layout: str = "tokens"
    window: tuple[int, int] | None = None
    position: str | None = None

    def __post_init__(self) -> None:
        if self.layout not in TOKEN_LAYOUTS:
            raise ModinvError(f"token layouts are {', '.join(TOKEN_LAYOUTS)}, got {self.layout!r}")
        if self.position is not None and self.position not in POSITIONS:
            raise ModinvError(f"token positions are {', '.join(POSITIONS)} or None, got {self.position!r}")

    @property
    def n_tokens(self) -> int:
        """Number of spatial tokens (grid cells)."""
        return int(self.grid[0]) * int(self.grid[1])


@dataclass(frozen=True)
class PredictionStage:
    """The stage that is the model's task output, and what its rows hold (e.g. ``("class", "box")``)."""

    stage: str
    outputs: tuple[str, ...]


def missing_role(who: str, role: str, model) -> ModinvError:
    """The one sentence with which ``who`` (an analysis, a training objective) refuses a model
    that does not declare ``role``: "``who`` needs ``role``; <model> declares none"."""
    return ModinvError(f"{who} needs {role}; {model.name} declares none")


def as_tokens(x: Tensor, layout: str) -> Tensor:
    """B×T×D tokens of a stage tensor in ``layout`` (maps flattened row by row)."""
    if layout == "tokens":
        return x
    if layout == "nhwc":
        return x.flatten(1, 2)
    return x.flatten(2).transpose(1, 2)


def from_tokens(tokens: Tensor, layout: str, like: Tensor) -> Tensor:
    """The inverse of :func:`as_tokens`: ``tokens`` back into the shape and layout of ``like``."""
    if layout == "tokens":
        return tokens
    if layout == "nhwc":
        return tokens.reshape(like.shape)
    b, c, h, w = like.shape
    return tokens.transpose(1, 2).reshape(b, c, h, w)


def scatter_tokens(x: Tensor, indices: Tensor, values: Tensor, pos: Tensor | None = None,
                   num_prefix_tokens: int = 0) -> Tensor:
    """A copy of ``x`` (B×T×D) whose spatial tokens ``indices`` (B×k, counted after the
    ``num_prefix_tokens`` prefix tokens) are ``values`` (B×D, the same for all k) plus, if given,
    their own rows of ``pos`` (B×N×D or 1×N×D spatial position embeddings)."""
    b, _, d = x.shape
    if indices.ndim != 2 or indices.shape[0] != b:
        raise ValueError(f"indices must be B×k with B={b}, got {tuple(indices.shape)}")
    indices = indices.to(x.device)
    value = values.to(x.device, torch.float32)[:, None, :].expand(b, indices.shape[1], d)
    if pos is not None:
        rows = pos.to(x.device, torch.float32).expand(b, -1, -1)
        value = value + torch.gather(rows, 1, indices[..., None].expand(-1, -1, d))
    out = x.clone()
    out.scatter_(1, (indices + num_prefix_tokens)[..., None].expand(-1, -1, d), value.to(x.dtype))
    return out
