"""Waiting for a process the tests started (worker, API) to serve, failing with its log's tail."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path


def wait_until_serving(process: subprocess.Popen, url: str, log_path: Path, timeout_s: float,
                       what: str, poll_s: float = 0.2) -> None:
    """Return once `url` answers 200; fail at once if `process` exits, or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, f"{what} exited:\n{log_path.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{what} not ready after {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}"
        time.sleep(poll_s)
