"""``modinv params``: trainable parameters of the modular chain vs classic full-path inverses.

Measured on the real components: the modular chain (one component per stage, p in all) and, for
every stage j, a classic chain j -> image actually built (``InverseChain.build(model, stages=...)``,
the same component architectures) and counted, beside the chain's own full-path sum
(:meth:`InverseChain.full_path_parameters`) and the paper's estimate (n+1)·p/2 for n stages
(Section 3: each stage p/n parameters, the classic inverse of stage j mirroring j of them).
"""

from __future__ import annotations

import argparse
import gc
import json
from typing import Any, Mapping

from modinv.cli.common import add_model_args, model_from_args, parse_assignments, writable_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("params", help="trainable parameters: modular chain vs classic per-stage inverses")
    add_model_args(p)
    p.add_argument("--arch", default=None, help="paper | auto (default: paper for detr-r50/vit-b16, else auto)")
    p.add_argument("--variant", action="append", metavar="STAGE=NAME", help="e.g. bb=local, pred=oh")
    p.add_argument("--out", help="JSON file to write")
    p.set_defaults(handler=run, weights="random")


def parameter_comparison(model, arch: str = "default", seed: int = 0,
                         variants: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The numbers of ``modinv params`` as a dict (see the module docstring)."""
    from modinv.inverse.chain import InverseChain
    from modinv.training.classic import build_classic_chain, classic_path

    chain = InverseChain.build(model, arch=arch, seed=seed, variants=variants)
    modular = chain.trainable_parameters()
    full_path = chain.full_path_parameters()
    stages = list(chain.stages)
    arch_used = chain.arch
    del chain
    classic: dict[str, int] = {}
    for stage in stages:
        built = build_classic_chain(model, stage, arch=arch, seed=seed, variants=variants)
        classic[stage] = built.trainable_parameters()["total"]
        del built
        gc.collect()
    p, n = modular["total"], len(stages)
    classic_total = sum(classic.values())
    return {
        "model": model.name,
        "weights": str(getattr(model, "weights", "unknown")),
        "arch": arch_used,
        "stages": stages,
        "forward_parameters": model.parameter_counts(),
        "modular": modular,
        "classic_measured": classic | {"total": classic_total},
        "classic_paths": {s: classic_path(model, s) for s in stages},
        "full_path_sum": full_path,
        "paper_estimate": {"p": p, "n": n, "modular": p, "classic": (n + 1) * p / 2},
        "classic_over_modular": classic_total / p if p else None,
    }


def format_table(result: Mapping[str, Any]) -> str:
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
    out = writable_file(args.out) if args.out else None
    model = model_from_args(args)
    result = parameter_comparison(model, arch=args.arch or "default", seed=args.seed,
                                  variants=parse_assignments(args.variant, what="variant"))
    print(f"{result['model']} ({result['arch']} inverse components), trainable parameters")
    print(format_table(result))
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {out}")
    return 0
