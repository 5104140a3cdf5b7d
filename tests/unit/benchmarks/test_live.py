"""The live benchmark's pure rules, hand-worked: the rate search, lost probes as misses, the
percentile, bounded lag, and when a step passes."""

from __future__ import annotations

import math

import pytest

from benchmarks.live_bench import ProbeBook, RateSearch, StepResult, lag_bounded, percentile


def _run(search: RateSearch, outcomes: dict[int, bool]) -> list[int]:
    tried = []
    while (rate := search.next_rate()) is not None:
        tried.append(rate)
        search.record(rate, outcomes[rate])
    return tried


def test_search_grows_while_steps_pass_then_bisects_to_precision():
    # 8000 x 1.6 = 12800 -> 13000 (rounded to 500); 13000 x 1.6 = 20800 -> 21000 fails;
    # sqrt(13000 x 21000) = 16523 -> 16500 passes; sqrt(16500 x 21000) = 18614 -> 18500 fails;
    # sqrt(16500 x 18500) = 17471 -> 17500 passes; 18500 / 17500 = 1.057 is within 10%: done.
    search = RateSearch(8000, growth=1.6, precision=0.1, max_steps=10)
    outcomes = {8000: True, 13000: True, 21000: False, 16500: True, 18500: False, 17500: True}
    assert _run(search, outcomes) == [8000, 13000, 21000, 16500, 18500, 17500]
    assert search.best == 17500


def test_search_goes_down_when_the_first_step_fails():
    # 8000 fails -> 8000 / 1.6 = 5000 fails -> 3125 -> 3000 passes -> sqrt(3000 x 5000) = 3873 -> 4000.
    search = RateSearch(8000, growth=1.6, precision=0.1, max_steps=4)
    assert _run(search, {8000: False, 5000: False, 3000: True, 4000: True}) == [8000, 5000, 3000, 4000]
    assert search.best == 4000


def test_search_stops_after_max_steps_and_reports_no_rate_when_nothing_passed():
    search = RateSearch(8000, max_steps=2)
    assert _run(search, {8000: True, 13000: True}) == [8000, 13000]
    assert search.best == 13000
    nothing = RateSearch(500, granularity=500, max_steps=10)
    assert _run(nothing, {500: False}) == [500]  # nothing below the granularity to try
    assert nothing.best == 0


def test_search_stops_when_rounding_gives_a_rate_already_tried():
    search = RateSearch(1000, growth=1.5, precision=0.1, granularity=500, max_steps=10)
    # 1000 passes, 1500 fails; sqrt(1000 x 1500) = 1225 rounds to 1000, already passed: done.
    assert _run(search, {1000: True, 1500: False}) == [1000, 1500]


def test_a_probe_is_reflected_by_any_balance_at_or_above_its_total_and_a_lost_one_is_infinite():
    book = ProbeBook()
    book.sent_probe("cus_a", 3, 0.0)
    book.sent_probe("cus_b", 3, 0.05)
    book.sent_probe("cus_a", 6, 0.1)
    book.observed("cus_a", 0, 0.2)  # an older balance: reflects nothing
    book.observed("cus_a", 6, 0.5)  # reflects both of cus_a's probes
    book.observed("cus_c", 99, 0.6)  # no probe of that customer
    latencies = book.latencies_s()
    assert latencies[0] == pytest.approx(0.5)
    assert latencies[1] == math.inf  # cus_b's probe never seen: lost
    assert latencies[2] == pytest.approx(0.4)
    assert book.lost() == 1


def test_a_probe_already_seen_keeps_its_first_time():
    book = ProbeBook()
    book.sent_probe("cus_a", 3, 0.0)
    book.observed("cus_a", 3, 0.3)
    book.observed("cus_a", 3, 0.9)
    assert book.latencies_s() == [pytest.approx(0.3)]


def test_p99_is_nearest_rank_and_two_lost_probes_in_a_hundred_make_it_infinite():
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.5) == 50.0
    one_lost = [float(n) for n in range(1, 100)] + [math.inf]
    assert percentile(one_lost, 0.99) == 99.0
    two_lost = [float(n) for n in range(1, 99)] + [math.inf, math.inf]
    assert percentile(two_lost, 0.99) == math.inf
    assert percentile([], 0.99) == math.inf


def test_lag_is_bounded_unless_the_last_third_grew_by_more_than_half_a_second_of_traffic():
    assert lag_bounded([100.0] * 9, rate=1000)
    growing = [0.0, 0.0, 0.0, 300.0, 300.0, 300.0, 600.0, 600.0, 600.0]  # +600 events
    assert not lag_bounded(growing, rate=1000)  # more than 500 (0.5 s at 1000/s)
    assert lag_bounded(growing, rate=2000)  # within 1000 (0.5 s at 2000/s)
    assert not lag_bounded([0.0, 0.0], rate=1000)  # too few samples to tell


def _step(**changes) -> StepResult:
    fields = dict(rate=10_000, events=100_000, offered_rate=10_000.0, seconds_to_durable=10.3, drain_s=0.3,
                  p50_s=0.2, p99_s=0.6, probes=100, lost=0, lag_ok=True, aborted=False, cpu_s=9.0, starts={})
    fields.update(changes)
    return StepResult(**fields)


def test_a_step_passes_only_when_every_condition_holds():
    assert _step().passed
    assert not _step(p99_s=math.inf, lost=2).passed  # lost probes
    assert not _step(p99_s=1.0).passed  # p99 must be under 1 s
    assert not _step(offered_rate=9_000.0).passed  # the producer fell behind: not a pass
    assert not _step(lag_ok=False).passed
    assert not _step(drain_s=2.5).passed  # durable to the end too long after the last event
    assert not _step(aborted=True).passed
