"""`drawdown produce`: the load generator."""

from __future__ import annotations

import argparse
import sys

from drawdown.progress import ProgressLine
from drawdown.settings import get_settings


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
