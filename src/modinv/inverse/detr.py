"""DETR-R50's inverse components (``arch="paper"``): bb⁻¹ (standard and local), enc⁻¹, dec⁻¹, pred⁻¹.

Stage shapes (480×640 input): bb and enc 300×256 tokens on a 15×20 grid, dec 100×256, pred 100×96
(92 class logits then the box cx, cy, w, h). Smaller inputs give smaller grids (``context["grid"]``);
the sine position embedding comes from ``context["pos"]`` (computed from the grid when absent).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modinv.errors import ModinvError
from modinv.inverse.blocks import (
    GridDecoder,
    build_decoder,
    build_encoder,
    deconv,
    grid_of,
    init_,
    mlp,
    output_head,
    sine_position_embedding,
)
from modinv.inverse.registry import register

STRIDE = 32


def position(context: dict[str, Any] | None, x: Tensor, grid: Sequence[int] | None) -> Tensor:
    """The encoder tokens' position embedding: ``context["pos"]`` or DETR's sine embedding of the grid."""
    pos = (context or {}).get("pos")
    if pos is None:
        pos = sine_position_embedding(grid_of(context or {}, grid), x.shape[-1], device=x.device)
    return pos


# -- bb⁻¹ ------------------------------------------------------------------------------------------

@register("detr.bb")
def build_bb(d_model: int = 256, grid: Sequence[int] = (15, 20), out_size: Sequence[int] = (480, 640),
             channels: Sequence[int] = (2048, 1792, 1536), up_channels: Sequence[int] = (1024, 512, 256, 128, 64),
             out_channels: int = 3) -> nn.Module:
    """Tokens -> grid -> ConvTranspose k1, k3, k3 (same size), five ×2 upsamplings, k3 -> image."""
    layers: list[nn.Module] = []
    widths = [d_model, *channels]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers += deconv(a, b, 1 if i == 0 else 3, 1)
    prev = widths[-1]
    for c in up_channels:
        layers += deconv(prev, c, 3, 2)
        prev = c
    layers += deconv(prev, out_channels, 3, 1, norm_act=False)
    return GridDecoder(nn.Sequential(*layers), output_head("sigmoid"), grid, 0, out_size, 2 ** len(up_channels))


@register("detr.bb_local")
def build_bb_local(d_model: int = 256, grid: Sequence[int] = (15, 20), out_size: Sequence[int] = (480, 640),
                   depth: int = 4, patch: int = STRIDE, out_channels: int = 3) -> nn.Module:
    """Each token alone paints its own patch: ``depth`` 1×1 convs + ReLU, ConvTranspose k=s=patch."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(d_model, d_model, 1), nn.ReLU(inplace=True)]
    layers += deconv(d_model, out_channels, patch, patch, norm_act=False)
    return GridDecoder(nn.Sequential(*layers), output_head("sigmoid"), grid, 0, out_size, patch)


# -- enc⁻¹ -----------------------------------------------------------------------------------------

class EncoderInverse(nn.Module):
    """x_enc -> x_bb with a DETR encoder; the sine position embedding enters every layer's Q and K."""

    def __init__(self, encoder: nn.Module, grid: Sequence[int] | None = None):
        super().__init__()
        self.encoder = encoder
        self.grid = tuple(grid) if grid is not None else None

    def forward(self, x: Tensor, context: dict[str, Any] | None = None) -> Tensor:
        return self.encoder(x, position(context, x, self.grid))


@register("detr.enc", legacy={"init": "xavier"})  # chains saved before init existed were Xavier-initialised
def build_enc(d_model: int = 256, nhead: int = 8, dim_ff: int = 2048, depth: int = 6, dropout: float = 0.0,
              grid: Sequence[int] | None = (15, 20), init: str = "torch") -> nn.Module:
    """DETR encoder layers (post-norm), PyTorch's initialisation as the authors' (they did not
    re-initialise their ``InverseTransformerEncoder`` as DETR's ``Transformer`` does)."""
    encoder = init_(build_encoder(depth, d_model, nhead, dim_ff, dropout, "relu", norm_first=False), init)
    return EncoderInverse(encoder, grid)


# -- dec⁻¹ -----------------------------------------------------------------------------------------

class DecoderInverse(nn.Module):
    """x_dec -> x_enc: blank (zero) tokens, one per grid cell, carrying the sine position embedding
    as query position, self-attend and cross-attend to the decoder outputs, which carry a learned
    position embedding of the inverse's own (``memory_pos``)."""

    def __init__(self, decoder: nn.Module, memory_pos: nn.Embedding, grid: Sequence[int] | None = None):
        super().__init__()
        self.decoder = decoder
        self.memory_pos = memory_pos
        self.grid = tuple(grid) if grid is not None else None

    def forward(self, x: Tensor, context: dict[str, Any] | None = None) -> Tensor:
        if x.shape[1] != self.memory_pos.num_embeddings:
            raise ModinvError(
                f"dec⁻¹ was built for {self.memory_pos.num_embeddings} decoder tokens, got {x.shape[1]}"
            )
        query_pos = position(context, x, self.grid)
        query_pos = query_pos.expand(x.shape[0], -1, -1)
        tgt = torch.zeros_like(query_pos, dtype=x.dtype)
        return self.decoder(tgt, x, query_pos=query_pos, pos=self.memory_pos.weight[None])


# Chains saved before final_norm / init existed had a final norm and Xavier initialisation.
@register("detr.dec", legacy={"final_norm": True, "init": "xavier"})
def build_dec(d_model: int = 256, nhead: int = 8, dim_ff: int = 2048, depth: int = 6, dropout: float = 0.0,
              num_queries: int = 100, grid: Sequence[int] | None = (15, 20), final_norm: bool = False,
              init: str = "torch") -> nn.Module:
    """The paper's dec⁻¹ has no LayerNorm after its last layer (9,498,112 parameters at d 256)."""
    decoder = build_decoder(depth, d_model, nhead, dim_ff, dropout, "relu", norm_first=False, final_norm=final_norm)
    decoder = init_(decoder, init)
    return DecoderInverse(decoder, nn.Embedding(num_queries, d_model), grid)


# -- pred⁻¹ ----------------------------------------------------------------------------------------

PRED_MODES = ("fd", "oh")


class PredictionInverse(nn.Module):
    """x_pred (class logits ++ box) -> x_dec with a per-query MLP on concat(class part, box).

    ``mode="fd"``: the class part is the full softmax distribution; ``"oh"``: the one-hot arg-max.
    """

    def __init__(self, net: nn.Module, num_classes: int, mode: str = "fd"):
        super().__init__()
        if mode not in PRED_MODES:
            raise ModinvError(f"unknown pred⁻¹ mode {mode!r}; valid: {', '.join(PRED_MODES)}")
        self.net = net
        self.num_classes = num_classes
        self.mode = mode

    def forward(self, x: Tensor, context: dict[str, Any] | None = None) -> Tensor:
        logits, box = x[..., : self.num_classes], x[..., self.num_classes :]
        if self.mode == "fd":
            cls = logits.float().softmax(-1)
        else:
            cls = F.one_hot(logits.argmax(-1), self.num_classes).float()
        return self.net(torch.cat((cls.to(box.dtype), box), -1))


@register("detr.pred")
def build_pred(num_classes: int = 92, box_dim: int = 4, hidden: Sequence[int] = (512, 256), d_model: int = 256,
               mode: str = "fd") -> nn.Module:
    return PredictionInverse(mlp([num_classes + box_dim, *hidden, d_model], "relu"), num_classes, mode)


# -- the paper's set ---------------------------------------------------------------------------------

BB_VARIANTS = ("standard", "local")


def paper_specs(shapes: dict[str, tuple[int, ...]], context: dict[str, Any], variants: dict[str, str],
                stages: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{stage: {"config": ..., "variant": ...}}`` of DETR's paper components for these stage shapes."""
    expected = ("img", "bb", "enc", "dec", "pred")
    if tuple(shapes) != expected:
        raise ModinvError(f"arch='paper' for DETR expects stages {expected[1:]}, got {tuple(shapes)[1:]}")
    _, h, w = shapes["img"]
    n, d = shapes["bb"]
    grid = tuple(context.get("grid") or (math.ceil(h / STRIDE), math.ceil(w / STRIDE)))
    if grid[0] * grid[1] != n:
        raise ModinvError(f"DETR's bb has {n} tokens, which do not fill the token grid {grid}")
    queries, pred_dim = shapes["pred"]
    bb = variants.get("bb", "standard")
    if bb not in BB_VARIANTS:
        raise ModinvError(f"DETR's bb⁻¹ variants are {', '.join(BB_VARIANTS)}; got {bb!r}")
    pred = variants.get("pred", "fd")
    if pred not in PRED_MODES:
        raise ModinvError(f"DETR's pred⁻¹ variants are {', '.join(PRED_MODES)}; got {pred!r}")
    common = {"grid": list(grid)}
    bb_kind = "detr.bb" if bb == "standard" else "detr.bb_local"
    return {
        "bb": {"config": {"kind": bb_kind, "d_model": d, "out_size": [h, w], **common}, "variant": bb},
        "enc": {"config": {"kind": "detr.enc", "d_model": d, **common}, "variant": "standard"},
        "dec": {"config": {"kind": "detr.dec", "d_model": d, "num_queries": queries, **common},
                "variant": "standard"},
        "pred": {"config": {"kind": "detr.pred", "num_classes": pred_dim - 4, "d_model": shapes["dec"][-1],
                            "mode": pred}, "variant": pred},
    }
