"""`drawdown produce` (the load generator) and `drawdown replay` (exact usage for any window)."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

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


class ProgressLine:
    """One self-overwriting progress line on stderr, at most a few updates a second."""

    def __init__(self, label: str, stream=sys.stderr, interval_s: float = 0.25) -> None:
        self.label = label
        self.stream = stream
        self.interval_s = interval_s
        self.started_s = time.monotonic()
        self.last_s = 0.0
        self.shown = False

    def update(self, text: str, force: bool = False) -> None:
        now_s = time.monotonic()
        if not force and now_s - self.last_s < self.interval_s:
            return
        self.last_s = now_s
        self.stream.write(f"\r[{self.label}] {text}\033[K")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def scan_progress(line: ProgressLine):
    def report(done: int, total: int) -> None:
        elapsed_s = max(time.monotonic() - line.started_s, 1e-9)
        width = 30
        filled = width * done // total if total else width
        line.update(f"|{'#' * filled}{'.' * (width - filled)}| {done:,}/{total:,} records "
                    f"{100 * done / total if total else 100:.0f}%  {done / elapsed_s:,.0f}/s", force=done >= total)
    return report


def cmd_replay(args: argparse.Namespace) -> int:
    from producers.replay import ReplayTopicMissing, ReplayWindowError, replay_usage
    from producers.replay_output import plot_usage, to_csv, to_json, to_table

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


def cmd_produce(args: argparse.Namespace) -> int:
    from producers.loadgen import LoadPlan, generate

    if args.count is None and args.duration is None:
        args.duration = 10.0
    try:
        plan = LoadPlan(customers=args.customers, meters=args.meters, rate_per_s=args.rate,
                        duration_s=args.duration, count=args.count, seed=args.seed,
                        duplicate_share=args.duplicates, late_share=args.late, max_lateness_s=args.max_lateness,
                        define_catalog=not args.no_setup)
    except ValueError as error:
        print(f"drawdown produce: {error}", file=sys.stderr)
        return 2
    line = ProgressLine("produce")

    def progress(events: int, seconds: float) -> None:
        if args.quiet:
            return
        goal = f"/{plan.count:,}" if plan.count else ""
        line.update(f"{events:,}{goal} events  {seconds:.1f} s  {events / max(seconds, 1e-9):,.0f} events/s")

    summary = generate(get_settings(), plan, progress)
    line.close()
    print(f"events: {summary.events:,}  events/s: {summary.events_per_s:,.0f}  failures: {summary.failures:,}  "
          f"(duplicates {summary.duplicates:,}, late {summary.late:,}, {summary.seconds:.1f} s)")
    return 0 if summary.failures == 0 else 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    produce = subparsers.add_parser(
        "produce", help="load generator: meter events through the producer SDK",
        description="Send meter events through the producer SDK: customers and meters named from the seed "
                    "(defined first unless --no-setup), identifiers from the seed too, so the same seed sends "
                    "the same events (and the engine counts a repeated run once).")
    produce.add_argument("--customers", type=int, default=100, help="how many customers (default 100)")
    produce.add_argument("--meters", type=int, default=2, help="how many sum meters (default 2)")
    produce.add_argument("--rate", type=float, default=0.0, help="events per second; 0 = as fast as possible")
    produce.add_argument("--duration", type=float, help="seconds to run (default 10 when no --count)")
    produce.add_argument("--count", type=int, help="events to send")
    produce.add_argument("--seed", type=int, default=1, help="seed for repeatable runs (default 1)")
    produce.add_argument("--duplicates", type=float, default=0.0, help="share of duplicates, 0..1")
    produce.add_argument("--late", type=float, default=0.0, help="share of late events, 0..1")
    produce.add_argument("--max-lateness", type=int, default=3_600, help="seconds a late event lags at most")
    produce.add_argument("--no-setup", action="store_true", help="do not (re)define the meters and customers")
    produce.add_argument("--quiet", action="store_true", help="no progress line")
    produce.set_defaults(run=cmd_produce)

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
