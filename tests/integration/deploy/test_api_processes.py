"""The real `drawdown api` with DRAWDOWN_API_PROCESSES=2: two processes serve the port; one that is
SIGKILLed is replaced, and when the API's own process dies its workers go too and free the port
(else the supervisor's restart could not bind it while orphans served on, unsupervised)."""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

from deploy import local
from drawdown.settings import PROJECT_ROOT
from tests.e2e.conftest import free_port


def workers_of(pid: int) -> set[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(child) for child in children
            if b"multiprocessing.spawn" in Path(f"/proc/{child}/cmdline").read_bytes()
            and b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()}


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def wait_for(condition, what: str, log: Path, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}:\n{local.tail(log)}"
        time.sleep(0.2)


def test_two_api_processes_serve_are_replaced_and_end_with_their_parent(settings, tmp_path):
    engine = settings.model_copy(update={"state_dir": tmp_path / "state", "api_port": free_port()})
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=engine.effective_kafka_bootstrap_servers,
               DATABASE_URL=engine.effective_database_url, DRAWDOWN_TOPIC_PREFIX=engine.topic_prefix,
               DRAWDOWN_STATE_DIR=str(engine.state_dir), DRAWDOWN_API_PORT=str(engine.api_port),
               DRAWDOWN_API_PROCESSES="2", PYTHONPATH=str(PROJECT_ROOT), PYTHONUNBUFFERED="1")
    api = local.start_process(engine, "api", [sys.executable, "-m", "drawdown", "api"], env=env)
    log = local.log_file(engine, "api")
    try:
        wait_for(lambda: healthy(engine.api_port) and len(workers_of(api.pid)) == 2, "the API did not start", log)
        first = workers_of(api.pid)
        killed = min(first)
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: len(workers_of(api.pid) - first) == 1 and len(workers_of(api.pid)) == 2,
                 "the killed API process was not replaced", log)
        assert killed not in workers_of(api.pid)
        wait_for(lambda: healthy(engine.api_port), "the API did not answer after the replacement", log)

        workers = workers_of(api.pid)
        api.kill()  # the parent, alone, by SIGKILL (no chance to stop its workers itself)
        api.wait()
        wait_for(lambda: not any(local.pid_alive(worker) for worker in workers),
                 "API workers outlived their parent", log, timeout_s=30)
        # the port closes with the last of them (a socket may outlive its process's exit by a moment)
        wait_for(lambda: not local.port_open(engine.api_port), "the API port still answers after its processes ended",
                 log, timeout_s=15)
    finally:
        local.stop_pid(api.pid, "api")
