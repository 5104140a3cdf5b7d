"""The supervisor of the engine processes: a process that dies comes back, after a growing delay;
one that keeps dying shows as crash-looping in `make status` and in the API's /healthz."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

from fastapi.testclient import TestClient

from deploy import local
from deploy.supervisor import Program, Supervisor, crash_loops, read_status
from drawdown.settings import Settings

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
FAILS_AT_ONCE = [sys.executable, "-c", "raise SystemExit(1)"]


@contextmanager
def supervising(settings: Settings, programs: list[Program], first_delay_s: float = 0.1) -> Iterator[Supervisor]:
    supervisor = Supervisor(settings, programs, first_delay_s=first_delay_s)
    stop = threading.Event()
    thread = threading.Thread(target=supervisor.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield supervisor
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def eventually(check: Callable[[], object], what: str, timeout_s: float = 30.0) -> object:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return result


def supervised(settings: Settings, name: str) -> dict | None:
    # read_status answers for a live supervisor pid: here the supervisor is this test process.
    status = read_status(settings)
    return status["processes"].get(name) if status else None


def test_a_killed_process_comes_back_and_status_says_it_was_restarted(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    with supervising(settings, [Program("worker", SLEEPER)]):
        first = eventually(lambda: local.read_pid(local.pid_file(settings, "worker")), "worker not started")
        eventually(lambda: supervised(settings, "worker"), "no status written")
        os.kill(first, signal.SIGKILL)

        second = eventually(lambda: (pid := local.read_pid(local.pid_file(settings, "worker"))) not in (None, first)
                            and local.pid_alive(pid) and pid, "worker did not come back")
        entry = eventually(lambda: (e := supervised(settings, "worker")) and e["pid"] == second and e, "status stale")
        assert entry["restarts"] == 1
        assert entry["last_exit"] == "killed by SIGKILL"
        assert crash_loops(settings) == []
        status = "\n".join(local.status_lines(settings))
        assert f"up (pid {second}), restarted 1x, last killed by SIGKILL" in status
    assert not local.pid_alive(second), "stopping the supervisor stops what it runs"
    assert read_status(settings) is None


def test_a_process_that_exits_at_once_is_retried_ever_later_and_shows_as_crash_looping(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    programs = [Program("worker", FAILS_AT_ONCE), Program("ticker", SLEEPER)]
    with supervising(settings, programs, first_delay_s=0.5) as supervisor:
        eventually(lambda: crash_loops(settings), "no crash loop reported")

        [reason] = crash_loops(settings)
        assert re.fullmatch(rf"worker crash-looping: \d+ restarts in \d+ s, last exit 1, "
                            rf"see log {re.escape(str(local.log_file(settings, 'worker')))}", reason), reason
        status = "\n".join(local.status_lines(settings))
        assert "  worker     crash-looping: " in status
        assert "  ticker     up (pid " in status  # the others keep running
        # Restarted after 0.5 s, then 1 s, then 2 s: each exit in a row doubles the delay.
        first, second, third = supervisor.children[0].quick_exits[:3]
        assert second - first >= 0.5
        assert third - second >= 1.0

        health = TestClient(healthz_app(settings)).get("/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy"
        assert health.json()["reason"].startswith("worker crash-looping: ")
    assert TestClient(healthz_app(settings)).get("/healthz").status_code == 200  # no supervisor, no verdict


def healthz_app(settings: Settings):  # type: ignore[no-untyped-def]
    """The API app with a database that answers: only the supervisor's status can make it unhealthy."""
    from api.app import create_app

    class Connection:
        def execute(self, statement: str) -> None:
            pass

    @contextmanager
    def connection(timeout: float | None = None) -> Iterator[Connection]:
        yield Connection()

    return create_app(settings, context=SimpleNamespace(settings=settings, pool=SimpleNamespace(connection=connection)))
