"""`drawdown bench`: the same as `make bench`."""

from __future__ import annotations

import argparse


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.harness import run_from_arguments

    return run_from_arguments(args)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    from benchmarks.harness import add_arguments

    bench = subparsers.add_parser("bench", help="run the benchmarks (ceilings measured in the same run); "
                                                "table on stdout, JSON in .bench/")
    add_arguments(bench)
    bench.set_defaults(run=cmd_bench)
