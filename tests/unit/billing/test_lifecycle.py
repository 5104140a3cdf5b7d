"""Invoice lifecycle in the customer fold: one-off invoices, pay, mark uncollectible, void (Stripe's rules)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.catalog import Catalog, evolve_catalog
from billing.customer import CustomerState, FoldConfig, Rejected, add_usage, advance_time, copy_state, evolve
from billing.facts import (
    BillingReason,
    CreditBalanceTransaction,
    InvoiceCreated,
    InvoiceFinalized,
    InvoiceFinalizeRequested,
    InvoiceItemCreated,
    InvoiceItemDeleted,
    InvoiceMarkedUncollectible,
    InvoiceMarkUncollectibleRequested,
    InvoicePaid,
    InvoicePayRequested,
    InvoiceVoided,
    InvoiceVoidRequested,
)
from billing.meters import MeterReading
from streams import records as stored
from streams import walkthrough as w

CONFIG = FoldConfig(grace_period_ms=w.HOUR_MS, live_balance_interval_ms=0, low_balance_thresholds_minor=())
NOW_MS = w.START_MS + w.HOUR_MS


def catalog() -> Catalog:
    result = Catalog()
    for fact in w.catalog_facts():
        result = evolve_catalog(result, fact)
    return result


PRICES = catalog()


def customer() -> CustomerState:
    """Jenny with her 10 USD metered grant and subscription (streams/walkthrough.py)."""
    state = CustomerState(customer_id="cus_1")
    for fact in w.customer_setup("cus_1", None):
        state, _ = evolve(state, fact, PRICES, w.START_MS, CONFIG)
    return state


def fold(state: CustomerState, *facts: object) -> tuple[CustomerState, list]:
    """Fold `facts` on a copy (evolve consumes its state), so a test can fold alternatives on one state."""
    state, emitted = copy_state(state), []
    for fact in facts:
        state, out = evolve(state, fact, PRICES, NOW_MS, CONFIG)
        emitted += out
    return state, emitted


def item(item_id: str, amount_minor: int, quantity: str = "1", unit: str | None = None, **kwargs) -> InvoiceItemCreated:
    return InvoiceItemCreated(invoice_item_id=item_id, customer_id="cus_1", currency=kwargs.pop("currency", "usd"),
                              quantity=Decimal(quantity), unit_amount_decimal=Decimal(unit or amount_minor),
                              amount_minor=amount_minor, created_at_ms=NOW_MS, **kwargs)


def request(kind: type, invoice_id: str = "in_one") -> object:
    if kind is InvoicePayRequested:
        return InvoicePayRequested(invoice_id=invoice_id, customer_id="cus_1", requested_at_ms=NOW_MS)
    return kind(invoice_id=invoice_id, customer_id="cus_1", requested_at_ms=NOW_MS)


def one_off(state: CustomerState, *items: InvoiceItemCreated) -> tuple[CustomerState, InvoiceFinalized]:
    state, _ = fold(state, *items, InvoiceCreated(invoice_id="in_one", customer_id="cus_1", currency="usd",
                                                  invoice_item_ids=tuple(i.invoice_item_id for i in items),
                                                  created_at_ms=NOW_MS))
    state, emitted = fold(state, request(InvoiceFinalizeRequested))
    (invoice,) = emitted
    return state, invoice


def codes(emitted: list) -> list[str]:
    return [item.code for item in emitted if isinstance(item, Rejected)]


def test_a_one_off_invoice_bills_its_items_in_full_without_credits():
    # 1000 + 3 x 250.5 = 751.5 -> 752 (half up per line): 1752 due; the 10 USD metered grant is untouched.
    state, invoice = one_off(customer(), item("ii_a", 1000, description="Credits"), item("ii_b", 752, "3", "250.5"))
    assert [(line.invoice_item_id, line.amount_minor) for line in invoice.lines] == [("ii_a", 1000), ("ii_b", 752)]
    assert (invoice.subtotal_minor, invoice.total_credits_minor, invoice.amount_due_minor) == (1752, 0, 1752)
    assert invoice.billing_reason == BillingReason.MANUAL and invoice.subscription_id is None
    assert invoice.lines[0].description == "Credits" and invoice.lines[0].credits == ()
    assert state.grants["credgr_cus_1"].ledger_balance_minor == 1000
    assert state.invoice_items == {} and state.drafts == {}


def test_an_invoice_takes_only_the_pending_items_in_its_currency_and_a_deleted_item_is_gone():
    state, _ = fold(customer(), item("ii_eur", 500, currency="eur"), item("ii_gone", 300),
                    InvoiceItemDeleted(invoice_item_id="ii_gone", customer_id="cus_1", deleted_at_ms=NOW_MS))
    state, invoice = one_off(state, item("ii_usd", 1000))
    assert [line.invoice_item_id for line in invoice.lines] == ["ii_usd"]
    assert list(state.invoice_items) == ["ii_eur"]  # still pending for a eur invoice


def test_paying_an_open_one_off_invoice_pays_its_amount_due_and_it_can_no_longer_be_voided():
    state, _ = one_off(customer(), item("ii_a", 1000))
    state, paid = fold(state, request(InvoicePayRequested))
    assert paid == [InvoicePaid(invoice_id="in_one", customer_id="cus_1", amount_paid_minor=1000,
                                paid_out_of_band=True, paid_at_ms=NOW_MS)]
    state, refused = fold(state, request(InvoiceVoidRequested), request(InvoicePayRequested),
                          request(InvoiceMarkUncollectibleRequested), request(InvoiceFinalizeRequested))
    assert codes(refused) == ["invoice_unexpected_status"] * 4


def test_an_uncollectible_invoice_can_be_paid_or_voided_but_not_marked_again():
    state, _ = one_off(customer(), item("ii_a", 1000))
    state, marked = fold(state, request(InvoiceMarkUncollectibleRequested))
    assert marked == [InvoiceMarkedUncollectible(invoice_id="in_one", customer_id="cus_1",
                                                 marked_uncollectible_at_ms=NOW_MS)]
    _, again = fold(state, request(InvoiceMarkUncollectibleRequested))
    assert codes(again) == ["invoice_unexpected_status"]
    _, paid = fold(state, request(InvoicePayRequested))
    assert [type(fact) for fact in paid] == [InvoicePaid]
    state, voided = fold(state, request(InvoiceVoidRequested))
    assert [type(fact) for fact in voided] == [InvoiceVoided]
    _, after_void = fold(state, request(InvoicePayRequested))
    assert codes(after_void) == ["invoice_unexpected_status"]


def test_a_draft_cannot_be_paid_marked_or_voided_and_an_unknown_invoice_is_missing():
    state, _ = fold(customer(), InvoiceCreated(invoice_id="in_one", customer_id="cus_1", currency="usd",
                                                created_at_ms=NOW_MS))
    _, refused = fold(state, request(InvoicePayRequested), request(InvoiceMarkUncollectibleRequested),
                      request(InvoiceVoidRequested), request(InvoiceFinalizeRequested, "in_none"))
    assert codes(refused) == ["resource_missing"] * 4


def test_an_empty_one_off_invoice_is_paid_at_once_and_cannot_be_voided():
    state, invoice = one_off(customer())
    assert invoice.amount_due_minor == 0
    _, refused = fold(state, request(InvoiceVoidRequested), request(InvoicePayRequested))
    assert codes(refused) == ["invoice_unexpected_status"] * 2


def period_invoice(tokens: str) -> tuple[CustomerState, InvoiceFinalized]:
    state = customer()
    add_usage(state, "mtr_in", MeterReading(NOW_MS, NOW_MS, "e1", Decimal(tokens)), PRICES.aggregator("mtr_in"), PRICES)
    (invoice,) = [f for f in advance_time(state, w.first_period_end_ms() + w.HOUR_MS, PRICES, CONFIG)
                  if isinstance(f, InvoiceFinalized)]
    return state, invoice


def test_a_paid_period_invoice_cannot_be_voided_and_keeps_its_credits():
    # 3000 input tokens x 3 = 9000, minus the 1000 grant: 8000 due.
    state, invoice = period_invoice("3000")
    state, paid = fold(state, request(InvoicePayRequested, invoice.invoice_id))
    assert [(type(f), f.amount_paid_minor) for f in paid] == [(InvoicePaid, 8000)]
    state, refused = fold(state, request(InvoiceVoidRequested, invoice.invoice_id))
    assert codes(refused) == ["invoice_unexpected_status"]
    assert not [f for f in refused if isinstance(f, CreditBalanceTransaction)]
    assert state.grants["credgr_cus_1"].ledger_balance_minor == 0


def test_an_uncollectible_period_invoice_voids_and_gives_its_credits_back():
    state, invoice = period_invoice("3000")
    state, _ = fold(state, request(InvoiceMarkUncollectibleRequested, invoice.invoice_id))
    state, voided = fold(state, request(InvoiceVoidRequested, invoice.invoice_id))
    assert [type(f) for f in voided] == [InvoiceVoided, CreditBalanceTransaction]
    assert state.grants["credgr_cus_1"].ledger_balance_minor == 1000


def test_a_fully_credited_period_invoice_is_paid_so_it_cannot_be_voided():
    # 100 tokens x 3 = 300, all credited: 0 due, paid at finalization (Stripe).
    state, invoice = period_invoice("100")
    assert invoice.amount_due_minor == 0
    _, refused = fold(state, request(InvoiceVoidRequested, invoice.invoice_id))
    assert codes(refused) == ["invoice_unexpected_status"]


def test_a_customer_with_drafts_items_and_settled_invoices_survives_the_state_store():
    state, _ = one_off(customer(), item("ii_a", 1000))
    state, _ = fold(state, request(InvoiceMarkUncollectibleRequested), item("ii_b", 5, "2", "2.5"),
                    InvoiceCreated(invoice_id="in_two", customer_id="cus_1", currency="usd", created_at_ms=NOW_MS))
    loaded = stored.loads(stored.dumps(state))
    assert loaded.settled_invoices == {"in_one": "uncollectible"}
    assert loaded.invoice_items == state.invoice_items and loaded.drafts == state.drafts
    assert loaded.invoices["in_one"] == state.invoices["in_one"]


@pytest.mark.parametrize("retried", ["item", "invoice"])
def test_a_retried_create_changes_nothing(retried):
    state, _ = fold(customer(), item("ii_a", 1000))
    draft = InvoiceCreated(invoice_id="in_one", customer_id="cus_1", currency="usd", invoice_item_ids=("ii_a",),
                           created_at_ms=NOW_MS)
    state, _ = fold(state, draft)
    state, emitted = fold(state, item("ii_a", 1000) if retried == "item" else draft)
    assert emitted == [] and state.invoice_items["ii_a"].invoice_id == "in_one"
