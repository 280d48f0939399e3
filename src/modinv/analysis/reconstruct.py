"""Reconstructions from every stage, as tensors and as a labelled figure grid."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from modinv.figures import image_grid
from modinv.inverse.chain import InverseChain
from modinv.models.base import StagedModel


@torch.no_grad()
def reconstruct_stages(model: StagedModel, chain: InverseChain, images: Tensor) -> dict[str, Tensor]:
    """``{stage: B×3×H×W reconstruction}`` for every stage the chain can invert (one forward pass)."""
    trace = model.trace(images.to(model.device))
    chain.eval()
    only = chain.end_to_end_stage  # a classic chain reconstructs from its one stage only
    stages = [only] if only else [s for s in model.stages if s in chain.components]
    return {s: chain.reconstruct(trace, s).float().cpu() for s in stages}


def reconstruction_figure(
    model: StagedModel,
    chain: InverseChain,
    images: Tensor,
    path: str | Path,
    row_titles: Sequence[str] | None = None,
) -> Path:
    """One row per image: the input, then the reconstruction from each stage (x̂_{stage:0})."""
    recons = reconstruct_stages(model, chain, images)
    rows = [[images[i].cpu()] + [recons[s][i] for s in recons] for i in range(images.shape[0])]
    titles = ["input"] + [f"from {s}" for s in recons]
    return image_grid(rows, path, column_titles=titles, row_titles=row_titles, title=f"{model.name} ({model.weights})")
