"""Replay equals a brute-force fold of the produced events for random windows, with duplicates,
cancellations, late events and events the engine rejects."""

from __future__ import annotations

import random

import pytest

from producers.catalog_reader import fold_catalog
from replay.usage import ReplayTopicMissing, ReplayWindowError, replay_usage
from tests.integration.replay.conftest import DAY_MS, HOUR_MS, MINUTE_MS, brute_force_usage


def as_dict(result):
    return {(row.customer_id, row.meter_id, row.period_start_ms): (row.value, row.event_count) for row in result.rows}


def whole_span(history):
    """A window holding every produced event (late ones reach a day back)."""
    return history.first_arrival_ms - DAY_MS, (history.last_arrival_ms // MINUTE_MS + 60) * MINUTE_MS


def random_windows(history, count: int, seed: int):
    rng = random.Random(seed)
    low = history.first_arrival_ms - DAY_MS  # late events reach up to a day back
    high = history.last_arrival_ms + 5 * MINUTE_MS
    for _ in range(count):
        start = rng.randrange(low, high) // MINUTE_MS * MINUTE_MS
        length = rng.choice([MINUTE_MS, 17 * MINUTE_MS, 2 * HOUR_MS, DAY_MS, 3 * DAY_MS])
        yield start, start + length


def test_replay_of_random_windows_equals_the_brute_force_fold(history):
    windows = [whole_span(history), *random_windows(history, 6, seed=1)]
    for start_ms, end_ms in windows:
        expected = brute_force_usage(history, start_ms, end_ms, MINUTE_MS)
        result = replay_usage(history.settings, start_ms, end_ms)
        assert as_dict(result) == expected, (start_ms, end_ms)
    everything = replay_usage(history.settings, *windows[0])
    assert sum(count for _, count in as_dict(everything).values()) > 1000  # the test folds real usage
    assert everything.rejected.get("meter_event_customer_not_found", 0) > 0


def test_one_process_and_several_give_the_same_replay(history):
    window = whole_span(history)
    single = replay_usage(history.settings, *window, processes=1)
    several = replay_usage(history.settings, *window, processes=3)
    assert single.rows == several.rows and single.rows
    assert (single.records_read, single.meter_events, single.rejected) == (
        several.records_read, several.meter_events, several.rejected)


def test_grouping_by_hour_and_day_merges_the_minutes(history):
    start_ms = (history.first_arrival_ms - DAY_MS) // DAY_MS * DAY_MS
    end_ms = start_ms + 3 * DAY_MS
    for group_by, group_ms in (("hour", HOUR_MS), ("day", DAY_MS)):
        result = replay_usage(history.settings, start_ms, end_ms, group_by=group_by)
        assert as_dict(result) == brute_force_usage(history, start_ms, end_ms, group_ms)


def test_a_customer_filter_reads_only_that_customers_usage(history):
    customer = sorted(history.customers)[0]
    start_ms, end_ms = whole_span(history)
    result = replay_usage(history.settings, start_ms, end_ms, customer_ids=[customer], meter_ids=["mtr_tokens"])
    expected = {key: value for key, value in brute_force_usage(history, start_ms, end_ms, MINUTE_MS, {customer}).items()
                if key[1] == "mtr_tokens"}
    assert as_dict(result) == expected and expected


def test_a_window_that_is_not_whole_minutes_is_refused(history):
    with pytest.raises(ReplayWindowError):
        replay_usage(history.settings, history.first_arrival_ms + 1, history.last_arrival_ms)


def test_skipping_history_counts_every_customer_as_existing_and_is_otherwise_exact(history):
    start_ms, end_ms = whole_span(history)
    result = replay_usage(history.settings, start_ms, end_ms, with_history=False)
    known = {key: value for key, value in as_dict(result).items() if key[0] in history.customers}
    assert known == brute_force_usage(history, start_ms, end_ms, MINUTE_MS)
    assert any(key[0] == "cus_nobody" for key in as_dict(result))  # not created, yet counted without history


def test_replaying_topics_that_do_not_exist_says_so(history):
    nowhere = history.settings.model_copy(update={"topic_prefix": "no-such-prefix-for-replay"})
    with pytest.raises(ReplayTopicMissing):
        replay_usage(nowhere, *whole_span(history), catalog=fold_catalog([]))
