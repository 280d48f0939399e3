"""The page's downloads: the rows as one PNG figure and the numbers as JSON.

The JSON's ``"chains"`` holds, per chain, exactly what ``modinv evaluate`` writes for a data set
holding just this photo (:func:`modinv.analysis.evaluate.evaluate_chains` on a one-image source;
with one image the "mean image" baseline is the photo itself and every interval is one point).
``"perturbed"`` adds the numbers of the perturbed input and the pairwise MSE per stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modinv.analysis.evaluate import evaluate_chains
from modinv.analysis.token_noise import outline
from modinv.data.base import ImageSource
from modinv.explore.compute import METRICS, Explorer, View
from modinv.explore.inputs import Photo
from modinv.explore.views import perturbation_title
from modinv.figures import image_grid
from modinv.fileio import write_json


class PhotoSource(ImageSource):
    """A data source of one in-memory photo (already at the model's input size)."""

    kind = "explore"

    def __init__(self, photo: Photo) -> None:
        super().__init__(size=tuple(photo.image.shape[-2:]), spec=f"explore:{photo.name}")
        self.names = [photo.name]
        self._array = photo.image.permute(1, 2, 0).contiguous().numpy()

    def _read(self, index: int) -> np.ndarray:
        return self._array


def numbers(explorer: Explorer, view: View) -> dict[str, Any]:
    """The JSON of one view (see the module notes)."""
    photo = Photo(view.image, view.name, view.notes)
    evaluated = evaluate_chains(explorer.model, explorer.chains, PhotoSource(photo), progress=False, metrics=METRICS)
    perturbed = None
    if view.perturbed is not None:
        perturbed = {label: {"stages": panel.metrics, "pairwise_mse": view.pairwise[label]}
                     for label, panel in view.perturbed.items()}
    return {
        "explore": {"image": view.name, "notes": list(view.notes), "perturbation": view.perturbation.record(),
                    "pairwise_mse": "mean over pixels and channels of the squared difference between the "
                                    "reconstruction (or input) of the photo and of the perturbed photo"},
        "model": explorer.model.name,
        "weights": str(explorer.model.weights),
        "chains": evaluated,
        "output": view.output,
        "perturbed": perturbed,
        "perturbed_output": view.perturbed_output,
    }


def save_view(explorer: Explorer, view: View, folder: str | Path) -> tuple[Path, Path]:
    """Write ``<name>.png`` (one row per chain and version: input, then each stage) and
    ``<name>.json`` (:func:`numbers`) into ``folder``; returns both paths."""
    folder = Path(folder)
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in view.name) or "image"
    rows, titles = [], []
    for label, panel in view.original.items():
        rows.append([view.image] + list(panel.images.values()))
        titles.append(label)
        if view.perturbed is not None:
            region = view.region
            marked = [outline(x, region) if region is not None else x
                      for x in [view.perturbed_image] + list(view.perturbed[label].images.values())]
            rows.append(marked)
            titles.append(f"{label}\n{perturbation_title(view.perturbation)}")
    stages = max((list(p.images) for p in view.original.values()), key=len)
    png = image_grid(rows, folder / f"{stem}.png", column_titles=["input"] + [f"from {s}" for s in stages],
                     row_titles=titles, title=f"{explorer.model.name} ({explorer.model.weights}): {view.name}")
    return png, write_json(folder / f"{stem}.json", numbers(explorer, view))
