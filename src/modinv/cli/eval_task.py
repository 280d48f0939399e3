"""``modinv eval-task``: the forward model's own task metric, COCO box AP (detectors) or top-1 (classifiers).

Which metric is the model's declared task (``model.meta.task``); the data must be COCO for a
detector and an ImageNet-style folder for a classifier.
"""

from __future__ import annotations

import argparse

from modinv.cli.common import (add_model_args, add_report_amp_arg, input_paths,
                               model_from_args, number_in, positive_int, writable_file)
from modinv.data.imagenet import LABEL_MAPS
from modinv.data.sources import task_source_options
from modinv.errors import ModinvError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-task", help="task metric of a (fine-tuned) model: COCO box AP for DETR, top-1 for classifiers")
    add_model_args(p)
    p.add_argument("--data", required=True, help="coco:ROOT[:split] for detr-r50, imagenet:ROOT[:split] for classifiers")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--batch", type=positive_int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--limit", type=positive_int, help="evaluate at most this many images")
    p.add_argument("--score-threshold", type=number_in(0, 1, high_open=True), default=0.0,
                   help="drop detections scoring at most this, in [0, 1) (default 0)")

    add_label_map_arg(p)
    add_report_amp_arg(p)
    p.set_defaults(handler=run)


def add_label_map_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--label-map", choices=LABEL_MAPS, default="auto",
        help="class indices of an imagenet source: imagenet (standard ImageNet-1k indices of synset folders), "
             "sorted (position of the folder name), auto (imagenet when every folder is a synset id; default)",
    )


def _check_data(model_arg: str, task: str | None, data: str) -> None:
    """One sentence when ``data`` is not the kind of source the model's task metric reads."""
    kind = data.strip().partition(":")[0]
    if task == "detection" and kind != "coco":
        raise ModinvError(f"{model_arg} is evaluated by COCO box AP: pass --data coco:ROOT[:split], not {data!r}")
    if task == "classification" and kind != "imagenet":
        raise ModinvError(
            f"{model_arg} is evaluated by top-1 accuracy (COCO box AP is for detectors): pass --data "
            f"imagenet:ROOT[:split] (one folder per class), not {data!r}"
        )
    if task is None:
        raise ModinvError(f"{model_arg} declares no task (no classifier or detector head), so it has no task metric")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    from modinv.analysis.common import precision
    from modinv.analysis.task import classification_top1, detection_ap
    from modinv.data import open_source
    from modinv.fileio import write_json

    out = writable_file(args.out, suffixes=(".json",), inputs=input_paths(args))
    model = model_from_args(args)
    task = model.meta.task
    _check_data(args.model, task, args.data)
    options = task_source_options(args.data, args.label_map)
    source = open_source(args.data, size=tuple(model.input_size), **options)
    if task == "detection":
        result = detection_ap(model, source, batch_size=args.batch, limit=args.limit,
                              score_threshold=args.score_threshold, amp=args.amp)
        print(f"COCO box AP {_fmt(result['AP'])}  AP50 {_fmt(result['AP50'])}  AP75 {_fmt(result['AP75'])}  "
              f"({result['n_images']} images)")
    else:
        result = classification_top1(model, source, batch_size=args.batch, limit=args.limit, amp=args.amp)
        print(f"top-1 {result['top1']:.4f}  ({result['correct']}/{result['n']} images)")
    result = {"metric": "coco_box_ap" if task == "detection" else "top1", **result, "model": model.name,
              "weights": str(args.weights), "data": args.data, **options,
              "precision": precision(model.device, args.amp)[1]}
    write_json(out, result)
    return 0
