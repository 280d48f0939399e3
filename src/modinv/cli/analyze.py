"""``modinv analyze <name>``: one of the paper's analyses -> ``<name>.png`` and ``<name>.json``.

Each analysis is a module ``modinv.analysis.<module>`` exposing
``add_arguments(parser)`` (its own options) and ``run_cli(args) -> dict`` (does the work, writes
the PNG and the JSON into ``args.out``, returns the numbers).
"""

from __future__ import annotations

import argparse
import importlib

from modinv.cli.common import add_amp_arg, add_model_args

# analysis name -> module in modinv.analysis
ANALYSES: dict[str, str] = {
    "stages": "stages",
    "color": "color",
    "structure": "structure",
    "tokens": "tokens",
    "errors": "errors",
    "layers": "layers",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="run one of the paper's analyses (figure + JSON of numbers)")
    names = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    for name, module in ANALYSES.items():
        mod = importlib.import_module(f"modinv.analysis.{module}")
        summary = (mod.__doc__ or name).strip().splitlines()[0].replace("%", "%%")  # argparse formats help
        q = names.add_parser(name, help=summary, description=summary)
        add_model_args(q)
        q.add_argument("--inverse", required=True, nargs="+", help="inverse chain folder(s)")
        q.add_argument("--data", required=True, help="image source spec")
        q.add_argument("--out", required=True, help="folder for <analysis>.png and <analysis>.json")
        q.add_argument("--batch", type=int, default=8)
        q.add_argument("--limit", type=int, help="use at most this many images")
        add_amp_arg(q)
        mod.add_arguments(q)
        q.set_defaults(handler=mod.run_cli)
