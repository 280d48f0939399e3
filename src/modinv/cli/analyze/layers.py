"""Reconstructions from intermediate encoder and decoder layers (paper Sec. 4.7, Fig. 11)."""

from __future__ import annotations

import argparse
from typing import Any

from modinv.analysis.layers import layer_analysis, layer_figure
from modinv.cli.analyze.common import run_record, single_chain_inputs, wrote, write_result
from modinv.cli.common import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--figure-images", type=positive_int, default=1, help="images shown in the figure (default: 1)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    out, model, chain, source = single_chain_inputs(args, "layer")
    result = layer_analysis(model, chain, source, batch_size=args.batch, limit=args.limit, amp=args.amp,
                            figure_images=args.figure_images)
    payload = write_result(out, "layers", result, layer_figure, extra=run_record(args),
                           title=f"{model.name}: reconstructions from intermediate layers")
    for row in payload["rows"]:
        values = " ".join(f"{s['mse']:.4f}" for s in payload["mse"][row["key"]])
        print(f"{row['key']:<10} MSE per layer: {values}")
    wrote(out, "layers")
    return payload
