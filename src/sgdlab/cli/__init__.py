"""The ``sgdlab`` command. Each subcommand lives in its own module under ``sgdlab.cli`` and exposes
``register(subparsers)``; modules import their heavy dependencies only when run, so ``sgdlab --help``
stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `sgdlab --help` lists them.
SUBCOMMANDS = ["demo", "compare", "landscape", "tune", "benchmark", "bench", "doctor"]  # helpers append: "compare", "landscape", "tune", "bench"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sgdlab",
        description="Gradient-descent optimizers, and a lab to compare, tune and visualize them.",
    )
    from sgdlab import __version__

    parser.add_argument("--version", action="version", version=f"sgdlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"sgdlab.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from sgdlab.lab.runner import one_line_lab_warnings

    one_line_lab_warnings(f"sgdlab {args.command}")
    try:
        return int(args.func(args) or 0)
    except Exception as error:
        from sgdlab.cli.checks import is_usage_error

        if not is_usage_error(error):
            raise  # a bug: keep the traceback
        print(f"sgdlab {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
