"""Inverse components for any staged model (``arch="auto"``), chosen from the stage shapes alone.

=====================  ====================  ==========================================================
stage j                stage j-1             component
=====================  ====================  ==========================================================
tokens N×D             tokens M×E            ``auto.tokens``: pre-norm transformer of width E (linear
                                             projection when D ≠ E); when M ≠ N, M learned queries
                                             cross-attend to the N tokens
feature map C×h×w      tokens M×E            ``auto.tokens`` on the h·w flattened positions
tokens N×D             feature map / image   ``auto.upsample``: grid reshape (prefix tokens dropped),
                                             then as below
feature map C×h×w      feature map / image   ``auto.upsample``: ConvTranspose ×2 steps + BatchNorm +
                                             ReLU until the size matches, 3×3 convs; sigmoid for images
vector D               vector E              ``auto.mlp``
=====================  ====================  ==========================================================

Anything else (e.g. a stage that is spatially *smaller* than the one before it is inverted from,
a vector back to a map) is refused with a :class:`~modinv.errors.ModinvError`.

Layouts: each stage's layout is the one its model declares (``model.meta.stage_layouts``, which the
chain passes in ``context["stage_layouts"]``), else read from the rank. Channels-last maps (B×H×W×C,
``"nhwc"``: timm's Swin) are read as the C×H×W maps above: the component permutes its input from and
its output back to channels-last (``channels_last_in`` / ``channels_last_out`` in its config), so
its inside is the same as for B×C×H×W maps.

Prefix tokens (class, register tokens; ``context["num_prefix_tokens"]``): tokens -> tokens maps
every token, prefix tokens included, to every token (same count: an encoder; otherwise the learned
queries of the target, prefix tokens included); tokens -> map drops them, since they have no place on
the grid; map -> tokens learns one query per target token, so the target's prefix tokens are
predicted from the whole map.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from torch import Tensor, nn

from modinv.errors import ModinvError
from modinv.models.base import stage_layout
from modinv.inverse.blocks import (
    GridDecoder,
    TokenMLP,
    build_decoder,
    build_encoder,
    conv3x3,
    deconv,
    geometric_widths,
    heads_for,
    mlp,
    output_head,
)
from modinv.inverse.registry import register

IMAGE_WIDTH = 32  # channels of the last upsampling step before a 3-channel image


class ChannelsLast(nn.Module):
    """A component for B×C×H×W maps that reads (``reads``) and/or writes (``writes``) channels-last
    B×H×W×C maps instead: its input and output are permuted around ``inner``."""

    def __init__(self, inner: nn.Module, reads: bool, writes: bool):
        super().__init__()
        self.inner = inner
        self.reads = reads
        self.writes = writes

    def forward(self, x: Tensor, context: dict[str, Any] | None = None) -> Tensor:
        if self.reads:
            x = x.permute(0, 3, 1, 2)
        y = self.inner(x, context)
        return y.permute(0, 2, 3, 1) if self.writes else y


def _channels_last(module: nn.Module, reads: bool, writes: bool) -> nn.Module:
    """``module`` itself for B×C×H×W maps (its state-dict keys unchanged), else wrapped."""
    return ChannelsLast(module, reads, writes) if reads or writes else module


class TokenTranslator(nn.Module):
    """Tokens (or a flattened feature map) -> tokens.

    ``in_proj`` brings the input to the working width; ``in_pos`` (optional) is a learned position
    embedding added to the input tokens' queries/keys. Without ``queries`` the ``body`` is an encoder
    (same token count); with them, M learned queries run through a decoder that cross-attends to
    the input tokens. ``out_proj`` maps to the target width.
    """

    def __init__(self, in_proj: nn.Module, body: nn.Module, out_proj: nn.Module,
                 in_pos: nn.Embedding | None = None, queries: nn.Embedding | None = None):
        super().__init__()
        self.in_proj = in_proj
        self.in_pos = in_pos
        self.body = body
        self.queries = queries
        self.out_proj = out_proj

    def forward(self, x: Tensor, context: dict[str, Any] | None = None) -> Tensor:
        if x.ndim == 4:
            x = x.flatten(2).transpose(1, 2)
        x = self.in_proj(x)
        pos = self.in_pos.weight[None] if self.in_pos is not None else None
        if self.queries is None:
            y = self.body(x, pos)
        else:
            tgt = self.queries.weight[None].expand(x.shape[0], -1, -1).to(x.dtype)
            y = self.body(tgt, x, None, pos)
        return self.out_proj(y)


@register("auto.tokens")
def build_tokens(in_tokens: int, in_dim: int, out_tokens: int, out_dim: int, depth: int = 2,
                 width: int | None = None, mlp_ratio: float = 4.0, from_map: bool = False,
                 channels_last_in: bool = False) -> nn.Module:
    width = width or out_dim
    heads = heads_for(width)
    ff = int(width * mlp_ratio)
    in_proj = nn.Linear(in_dim, width) if in_dim != width else nn.Identity()
    out_proj = nn.Linear(width, out_dim)
    if in_tokens == out_tokens:
        body = build_encoder(depth, width, heads, ff, 0.0, "gelu", norm_first=True, final_norm=True)
        in_pos = nn.Embedding(in_tokens, width) if from_map else None
        return _channels_last(TokenTranslator(in_proj, body, out_proj, in_pos), channels_last_in, False)
    body = build_decoder(depth, width, heads, ff, 0.0, "gelu", norm_first=True, final_norm=True)
    module = TokenTranslator(in_proj, body, out_proj, nn.Embedding(in_tokens, width), nn.Embedding(out_tokens, width))
    return _channels_last(module, channels_last_in, False)


@register("auto.upsample")
def build_upsample(in_channels: int, out_channels: int, in_grid: Sequence[int], out_size: Sequence[int],
                   image: bool = False, num_prefix_tokens: int = 0, context_grid: bool = False,
                   channels_last_in: bool = False, channels_last_out: bool = False) -> nn.Module:
    """×2 ConvTranspose steps until the grid reaches ``out_size``, two 3×3 convs, sigmoid for images."""
    steps = upsampling_steps(in_grid, out_size)
    end = max(IMAGE_WIDTH, out_channels) if image else out_channels
    layers: list[nn.Module] = []
    prev = in_channels
    for c in geometric_widths(in_channels, end, steps):
        layers += deconv(prev, c, 3, 2)
        prev = c
    layers += conv3x3(prev, end) + conv3x3(end, out_channels, norm_act=False)
    head = output_head("sigmoid" if image else "none")
    module = GridDecoder(nn.Sequential(*layers), head, in_grid, num_prefix_tokens, out_size, 2**steps, context_grid)
    return _channels_last(module, channels_last_in, channels_last_out)


@register("auto.mlp")
def build_mlp(in_dim: int, out_dim: int, hidden: int | None = None) -> nn.Module:
    return TokenMLP(mlp([in_dim, hidden or max(in_dim, out_dim), out_dim], "relu"))


# -- choosing a component from the shapes ---------------------------------------------------------

def upsampling_steps(in_grid: Sequence[int], out_size: Sequence[int]) -> int:
    (h, w), (H, W) = in_grid, out_size
    ratio = max(H / h, W / w)
    if H < h or W < w:
        raise ModinvError(
            f"arch='auto' cannot invert a stage whose {h}×{w} grid is larger than the {H}×{W} one before it"
        )
    return max(0, math.ceil(math.log2(ratio) - 1e-9))


def token_grid(n: int, out_hw: Sequence[int], context: dict[str, Any]) -> tuple[tuple[int, int], int, bool]:
    """``(grid, prefix, from_context)`` of an ``n``-token stage that is inverted to an H×W map."""
    grid, prefix = context.get("grid"), int(context.get("num_prefix_tokens", 0) or 0)
    if grid is not None and int(grid[0]) * int(grid[1]) + prefix == n:
        return (int(grid[0]), int(grid[1])), prefix, True
    H, W = out_hw
    for prefix in range(0, 9):
        m = n - prefix
        if m <= 0:
            break
        gh = round(math.sqrt(m * H / W))
        if gh > 0 and m % gh == 0 and abs((m // gh) / gh - W / H) < 0.25 * W / H:
            return (gh, m // gh), prefix, False
    raise ModinvError(
        f"arch='auto' cannot lay {n} tokens out on a grid matching a {H}×{W} map; the model should put "
        "context['grid'] (and context['num_prefix_tokens']) into its traces"
    )


def auto_config(in_shape: Sequence[int], out_shape: Sequence[int], image: bool,
                context: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``auto`` component config mapping a stage of ``in_shape`` to one of ``out_shape``."""
    context = context or {}
    a, b = tuple(in_shape), tuple(out_shape)
    if len(a) == 2 and len(b) == 2:
        return {"kind": "auto.tokens", "in_tokens": a[0], "in_dim": a[1], "out_tokens": b[0], "out_dim": b[1]}
    if len(a) == 3 and len(b) == 2:
        return {"kind": "auto.tokens", "in_tokens": a[1] * a[2], "in_dim": a[0], "out_tokens": b[0],
                "out_dim": b[1], "from_map": True}
    if len(a) == 2 and len(b) == 3:
        grid, prefix, from_context = token_grid(a[0], b[1:], context)
        upsampling_steps(grid, b[1:])
        return {"kind": "auto.upsample", "in_channels": a[1], "out_channels": b[0], "in_grid": list(grid),
                "out_size": list(b[1:]), "image": image, "num_prefix_tokens": prefix, "context_grid": from_context}
    if len(a) == 3 and len(b) == 3:
        upsampling_steps(a[1:], b[1:])
        return {"kind": "auto.upsample", "in_channels": a[0], "out_channels": b[0], "in_grid": list(a[1:]),
                "out_size": list(b[1:]), "image": image}
    if len(a) == 1 and len(b) == 1:
        return {"kind": "auto.mlp", "in_dim": a[0], "out_dim": b[0]}
    raise ModinvError(
        f"arch='auto' has no inverse component from shape {a} to shape {b}; it handles token sequences "
        "(N×D), feature maps (C×h×w) and vectors (D) -> vectors; build a component by hand and chain.replace() it"
    )


def auto_specs(shapes: dict[str, tuple[int, ...]], context: dict[str, Any], variants: dict[str, str],
               stages: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{stage: {"config": ..., "variant": "standard"}}`` for ``stages`` (default: all) of any model."""
    extra = {k: v for k, v in variants.items() if v != "standard"}
    if extra:
        raise ModinvError(f"the auto architecture has no component variants (got "
                          f"{', '.join(f'{k}={v}' for k, v in extra.items())}); they belong to the paper architecture")
    names = list(shapes)
    layouts = dict(context.get("stage_layouts") or {})
    specs = {}
    for prev, stage in zip(names[:-1], names[1:]):
        if stages is not None and stage not in stages:
            continue
        try:
            (a, a_last), (b, b_last) = (_canonical(layouts, s, shapes[s]) for s in (stage, prev))
            config = auto_config(a, b, prev == "img", context)
            if a_last:  # auto.tokens (map -> tokens) or auto.upsample
                config["channels_last_in"] = True
            if b_last:  # only auto.upsample writes maps
                config["channels_last_out"] = True
        except ModinvError as exc:
            raise ModinvError(f"stage {stage!r} -> {prev!r}: {exc}") from None
        specs[stage] = {"config": config, "variant": "standard"}
    return specs


def _canonical(layouts: dict[str, str], stage: str, shape: Sequence[int]) -> tuple[tuple[int, ...], bool]:
    """``(shape as the components read it, channels-last?)``: a channels-last H×W×C map is C×H×W."""
    if stage_layout(layouts, stage, tuple(shape)) == "nhwc":
        h, w, c = shape
        return (c, h, w), True
    return tuple(shape), False
