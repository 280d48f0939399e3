"""``modinv evaluate``: per-stage image MSE with 95% CI and the mean-image baseline, as JSON."""

from __future__ import annotations

import argparse
import warnings

from modinv.cli.common import add_model_args, add_report_amp_arg, model_from_args, positive_int, writable_file
from modinv.errors import ModinvError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="reconstruction error per stage vs the mean-image baseline")
    add_model_args(p)
    p.add_argument("--inverse", required=True, help="inverse chain folder (e.g. RUN/best)")
    p.add_argument("--data", required=True, help="image source spec")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--limit", type=positive_int, help="evaluate at most this many images")
    add_report_amp_arg(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from modinv.analysis.evaluate import evaluate_chain
    from modinv.data import DataWarning, open_source
    from modinv.fileio import write_json
    from modinv.inverse.chain import InverseChain
    from modinv.metrics import format_ci

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
    write_json(out, result)
    if source.skipped:
        print(f"skipped {len(source.skipped)} unusable image file(s) (listed under 'skipped' in {out})")
    for stage, r in result["stages"].items():
        print(f"{stage:<8} MSE {format_ci(r, digits=5)}  n={r['n']}")
    print(f"{'mean':<8} MSE {format_ci(result['mean_image_baseline'], digits=5)}  (mean-image baseline)")
    return 0
