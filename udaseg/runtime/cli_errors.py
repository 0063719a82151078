"""How the `udaseg` command reports a user's mistake: one line on stderr that names the file or
key and what was expected, and an exit code, instead of a Python traceback.

A mistake is (1) a command line or config that does not parse (jsonargparse's several-line
report, with every candidate type it tried, is reduced to the line that names the key), or
(2) an error udaseg raised itself with such a message: a `ValueError` (bad setting, checkpoint
of another model), an `OSError` (a missing or unreadable file), a `FloatingPointError` (a
non-finite loss), also when a DataLoader worker raised it; and an `OSError` that names its
file, wherever it was raised. Anything else (a bug, an error inside
PyTorch or the user's own network code) keeps its traceback. `UDASEG_TRACEBACK=1` shows the
traceback of every error.
"""

from __future__ import annotations

import os
import re
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, Optional

import jsonargparse
from pytorch_lightning.cli import LightningArgumentParser

#: Exit code of a command line or config that does not parse (argparse's).
USAGE_EXIT_CODE = 2
#: Exit code of a run refused or stopped by a user's mistake.
ERROR_EXIT_CODE = 1
#: Set to 1 to get the traceback of every error.
TRACEBACK_VARIABLE = "UDASEG_TRACEBACK"

USER_ERROR_TYPES = (ValueError, OSError, FloatingPointError)
#: udaseg's own code (errors raised there carry messages written for users).
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
JSONARGPARSE_ROOT = Path(jsonargparse.__file__).resolve().parent

#: Lines of jsonargparse's error report that describe its type search, not the mistake.
PARSER_NOISE = re.compile(
    r"^(-\s*)?(Does not validate against any of the Union subtypes|Subtypes: |Errors:$"
    r"|Expected a <class 'NoneType'>|Given value type: |Given value: "
    r"|Expected a path but .* either not accessible or invalid)")

#: How PyTorch rewraps an exception raised in a DataLoader worker process.
WORKER_ERROR = re.compile(r"^Caught (\w+) in DataLoader worker process (\d+)\.\nOriginal Traceback")


class CommandLineError(SystemExit):
    """A command line or config that does not parse, summarised in one line (`message`)."""

    def __init__(self, message: str) -> None:
        super().__init__(USAGE_EXIT_CODE)
        self.message = message


def error_line(arguments: Sequence[str], message: str) -> str:
    """`udaseg <subcommand>: error: <message>`, the subcommand being the first argument that is
    not an option (`udaseg: error: ...` without one)."""
    subcommand = next((argument for argument in arguments if not argument.startswith("-")), "")
    return f"udaseg {subcommand}: error: {message}" if subcommand else \
        f"udaseg: error: {message}"


def summarize_parser_error(message: str) -> str:
    """One line from jsonargparse's report: the lines that name the key and the problem."""
    kept = [line.strip().removeprefix("- ").strip() for line in message.splitlines()]
    kept = [line for line in kept if line and not PARSER_NOISE.match(line)]
    return " ".join(kept) or message.strip()


class OneLineErrorParser(LightningArgumentParser):
    """Lightning's argument parser whose errors end the command with `CommandLineError` (the
    CLI prints it in one line) instead of printing the whole usage first."""

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        raise CommandLineError(summarize_parser_error(message))


def unwrap_worker_error(error: BaseException) -> Optional[BaseException]:
    """The error a DataLoader worker raised, with its own one-line message (which names the
    bad file) instead of PyTorch's "Caught ... Original Traceback" text; None when `error`
    did not come from a worker."""
    text = str(error.args[0]) if error.args else ""
    match = WORKER_ERROR.match(text)
    if match is None:
        return None
    name, worker = match.groups()
    original = text.rstrip().rsplit(f"\n{name}: ", 1)[-1]
    message = f"{original} (in DataLoader worker {worker})"
    try:
        return type(error)(message)
    except Exception:  # an exception type that takes other arguments
        return RuntimeError(f"{name}: {message}")


def raised_in(error: BaseException, package: Path) -> bool:
    """Whether the innermost frame that raised `error` is in `package`'s code."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(package)


def user_error_message(error: BaseException) -> Optional[str]:
    """The one-line message of a user's mistake, or None for an error that needs its
    traceback (see the module docstring)."""
    if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
        return None
    unwrapped = unwrap_worker_error(error)
    if unwrapped is not None:
        return str(unwrapped) if isinstance(unwrapped, USER_ERROR_TYPES) else None
    if raised_in(error, JSONARGPARSE_ROOT) and isinstance(error.__cause__ or error.__context__,
                                                           Exception):
        # A constructor that refused its config while jsonargparse built the classes: the
        # constructor's own error is the one that names the key.
        return user_error_message(error.__cause__ or error.__context__)
    named_file = isinstance(error, OSError) and error.filename is not None
    if isinstance(error, USER_ERROR_TYPES) and (raised_in(error, PACKAGE_ROOT) or named_file):
        return " ".join(str(error).split("\n")) or type(error).__name__
    return None
