"""``modinv evaluate``: per-stage image MSE with 95% CI and the mean-image baseline, as JSON."""

from __future__ import annotations

import argparse
import json
import warnings

from modinv.cli.common import add_amp_arg, add_model_args, model_from_args, writable_file
from modinv.errors import ModinvError


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
    from modinv.data import DataWarning, open_source
    from modinv.inverse.chain import InverseChain

    if args.limit is not None and args.limit < 1:
        raise ModinvError(f"--limit must be a positive number of images, got {args.limit}")
    if args.batch < 1:
        raise ModinvError(f"--batch must be at least 1, got {args.batch}")
    out = writable_file(args.out)
    model = model_from_args(args)
    chain = InverseChain.load(args.inverse, model, map_location=model.device)
    source = open_source(args.data, size=tuple(model.input_size))
    with warnings.catch_warnings():
        # unusable files are counted and reported below, not warned about one by one
        warnings.simplefilter("ignore", DataWarning)
        try:
            result = evaluate_chain(model, chain, source, batch_size=args.batch, limit=args.limit, amp=args.amp)
        except ModinvError:  # no usable image: say which files failed and why
            wanted = min(len(source), args.limit or len(source))
            if len(source.skipped) >= wanted:  # every image was unusable: nothing to average
                name, reason = next(iter(source.skipped.items()))
                raise ModinvError(
                    f"none of the {wanted} images of {args.data} could be read (e.g. {name}: {reason})"
                ) from None
            raise
    result["inverse"] = str(args.inverse)
    result["data"] = args.data
    result["skipped"] = {"count": len(source.skipped), "files": dict(source.skipped)}
    out.write_text(json.dumps(result, indent=2) + "\n")
    if source.skipped:
        print(f"skipped {len(source.skipped)} unusable image file(s) (listed under 'skipped' in {out})")
    for stage, r in result["stages"].items():
        print(f"{stage:<8} MSE {r['mse']:.5f}  95% CI [{r['ci95'][0]:.5f}, {r['ci95'][1]:.5f}]  n={r['n']}")
    b = result["mean_image_baseline"]
    print(f"{'mean':<8} MSE {b['mse']:.5f}  95% CI [{b['ci95'][0]:.5f}, {b['ci95'][1]:.5f}]  (mean-image baseline)")
    return 0
