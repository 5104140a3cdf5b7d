"""A token bucket per API key (Settings.rate_limit_per_second, rate_limit_burst).

Each key's bucket holds up to `burst` tokens and refills at `rate` tokens a second; a request takes
one token or is refused with how long until the next one. Only authenticated keys get a bucket, so
the table grows with the number of keys, not with what callers send.

In memory, per API process: with N processes (Settings.api_processes) each holds 1/N of the rate
and burst (`share`), so that the setting stays the limit of a key across the API. The kernel spreads
connections over the processes evenly, so a client on several connections gets the whole rate; one
on a single keep-alive connection talks to one process and gets 1/N of it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBuckets:
    def __init__(self, rate_per_second: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_second
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    @classmethod
    def share(cls, rate_per_second: float, burst: int, processes: int) -> TokenBuckets:
        """One process's buckets when `processes` processes share a key's rate and burst."""
        return cls(rate_per_second / processes, max(1, burst // processes))

    def take(self, key: str) -> float:
        """Take one token from `key`'s bucket: 0.0 if there was one, else the seconds until there is."""
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


    def wait(self, key: str) -> float:
        """Seconds until `key`'s bucket has a token (0.0: it has one now); takes none."""
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)


def retry_after_header_seconds(wait_s: float) -> int:
    """Retry-After takes whole seconds: round up, at least 1."""
    return max(1, math.ceil(wait_s))
