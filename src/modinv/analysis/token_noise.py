"""Token noise: which tokens are replaced, by what noise, plus which position embedding (paper Sec. 4.5).

The manipulation of :mod:`modinv.analysis.tokens`, per image (seeded by ``seed`` and the image's
index in the data set, so the outcome does not depend on the batch size):

- **Which tokens.** ``k = max(1, round_half_up(fraction · N))`` of the ``N`` *spatial* tokens (60 of
  DETR's 300 at 480×640, 39 of ViT's 196 at 224×224), drawn without replacement. Prefix tokens
  (ViT's class token) are never replaced.
- **The noise.** ONE vector ``u ~ U(0, 1)^D`` per image; every replaced token gets the same noise
  ``n = lo + (hi - lo) · u``. ``noise="matched"`` (default): per channel ``c``, ``[lo, hi] =
  mu_c ± sqrt(3)·sigma_c`` with ``mu_c, sigma_c`` the mean and std of channel ``c`` over the image's
  spatial tokens at that stage (position embedding removed where the tokens contain it), i.e. a
  uniform distribution with the tokens' own per-channel mean and variance. Why: the stages differ
  in scale by orders of magnitude (DETR's projected C5 tokens vs. ViT's encoder output with its
  large outlier channels), so a fixed U(0, 1) is a weak perturbation at one stage and an
  out-of-distribution one at another; matching the statistics makes "the token carries no
  information about its patch" the only change. ``noise="unit"`` is the literal U(0, 1) reading of
  the paper.
- **Position embedding.** A replaced token is ``n + p_i``, with ``p_i`` the position embedding of
  its own position ``i``, wherever the stage carries explicit positions (the paper: "identical
  uniform noise added to the respective positional embeddings"): DETR at ``bb`` and ``enc`` (the
  sine embedding ``context["pos"]``, which enters every encoder layer and every enc⁻¹ layer), ViT
  at ``bb`` (the learned embedding ``context["pos_embed"]``, part of x_bb). At ViT's ``enc``
  nothing is added: its tokens hold no explicit position any more ("positional information of
  tokens from the encoder stage of ViT cannot be preserved"), so the replaced tokens are pure noise.

Patches: token ``i`` at grid row r, column c covers pixels ``[r·ph, (r+1)·ph) × [c·pw, (c+1)·pw)``,
``ph = H / grid_h`` (:func:`patch_mask`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from modinv.errors import ModinvError
from modinv.models.base import StagedModel, Trace

NOISE_MODES = ("matched", "unit")
DEFAULT_FRACTION = 0.2
OUTLINE_COLOR = (1.0, 0.9, 0.0)  # yellow


# -- the manipulation ----------------------------------------------------------------------------------

def n_replaced(n_tokens: int, fraction: float = DEFAULT_FRACTION) -> int:
    """``round(fraction · n_tokens)`` (halves rounded up), at least 1, at most ``n_tokens``."""
    if not 0 < fraction <= 1:
        raise ModinvError(f"the fraction of replaced tokens must be in (0, 1], got {fraction}")
    return int(min(n_tokens, max(1, math.floor(fraction * n_tokens + 0.5 + 1e-9))))


def image_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of one image: derived from (``seed``, the image's index in the data set)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def choose_tokens(n_tokens: int, k: int, generator: torch.Generator) -> Tensor:
    """``k`` distinct spatial-token indices in ``[0, n_tokens)``, sorted (int64)."""
    return torch.randperm(n_tokens, generator=generator)[:k].sort().values


def noise_token(tokens: Tensor, unit: Tensor, mode: str = "matched") -> Tensor:
    """The one noise vector (D) of an image from ``unit`` ~ U(0, 1)^D; ``tokens``: N×D spatial tokens
    (for ``mode="matched"``, the uniform gets their per-channel mean and variance)."""
    if mode == "unit":
        return unit.to(tokens.device, torch.float32)
    if mode != "matched":
        raise ModinvError(f"unknown noise mode {mode!r}; choose from {', '.join(NOISE_MODES)}")
    x = tokens.float()
    mu, sd = x.mean(0), x.std(0, unbiased=False)
    return mu + math.sqrt(3.0) * sd * (2.0 * unit.to(x.device, torch.float32) - 1.0)


def replace_tokens(x: Tensor, indices: Tensor, noise: Tensor, pos: Tensor | None = None,
                   num_prefix_tokens: int = 0) -> Tensor:
    """A copy of ``x`` (B×T×D) whose spatial tokens ``indices`` (B×k, counted after the
    ``num_prefix_tokens`` prefix tokens) are ``noise`` (B×D, the same for all k) plus, if given, their
    own rows of ``pos`` (B×N×D or 1×N×D spatial position embeddings). Other tokens are untouched."""
    b, _, d = x.shape
    if indices.ndim != 2 or indices.shape[0] != b:
        raise ValueError(f"indices must be B×k with B={b}, got {tuple(indices.shape)}")
    indices = indices.to(x.device)
    value = noise.to(x.device, torch.float32)[:, None, :].expand(b, indices.shape[1], d)
    if pos is not None:
        rows = pos.to(x.device, torch.float32).expand(b, -1, -1)
        value = value + torch.gather(rows, 1, indices[..., None].expand(-1, -1, d))
    out = x.clone()
    out.scatter_(1, (indices + num_prefix_tokens)[..., None].expand(-1, -1, d), value.to(x.dtype))
    return out


def position_embedding(model: StagedModel, trace: Trace, stage: str) -> tuple[Tensor | None, bool, str]:
    """``(pos, in_tokens, source)``: the spatial position embedding added to replaced tokens of
    ``stage`` (B×N×D or 1×N×D; None where the stage has no explicit positions), whether the stage's
    tokens already contain it, and where it comes from.

    ``trace.context["pos"]`` (DETR's sine embedding, entering every encoder layer): at every token
    stage, not part of the tokens. ``trace.context["pos_embed"]`` (a ViT-like model's learned
    embedding, added once when embedding; rows for every token of the first stage, zeros for tokens
    that got none, or for the spatial tokens only): at the first stage only, part of the tokens; a
    ViT's ``enc`` carries no explicit position (paper Sec. 4.5).
    """
    context = trace.context
    if context.get("pos") is not None:
        return context["pos"], False, "context['pos'] (sine)"
    pos_embed = context.get("pos_embed")
    if isinstance(pos_embed, Tensor) and stage == model.stages[0]:
        rows = pos_embed if pos_embed.ndim == 3 else pos_embed[None]
        prefix, n_spatial = spatial_tokens(model, trace, stage)
        if rows.shape[1] == prefix + n_spatial:
            rows = rows[:, prefix:]
        if rows.shape[1] != n_spatial:
            raise ModinvError(f"the position embedding has {rows.shape[1]} rows for {n_spatial} spatial tokens")
        return rows, True, "context['pos_embed'] (learned)"
    return None, False, "none"


def spatial_tokens(model: StagedModel, trace: Trace, stage: str) -> tuple[int, int]:
    """(number of prefix tokens, number of spatial tokens) of ``stage``, checked against the grid."""
    x = trace[stage]
    grid = trace.context.get("grid")
    if x.ndim != 3 or grid is None:
        raise ModinvError(
            f"the token analysis needs token stages on a grid (B×tokens×D and context['grid']); "
            f"{model.name}'s {stage!r} is {tuple(x.shape[1:])}"
        )
    prefix = int(trace.context.get("num_prefix_tokens", 0))
    n = x.shape[1] - prefix
    if n != grid[0] * grid[1]:
        raise ModinvError(f"{model.name}'s {stage!r} has {n} spatial tokens, not the {grid[0]}×{grid[1]} grid")
    return prefix, n


def manipulate(model: StagedModel, trace: Trace, stage: str, indices: Tensor, units: Tensor,
               noise: str = "matched") -> Tensor:
    """``trace[stage]`` with the spatial tokens ``indices`` (B×k) replaced by each image's noise token
    (from ``units``, B×D in [0, 1)) plus their position embedding where the stage has one."""
    x = trace[stage]
    prefix, _ = spatial_tokens(model, trace, stage)
    pos, in_tokens, _ = position_embedding(model, trace, stage)
    content = x[:, prefix:].float()
    if pos is not None and in_tokens:
        content = content - pos.to(content.device, torch.float32)
    vectors = torch.stack([noise_token(content[i], units[i], noise) for i in range(x.shape[0])])
    return replace_tokens(x, indices, vectors, pos, prefix)


# -- masks, errors, outlines ------------------------------------------------------------------------------

def patch_mask(indices: Tensor, grid: Sequence[int], image_size: Sequence[int]) -> Tensor:
    """Bool H×W (or B×H×W for B×k ``indices``): the pixels of the patches of spatial tokens
    ``indices`` (row-major over ``grid``; each token covers an (H/gh)×(W/gw) patch)."""
    gh, gw = (int(g) for g in grid)
    h, w = (int(s) for s in image_size)
    if h % gh or w % gw:
        raise ModinvError(f"image size {h}×{w} is not a whole number of patches of the {gh}×{gw} grid")
    batched = indices.ndim == 2
    idx = indices if batched else indices[None]
    cells = torch.zeros(idx.shape[0], gh * gw, dtype=torch.bool)
    cells.scatter_(1, idx.cpu().long(), True)
    mask = cells.view(-1, gh, gw).repeat_interleave(h // gh, 1).repeat_interleave(w // gw, 2)
    return mask if batched else mask[0]


def region_mse(a: Tensor, b: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image MSE over all channels of the pixels inside ``mask`` (B×H×W bool) and outside it."""
    sq = (a.float() - b.float()).pow(2).mean(1).cpu()
    m = mask.to(sq.dtype).cpu()
    inside = (sq * m).flatten(1).sum(1) / m.flatten(1).sum(1)
    outside = (sq * (1 - m)).flatten(1).sum(1) / (1 - m).flatten(1).sum(1)
    return inside, outside


def outline(image: Tensor, mask: Tensor, color: Sequence[float] = OUTLINE_COLOR, width: int | None = None) -> Tensor:
    """``image`` (3×H×W) with the border of the region ``mask`` (H×W bool) painted in ``color``."""
    h, w = mask.shape
    width = width or max(1, round(min(h, w) / 160))
    m = mask.float()[None, None]
    outside = F.pad(1 - m, (width,) * 4, value=1.0)  # beyond the image counts as outside
    near_outside = F.max_pool2d(outside, 2 * width + 1, stride=1)[0, 0] > 0
    border = mask & near_outside
    out = image.detach().float().cpu().clone()
    out[:, border] = torch.tensor(color, dtype=out.dtype)[:, None]
    return out
