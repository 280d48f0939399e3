"""Swin-B's inverse components (``arch="paper"``): bb⁻¹ and one inverse Swin stage per stage.

Swin stages are channels-last maps, B×H×W×C as timm keeps them (224×224 input): bb and s1
56×56×128, s2 28×28×256, s3 14×14×512, s4 7×7×1024.

- ``swin.bb`` (bb⁻¹, 16,873 parameters): ConvTranspose 128->32 (k2 s2) + BatchNorm + ReLU, then
  ConvTranspose 32->3 (k2 s2) + BatchNorm + sigmoid: 56×56×128 -> 3×224×224.
- ``swin.stage`` (s1⁻¹ … s4⁻¹): timm ``SwinTransformerBlock``\\ s at the stage's *own* width and
  resolution (window 7, shifted by 3 in every other block, the first one shifted as in the
  authors' ``InverseSwinTransformerStage``; the paper's depths 2, 2, 18, 2 and heads 4, 8, 16, 32 =
  width / 32), then for s2–s4 a *patch split*: LayerNorm over the stage's C channels, Linear
  C -> 2·C (= 4 · C/2) without bias, and each token's 2·C values laid out as a 2×2 block of C/2
  channels, row offset first as the authors' ``PatchSplitting`` (``split_layout="row"``; the
  legacy ``"timm"`` layout reads them in the order timm's ``PatchMerging`` concatenates, a
  permutation of the Linear's outputs). s1⁻¹ has no split (s1 keeps bb's shape).

Why these are the authors' counts: a timm Swin block of width C with h heads and window 7 holds
12·C² + 13·C + 169·h parameters (qkv and projection 4·C² + 4·C, MLP ×4 8·C² + 5·C, two
LayerNorms 4·C, relative position bias table (2·7 − 1)²·h). At the stage's own width that gives
s1⁻¹ = 2 blocks at C = 128, h = 4: 397,896. The patch split adds 2·C (its LayerNorm, so the norm
sits *before* the Linear, over the input width C, not 4·C as in merging) + 2·C² (the bias-free
Linear): s2⁻¹ = 2 × 791,112 + 131,584 = 1,713,808; s3⁻¹ = 18 × 3,155,088 + 525,312 = 57,316,896;
s4⁻¹ = 2 × 12,601,632 + 2,099,200 = 27,302,464. bb⁻¹: 16,416 + 64 (BN) + 387 + 6 (BN) = 16,873.
Total 86,747,937 (``tests/inverse/test_swin_components.py`` asserts each).
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from modinv.errors import ModinvError
from modinv.inverse.blocks import deconv, fit_to, init_, output_head
from modinv.inverse.registry import register

DEPTHS = (2, 2, 18, 2)  # blocks per inverse stage s1⁻¹ … s4⁻¹ (Swin-B's own depths)
HEAD_DIM = 32  # Swin-B: heads 4, 8, 16, 32 at widths 128 … 1024
WINDOW = 7
BB_CHANNELS = (32,)


class ChannelsLastDecoder(nn.Module):
    """B×H×W×C map -> B×C×H×W, a convolutional ``decoder``, fitted to ``out_size``, then ``head``."""

    def __init__(self, decoder: nn.Module, head: nn.Module, out_size: Sequence[int], scale: int):
        super().__init__()
        self.decoder = decoder
        self.head = head
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.scale = scale

    def forward(self, x: Tensor, context: dict[str, Any] | None = None) -> Tensor:
        y = self.decoder(x.permute(0, 3, 1, 2))
        return self.head(fit_to(y, self.out_size, self.scale))


SPLIT_LAYOUTS = ("row", "timm")


def split_tokens(x: Tensor, layout: str = "timm") -> Tensor:
    """B×H×W×4C -> B×2H×2W×C: each token's channels become a 2×2 block of C channels.

    ``layout="timm"`` reads them in the order timm's ``PatchMerging`` concatenates them (column
    offset, then row offset, then channel), so that it undoes merging's rearrangement exactly;
    ``"row"`` reads the row offset first (the authors' ``PatchSplitting``)."""
    if layout not in SPLIT_LAYOUTS:
        raise ModinvError(f"unknown patch-split layout {layout!r}; valid: {', '.join(SPLIT_LAYOUTS)}")
    b, h, w, c4 = x.shape
    x = x.reshape(b, h, w, 2, 2, c4 // 4)
    order = (0, 1, 3, 2, 4, 5) if layout == "row" else (0, 1, 4, 2, 3, 5)
    return x.permute(*order).reshape(b, 2 * h, 2 * w, c4 // 4)


class PatchSplit(nn.Module):
    """Undo patch merging: LayerNorm(C), Linear C -> 2·C (no bias), then :func:`split_tokens`
    (B×H×W×C -> B×2H×2W×C/2) in ``layout``."""

    def __init__(self, dim: int, layout: str = "row"):
        super().__init__()
        if dim % 2:
            raise ModinvError(f"patch splitting halves the width; {dim} channels is odd")
        self.norm = nn.LayerNorm(dim)
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.layout = layout

    def forward(self, x: Tensor) -> Tensor:
        return split_tokens(self.expand(self.norm(x)), self.layout)


class InverseSwinStage(nn.Module):
    """Swin blocks at one stage's width and resolution, then (optionally) a :class:`PatchSplit`."""

    def __init__(self, blocks: nn.Sequential, split: PatchSplit | None):
        super().__init__()
        self.blocks = blocks
        self.split = split

    def forward(self, x: Tensor, context: dict[str, Any] | None = None) -> Tensor:
        x = self.blocks(x)
        return self.split(x) if self.split is not None else x


@register("swin.bb")
def build_bb(in_channels: int = 128, channels: Sequence[int] = BB_CHANNELS, out_channels: int = 3,
             out_size: Sequence[int] = (224, 224)) -> nn.Module:
    """ConvTranspose k2 s2 per step (BatchNorm after each, ReLU between), sigmoid: B×h×w×C -> image."""
    widths = [in_channels, *channels, out_channels]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        last = i == len(widths) - 2
        layers += deconv(a, b, 2, 2, norm_act=not last)
        if last:
            layers.append(nn.BatchNorm2d(b))
    return ChannelsLastDecoder(nn.Sequential(*layers), output_head("sigmoid"), out_size, 2 ** (len(widths) - 1))


# Chains saved before these arguments existed: first block unshifted, timm's layout, timm's init.
@register("swin.stage", legacy={"shift_first": False, "split_layout": "timm", "init": "timm"})
def build_stage(dim: int = 128, resolution: Sequence[int] = (56, 56), depth: int = 2, num_heads: int = 4,
                window_size: int = WINDOW, split: bool = False, mlp_ratio: float = 4.0, shift_first: bool = True,
                split_layout: str = "row", init: str = "torch") -> nn.Module:
    """``depth`` timm Swin blocks (shifted windows in every other one, starting with the first when
    ``shift_first``), then a patch split in ``split_layout`` if ``split``."""
    from timm.models.swin_transformer import SwinTransformerBlock

    res = (int(resolution[0]), int(resolution[1]))
    shifted = 0 if shift_first else 1
    blocks = nn.Sequential(*[
        SwinTransformerBlock(dim, res, num_heads=num_heads, window_size=window_size,
                             shift_size=window_size // 2 if i % 2 == shifted else 0, mlp_ratio=mlp_ratio)
        for i in range(depth)
    ])
    return init_(InverseSwinStage(blocks, PatchSplit(dim, split_layout) if split else None), init)


# -- the paper's set ---------------------------------------------------------------------------------

def _stage_config(stage: str, shape: Sequence[int], prev: Sequence[int], depth: int) -> dict[str, Any]:
    h, w, c = (int(v) for v in shape)
    if tuple(prev) == (h, w, c):
        split = False
    elif tuple(prev) == (2 * h, 2 * w, c // 2):
        split = True
    else:
        raise ModinvError(
            f"Swin stage {stage!r} ({h}×{w}×{c}) is neither the shape of the stage before it nor its "
            f"patch merging ({'×'.join(map(str, prev))})"
        )
    return {"kind": "swin.stage", "dim": c, "resolution": [h, w], "depth": depth,
            "num_heads": max(1, c // HEAD_DIM), "window_size": WINDOW, "split": split}


def paper_specs(shapes: dict[str, tuple[int, ...]], context: dict[str, Any], variants: dict[str, str],
                stages: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{stage: {"config": ..., "variant": "standard"}}`` of Swin's paper components for these shapes
    (channels-last stages ``bb, s1 … s4``; widths and resolutions from the shapes, depths 2, 2, 18, 2)."""
    names = tuple(shapes)
    if names[0] != "img" or len(names) != 2 + len(DEPTHS):
        raise ModinvError(f"arch='paper' for Swin expects stages bb, s1 … s{len(DEPTHS)}, got {names[1:]}")
    extra = {k: v for k, v in variants.items() if v != "standard"}
    if extra:
        raise ModinvError(f"Swin's paper components have no variants (got {extra})")
    _, height, width = shapes["img"]
    h, w, c = shapes[names[1]]
    if (4 * h, 4 * w) != (height, width):
        raise ModinvError(f"Swin's bb⁻¹ upsamples ×4: a {h}×{w} bb does not give {height}×{width} images")
    specs = {names[1]: {"config": {"kind": "swin.bb", "in_channels": c, "out_size": [height, width]},
                        "variant": "standard"}}
    for prev, stage, depth in zip(names[1:-1], names[2:], DEPTHS):
        specs[stage] = {"config": _stage_config(stage, shapes[stage], shapes[prev], depth), "variant": "standard"}
    return {s: spec for s, spec in specs.items() if stages is None or s in stages}
