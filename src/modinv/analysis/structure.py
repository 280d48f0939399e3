"""Reconstructions from pred through the FD and the OH pred⁻¹ beside the other stages (Fig. 8).

DETR's pred⁻¹ comes in two variants (paper Section 4.4): FD sees the full softmax distribution of
the class logits, OH only the one-hot arg-max class (boxes kept in both). This analysis takes two
inverse chains, tells FD from OH by their pred component (its config's ``mode``, else its recorded
``variant``), and reconstructs every image from every stage, and from ``pred`` once through each
pred⁻¹. Both pred paths continue through the *same* dec⁻¹, enc⁻¹ and bb⁻¹ (the FD chain's; a stage
the FD chain lacks is taken from the OH chain), so their difference isolates the pred⁻¹ variant;
the OH chain may therefore hold only its pred component.

Numbers (``structure.json``): ``{"analysis": "structure", "model", "weights", "columns": ["bb",
"enc", "dec", "pred_fd", "pred_oh"], "mse": {column: {"mse", "ci95", "n", "std"}}, "fd_vs_oh":
summary of the per-image MSE between the FD and the OH reconstruction, "oh_minus_fd": summary of
the per-image paired difference MSE(OH) - MSE(FD), "per_image": [{"image", "mse": {column: v},
"fd_vs_oh_mse", "oh_minus_fd_mse", "detections": [{"label", "score", "box_xyxy"}]}], "components":
{stage: "fd" | "oh"} (which chain supplied each component), "inverse": {"fd", "oh"}, "n_images",
"box_threshold", "pixel_space", "ci", "figure"}``. The figure shows one row per image (the first
``--examples``): the input with DETR's detections (score > ``--box-threshold``) drawn as boxes,
then the reconstructions from bb, enc, dec, pred (FD) and pred (OH).

Models without a ``pred`` stage (e.g. ViT) are refused with a :class:`~modinv.errors.ModinvError`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from modinv.errors import ModinvError

PRED = "pred"
VARIANTS = ("fd", "oh")
CI_METHOD = "95% Student-t confidence interval of the mean over images"
BOX_COLOR = (1.0, 0.15, 0.1)


def pred_variant(chain) -> str:
    """"fd" or "oh": the variant of ``chain``'s pred⁻¹ (its config's ``mode``, else its recorded
    ``variant``). Raises a :class:`ModinvError` when the chain has no pred⁻¹ or it is neither."""
    if PRED not in chain.components:
        raise ModinvError(
            f"the inverse chain holds no pred⁻¹ (it holds: {', '.join(chain.stages) or 'nothing'}); "
            "the structure analysis needs one chain with the FD and one with the OH pred⁻¹"
        )
    meta = chain.component_meta.get(PRED, {})
    mode = (meta.get("config") or {}).get("mode") or getattr(chain.components[PRED], "mode", None)
    if mode not in VARIANTS:
        mode = meta.get("variant")
    if mode not in VARIANTS:
        raise ModinvError(
            f"cannot tell whether this pred⁻¹ is FD or OH (kind {meta.get('kind')!r}, variant "
            f"{meta.get('variant')!r}); build it with InverseChain.build(model, variants={{'pred': 'fd' | 'oh'}})"
        )
    return str(mode)


def split_fd_oh(chains: Sequence[Any]) -> tuple[Any, Any]:
    """``(fd_chain, oh_chain)`` from two chains given in any order."""
    chains = list(chains)
    if len(chains) != 2:
        raise ModinvError(f"the structure analysis takes two inverse chains (FD and OH pred⁻¹), got {len(chains)}")
    variants = [pred_variant(c) for c in chains]
    if set(variants) != set(VARIANTS):
        raise ModinvError(
            f"the two chains must hold one FD and one OH pred⁻¹; both hold {variants[0].upper()} "
            "(build the other with variants={'pred': 'oh'} or {'pred': 'fd'})"
        )
    return (chains[0], chains[1]) if variants[0] == "fd" else (chains[1], chains[0])


def _composite(model, fd, oh) -> tuple[Any, Any, dict[str, str]]:
    """Two full chains sharing every component but pred: FD's where it has one, else OH's."""
    from modinv.inverse.chain import InverseChain, layout_mismatch, model_layout

    if PRED not in model.stages:
        raise ModinvError(_no_pred(model))
    for name, chain in (("FD", fd), ("OH", oh)):
        why = layout_mismatch(chain.layout, model_layout(model))
        if why:
            raise ModinvError(f"the {name} chain does not fit model {model.name!r}: {why}")
    before = list(model.stages[: model.stages.index(PRED)])
    shared, meta, origin = {}, {}, {}
    for stage in before:
        for tag, chain in (("fd", fd), ("oh", oh)):
            if stage in chain.components:
                shared[stage], meta[stage], origin[stage] = (chain.components[stage], chain.component_meta[stage], tag)
                break
        else:
            raise ModinvError(
                f"neither chain has an inverse component for {stage!r}; reconstructing from pred needs "
                f"{', '.join(before)}"
            )
    made = []
    for tag, chain in (("fd", fd), ("oh", oh)):
        components = dict(shared) | {PRED: chain.components[PRED]}
        metas = dict(meta) | {PRED: chain.component_meta[PRED]}
        made.append(InverseChain(components, fd.layout, metas).eval())
    return made[0], made[1], origin | {PRED: "fd and oh"}


def _no_pred(model) -> str:
    return (f"model {model.name!r} has no 'pred' stage (stages: {', '.join(model.stages)}); the structure "
            "analysis compares the FD and OH pred⁻¹ of DETR (use `modinv analyze stages` or `modinv reconstruct` "
            "for other models)")


def detections(model, trace, threshold: float) -> list[list[dict[str, Any]]]:
    """DETR's detections per image from ``trace["pred"]``: class (not "no object") with softmax score
    above ``threshold``, box in xyxy pixels of the input."""
    from modinv.models.detr import split_pred

    logits, boxes = split_pred(trace[PRED].float())
    probs = logits.softmax(-1)[..., :-1]
    scores, labels = probs.max(-1)
    names = list(getattr(model, "class_names", []) or [])
    h, w = model.input_size
    out = []
    for b in range(scores.shape[0]):
        keep = (scores[b] > threshold).nonzero().flatten().tolist()
        found = []
        for q in keep:
            cx, cy, bw, bh = boxes[b, q].tolist()
            xyxy = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
            label = int(labels[b, q])
            found.append({"label": names[label] if label < len(names) else str(label), "label_id": label,
                          "score": float(scores[b, q]), "box_xyxy": [round(v, 2) for v in xyxy]})
        out.append(found)
    return out


def draw_boxes(image: Tensor, boxes: Sequence[Sequence[float]], color=BOX_COLOR, width: int | None = None) -> Tensor:
    """A copy of ``image`` (3×H×W) with rectangle outlines at ``boxes`` (xyxy pixels)."""
    out = image.detach().float().cpu().clone()
    _, h, w = out.shape
    width = width or max(1, round(min(h, w) / 160))
    c = torch.tensor(color, dtype=out.dtype)[:, None, None]
    for x0, y0, x1, y1 in boxes:
        x0, x1 = sorted((int(max(0, min(w - 1, round(x0)))), int(max(0, min(w - 1, round(x1))))))
        y0, y1 = sorted((int(max(0, min(h - 1, round(y0)))), int(max(0, min(h - 1, round(y1))))))
        out[:, y0:y1 + 1, x0:x0 + width] = c
        out[:, y0:y1 + 1, max(x1 - width + 1, 0):x1 + 1] = c
        out[:, y0:y0 + width, x0:x1 + 1] = c
        out[:, max(y1 - width + 1, 0):y1 + 1, x0:x1 + 1] = c
    return out


@torch.no_grad()
def structure_analysis(
    model,
    chains: Sequence[Any],
    source,
    batch_size: int = 8,
    limit: int | None = None,
    n_examples: int = 4,
    box_threshold: float = 0.7,
    amp: str = "off",
    progress: bool = True,
) -> dict[str, Any]:
    """Per-stage reconstruction MSE with the FD and OH pred⁻¹ and their per-image difference.

    ``chains``: the FD and the OH chain in any order (see :func:`split_fd_oh`). ``source``: images
    at the model's input size; ``limit``: at most this many. Returns the JSON of the module doc plus
    ``"_rows"`` (tensors of the first ``n_examples`` images for :func:`plot_structure`).
    """
    from tqdm.auto import tqdm

    from modinv.analysis.metrics import per_image_mse, summarize
    from modinv.runtime import amp_dtype, autocast

    if PRED not in model.stages:
        raise ModinvError(_no_pred(model))
    fd, oh = split_fd_oh(chains)
    fd_full, oh_full, origin = _composite(model, fd, oh)
    before = list(model.stages[: model.stages.index(PRED)])
    columns = before + ["pred_fd", "pred_oh"]
    device = model.device
    dtype = amp_dtype(device, amp)
    per_image: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    errors: dict[str, list[Tensor]] = {c: [] for c in columns}
    between: list[Tensor] = []
    for images, names in tqdm(_named_batches(source, batch_size, limit), desc="structure", disable=not progress):
        images = images.to(device)
        with autocast(device, dtype):
            trace = model.trace(images)
            recons = {s: fd_full.reconstruct(trace, s) for s in before}
            recons["pred_fd"] = fd_full.reconstruct(trace, PRED)
            recons["pred_oh"] = oh_full.reconstruct(trace, PRED)
        recons = {k: v.float() for k, v in recons.items()}
        mse = {c: per_image_mse(recons[c], images).cpu() for c in columns}
        diff = per_image_mse(recons["pred_fd"], recons["pred_oh"]).cpu()
        found = detections(model, trace, box_threshold)
        for c in columns:
            errors[c].append(mse[c])
        between.append(diff)
        for b, name in enumerate(names):
            per_image.append({
                "image": name,
                "mse": {c: float(mse[c][b]) for c in columns},
                "fd_vs_oh_mse": float(diff[b]),
                "oh_minus_fd_mse": float(mse["pred_oh"][b] - mse["pred_fd"][b]),
                "detections": found[b],
            })
            if len(rows) < n_examples:
                rows.append({"image": name, "input": images[b].float().cpu(),
                             "boxes": [d["box_xyxy"] for d in found[b]],
                             "reconstructions": {c: recons[c][b].cpu() for c in columns}})
    if not per_image:
        raise ModinvError("the image source yielded no images")
    return {
        "analysis": "structure",
        "model": model.name,
        "weights": str(getattr(model, "weights", "unknown")),
        "columns": columns,
        "mse": {c: summarize(torch.cat(v)) for c, v in errors.items()},
        "fd_vs_oh": summarize(torch.cat(between)),
        "oh_minus_fd": summarize([p["oh_minus_fd_mse"] for p in per_image]),
        "per_image": per_image,
        "components": origin,
        "variants": {"fd": pred_variant(fd), "oh": pred_variant(oh)},
        "n_images": len(per_image),
        "box_threshold": box_threshold,
        "pixel_space": "[0, 1]",
        "ci": CI_METHOD,
        "_rows": rows,
    }


def _named_batches(source, batch_size: int, limit: int | None):
    """(images B×3×H×W, names) of ``source`` in order, unreadable items dropped, at most ``limit`` images."""
    from modinv.analysis.common import limited_batches

    for batch in limited_batches(source, batch_size, limit):
        yield batch["image"], [str(n) for n in batch["name"]]


COLUMN_TITLES = {"pred_fd": "from pred (FD)", "pred_oh": "from pred (OH)"}


def plot_structure(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Fig. 8: one row per image: the input (detections boxed), then each column's reconstruction."""
    from modinv.figures import image_grid

    if not rows:
        raise ModinvError("no images to plot")
    columns = list(rows[0]["reconstructions"])
    grid = [[draw_boxes(r["input"], r.get("boxes", []))] + [r["reconstructions"][c] for c in columns] for r in rows]
    titles = ["input (detections)"] + [COLUMN_TITLES.get(c, f"from {c}") for c in columns]
    row_titles = [Path(str(r["image"])).stem[:18] for r in rows]
    return image_grid(grid, path, column_titles=titles, row_titles=row_titles, title=title)


# -- CLI ----------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples", type=int, default=4, help="rows (images) of structure.png (default: 4)")
    parser.add_argument("--box-threshold", type=float, default=0.7,
                        help="draw DETR's detections with a class score above this (default: 0.7)")


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    from modinv.cli.common import model_from_args, writable_dir
    from modinv.data import open_source
    from modinv.inverse.chain import InverseChain

    out = writable_dir(args.out)
    if len(args.inverse) != 2:
        raise ModinvError(
            f"the structure analysis takes two inverse chains (--inverse FD_CHAIN OH_CHAIN, any order), "
            f"got {len(args.inverse)}"
        )
    if args.examples < 1:
        raise ModinvError("--examples must be at least 1")
    model = model_from_args(args)
    if PRED not in model.stages:
        raise ModinvError(_no_pred(model))
    chains = [InverseChain.load(p, model, map_location=model.device) for p in args.inverse]
    variants = [pred_variant(c) for c in chains]
    source = open_source(args.data, size=tuple(model.input_size))
    result = structure_analysis(model, chains, source, batch_size=args.batch, limit=args.limit,
                                n_examples=args.examples, box_threshold=args.box_threshold, amp=args.amp)
    rows = result.pop("_rows")
    result["inverse"] = {v: str(p) for v, p in zip(variants, args.inverse)}
    result["data"] = args.data
    result["figure"] = plot_structure(
        rows, out / "structure.png", title=f"{model.name}: reconstructions with the FD and OH pred⁻¹").name
    (out / "structure.json").write_text(json.dumps(result, indent=2) + "\n")
    for c, r in result["mse"].items():
        print(f"{c:<8} MSE {r['mse']:.5f}  95% CI [{r['ci95'][0]:.5f}, {r['ci95'][1]:.5f}]  n={r['n']}")
    d = result["oh_minus_fd"]
    print(f"MSE(OH) - MSE(FD) per image: {d['mse']:+.5f}  95% CI [{d['ci95'][0]:+.5f}, {d['ci95'][1]:+.5f}]")
    print(f"wrote {out / 'structure.png'} and {out / 'structure.json'}")
    return result
