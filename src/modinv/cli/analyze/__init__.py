"""``modinv analyze <name>``: one of the paper's analyses -> ``<name>.png`` and ``<name>.json``.

The subcommands are those of the analysis registry (:data:`modinv.analysis.registry.ANALYSES`).
Each analysis has its own CLI module (``modinv.cli.analyze.<name>``) exposing ``add_arguments(parser)``
(its own options) and ``run(args) -> dict`` (calls the library function of
``modinv.analysis.<name>``, writes the PNG and the JSON into ``args.out``, prints a summary and
returns the numbers). The options every analysis shares are added here.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

from modinv.analysis.registry import ANALYSES as REGISTRY
from modinv.cli.common import add_model_args, add_report_amp_arg, positive_int

# analysis name -> its CLI module, from the analysis registry
ANALYSES: dict[str, str] = {name: analysis.cli for name, analysis in REGISTRY.items()}


# analyses with options of their own (not one model, chain and data source): name -> CLI module
OWN_OPTIONS: dict[str, str] = {"tradeoff": "modinv.cli.analyze.tradeoff"}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every analysis: the model, the inverse chain(s), the data, the output folder."""
    add_model_args(parser, from_chain=True)
    parser.add_argument("--inverse", required=True, nargs="+",
                        help="inverse chain(s): folders (RUN/best; a RUN folder means its best/) or hf:USER/NAME; they "
                             "name the model")
    parser.add_argument("--data", required=True, help="image source spec")
    parser.add_argument("--out", required=True, help="folder for <analysis>.png and <analysis>.json")
    parser.add_argument("--batch", type=positive_int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--limit", type=positive_int, help="use at most this many images")

    add_report_amp_arg(parser)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="run one of the paper's analyses (figure + JSON of numbers)")
    names = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    for name, module in ANALYSES.items():
        mod = importlib.import_module(module)
        summary = (mod.__doc__ or name).strip().splitlines()[0].replace("%", "%%")  # argparse formats help
        q = names.add_parser(name, help=summary, description=summary)
        add_common_arguments(q)
        mod.add_arguments(q)
        q.set_defaults(handler=_captioned(mod.run))
    for name, module in OWN_OPTIONS.items():
        mod = importlib.import_module(module)
        summary = (mod.__doc__ or name).strip().splitlines()[0].replace("%", "%%")
        q = names.add_parser(name, help=summary, description=summary)
        mod.add_arguments(q)
        q.set_defaults(handler=_captioned(mod.run))


def _captioned(run: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], Any]:
    """``run`` inside a :func:`modinv.figures.figure_caption` block, which the loading helpers of
    :mod:`modinv.cli.analyze.common` fill with what the figures were computed with."""

    def handler(args: argparse.Namespace) -> Any:
        from modinv.figures import figure_caption

        with figure_caption():
            return run(args)

    handler.__wrapped__ = run  # type: ignore[attr-defined]
    return handler
