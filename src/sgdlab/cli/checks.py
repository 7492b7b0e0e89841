"""Checks of the command line that every subcommand shares: where its output goes, and how a mistake
in the command line is told (one line on stderr, exit code 2, before any work).

A subcommand raises :class:`UsageError` (or lets a lab error such as ``SpecError`` through);
:func:`sgdlab.cli.main` prints it as ``sgdlab COMMAND: error: MESSAGE``. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

# Errors that mean "the command line asks for something impossible", by module and class name, so
# that :func:`is_usage_error` need not import the (heavy) lab modules to recognise them: an error of
# a module that was never imported cannot have been raised.
_LAB_USAGE_ERRORS = (
    ("sgdlab.lab.specs", "SpecError"),
    ("sgdlab.lab.tasks", "UnknownTaskError"),
    ("sgdlab.lab.tune.space", "SpaceError"),
    ("sgdlab.lab.tune.search", "StorageError"),
    ("sgdlab.lab.landscape.functions", "UnknownFunctionError"),
    ("sgdlab.lab.benchmark", "BenchmarkError"),
)


class UsageError(Exception):
    """A mistake in the command line, told as one line (no traceback) with exit code 2."""


def is_usage_error(error: BaseException) -> bool:
    if isinstance(error, UsageError):
        return True
    for module_name, class_name in _LAB_USAGE_ERRORS:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if cls is not None and isinstance(error, cls):
            return True
    return False


def output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """The output directory ``path``, created now (with its parents) and checked to take a file, so
    that a command cannot fail on it after its work. Raises :class:`UsageError` naming ``option``."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{option} {str(path)!r} is a file, not a directory; give a directory")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{option} {str(path)!r}: cannot create the directory: {_reason(error)}") from None
    try:
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as error:
        raise UsageError(f"{option} {str(path)!r}: cannot write in the directory: {_reason(error)}") from None
    return target


def output_file(path: str | os.PathLike, option: str) -> Path:
    """The output file ``path``, checked now to be writable (its directory is created when missing);
    an existing file is left as it is. Raises :class:`UsageError` naming ``option``."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option} {str(path)!r} is a directory; give a file path")
    if str(target.parent) not in ("", "."):
        if target.parent.exists() and not target.parent.is_dir():
            raise UsageError(f"{option} {str(path)!r}: {str(target.parent)!r} is a file, not a directory")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"{option} {str(path)!r}: cannot create its directory: {_reason(error)}") from None
    existed = target.exists()
    try:
        with open(target, "a"):  # appending writes nothing: an existing file keeps its contents
            pass
    except OSError as error:
        raise UsageError(f"{option} {str(path)!r}: cannot write the file: {_reason(error)}") from None
    if not existed:
        target.unlink(missing_ok=True)
    return target


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


# --- argument types: a bad value is an argparse error (usage, one error line, exit code 2) -----------


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer ``>= low`` (and ``<= high`` when given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} (expected >= {low})")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{value} (expected <= {high})")
        return value

    return parse


positive_int = int_at_least(1)
#: Seeds go to torch, NumPy and Optuna's samplers; NumPy takes 0 .. 2**32 - 1.
seed_value = int_at_least(0, 2**32 - 1)


def positive_float(text: str) -> float:
    """An argparse type: a number ``> 0``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} (expected > 0)")
    return value
