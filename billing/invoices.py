"""Invoice computation: (period, usage per meter, items, prices, grants) -> finalized invoice + ledger writes.

Lines follow the subscription items' order. Each line's amount is rounded HALF UP to a whole minor
unit before lines are summed. Credits apply at finalization, only to metered lines, line by line in
invoice order, each line drawing from the eligible grants in Stripe's application order. Licensed
lines are billed and never credited. The same function serves an invoice preview: call it and
discard the transactions and grant states.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

from billing import ids
from billing.errors import CurrencyMismatch, InvoiceAlreadyVoided, MeteredPriceWithoutMeter, UnknownPrice
from billing.facts import (
    AppliedCredit,
    BillingReason,
    CreditBalanceTransaction,
    InvoiceFinalized,
    InvoiceLine,
    InvoiceVoided,
    PriceCreated,
    SubscriptionItem,
    UsageType,
)
from billing.grants import (
    GrantState,
    apply_credits,
    grant_is_eligible,
    in_application_order,
    price_in_scope,
    reinstate_invoice_credits,
)
from billing.invariants import check, check_amount_due, check_credit_within_line
from billing.meters import billable_quantity
from billing.money import line_amount_minor_half_up
from billing.periods import BillingPeriod

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class InvoiceComputation:
    """A finalized invoice, the transactions it writes, and every grant state after it."""

    invoice: InvoiceFinalized
    transactions: tuple[CreditBalanceTransaction, ...]
    grants: Mapping[str, GrantState]


def _price_for(item: SubscriptionItem, prices: Mapping[str, PriceCreated], currency: str) -> PriceCreated:
    price = prices.get(item.price_id)
    if price is None:
        raise UnknownPrice(f"subscription item {item.item_id} has unknown price {item.price_id}")
    if price.currency != currency:
        raise CurrencyMismatch(f"price {price.price_id} is in {price.currency}, the subscription in {currency}")
    if price.usage_type == UsageType.METERED and price.meter_id is None:
        raise MeteredPriceWithoutMeter(f"metered price {price.price_id} has no meter")
    return price


def rate_lines(
    invoice_id: str,
    items: Sequence[SubscriptionItem],
    prices: Mapping[str, PriceCreated],
    usage_by_meter_id: Mapping[str, Decimal],
    currency: str,
) -> tuple[InvoiceLine, ...]:
    """Uncredited lines in item order: metered = billable usage (a negative total bills 0) x unit price,
    licensed = item quantity x unit price, each rounded half up to a whole minor unit."""
    lines = []
    for item in items:
        price = _price_for(item, prices, currency)
        if price.usage_type == UsageType.METERED:
            quantity = billable_quantity(usage_by_meter_id.get(price.meter_id, _ZERO))
        else:
            quantity = Decimal(item.quantity)
        lines.append(
            InvoiceLine(
                line_id=ids.invoice_line_id(invoice_id, item.item_id),
                subscription_item_id=item.item_id,
                price_id=price.price_id,
                meter_id=price.meter_id if price.usage_type == UsageType.METERED else None,
                quantity=quantity,
                unit_amount_decimal=price.unit_amount_decimal,
                amount_minor=line_amount_minor_half_up(quantity, price.unit_amount_decimal),
            )
        )
    return tuple(lines)


def apply_credits_to_lines(
    invoice_id: str,
    lines: Sequence[InvoiceLine],
    prices: Mapping[str, PriceCreated],
    grants: Mapping[str, GrantState],
    period_end_ms: int,
    currency: str,
    applied_at_ms: int,
) -> tuple[tuple[InvoiceLine, ...], tuple[CreditBalanceTransaction, ...], dict[str, GrantState]]:
    """Credit the metered lines in invoice order from the eligible grants in application order.

    Returns the lines with their credits, the credits_applied transactions, and all grant states.
    """
    updated_grants = dict(grants)
    ordered_grant_ids = [
        state.grant_id
        for state in in_application_order(grants.values())
        if grant_is_eligible(state, period_end_ms, currency)
    ]
    credited_lines = []
    transactions: list[CreditBalanceTransaction] = []
    for line in lines:
        price = prices[line.price_id]
        remaining_minor = line.amount_minor
        credits = []
        for grant_id in ordered_grant_ids:
            if remaining_minor == 0:
                break
            state = updated_grants[grant_id]
            if state.ledger_balance_minor == 0 or not price_in_scope(state.grant.scope, price):
                continue
            credit_minor = min(remaining_minor, state.ledger_balance_minor)
            check_credit_within_line(credit_minor, remaining_minor, line.line_id)
            state, transaction = apply_credits(state, credit_minor, invoice_id, line.line_id, applied_at_ms)
            updated_grants[grant_id] = state
            transactions.append(transaction)
            credits.append(
                AppliedCredit(
                    credit_balance_transaction_id=transaction.transaction_id,
                    grant_id=grant_id,
                    amount_minor=credit_minor,
                )
            )
            remaining_minor -= credit_minor
        credited_lines.append(replace(line, credits=tuple(credits)))
    return tuple(credited_lines), tuple(transactions), updated_grants


def compute_invoice(
    *,
    customer_id: str,
    subscription_id: str,
    currency: str,
    period: BillingPeriod,
    billing_reason: BillingReason,
    finalized_at_ms: int,
    items: Sequence[SubscriptionItem],
    prices: Mapping[str, PriceCreated],
    usage_by_meter_id: Mapping[str, Decimal],
    grants: Mapping[str, GrantState],
) -> InvoiceComputation:
    """Finalize the invoice of one subscription period.

    `usage_by_meter_id` holds each meter's aggregated value for the period (before the negative
    floor); `grants` all of the customer's grants by id (ineligible ones are left untouched).
    `finalized_at_ms` is also the effective time of the credits_applied transactions; pass the
    period's due time (end + grace) rather than the tick that noticed it, so that the invoice does not
    depend on how often time facts arrive.
    """
    invoice_id = ids.invoice_id(subscription_id, period.start_ms)
    lines = rate_lines(invoice_id, items, prices, usage_by_meter_id, currency)
    lines, transactions, updated_grants = apply_credits_to_lines(
        invoice_id, lines, prices, grants, period.end_ms, currency, finalized_at_ms
    )
    subtotal_minor = sum(line.amount_minor for line in lines)
    total_credits_minor = sum(credit.amount_minor for line in lines for credit in line.credits)
    amount_due_minor = subtotal_minor - total_credits_minor
    check_amount_due(amount_due_minor, invoice_id)
    check(
        total_credits_minor == sum(transaction.amount_minor for transaction in transactions),
        f"invoice {invoice_id}: credits on lines differ from credits_applied transactions",
    )
    invoice = InvoiceFinalized(
        invoice_id=invoice_id,
        customer_id=customer_id,
        subscription_id=subscription_id,
        currency=currency,
        period_start_ms=period.start_ms,
        period_end_ms=period.end_ms,
        billing_reason=billing_reason,
        finalized_at_ms=finalized_at_ms,
        lines=lines,
        subtotal_minor=subtotal_minor,
        total_credits_minor=total_credits_minor,
        amount_due_minor=amount_due_minor,
    )
    return InvoiceComputation(invoice=invoice, transactions=transactions, grants=updated_grants)


@dataclass(frozen=True, slots=True)
class InvoiceVoiding:
    """A voided invoice, the transactions that give its credits back, and every grant state after it."""

    voided: InvoiceVoided
    transactions: tuple[CreditBalanceTransaction, ...]
    grants: Mapping[str, GrantState]


def void_invoice(
    invoice: InvoiceFinalized,
    grants: Mapping[str, GrantState],
    voided_at_ms: int,
    already_voided_invoice_ids: frozenset[str] = frozenset(),
) -> InvoiceVoiding:
    """Void a finalized invoice: each applied credit goes back to its grant, and expires at once if the
    grant has expired by `voided_at_ms`. Raises InvoiceAlreadyVoided for a second void."""
    if invoice.invoice_id in already_voided_invoice_ids:
        raise InvoiceAlreadyVoided(f"invoice {invoice.invoice_id} is already voided")
    updated_grants = dict(grants)
    transactions: list[CreditBalanceTransaction] = []
    for line in invoice.lines:
        for credit in line.credits:
            state, written = reinstate_invoice_credits(
                updated_grants[credit.grant_id], credit.amount_minor, invoice.invoice_id, line.line_id, voided_at_ms
            )
            updated_grants[credit.grant_id] = state
            transactions.extend(written)
    voided = InvoiceVoided(invoice_id=invoice.invoice_id, customer_id=invoice.customer_id, voided_at_ms=voided_at_ms)
    return InvoiceVoiding(voided=voided, transactions=tuple(transactions), grants=updated_grants)
