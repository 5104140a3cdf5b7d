from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing import ids
from billing.errors import CurrencyMismatch, InvoiceAlreadyVoided, UnknownPrice
from billing.facts import BillingReason, GrantCategory, GrantScope, MeterAggregation, TransactionReason, UsageType
from billing.grants import create_grant, in_application_order, void_grant
from billing.invoices import compute_invoice, void_invoice
from billing.meters import MeterAggregator, MeterReading
from billing.periods import BillingPeriod

from .conftest import CUSTOMER_ID, SUBSCRIPTION_ID, item, make_grant, make_grant_created, make_price, utc_ms

PERIOD = BillingPeriod(start_ms=utc_ms(2025, 1, 1), end_ms=utc_ms(2025, 2, 1))
FINALIZED_AT_MS = PERIOD.end_ms + 3_600_000
PRICES = {
    "price_input": make_price(),
    "price_output": make_price(
        price_id="price_output", product_id="prod_output", unit_amount_decimal=Decimal("5"), meter_id="mtr_output"
    ),
    "price_seat": make_price(
        price_id="price_seat", product_id="prod_seat", unit_amount_decimal=Decimal("1500"), usage_type=UsageType.LICENSED
    ),
}
ITEMS = (item("si_input", "price_input"), item("si_output", "price_output"))


def invoice_for(usage, grants, items=ITEMS, prices=PRICES, currency="usd"):
    return compute_invoice(
        customer_id=CUSTOMER_ID,
        subscription_id=SUBSCRIPTION_ID,
        currency=currency,
        period=PERIOD,
        billing_reason=BillingReason.SUBSCRIPTION_CYCLE,
        finalized_at_ms=FINALIZED_AT_MS,
        items=items,
        prices=prices,
        usage_by_meter_id={meter_id: Decimal(value) for meter_id, value in usage.items()},
        grants={state.grant_id: state for state in grants},
    )


def test_the_seed_walkthrough_bills_9000_applies_1000_credits_and_leaves_8000_due():
    grant = make_grant(grant_id="credgr_hypernian", amount_minor=1000, category=GrantCategory.PAID)
    result = invoice_for({"mtr_input": "3000"}, [grant], items=(item("si_input", "price_input"),))
    invoice = result.invoice
    assert (invoice.subtotal_minor, invoice.total_credits_minor, invoice.amount_due_minor) == (9000, 1000, 8000)
    assert invoice.lines[0].quantity == Decimal(3000) and invoice.lines[0].amount_minor == 9000
    ledger = result.grants["credgr_hypernian"].transactions
    assert [(txn.reason, txn.amount_minor) for txn in ledger] == [
        (TransactionReason.CREDITS_GRANTED, 1000),
        (TransactionReason.CREDITS_APPLIED, 1000),
    ]
    applied = ledger[1]
    assert (applied.invoice_id, applied.invoice_line_id) == (invoice.invoice_id, invoice.lines[0].line_id)
    assert invoice.lines[0].credits[0].credit_balance_transaction_id == applied.transaction_id
    assert result.transactions == (applied,)


def test_the_invoice_and_its_lines_have_deterministic_ids():
    first = invoice_for({"mtr_input": "10"}, [make_grant()]).invoice
    second = invoice_for({"mtr_input": "10"}, [make_grant()]).invoice
    assert first == second
    assert first.invoice_id == ids.invoice_id(SUBSCRIPTION_ID, PERIOD.start_ms)
    assert [line.line_id for line in first.lines] == [
        ids.invoice_line_id(first.invoice_id, "si_input"),
        ids.invoice_line_id(first.invoice_id, "si_output"),
    ]


def test_lines_follow_item_order_and_credits_fill_lines_in_invoice_order():
    reversed_items = (item("si_output", "price_output"), item("si_input", "price_input"))
    result = invoice_for({"mtr_input": "100", "mtr_output": "100"}, [make_grant(amount_minor=400)], items=reversed_items)
    lines = result.invoice.lines
    assert [line.subscription_item_id for line in lines] == ["si_output", "si_input"]
    assert [sum(c.amount_minor for c in line.credits) for line in lines] == [400, 0]


def test_a_line_draws_from_grants_in_application_order_and_spills_to_the_next():
    grants = [
        make_grant(grant_id="paid", amount_minor=500, category=GrantCategory.PAID),
        make_grant(grant_id="promo", amount_minor=200, category=GrantCategory.PROMOTIONAL),
    ]
    line = invoice_for({"mtr_input": "100"}, grants).invoice.lines[0]  # 300 cents
    assert [(credit.grant_id, credit.amount_minor) for credit in line.credits] == [("promo", 200), ("paid", 100)]


def test_licensed_prices_bill_quantity_times_unit_amount_and_are_never_credited():
    seats = (item("si_seat", "price_seat", quantity=3),)
    result = invoice_for({}, [make_grant(amount_minor=10_000)], items=seats)
    line = result.invoice.lines[0]
    assert (line.quantity, line.amount_minor, line.credits, line.meter_id) == (Decimal(3), 4500, (), None)
    assert result.invoice.amount_due_minor == 4500
    assert result.transactions == ()


def test_a_grant_scoped_to_listed_prices_pays_only_those_lines():
    grant = make_grant(scope=GrantScope(price_ids=("price_output",)), amount_minor=10_000)
    lines = invoice_for({"mtr_input": "10", "mtr_output": "10"}, [grant]).invoice.lines
    assert [sum(c.amount_minor for c in line.credits) for line in lines] == [0, 50]


@pytest.mark.parametrize(
    "grant_fields",
    [
        {"currency": "eur"},
        {"effective_at_ms": PERIOD.end_ms + 1},
        {"expires_at_ms": PERIOD.end_ms},
    ],
)
def test_ineligible_grants_are_left_untouched(grant_fields):
    grant = make_grant(**grant_fields)
    result = invoice_for({"mtr_input": "10"}, [grant])
    assert result.invoice.total_credits_minor == 0
    assert result.grants[grant.grant_id] == grant


def test_a_voided_grant_pays_nothing():
    voided, _ = void_grant(make_grant(), 1)
    assert invoice_for({"mtr_input": "10"}, [voided]).invoice.total_credits_minor == 0


def test_a_negative_usage_total_bills_zero_and_missing_usage_bills_zero():
    lines = invoice_for({"mtr_input": "-50"}, []).invoice.lines
    assert [(line.quantity, line.amount_minor) for line in lines] == [(Decimal(0), 0), (Decimal(0), 0)]


def test_a_price_in_another_currency_or_an_unknown_price_is_refused():
    with pytest.raises(CurrencyMismatch):
        invoice_for({}, [], currency="eur")
    with pytest.raises(UnknownPrice):
        invoice_for({}, [], items=(item("si_x", "price_missing"),))


def test_voiding_the_invoice_gives_every_credit_back_to_its_grant():
    grants = [make_grant(grant_id="a", amount_minor=100), make_grant(grant_id="b", amount_minor=5000)]
    finalized = invoice_for({"mtr_input": "100", "mtr_output": "100"}, grants)
    voiding = void_invoice(finalized.invoice, finalized.grants, voided_at_ms=FINALIZED_AT_MS + 1)
    balances = {grant_id: state.ledger_balance_minor for grant_id, state in voiding.grants.items()}
    assert balances == {"a": 100, "b": 5000}
    assert {txn.reason for txn in voiding.transactions} == {TransactionReason.CREDITS_APPLICATION_INVOICE_VOIDED}
    assert voiding.voided.invoice_id == finalized.invoice.invoice_id
    with pytest.raises(InvoiceAlreadyVoided):
        void_invoice(finalized.invoice, voiding.grants, 0, frozenset({finalized.invoice.invoice_id}))


# --- properties ---------------------------------------------------------------------------------

grant_strategy = st.builds(
    lambda index, amount_minor, priority, expires_in, category, effective_at_ms, scope: make_grant_created(
        grant_id=f"credgr_{index}",
        amount_minor=amount_minor,
        priority=priority,
        expires_at_ms=None if expires_in is None else PERIOD.end_ms + expires_in,
        category=category,
        effective_at_ms=effective_at_ms,
        created_at_ms=index,
        scope=scope,
    ),
    index=st.integers(0, 10_000),
    amount_minor=st.integers(1, 20_000),
    priority=st.integers(0, 100),
    expires_in=st.none() | st.integers(-5, 10**9),
    category=st.sampled_from(list(GrantCategory)),
    effective_at_ms=st.integers(PERIOD.start_ms - 10, PERIOD.end_ms + 10),
    scope=st.sampled_from(
        [
            GrantScope(price_type="metered"),
            GrantScope(price_ids=("price_input",)),
            GrantScope(price_ids=("price_output", "price_seat")),
        ]
    ),
)
grants_strategy = st.lists(grant_strategy, max_size=6, unique_by=lambda created: created.grant_id).map(
    lambda created: [create_grant(one)[0] for one in created]
)
usage_strategy = st.fixed_dictionaries(
    {
        "mtr_input": st.decimals(min_value=-100, max_value=10**6, places=2, allow_nan=False, allow_infinity=False),
        "mtr_output": st.decimals(min_value=0, max_value=10**5, places=4, allow_nan=False, allow_infinity=False),
    }
)
ALL_ITEMS = (item("si_input", "price_input"), item("si_seat", "price_seat", quantity=2), item("si_output", "price_output"))


@given(grants=grants_strategy, usage=usage_strategy)
def test_credits_never_exceed_a_lines_amount_or_a_grants_balance_and_amount_due_is_never_negative(grants, usage):
    result = invoice_for(usage, grants, items=ALL_ITEMS)
    invoice = result.invoice
    for line in invoice.lines:
        assert sum(credit.amount_minor for credit in line.credits) <= line.amount_minor
        if PRICES[line.price_id].usage_type == UsageType.LICENSED:
            assert line.credits == ()
    before = {state.grant_id: state.ledger_balance_minor for state in grants}
    for grant_id, state in result.grants.items():
        applied_minor = sum(
            credit.amount_minor for line in invoice.lines for credit in line.credits if credit.grant_id == grant_id
        )
        assert applied_minor <= before[grant_id]
        assert state.ledger_balance_minor == before[grant_id] - applied_minor >= 0
        assert state.transactions_sum_minor() == state.ledger_balance_minor
    assert invoice.amount_due_minor >= 0
    assert invoice.subtotal_minor == invoice.total_credits_minor + invoice.amount_due_minor


@given(grants=grants_strategy, usage=usage_strategy, data=st.data())
def test_the_invoice_does_not_depend_on_the_order_grants_arrive_in(grants, usage, data):
    shuffled = data.draw(st.permutations(grants))
    assert invoice_for(usage, shuffled, items=ALL_ITEMS).invoice == invoice_for(usage, grants, items=ALL_ITEMS).invoice


@given(grants=grants_strategy)
def test_credits_go_to_eligible_grants_in_application_order_only(grants):
    result = invoice_for({"mtr_input": "1000000", "mtr_output": "1000000"}, grants, items=ALL_ITEMS)
    # Usage far above all balances: every eligible grant covering both metered lines is drained.
    for state in in_application_order(grants):
        if state.grant.scope.price_type == "metered" and state.ledger_balance_minor > 0:
            eligible = state.currency == "usd" and state.grant.effective_at_ms <= PERIOD.end_ms and (
                state.expires_at_ms is None or PERIOD.end_ms < state.expires_at_ms
            )
            assert (result.grants[state.grant_id].ledger_balance_minor == 0) is eligible


values_strategy = st.lists(
    st.decimals(min_value=-50, max_value=5000, places=3, allow_nan=False, allow_infinity=False), min_size=1, max_size=25
)


@given(values=values_strategy, grants=grants_strategy, data=st.data())
def test_splitting_usage_into_any_batches_gives_the_same_invoice(values, grants, data):
    aggregator = MeterAggregator(MeterAggregation.SUM)
    readings = [
        MeterReading(
            event_time_ms=PERIOD.start_ms + index,
            received_at_ms=PERIOD.start_ms + index,
            identifier=f"event_{index}",
            value=value,
        )
        for index, value in enumerate(values)
    ]
    whole = aggregator.result(aggregator.add_all(aggregator.initialize(), readings))
    shuffled = data.draw(st.permutations(readings))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(readings)), max_size=4)))
    batches = [shuffled[start:end] for start, end in zip([0, *cuts], [*cuts, len(shuffled)])]
    batch_usages = [aggregator.add_all(aggregator.initialize(), batch) for batch in batches]
    split = aggregator.result(aggregator.merge_all(batch_usages))
    assert invoice_for({"mtr_input": split}, grants).invoice == invoice_for({"mtr_input": whole}, grants).invoice
