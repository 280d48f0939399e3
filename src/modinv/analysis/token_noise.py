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
  uniform noise added to the respective positional embeddings"), as the model declares it
  (``TokenGrid.position``, ``model.token_position``): DETR at ``bb`` and ``enc`` (its sine embedding,
  which enters every encoder layer and every enc⁻¹ layer), ViT at ``bb`` (its learned embedding, part
  of x_bb). At ViT's ``enc``
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
from modinv.models.roles import missing_role, scatter_tokens

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
    return scatter_tokens(x, indices, noise, pos, num_prefix_tokens)


def token_pair(model: StagedModel, stages: Sequence[str] | None = None) -> tuple[str, str]:
    """The two token stages of the analysis: the first is manipulated and sent on to the second
    (``enc_man+``). Default: the first two stages the model declares on one patch grid (DETR and
    ViT: bb, enc; Swin: bb, s1); otherwise one sentence naming the missing role."""
    declared = model.token_stages()
    if stages is not None:
        first, second = stages
        for stage in (first, second):
            model.token_stage(stage, "tokens")
        if model.stage_index(second) <= model.stage_index(first):
            raise ModinvError(f"the token analysis needs two stages in processing order, got {first!r}, {second!r}")
        return first, second
    names = [s for s in model.stages if s in declared]
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            a, b = declared[first], declared[second]
            if (a.grid, a.num_prefix_tokens) == (b.grid, b.num_prefix_tokens):
                return first, second
    raise missing_role("tokens", "two token stages on one patch grid", model)


def position_embedding(model: StagedModel, trace: Trace, stage: str) -> tuple[Tensor | None, bool, str]:
    """``(pos, in_tokens, source)``: the spatial position embedding added to replaced tokens of
    ``stage`` (B×N×D or 1×N×D; None where the stage has no explicit positions), whether the stage's
    tokens already contain it, and how the model declares it (``TokenGrid.position``: ``"added"``
    beside the tokens at every layer, as DETR's sine embedding, or ``"embedded"`` in them, as a
    ViT's learned one at its first stage; a ViT's encoder output carries none, paper Sec. 4.5)."""
    grid = model.token_stage(stage, "tokens")
    pos = model.token_position(trace, stage)
    if pos is None:
        return None, False, "none"
    pos = pos if pos.ndim == 3 else pos[None]
    if pos.shape[1] != grid.n_tokens:
        raise ModinvError(f"the position embedding has {pos.shape[1]} rows for {grid.n_tokens} spatial tokens")
    return pos, grid.position == "embedded", str(grid.position)


def spatial_tokens(model: StagedModel, trace: Trace, stage: str) -> tuple[int, int]:
    """(number of prefix tokens, number of spatial tokens) of ``stage``, as its model declares them."""
    grid = model.token_stage(stage, "tokens")
    return grid.num_prefix_tokens, grid.n_tokens


def manipulate(model: StagedModel, trace: Trace, stage: str, indices: Tensor, units: Tensor,
               noise: str = "matched") -> Tensor:
    """``trace[stage]`` with the spatial tokens ``indices`` (B×k) replaced by each image's noise token
    (from ``units``, B×D in [0, 1)) plus their position embedding where the stage has one
    (``model.replace_tokens``)."""
    content = model.token_content(trace, stage)
    vectors = torch.stack([noise_token(content[i], units[i], noise) for i in range(content.shape[0])])
    return model.replace_tokens(trace, stage, indices, vectors)


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
    """Per-image MSE over all channels of the pixels inside ``mask`` (B×H×W bool) and outside it; NaN
    (undefined) for an image where the region is empty, e.g. outside when every token is replaced."""
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
