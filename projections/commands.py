"""`drawdown projector` (the long-running projector), `drawdown webhooks` (the webhook dispatcher),
`drawdown projections rebuild` and `drawdown projections purge` (retention, now)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from deploy.local import EngineProcess
from drawdown.settings import Settings, get_settings


def _projector_ready(settings: Settings) -> bool:
    ready_file = settings.state_dir / "projector.ready"
    return ready_file.exists()


ENGINE_PROCESSES = (
    EngineProcess(
        name="projector",
        command=("projector",),
        describe=lambda settings: "projector: Kafka facts -> PostgreSQL (offsets stored with the rows)",
        ready=_projector_ready,
    ),
    EngineProcess(
        name="webhooks",
        command=("webhooks",),
        describe=lambda settings: "webhooks: events -> signed POSTs to /v1/webhook_endpoints (retried up to "
                                  f"{settings.webhook_retry_window_seconds / 86400:g} days)",
        ready=lambda settings: (settings.state_dir / "webhooks.ready").exists(),
    ),
)


def run_projector(args: argparse.Namespace) -> int:
    from streams.topics import ensure_topics
    from projections.migrate import migrate
    from projections.projector import Projector, tune_gc

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    ensure_topics(settings)
    migrate(settings.effective_database_url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ready_file = settings.state_dir / "projector.ready"
    ready_file.parent.mkdir(parents=True, exist_ok=True)
    ready_file.touch()
    tune_gc()
    # One projector per host and state folder: a restart of it is the same static group member.
    import hashlib
    import socket

    instance_id = f"projector-{socket.gethostname()}-{hashlib.sha256(str(settings.state_dir.resolve()).encode()).hexdigest()[:8]}"
    try:
        Projector(settings, instance_id=instance_id).run(stop)
    finally:
        ready_file.unlink(missing_ok=True)
    return 0


def run_webhooks(args: argparse.Namespace) -> int:
    from projections.migrate import migrate
    from projections.webhooks import Dispatcher

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    migrate(settings.effective_database_url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ready_file = settings.state_dir / "webhooks.ready"
    ready_file.parent.mkdir(parents=True, exist_ok=True)
    ready_file.touch()
    logging.getLogger("drawdown.webhooks").info("dispatching webhooks")
    try:
        Dispatcher(settings).run(stop)
    finally:
        ready_file.unlink(missing_ok=True)
    return 0


def run_purge(args: argparse.Namespace) -> int:
    import time

    from projections.migrate import migrate
    from projections.projector import connect
    from projections.retention import purge

    settings = get_settings()
    migrate(settings.effective_database_url, args.schema)
    with connect(settings.effective_database_url, args.schema, autocommit=True) as conn:
        deleted = purge(conn, int(time.time() * 1000), settings.dead_letter_retention_days,
                        settings.usage_bucket_retention_days)
    print("deleted: " + ", ".join(f"{count} {table}" for table, count in deleted.items()))
    return 0


def run_rebuild(args: argparse.Namespace) -> int:
    from streams.topics import ensure_topics
    from projections.projector import rebuild, tune_gc

    settings = get_settings()
    ensure_topics(settings)
    tune_gc()
    applied = rebuild(settings, schema=args.schema)
    print(f"rebuilt schema {args.schema}: {applied} facts applied")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser("projector", help="project the topics into PostgreSQL (runs until stopped)").set_defaults(
        run=run_projector)
    subparsers.add_parser("webhooks", help="deliver events to the webhook endpoints (runs until stopped)").set_defaults(
        run=run_webhooks)
    projections = subparsers.add_parser("projections", help="projection maintenance")
    actions = projections.add_subparsers(dest="action", required=True)
    rebuild = actions.add_parser("rebuild", help="empty the projection tables and replay every topic into them "
                                                 "(stop the projector first)")
    rebuild.add_argument("--schema", default="public", help="PostgreSQL schema to rebuild (default: public)")
    rebuild.set_defaults(run=run_rebuild)
    purge = actions.add_parser("purge", help="delete what is past its retention now (idempotency keys after 24 h, "
                                             "events and webhook deliveries after 30 days, dead letters after "
                                             "DRAWDOWN_DEAD_LETTER_RETENTION_DAYS); the webhook dispatcher does it hourly")
    purge.add_argument("--schema", default="public", help="PostgreSQL schema (default: public)")
    purge.set_defaults(run=run_purge)
