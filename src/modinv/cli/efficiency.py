"""``modinv efficiency``: training cost of modular vs classic inversion for every stage of a model.

``modinv efficiency --model M [--weights random] [--batch B] [--steps N] [--stages S ...]
[--device D] [--out DIR]`` prints a table and writes ``DIR/efficiency.json`` and
``DIR/efficiency.png`` (see :mod:`modinv.analysis.efficiency` for what each number is).
"""

from __future__ import annotations

import argparse
import time

from modinv.analysis.efficiency import efficiency_figure, efficiency_table, measure_efficiency
from modinv.cli.common import add_arch_arg, add_model_args, input_paths, model_from_args, positive_int, writable_dir
from modinv.fileio import write_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("efficiency", help="parameters, training FLOPs, time and memory: modular vs classic inversion")
    add_model_args(p)
    p.add_argument("--stages", nargs="+", metavar="STAGE", help="stages to measure (default: all)")
    p.add_argument("--batch", type=positive_int, default=2, help="images per training step (default: 2)")
    p.add_argument("--steps", type=positive_int, default=1, help="timed training steps per inverse, after one untimed "
                                                         "counting step (default: 1)")
    add_arch_arg(p)
    p.add_argument("--out", default="outputs/efficiency", help="output folder (default: outputs/efficiency)")
    p.set_defaults(handler=run, weights="random")


def run(args: argparse.Namespace) -> int:
    out = writable_dir(args.out, inputs=input_paths(args))
    started = time.perf_counter()
    model = model_from_args(args)
    result = measure_efficiency(model, stages=args.stages, batch=args.batch, steps=args.steps, arch=args.arch,
                                seed=args.seed, progress=lambda text: print(f"measuring {text}", flush=True))
    print(f"{result.model} ({result.arch} inverse components), training cost per step")
    print(efficiency_table(result))
    figure = efficiency_figure(result, out / "efficiency.png")
    write_json(out / "efficiency.json", result.to_json() | {
        "figure": figure.name, "wall_seconds": time.perf_counter() - started})
    print(f"written to {out / 'efficiency.json'} and {figure}")
    return 0
