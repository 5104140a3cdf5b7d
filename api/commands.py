"""`drawdown api` (the HTTP API, started by `make up`) and `drawdown keys create|list|revoke`."""

from __future__ import annotations

import argparse
import urllib.request

from deploy.local import EngineProcess
from drawdown.settings import Settings, get_settings


def dev_key_path(settings: Settings):  # type: ignore[no-untyped-def]
    return settings.state_dir / "dev-api-key"


def _api_ready(settings: Settings) -> bool:
    try:
        with urllib.request.urlopen(f"http://{settings.api_host}:{settings.api_port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def dev_key_shown(settings: Settings) -> str:
    """The development key as terminals and logs show it: its prefix and the file that holds it."""
    from api.auth import key_prefix

    path = dev_key_path(settings)
    if not path.exists():
        return "development key not created yet"
    return f"development key {key_prefix(path.read_text().strip())}... (the whole key is in {path}, mode 0600)"


def _describe(settings: Settings) -> str:
    base = f"http://{settings.api_host}:{settings.api_port}"
    return (f"api: {base} (OpenAPI at /openapi.json); dashboard: {base}/dashboard (log in with an API key); "
            f"{dev_key_shown(settings)}")


ENGINE_PROCESSES = (EngineProcess(name="api", command=("api",), describe=_describe, ready=_api_ready),)


def run_api(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from api.app import create_app
    from api.auth import ensure_dev_key
    from projections.migrate import migrate
    from streams.topics import ensure_topics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    ensure_topics(settings)
    migrate(settings.effective_database_url)
    ensure_dev_key(settings.effective_database_url, dev_key_path(settings))
    print(dev_key_shown(settings), flush=True)
    # api_processes processes share the port: uvicorn's own workers (it binds once, passes the socket
    # to each, replaces one that dies or hangs). A worker that fails at start-up ends this process, and
    # the supervisor restarts it with its back-off. One process: served right here.
    uvicorn.run("api.commands:serving_app", factory=True, workers=settings.api_processes, host=settings.api_host,
                port=settings.api_port, log_level="warning", access_log=False)
    return 0


SWITCH_INTERVAL_S = 0.0005


def serving_app():  # type: ignore[no-untyped-def]
    """The app one API process serves (uvicorn calls this in each worker)."""
    import gc
    import multiprocessing
    import sys

    from api.app import create_app

    parent = multiprocessing.parent_process()
    if parent is not None:
        _end_with_parent(parent.pid)
    app = create_app(get_settings())
    # Long-lived objects (modules, the app) need no scanning: freeze them, and collect young objects
    # less often, so that garbage collection does not stall requests (it showed in p99 latency).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    # Handlers run in threads beside the event loop: hand the GIL over every 0.5 ms, not 5 ms, so
    # that a request's thread does not wait a whole interval behind another (it showed in p99).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return app


def _end_with_parent(parent_pid: int) -> None:
    """A worker is SIGKILLed when uvicorn's parent process dies without stopping it (SIGKILL, a
    crash): the API dies as a whole, as one process would. Otherwise it would keep the port and
    serve on, unsupervised, and the restarted API could not bind it. (A stop reaches every process:
    the supervisor signals the process group.) A worker whose parent died while it started (before
    it asked) ends here."""
    import ctypes
    import os
    import signal
    import sys

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def run_keys_create(args: argparse.Namespace) -> int:
    from api.auth import create_key
    from projections.migrate import migrate

    settings = get_settings()
    migrate(settings.effective_database_url)
    print(create_key(settings.effective_database_url, read_only=args.read_only))
    return 0


def _when(ms: int | None) -> str:
    import datetime

    if ms is None:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _key_line(row: dict) -> str:
    prefix = f"{row['prefix']}..." if row["prefix"] else "(unknown)"
    mode = "read-only" if row["read_only"] else "secret"
    return f"{row['id']:<14}{prefix:<17}{mode:<11}{_when(row['created_ms']):<22}{_when(row['revoked_ms'])}"


def run_keys_list(args: argparse.Namespace) -> int:
    from api.auth import list_keys
    from projections.migrate import migrate

    settings = get_settings()
    migrate(settings.effective_database_url)
    print(f"{'ID':<14}{'PREFIX':<17}{'MODE':<11}{'CREATED':<22}REVOKED")
    for row in list_keys(settings.effective_database_url):
        print(_key_line(row))
    return 0


def run_keys_revoke(args: argparse.Namespace) -> int:
    import sys

    from api.auth import KeyNotFound, revoke_key
    from projections.migrate import migrate

    settings = get_settings()
    migrate(settings.effective_database_url)
    try:
        row = revoke_key(settings.effective_database_url, args.key)
    except KeyNotFound as exc:
        print(f"drawdown: {exc}", file=sys.stderr)
        return 1
    print(f"revoked: {_key_line(row)}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser("api", help="serve the Stripe-compatible HTTP API").set_defaults(run=run_api)
    keys = subparsers.add_parser("keys", help="API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create an API key and print it (stored only as a sha256 hash)")
    create.add_argument("--read-only", action="store_true", help="a restricted key that can only GET")
    create.set_defaults(run=run_keys_create)
    actions.add_parser("list", help="every key: id, prefix, mode, created, revoked").set_defaults(run=run_keys_list)
    revoke = actions.add_parser("revoke", help="revoke a key: refused at once by running APIs")
    revoke.add_argument("key", help="its id or prefix as `keys list` shows them (or the key itself)")
    revoke.set_defaults(run=run_keys_revoke)
