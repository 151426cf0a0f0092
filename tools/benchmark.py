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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(sp)
    args = parser.parse_args(argv)
    importlib.import_module(args._module).run(args)


if __name__ == "__main__":
    main()
