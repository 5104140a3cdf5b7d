"""Fault: the PostgreSQL server is killed (immediate shutdown, as in a crash) and started again.

The API (in-process, real HTTP stack via TestClient) and the projector (a thread) run against a
server of this test's own. While it is away /healthz answers 503 and data requests a Stripe-style
503 api_error; once it is back, every request succeeds again within seconds and the projector,
which must not have exited, projects what comes after.
"""

from __future__ import annotations

import threading
import time

import psycopg

from fastapi.testclient import TestClient

from deploy import local

RECOVERY_DEADLINE_S = 30.0  # generous for a loaded machine; the point is "not for good"


def kill_postgres(settings) -> None:
    # The local server runs with synchronous_commit=off, where a crash may lose the last fraction
    # of a second of commits (the schema migrations here): flush them, that loss is not tested here.
    with psycopg.connect(settings.effective_database_url, autocommit=True) as conn:
        conn.execute("checkpoint")
    data = local.postgres_home(settings) / "data"
    result = local.run_as(local.postgres_os_user(settings),
                          [str(local.postgres_bin_dir() / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
    assert result.returncode == 0, result.stderr


def test_requests_succeed_again_soon_after_postgres_comes_back(own_postgres, settings):
    from api.app import create_app
    from api.auth import create_key
    from projections.migrate import migrate
    from projections.projector import Projector
    from streams.topics import ensure_topics

    url = local.start_postgres(own_postgres)
    engine = settings.model_copy(update={"database_url": url, "topic_prefix": settings.topic_prefix + "-pgrestart",
                                         "read_your_writes_timeout_ms": 15_000})
    ensure_topics(engine)
    migrate(url)
    key = create_key(url)
    stop = threading.Event()
    projector = threading.Thread(target=Projector(engine).run, args=(stop,), name="projector", daemon=True)
    projector.start()
    try:
        with TestClient(create_app(engine), headers={"Authorization": f"Bearer {key}"},
                        raise_server_exceptions=False) as client:
            assert client.get("/healthz").status_code == 200
            assert client.post("/v1/customers", data={"name": "Before"}).status_code == 200

            kill_postgres(own_postgres)

            health = client.get("/healthz")
            assert health.status_code == 503, health.text
            assert "database" in health.json()["reason"]
            listed = client.get("/v1/customers")
            assert listed.status_code == 503, listed.text
            assert listed.json()["error"]["type"] == "api_error"

            local.start_postgres(own_postgres)
            back_at = time.monotonic()
            while (health := client.get("/healthz")).status_code != 200:
                assert time.monotonic() - back_at < RECOVERY_DEADLINE_S, health.text
                time.sleep(0.2)
            print(f"/healthz 200 again {time.monotonic() - back_at:.1f} s after PostgreSQL was back")
            # No dead connection is handed out any more: every request succeeds from now on.
            for _ in range(20):
                listed = client.get("/v1/customers")
                assert listed.status_code == 200, listed.text
            assert projector.is_alive(), "the projector exited on the database outage"
            created = client.post("/v1/customers", data={"name": "After"})  # waits until projected
            assert created.status_code == 200, created.text
            names = {customer["name"] for customer in client.get("/v1/customers").json()["data"]}
            assert names == {"Before", "After"}
    finally:
        stop.set()
        projector.join(30)
