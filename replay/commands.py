"""`drawdown replay`: exact usage for any window, replayed from the meter-event log."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

from drawdown.progress import ProgressLine
from drawdown.settings import get_settings


def parse_instant_ms(text: str) -> int:
    """Epoch milliseconds, or ISO 8601 (a time without an offset is UTC; 'Z' is accepted)."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not epoch ms or ISO 8601: {text!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def scan_progress(line: ProgressLine):
    def report(done: int, total: int) -> None:
        elapsed_s = max(time.monotonic() - line.started_s, 1e-9)
        width = 30
        filled = width * done // total if total else width
        line.update(f"|{'#' * filled}{'.' * (width - filled)}| {done:,}/{total:,} records "
                    f"{100 * done / total if total else 100:.0f}%  {done / elapsed_s:,.0f}/s", force=done >= total)
    return report


def cmd_replay(args: argparse.Namespace) -> int:
    from replay.usage import ReplayTopicMissing, ReplayWindowError, replay_usage
    from replay.output import plot_usage, to_csv, to_json, to_table

    settings = get_settings()
    line = ProgressLine("replay")
    try:
        result = replay_usage(settings, args.start, args.end, customer_ids=args.customer or (),
                              meter_ids=args.meter or (), group_by=args.group_by,
                              progress=None if args.quiet else scan_progress(line),
                              with_history=not args.skip_history, processes=args.processes)
    except (ReplayWindowError, ReplayTopicMissing) as error:
        line.close()
        print(f"drawdown replay: {error}", file=sys.stderr)
        return 2
    line.close()
    output = {"table": lambda: to_table(result.rows), "csv": lambda: to_csv(result.rows).rstrip("\n"),
              "json": lambda: to_json(result)}[args.format]()
    print(output)
    if args.plot:
        print(f"plot: {plot_usage(result, args.plot)}", file=sys.stderr)
    rejected = sum(result.rejected.values())
    print(f"{result.records_read:,} records read, {result.meter_events:,} meter events, {rejected:,} rejected "
          f"as the engine would; {len(result.rows):,} rows in {result.seconds:.2f} s", file=sys.stderr)
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    replay = subparsers.add_parser(
        "replay", help="exact usage for any window, replayed from the meter-event log",
        description="Usage per customer, meter and minute/hour/day of the events whose event time is in "
                    "[START, END), computed from the raw log exactly as the engine does (late events, "
                    "duplicates and cancellations included).")
    replay.add_argument("--start", type=parse_instant_ms, required=True, help="window start: ISO 8601 or epoch ms")
    replay.add_argument("--end", type=parse_instant_ms, required=True, help="window end (exclusive)")
    replay.add_argument("--customer", action="append", help="only this customer (repeatable)")
    replay.add_argument("--meter", action="append", help="only this meter id (repeatable)")
    replay.add_argument("--group-by", choices=("minute", "hour", "day"), default="minute")
    replay.add_argument("--format", choices=("table", "csv", "json"), default="table")
    replay.add_argument("--plot", metavar="FILE.png", help="also draw usage over time per meter")
    replay.add_argument("--skip-history", action="store_true",
                        help="do not read the log from its start for which customers exist (faster on long logs; "
                             "every customer then counts as existing and on the wall clock)")
    replay.add_argument("--processes", type=int, default=None, metavar="N",
                        help="fold partitions in N processes (default: one per core, at most one per partition)")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    replay.set_defaults(run=cmd_replay)
