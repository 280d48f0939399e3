"""Token-noise analysis of spatial locality (paper Sec. 4.5, Fig. 9): a fifth of the tokens become one noise token.

    result = token_noise_analysis(model, {"standard": chain, "local": local_chain}, source)
    token_noise_figure(result["figure_data"], "tokens.png")          # or run_cli via `modinv analyze tokens`

What is manipulated (per image, seeded by ``seed`` and the image's index in the data set, so the
outcome does not depend on the batch size):

- **Which tokens.** ``k = max(1, round_half_up(fraction · N))`` of the ``N`` *spatial* tokens (60 of
  DETR's 300 at 480×640, 39 of ViT's 196 at 224×224), drawn without replacement. Prefix tokens
  (ViT's class token) are never replaced. The same tokens are replaced in every condition and chain.
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
  at ``bb`` (the model's learned ``pos_embed`` rows, part of x_bb). At ViT's ``enc`` nothing is
  added: its tokens hold no explicit position any more ("positional information of tokens from the
  encoder stage of ViT cannot be preserved"), so the replaced tokens are pure noise there.

Conditions (paper notation): ``bb_man`` = bb⁻¹(x̃_bb); ``enc_man`` = (enc⁻¹, bb⁻¹)(x̃_enc);
``enc_man+`` = (enc⁻¹, bb⁻¹)(N_bb:enc(x̃_bb)), x̃_bb sent through the frozen encoder with
``model.run``. Each chain given (DETR: the standard and the local bb⁻¹) reconstructs every
condition; chains that lack a component borrow it from the first chain (components are trained
independently, so DETR's local-bb⁻¹ chain is the local bb⁻¹ plus the standard enc⁻¹).

Numbers: per condition the per-pixel MSE ([0, 1] pixels, all channels) between the manipulated
reconstruction and the *unmanipulated reconstruction from the same stage with the same chain*
(``bb`` for bb_man, ``enc`` for enc_man and enc_man+), separately INSIDE the image patches of the
replaced tokens (token ``i`` at grid row r, column c covers pixels ``[r·ph, (r+1)·ph) × [c·pw,
(c+1)·pw)``, ``ph = H / grid_h``: 32×32 px for DETR, 16×16 for ViT) and OUTSIDE them; mean with a
95% Student-t CI over images. ``locality`` = per-image inside / (inside + outside): 1 = the change
stays in the replaced patches, 0.5 = it spreads evenly over the image. ``ratio`` = mean inside /
mean outside (null when outside is 0). The same inside/outside errors against the *input* are
given for the manipulated and the default reconstructions (``vs_input``, ``default_vs_input``).

CLI: ``modinv analyze tokens --model detr-r50 --inverse STANDARD_CHAIN LOCAL_BB_CHAIN --data SPEC --out
DIR [--fraction 0.2] [--noise matched|unit] [--token-seed N]`` writes ``DIR/tokens.png`` and
``DIR/tokens.json``; each ``--inverse`` chain is one group of rows, labelled by its bb⁻¹ variant.

``tokens.json``: ``analysis, model, weights, data, inverse, n_images, pixel_space, grid,
patch_size, n_tokens, n_replaced, fraction, seed, noise {mode, description}, position_embedding
{stage: bool, description}, reference, conditions, chains {label: bb variant}, results {chain
label: {condition: {inside, outside, locality, ratio, vs_input {inside, outside}, default_vs_input
{inside, outside}}}}, figure``; inside/outside are ``{"mse", "ci95", "n", "std"}`` (mean MSE over
images and its 95% CI), locality ``{"mean", "ci95", "n", "std"}``; undefined numbers are null.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from modinv.analysis.common import json_safe, limited_batches
from modinv.analysis.metrics import summarize
from modinv.errors import ModinvError
from modinv.inverse.chain import InverseChain
from modinv.models.base import StagedModel, Trace
from modinv.runtime import amp_dtype, autocast

CONDITIONS = ("bb_man", "enc_man", "enc_man+")
# condition -> (stage whose tokens are replaced, stage reconstructed from)
CONDITION_STAGES = {"bb_man": ("bb", "bb"), "enc_man": ("enc", "enc"), "enc_man+": ("bb", "enc")}
NOISE_MODES = ("matched", "unit")
DEFAULT_FRACTION = 0.2
OUTLINE_COLOR = (1.0, 0.9, 0.0)  # yellow
REFERENCE = "the unmanipulated reconstruction from the same stage with the same chain"
NOISE_DESCRIPTIONS = {
    "matched": "one vector u ~ U(0,1)^D per image; noise = mu + sqrt(3)*sigma*(2u - 1) per channel, with mu, sigma "
               "the channel's mean and std over the image's spatial tokens at that stage (position embedding "
               "removed where the tokens contain it): uniform with the tokens' own mean and variance",
    "unit": "one vector u ~ U(0,1)^D per image, used as is (the paper's literal 'uniform noise')",
}
POSITION_DESCRIPTION = (
    "replaced token = noise + the position embedding of its own position wherever the stage carries explicit "
    "positions: DETR bb and enc (sine embedding, context['pos']), ViT bb (learned pos_embed rows); nothing at "
    "ViT enc, whose tokens hold no explicit position (paper Sec. 4.5)"
)

__all__ = [
    "CONDITIONS",
    "add_arguments",
    "choose_tokens",
    "image_generator",
    "n_replaced",
    "noise_token",
    "outline",
    "patch_mask",
    "position_embedding",
    "region_mse",
    "replace_tokens",
    "run_cli",
    "token_noise_analysis",
    "token_noise_figure",
]


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

    DETR (``context["pos"]``, entering every encoder layer): at ``bb`` and ``enc``, not part of the
    tokens. ViT (the timm model's learned ``pos_embed``, added once when embedding): at ``bb`` only,
    part of the tokens; ViT's ``enc`` carries no explicit position (paper Sec. 4.5).
    """
    context = trace.context
    if context.get("pos") is not None:
        return context["pos"], False, "context['pos'] (sine)"
    vit = getattr(model, "vit", None)
    pos_embed = getattr(vit, "pos_embed", None)
    if isinstance(pos_embed, Tensor) and stage == model.stages[0]:
        n_spatial = trace[stage].shape[1] - int(context.get("num_prefix_tokens", 0))
        rows = pos_embed if getattr(vit, "no_embed_class", False) else pos_embed[:, -n_spatial:]
        if rows.shape[1] != n_spatial:
            raise ModinvError(f"the position embedding has {rows.shape[1]} rows for {n_spatial} spatial tokens")
        return rows, True, "vit.pos_embed (learned)"
    return None, False, "none"


def _spatial(model: StagedModel, trace: Trace, stage: str) -> tuple[int, int]:
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
    prefix, _ = _spatial(model, trace, stage)
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


# -- the analysis ----------------------------------------------------------------------------------------

def _label_chains(chains: Mapping[str, InverseChain] | Sequence[InverseChain]) -> dict[str, InverseChain]:
    if isinstance(chains, Mapping):
        return dict(chains)
    out: dict[str, InverseChain] = {}
    for chain in chains:
        label = str(chain.component_meta.get("bb", {}).get("variant", "chain"))
        k, unique = 2, label
        while unique in out:
            unique, k = f"{label} ({k})", k + 1
        out[unique] = chain
    return out


def complete_chains(chains: Mapping[str, InverseChain], stages: Sequence[str] = ("bb", "enc")) -> dict[str, InverseChain]:
    """Every chain with components for ``stages``: a missing one is taken from the first chain that
    has it (components are trained independently, e.g. DETR's local bb⁻¹ with the standard enc⁻¹).
    The chains given are not changed; completed ones are new chains sharing the modules."""
    out = {}
    for label, chain in chains.items():
        missing = [s for s in stages if s not in chain.components]
        if missing:
            components = dict(chain.components.items())
            meta = {s: chain.component_meta[s] for s in chain.stages}
            for stage in missing:
                donor = next((c for c in chains.values() if stage in c.components), None)
                if donor is None:
                    raise ModinvError(f"no inverse chain given has a component for {stage!r}; the token analysis "
                                      f"needs {' and '.join(stages)}")
                components[stage], meta[stage] = donor.components[stage], donor.component_meta[stage]
            chain = InverseChain(components, chain.layout, meta)
        out[label] = chain
    return out


@torch.no_grad()
def token_noise_analysis(
    model: StagedModel,
    chains: Mapping[str, InverseChain] | Sequence[InverseChain] | InverseChain,
    source,
    fraction: float = DEFAULT_FRACTION,
    noise: str = "matched",
    seed: int = 0,
    batch_size: int = 8,
    limit: int | None = None,
    amp: str = "off",
    figure_images: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the three conditions for every chain over ``source``; the numbers of ``tokens.json`` plus
    ``"figure_data"`` (tensors of the first ``figure_images`` images, for :func:`token_noise_figure`)."""
    if noise not in NOISE_MODES:
        raise ModinvError(f"unknown noise mode {noise!r}; choose from {', '.join(NOISE_MODES)}")
    if not {"bb", "enc"} <= set(model.stages):
        raise ModinvError(f"the token analysis needs stages 'bb' and 'enc'; {model.name} has {', '.join(model.stages)}")
    if isinstance(chains, InverseChain):
        chains = [chains]
    chains = complete_chains(_label_chains(chains))
    for chain in chains.values():
        chain.eval()
    device = model.device
    dtype = amp_dtype(device, amp)
    keys = ("inside", "outside", "in_input", "out_input", "def_in_input", "def_out_input")
    per: dict[str, dict[str, dict[str, list[Tensor]]]] = {
        c: {cond: {k: [] for k in keys} for cond in CONDITIONS} for c in chains}
    figure: dict[str, Any] = {"images": [], "names": [], "masks": [], "rows": {c: [] for c in chains}}
    info: dict[str, Any] = {}
    n_images = 0
    for batch in tqdm(limited_batches(source, batch_size, limit), desc="tokens", disable=not progress):
        images = batch["image"].to(device)
        b = images.shape[0]
        with autocast(device, dtype):
            trace = model.trace(images, end="enc")
        prefix, n = _spatial(model, trace, "bb")
        k = n_replaced(n, fraction)
        gens = [image_generator(seed, int(i)) for i in batch["index"]]
        indices = torch.stack([choose_tokens(n, k, g) for g in gens])
        units = torch.stack([torch.rand(trace["bb"].shape[-1], generator=g) for g in gens])
        grid = tuple(int(g) for g in trace.context["grid"])
        mask = patch_mask(indices, grid, images.shape[-2:])
        if not info:
            info = {"grid": list(grid), "n_tokens": n, "n_replaced": k, "num_prefix_tokens": prefix,
                    "patch_size": [images.shape[-2] // grid[0], images.shape[-1] // grid[1]],
                    "position_embedding": {s: position_embedding(model, trace, s)[0] is not None for s in ("bb", "enc")},
                    "position_source": {s: position_embedding(model, trace, s)[2] for s in ("bb", "enc")}}
        with autocast(device, dtype):
            bb_man = manipulate(model, trace, "bb", indices, units, noise)
            enc_man = manipulate(model, trace, "enc", indices, units, noise)
            plus = model.run(trace.edit("bb", bb_man), "bb", "enc")
        traces = {"bb_man": trace.edit("bb", bb_man), "enc_man": trace.edit("enc", enc_man), "enc_man+": plus}
        keep = max(0, min(figure_images - len(figure["images"]), b))
        if keep:
            figure["images"] += [images[i].float().cpu() for i in range(keep)]
            figure["names"] += batch["name"][:keep]
            figure["masks"] += [mask[i] for i in range(keep)]
        for label, chain in chains.items():
            with autocast(device, dtype):
                default = {s: chain.reconstruct(trace, s).float() for s in ("bb", "enc")}
                manipulated = {c: chain.reconstruct(traces[c], CONDITION_STAGES[c][1]).float() for c in CONDITIONS}
            for cond in CONDITIONS:
                ref, rec = default[CONDITION_STAGES[cond][1]], manipulated[cond]
                out = per[label][cond]
                for (a, b_), (key_in, key_out) in (((rec, ref), ("inside", "outside")),
                                                   ((rec, images), ("in_input", "out_input")),
                                                   ((ref, images), ("def_in_input", "def_out_input"))):
                    inside, outside = region_mse(a, b_, mask)
                    out[key_in].append(inside)
                    out[key_out].append(outside)
            for i in range(keep):
                figure["rows"][label].append({"bb": default["bb"][i].cpu(), "enc": default["enc"][i].cpu(),
                                              **{c: manipulated[c][i].cpu() for c in CONDITIONS}})
        n_images += b
    if not n_images:
        raise ModinvError("the image source yielded no images")
    results: dict[str, dict[str, Any]] = {}
    for label in chains:
        results[label] = {}
        for cond in CONDITIONS:
            v = {key: torch.cat(vals).double() for key, vals in per[label][cond].items()}
            total = v["inside"] + v["outside"]
            locality = torch.where(total > 0, v["inside"] / total.clamp_min(1e-300), torch.full_like(total, math.nan))
            locality = locality[~torch.isnan(locality)]
            mean_out = float(v["outside"].mean())
            results[label][cond] = {
                "inside": summarize(v["inside"]),
                "outside": summarize(v["outside"]),
                "locality": _mean_summary(locality),
                "ratio": float(v["inside"].mean()) / mean_out if mean_out > 0 else None,
                "vs_input": {"inside": summarize(v["in_input"]), "outside": summarize(v["out_input"])},
                "default_vs_input": {"inside": summarize(v["def_in_input"]), "outside": summarize(v["def_out_input"])},
            }
    return {
        "analysis": "tokens",
        "model": model.name,
        "weights": str(getattr(model, "weights", "unknown")),
        "n_images": n_images,
        "pixel_space": "[0, 1]",
        **{k: info[k] for k in ("grid", "patch_size", "n_tokens", "n_replaced", "num_prefix_tokens")},
        "fraction": fraction,
        "seed": seed,
        "noise": {"mode": noise, "description": NOISE_DESCRIPTIONS[noise]},
        "position_embedding": {**info["position_embedding"], "source": info["position_source"],
                               "description": POSITION_DESCRIPTION},
        "reference": REFERENCE,
        "conditions": {c: {"manipulated": CONDITION_STAGES[c][0], "reconstructed_from": CONDITION_STAGES[c][1]}
                       for c in CONDITIONS},
        "chains": {label: str(chain.component_meta.get("bb", {}).get("variant", "unknown"))
                   for label, chain in chains.items()},
        "ci": "95% Student-t confidence interval of the mean over images",
        "results": results,
        "figure_data": figure,
    }


def token_noise_figure(figure: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Fig. 9: per image and chain one row: the input, then the default and manipulated
    reconstructions (bb, bb_man, enc, enc_man, enc_man+); replaced patches outlined in yellow on the
    input and on the manipulated reconstructions."""
    from modinv.figures import image_grid

    rows, titles = [], []
    for i, image in enumerate(figure["images"]):
        mask = figure["masks"][i]
        for label, recs in figure["rows"].items():
            r = recs[i]
            rows.append([outline(image, mask), r["bb"], outline(r["bb_man"], mask), r["enc"],
                         outline(r["enc_man"], mask), outline(r["enc_man+"], mask)])
            titles.append(f"{Path(str(figure['names'][i])).stem[:18]}\n{label} bb⁻¹")
    if not rows:
        raise ModinvError("no images to draw")
    columns = ["input (replaced outlined)", "from bb", "bb_man", "from enc", "enc_man", "enc_man+"]
    return image_grid(rows, path, column_titles=columns, row_titles=titles, title=title)


# -- CLI ------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fraction", type=float, default=DEFAULT_FRACTION,
                        help="fraction of spatial tokens replaced (default: 0.2)")
    parser.add_argument("--noise", choices=NOISE_MODES, default="matched",
                        help="matched: uniform with the tokens' per-channel mean and variance (default); unit: U(0, 1)")
    parser.add_argument("--token-seed", type=int, help="seed of the token choice and the noise (default: --seed)")
    parser.add_argument("--figure-images", type=int, default=2, help="images shown in the figure (default: 2)")


def _mean_summary(values: Tensor) -> dict[str, Any]:
    """:func:`summarize` of a quantity that is not an MSE: the mean under ``"mean"``."""
    summary = summarize(values)
    return {"mean": summary.pop("mse"), **summary}


def _json_ready(result: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "figure_data"}


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    from modinv.cli.common import model_from_args, writable_dir
    from modinv.data import open_source

    out = writable_dir(args.out)
    model = model_from_args(args)
    chains = [InverseChain.load(p, model, map_location=model.device) for p in args.inverse]
    source = open_source(args.data, size=tuple(model.input_size))
    seed = args.seed if args.token_seed is None else args.token_seed
    result = token_noise_analysis(model, chains, source, fraction=args.fraction, noise=args.noise, seed=seed,
                                  batch_size=args.batch, limit=args.limit, amp=args.amp,
                                  figure_images=args.figure_images)
    figure = token_noise_figure(result["figure_data"], out / "tokens.png",
                                title=f"{model.name}: {result['n_replaced']} of {result['n_tokens']} tokens replaced "
                                      f"by one noise token ({args.noise})")
    payload = json_safe(_json_ready(result) | {"data": args.data, "inverse": [str(p) for p in args.inverse],
                                                "figure": figure.name})
    (out / "tokens.json").write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    for label, conds in payload["results"].items():
        print(f"{label} bb⁻¹")
        for cond, r in conds.items():
            print(f"  {cond:<9} MSE vs default inside {r['inside']['mse']:.5f}  outside {r['outside']['mse']:.5f}  "
                  f"locality {r['locality']['mean']:.3f}")
    print(f"wrote {out / 'tokens.png'} and {out / 'tokens.json'}")
    return payload
