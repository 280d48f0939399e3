"""Swin-B (timm ``swin_base_patch4_window7_224``) as a staged model.

Stages (224×224 input; channels-last maps B×H×W×C, as timm keeps them):

====== ==================================== ============
stage  what                                 shape
====== ==================================== ============
``bb`` patch embedding with its LayerNorm   56×56×128
``s1`` timm ``layers.0`` (2 blocks)         56×56×128
``s2`` ``layers.1`` (patch merging, 2)      28×28×256
``s3`` ``layers.2`` (patch merging, 18)     14×14×512
``s4`` ``layers.3`` (patch merging, 2)      7×7×1024
====== ==================================== ============

(timm merges patches at the *start* of stages 2–4, so each stage's output is timm's ``layers``
output.) Images enter in [0, 1] and are normalised inside with the mean and std of the timm
model's pretrained config (ImageNet statistics). ``output()`` is the classifier's logits: timm's
final norm and head applied to ``s4``. ``layers()`` gives, per stage, the blocks' input (bb, or
the patch-merged map) and every block's output, all of the stage's shape. The paper's inverse
components are in :mod:`modinv.inverse.swin` (``meta.inverse_family == "swin"``).

Other keyword options of :func:`build` (``embed_dim``, ``depths``, ``num_heads``, ``window_size``)
go to timm's constructor: a smaller Swin of the same code, for tests.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from modinv.models.base import StagedModel, Trace
from modinv.models.family import Family, register_family
from modinv.models.roles import TokenGrid
from modinv.models.recipes import SWIN_PAPER
from modinv.models.modules import IMAGENET_MEAN, IMAGENET_STD
from modinv.models.timm_loader import check_input_size, create_timm_model, family_meta

TIMM_NAME = "swin_base_patch4_window7_224"
NAME = "swin-b"
LEARNING_RATE = 1e-4  # the paper's Adam rate of every Swin component
STRIDE = 32  # patch 4 × three patch mergings

__all__ = ["NAME", "TIMM_NAME", "SwinStagedModel", "build"]


class SwinStagedModel(StagedModel):
    """A timm ``SwinTransformer`` exposed through the stages ``bb, s1 … s<n>`` (``n`` = its stages).

    ``swin`` is the wrapped timm model; ``mean`` and ``std`` (buffers, 1×3×1×1) the input
    normalisation from its pretrained config.
    """

    def __init__(self, swin: nn.Module, name: str = NAME) -> None:
        super().__init__()
        self.swin = swin
        self.name = name
        self.stages = ("bb",) + tuple(f"s{i + 1}" for i in range(len(swin.layers)))
        self.input_size = tuple(int(s) for s in swin.patch_embed.img_size)
        # The normalisation of the timm config, as the family declares it; not weights: kept out of the state dict.
        self.set_normalization(FAMILY.mean, FAMILY.std)
        self.meta = family_meta(
            FAMILY, swin,
            learning_rates={stage: LEARNING_RATE for stage in self.stages},
            num_prefix_tokens=0, stage_layouts={stage: "nhwc" for stage in self.stages},
        )

    def step(self, stage: str, x: Tensor, context: dict[str, Any]) -> Tensor:
        if stage == "bb":
            self.check_images(x)
            return self.swin.patch_embed(self.normalize(x))
        return self.swin.layers[self.stage_index(stage) - 2](x)

    def output(self, trace: Trace) -> Tensor:
        """Class logits (B×classes) from the last stage: timm's final norm, then its head."""
        return self.swin.forward_head(self.swin.norm(trace[self.stages[-1]]))

    def token_stages(self) -> dict[str, TokenGrid]:
        """Every stage: one token per map position (channels-last), attention within windows of the
        stage's blocks; no absolute position embedding (Swin's is a relative bias inside attention)."""
        grid = tuple(int(g) for g in self.swin.patch_embed.grid_size)
        out = {self.stages[0]: TokenGrid(grid, layout="nhwc", window=_window(self.swin.layers[0]))}
        for stage, layer in zip(self.stages[1:], self.swin.layers):
            out[stage] = TokenGrid(tuple(int(g) for g in layer.output_resolution), layout="nhwc", window=_window(layer))
        return out

    def stage_modules(self) -> dict[str, list[nn.Module]]:
        return {"bb": [self.swin.patch_embed], **{s: [m] for s, m in zip(self.stages[1:], self.swin.layers)}}

    def layer_stacks(self) -> tuple[str, ...]:
        return tuple(self.stages[1:])

    def layers(self, images: Tensor) -> dict[str, list[Tensor]]:
        """``{stage: [block input, block 1 output, …]}`` for s1 … s<n>; the last tensor is the stage."""
        x = self.step("bb", images.to(self.device), {})
        out = {}
        for stage, layer in zip(self.stages[1:], self.swin.layers):
            x = layer.downsample(x)
            outs = [x]
            for block in layer.blocks:
                x = block(x)
                outs.append(x)
            out[stage] = outs
        return out


def _window(layer: nn.Module) -> tuple[int, int]:
    """The attention window (rows, columns of tokens) of a timm Swin stage's blocks."""
    size = layer.blocks[0].window_size
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def build(weights: str | os.PathLike = "pretrained", seed: int = 0, input_size: Any = None,
          **timm_options: Any) -> SwinStagedModel:
    """Swin-B with stages ``bb, s1 … s4``, frozen in eval mode (see the module docstring).

    ``weights``: ``"pretrained"`` (timm's default weights, through the local cache first),
    ``"random"`` (timm's initialisation under ``seed``) or the path of a timm state dict
    (.safetensors or .pth; a swin-b adapter's own state dict works too). ``input_size``: None for
    the family's 224×224.
    """
    size = check_input_size(input_size or FAMILY.input_size, STRIDE, "Swin")
    known = {"embed_dim", "depths", "num_heads", "window_size", "num_classes"}
    options = {k: v for k, v in timm_options.items() if k in known}
    swin = create_timm_model(TIMM_NAME, weights, seed, adapter_prefix="swin.", img_size=size, **options)
    return SwinStagedModel(swin, name=NAME).freeze()


_SHAPES = {"bb": (56, 56, 128), "s1": (56, 56, 128), "s2": (28, 28, 256), "s3": (14, 14, 512), "s4": (7, 7, 1024)}
FAMILY = register_family(Family(
    name=NAME, builder=build, summary=f"Swin-B (timm {TIMM_NAME}), ImageNet classifier",
    task="classification", stages=tuple(_SHAPES), stage_shapes=_SHAPES, input_size=(224, 224),
    mean=IMAGENET_MEAN, std=IMAGENET_STD, weights=(f"timm {TIMM_NAME}",), inverse_family="swin",
    recipes={"paper": SWIN_PAPER},
))
