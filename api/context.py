"""What every request handler needs: settings, the projection's pool, the publisher, caches."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from api.errors import ApiError
from api.publisher import Position, Publisher, wait_until_projected
from drawdown.settings import Settings


class ProjectionLagging(ApiError):
    def __init__(self) -> None:
        super().__init__("The request was accepted but is not readable yet; retry the read in a moment.",
                         status=503, type="api_error", code="projection_lagging")


@dataclass
class ApiContext:
    settings: Settings
    pool: Any
    publisher: Publisher
    keys: Any
    _meters: dict[str, dict[str, Any]] = field(default_factory=dict)  # event_name -> meter row
    _meters_loaded_at: float = 0.0
    _meters_lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, positions: list[Position]) -> None:
        """Read-your-writes: block (bounded) until the projection has passed `positions`."""
        if not wait_until_projected(self.pool, positions, self.settings.read_your_writes_timeout_ms):
            raise ProjectionLagging()

    def meters_by_event_name(self, max_age_s: float = 1.0) -> dict[str, dict[str, Any]]:
        """Every meter by event name, cached for a second (meter events validate against it)."""
        if time.monotonic() - self._meters_loaded_at > max_age_s:
            with self._meters_lock:
                if time.monotonic() - self._meters_loaded_at > max_age_s:
                    with self.pool.connection() as conn:
                        rows = conn.execute("select * from meters").fetchall()
                    self._meters = {row["event_name"]: row for row in rows}
                    self._meters_loaded_at = time.monotonic()
        return self._meters
