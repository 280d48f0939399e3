"""Helpers shared by the analyses: limited data batches and the base of their result objects.

Every analysis returns a dataclass derived from :class:`AnalysisResult`: its numbers as fields,
and what its figure needs in the field ``figure_data`` (declared with :func:`figure_field`), which
``to_json()`` leaves out. The figure function of the analysis takes the result and a path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Iterator

import torch
from torch import Tensor

from modinv.errors import ModinvError
from modinv.fileio import finite_or_null
from modinv.metrics import CI_METHODS
from modinv.runtime import amp_dtype


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
