"""What every command-line tool shares: its parser, and one-line errors with exit code 2 instead of tracebacks.

    def _main(argv=None) -> int:
        args = tool_parser(__doc__).parse_args(argv)
        ...

    def main(argv=None) -> int:
        return run_tool(_main, argv)

A *user error* (bad input: a missing or malformed file, a config key or value, a checkpoint that is not ours or
does not fit, an unreadable sample, an unknown backbone) ends the tool with ``error: <message>`` on one line of
stderr and exit code 2. ``--debug`` (or ``PERCEPTION_DEBUG=1``) prints the traceback as well. Anything else is a
bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from typing import Callable, Sequence

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DEBUG_FLAG = "--debug"
DEBUG_ENV = "PERCEPTION_DEBUG"

# timm's own words for a model name or pretrained tag it does not know (raised as RuntimeError).
_TIMM_UNKNOWN = re.compile(r"^(Unknown model|Invalid pretrained tag) \(")
# How torch re-raises an exception of a DataLoader worker: the type is kept, the message becomes the traceback.
_WORKER_WRAPPED = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\s*\nOriginal Traceback", re.S)


def tool_parser(doc: str | None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` showing the tool's docstring as is, with ``--debug``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help=f"on an error, print the traceback too (or set {DEBUG_ENV}=1)")
    return parser


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """``--debug`` among the arguments (``sys.argv`` by default), or ``PERCEPTION_DEBUG`` set to a true value."""
    args = sys.argv[1:] if argv is None else argv
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return DEBUG_FLAG in args or env not in ("", "0", "false", "no", "off")


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types that mean bad input rather than a bug.

    ``ValueError`` covers the toolkit's ``ConfigError``, ``DataError``, ``SourceError`` and ``ImageReadError`` and
    the plain ``ValueError`` every constructor raises for a bad option; ``OSError`` covers missing files and
    folders that cannot be written; ``CheckpointError`` a file that is not a readable checkpoint of the toolkit.
    """
    from perception.utils.checkpoint import CheckpointError

    return ValueError, OSError, CheckpointError


def unwrap_worker_message(err: BaseException) -> str:
    """The original message of an exception that torch re-raised from a DataLoader worker (else ``str(err)``).

    torch keeps the exception's type but replaces its message by "Caught X in DataLoader worker process N" and
    the worker's traceback; the original message is the text after the traceback's last ``module.Type: ``.
    """
    text = str(err)
    if not _WORKER_WRAPPED.match(text):
        return text
    cls = type(err)
    names = {cls.__qualname__, f"{cls.__module__}.{cls.__qualname__}"}
    lines = text.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        head, sep, rest = lines[i].partition(": ")
        if sep and head in names:
            return "\n".join([rest, *lines[i + 1:]]).strip()
    return lines[-1].strip()


def user_error_message(err: BaseException) -> str | None:
    """The one-line message of a user error, or ``None`` when ``err`` is not one (a bug: keep the traceback)."""
    if isinstance(err, RuntimeError) and _TIMM_UNKNOWN.match(str(err)):
        return f"model.backbone.name: {err} (timm.list_models() lists the names this timm version knows)"
    if not isinstance(err, user_error_types()):
        return None
    message = unwrap_worker_message(err)
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        message = f"{err.filename}: {err.strerror}"  # rather than "[Errno 2] No such file or directory: 'x'"
    # One line: the first line says what and where; later lines (a YAML parser's context) are joined.
    return " ".join(line.strip() for line in message.splitlines() if line.strip()) or type(err).__name__


def run_tool(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a tool's ``main(argv)`` and turn a user error into ``error: <message>`` on stderr and exit code 2.

    Args:
        main: the tool; returns its exit code (``None`` means 0).
        argv: its arguments (default ``sys.argv[1:]``).

    Returns:
        the exit code: main's, 2 after a user error, 130 after Ctrl-C.
    """
    debug = debug_requested(argv)
    try:
        code = main(argv)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - sorted into user errors and bugs just below
        message = user_error_message(err)
        if message is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    return 0 if code is None else int(code)
