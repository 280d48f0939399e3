"""Per-stage image reconstruction error over a data set, against the mean-image baseline."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from modinv.errors import ModinvError
from modinv.analysis.common import limited_batches
from modinv.analysis.metrics import RunningMean, per_image_mse, summarize
from modinv.inverse.chain import InverseChain
from modinv.models.base import StagedModel
from modinv.runtime import amp_dtype, autocast


def _batches(source, batch_size: int, limit: int | None) -> Iterable[Tensor]:
    for batch in limited_batches(source, batch_size, limit):
        yield batch["image"]


def mean_image(source, batch_size: int = 16, limit: int | None = None) -> Tensor:
    """The data set's mean image (3×H×W), the paper's structureless reference."""
    running = RunningMean()
    for images in _batches(source, batch_size, limit):
        running.add(images)
    if running.count == 0:
        raise ModinvError("the data yielded no usable images")
    return running.mean


@torch.no_grad()
def evaluate_chain(
    model: StagedModel,
    chain: InverseChain,
    source,
    stages: list[str] | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    amp: str = "off",
    progress: bool = True,
) -> dict[str, Any]:
    """Image MSE in [0, 1] pixel space of the reconstruction from every stage.

    Returns ``{"stages": {stage: {"mse", "ci95", "n", "std"}}, "mean_image_baseline": {...},
    "pixel_space": "[0, 1]", "n_images": n}``; the baseline is the MSE between each image and the
    data set's mean image.
    """
    only = chain.end_to_end_stage  # a classic chain reconstructs from its one stage only
    stages = list(stages or ([only] if only else [s for s in model.stages if s in chain.components]))
    device = model.device
    dtype = amp_dtype(device, amp)
    reference = mean_image(source, batch_size, limit).to(device)
    errors: dict[str, list[Tensor]] = {s: [] for s in stages}
    baseline: list[Tensor] = []
    chain.eval()
    for images in tqdm(_batches(source, batch_size, limit), desc="evaluate", disable=not progress):
        images = images.to(device)
        with autocast(device, dtype):
            trace = model.trace(images)
        baseline.append(per_image_mse(images, reference.expand_as(images)).cpu())
        for stage in stages:
            with autocast(device, dtype):
                recon = chain.reconstruct(trace, stage)
            errors[stage].append(per_image_mse(recon, images).cpu())
    return {
        "stages": {s: summarize(torch.cat(v)) for s, v in errors.items()},
        "mean_image_baseline": summarize(torch.cat(baseline)),
        "pixel_space": "[0, 1]",
        "n_images": int(sum(len(b) for b in baseline)),
        "model": model.name,
        "weights": model.weights,
    }
