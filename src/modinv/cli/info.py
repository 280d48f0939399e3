"""``modinv info``: stages, their shapes and parameter counts, and the inverse chain's size."""

from __future__ import annotations

import argparse

from modinv.cli.common import (VARIANT_HELP, add_arch_arg, add_model_args, check_stage_names, model_from_args,
                               parse_assignments)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a model's stages, shapes and parameter counts")
    add_model_args(p)
    add_arch_arg(p)
    p.add_argument("--variant", action="append", metavar="STAGE=NAME", help=VARIANT_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from modinv.fileio import to_json
    from modinv.inverse.chain import InverseChain
    from modinv.inverse.summary import describe

    variants = parse_assignments(args.variant, what="variant", option="--variant")
    model = model_from_args(args)
    check_stage_names(model, variants, "--variant")
    chain = InverseChain.build(model, arch=args.arch or "default", seed=args.seed, variants=variants)

    info = describe(model, chain)
    if args.json:
        print(to_json(info))
        return 0
    print(f"model {info['model']}  weights {info['weights']}  input {'×'.join(map(str, info['input_size']))}")
    print(f"{'stage':<8}{'shape':<22}{'forward params':>16}{'inverse params':>16}")
    for row in info["stages"]:
        shape = "×".join(map(str, row["shape"]))
        fwd = f"{row['forward_parameters']:,}" if row["forward_parameters"] is not None else "-"
        inv = f"{row['inverse_parameters']:,}" if row["inverse_parameters"] is not None else "-"
        print(f"{row['stage']:<8}{shape:<22}{fwd:>16}{inv:>16}")
    modular, full = info["modular_trainable_parameters"], info["full_path_trainable_parameters"]
    print(f"inverse architecture: {info['inverse_arch']}")
    print(f"trainable parameters, modular chain:            {modular:,}")
    print(f"trainable parameters, per-stage full-path (classic): {full:,}  ({full / max(modular, 1):.2f}× the modular chain)")
    return 0
