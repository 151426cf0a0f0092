#!/usr/bin/env python
"""Benchmarks: `python tools/benchmark.py SUBCOMMAND --help` lists each one's options.

Sub-commands live in perception/benchmark/; every result is printed as a table and can be written as JSON.
"""
import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception.benchmark import SUBCOMMANDS  # noqa: E402
from perception.utils.cli import DEBUG_FLAG, run_tool, tool_parser  # noqa: E402


def _main(argv=None) -> int:
    parser = tool_parser(__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module_name)
        sp.add_argument(DEBUG_FLAG, action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        importlib.import_module(module_name).add_arguments(sp)
    args = parser.parse_args(argv)
    importlib.import_module(args._module).run(args)
    return 0


def main(argv=None) -> int:
    """Run a benchmark; a bad option or input ends with one ``error:`` line and exit code 2."""
    return run_tool(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
