"""The progress line long-running commands show on stderr."""

from __future__ import annotations

import sys
import time


class ProgressLine:
    """One self-overwriting progress line on stderr, at most a few updates a second."""

    def __init__(self, label: str, stream=sys.stderr, interval_s: float = 0.25) -> None:
        self.label = label
        self.stream = stream
        self.interval_s = interval_s
        self.started_s = time.monotonic()
        self.last_s = 0.0
        self.shown = False

    def update(self, text: str, force: bool = False) -> None:
        now_s = time.monotonic()
        if not force and now_s - self.last_s < self.interval_s:
            return
        self.last_s = now_s
        self.stream.write(f"\r[{self.label}] {text}\033[K")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
