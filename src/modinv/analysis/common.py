"""The analysis skeleton and helpers shared by the analyses.

One run-options object (:class:`RunOptions`: batch, limit, precision, device, progress) and one
batch iterator under the reported precision (:class:`AnalysisRun`: float32 unless the options ask
for bf16 autocast) serve every analysis; an analysis is a per-batch step (``step(batch)``, fed by
:meth:`AnalysisRun.feed`) plus a result builder. :mod:`modinv.analysis.registry` lists the analyses
(what ``modinv analyze`` is built from) with the roles each needs.

Every analysis returns a dataclass derived from :class:`AnalysisResult`: its numbers as fields,
and what its figure needs in the field ``figure_data`` (declared with :func:`figure_field`), which
``to_json()`` leaves out. The figure function of the analysis takes the result and a path.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Iterator

import torch
from torch import Tensor

from modinv.errors import ModinvError
from modinv.fileio import finite_or_null
from modinv.metrics import CI_METHODS
from modinv.runtime import amp_dtype, autocast


def figure_field(default: Any = None) -> Any:
    """A dataclass field that carries figure data: kept out of ``to_json()`` and of the repr."""
    return dataclasses.field(default=default, repr=False, compare=False, metadata={"json": False})


@dataclasses.dataclass
class AnalysisResult:
    """Base of the analyses' results; ``to_json()`` gives the numbers as strict-JSON values."""

    def to_json(self) -> dict[str, Any]:
        """Every field but the figure data (``analysis`` first), non-finite numbers as None (tuples
        become lists)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("json", True)}
        if "analysis" in data:
            data = {"analysis": data.pop("analysis"), **data}
        return finite_or_null(data)


def model_record(model) -> dict[str, str]:
    """``{"model": name, "weights": weights}``: what every result records about the model it studied."""
    return {"model": model.name, "weights": str(model.weights)}


def precision(device: torch.device, amp: str = "off") -> tuple[torch.dtype | None, str]:
    """``(autocast dtype, name)`` of the ``amp`` setting on ``device``: None and ``"float32"`` for
    "off" (every reported number is float32 unless the user asks otherwise, DESIGN.md "Training"),
    else e.g. ``"bfloat16 autocast"``. Each result records the name under ``"precision"``."""
    dtype = amp_dtype(device, amp)
    return dtype, "float32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"


def interval_record(*summaries: Any, over: str = "images") -> dict[str, Any]:
    """What a result's ``"ci"`` field says: ``{"confidence": 0.95, "over": over, "methods": {method:
    sentence}}`` for every interval method used by the summaries found in ``summaries`` (mappings
    with ``"ci95"``, nested in mappings and lists), in :data:`~modinv.metrics.CI_METHODS` order.
    A summary without ``"ci_method"`` (:func:`~modinv.metrics.summarize` without bounds, or an older
    JSON) used the Student-t interval, or none (no spread) where its interval is one point."""
    found: set[str] = set()

    def walk(obj: Any) -> None:
        if isinstance(obj, Mapping) and "ci95" in obj:
            ci, n = obj.get("ci95") or [None, None], obj.get("n", 0)
            plain = "undefined" if not n else "degenerate" if n == 1 or ci[0] == ci[1] else "student_t"
            found.add(obj.get("ci_method") or plain)
        elif isinstance(obj, Mapping):
            for value in obj.values():
                walk(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                walk(value)

    for summary in summaries:
        walk(summary)
    return {"confidence": 0.95, "over": over, "methods": {m: text for m, text in CI_METHODS.items() if m in found}}


def limited_batches(source, batch_size: int, limit: int | None) -> Iterator[dict[str, Any]]:
    """The batches of ``source`` in order (see :func:`modinv.data.make_loader`), at most ``limit``
    images in all: the last batch is cut short (its tensors and lists), empty batches are dropped."""
    from modinv.data import make_loader

    seen = 0
    for batch in make_loader(source, batch_size=batch_size, shuffle=False):
        n = batch["image"].shape[0]
        if limit is not None:
            n = min(n, max(limit - seen, 0))
        if n:
            seen += n
            yield {k: (v[:n] if isinstance(v, (Tensor, list)) else v) for k, v in batch.items()}
        if limit is not None and seen >= limit:
            return


def unique_label(label: str, taken: Mapping[str, Any]) -> str:
    """``label``, or ``"label (2)"``, ``"label (3)"``, ... when ``taken`` has it already."""
    if label not in taken:
        return label
    k = 2
    while f"{label} ({k})" in taken:
        k += 1
    return f"{label} ({k})"


def chain_stages(model, chain) -> list[str]:
    """The model's stages (in processing order) from which ``chain`` reconstructs an image: every
    stage whose components down to the image it holds, or for a classic or fine-tuned chain its one
    stage (its lower components are parts of that path, not inverses of their own stages)."""
    if chain.end_to_end_stage:
        return [chain.end_to_end_stage]
    out = []
    for stage in model.stages:
        try:
            chain.path(stage)
        except ModinvError:
            continue
        out.append(stage)
    return out


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How an analysis runs: ``batch_size`` images per forward pass, at most ``limit`` images,
    ``amp`` ("off": float32, every reported number's default; "bf16"/"auto": bf16 autocast where
    native), ``device`` (None: the model's), ``progress`` (a tqdm bar)."""

    batch_size: int = 8
    limit: int | None = None
    amp: str = "off"
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ModinvError(f"limit must be a positive number of images, got {self.limit}")
        if self.batch_size < 1:
            raise ModinvError(f"the batch size must be a positive number of images, got {self.batch_size}")


class AnalysisRun:
    """One analysis over a data source: the model's device, the reported precision, the batches.

    ``run.batches(source)`` yields the source's batches (at most ``limit`` images; ``"image"`` moved
    to the device) under a tqdm bar named ``name``; ``with run.autocast():`` computes under the
    precision the result records as ``run.precision``; ``run.feed(source, step)`` calls ``step(batch)``
    for every batch and returns the number of images seen.
    """

    def __init__(self, model, name: str, options: RunOptions | None = None) -> None:
        self.model, self.name = model, name
        self.options = options or RunOptions()
        self.device = torch.device(self.options.device) if self.options.device else model.device
        self.dtype, self.precision = precision(self.device, self.options.amp)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The reported precision: a no-op for float32, else autocast to ``dtype``."""
        return autocast(self.device, self.dtype)

    def batches(self, source, require: tuple[str, ...] = (), why: str = "",
                bar: bool = True) -> Iterator[dict[str, Any]]:
        """The batches of ``source``; one sentence (``why``) when one lacks a key of ``require``;
        ``bar=False``: no progress bar here (the analysis counts its own units)."""
        from tqdm.auto import tqdm

        opts = self.options
        for batch in tqdm(limited_batches(source, opts.batch_size, opts.limit), desc=self.name,
                          disable=not (opts.progress and bar)):
            if require and not all(k in batch for k in require):
                raise ModinvError(why or f"the {self.name} analysis needs items with {', '.join(require)}")
            yield {**batch, "image": batch["image"].to(self.device)}

    def feed(self, source, step: Callable[[dict[str, Any]], None], **checks: Any) -> int:
        """``step(batch)`` for every batch of :meth:`batches`; the number of images (one sentence
        when the source yields none)."""
        n = 0
        for batch in self.batches(source, **checks):
            step(batch)
            n += batch["image"].shape[0]
        if not n:
            raise ModinvError("the image source yielded no images")
        return n
