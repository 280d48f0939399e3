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
(null when outside is 0). When every token is replaced (``fraction`` 1) and the patches cover the
image, nothing lies outside them: the outside numbers, ``locality`` and ``ratio`` are undefined (null)
and ``note`` says so; inside is then the change over the whole image. The same inside/outside errors against the *input* are given for the
manipulated and the default reconstructions (``vs_input``, ``default_vs_input``).

``tokens.json`` (``TokenNoiseResult.to_json()``, plus from the CLI ``data``, ``inverse``,
``figure``): ``analysis, model, weights, n_images, pixel_space, grid, patch_size, n_tokens,
n_replaced, num_prefix_tokens, fraction, seed, noise {mode, description}, position_embedding
{stage: bool, source, description}, reference, conditions, chains {label: bb variant}, ci, precision, note, results
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

from modinv.analysis.common import (
    AnalysisResult, AnalysisRun, RunOptions, figure_field, interval_record, model_record, unique_label,
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
    token_pair,
)
from modinv.errors import ModinvError
from modinv.figures import image_grid
from modinv.inverse.chain import InverseChain
from modinv.metrics import summarize, summarize_in_range
from modinv.models.base import StagedModel

NOTHING_OUTSIDE = ("every token is replaced, so no pixel lies outside the replaced patches: the outside errors, "
                   "locality and ratio are undefined (null) and inside is the change over the whole image")
CONDITIONS = ("bb_man", "enc_man", "enc_man+")  # the paper's names; the model's token stages play bb and enc
REFERENCE = "the unmanipulated reconstruction from the same stage with the same chain"
NOISE_DESCRIPTIONS = {
    "matched": "one vector u ~ U(0,1)^D per image; noise = mu + sqrt(3)*sigma*(2u - 1) per channel, with mu, sigma "
               "the channel's mean and std over the image's spatial tokens at that stage (position embedding "
               "removed where the tokens contain it): uniform with the tokens' own mean and variance",
    "unit": "one vector u ~ U(0,1)^D per image, used as is (the paper's literal 'uniform noise')",
}
POSITION_DESCRIPTION = (
    "replaced token = noise + the position embedding of its own position wherever the model declares explicit "
    "positions at the stage: added beside the tokens at every layer (e.g. DETR's sine embedding at bb and enc) or "
    "embedded in them (e.g. ViT's learned embedding at bb); nothing where the tokens hold no explicit position "
    "(e.g. ViT's enc, paper Sec. 4.5; Swin, whose positions are a relative bias inside attention)"
)


@dataclasses.dataclass(kw_only=True)
class TokenNoiseResult(AnalysisResult):
    """The numbers of ``tokens.json``; ``figure_data``: ``{"images", "names", "masks", "stages" (the
    two token stages), "rows": {chain label: [{first stage, second stage, "bb_man", "enc_man",
    "enc_man+"} per image]}}`` (tensors)."""

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
    window: dict[str, Any] = dataclasses.field(default_factory=dict)  # stage -> attention window, None: global
    reference: str = REFERENCE
    conditions: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    chains: dict[str, str]
    ci: dict[str, Any] = dataclasses.field(default_factory=dict)  # the interval methods used
    precision: str = "float32"
    note: str | None = None  # why numbers are undefined (every token replaced), else None
    results: dict[str, dict[str, dict[str, Any]]]
    figure_data: dict[str, Any] = figure_field()


# -- the analysis ----------------------------------------------------------------------------------------

def _mse(values: Tensor) -> dict[str, Any]:
    """Mean of per-image MSEs with a 95% CI inside [0, 1]."""
    return summarize(values, low=0.0, high=1.0)


def _variant(chain: InverseChain, stage: str, default: str) -> str:
    return str(chain.component_meta.get(stage, {}).get("variant", default))


def _label_chains(chains: Mapping[str, InverseChain] | Sequence[InverseChain],
                  first: str) -> dict[str, InverseChain]:
    if isinstance(chains, Mapping):
        return dict(chains)
    out: dict[str, InverseChain] = {}
    for chain in chains:
        out[unique_label(_variant(chain, first, "chain"), out)] = chain
    return out


def complete_chains(chains: Mapping[str, InverseChain], stages: Sequence[str]) -> dict[str, InverseChain]:
    """Every chain with components for ``stages`` (and the ones below them): a missing one is taken
    from the first chain that has it (components are trained independently, e.g. DETR's local bb⁻¹
    with the standard enc⁻¹). The chains given are not changed; completed ones are new chains
    sharing the modules."""
    out = {}
    for label, chain in chains.items():
        wanted = list(chain.model_stages[: max(chain.model_stages.index(s) for s in stages) + 1])
        missing = [s for s in wanted if s not in chain.components]
        if missing:
            components = dict(chain.components.items())
            meta = {s: chain.component_meta[s] for s in chain.stages}
            for stage in missing:
                donor = next((c for c in chains.values() if stage in c.components), None)
                if donor is None:
                    raise ModinvError(f"no inverse chain given has a component for {stage!r}; the token analysis "
                                      f"needs {' and '.join(wanted)}")
                components[stage], meta[stage] = donor.components[stage], donor.component_meta[stage]
            chain = InverseChain(components, chain.layout, meta)
        out[label] = chain
    return out


class _TokenNoise:
    """The per-batch step of :func:`token_noise_analysis` and its result builder."""

    KEYS = ("inside", "outside", "in_input", "out_input", "def_in_input", "def_out_input")

    def __init__(self, run: AnalysisRun, chains: dict[str, InverseChain], pair: tuple[str, str],
                 fraction: float, noise: str, seed: int, figure_images: int) -> None:
        self.run, self.model, self.chains, self.pair = run, run.model, chains, pair
        self.fraction, self.noise, self.seed, self.figure_images = fraction, noise, seed, figure_images
        first, second = pair
        # condition -> (stage whose tokens are replaced, stage reconstructed from)
        self.stages = {"bb_man": (first, first), "enc_man": (second, second), "enc_man+": (first, second)}
        self.per = {c: {cond: {k: [] for k in self.KEYS} for cond in CONDITIONS} for c in chains}
        self.figure: dict[str, Any] = {"images": [], "names": [], "masks": [], "stages": list(pair),
                                       "rows": {c: [] for c in chains}}
        self.info: dict[str, Any] = {}
        self.nothing_outside = False  # the replaced patches covered a whole image (every token replaced)

    def _describe(self, trace, images: Tensor) -> None:
        model, (first, second) = self.model, self.pair
        prefix, n = spatial_tokens(model, trace, first)
        grid = model.token_stage(first).grid
        positions = {s: position_embedding(model, trace, s) for s in self.pair}
        self.info = {"grid": list(grid), "n_tokens": n, "n_replaced": n_replaced(n, self.fraction),
                     "num_prefix_tokens": prefix,
                     "patch_size": [images.shape[-2] // grid[0], images.shape[-1] // grid[1]],
                     "window": {s: model.token_stage(s).window for s in self.pair},
                     "position_embedding": {s: p[0] is not None for s, p in positions.items()},
                     "position_source": {s: p[2] for s, p in positions.items()}}

    def _manipulated(self, batch: dict[str, Any]) -> tuple[Any, dict[str, Any], Tensor]:
        """(trace, {condition: edited trace}, B×H×W mask of the replaced patches)."""
        model, run, (first, second) = self.model, self.run, self.pair
        images = batch["image"]
        with run.autocast():
            trace = model.trace(images, end=second)
        if not self.info:
            self._describe(trace, images)
        n, k = self.info["n_tokens"], self.info["n_replaced"]
        gens = [image_generator(self.seed, int(i)) for i in batch["index"]]
        indices = torch.stack([choose_tokens(n, k, g) for g in gens])
        width = model.token_content(trace, first).shape[-1]
        units = torch.stack([torch.rand(width, generator=g) for g in gens])
        with run.autocast():
            first_man = manipulate(model, trace, first, indices, units, self.noise)
            second_man = manipulate(model, trace, second, indices, units, self.noise)
            plus = model.run(trace.edit(first, first_man), first, second)
        traces = {"bb_man": trace.edit(first, first_man), "enc_man": trace.edit(second, second_man), "enc_man+": plus}
        return trace, traces, patch_mask(indices, self.info["grid"], images.shape[-2:])

    def __call__(self, batch: dict[str, Any]) -> None:
        images = batch["image"]
        trace, traces, mask = self._manipulated(batch)
        self.nothing_outside |= bool(mask.flatten(1).all(1).any())
        keep = max(0, min(self.figure_images - len(self.figure["images"]), images.shape[0]))
        self.figure["images"] += [images[i].float().cpu() for i in range(keep)]
        self.figure["names"] += list(batch["name"][:keep])
        self.figure["masks"] += [mask[i] for i in range(keep)]
        for label, chain in self.chains.items():
            with self.run.autocast():
                default = {s: chain.reconstruct(trace, s).float() for s in self.pair}
                manipulated = {c: chain.reconstruct(traces[c], self.stages[c][1]).float() for c in CONDITIONS}
            for cond in CONDITIONS:
                ref, rec, out = default[self.stages[cond][1]], manipulated[cond], self.per[label][cond]
                for (a, b), (key_in, key_out) in (((rec, ref), ("inside", "outside")),
                                                  ((rec, images), ("in_input", "out_input")),
                                                  ((ref, images), ("def_in_input", "def_out_input"))):
                    inside, outside = region_mse(a, b, mask)
                    out[key_in].append(inside)
                    out[key_out].append(outside)
            for i in range(keep):
                self.figure["rows"][label].append({**{s: default[s][i].cpu() for s in self.pair},
                                                   **{c: manipulated[c][i].cpu() for c in CONDITIONS}})

    def _numbers(self, label: str, cond: str) -> dict[str, Any]:
        v = {key: torch.cat(vals).double() for key, vals in self.per[label][cond].items()}
        total = v["inside"] + v["outside"]
        locality = torch.where(total > 0, v["inside"] / total.clamp_min(1e-300), torch.full_like(total, math.nan))
        locality = locality[~torch.isnan(locality)]
        mean_out = float(v["outside"].mean())
        return {
            "inside": _mse(v["inside"]),
            "outside": _mse(v["outside"]),
            "locality": summarize_in_range(locality, 0.0, 1.0),  # a fraction
            "ratio": float(v["inside"].mean()) / mean_out if mean_out > 0 else None,
            "vs_input": {"inside": _mse(v["in_input"]), "outside": _mse(v["out_input"])},
            "default_vs_input": {"inside": _mse(v["def_in_input"]), "outside": _mse(v["def_out_input"])},
        }

    def result(self, n_images: int) -> TokenNoiseResult:
        results = {label: {cond: self._numbers(label, cond) for cond in CONDITIONS} for label in self.chains}
        info, first = self.info, self.pair[0]
        return TokenNoiseResult(
            **model_record(self.model),
            n_images=n_images,
            **{k: info[k] for k in ("grid", "patch_size", "n_tokens", "n_replaced", "num_prefix_tokens", "window")},
            fraction=self.fraction,
            seed=self.seed,
            noise={"mode": self.noise, "description": NOISE_DESCRIPTIONS[self.noise]},
            position_embedding={**info["position_embedding"], "source": info["position_source"],
                                "description": POSITION_DESCRIPTION},
            conditions={c: {"manipulated": m, "reconstructed_from": r} for c, (m, r) in self.stages.items()},
            chains={label: _variant(chain, first, "unknown") for label, chain in self.chains.items()},
            results=results,
            ci=interval_record(results),
            precision=self.run.precision,
            note=NOTHING_OUTSIDE if self.nothing_outside else None,
            figure_data=self.figure,
        )


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
    stages: Sequence[str] | None = None,
) -> TokenNoiseResult:
    """Run the three conditions for every chain over ``source``: the numbers of ``tokens.json``, and
    in ``figure_data`` the tensors of the first ``figure_images`` images (for :func:`token_noise_figure`).

    The two token stages (``stages``; default :func:`~modinv.analysis.token_noise.token_pair`: the
    first two the model declares on one patch grid) play the paper's bb and enc."""
    if noise not in NOISE_MODES:
        raise ModinvError(f"unknown noise mode {noise!r}; choose from {', '.join(NOISE_MODES)}")
    n_replaced(1, fraction)  # one sentence for a bad fraction before any work
    pair = token_pair(model, stages)
    if isinstance(chains, InverseChain):
        chains = [chains]
    chains = complete_chains(_label_chains(chains, pair[0]), pair)
    run = AnalysisRun(model, "tokens", RunOptions(batch_size, limit, amp, progress=progress))
    step = _TokenNoise(run, chains, pair, fraction, noise, seed, figure_images)
    return step.result(run.feed(source, step))


# What the figure's column names mean, in its caption (the README and the CLI help say the same).
NAMES_NOTE = ("bb_man: tokens replaced at bb, reconstructed from bb; enc_man: replaced at enc, reconstructed from "
              "enc; enc_man+: replaced at bb, passed on through the encoder, reconstructed from enc")


def token_noise_figure(result: TokenNoiseResult, path: str | Path, title: str | None = None) -> Path:
    """Fig. 9: per image and chain one row: the input, then the default and manipulated
    reconstructions (bb, bb_man, enc, enc_man, enc_man+); replaced patches outlined in yellow on the
    input and on the manipulated reconstructions."""
    figure = result.figure_data
    first, second = figure["stages"]
    rows, titles = [], []
    for i, image in enumerate(figure["images"]):
        mask = figure["masks"][i]
        for label, recs in figure["rows"].items():
            r = recs[i]
            rows.append([outline(image, mask), r[first], outline(r["bb_man"], mask), r[second],
                         outline(r["enc_man"], mask), outline(r["enc_man+"], mask)])
            titles.append(f"{Path(str(figure['names'][i])).stem[:18]}\n{label} {first}⁻¹")
    if not rows:
        raise ModinvError("no images to draw")
    columns = ["input (replaced outlined)", f"from {first}", "bb_man", f"from {second}", "enc_man", "enc_man+"]
    title = title or (f"{result.model}: {result.n_replaced} of {result.n_tokens} tokens replaced by one noise "
                      f"token ({result.noise['mode']})")
    caption = {"model": result.model, "n": len(figure["images"]), "note": NAMES_NOTE}
    return image_grid(rows, path, column_titles=columns, row_titles=titles, title=title, caption=caption)
