"""Figures (matplotlib, headless): image grids, wrapping panel layouts, captions, atomic saving.

Every figure is saved by :func:`save_figure`, which keeps it at most :data:`MAX_WIDTH_PX` wide
(lowering the resolution when a layout could not wrap enough) and writes a caption line under it:
what the figure shows was computed with (model and weights, inverse chain and its training steps,
data, number of images). The parts of the caption come from the plotting function (what its
result knows) and, over those, from an enclosing :func:`figure_caption` block (what the caller
knows, e.g. the CLI: the chain folder and the data spec).

    with figure_caption(model="vit-b16", weights="pretrained", chain="runs/vit/best (20000 steps)"):
        stage_errors_figure(result, "stages.png")
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Sequence

import matplotlib

if not os.environ.get("MPLBACKEND"):  # a backend the user chose (e.g. a notebook's inline one) stays
    matplotlib.use("Agg")  # figures are files; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch import Tensor  # noqa: E402

from modinv.fileio import atomic_write  # noqa: E402

DPI = 110  # resolution of saved figures (pixels per inch)
MAX_WIDTH_PX = 2400  # no saved figure is wider than this
MAX_PANELS_PER_ROW = 6  # panel layouts wrap onto further rows beyond this
# the order and wording of the caption's parts; a part that is None or missing is left out
CAPTION_PARTS = {"model": "model", "weights": "weights", "chain": "inverse chain", "steps": "trained",
                 "data": "data", "n": "n"}
_caption: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("modinv_figure_caption", default=None)


@contextlib.contextmanager
def figure_caption(**parts: Any) -> Iterator[dict[str, Any]]:
    """Caption parts (see :data:`CAPTION_PARTS`; ``note=`` adds free text) for every figure saved
    in the block, over those the plotting functions supply. Yields the mutable mapping, so that
    parts learnt inside the block (e.g. the number of images) can be added to it."""
    merged = {**(_caption.get() or {}), **parts}
    token = _caption.set(merged)
    try:
        yield merged
    finally:
        _caption.reset(token)


def add_caption_parts(**parts: Any) -> None:
    """Add parts to the enclosing :func:`figure_caption` block (nothing outside one); None values
    are skipped."""
    current = _caption.get()
    if current is not None:
        current.update({k: v for k, v in parts.items() if v is not None})


def caption_line(parts: Mapping[str, Any]) -> str:
    """``"model vit-b16 · weights pretrained · inverse chain runs/vit/best · trained 20000 steps ·
    data samples · n = 4 images"``: the parts that are given, in :data:`CAPTION_PARTS` order."""
    out = []
    for key, word in CAPTION_PARTS.items():
        value = parts.get(key)
        if value is None or value == "":
            continue
        if key == "n":
            out.append(f"n = {value} images" if isinstance(value, int) else f"n = {value}")
        elif key == "steps":
            out.append(f"trained {value} steps" if isinstance(value, int) else f"trained {value}")
        else:
            out.append(f"{word} {value}")
    if parts.get("note"):
        out.append(str(parts["note"]))
    return " · ".join(out)


def panel_grid(n_panels: int, panel_size: tuple[float, float], title: bool = True,
               max_cols: int = MAX_PANELS_PER_ROW, row_length: int | None = None):
    """A figure of ``n_panels`` axes of about ``panel_size`` inches (width, height) each, laid out
    in rows of at most ``max_cols`` panels that fit :data:`MAX_WIDTH_PX` at :data:`DPI` (a panel
    wider than that alone is narrowed); ``row_length``: panels that belong on one row (e.g. the
    metrics of one model), kept together when they fit. Returns ``(fig, axes)``, axes as a flat
    list of ``n_panels`` (unused cells are hidden)."""
    width, height = panel_size
    max_inches = MAX_WIDTH_PX / DPI - 0.3
    width = min(width, max_inches)
    cols = max(1, min(max_cols, n_panels, int(max_inches // width)))
    if row_length and row_length <= cols:
        cols = row_length
    rows = math.ceil(n_panels / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(cols * width + 0.3, rows * height + (0.5 if title else 0.2)),
                             squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[n_panels:]:
        ax.axis("off")
    return fig, axes[:n_panels]


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
    caption: Mapping[str, Any] | None = None,
    cell_titles: Sequence[Sequence[str]] | None = None,
) -> Path:
    """Save a grid of images (``rows[i][j]`` is a 3×H×W tensor in [0, 1]) as a PNG (``caption``:
    parts of its caption line, see :func:`save_figure`; ``cell_titles[i][j]``: a title above each
    image, for grids whose columns do not mean the same in every row)."""
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
            if cell_titles is not None and i < len(cell_titles) and j < min(len(cell_titles[i]), len(row)):
                ax.set_title(cell_titles[i][j], fontsize=7)
            if j == 0 and row_titles is not None and i < len(row_titles):
                ax.set_ylabel(row_titles[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, caption=caption)


def save_figure(fig, path: str | Path, dpi: int = DPI, caption: Mapping[str, Any] | None = None) -> Path:
    """Save ``fig`` to ``path`` atomically (parent folders made; the format follows the suffix) at
    most :data:`MAX_WIDTH_PX` wide, with a caption line from ``caption`` (the plotting function's
    parts) and an enclosing :func:`figure_caption` block (which wins); close it, return the path."""
    path = Path(path)
    try:
        text = caption_line({**(caption or {}), **(_caption.get() or {})})
        if text:
            _add_caption(fig, text)
        fig.canvas.draw()  # lay out the text, to measure what bbox_inches="tight" will keep
        inches = fig.get_tightbbox(fig.canvas.get_renderer()).width + 0.2
        dpi = min(dpi, int(MAX_WIDTH_PX / inches))
        fmt = path.suffix.lstrip(".").lower() or "png"
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt, bbox_inches="tight", pad_inches=0.1))
    finally:
        plt.close(fig)
    return path


def _add_caption(fig, text: str, fontsize: float = 7.0) -> None:
    """The caption under the figure, wrapped to the figure's width."""
    chars = max(40, int(fig.get_figwidth() * 72 / (fontsize * 0.55)))
    fig.text(0.5, 0.0, "\n".join(textwrap.wrap(text, chars)), ha="center", va="top", fontsize=fontsize,
             color="0.3")
