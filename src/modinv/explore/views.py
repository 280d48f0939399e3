"""What the page shows, as plain values: image rows with captions, tables and messages (no Gradio).

The page's galleries get ``(uint8 H×W×3 array, caption)`` pairs that Gradio stores as PNG files
(lossless), so the pixels in the browser are :func:`~modinv.explore.inputs.to_uint8` of the
reconstructions.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from modinv.analysis.color_filters import LABELS as FILTER_LABELS
from modinv.analysis.token_noise import outline
from modinv.explore.compute import NONE, Panel, Perturbation, View
from modinv.explore.inputs import to_uint8

Item = tuple[np.ndarray, str]


def caption(metrics: Mapping[str, float]) -> str:
    """``"MSE 0.0123 · PSNR 19.1 dB · SSIM 0.412"``."""
    parts = []
    if "mse" in metrics:
        parts.append(f"MSE {metrics['mse']:.4f}")
    if "psnr" in metrics:
        parts.append(f"PSNR {metrics['psnr']:.1f} dB")
    if "ssim" in metrics:
        parts.append(f"SSIM {metrics['ssim']:.3f}")
    return " · ".join(parts)


def _array(image: Tensor, region: Tensor | None = None) -> np.ndarray:
    return to_uint8(outline(image, region) if region is not None else image).numpy()


def row(image: Tensor, panel: Panel, title: str, region: Tensor | None = None) -> list[Item]:
    """The input then every stage's reconstruction, each with its numbers; ``region`` outlined."""
    items = [(_array(image, region), title)]
    items += [(_array(panel.images[s], region), f"from {s}: {caption(panel.metrics[s])}") for s in panel.images]
    return items


def perturbation_title(p: Perturbation) -> str:
    """A few words on the perturbation, e.g. ``"red inside the rectangle, 20% tokens at bb"``."""
    words = []
    if p.filter != NONE:
        words.append(FILTER_LABELS.get(p.filter, p.filter) + (" inside the rectangle" if p.rect else ""))
    if p.token_stage != NONE:
        words.append(f"{p.fraction:.0%} of the tokens at {p.token_stage} replaced (seed {p.seed})")
    return ", ".join(words) or "no perturbation"


def output_markdown(output: Mapping[str, Any] | None) -> str:
    """The model's own answer as a Markdown list."""
    if not output or output.get("task") is None:
        return "the model has no task output"
    if output["task"] == "classification":
        return "\n".join(f"{i + 1}. {t['label']} ({t['probability']:.1%})" for i, t in enumerate(output["top"]))
    if not output["detections"]:
        return "no detection above the score threshold"
    return "\n".join(f"- {d['label']} ({d['score']:.0%}) at {', '.join(f'{v:.0f}' for v in d['box'])}"
                     for d in output["detections"])


def detections_image(image: Tensor, output: Mapping[str, Any]) -> np.ndarray | None:
    """``image`` with the detector's boxes and labels drawn, or None for other tasks."""
    if output.get("task") != "detection":
        return None
    from torchvision.utils import draw_bounding_boxes

    pixels = to_uint8(image).permute(2, 0, 1)
    found = output["detections"]
    if found:
        boxes = torch.tensor([d["box"] for d in found], dtype=torch.float32)
        pixels = draw_bounding_boxes(pixels, boxes, [f"{d['label']} {d['score']:.0%}" for d in found],
                                     colors="yellow", width=2)
    return pixels.permute(1, 2, 0).numpy()


def numbers_markdown(view: View) -> str:
    """One table per chain: per stage the numbers of the input and, with a perturbation, of the
    perturbed input and the pairwise MSE between the two reconstructions."""
    lines = []
    for label, panel in view.original.items():
        head = "| stage | MSE | PSNR (dB) | SSIM |"
        rule = "|---|---|---|---|"
        if view.perturbed:
            head += " perturbed MSE | perturbed PSNR | perturbed SSIM | pairwise MSE |"
            rule += "---|---|---|---|"
        lines += [f"**{label}**", "", head, rule]
        if view.pairwise:
            lines.append("| input | | | |" + " | | |" + f" {view.pairwise[label]['input']:.5f} |")
        for s, m in panel.metrics.items():
            line = f"| {s} | {m['mse']:.5f} | {m['psnr']:.2f} | {m['ssim']:.4f} |"
            if view.perturbed:
                q = view.perturbed[label].metrics[s]
                line += f" {q['mse']:.5f} | {q['psnr']:.2f} | {q['ssim']:.4f} | {view.pairwise[label][s]:.5f} |"
            lines.append(line)
        lines.append("")
    return "\n".join(lines)
