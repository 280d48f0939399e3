"""``modinv convert``: checkpoints of another code base (the authors' ``inverse-tvm``) as a chain folder."""

from __future__ import annotations

import argparse

from modinv.cli.common import add_model_args, check_stage_names, model_from_args, parse_assignments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="write the authors' inverse-tvm checkpoints as a modinv chain folder")
    p.add_argument("--from", dest="source", required=True, choices=["inverse-tvm"],
                   help="the code base the checkpoints come from")
    add_model_args(p)
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="FILE",
                   help="their torch files (read weights-only) or .safetensors; each one's stage is found "
                        "from its parameter names and shapes")
    p.add_argument("--variant", action="append", metavar="STAGE=NAME",
                   help="e.g. pred=fd (their pred⁻¹ one-hot encodes the classes: default pred=oh)")
    p.add_argument("--out", required=True, help="chain folder to write")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from modinv.inverse.convert import convert

    variants = parse_assignments(args.variant, what="variant", option="--variant")
    model = model_from_args(args)
    check_stage_names(model, variants, "--variant")
    out = convert(model, args.checkpoint, args.out, source=args.source, variants=variants,
                  on_stage=lambda stage, name: print(f"{stage}: {name}"))
    print(f"chain written to {out}")
    return 0
