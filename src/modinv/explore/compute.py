"""The explorer's computations, without any page: what the browser shows is built from these.

Every number and image comes from the library's own functions: the frozen forward pass
(``model.trace`` / ``model.run``), ``chain.reconstruct``, the colour filters of
:mod:`modinv.analysis.color_filters`, the token noise of :mod:`modinv.analysis.token_noise`, the
per-image metrics of :mod:`modinv.metrics` (those ``evaluate`` averages) and the pairwise MSE of
the colour analysis. An :class:`Explorer` (model + chains) is shared read-only by every browser
session; each session keeps its own :class:`Session` (its photo and the cached frozen forward
passes of it), so two sessions never see each other's images.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from modinv.analysis.color_filters import FILTERS, apply_filter, pairwise_mse
from modinv.analysis.common import chain_stages
from modinv.analysis.token_noise import (
    DEFAULT_FRACTION, choose_tokens, image_generator, manipulate, n_replaced, patch_mask, spatial_tokens,
)
from modinv.errors import ModinvError
from modinv.explore.inputs import Photo
from modinv.inverse.chain import InverseChain
from modinv.metrics import image_metrics
from modinv.models.base import IMAGE, StagedModel, Trace

NONE = "none"
METRICS = ("mse", "psnr", "ssim")  # shown under each image (LPIPS needs weights the page cannot assume)
TOKEN_NOISE = "matched"  # the token analysis' default noise: the tokens' own per-channel mean and variance
CACHE_SIZE = 4  # frozen forward passes kept per session (the photo and its last few recolourings)
Progress = Callable[[float, str], None]


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """What is changed: a colour ``filter`` (``"none"`` or one of :data:`FILTERS`) on the whole image
    or inside ``rect`` (left, top, right, bottom as fractions of the width and height), and token
    noise at ``token_stage`` (``"none"`` or a token stage): ``fraction`` of its spatial tokens
    replaced by one noise token drawn with ``seed``, as in the token analysis."""

    filter: str = NONE
    rect: tuple[float, float, float, float] | None = None
    token_stage: str = NONE
    fraction: float = DEFAULT_FRACTION
    seed: int = 0

    def __post_init__(self) -> None:
        if self.filter not in (NONE, *FILTERS):
            raise ModinvError(f"unknown colour filter {self.filter!r}; valid: {', '.join((NONE, *FILTERS))}")
        if self.rect is not None:
            left, top, right, bottom = self.rect
            if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
                raise ModinvError("the rectangle needs 0 <= left < right <= 1 and 0 <= top < bottom <= 1 "
                                  f"(fractions of the image), got {self.rect}")
        if not 0 < self.fraction <= 1:
            raise ModinvError(f"the fraction of replaced tokens must be in (0, 1], got {self.fraction}")

    @property
    def active(self) -> bool:
        return self.filter != NONE or self.token_stage != NONE

    def record(self) -> dict[str, Any]:
        """The perturbation as JSON values."""
        return {"filter": self.filter, "rect": list(self.rect) if self.rect else None,
                "token_stage": self.token_stage, "fraction": self.fraction, "seed": self.seed,
                "token_noise": TOKEN_NOISE if self.token_stage != NONE else None}


class Explorer:
    """A frozen model and its inverse chains (``{label: chain}``), shared by every session."""

    def __init__(self, model: StagedModel, chains: Mapping[str, InverseChain]) -> None:
        if not chains:
            raise ModinvError("the explorer needs at least one inverse chain")
        self.model = model.eval()
        self.chains = dict(chains)
        self.stages = {label: chain_stages(model, chain) for label, chain in self.chains.items()}
        empty = [label for label, stages in self.stages.items() if not stages]
        if empty:
            raise ModinvError(f"the inverse chain {empty[0]!r} reconstructs the image from no stage of {model.name}")

    @property
    def size(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.model.input_size)

    @torch.no_grad()
    def forward(self, image: Tensor) -> Trace:
        """The frozen forward pass of one 3×H×W image (float32)."""
        return self.model.trace(image[None].to(self.model.device).float())


class Session:
    """One browser session: its photo, and the frozen forward passes and reconstructions of it and
    of its recolourings (at most :data:`CACHE_SIZE` of each, the oldest dropped first)."""

    def __init__(self) -> None:
        self.photo: Photo | None = None
        self._cache: dict[str, OrderedDict[tuple, Any]] = {k: OrderedDict() for k in ("trace", "panels", "output")}

    def set_photo(self, photo: Photo) -> None:
        self.photo = photo
        for cache in self._cache.values():
            cache.clear()

    def remember(self, kind: str, key: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()``, once per ``kind`` ("trace", "panels", "output") and ``key`` (the input's recolouring)."""
        cache = self._cache[kind]
        if key in cache:
            cache.move_to_end(key)
        else:
            cache[key] = compute()
            while len(cache) > CACHE_SIZE:
                cache.popitem(last=False)
        return cache[key]

    def trace(self, explorer: Explorer, key: tuple, image: Tensor) -> Trace:
        """The frozen forward pass of ``image``, computed once per ``key`` (the input's recolouring)."""
        return self.remember("trace", key, lambda: explorer.forward(image))

    @property
    def cached(self) -> int:
        """How many frozen forward passes the session holds."""
        return len(self._cache["trace"])


# -- perturbations ---------------------------------------------------------------------------------

def token_stages(model: StagedModel, trace: Trace) -> list[str]:
    """The stages whose tokens can be replaced (token sequences on the model's patch grid), as the
    token analysis finds them (:func:`~modinv.analysis.token_noise.spatial_tokens`)."""
    found = []
    for stage in model.stages:
        try:
            spatial_tokens(model, trace, stage)
        except (ModinvError, KeyError):
            continue
        found.append(stage)
    return found


def rect_mask(rect: tuple[float, float, float, float], size: tuple[int, int]) -> Tensor:
    """Bool H×W, True inside ``rect`` (left, top, right, bottom as fractions of width and height)."""
    h, w = size
    left, top, right, bottom = rect
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[round(top * h):max(round(bottom * h), round(top * h) + 1),
         round(left * w):max(round(right * w), round(left * w) + 1)] = True
    return mask


def recolor(image: Tensor, p: Perturbation) -> tuple[Tensor, Tensor | None]:
    """``(image recoloured by p.filter, the region it acts on or None for the whole image)``."""
    if p.filter == NONE:
        return image, None
    mask = rect_mask(p.rect, tuple(image.shape[-2:])) if p.rect else None
    return apply_filter(image, p.filter, mask), mask


def add_token_noise(model: StagedModel, trace: Trace, p: Perturbation) -> tuple[Trace, Tensor]:
    """``trace`` with ``p.fraction`` of the spatial tokens of ``p.token_stage`` replaced by one noise
    token (plus their position embedding where the stage has one; seed ``p.seed``), the later stages
    recomputed from it; and the replaced patches as a bool H×W mask."""
    if p.token_stage not in token_stages(model, trace):
        raise ModinvError(f"{p.token_stage!r} is not a token stage of {model.name}; token stages: "
                          f"{', '.join(token_stages(model, trace)) or 'none'}")
    _, n = spatial_tokens(model, trace, p.token_stage)
    generator = image_generator(p.seed, 0)
    indices = choose_tokens(n, n_replaced(n, p.fraction), generator)[None]
    units = torch.rand(trace[p.token_stage].shape[-1], generator=generator)[None]
    edited = trace.edit(p.token_stage, manipulate(model, trace, p.token_stage, indices, units, TOKEN_NOISE))
    if p.token_stage != model.stages[-1]:
        edited = model.run(edited, p.token_stage, model.stages[-1])
    mask = patch_mask(indices, trace.context["grid"], trace[IMAGE].shape[-2:])[0]
    return edited, mask


# -- reconstructions, numbers, the model's output ------------------------------------------------------

@dataclasses.dataclass
class Panel:
    """One chain's reconstructions of one input: ``images`` {stage: 3×H×W} and ``metrics`` {stage:
    {metric: value}} against ``target`` (the input the chain should give back)."""

    images: dict[str, Tensor]
    metrics: dict[str, dict[str, float]]


@torch.no_grad()
def reconstruct(explorer: Explorer, trace: Trace, target: Tensor, progress: Progress | None = None) -> dict[str, Panel]:
    """Every chain's reconstruction from each of its stages (``chain.reconstruct``) with the
    per-image MSE, PSNR and SSIM against ``target`` (3×H×W), as ``evaluate`` computes them."""
    panels = {}
    for i, (label, chain) in enumerate(explorer.chains.items()):
        if progress:
            progress(i / len(explorer.chains), f"reconstructing with {label}")
        stages = explorer.stages[label]
        images = torch.cat([chain.reconstruct(trace, s).float() for s in stages]).cpu()
        values = image_metrics(images, target[None].float().cpu().expand_as(images), METRICS)
        panels[label] = Panel({s: images[j] for j, s in enumerate(stages)},
                              {s: {m: float(values[m][j]) for m in values} for j, s in enumerate(stages)})
    return panels


@torch.no_grad()
def model_output(model: StagedModel, trace: Trace, k: int = 5, threshold: float = 0.5) -> dict[str, Any]:
    """The model's own answer: ``{"task": "classification", "top": [{"label", "index", "probability"}]}``
    (top ``k``), ``{"task": "detection", "detections": [{"label", "index", "score", "box"}]}`` (score
    above ``threshold``, boxes xyxy in input pixels), or ``{"task": None}`` for a model without a task."""
    from modinv.analysis.errors import detections
    from modinv.demo.report import class_names

    task = model.meta.task
    if task == "classification":
        probs = model.output(trace).float().softmax(-1)[0].cpu()
        names = class_names(model, probs.numel())
        p, i = probs.topk(min(k, probs.numel()))
        return {"task": task, "top": [{"label": names[int(j)], "index": int(j), "probability": float(q)}
                                      for q, j in zip(p, i)]}
    if task == "detection":
        found = detections(model, trace, threshold)[0]
        names = model.meta.class_names or ()
        return {"task": task, "detections": [
            {"label": names[int(c)] if int(c) < len(names) else f"class {int(c)}", "index": int(c),
             "score": float(s), "box": [float(v) for v in b]}
            for b, c, s in zip(found["boxes"], found["labels"], found["scores"])]}
    return {"task": None}


@dataclasses.dataclass
class View:
    """Everything the page shows for one photo and perturbation."""

    name: str
    notes: tuple[str, ...]
    perturbation: Perturbation
    image: Tensor  # 3×H×W input
    original: dict[str, Panel]
    output: dict[str, Any]
    perturbed_image: Tensor | None = None  # the recoloured input (the input itself for token noise alone)
    region: Tensor | None = None  # bool H×W: the pixels a filter or the token noise changed (None: all)
    perturbed: dict[str, Panel] | None = None
    perturbed_output: dict[str, Any] | None = None
    pairwise: dict[str, dict[str, float]] | None = None  # {label: {"input" | stage: pairwise MSE}}


def explore(explorer: Explorer, session: Session, p: Perturbation = Perturbation(),
            progress: Progress | None = None) -> View:
    """The session's photo and every chain's reconstructions; with an active perturbation also
    those of the perturbed input and the pairwise MSE between the two versions, per stage."""
    if session.photo is None:
        raise ModinvError("pick a sample photo or upload an image first")
    photo = session.photo
    trace = session.trace(explorer, (NONE, None), photo.image)
    original = session.remember("panels", (NONE, None), lambda: reconstruct(explorer, trace, photo.image, progress))
    output = session.remember("output", (NONE, None), lambda: model_output(explorer.model, trace))
    view = View(photo.name, photo.notes, p, photo.image, original, output)
    if not p.active:
        return view
    image, region = recolor(photo.image, p)
    perturbed = session.trace(explorer, (p.filter, p.rect), image) if p.filter != NONE else trace
    if p.token_stage != NONE:
        perturbed, region = add_token_noise(explorer.model, perturbed, p)
        view.perturbed = reconstruct(explorer, perturbed, image, progress)
        view.perturbed_output = model_output(explorer.model, perturbed)
    else:
        key = (p.filter, p.rect)
        view.perturbed = session.remember("panels", key, lambda: reconstruct(explorer, perturbed, image, progress))
        view.perturbed_output = session.remember("output", key, lambda: model_output(explorer.model, perturbed))
    view.perturbed_image, view.region = image, region
    view.pairwise = {label: {"input": float(pairwise_mse(torch.stack([photo.image, image])))}
                     | {s: float(pairwise_mse(torch.stack([panel.images[s], view.perturbed[label].images[s]])))
                        for s in panel.images}
                     for label, panel in view.original.items()}
    return view
