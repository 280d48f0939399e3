"""The ``modinv`` command. Each subcommand lives in its own module with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from modinv.errors import ModinvError, Terminated

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
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modinv", description="Modular feature inversion of vision models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(f"modinv.cli.{module}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one sentence (no traceback) and exit with status 2; Ctrl-C
    exits 130 and SIGTERM 143 (training first finishes its step and writes a checkpoint), one line each."""
    prefix = "modinv"  # "modinv train" once the command is known
    try:
        from modinv.runtime import sigterm_handled

        with sigterm_handled():
            args = build_parser().parse_args(argv)  # inside: Ctrl-C while the modules load is no traceback
            prefix = f"modinv {args.command}"
            status = args.handler(args)
        return status if isinstance(status, int) else 0  # analyses return their numbers
    except ModinvError as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 2
    except Terminated as exc:
        print(f"{prefix}: terminated (SIGTERM){': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
