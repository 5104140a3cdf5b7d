"""The per-customer fold (billing/customer.py): subscriptions canceled at period end."""

from __future__ import annotations

from dataclasses import replace

import pytest

from billing.catalog import Catalog, evolve_catalog
from billing.customer import CustomerState, FoldConfig, advance_time, evolve
from billing.facts import BillingReason, InvoiceFinalized, SubscriptionCancelScheduled
from billing.periods import add_months_clamped_ms
from streams import walkthrough as w

GRACE_MS = w.HOUR_MS
CONFIG = FoldConfig(grace_period_ms=GRACE_MS, live_balance_interval_ms=0, low_balance_thresholds_minor=())
FIRST_END_MS = w.first_period_end_ms()
SECOND_END_MS = add_months_clamped_ms(w.START_MS, 2)


def catalog() -> Catalog:
    result = Catalog()
    for fact in w.catalog_facts():
        result = evolve_catalog(result, fact)
    return result


def invoices_until(scheduled_at_ms: int, until_ms: int) -> tuple[list[InvoiceFinalized], CustomerState]:
    """A customer whose subscription is scheduled to cancel at period end at `scheduled_at_ms`
    (time having reached it first), then time running on to `until_ms`: its invoices."""
    prices, state, emitted = catalog(), CustomerState(customer_id="cus_1"), []
    for fact in w.customer_setup("cus_1", None):
        state, _ = evolve(state, fact, prices, w.START_MS, CONFIG)
    emitted += advance_time(state, scheduled_at_ms, prices, CONFIG)
    state, facts = evolve(state, SubscriptionCancelScheduled(
        subscription_id="sub_cus_1", customer_id="cus_1", cancel_at_period_end=True,
        scheduled_at_ms=scheduled_at_ms), prices, scheduled_at_ms, CONFIG)
    emitted += facts + advance_time(state, until_ms, prices, CONFIG)
    return [fact for fact in emitted if isinstance(fact, InvoiceFinalized)], state


def test_cancel_at_period_end_makes_the_current_period_the_last():
    invoices, state = invoices_until(w.START_MS + 10 * w.HOUR_MS, SECOND_END_MS + 2 * GRACE_MS)
    assert [(i.period_end_ms, i.billing_reason) for i in invoices] == [(FIRST_END_MS, BillingReason.SUBSCRIPTION_CANCEL)]
    assert state.subscriptions["sub_cus_1"].ended


@pytest.mark.parametrize("after_end_ms", [0, 1, GRACE_MS // 2, GRACE_MS - 1])
def test_cancel_at_period_end_asked_after_a_period_ended_ends_the_next_one(after_end_ms):
    # The first period has ended but is not invoiced yet (its grace period runs): the request is
    # about the period that began at its end, as Stripe's subscription has rolled over by then.
    invoices, state = invoices_until(FIRST_END_MS + after_end_ms, SECOND_END_MS + 2 * GRACE_MS)
    assert [(i.period_end_ms, i.billing_reason) for i in invoices] == [
        (FIRST_END_MS, BillingReason.SUBSCRIPTION_CYCLE), (SECOND_END_MS, BillingReason.SUBSCRIPTION_CANCEL)]
    assert state.subscriptions["sub_cus_1"].ended


def test_a_re_published_grant_create_changes_nothing_once_the_grant_has_expired():
    # A retried command re-publishes the same CreditGrantCreated (the API derives the id from the
    # Idempotency-Key). Before, the second fact replaced the grant: an expired 10 USD grant came back
    # with its 10 USD ledger balance, money out of nothing.
    from billing.facts import CreditBalanceTransaction, CreditGrantCreated, CreditGrantExpired

    prices, state = catalog(), CustomerState(customer_id="cus_1")
    setup = w.customer_setup("cus_1", None)
    for fact in setup:
        state, _ = evolve(state, fact, prices, w.START_MS, CONFIG)
    state, _ = evolve(state, CreditGrantExpired(grant_id="credgr_cus_1", customer_id="cus_1",
                                                expired_at_ms=w.START_MS + w.HOUR_MS), prices, w.START_MS + w.HOUR_MS,
                      CONFIG)
    assert state.grants["credgr_cus_1"].ledger_balance_minor == 0  # 1000 granted, 1000 expired
    (created,) = [fact for fact in setup if isinstance(fact, CreditGrantCreated)]
    retried = replace(created, created_at_ms=w.START_MS + 2 * w.HOUR_MS)
    state, emitted = evolve(state, retried, prices, w.START_MS + 2 * w.HOUR_MS, CONFIG)
    assert state.grants["credgr_cus_1"].ledger_balance_minor == 0
    assert state.grants["credgr_cus_1"].expired_at_ms == w.START_MS + w.HOUR_MS
    assert [fact for fact in emitted if isinstance(fact, CreditBalanceTransaction)] == []


def test_a_re_published_subscription_or_customer_create_keeps_the_first():
    from billing.facts import CustomerCreated, SubscriptionCreated

    prices, state = catalog(), CustomerState(customer_id="cus_1")
    setup = w.customer_setup("cus_1", None)
    for fact in setup:
        state, _ = evolve(state, fact, prices, w.START_MS, CONFIG)
    first_period = state.subscriptions["sub_cus_1"].open_period
    later_ms = FIRST_END_MS + 5 * w.HOUR_MS  # a retry published after the first period ended
    for fact in setup:
        if isinstance(fact, (CustomerCreated, SubscriptionCreated)):
            again = replace(fact, created_at_ms=later_ms)
            if isinstance(fact, SubscriptionCreated):
                again = replace(again, billing_cycle_anchor_ms=later_ms)
            state, _ = evolve(state, again, prices, w.START_MS, CONFIG)
    assert state.created.created_at_ms == w.START_MS
    assert state.subscriptions["sub_cus_1"].created.created_at_ms == w.START_MS
    assert state.subscriptions["sub_cus_1"].open_period == first_period


def _live_balances(state: CustomerState, now_ms: int) -> list[int]:
    from billing.customer import live_balance_facts
    from billing.facts import LiveBalanceChanged

    facts = live_balance_facts(state, catalog(), now_ms, CONFIG, now_ms)
    return [fact.live_balance_minor for fact in facts if isinstance(fact, LiveBalanceChanged)]


@pytest.mark.parametrize("effective", [True, False])
def test_time_reaching_a_grants_effective_at_or_expires_at_moves_the_live_balance(effective):
    # A 7 USD grant, no subscription (no usage: the live balance counts the grants usable now).
    # Taking effect on day 2: 0, then 700. Expiring on day 2: 700, then 0. Nothing else happens:
    # time alone must make the change due (before, a grant taking effect was not due: 0 stayed).
    from billing.customer import next_due_ms
    from billing.facts import CreditGrantCreated, CustomerCreated, GrantCategory, GrantPriceType, GrantScope

    day_2_ms = w.START_MS + 24 * w.HOUR_MS
    prices, state = catalog(), CustomerState(customer_id="cus_1")
    state, _ = evolve(state, CustomerCreated(customer_id="cus_1", created_at_ms=w.START_MS), prices, w.START_MS,
                      CONFIG)
    state, _ = evolve(state, CreditGrantCreated(
        grant_id="credgr_1", customer_id="cus_1", amount_minor=700, currency="usd",
        scope=GrantScope(price_type=GrantPriceType.METERED), category=GrantCategory.PAID,
        effective_at_ms=day_2_ms if effective else w.START_MS, expires_at_ms=None if effective else day_2_ms,
        created_at_ms=w.START_MS), prices, w.START_MS, CONFIG)
    assert _live_balances(state, w.START_MS) == [0 if effective else 700]
    assert next_due_ms(state, CONFIG) == day_2_ms
    advance_time(state, day_2_ms - 1, prices, CONFIG)
    assert not state.live_pending
    advance_time(state, day_2_ms + w.HOUR_MS, prices, CONFIG)
    assert _live_balances(state, day_2_ms + w.HOUR_MS) == [700 if effective else 0]
    assert next_due_ms(state, CONFIG) is None


def test_a_grant_expiring_at_the_instant_an_invoice_is_finalized_pays_none_of_it():
    # The grant is expired at its expires_at (GrantState.is_expired_at), so an invoice finalized at
    # that very instant finds it expired: 100 input tokens x 3 cents = 300 due, the 1000 expire.
    # (Before, the finalization ran first and took 300 of the grant.)
    from billing.facts import CreditBalanceTransaction, TransactionReason

    prices, state = catalog(), CustomerState(customer_id="cus_1")
    finalized_ms = FIRST_END_MS + GRACE_MS
    for fact in w.customer_setup("cus_1", None):
        if hasattr(fact, "grant_id"):
            fact = replace(fact, expires_at_ms=finalized_ms)
        state, _ = evolve(state, fact, prices, w.START_MS, CONFIG)
    from billing.customer import add_usage
    from billing.meters import MeterReading
    from decimal import Decimal

    add_usage(state, "mtr_in", MeterReading(w.START_MS + w.HOUR_MS, w.START_MS + w.HOUR_MS, "e1", Decimal(100)),
              prices.aggregator("mtr_in"), prices)
    emitted = advance_time(state, finalized_ms, prices, CONFIG)
    (invoice,) = [fact for fact in emitted if isinstance(fact, InvoiceFinalized)]
    assert (invoice.subtotal_minor, invoice.total_credits_minor, invoice.amount_due_minor) == (300, 0, 300)
    transactions = [(t.reason, t.amount_minor) for t in emitted if isinstance(t, CreditBalanceTransaction)]
    assert transactions == [(TransactionReason.CREDITS_EXPIRED, 1000)]


def test_the_live_balance_counts_the_grants_that_will_pay_the_open_period_with_or_without_usage():
    # The walkthrough's 10 USD grant, and 7 USD expiring on day 10, before the period ends (Feb 1):
    # the 7 USD will pay no invoice of this period. Without usage: 1000 (before, 1700: the grants
    # usable now were counted, and the balance dropped by 700 with the first token). With 100
    # input tokens (3 cents each): 1000 - 300 = 700.
    from billing.customer import add_usage
    from billing.facts import CreditGrantCreated, GrantCategory, GrantPriceType, GrantScope
    from billing.meters import MeterReading
    from decimal import Decimal

    prices, state = catalog(), CustomerState(customer_id="cus_1")
    for fact in w.customer_setup("cus_1", None):
        state, _ = evolve(state, fact, prices, w.START_MS, CONFIG)
    state, _ = evolve(state, CreditGrantCreated(
        grant_id="credgr_short", customer_id="cus_1", amount_minor=700, currency="usd",
        scope=GrantScope(price_type=GrantPriceType.METERED), category=GrantCategory.PAID,
        effective_at_ms=w.START_MS, expires_at_ms=w.START_MS + 240 * w.HOUR_MS, created_at_ms=w.START_MS),
        prices, w.START_MS, CONFIG)
    assert _live_balances(state, w.START_MS + w.HOUR_MS) == [1000]
    add_usage(state, "mtr_in", MeterReading(w.START_MS + w.HOUR_MS, w.START_MS + w.HOUR_MS, "e1", Decimal(100)),
              prices.aggregator("mtr_in"), prices)
    assert _live_balances(state, w.START_MS + w.HOUR_MS) == [700]
