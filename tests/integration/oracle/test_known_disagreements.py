"""Where the engine and the written rules disagreed: each story below runs through the real worker
(one log, one worker run for all of them) and is compared with the oracle for its own customer.
Each was a disagreement, marked xfail strict until the engine was fixed (a fix turned the mark
into a failure that said "remove the mark"); a new disagreement found gets a story here the same
way. The random logs of test_differential.py steer clear of any still marked."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.facts import (
    CreditGrantCreated,
    CustomerCreated,
    GrantCategory,
    GrantPriceType,
    GrantScope,
    MeterDeactivated,
    MeterEventCanceled,
    MeterEventRecorded,
    SubscriptionCanceled,
    SubscriptionCreated,
    SubscriptionItem,
    TestClockAdvanced,
    TestClockCreated,
    TimeTicked,
)
from tests.oracle.model import DAY_MS, HOUR_MS, MINUTE_MS, add_months

from .compare import compare
from .scenarios import GRACE_MS, START_MS
from .test_differential import run_through_the_worker

CLOCK = "clock_kd"
FEB_1 = add_months(START_MS, 1)


def _customer(customer_id: str, clock: str | None, grant_minor: int = 0, prices: tuple[str, ...] = (),
              grant_effective_ms: int = START_MS, grant_expires_ms: int | None = None) -> list:
    facts: list = [CustomerCreated(customer_id=customer_id, test_clock_id=clock, created_at_ms=START_MS)]
    if grant_minor:
        facts.append(CreditGrantCreated(
            grant_id=f"credgr_{customer_id}", customer_id=customer_id, amount_minor=grant_minor, currency="usd",
            scope=GrantScope(price_type=GrantPriceType.METERED), category=GrantCategory.PAID,
            effective_at_ms=grant_effective_ms, expires_at_ms=grant_expires_ms, created_at_ms=START_MS,
            test_clock_id=clock))
    if prices:
        facts.append(SubscriptionCreated(
            subscription_id=f"sub_{customer_id}", customer_id=customer_id, currency="usd",
            items=tuple(SubscriptionItem(item_id=f"si_{customer_id}_{p}", price_id=p) for p in prices),
            billing_cycle_anchor_ms=START_MS, created_at_ms=START_MS, test_clock_id=clock))
    return facts


def _event(customer_id: str, name: str, value: str, identifier: str, at_ms: int, received_ms: int) -> MeterEventRecorded:
    return MeterEventRecorded(customer_id=customer_id, event_name=name, identifier=identifier,
                              payload={"stripe_customer_id": customer_id, "value": value},
                              event_time_ms=at_ms, received_at_ms=received_ms)


def _time(at_ms: int) -> list:
    return [TimeTicked(now_ms=at_ms), TestClockAdvanced(test_clock_id=CLOCK, frozen_time_ms=at_ms, advanced_at_ms=at_ms)]


def stories() -> list[list]:
    """The log in phases: the worker is durable to the end of each before the next is produced."""
    jan_2 = START_MS + DAY_MS
    setup = [
        TestClockCreated(test_clock_id=CLOCK, frozen_time_ms=START_MS, created_at_ms=START_MS), *_time(START_MS),
        # Stale live balance: a grant that becomes effective on Jan 3 (no subscription, so nothing else moves).
        *_customer("cus_kd_effective", None, grant_minor=700, grant_effective_ms=START_MS + 2 * DAY_MS),
        # ... and one that expires on Jan 3 (700, then 0), on a test clock.
        *_customer("cus_kd_expiring", CLOCK, grant_minor=700, grant_expires_ms=START_MS + 2 * DAY_MS),
        # An event received before its meter was deactivated, folded after the worker read the
        # deactivation (as in any replay or backlog).
        MeterDeactivated(meter_id="mtr_calls", deactivated_at_ms=jan_2 + HOUR_MS),
        *_customer("cus_kd_deactivated", None, prices=("price_calls",)),
        _event("cus_kd_deactivated", "api_calls", "1", "d1", jan_2, jan_2),
    ]
    return [setup, [
        *_time(jan_2 + 3 * MINUTE_MS),
        # Cancel without invoice_now while January waits out its grace period.
        *_customer("cus_kd_grace", CLOCK, grant_minor=1000, prices=("price_in",)),
        _event("cus_kd_grace", "in_tokens", "100", "g1", jan_2, jan_2),
        # Cancel the event that an hour window counts.
        *_customer("cus_kd_window", CLOCK, prices=("price_gpu",)),
        _event("cus_kd_window", "gpu_hours", "5", "w1", jan_2, jan_2),
        _event("cus_kd_window", "gpu_hours", "9", "w2", jan_2 + MINUTE_MS, jan_2 + 2 * MINUTE_MS),
        MeterEventCanceled(event_name="gpu_hours", identifier="w2", customer_id="cus_kd_window",
                           received_at_ms=jan_2 + HOUR_MS),
        *_time(FEB_1 + GRACE_MS // 2),
        SubscriptionCanceled(subscription_id="sub_cus_kd_grace", customer_id="cus_kd_grace", invoice_now=False,
                             canceled_at_ms=FEB_1 + GRACE_MS // 2),
        *_time(FEB_1 + 2 * GRACE_MS),
    ]]


@pytest.fixture(scope="module")
def disagreements_run(stream_settings, tmp_path_factory):
    settings = stream_settings.model_copy(update={"topic_prefix": f"{stream_settings.topic_prefix}-known",
                                                  "grace_period_seconds": GRACE_MS // 1000,
                                                  "live_balance_interval_ms": 0})
    first, *later = stories()
    run_through_the_worker(settings, first, tmp_path_factory.mktemp("known"), phases=later)
    return settings


def test_a_grant_becoming_effective_shows_in_the_live_balance(disagreements_run):
    """Was a disagreement (the live balance stayed 0 instead of 700: a grant taking effect was not
    due, so nothing republished it); now its effective_at is due like an expiry."""
    assert compare(disagreements_run, {"cus_kd_effective"}) == []


def test_a_grant_expiring_shows_in_the_live_balance(disagreements_run):
    assert compare(disagreements_run, {"cus_kd_expiring"}) == []


def test_a_cancel_during_the_grace_period_keeps_the_ended_periods_invoice(disagreements_run):
    """Was a disagreement (the engine dropped the ended period's draft); STRIPE.md: the grace period
    only delays finalization, and only the current period's accrued usage goes unbilled."""
    assert compare(disagreements_run, {"cus_kd_grace"}) == []


def test_a_canceled_event_of_a_windowed_meter_gives_way_to_the_windows_other_event(disagreements_run):
    """Was a disagreement (the engine refused cancels on hour/day-windowed meters with
    meter_event_cancel_unsupported); STRIPE.md's adjustments have no such limit: the window's
    other event (5, not 9) counts."""
    assert compare(disagreements_run, {"cus_kd_window"}) == []


def test_an_event_received_before_its_meter_was_deactivated_counts(disagreements_run):
    """Was a disagreement (the engine refused it, archived_meter: it judged the meter by how far it had
    read the catalog); now the status is judged at the event's receipt (Catalog.meter_inactive_at).
    Left: an event received just after a deactivation but folded before the worker reads it (the
    worker reads the catalog every few seconds live) still counts; see the README's known limitations."""
    assert compare(disagreements_run, {"cus_kd_deactivated"}) == []
