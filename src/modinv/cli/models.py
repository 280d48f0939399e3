"""``modinv models``: every registered model family with its stages and shapes, without building one."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model names --model takes, with their stages and shapes")
    p.add_argument("pattern", nargs="*", default=["*"], help="shell-style name patterns, e.g. 'vit*' (default: all)")
    p.add_argument("--task", choices=["detection", "classification"], help="only models of this task")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from modinv.fileio import to_json
    from modinv.models.registry import families, list_models

    found = [families()[name.removesuffix("<name>")] for name in list_models(args.pattern, task=args.task)]
    if args.json:
        print(to_json([family.describe() for family in found]))
        return 0
    if not found:
        print("no registered model matches " + " ".join(args.pattern))
    for family in found:
        size = "×".join(map(str, family.input_size)) if family.input_size else "its own"
        print(f"{family.display_name}  ({family.task or 'no task'}; input {size}; "
              f"inverse {family.inverse_family or 'auto'})  {family.summary}")
        for stage, shape in family.shapes().items():
            if stage != "img":
                print(f"    {stage:<8}{'×'.join(map(str, shape))}")
    return 0
