"""``modinv params``: trainable parameters of the modular chain vs classic full-path inverses.

The numbers are :func:`modinv.inverse.summary.parameter_comparison`'s (measured on the real
components); this module prints them as a table and writes them as JSON.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping

from modinv.cli.common import (VARIANT_HELP, add_arch_arg, add_model_args, check_stage_names, input_paths,
                               model_from_args, parse_assignments, writable_file)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("params", help="trainable parameters: modular chain vs classic per-stage inverses")
    add_model_args(p)
    add_arch_arg(p)
    p.add_argument("--variant", action="append", metavar="STAGE=NAME", help=VARIANT_HELP)
    p.add_argument("--out", help="JSON file to write")
    p.set_defaults(handler=run, weights="random")


def format_table(result: Mapping[str, Any]) -> str:
    """The per-stage table of :func:`~modinv.inverse.summary.parameter_comparison` and the paper's estimate."""
    rows = [("stage", "forward", "modular j->j-1", "classic j->img (built)", "full-path sum")]
    for s in result["stages"]:
        rows.append((s, f"{result['forward_parameters'].get(s, 0):,}", f"{result['modular'][s]:,}",
                     f"{result['classic_measured'][s]:,}", f"{result['full_path_sum'][s]:,}"))
    rows.append(("total", f"{sum(result['forward_parameters'].values()):,}", f"{result['modular']['total']:,}",
                 f"{result['classic_measured']['total']:,}", f"{result['full_path_sum']['total']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    est = result["paper_estimate"]
    lines.append("")
    lines.append(f"paper estimate (n = {est['n']} stages, p = {est['p']:,}): modular p = {est['p']:,}, "
                 f"classic (n+1)p/2 = {est['classic']:,.0f}; measured classic/modular = "
                 f"{result['classic_over_modular']:.2f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from modinv.fileio import write_json
    from modinv.inverse.summary import parameter_comparison

    out = writable_file(args.out, suffixes=(".json",), inputs=input_paths(args)) if args.out else None
    variants = parse_assignments(args.variant, what="variant", option="--variant")
    model = model_from_args(args)
    check_stage_names(model, variants, "--variant")
    result = parameter_comparison(model, arch=args.arch or "default", seed=args.seed, variants=variants)

    print(f"{result['model']} ({result['arch']} inverse components), trainable parameters")
    print(format_table(result))
    if out is not None:
        write_json(out, result)
        print(f"written to {out}")
    return 0
