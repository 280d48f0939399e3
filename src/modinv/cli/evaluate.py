"""``modinv evaluate``: per-stage image quality (MSE, PSNR, SSIM, LPIPS) with 95% CIs and the
mean-image baseline, as JSON.

Also home of the metric options that ``modinv analyze stages`` shares: :func:`add_metric_args`
(``--metrics``, ``--lpips-weights``), :func:`metric_names` (their check) and :func:`lpips_from_args`.
"""

from __future__ import annotations

import argparse
import warnings
from typing import TYPE_CHECKING

from modinv.cli.common import (INVERSE_HELP, add_model_args, add_report_amp_arg, input_paths, model_for_chains,
                               positive_int, writable_file)
from modinv.errors import ModinvError

if TYPE_CHECKING:
    from modinv.metrics import Lpips


def metric_names(text: str) -> tuple[str, ...]:
    """``--metrics``: comma-separated metric names (mse, psnr, ssim, lpips), checked while parsing."""
    from modinv.metrics import parse_metrics

    try:
        return parse_metrics(text)
    except ModinvError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_metric_args(parser: argparse.ArgumentParser) -> None:
    """``--metrics`` (default: all) and ``--lpips-weights``."""
    parser.add_argument("--metrics", type=metric_names, default=None,
                        help="comma-separated: mse, psnr, ssim, lpips (default: every one that can be computed "
                             "here, saying which was left out and why; LPIPS needs torchvision's AlexNet weights, and "
                             "asking for it by name without them is an error)")
    parser.add_argument("--lpips-weights", metavar="FILE",
                        help="torchvision AlexNet weights file for LPIPS (default: the torch hub cache; never "
                             "downloaded)")


def lpips_from_args(args: argparse.Namespace, device) -> Lpips | None:
    """The LPIPS network when ``--metrics`` asks for it, else None. Without ``--metrics`` every
    metric is asked for and one that cannot be computed is left out (its ``reason`` printed by the
    command); named in ``--metrics``, LPIPS without its weights is refused in one sentence.
    Sets ``args.metrics`` to the metrics asked for."""
    from modinv.metrics import DEFAULT_METRICS, load_lpips

    named = args.metrics is not None
    args.metrics = tuple(args.metrics) if named else tuple(DEFAULT_METRICS)
    if "lpips" not in args.metrics:
        return None
    lpips = load_lpips(args.lpips_weights, device=device)
    if named and not lpips.available:
        raise ModinvError(f"--metrics asks for LPIPS, which cannot be computed here: {lpips.reason}; give "
                          "--lpips-weights FILE (torchvision's AlexNet weights) or leave lpips out of --metrics")
    return lpips


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="reconstruction quality per stage (MSE, PSNR, SSIM, LPIPS) vs the mean-image "
                                        "baseline")
    add_model_args(p, from_chain=True)
    p.add_argument("--inverse", required=True, help=INVERSE_HELP)
    p.add_argument("--data", required=True, help="image source spec")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--batch", type=positive_int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--limit", type=positive_int, help="evaluate at most this many images")
    add_metric_args(p)
    p.add_argument("--untrained", action="store_true",
                   help="also evaluate stages whose components were never trained (left out by default)")
    add_report_amp_arg(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from modinv.analysis.evaluate import evaluate_chain, evaluation_lines
    from modinv.data import DataWarning, open_source
    from modinv.fileio import write_json
    from modinv.inverse.chain import InverseChain

    out = writable_file(args.out, suffixes=(".json",), inputs=input_paths(args))

    model = model_for_chains(args)
    chain = InverseChain.load(args.inverse, model, map_location=model.device)
    source = open_source(args.data, size=tuple(model.input_size))
    lpips = lpips_from_args(args, model.device)
    untrained = chain.untrained_stages()
    stages = [s for s in chain.stages if s not in untrained] if untrained and not args.untrained else None
    with warnings.catch_warnings():
        # unusable files are counted and reported below, not warned about one by one
        warnings.simplefilter("ignore", DataWarning)
        try:
            result = evaluate_chain(model, chain, source, stages=stages, batch_size=args.batch, limit=args.limit,
                                    amp=args.amp, metrics=args.metrics, lpips=lpips)
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
    result["untrained_stages"] = untrained
    write_json(out, result)
    if untrained:
        print(f"{'included' if args.untrained else 'left out'} stage(s) {', '.join(untrained)}, whose components "
              f"were never trained (the chain's manifest says so){'' if args.untrained else '; --untrained includes them'}")
    if source.skipped:
        print(f"skipped {len(source.skipped)} unusable image file(s) (listed under 'skipped' in {out})")
    for name, why in result["not_computed"].items():
        print(f"{name.upper()} not computed: {why}")
    print("\n".join(evaluation_lines(result)))
    return 0
