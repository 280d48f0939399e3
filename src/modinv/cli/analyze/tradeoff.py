"""Reconstruction vs task across λ fine-tuning runs, with the modular and classic chains (Fig. 4 centre/right)."""

from __future__ import annotations

import argparse
from typing import Any

from modinv.cli.analyze.common import wrote, write_result
from modinv.cli.common import add_report_amp_arg, positive_int, writable_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", required=True, nargs="+", metavar="RUN",
                        help="run folders of one model and stage j: `finetune` (λ), `train` (modular) and "
                             "`train --classic` runs")
    parser.add_argument("--data", required=True, help="image source for the stage-j MSE")
    parser.add_argument("--task-data", help="source for the task metric: coco:ROOT (AP) or imagenet:ROOT (top-1); "
                                            "default: --data")
    parser.add_argument("--label-map", default="auto", help="imagenet label map (as eval-task's)")
    parser.add_argument("--out", required=True, help="folder for tradeoff.png and tradeoff.json")
    parser.add_argument("--batch", type=positive_int, default=8, help="images per batch (default 8)")
    parser.add_argument("--limit", type=positive_int, help="use at most this many images")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    add_report_amp_arg(parser)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from modinv.analysis.tradeoff import check_runs, read_run, tradeoff, tradeoff_figure
    from modinv.data import open_source
    from modinv.data.sources import task_source_options
    from modinv.errors import ModinvError
    from modinv.inverse.storage import read_manifest
    from modinv.runtime import resolve_device

    if args.amp != "off":
        raise ModinvError("the trade-off is reported in float32; leave out --amp")
    infos = [read_run(p) for p in args.runs]
    check_runs(infos)  # different models or stages: refused before anything is written
    size = tuple(read_manifest(infos[0].path / "best")["input_size"])
    task_spec = args.task_data or args.data
    source = open_source(args.data, size=size)
    task_source = open_source(task_spec, size=size, **task_source_options(task_spec, args.label_map))
    out = writable_dir(args.out)
    result = tradeoff(args.runs, source, task_source, batch_size=args.batch, limit=args.limit,
                      device=resolve_device(args.device),
                      on_point=lambda p: print(f"{p.label:10s} MSE {p.mse:.5f} [{p.mse_ci95[0]:.5f}, "
                                               f"{p.mse_ci95[1]:.5f}]  {p.task if p.task is None else round(p.task, 4)}"))
    payload = write_result(out, "tradeoff", result, tradeoff_figure, extra={"runs": [str(r) for r in args.runs],
                                                                              "data": args.data, "task_data": task_spec})
    wrote(out, "tradeoff")
    return payload
