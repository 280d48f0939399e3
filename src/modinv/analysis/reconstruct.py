"""Reconstructions from every stage, as tensors and as a labelled figure grid."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from modinv.analysis.common import chain_stages, precision
from modinv.figures import image_grid
from modinv.inverse.chain import InverseChain
from modinv.models.base import StagedModel
from modinv.runtime import autocast


@torch.no_grad()
def reconstruct_stages(model: StagedModel, chain: InverseChain, images: Tensor,
                       amp: str = "off") -> dict[str, Tensor]:
    """``{stage: B×3×H×W reconstruction}`` for every stage the chain can invert (one forward pass),
    in float32 unless ``amp`` opts in to bf16 autocast."""
    dtype = precision(model.device, amp)[0]
    with autocast(model.device, dtype):
        trace = model.trace(images.to(model.device))
        return {s: chain.reconstruct(trace, s).float().cpu() for s in chain_stages(model, chain)}


def reconstruction_figure(
    model: StagedModel,
    chain: InverseChain,
    images: Tensor,
    path: str | Path,
    row_titles: Sequence[str] | None = None,
    amp: str = "off",
) -> Path:
    """One row per image: the input, then the reconstruction from each stage (x̂_{stage:0}); the
    title names the precision when ``amp`` opted in to bf16 autocast (float32 otherwise)."""
    recons = reconstruct_stages(model, chain, images, amp=amp)
    used = precision(model.device, amp)[1]
    rows = [[images[i].cpu()] + [recons[s][i] for s in recons] for i in range(images.shape[0])]
    titles = ["input"] + [f"from {s}" for s in recons]
    title = f"{model.name} ({model.weights})" + ("" if used == "float32" else f", {used}")
    return image_grid(rows, path, column_titles=titles, row_titles=row_titles, title=title)
