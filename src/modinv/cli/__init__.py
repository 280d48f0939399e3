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
    "explore": "explore",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or of ``command`` alone (importing only its module)."""
    from modinv import __version__

    parser = argparse.ArgumentParser(prog="modinv", description="Modular feature inversion of vision models.")
    parser.add_argument("--version", action="version", version=f"modinv {__version__}",
                        help="print the version of modinv and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(f"modinv.cli.{module}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one sentence (no traceback) and exit with status 2; Ctrl-C
    exits 130 and SIGTERM 143 (training first finishes its step and writes a checkpoint), one line each."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None  # a known command: import only its module
    prefix = "modinv"  # "modinv train" once the command is known
    try:
        # inside the try: torch and the command's modules load here, and Ctrl-C meanwhile is one line
        from modinv.cli.common import CREATED_DIRS
        from modinv.runtime import sigterm_handled

        CREATED_DIRS.clear()
        with sigterm_handled():
            args = build_parser(command).parse_args(argv)  # inside: Ctrl-C while the modules load is no traceback
            prefix = f"modinv {args.command}"
            status = args.handler(args)
        CREATED_DIRS.clear()  # kept, even if empty: the command succeeded
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
    finally:
        common = sys.modules.get("modinv.cli.common")  # absent when interrupted before it loaded
        if common is not None:
            common.remove_unused_output_dirs()  # a failed command leaves no empty output folder behind
