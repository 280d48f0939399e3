"""``modinv eval-task``: the forward model's own task metric, COCO box AP (DETR) or top-1 (classifiers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from modinv.cli.common import add_model_args, model_from_args, writable_file
from modinv.errors import ModinvError

LABEL_MAPS = ("auto", "sorted", "imagenet")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-task", help="task metric of a (fine-tuned) model: COCO box AP for DETR, top-1 for classifiers")
    add_model_args(p)
    p.add_argument("--data", required=True, help="coco:ROOT[:split] for detr-r50, imagenet:ROOT[:split] for classifiers")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--limit", type=int, help="evaluate at most this many images")
    p.add_argument("--score-threshold", type=float, default=0.0, help="drop detections scoring at most this (default 0)")
    add_label_map_arg(p)
    p.set_defaults(handler=run)


def add_label_map_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--label-map", choices=LABEL_MAPS, default="auto",
        help="class indices of an imagenet source: imagenet (standard ImageNet-1k indices of synset folders), "
             "sorted (position of the folder name), auto (imagenet when every folder is a synset id; default)",
    )


def resolve_label_map(spec: str, label_map: str = "auto") -> str:
    """``auto`` -> ``imagenet`` when every class folder of the imagenet source is an ImageNet-1k
    synset id (so a subset of the classes keeps the standard indices), else ``sorted``."""
    if label_map != "auto":
        return label_map
    from modinv.data.sources import imagenet_synsets, split_root

    root, split = split_root(spec.partition(":")[2])
    folder = Path(root).expanduser()
    if split is not None:
        folder = folder / split
    elif (folder / "val").is_dir():
        folder = folder / "val"
    if not folder.is_dir():
        return "sorted"  # the source reports the missing folder itself
    classes = [d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
    known = set(imagenet_synsets())
    return "imagenet" if classes and all(c in known for c in classes) else "sorted"


def task_source_options(spec: str, label_map: str = "auto") -> dict[str, Any]:
    """Options of ``open_source`` for task data: no masks for COCO, the label map for imagenet."""
    kind = spec.strip().partition(":")[0]
    if kind == "coco":
        return {"masks": False}
    if kind == "imagenet":
        return {"label_map": resolve_label_map(spec.strip(), label_map)}
    return {}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    from modinv.analysis.task import classification_top1, detection_ap
    from modinv.data import open_source
    from modinv.training.finetune import task_kind

    out = writable_file(args.out)
    kind = args.data.strip().partition(":")[0]
    task = "detection" if args.model == "detr-r50" else "classification"  # checked before loading: fail fast
    if task == "detection" and kind != "coco":
        raise ModinvError(f"{args.model} is evaluated by COCO box AP: pass --data coco:ROOT[:split], not {args.data!r}")
    if task == "classification" and kind != "imagenet":
        raise ModinvError(
            f"{args.model} is evaluated by top-1 accuracy (COCO box AP is for detr-r50): pass --data "
            f"imagenet:ROOT[:split] (one folder per class), not {args.data!r}"
        )
    model = model_from_args(args)
    if task_kind(model) != task:
        raise ModinvError(f"model {model.name!r} is not a {task} model")
    options = task_source_options(args.data, args.label_map)
    source = open_source(args.data, size=tuple(model.input_size), **options)
    if task == "detection":
        result = detection_ap(model, source, batch_size=args.batch, limit=args.limit,
                              score_threshold=args.score_threshold)
        print(f"COCO box AP {_fmt(result['AP'])}  AP50 {_fmt(result['AP50'])}  AP75 {_fmt(result['AP75'])}  "
              f"({result['n_images']} images)")
    else:
        result = classification_top1(model, source, batch_size=args.batch, limit=args.limit)
        print(f"top-1 {result['top1']:.4f}  ({result['correct']}/{result['n']} images)")
    result = {"metric": "coco_box_ap" if task == "detection" else "top1", **result, "model": model.name,
              "weights": str(args.weights), "data": args.data, **options}
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0
