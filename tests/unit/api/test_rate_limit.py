"""The per-key token bucket: a burst, then one request per 1/rate seconds; keys do not share."""

from __future__ import annotations

import pytest

from api.rate_limit import TokenBuckets, retry_after_header_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_allows_its_burst_then_refuses_until_a_token_refills():
    clock = Clock()
    buckets = TokenBuckets(rate_per_second=2, burst=3, clock=clock)
    assert [buckets.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k") == pytest.approx(0.5)  # 1 token at 2/s
    clock.now += 0.25
    assert buckets.take("k") == pytest.approx(0.25)
    clock.now += 0.25
    assert buckets.take("k") == 0.0
    assert buckets.take("k") == pytest.approx(0.5)


def test_an_idle_bucket_refills_to_its_burst_and_no_further():
    clock = Clock()
    buckets = TokenBuckets(rate_per_second=10, burst=2, clock=clock)
    buckets.take("k"), buckets.take("k")
    clock.now += 3600
    assert [buckets.take("k") for _ in range(3)][:2] == [0.0, 0.0]


def test_each_key_has_its_own_bucket():
    buckets = TokenBuckets(rate_per_second=1, burst=1, clock=Clock())
    assert buckets.take("a") == 0.0 and buckets.take("a") > 0
    assert buckets.take("b") == 0.0


@pytest.mark.parametrize(("wait_s", "header"), [(0.001, 1), (1.0, 1), (1.2, 2), (99.5, 100)])
def test_retry_after_rounds_up_to_whole_seconds(wait_s, header):
    assert retry_after_header_seconds(wait_s) == header


def test_processes_share_a_keys_rate_and_burst_so_that_together_they_allow_the_setting():
    # 1,024/s and a burst of 2,048 over 2 processes: each allows 1,024 at once, then one per 1/512 s
    # (powers of two: the float arithmetic is exact).
    clock = Clock()
    share = TokenBuckets.share(rate_per_second=1024, burst=2048, processes=2)
    share.clock = clock
    assert all(share.take("k") == 0.0 for _ in range(1024))
    assert share.take("k") == 1 / 512
    clock.now += 1 / 512
    assert share.take("k") == 0.0
    assert share.take("k") > 0
