"""`drawdown worker` and `drawdown ticker`, and the engine processes `make up` starts."""

from __future__ import annotations

import argparse
import urllib.request

from deploy.local import EngineProcess
from drawdown.settings import Settings, get_settings


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.worker import run_worker

    return run_worker(get_settings(), loglevel=args.loglevel)


def cmd_ticker(args: argparse.Namespace) -> int:
    from streams.ticker import run_ticker

    return run_ticker(get_settings())


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    worker = subparsers.add_parser("worker", help="run a stream worker (Faust): usage, balances, invoices")
    worker.add_argument("--loglevel", default="warning")
    worker.set_defaults(run=cmd_worker)
    subparsers.add_parser("ticker", help="write TimeTicked to every partition every tick interval").set_defaults(
        run=cmd_ticker)


def worker_ready(settings: Settings) -> bool:
    """The worker's web port answers our ready page."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.worker_web_port}/drawdown/ready/", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


ENGINE_PROCESSES = (
    EngineProcess(name="worker", command=("worker",),
                  describe=lambda s: f"stream worker, http://127.0.0.1:{s.worker_web_port}/drawdown/ready/",
                  ready=worker_ready),
    EngineProcess(name="ticker", command=("ticker",),
                  describe=lambda s: f"ticker, every {s.tick_interval_ms} ms"),
)
