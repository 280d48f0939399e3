"""Token-noise analysis of spatial locality (paper Sec. 4.5, Fig. 9): a fifth of the tokens become one noise token.

    result = token_noise_analysis(model, {"standard": chain, "local": local_chain}, source)
    token_noise_figure(result, "tokens.png")          # or `modinv analyze tokens`

What is manipulated (which tokens, the noise, the position embedding added to it) is described
and implemented in :mod:`modinv.analysis.token_noise`; the same tokens are replaced in every
condition and chain.

Conditions (paper notation): ``bb_man`` = bb⁻¹(x̃_bb); ``enc_man`` = (enc⁻¹, bb⁻¹)(x̃_enc);
``enc_man+`` = (enc⁻¹, bb⁻¹)(N_bb:enc(x̃_bb)), x̃_bb sent through the frozen encoder with
``model.run``. Each chain given (DETR: the standard and the local bb⁻¹) reconstructs every
condition; chains that lack a component borrow it from the first chain (components are trained
independently, so DETR's local-bb⁻¹ chain is the local bb⁻¹ plus the standard enc⁻¹).

Numbers: per condition the per-pixel MSE ([0, 1] pixels, all channels) between the manipulated
reconstruction and the *unmanipulated reconstruction from the same stage with the same chain*
(``bb`` for bb_man, ``enc`` for enc_man and enc_man+), separately INSIDE the image patches of the
replaced tokens (32×32 px for DETR, 16×16 for ViT) and OUTSIDE them; mean with a 95% CI over images
that stays inside [0, 1] (a BCa bootstrap, :mod:`modinv.metrics.bounded`; ``ci`` names the methods
used), as for ``locality``. ``locality`` = per-image inside / (inside + outside): 1 = the change stays in the
replaced patches, 0.5 = it spreads evenly over the image. ``ratio`` = mean inside / mean outside
(null when outside is 0). The same inside/outside errors against the *input* are given for the
manipulated and the default reconstructions (``vs_input``, ``default_vs_input``).

``tokens.json`` (``TokenNoiseResult.to_json()``, plus from the CLI ``data``, ``inverse``,
``figure``): ``analysis, model, weights, n_images, pixel_space, grid, patch_size, n_tokens,
n_replaced, num_prefix_tokens, fraction, seed, noise {mode, description}, position_embedding
{stage: bool, source, description}, reference, conditions, chains {label: bb variant}, ci, precision, results
{chain label: {condition: {inside, outside, locality, ratio, vs_input {inside, outside},
default_vs_input {inside, outside}}}}``; inside/outside are ``{"mse", "mean", "ci95", "n", "std",
"ci_method", "range", "n_infinite"}`` (mean MSE over images and its 95% CI), locality the same
without ``"mse"``; undefined numbers are null.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from modinv.analysis.common import (
    AnalysisResult, figure_field, interval_record, limited_batches, model_record, precision, unique_label,
)
from modinv.analysis.token_noise import (
    DEFAULT_FRACTION,
    NOISE_MODES,
    choose_tokens,
    image_generator,
    manipulate,
    n_replaced,
    outline,
    patch_mask,
    position_embedding,
    region_mse,
    spatial_tokens,
)
from modinv.errors import ModinvError
from modinv.figures import image_grid
from modinv.inverse.chain import InverseChain
from modinv.metrics import summarize, summarize_in_range
from modinv.models.base import StagedModel
from modinv.runtime import autocast

CONDITIONS = ("bb_man", "enc_man", "enc_man+")
# condition -> (stage whose tokens are replaced, stage reconstructed from)
CONDITION_STAGES = {"bb_man": ("bb", "bb"), "enc_man": ("enc", "enc"), "enc_man+": ("bb", "enc")}
REFERENCE = "the unmanipulated reconstruction from the same stage with the same chain"
NOISE_DESCRIPTIONS = {
    "matched": "one vector u ~ U(0,1)^D per image; noise = mu + sqrt(3)*sigma*(2u - 1) per channel, with mu, sigma "
               "the channel's mean and std over the image's spatial tokens at that stage (position embedding "
               "removed where the tokens contain it): uniform with the tokens' own mean and variance",
    "unit": "one vector u ~ U(0,1)^D per image, used as is (the paper's literal 'uniform noise')",
}
POSITION_DESCRIPTION = (
    "replaced token = noise + the position embedding of its own position wherever the stage carries explicit "
    "positions: DETR bb and enc (sine embedding, context['pos']), ViT bb (learned embedding, context['pos_embed']); "
    "nothing at ViT enc, whose tokens hold no explicit position (paper Sec. 4.5)"
)


@dataclasses.dataclass(kw_only=True)
class TokenNoiseResult(AnalysisResult):
    """The numbers of ``tokens.json``; ``figure_data``: ``{"images", "names", "masks", "rows": {chain
    label: [{"bb", "enc", "bb_man", "enc_man", "enc_man+"} per image]}}`` (tensors)."""

    analysis: str = "tokens"
    model: str
    weights: str
    n_images: int
    pixel_space: str = "[0, 1]"
    grid: list[int]
    patch_size: list[int]
    n_tokens: int
    n_replaced: int
    num_prefix_tokens: int
    fraction: float
    seed: int
    noise: dict[str, str]
    position_embedding: dict[str, Any]
    reference: str = REFERENCE
    conditions: dict[str, dict[str, str]] = dataclasses.field(default_factory=lambda: {
        c: {"manipulated": m, "reconstructed_from": r} for c, (m, r) in CONDITION_STAGES.items()})
    chains: dict[str, str]
    ci: dict[str, Any] = dataclasses.field(default_factory=dict)  # the interval methods used
    precision: str = "float32"
    results: dict[str, dict[str, dict[str, Any]]]
    figure_data: dict[str, Any] = figure_field()


# -- the analysis ----------------------------------------------------------------------------------------

def _mse(values: Tensor) -> dict[str, Any]:
    """Mean of per-image MSEs with a 95% CI inside [0, 1]."""
    return summarize(values, low=0.0, high=1.0)


def _label_chains(chains: Mapping[str, InverseChain] | Sequence[InverseChain]) -> dict[str, InverseChain]:
    if isinstance(chains, Mapping):
        return dict(chains)
    out: dict[str, InverseChain] = {}
    for chain in chains:
        out[unique_label(str(chain.component_meta.get("bb", {}).get("variant", "chain")), out)] = chain
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
) -> TokenNoiseResult:
    """Run the three conditions for every chain over ``source``: the numbers of ``tokens.json``, and
    in ``figure_data`` the tensors of the first ``figure_images`` images (for :func:`token_noise_figure`)."""
    if noise not in NOISE_MODES:
        raise ModinvError(f"unknown noise mode {noise!r}; choose from {', '.join(NOISE_MODES)}")
    if not {"bb", "enc"} <= set(model.stages):
        raise ModinvError(f"the token analysis needs stages 'bb' and 'enc'; {model.name} has {', '.join(model.stages)}")
    if isinstance(chains, InverseChain):
        chains = [chains]
    chains = complete_chains(_label_chains(chains))
    device = model.device
    dtype, used = precision(device, amp)
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
        prefix, n = spatial_tokens(model, trace, "bb")
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
                "inside": _mse(v["inside"]),
                "outside": _mse(v["outside"]),
                "locality": summarize_in_range(locality, 0.0, 1.0),  # a fraction
                "ratio": float(v["inside"].mean()) / mean_out if mean_out > 0 else None,
                "vs_input": {"inside": _mse(v["in_input"]), "outside": _mse(v["out_input"])},
                "default_vs_input": {"inside": _mse(v["def_in_input"]), "outside": _mse(v["def_out_input"])},
            }
    return TokenNoiseResult(
        **model_record(model),
        n_images=n_images,
        **{k: info[k] for k in ("grid", "patch_size", "n_tokens", "n_replaced", "num_prefix_tokens")},
        fraction=fraction,
        seed=seed,
        noise={"mode": noise, "description": NOISE_DESCRIPTIONS[noise]},
        position_embedding={**info["position_embedding"], "source": info["position_source"],
                            "description": POSITION_DESCRIPTION},
        chains={label: str(chain.component_meta.get("bb", {}).get("variant", "unknown"))
                for label, chain in chains.items()},
        results=results,
        ci=interval_record(results),
        precision=used,
        figure_data=figure,
    )


# What the figure's column names mean, in its caption (the README and the CLI help say the same).
NAMES_NOTE = ("bb_man: tokens replaced at bb, reconstructed from bb; enc_man: replaced at enc, reconstructed from "
              "enc; enc_man+: replaced at bb, passed on through the encoder, reconstructed from enc")


def token_noise_figure(result: TokenNoiseResult, path: str | Path, title: str | None = None) -> Path:
    """Fig. 9: per image and chain one row: the input, then the default and manipulated
    reconstructions (bb, bb_man, enc, enc_man, enc_man+); replaced patches outlined in yellow on the
    input and on the manipulated reconstructions."""
    figure = result.figure_data
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
    title = title or (f"{result.model}: {result.n_replaced} of {result.n_tokens} tokens replaced by one noise "
                      f"token ({result.noise['mode']})")
    caption = {"model": result.model, "n": len(figure["images"]), "note": NAMES_NOTE}
    return image_grid(rows, path, column_titles=columns, row_titles=titles, title=title, caption=caption)
