"""The `drawdown` command line: one entry point for every process and tool."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from drawdown.settings import get_settings

Command = Callable[[argparse.Namespace], int]

# Each package that adds commands has a `commands` module with `add_commands(subparsers)`
# (and, for long-running processes, ENGINE_PROCESSES for `make up`). Commands import their heavy
# modules (faust, fastapi) inside their run function so that `drawdown --help` stays fast.
COMMAND_MODULES = ("streams.commands", "projections.commands", "api.commands", "producers.commands", "replay.commands",
                   "benchmarks.commands")


def command_modules() -> list:
    modules = []
    for name in COMMAND_MODULES:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a missing dependency inside the module is a real error
                raise
    return modules


def cmd_up(args: argparse.Namespace) -> int:
    from deploy import local

    settings = get_settings()
    local.up(settings, with_engine=not args.services_only)
    print("\ndrawdown is up:")
    print("\n".join(local.status_lines(settings)))
    print(f"\nstate and logs: {settings.state_dir}   stop: make down   reset: make reset")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from deploy import local

    local.down(get_settings())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from deploy import local

    print("\n".join(local.status_lines(get_settings())))
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from projections.dead_letters import format_table, list_dead_letters
    from projections.projector import connect

    settings = get_settings()
    with connect(settings.effective_database_url, "public") as conn:
        rows, has_more = list_dead_letters(conn, reason_code=args.reason, limit=args.limit)
    print(format_table(rows, has_more))
    return 0


def cmd_supervise(args: argparse.Namespace) -> int:
    from deploy.supervisor import run_supervisor

    return run_supervisor(get_settings(), only=args.only)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drawdown", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start Kafka, PostgreSQL and the engine in the background (idempotent)")
    up.add_argument("--services-only", action="store_true", help="only Kafka and PostgreSQL")
    up.set_defaults(run=cmd_up)
    commands.add_parser("down", help="stop what `up` started").set_defaults(run=cmd_down)
    commands.add_parser("status", help="what runs, where it listens, where its log is").set_defaults(run=cmd_status)
    supervise = commands.add_parser("supervise", help="run the engine processes, restarting each that exits "
                                                      "(`up` starts it in the background)")
    supervise.add_argument("--only", action="append", default=[], metavar="NAME", help="only this process (repeatable)")
    supervise.set_defaults(run=cmd_supervise)
    dead = commands.add_parser("dead-letters", help="records the engine could not take, newest first (README)")
    dead.add_argument("--reason", metavar="CODE", help="only this reason code")
    dead.add_argument("--limit", type=int, default=20, metavar="N", help="at most N (default 20)")
    dead.set_defaults(run=cmd_dead_letters)
    for module in command_modules():
        module.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # errors that say what to do are shown without a traceback
        from pydantic import ValidationError

        from deploy.local import LocalStackError
        from streams.topics import KafkaAccessError

        if isinstance(exc, (LocalStackError, KafkaAccessError)):
            print(f"drawdown: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, ValidationError) and exc.title == "Settings":  # never the values: they may be secrets
            for error in exc.errors(include_input=False, include_url=False):
                where = ".".join(str(part) for part in error["loc"])
                print(f"drawdown: settings: {where + ': ' if where else ''}{error['msg']}", file=sys.stderr)
            return 2
        raise
