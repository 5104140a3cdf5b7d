from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from billing.catalog import Catalog, evolve_catalog
from billing.customer import CommandRejected, CustomerState, customer_live_balance, evolve
from billing.facts import (
    BillingReason,
    CreditBalanceTransaction,
    CreditGrantVoided,
    CustomerCreated,
    InvoiceFinalized,
    InvoiceVoided,
    InvoiceVoidRequested,
    MeterDeactivated,
    MeterEventRecorded,
    SubscriptionCanceled,
    SubscriptionCancelScheduled,
    SubscriptionCreated,
    TestClockAdvanced,
    TestClockCreated,
    TimeTicked,
    TransactionReason,
)
from billing.meter_events import MeterEventRejected, MeterEventRejectionCode

from .conftest import CUSTOMER_ID, item, make_grant_created, make_meter, make_price, utc_ms

START_MS = utc_ms(2025, 1, 1)
PERIOD_END_MS = utc_ms(2025, 2, 1)
HOUR_MS = 3_600_000
CLOCK_ID = "clock_1"


def hypernian_catalog() -> Catalog:
    catalog = Catalog()
    for fact in [
        make_meter(),
        make_meter(meter_id="mtr_output", event_name="hypernian_output_tokens"),
        make_price(),
        make_price(
            price_id="price_output", product_id="prod_output", unit_amount_decimal=Decimal("5"), meter_id="mtr_output"
        ),
    ]:
        catalog = evolve_catalog(catalog, fact)
    return catalog


CATALOG = hypernian_catalog()


def tokens(value: str, minute: int, event_name: str = "hypernian_input_tokens", identifier: str | None = None):
    return MeterEventRecorded(
        customer_id=CUSTOMER_ID,
        event_name=event_name,
        identifier=identifier or f"evt_{event_name}_{minute}_{value}",
        payload={"stripe_customer_id": CUSTOMER_ID, "value": value},
        event_time_ms=START_MS + minute * 60_000,
        received_at_ms=START_MS + minute * 60_000,
    )


def setup_facts():
    return [
        TestClockCreated(test_clock_id=CLOCK_ID, frozen_time_ms=START_MS, created_at_ms=START_MS),
        CustomerCreated(customer_id=CUSTOMER_ID, name="Jenny Rosen", test_clock_id=CLOCK_ID, created_at_ms=START_MS),
        make_grant_created(
            grant_id="credgr_hypernian", amount_minor=1000, effective_at_ms=START_MS, created_at_ms=START_MS
        ),
        SubscriptionCreated(
            subscription_id="sub_1",
            customer_id=CUSTOMER_ID,
            items=(item("si_input", "price_input"), item("si_output", "price_output")),
            currency="usd",
            billing_cycle_anchor_ms=START_MS,
            created_at_ms=START_MS,
            test_clock_id=CLOCK_ID,
        ),
        # Events are accepted up to 5 minutes past the clock: move it to where the usage happens.
        advance(START_MS + HOUR_MS),
    ]


def advance(to_ms: int) -> TestClockAdvanced:
    return TestClockAdvanced(test_clock_id=CLOCK_ID, frozen_time_ms=to_ms, advanced_at_ms=to_ms)


def canceled(invoice_now: bool, canceled_at_ms: int) -> SubscriptionCanceled:
    return SubscriptionCanceled(
        subscription_id="sub_1", customer_id=CUSTOMER_ID, invoice_now=invoice_now, canceled_at_ms=canceled_at_ms
    )


def fold(facts, catalog=CATALOG):
    state, emitted = CustomerState(customer_id=CUSTOMER_ID), []
    for fact in facts:
        state, out = evolve(state, fact, catalog)
        emitted.extend(out)
    return state, emitted


def of_type(emitted, fact_type):
    return [fact for fact in emitted if isinstance(fact, fact_type)]


def test_the_walkthrough_finalizes_one_invoice_an_hour_after_period_end_with_credits_applied():
    facts = [*setup_facts(), tokens("3000", 60), advance(PERIOD_END_MS + HOUR_MS - 1)]
    state, emitted = fold(facts)
    assert of_type(emitted, InvoiceFinalized) == []  # still in the grace period
    state, emitted = fold([*facts, advance(PERIOD_END_MS + HOUR_MS)])
    [invoice] = of_type(emitted, InvoiceFinalized)
    assert (invoice.subtotal_minor, invoice.total_credits_minor, invoice.amount_due_minor) == (9000, 1000, 8000)
    assert (invoice.period_start_ms, invoice.period_end_ms) == (START_MS, PERIOD_END_MS)
    assert invoice.finalized_at_ms == PERIOD_END_MS + HOUR_MS
    reasons = [(txn.reason, txn.amount_minor) for txn in of_type(emitted, CreditBalanceTransaction)]
    assert reasons == [(TransactionReason.CREDITS_GRANTED, 1000), (TransactionReason.CREDITS_APPLIED, 1000)]
    assert state.subscriptions["sub_1"].open_period.start_ms == PERIOD_END_MS


def test_the_live_balance_burns_down_with_usage_in_the_open_period():
    state, _ = fold([*setup_facts(), tokens("100", 5), tokens("20", 6, "hypernian_output_tokens")])
    balance = customer_live_balance(state, CATALOG, "usd", START_MS + HOUR_MS)
    assert (balance.available_credits_minor, balance.accrued_usage_minor) == (1000, 400)
    assert balance.live_balance_minor == 600


def test_usage_arriving_in_the_grace_period_for_the_closed_period_is_billed():
    last_minute_of_january = 31 * 24 * 60 - 1
    facts = [
        *setup_facts(),
        advance(PERIOD_END_MS + 10),
        tokens("10", last_minute_of_january),
        advance(PERIOD_END_MS + HOUR_MS),
    ]
    [invoice] = of_type(fold(facts)[1], InvoiceFinalized)
    assert invoice.subtotal_minor == 30


def test_finalization_does_not_depend_on_how_often_time_advances():
    usage = [tokens("3000", 60), tokens("7", 90, "hypernian_output_tokens")]
    coarse = [*setup_facts(), *usage, advance(PERIOD_END_MS + 40 * 24 * HOUR_MS)]
    fine = [*setup_facts(), *usage] + [advance(START_MS + day * 24 * HOUR_MS) for day in range(1, 72)]
    coarse_invoices = of_type(fold(coarse)[1], InvoiceFinalized)
    fine_invoices = of_type(fold(fine)[1], InvoiceFinalized)
    assert len(coarse_invoices) == 2 and coarse_invoices == fine_invoices


def test_a_wall_clock_customer_follows_ticks_and_ignores_test_clocks():
    facts = [
        CustomerCreated(customer_id=CUSTOMER_ID, created_at_ms=START_MS),
        SubscriptionCreated(
            subscription_id="sub_1",
            customer_id=CUSTOMER_ID,
            items=(item("si_input", "price_input"),),
            currency="usd",
            billing_cycle_anchor_ms=START_MS,
            created_at_ms=START_MS,
        ),
        TimeTicked(now_ms=START_MS),
        tokens("10", 1),
        TestClockAdvanced(test_clock_id="clock_other", frozen_time_ms=PERIOD_END_MS * 2, advanced_at_ms=0),
    ]
    _, emitted = fold(facts)
    assert of_type(emitted, InvoiceFinalized) == []
    _, emitted = fold([*facts, TimeTicked(now_ms=PERIOD_END_MS + HOUR_MS)])
    assert [invoice.subtotal_minor for invoice in of_type(emitted, InvoiceFinalized)] == [30]


def test_a_grant_expires_at_its_expires_at_when_time_passes_it():
    expires_at_ms = START_MS + 2 * HOUR_MS
    grant = make_grant_created(
        grant_id="credgr_short", amount_minor=500, effective_at_ms=START_MS, expires_at_ms=expires_at_ms
    )
    _, emitted = fold([*setup_facts(), grant, advance(START_MS + 3 * HOUR_MS)])
    transactions = of_type(emitted, CreditBalanceTransaction)
    expired = [txn for txn in transactions if txn.reason == TransactionReason.CREDITS_EXPIRED]
    assert [(txn.grant_id, txn.amount_minor, txn.effective_at_ms) for txn in expired] == [
        ("credgr_short", 500, expires_at_ms)
    ]


def test_cancel_at_period_end_makes_the_last_invoice_a_cancellation_with_the_usage():
    scheduled = SubscriptionCancelScheduled(
        subscription_id="sub_1", customer_id=CUSTOMER_ID, cancel_at_period_end=True, scheduled_at_ms=START_MS
    )
    facts = [*setup_facts(), tokens("10", 5), scheduled, advance(PERIOD_END_MS * 2)]
    state, emitted = fold(facts)
    [invoice] = of_type(emitted, InvoiceFinalized)
    assert (invoice.billing_reason, invoice.subtotal_minor) == (BillingReason.SUBSCRIPTION_CANCEL, 30)
    assert state.subscriptions["sub_1"].open_period is None


def test_cancel_now_with_invoice_now_bills_usage_up_to_the_cancellation():
    canceled_at_ms = START_MS + 10 * 24 * HOUR_MS
    facts = [*setup_facts(), tokens("10", 5), canceled(True, canceled_at_ms), advance(canceled_at_ms + HOUR_MS)]
    [invoice] = of_type(fold(facts)[1], InvoiceFinalized)
    assert (invoice.period_end_ms, invoice.subtotal_minor) == (canceled_at_ms, 30)
    assert invoice.billing_reason == BillingReason.SUBSCRIPTION_CANCEL


def test_cancel_now_without_invoice_now_bills_nothing():
    facts = [*setup_facts(), tokens("10", 5), canceled(False, START_MS + HOUR_MS), advance(PERIOD_END_MS * 2)]
    state, emitted = fold(facts)
    assert of_type(emitted, InvoiceFinalized) == [] and state.usage == {}


def test_voiding_an_invoice_reinstates_credits_and_voiding_an_applied_grant_is_refused():
    facts = [*setup_facts(), tokens("3000", 60), advance(PERIOD_END_MS + HOUR_MS)]
    state, emitted = fold(facts)
    [invoice] = of_type(emitted, InvoiceFinalized)
    void_grant = CreditGrantVoided(
        grant_id="credgr_hypernian", customer_id=CUSTOMER_ID, voided_at_ms=PERIOD_END_MS + 2 * HOUR_MS
    )
    state, out = evolve(state, void_grant, CATALOG)
    assert [rejection.code for rejection in of_type(out, CommandRejected)] == ["credit_grant_already_applied"]
    void_invoice = InvoiceVoidRequested(
        invoice_id=invoice.invoice_id, customer_id=CUSTOMER_ID, requested_at_ms=PERIOD_END_MS + 3 * HOUR_MS
    )
    state, out = evolve(state, void_invoice, CATALOG)
    assert of_type(out, InvoiceVoided)[0].invoice_id == invoice.invoice_id
    assert state.grants["credgr_hypernian"].ledger_balance_minor == 1000


def test_bad_meter_events_come_out_as_rejections_and_are_not_counted():
    catalog = evolve_catalog(CATALOG, MeterDeactivated(meter_id="mtr_output", deactivated_at_ms=0))
    state, emitted = fold([*setup_facts(), tokens("5", 1, "hypernian_output_tokens"), tokens("x", 2)], catalog)
    codes = [rejection.code for rejection in of_type(emitted, MeterEventRejected)]
    assert codes == [MeterEventRejectionCode.ARCHIVED_METER, MeterEventRejectionCode.INVALID_VALUE]
    assert state.usage == {}


@given(values=st.lists(st.integers(-100, 5000), min_size=1, max_size=15), data=st.data())
def test_the_invoice_does_not_depend_on_the_order_usage_arrives_in(values, data):
    usage = [tokens(str(value), minute, identifier=f"evt_{minute}") for minute, value in enumerate(values)]
    shuffled = data.draw(st.permutations(usage))
    tail = [advance(PERIOD_END_MS + HOUR_MS)]
    first = of_type(fold([*setup_facts(), *usage, *tail])[1], InvoiceFinalized)
    second = of_type(fold([*setup_facts(), *shuffled, *tail])[1], InvoiceFinalized)
    assert first == second and first[0].lines[0].quantity == max(Decimal(sum(values)), Decimal(0))


def test_a_subscription_with_an_unknown_price_or_mixed_intervals_is_refused():
    yearly = make_price(price_id="price_yearly", recurring_interval="year")
    catalog = evolve_catalog(CATALOG, yearly)
    for items in [(item("si_x", "price_missing"),), (item("si_a", "price_input"), item("si_b", "price_yearly"))]:
        created = SubscriptionCreated(
            subscription_id="sub_2",
            customer_id=CUSTOMER_ID,
            items=items,
            currency="usd",
            billing_cycle_anchor_ms=START_MS,
            created_at_ms=START_MS,
        )
        state, emitted = evolve(CustomerState(customer_id=CUSTOMER_ID), created, catalog)
        assert [rejection.code for rejection in of_type(emitted, CommandRejected)] in (
            ["unknown_price"],
            ["mixed_recurring_intervals"],
        )
        assert state.subscriptions == {}
