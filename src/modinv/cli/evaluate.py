"""``modinv evaluate``: per-stage image MSE with 95% CI and the mean-image baseline, as JSON."""

from __future__ import annotations

import argparse
import json

from modinv.cli.common import add_amp_arg, add_model_args, model_from_args, writable_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="reconstruction error per stage vs the mean-image baseline")
    add_model_args(p)
    p.add_argument("--inverse", required=True, help="inverse chain folder (e.g. RUN/best)")
    p.add_argument("--data", required=True, help="image source spec")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--limit", type=int, help="evaluate at most this many images")
    add_amp_arg(p)
    p.set_defaults(handler=run, amp="off")


def run(args: argparse.Namespace) -> int:
    from modinv.analysis.evaluate import evaluate_chain
    from modinv.data import open_source
    from modinv.inverse.chain import InverseChain

    out = writable_file(args.out)
    model = model_from_args(args)
    chain = InverseChain.load(args.inverse, model, map_location=model.device)
    source = open_source(args.data, size=tuple(model.input_size))
    result = evaluate_chain(model, chain, source, batch_size=args.batch, limit=args.limit, amp=args.amp)
    result["inverse"] = str(args.inverse)
    result["data"] = args.data
    out.write_text(json.dumps(result, indent=2) + "\n")
    for stage, r in result["stages"].items():
        print(f"{stage:<8} MSE {r['mse']:.5f}  95% CI [{r['ci95'][0]:.5f}, {r['ci95'][1]:.5f}]  n={r['n']}")
    b = result["mean_image_baseline"]
    print(f"{'mean':<8} MSE {b['mse']:.5f}  95% CI [{b['ci95'][0]:.5f}, {b['ci95'][1]:.5f}]  (mean-image baseline)")
    return 0
