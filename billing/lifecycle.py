"""Invoice lifecycle, as Stripe has it: draft -> open (finalize) -> paid (pay) | uncollectible
(mark_uncollectible) | void (only from open or uncollectible); an uncollectible invoice can still be
paid or voided. A finalized invoice whose amount due is 0 is paid at once (Stripe), so it cannot be
voided. One-off invoices are drafts of invoice items until finalized; period invoices are born
finalized. The same rules serve the worker's fold (the authority, in log order) and the API (which
checks them against the projection first, to answer at once).

Credits: a one-off invoice never draws on credit grants. Stripe applies billing credits only to
subscription lines of metered prices (STRIPE.md "Invoices": never to one-off items), so a $10
funding invoice is due in full. That is decided here, in `finalize_one_off`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from billing import ids
from billing.errors import BillingError
from billing.facts import BillingReason, InvoiceCreated, InvoiceFinalized, InvoiceItemCreated, InvoiceLine
from billing.invariants import check, check_amount_due
from billing.money import line_amount_minor_half_up

# Stripe: an invoice holds at most 250 line items. With each item's amount at most
# MAX_INVOICE_ITEM_AMOUNT_MINOR, an invoice's total stays far within a 64-bit integer.
MAX_INVOICE_ITEMS = 250
MAX_INVOICE_ITEM_AMOUNT_MINOR = 10**15
MAX_PENDING_INVOICE_ITEMS = 1000  # per customer: a bound on the worker's state (OURS)


class InvoiceStatus(enum.StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    UNCOLLECTIBLE = "uncollectible"
    VOID = "void"


class InvoiceAction(enum.StrEnum):
    FINALIZE = "finalize"
    PAY = "pay"
    MARK_UNCOLLECTIBLE = "mark_uncollectible"
    VOID = "void"


# From which statuses each action may start (Stripe's invoice state machine).
ALLOWED_FROM: Mapping[InvoiceAction, frozenset[InvoiceStatus]] = {
    InvoiceAction.FINALIZE: frozenset({InvoiceStatus.DRAFT}),
    InvoiceAction.PAY: frozenset({InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE}),
    InvoiceAction.MARK_UNCOLLECTIBLE: frozenset({InvoiceStatus.OPEN}),
    InvoiceAction.VOID: frozenset({InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE}),
}

_REFUSALS = {
    InvoiceAction.FINALIZE: "Only a draft invoice can be finalized",
    InvoiceAction.PAY: "Only an open or uncollectible invoice can be paid",
    InvoiceAction.MARK_UNCOLLECTIBLE: "Only an open invoice can be marked uncollectible",
    InvoiceAction.VOID: "You can only void an open or uncollectible invoice",
}


class InvoiceNotFound(BillingError):
    code = "resource_missing"


class InvoiceStatusForbids(BillingError):
    """The action is not allowed from the invoice's status (e.g. voiding a paid invoice)."""

    code = "invoice_unexpected_status"


class InvoiceItemNotPending(BillingError):
    """An invoice item that is on a finalized invoice, or deleted, cannot change."""

    code = "invoice_item_not_pending"


class TooManyInvoiceItems(BillingError):
    code = "too_many_invoice_items"


def check_action(invoice_id: str, status: InvoiceStatus, action: InvoiceAction) -> None:
    """Raise InvoiceStatusForbids unless `action` may start from `status`."""
    if status not in ALLOWED_FROM[action]:
        raise InvoiceStatusForbids(f"{_REFUSALS[action]}; invoice {invoice_id} is {status}.")


def status_after_finalization(amount_due_minor: int) -> InvoiceStatus:
    """A finalized invoice with nothing due is paid at once (Stripe); else it is open."""
    return InvoiceStatus.PAID if amount_due_minor == 0 else InvoiceStatus.OPEN


def finalized_status(invoice: InvoiceFinalized, settled: Mapping[str, str], voided_ids: Iterable[str]) -> InvoiceStatus:
    """The status of a finalized invoice: void, else paid or uncollectible as settled, else as finalized."""
    if invoice.invoice_id in voided_ids:
        return InvoiceStatus.VOID
    if invoice.invoice_id in settled:
        return InvoiceStatus(settled[invoice.invoice_id])
    return status_after_finalization(invoice.amount_due_minor)


def finalize_one_off(draft: InvoiceCreated, items: Iterable[InvoiceItemCreated], finalized_at_ms: int) -> InvoiceFinalized:
    """The finalized one-off invoice: one line per item in order, each quantity x unit amount rounded
    half up, no credits (see the module doc).
    Its period is its creation instant (Stripe: period_start = period_end for a one-off invoice)."""
    lines = tuple(
        InvoiceLine(line_id=ids.invoice_line_id(draft.invoice_id, item.invoice_item_id), price_id=item.price_id,
                    quantity=item.quantity, unit_amount_decimal=item.unit_amount_decimal,
                    # the same rule as a subscription line (and as the item's amount the API showed)
                    amount_minor=line_amount_minor_half_up(item.quantity, item.unit_amount_decimal),
                    invoice_item_id=item.invoice_item_id, description=item.description)
        for item in items)
    check(len(lines) <= MAX_INVOICE_ITEMS, f"invoice {draft.invoice_id}: {len(lines)} lines")
    subtotal_minor = sum(line.amount_minor for line in lines)
    check_amount_due(subtotal_minor, draft.invoice_id)
    return InvoiceFinalized(
        invoice_id=draft.invoice_id, customer_id=draft.customer_id, subscription_id=None, currency=draft.currency,
        period_start_ms=draft.created_at_ms, period_end_ms=draft.created_at_ms, billing_reason=BillingReason.MANUAL,
        finalized_at_ms=finalized_at_ms, lines=lines, subtotal_minor=subtotal_minor, total_credits_minor=0,
        amount_due_minor=subtotal_minor)
