"""An HTTP/1.1 load generator for the API benchmarks, in processes of its own.

The API shares this machine's two cores with it, so it must cost far less per request than the
server: keep-alive connections, one asyncio Protocol each (uvloop when installed), requests written
as prepared bytes, answers framed by Content-Length only. It runs in `processes` processes of its
own (never in the API's, never in the caller's event loop), each with its share of the connections.

- fixed rate (open loop): request i is due at start + i / rate; its latency runs from that due time,
  so a server that falls behind shows its queueing (no coordinated omission). A request waits for a
  free connection when all are busy, and that wait counts too.
- closed loop (`rate=None`): every connection sends its next request as soon as the last is
  answered: the most the server sustains at that concurrency.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from dataclasses import dataclass, field


PROCESS_START_S = 1.5  # time for the generator processes to start and connect before the first request


@dataclass
class LoadResult:
    requests: int
    errors: int  # answers other than 200, and connections lost
    elapsed_s: float
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.answer: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None]) if at >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buffer[:end + 4 + length]
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(0)

    async def send(self, request: bytes) -> int:
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)  # type: ignore[union-attr]
        return await self.answer


async def _run(host: str, port: int, request: bytes, started: float, seconds: float, warmup_s: float,
               connections: int, rate: float | None, offset_s: float) -> LoadResult:
    loop = asyncio.get_running_loop()
    idle: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(connections):
        _, protocol = await loop.create_connection(_Connection, host, port)
        idle.put_nowait(protocol)
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0}
    await asyncio.sleep(max(0.0, started - time.perf_counter()))  # every process starts together
    measure_from = started + warmup_s
    stop_at = measure_from + seconds

    async def one(due: float) -> None:
        connection = await idle.get()
        status = await connection.send(request)
        if status:
            idle.put_nowait(connection)
        else:  # lost: replace it
            _, replacement = await loop.create_connection(_Connection, host, port)
            idle.put_nowait(replacement)
        if due >= measure_from:
            counts["requests"] += 1
            counts["errors"] += status != 200
            latencies.append((time.perf_counter() - due) * 1000)

    if rate is None:
        async def closed_loop() -> None:
            while time.perf_counter() < stop_at:
                await one(time.perf_counter())

        await asyncio.gather(*(closed_loop() for _ in range(connections)))
    else:
        tasks = set()
        index = 0
        while True:
            due = started + offset_s + index / rate
            if due >= stop_at:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(one(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
        if tasks:
            await asyncio.gather(*tasks)
    elapsed = max(time.perf_counter(), stop_at) - measure_from
    while not idle.empty():
        idle.get_nowait().transport.close()  # type: ignore[union-attr]
    return LoadResult(counts["requests"], counts["errors"], elapsed, latencies)


def _process_main(arguments: tuple) -> LoadResult:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_run(*arguments))


def generate(host: str, port: int, path: str, key: str, *, seconds: float, rate: float | None = None,
             connections: int = 32, processes: int = 2, warmup_s: float = 1.0) -> LoadResult:
    """GET `path` for `seconds` (after `warmup_s` unmeasured), at `rate` requests/s in all (open loop)
    or as fast as answers come (rate None), from `processes` generator processes."""
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
               f"Connection: keep-alive\r\n\r\n").encode()
    per_process_rate = None if rate is None else rate / processes
    started = time.perf_counter() + PROCESS_START_S  # perf_counter is one clock for every process (Linux)
    jobs = [(host, port, request, started, seconds, warmup_s, max(1, connections // processes), per_process_rate,
             index / rate if rate else 0.0)  # interleaved: together they send evenly spaced requests
            for index in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_process_main, jobs)
    return LoadResult(sum(result.requests for result in results), sum(result.errors for result in results),
                      max(result.elapsed_s for result in results),
                      [latency for result in results for latency in result.latencies_ms])
