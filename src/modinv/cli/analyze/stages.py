"""Per-stage reconstruction quality (MSE, PSNR, SSIM, LPIPS) with confidence intervals and the mean-image baseline, side by side (Fig. 4 left)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modinv.analysis.evaluate import evaluation_lines
from modinv.analysis.common import unique_label
from modinv.analysis.stages import load_results, stage_errors, stage_errors_figure
from modinv.cli.analyze.common import load_chains, model_and_source, wrote, write_result
from modinv.cli.common import input_paths, writable_dir
from modinv.cli.evaluate import add_metric_args, lpips_from_args
from modinv.errors import ModinvError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compare", nargs="+", default=[], metavar="FILE.json",
                        help="add results saved by `modinv evaluate` or `modinv analyze stages` (e.g. another model)")
    parser.add_argument("--label", nargs="+", metavar="LABEL",
                        help="legend label(s) of this run's chain(s) (default: the model name, plus the chain folder "
                             "when several chains are given)")
    add_metric_args(parser)


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = writable_dir(args.out, inputs=input_paths(args))
    compare: dict[str, dict[str, Any]] = {}
    for file in args.compare:  # read them first: a bad file fails before any work
        for label, entry in load_results(file).items():
            compare[unique_label(label, compare)] = entry
    labels = list(args.label or [])
    if labels and len(labels) != len(args.inverse):
        raise ModinvError(f"--label needs one label per --inverse chain ({len(args.inverse)}), got {len(labels)}")
    model, source = model_and_source(args)
    if not labels:
        labels = ([f"{model.name} [{Path(p).name or p}]" for p in args.inverse] if len(args.inverse) > 1
                  else [model.name])
    chains, inverse = {}, {}
    for label, path, chain in zip(labels, args.inverse, load_chains(args, model)):
        chains[unique_label(label, chains)] = chain
        inverse[unique_label(label, inverse)] = str(path)
    lpips = lpips_from_args(args, model.device)
    result = stage_errors(model, chains, source, compare=compare, batch_size=args.batch, limit=args.limit,
                          amp=args.amp, metrics=args.metrics, lpips=lpips)
    for label, path in inverse.items():
        result.results[label] |= {"inverse": path, "data": args.data}
    payload = write_result(out, "stages", result, stage_errors_figure)
    reasons = {name: why for label in chains for name, why in payload["results"][label].get("not_computed", {}).items()}
    for name, why in reasons.items():  # once, not once per chain
        print(f"{name.upper()} not computed: {why}")
    for label, entry in payload["results"].items():
        print(label)
        print("\n".join(evaluation_lines(entry, indent="  ", baseline="(mean image)")))
    wrote(out, "stages")
    return payload
