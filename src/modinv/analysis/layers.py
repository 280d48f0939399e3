"""Reconstructions from intermediate encoder and decoder layers (paper Sec. 4.7, Fig. 11).

    result = layer_analysis(model, chain, source)                # a LayerResult
    layer_figure(result, "layers.png")                            # or `modinv analyze layers`

``model.layers(images)`` gives every layer output of the model's multi-layer stages, each shaped like
its stage: DETR ``{"enc": 7, "dec": 7}`` (index 0 is the stack's input — x_bb for the encoder, the
zero queries for the decoder — and 1..6 the layer outputs, the last being x_enc / x_dec), ViT
``{"enc": 13}`` (x_bb, then the 12 blocks). Each layer tensor is fed to the inverse components of
every stage of the same shape — trace.edit(stage, tensor), then chain.reconstruct(…, stage):

- DETR encoder layers -> bb⁻¹ (entry ``bb``) and -> enc⁻¹∘bb⁻¹ (entry ``enc``);
- DETR decoder layers -> dec⁻¹∘enc⁻¹∘bb⁻¹ (entry ``dec``);
- ViT encoder layers -> bb⁻¹ and -> enc⁻¹∘bb⁻¹.

The inverse components were trained on one layer each (``native_layer``: the layer whose tensor is
the entry stage's own representation, e.g. 0 for enc layers -> bb⁻¹, 6 for -> enc⁻¹); the others
are out of their training context, which is the point of the analysis.

Numbers: image MSE ([0, 1] pixels) between the input and each reconstruction, per row (source ->
entry) and layer: mean with a 95% CI over images that stays inside [0, 1] (a BCa bootstrap,
:mod:`modinv.metrics.bounded`; ``ci`` names the methods used).

CLI: ``modinv analyze layers --model detr-r50|vit-b16 --inverse CHAIN --data SPEC --out DIR
[--figure-images 1]`` writes ``DIR/layers.png`` and ``DIR/layers.json``.

``layers.json`` (:meth:`LayerResult.to_json` plus ``data``, ``inverse``, ``figure``): ``analysis, model, weights, data, inverse, n_images, pixel_space, ci, precision, layers
{source: number of tensors}, rows [{key, source, entry, components, native_layer}], columns
{source: [labels]}, mse {key: [{"mse", "ci95", "n", "std", "ci_method", ...} per layer]}, figure``; ``key`` is
``"<source>-><entry>"``, e.g. ``"enc->bb"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from modinv.analysis.common import (
    AnalysisResult, AnalysisRun, RunOptions, chain_stages, figure_field, interval_record, model_record,
)
from modinv.errors import ModinvError
from modinv.figures import image_grid
from modinv.inverse.chain import InverseChain
from modinv.metrics import per_image_mse, summarize
from modinv.models.base import StagedModel

__all__ = ["LayerResult", "layer_analysis", "layer_entries", "layer_figure"]


@dataclass
class LayerResult(AnalysisResult):
    """The numbers of ``layers.json`` (see the module doc); ``figure_data``: ``{"images", "names",
    "recons": [{key: [3×H×W per layer]} per image], "rows", "columns"}`` of the first images."""

    model: str
    weights: str
    n_images: int
    layers: dict[str, int]
    rows: list[dict[str, Any]]
    columns: dict[str, list[str]]
    mse: dict[str, list[dict[str, Any]]]
    analysis: str = "layers"
    pixel_space: str = "[0, 1]"
    ci: dict[str, Any] = field(default_factory=dict)  # the interval methods used (interval_record)
    precision: str = "float32"
    figure_data: dict[str, Any] = figure_field()


def layer_entries(model: StagedModel, chain: InverseChain, layers: Mapping[str, list[Tensor]]) -> list[dict[str, Any]]:
    """One row per (layer source, entry stage): every stage whose per-sample shape equals the
    source's layer shape and from which ``chain`` can reconstruct, in processing order."""
    shapes = model.stage_shapes()
    invertible = chain_stages(model, chain)
    rows = []
    for source, tensors in layers.items():
        shape = tuple(tensors[0].shape[1:])
        for stage in invertible:
            if tuple(shapes[stage]) == shape:
                rows.append({"key": f"{source}->{stage}", "source": source, "entry": stage,
                             "components": [f"{s}⁻¹" for s in chain.path(stage)], "native_layer": None})
    if not rows:
        raise ModinvError(f"no inverse component of the chain takes {model.name}'s intermediate layers "
                          f"(layer shapes {[tuple(t[0].shape[1:]) for t in layers.values()]})")
    return rows


class _Layers:
    """The per-batch step of :func:`layer_analysis` and its result builder."""

    def __init__(self, run: AnalysisRun, chain: InverseChain, figure_images: int) -> None:
        self.run, self.model, self.chain, self.figure_images = run, run.model, chain, figure_images
        self.rows: list[dict[str, Any]] | None = None
        self.errors: dict[str, list[list[Tensor]]] = {}
        self.counts: dict[str, int] = {}
        self.figure: dict[str, Any] = {"images": [], "names": [], "recons": []}

    def _start(self, layers: Mapping[str, list[Tensor]]) -> None:
        self.rows = layer_entries(self.model, self.chain, layers)
        self.counts = {s: len(t) for s, t in layers.items()}
        self.errors = {r["key"]: [[] for _ in layers[r["source"]]] for r in self.rows}

    def __call__(self, batch: dict[str, Any]) -> None:
        images, model = batch["image"], self.model
        with self.run.autocast():
            layers = model.layers(images)
            if self.rows is None:
                self._start(layers)
            deepest = max((r["entry"] for r in self.rows), key=model.stage_index)
            trace = model.trace(images, end=deepest)
        keep = max(0, min(self.figure_images - len(self.figure["images"]), images.shape[0]))
        recon_keep: list[dict[str, list[Tensor]]] = [{} for _ in range(keep)]
        for row in self.rows:
            tensors = layers[row["source"]]
            if row["native_layer"] is None:
                ref = trace[row["entry"]].float()
                native = [l for l, t in enumerate(tensors) if torch.allclose(t.float(), ref, rtol=1e-4, atol=1e-5)]
                row["native_layer"] = native[-1] if native else -1
            for l, tensor in enumerate(tensors):
                with self.run.autocast():
                    recon = self.chain.reconstruct(trace.edit(row["entry"], tensor), row["entry"]).float()
                self.errors[row["key"]][l].append(per_image_mse(recon, images).cpu())
                for i in range(keep):
                    recon_keep[i].setdefault(row["key"], []).append(recon[i].cpu())
        self.figure["images"] += [images[i].float().cpu() for i in range(keep)]
        self.figure["names"] += list(batch["name"][:keep])
        self.figure["recons"] += recon_keep

    def result(self, n_images: int) -> LayerResult:
        for row in self.rows:
            if row["native_layer"] == -1:
                row["native_layer"] = None
        columns = {s: _column_labels(n) for s, n in self.counts.items()}
        self.figure |= {"rows": self.rows, "columns": columns}
        mse = {key: [summarize(torch.cat(v), low=0.0, high=1.0) for v in per_layer]
               for key, per_layer in self.errors.items()}
        return LayerResult(**model_record(self.model), n_images=n_images, layers=self.counts, rows=self.rows,
                           columns=columns, mse=mse, ci=interval_record(mse), precision=self.run.precision,
                           figure_data=self.figure)


@torch.no_grad()
def layer_analysis(
    model: StagedModel,
    chain: InverseChain,
    source,
    batch_size: int = 8,
    limit: int | None = None,
    amp: str = "off",
    figure_images: int = 1,
    progress: bool = True,
) -> LayerResult:
    """Image MSE of the reconstruction from every intermediate layer through every inverse entry
    point of its shape; ``figure_images`` images are kept for :func:`layer_figure`. The model must
    declare stacks of same-shape intermediate layers (``model.layers``)."""
    run = AnalysisRun(model, "layers", RunOptions(batch_size, limit, amp, progress=progress))
    step = _Layers(run, chain, figure_images)
    return step.result(run.feed(source, step))


def _column_labels(n: int) -> list[str]:
    """``["0 (input)", "1", ..., "n-1"]``; layer 0 is the stack's input."""
    return ["0 (input)"] + [str(i) for i in range(1, n)]


# images per figure row; a stack with more layers continues on the next row (Swin's 18-block s3)
MAX_LAYER_COLUMNS = 10


def layer_figure(result: LayerResult, path: str | Path, title: str | None = None) -> Path:
    """Fig. 11: per image and row (source layers -> inverse entry point) the reconstruction from each
    layer (0 = the stack's input), the input image first, each image titled with its layer. Row
    titles name the source, the inverse component the layers are fed into (the chain continues down
    to the image) and the layer that component was trained on; a stack of more than
    :data:`MAX_LAYER_COLUMNS` - 1 layers continues on further rows instead of widening every row."""
    figure = result.figure_data
    if not figure or not figure["images"]:
        raise ModinvError("no images to draw")
    rows, titles, cells = [], [], []
    for i, image in enumerate(figure["images"]):
        for row in figure["rows"]:
            recons = figure["recons"][i][row["key"]]
            labels = ["input"] + [f"layer {c}" for c in _longest(figure["columns"], len(recons), row["source"])]
            native = row["native_layer"]
            mark = f"\n(trained on layer {native})" if native is not None else ""
            name = Path(str(figure["names"][i])).stem[:14]
            full = [image] + recons
            for start in range(0, len(full), MAX_LAYER_COLUMNS):
                rows.append(full[start:start + MAX_LAYER_COLUMNS])
                cells.append(labels[start:start + MAX_LAYER_COLUMNS])
                titles.append(f"{name}\n{row['source']} layers → {row['entry']}⁻¹{mark}" if start == 0 else
                              f"{name}\n{row['source']} (continued)")
    caption = {"model": result.model, "weights": result.weights, "n": len(figure["images"])}
    return image_grid(rows, path, row_titles=titles, title=title, cell_titles=cells, caption=caption)


def _longest(columns: Mapping[str, list[str]], n: int, source: str | None = None) -> list[str]:
    """The column labels of ``source`` (when they have ``n`` entries), else of any stack of ``n`` layers."""
    if source is not None and len(columns.get(source, [])) == n:
        return list(columns[source])
    for labels in columns.values():
        if len(labels) == n:
            return labels
    return [str(i) for i in range(n)]
