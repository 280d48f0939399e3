"""Figure grids of images (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch import Tensor  # noqa: E402

from modinv.fileio import atomic_write  # noqa: E402


def to_numpy_image(image: Tensor) -> np.ndarray:
    """3×H×W float tensor in [0, 1] -> H×W×3 array for imshow (clipped)."""
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def image_grid(
    rows: Sequence[Sequence[Tensor]],
    path: str | Path,
    column_titles: Sequence[str] | None = None,
    row_titles: Sequence[str] | None = None,
    cell_inches: float = 2.2,
    title: str | None = None,
) -> Path:
    """Save a grid of images (``rows[i][j]`` is a 3×H×W tensor in [0, 1]) as a PNG."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    h, w = rows[0][0].shape[-2:]
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(cell_inches * n_cols * w / max(h, w) + 0.4, cell_inches * n_rows * h / max(h, w) + 0.6),
        squeeze=False,
    )
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                ax.imshow(to_numpy_image(row[j]))
            else:
                ax.axis("off")
            if i == 0 and column_titles is not None and j < len(column_titles):
                ax.set_title(column_titles[j], fontsize=9)
            if j == 0 and row_titles is not None and i < len(row_titles):
                ax.set_ylabel(row_titles[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` to ``path`` atomically (parent folders made; the format follows the suffix),
    close it and return the path."""
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".").lower() or "png"))
    finally:
        plt.close(fig)
    return path
