"""The ``modinv`` command. Each subcommand lives in its own module with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from modinv.errors import ModinvError

# subcommand -> module in this package (each imported when the parser is built)
COMMANDS: dict[str, str] = {
    "info": "info",
    "train": "train",
    "evaluate": "evaluate",
    "reconstruct": "reconstruct",
    "analyze": "analyze",
    "finetune": "finetune",
    "eval-task": "eval_task",
    "params": "params",
    "efficiency": "efficiency",
    "demo": "demo",
    "push": "push",
    "explore": "explore",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modinv", description="Modular feature inversion of vision models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(f"modinv.cli.{module}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one sentence (no traceback) and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        status = args.handler(args)
        return status if isinstance(status, int) else 0  # analyses return their numbers
    except ModinvError as exc:
        print(f"modinv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"modinv {args.command}: interrupted", file=sys.stderr)
        return 130
