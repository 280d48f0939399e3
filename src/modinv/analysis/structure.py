"""Reconstructions from pred through the FD and the OH pred⁻¹ beside the other stages (Fig. 8).

DETR's pred⁻¹ comes in two variants (paper Section 4.4): FD sees the full softmax distribution of
the class logits, OH only the one-hot arg-max class (boxes kept in both). This analysis takes two
inverse chains, tells FD from OH by their pred component (its config's ``mode``, else its recorded
``variant``), and reconstructs every image from every stage, and from ``pred`` once through each
pred⁻¹. Both pred paths continue through the *same* dec⁻¹, enc⁻¹ and bb⁻¹ (the FD chain's; a stage
the FD chain lacks is taken from the OH chain), so their difference isolates the pred⁻¹ variant;
the OH chain may therefore hold only its pred component.

    result = structure_analysis(model, [fd_chain, oh_chain], source)     # a StructureResult
    structure_figure(result, "structure.png")                             # or `modinv analyze structure`

Numbers (``structure.json``, :meth:`StructureResult.to_json` plus ``inverse``, ``data``, ``figure``):
``{"analysis": "structure", "model", "weights", "columns": ["bb",
"enc", "dec", "pred_fd", "pred_oh"], "mse": {column: {"mse", "ci95", "n", "std"}}, "fd_vs_oh":
summary of the per-image MSE between the FD and the OH reconstruction, "oh_minus_fd": summary of
the per-image paired difference MSE(OH) - MSE(FD), "per_image": [{"image", "mse": {column: v},
"fd_vs_oh_mse", "oh_minus_fd_mse", "detections": [{"label", "score", "box_xyxy"}]}], "components":
{stage: "fd" | "oh"} (which chain supplied each component), "inverse": {"fd", "oh"}, "n_images",
"box_threshold", "pixel_space", "ci", "precision", "figure"}``. Means of per-image MSEs (``mse``,
``fd_vs_oh``) have a 95% CI inside [0, 1] (a BCa bootstrap, :mod:`modinv.metrics.bounded`), the
paired difference ``oh_minus_fd`` a Student-t CI; ``ci`` names the methods used. The figure shows one row per image (the first
``n_examples``, kept in ``figure_data``): the input with the detector's detections (score >
``box_threshold``) drawn as boxes, then the reconstructions from bb, enc, dec, pred (FD) and pred
(OH). Detections come from ``model.output(trace)`` and are listed only for models whose metadata
declares ``task == "detection"``; class names from ``model.meta.class_names``.

Models that declare no prediction stage with class and box outputs (``model.prediction_stage()``;
e.g. ViT, Swin) are refused with one sentence naming that role.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from modinv.analysis.common import (
    AnalysisResult, AnalysisRun, RunOptions, figure_field, interval_record, model_record,
)
from modinv.analysis.task import trace_detections
from modinv.errors import ModinvError
from modinv.figures import image_grid
from modinv.inverse.chain import InverseChain, layout_mismatch, model_layout
from modinv.metrics import per_image_mse, summarize
from modinv.models.base import StagedModel
from modinv.models.roles import missing_role

VARIANTS = ("fd", "oh")
BOX_COLOR = (1.0, 0.15, 0.1)
FD, OH = "pred_fd", "pred_oh"  # the columns of the two pred⁻¹ variants
COLUMN_TITLES = {FD: "from pred (FD)", OH: "from pred (OH)"}
NEEDED_OUTPUTS = ("class", "box")

__all__ = ["StructureResult", "detections", "draw_boxes", "pred_variant", "require_pred", "split_fd_oh", "structure_analysis",
           "structure_figure"]


@dataclass
class StructureResult(AnalysisResult):
    """The numbers of ``structure.json`` (see the module doc); ``figure_data``: the first images'
    rows ``[{"image", "input", "boxes", "reconstructions": {column: 3×H×W}}]``."""

    model: str
    weights: str
    columns: list[str]
    mse: dict[str, dict[str, Any]]
    fd_vs_oh: dict[str, Any]
    oh_minus_fd: dict[str, Any]
    per_image: list[dict[str, Any]]
    components: dict[str, str]
    variants: dict[str, str]
    n_images: int
    box_threshold: float
    analysis: str = "structure"
    pixel_space: str = "[0, 1]"
    ci: dict[str, Any] = field(default_factory=dict)  # the interval methods used (interval_record)
    precision: str = "float32"
    figure_data: list[dict[str, Any]] = figure_field()


def pred_variant(chain, stage: str | None = None) -> str:
    """"fd" or "oh": the variant of ``chain``'s pred⁻¹, the component of the prediction ``stage``
    (default: the model's last stage; its config's ``mode``, else its recorded ``variant``). Raises
    a :class:`ModinvError` when the chain has no such component or it is neither."""
    stage = stage or chain.model_stages[-1]
    if stage not in chain.components:
        raise ModinvError(
            f"the inverse chain holds no {stage}⁻¹ (it holds: {', '.join(chain.stages) or 'nothing'}); "
            "the structure analysis needs one chain with the FD and one with the OH pred⁻¹"
        )
    meta = chain.component_meta.get(stage, {})
    mode = (meta.get("config") or {}).get("mode") or getattr(chain.components[stage], "mode", None)
    if mode not in VARIANTS:
        mode = meta.get("variant")
    if mode not in VARIANTS:
        raise ModinvError(
            f"cannot tell whether this pred⁻¹ is FD or OH (kind {meta.get('kind')!r}, variant "
            f"{meta.get('variant')!r}); train it as variant fd or oh (modinv train --variant {stage}=fd)"
        )
    return str(mode)


def split_fd_oh(chains: Sequence[Any], stage: str | None = None) -> tuple[Any, Any]:
    """``(fd_chain, oh_chain)`` from two chains given in any order (``stage``: the prediction stage)."""
    chains = list(chains)
    if len(chains) != 2:
        raise ModinvError(f"the structure analysis takes two inverse chains (FD and OH pred⁻¹), got {len(chains)}")
    variants = [pred_variant(c, stage) for c in chains]
    if set(variants) != set(VARIANTS):
        raise ModinvError(
            f"the two chains must hold one FD and one OH pred⁻¹; both hold {variants[0].upper()} "
            f"(train the other as variant {'oh' if variants[0] == 'fd' else 'fd'}: modinv train --variant "
            f"{stage or chains[0].model_stages[-1]}={'oh' if variants[0] == 'fd' else 'fd'})"
        )
    return (chains[0], chains[1]) if variants[0] == "fd" else (chains[1], chains[0])


def _composite(model, fd, oh) -> tuple[Any, Any, dict[str, str]]:
    """Two full chains sharing every component but pred: FD's where it has one, else OH's."""
    pred = require_pred(model)
    for name, chain in (("FD", fd), ("OH", oh)):
        why = layout_mismatch(chain.layout, model_layout(model))
        if why:
            raise ModinvError(f"the {name} chain does not fit model {model.name!r}: {why}")
    before = list(model.stages[: model.stages.index(pred)])
    shared, meta, origin = {}, {}, {}
    for stage in before:
        for tag, chain in (("fd", fd), ("oh", oh)):
            if stage in chain.components:
                shared[stage], meta[stage], origin[stage] = (chain.components[stage], chain.component_meta[stage], tag)
                break
        else:
            raise ModinvError(
                f"neither chain has an inverse component for {stage!r}; reconstructing from {pred} needs "
                f"{', '.join(before)}"
            )
    made = []
    for tag, chain in (("fd", fd), ("oh", oh)):
        components = dict(shared) | {pred: chain.components[pred]}
        metas = dict(meta) | {pred: chain.component_meta[pred]}
        made.append(InverseChain(components, fd.layout, metas))
    return made[0], made[1], origin | {pred: "fd and oh"}


def require_pred(model) -> str:
    """The model's prediction stage (it must hold class and box outputs), or one sentence naming
    the missing role."""
    role = model.prediction_stage()
    if role is None or not set(NEEDED_OUTPUTS) <= set(role.outputs):
        raise missing_role("structure", "a prediction stage with class and box outputs", model)
    return role.stage


def detections(model, trace, threshold: float) -> list[list[dict[str, Any]]]:
    """The detector's detections per image (``model.detections``): the best real class of each
    query with softmax score above ``threshold``, box in xyxy pixels of the input; ``[]`` per image
    when the model's metadata does not declare ``task == "detection"``."""
    if model.meta.task != "detection":
        return [[] for _ in range(trace.batch_size)]
    names = list(model.meta.class_names or ())
    out = []
    for pred in trace_detections(model, trace):
        found = []
        for q in (pred["scores"] > threshold).nonzero().flatten().tolist():
            label = int(pred["labels"][q])
            found.append({"label": names[label] if label < len(names) else str(label), "label_id": label,
                          "score": float(pred["scores"][q]),
                          "box_xyxy": [round(v, 2) for v in pred["boxes"][q].tolist()]})
        out.append(found)
    return out


def draw_boxes(image: Tensor, boxes: Sequence[Sequence[float]], color=BOX_COLOR, width: int | None = None) -> Tensor:
    """A copy of ``image`` (3×H×W) with rectangle outlines at ``boxes`` (xyxy pixels)."""
    out = image.detach().float().cpu().clone()
    _, h, w = out.shape
    width = width or max(1, round(min(h, w) / 160))
    c = torch.tensor(color, dtype=out.dtype)[:, None, None]
    for x0, y0, x1, y1 in boxes:
        x0, x1 = sorted((int(max(0, min(w - 1, round(x0)))), int(max(0, min(w - 1, round(x1))))))
        y0, y1 = sorted((int(max(0, min(h - 1, round(y0)))), int(max(0, min(h - 1, round(y1))))))
        out[:, y0:y1 + 1, x0:x0 + width] = c
        out[:, y0:y1 + 1, max(x1 - width + 1, 0):x1 + 1] = c
        out[:, y0:y0 + width, x0:x1 + 1] = c
        out[:, max(y1 - width + 1, 0):y1 + 1, x0:x1 + 1] = c
    return out


class _Structure:
    """The per-batch step of :func:`structure_analysis` and its result builder."""

    def __init__(self, run: AnalysisRun, chains: tuple[Any, Any], pred: str, n_examples: int,
                 box_threshold: float) -> None:
        self.run, self.model, (self.fd, self.oh), self.pred = run, run.model, chains, pred
        self.before = list(self.model.stages[: self.model.stages.index(pred)])
        self.columns = self.before + [FD, OH]
        self.n_examples, self.box_threshold = n_examples, box_threshold
        self.per_image: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []
        self.errors: dict[str, list[Tensor]] = {c: [] for c in self.columns}
        self.between: list[Tensor] = []

    def __call__(self, batch: dict[str, Any]) -> None:
        images, names = batch["image"], [str(n) for n in batch["name"]]
        with self.run.autocast():
            trace = self.model.trace(images)
            recons = {s: self.fd.reconstruct(trace, s) for s in self.before}
            recons[FD] = self.fd.reconstruct(trace, self.pred)
            recons[OH] = self.oh.reconstruct(trace, self.pred)
        recons = {k: v.float() for k, v in recons.items()}
        mse = {c: per_image_mse(recons[c], images).cpu() for c in self.columns}
        diff = per_image_mse(recons[FD], recons[OH]).cpu()
        found = detections(self.model, trace, self.box_threshold)
        for c in self.columns:
            self.errors[c].append(mse[c])
        self.between.append(diff)
        for b, name in enumerate(names):
            self.per_image.append({"image": name, "mse": {c: float(mse[c][b]) for c in self.columns},
                                   "fd_vs_oh_mse": float(diff[b]), "oh_minus_fd_mse": float(mse[OH][b] - mse[FD][b]),
                                   "detections": found[b]})
            if len(self.rows) < self.n_examples:
                self.rows.append({"image": name, "input": images[b].float().cpu(),
                                  "boxes": [d["box_xyxy"] for d in found[b]],
                                  "reconstructions": {c: recons[c][b].cpu() for c in self.columns}})

    def result(self, origin: dict[str, str]) -> StructureResult:
        mse = {c: summarize(torch.cat(v), low=0.0, high=1.0) for c, v in self.errors.items()}
        fd_vs_oh = summarize(torch.cat(self.between), low=0.0, high=1.0)
        oh_minus_fd = summarize([p["oh_minus_fd_mse"] for p in self.per_image])  # a difference: can be negative
        return StructureResult(
            **model_record(self.model), columns=self.columns, mse=mse, fd_vs_oh=fd_vs_oh, oh_minus_fd=oh_minus_fd,
            ci=interval_record(mse, fd_vs_oh, oh_minus_fd), per_image=self.per_image, components=origin,
            variants={"fd": "fd", "oh": "oh"}, n_images=len(self.per_image), box_threshold=self.box_threshold,
            precision=self.run.precision, figure_data=self.rows,
        )


@torch.no_grad()
def structure_analysis(
    model: StagedModel,
    chains: Sequence[InverseChain],
    source,
    batch_size: int = 8,
    limit: int | None = None,
    n_examples: int = 4,
    box_threshold: float = 0.7,
    amp: str = "off",
    progress: bool = True,
) -> StructureResult:
    """Per-stage reconstruction MSE with the FD and OH pred⁻¹ and their per-image difference.

    ``chains``: the FD and the OH chain in any order (see :func:`split_fd_oh`). ``source``: images
    at the model's input size; ``limit``: at most this many; ``n_examples``: images kept for the
    figure. The model must declare a prediction stage with class and box outputs (DETR's ``pred``).
    """
    pred = require_pred(model)
    fd, oh = split_fd_oh(chains, pred)
    fd_full, oh_full, origin = _composite(model, fd, oh)
    run = AnalysisRun(model, "structure", RunOptions(batch_size, limit, amp, progress=progress))
    step = _Structure(run, (fd_full, oh_full), pred, n_examples, box_threshold)
    run.feed(source, step)
    return step.result(origin)


# What the figure's names mean, in its caption (the README and the CLI help say the same).
NAMES_NOTE = ("FD: pred⁻¹ fed the full distribution (softmax over all class logits) and boxes; OH: pred⁻¹ fed "
              "only the one-hot arg-max class and boxes")


def structure_figure(result: StructureResult, path: str | Path, title: str | None = None) -> Path:
    """Fig. 8: one row per kept image: the input (detections boxed), then each column's reconstruction."""
    rows = result.figure_data
    if not rows:
        raise ModinvError("no images to plot")
    columns = list(rows[0]["reconstructions"])
    grid = [[draw_boxes(r["input"], r.get("boxes", []))] + [r["reconstructions"][c] for c in columns] for r in rows]
    titles = ["input (detections)"] + [COLUMN_TITLES.get(c, f"from {c}") for c in columns]
    row_titles = [Path(str(r["image"])).stem[:18] for r in rows]
    caption = {"model": getattr(result, "model", None), "n": getattr(result, "n_images", None), "note": NAMES_NOTE}
    return image_grid(grid, path, column_titles=titles, row_titles=row_titles, title=title, caption=caption)
