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
    "models": "models",
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
    "convert": "convert",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or of ``command`` alone (importing only its module)."""
    parser = argparse.ArgumentParser(prog="modinv", description="Modular feature inversion of vision models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(f"modinv.cli.{module}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one sentence (no traceback) and exit with status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None  # a known command: import only its module
    args = build_parser(command).parse_args(argv)
    try:
        status = args.handler(args)
        return status if isinstance(status, int) else 0  # analyses return their numbers
    except ModinvError as exc:
        print(f"modinv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"modinv {args.command}: interrupted", file=sys.stderr)
        return 130
