"""Reconstructions from pred via the FD (full class distribution) and OH (one-hot class) pred⁻¹, Fig. 8."""

from __future__ import annotations

import argparse
from typing import Any

from modinv.analysis.structure import pred_variant, require_pred, structure_analysis, structure_figure
from modinv.cli.analyze.common import load_chains, model_and_source, wrote, write_result
from modinv.cli.common import input_paths, number_in, positive_int, writable_dir
from modinv.errors import ModinvError
from modinv.metrics import format_ci


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples", type=positive_int, default=4, help="rows (images) of structure.png (default: 4)")
    parser.add_argument("--box-threshold", type=number_in(0, 1, high_open=True), default=0.7,
                        help="draw the detector's detections with a class score above this (default: 0.7)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = writable_dir(args.out, inputs=input_paths(args))
    if len(args.inverse) != 2:
        raise ModinvError(
            f"the structure analysis takes two inverse chains (--inverse FD_CHAIN OH_CHAIN, any order), "
            f"got {len(args.inverse)}"
        )
    model, source = model_and_source(args)
    require_pred(model)  # before loading chains that cannot fit it
    chains = load_chains(args, model)
    result = structure_analysis(model, chains, source, batch_size=args.batch, limit=args.limit,
                                n_examples=args.examples, box_threshold=args.box_threshold, amp=args.amp)
    extra = {"inverse": {pred_variant(c): str(p) for c, p in zip(chains, args.inverse)}, "data": args.data}
    payload = write_result(out, "structure", result, structure_figure, extra=extra,
                           title=f"{model.name}: reconstructions with the FD and OH pred⁻¹")
    for column, r in payload["mse"].items():
        print(f"{column:<8} MSE {format_ci(r, digits=5)}  n={r['n']}")
    print(f"MSE(OH) - MSE(FD) per image: {format_ci(payload['oh_minus_fd'], digits=5, signed=True)}")
    wrote(out, "structure")
    return payload
