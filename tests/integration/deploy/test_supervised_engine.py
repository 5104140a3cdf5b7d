"""The real `drawdown supervise` (what `make up` starts) with a real stream worker: SIGKILLed, the
worker comes back and is ready again, and `drawdown status` says it was restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from deploy import local
from drawdown.settings import PROJECT_ROOT
from streams.commands import worker_ready
from tests.e2e.conftest import free_port


def test_a_sigkilled_worker_comes_back_under_the_supervisor(settings, tmp_path):
    from streams.topics import ensure_topics

    ensure_topics(settings)
    engine = settings.model_copy(update={"state_dir": tmp_path / "state", "worker_web_port": free_port(),
                                         "worker_data_dir": tmp_path / "worker"})
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=engine.effective_kafka_bootstrap_servers,
               DATABASE_URL=engine.effective_database_url, DRAWDOWN_TOPIC_PREFIX=engine.topic_prefix,
               DRAWDOWN_STATE_DIR=str(engine.state_dir), DRAWDOWN_WORKER_WEB_PORT=str(engine.worker_web_port),
               DRAWDOWN_WORKER_DATA_DIR=str(engine.worker_data_dir), PYTHONPATH=str(PROJECT_ROOT),
               PYTHONUNBUFFERED="1")
    supervisor = local.start_process(engine, "supervisor", [sys.executable, "-m", "drawdown", "supervise",
                                                             "--only", "worker"], env=env)

    def wait_ready(what: str) -> int:
        deadline = time.monotonic() + 120
        while not worker_ready(engine):
            assert supervisor.poll() is None, local.tail(local.log_file(engine, "supervisor"))
            assert time.monotonic() < deadline, f"{what}:\n{local.tail(local.log_file(engine, 'worker'))}"
            time.sleep(0.3)
        return local.read_pid(local.pid_file(engine, "worker"))

    try:
        first = wait_ready("the worker did not start")
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while local.read_pid(local.pid_file(engine, "worker")) in (first, None):
            assert time.monotonic() < deadline, local.tail(local.log_file(engine, "supervisor"))
            time.sleep(0.1)
        second = wait_ready("the worker did not come back")
        assert second != first and local.pid_alive(second)
        status = subprocess.run([sys.executable, "-m", "drawdown", "status"], env=env, capture_output=True,
                                text=True, cwd=PROJECT_ROOT).stdout
        assert f"worker     up (pid {second}), restarted 1x, last killed by SIGKILL" in status, status
    finally:
        local.stop_pid(supervisor.pid, "supervisor", 60)
    assert not local.pid_alive(second), "stopping the supervisor stops the worker"
