"""`drawdown api` (the HTTP API, started by `make up`) and `drawdown keys create`."""

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


def _describe(settings: Settings) -> str:
    path = dev_key_path(settings)
    key = path.read_text().strip() if path.exists() else "(not created yet)"
    return (f"api: http://{settings.api_host}:{settings.api_port} (OpenAPI at /openapi.json); "
            f"development key {key} (kept in {path})")


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
    key = ensure_dev_key(settings.effective_database_url, dev_key_path(settings))
    print(f"development API key: {key} (in {dev_key_path(settings)})", flush=True)
    app = create_app(settings)
    # Long-lived objects (modules, the app) need no scanning: freeze them, and collect young objects
    # less often, so that garbage collection does not stall requests (it showed in p99 latency).
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="warning", access_log=False)
    return 0


def run_keys_create(args: argparse.Namespace) -> int:
    from api.auth import create_key
    from projections.migrate import migrate

    settings = get_settings()
    migrate(settings.effective_database_url)
    print(create_key(settings.effective_database_url, read_only=args.read_only))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser("api", help="serve the Stripe-compatible HTTP API").set_defaults(run=run_api)
    keys = subparsers.add_parser("keys", help="API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create an API key and print it (stored only as a sha256 hash)")
    create.add_argument("--read-only", action="store_true", help="a restricted key that can only GET")
    create.set_defaults(run=run_keys_create)
