"""Each usage rule lives in one function (issue 14): its boundaries, worked out by hand from
Stripe's documented limits, and a source check that no fold re-implements it inline.

The source check reads the code of the folds that once carried copies (the worker's and the
replay's fast paths, the replay's compact ledger, the producer's pre-check): the rule's constants
may appear only in the module that owns the rule.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from billing.meter_events import ReceivedAtOutOfBound, is_received_within_bound, is_timely, receipt_refusal
from billing.usage import within_cancel_window, within_dedupe_window

ROOT = Path(__file__).resolve().parents[3]
MINUTE_MS, DAY_MS = 60_000, 86_400_000
NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(("event_time_ms", "timely"), [
    (NOW_MS - 35 * DAY_MS, True),  # Stripe: up to 35 days in the past, inclusive
    (NOW_MS - 35 * DAY_MS - 1, False),
    (NOW_MS + 5 * MINUTE_MS, True),  # Stripe: up to 5 minutes in the future, inclusive
    (NOW_MS + 5 * MINUTE_MS + 1, False),
    (NOW_MS, True),
])
def test_the_lateness_rule_accepts_35_days_back_to_5_minutes_ahead(event_time_ms, timely):
    assert is_timely(event_time_ms, NOW_MS) is timely


def test_the_dedupe_rule_holds_for_the_window_after_the_first_receipt():
    window_ms = 35 * DAY_MS
    assert within_dedupe_window(NOW_MS, NOW_MS, window_ms)
    assert within_dedupe_window(NOW_MS, NOW_MS + window_ms, window_ms)
    assert not within_dedupe_window(NOW_MS, NOW_MS + window_ms + 1, window_ms)


def test_the_cancel_rule_holds_for_24_hours_after_the_event():
    assert within_cancel_window(NOW_MS, NOW_MS + DAY_MS)
    assert not within_cancel_window(NOW_MS, NOW_MS + DAY_MS + 1)


HOUR_MS = 3_600_000


@pytest.mark.parametrize(("received_at_ms", "bound_ms", "within"), [
    (NOW_MS - HOUR_MS, HOUR_MS, True),  # stamped an hour before the broker appended it: inclusive
    (NOW_MS + HOUR_MS, HOUR_MS, True),  # an hour after (the producer's clock runs ahead): inclusive
    (NOW_MS - HOUR_MS - 1, HOUR_MS, False),  # 3600.001 s either way: refused
    (NOW_MS + HOUR_MS + 1, HOUR_MS, False),
    (NOW_MS, HOUR_MS, True),
    (NOW_MS - 365 * DAY_MS, 0, True),  # 0: the rule is off, the producers' clocks are trusted
    (NOW_MS + 365 * DAY_MS, 0, True),
])
def test_the_receipt_rule_accepts_received_at_within_the_bound_of_the_append_time_either_way(
        received_at_ms, bound_ms, within):
    assert is_received_within_bound(received_at_ms, NOW_MS, bound_ms) is within
    refusal = receipt_refusal(received_at_ms, NOW_MS, bound_ms)
    assert (refusal is None) is within
    if refusal is not None:
        assert isinstance(refusal, ReceivedAtOutOfBound)
        assert refusal.reason_code == "received_at_out_of_bound"
        assert "3600.001 s" in str(refusal) and "3600 s" in str(refusal)


# (constant or expression, the only module allowed to compare with it)
RULE_CONSTANTS = [
    # replay/usage.py: offset planning; billing/retention.py: how long past the limits state is kept
    (r"MAX_EVENT_AGE_MS", {"billing/meter_events.py", "replay/usage.py", "billing/retention.py"}),
    (r"MAX_EVENT_LEAD_MS", {"billing/meter_events.py", "replay/usage.py"}),
    (r"CANCEL_WINDOW_MS", {"billing/usage.py", "billing/retention.py"}),
    (r"received_at_ms\s*-\s*\w+", {"billing/usage.py", "billing/meter_events.py"}),
    (r"-\s*[\w.]*received_at_ms\b", {"billing/usage.py", "billing/meter_events.py"}),  # e.g. the receipt rule
]
FOLD_SOURCES = ["billing", "streams", "replay", "producers", "api", "projections"]


@pytest.mark.parametrize(("pattern", "owners"), RULE_CONSTANTS)
def test_no_fold_reimplements_a_usage_rule_inline(pattern, owners):
    offenders = []
    for folder in FOLD_SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative in owners:
                continue
            code = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
            if re.search(pattern, code):
                offenders.append(relative)
    assert offenders == [], f"{pattern} is used outside {sorted(owners)}: call the rule's function instead"
