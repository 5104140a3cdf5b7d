"""Replay equals the engine: for random windows, the usage replay computes from the raw log is the
usage the stream worker (`python -m drawdown worker`) published as UsageBucketUpdated facts."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest

from billing.facts import UsageBucketUpdated
from drawdown.settings import Settings
from producers.catalog_reader import fold_catalog
from producers.producer import FactProducer
from replay.usage import replay_usage
from tests.integration.producers.kafka_reading import own_topics
from tests.integration.replay.conftest import DAY_MS, METERS, MINUTE_MS, History, produce_history
from tests.integration.streams.conftest import OutputReader, WorkerProcess

ENGINE_TIMEOUT_S = 180


@pytest.fixture(scope="module", params=[0, 4 * DAY_MS // 1000], ids=["bound-off", "bound-4-days"])
def engine_settings(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """This module's own topics (3 partitions), deleted afterwards; the receipt bound off, or 4
    days: the history's arrivals (received_at) run from 5 days ago, appended now, so its first day
    is dead-lettered by the worker and skipped by the replay, the rest folded (cancels and
    duplicates of refused events among them)."""
    yield from own_topics(settings.model_copy(update={"receipt_bound_seconds": request.param}), "e")


@pytest.fixture(scope="module")
def engine_history(engine_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    """The meters first, then a worker, then the history (so no event races the catalog)."""
    with FactProducer(engine_settings, catalog=fold_catalog(METERS.values())) as producer:
        for meter in METERS.values():
            producer.send(meter)
    worker = WorkerProcess(engine_settings, "replay-worker", tmp_path_factory.mktemp("replay-worker")).start()
    try:
        worker.wait_ready()
        yield produce_history(engine_settings, seed=77, events=1500)
    finally:
        worker.stop()


def engine_buckets(reader: OutputReader) -> dict[tuple[str, str, int], tuple]:
    """The latest UsageBucketUpdated of each (customer, meter, minute): the engine's usage."""
    latest: dict[tuple[str, str, int], tuple] = {}
    for fact in reader.facts:
        if isinstance(fact, UsageBucketUpdated):
            latest[(fact.customer_id, fact.meter_id, fact.bucket_start_ms)] = (fact.value, fact.event_count)
    return latest


def replayed(settings: Settings, start_ms: int, end_ms: int) -> dict[tuple[str, str, int], tuple]:
    result = replay_usage(settings, start_ms, end_ms)
    return {(r.customer_id, r.meter_id, r.period_start_ms): (r.value, r.event_count) for r in result.rows}


def test_replay_equals_the_engines_usage_buckets_for_random_windows(engine_settings, engine_history):
    start_ms = engine_history.first_arrival_ms - DAY_MS
    end_ms = (engine_history.last_arrival_ms // MINUTE_MS + 60) * MINUTE_MS
    everything = replayed(engine_settings, start_ms, end_ms)
    assert len(everything) > 300
    refused = replay_usage(engine_settings, start_ms, end_ms).rejected.get("received_at_out_of_bound", 0)
    assert refused > 300 if engine_settings.receipt_bound_seconds else refused == 0  # (about a third)
    reader = OutputReader(engine_settings)
    try:
        deadline_s = time.monotonic() + ENGINE_TIMEOUT_S
        while engine_buckets(reader) != everything and time.monotonic() < deadline_s:
            reader.poll(1.0)
        engine = engine_buckets(reader)
    finally:
        reader.close()
    missing = {k: v for k, v in everything.items() if engine.get(k) != v}
    assert engine == everything, f"{len(missing)} buckets differ, e.g. {list(missing.items())[:5]}"
    rng = random.Random(3)
    for _ in range(5):
        window_start_ms = rng.randrange(start_ms, end_ms) // MINUTE_MS * MINUTE_MS
        window_end_ms = window_start_ms + rng.choice([MINUTE_MS, 45 * MINUTE_MS, DAY_MS])
        engine_window = {k: v for k, v in engine.items() if window_start_ms <= k[2] < window_end_ms}
        assert replayed(engine_settings, window_start_ms, window_end_ms) == engine_window
