"""Credit grants: a grant's state with its append-only ledger, and the rules that write to it.

Every change is a pure function (state, input) -> (new state, transactions written). A transaction
is a `CreditBalanceTransaction` with a deterministic id (billing.ids), so re-running a rule on the
same input writes the same facts. Every write re-checks that the transactions sum to the ledger
balance, which is never negative.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from billing import ids
from billing.errors import GrantAlreadyApplied, GrantAlreadyExpired, GrantAlreadyVoided, TooManyUnusedGrants
from billing.facts import (
    CreditBalanceTransaction,
    CreditGrantCreated,
    CreditGrantUpdated,
    GrantCategory,
    GrantPriceType,
    GrantScope,
    PriceCreated,
    TransactionReason,
    TransactionType,
    UsageType,
)
from billing.invariants import check, check_credit_within_grant, check_ledger_balance

MAX_UNUSED_GRANTS_PER_CUSTOMER = 100  # Stripe

_CREDIT_REASONS = frozenset(
    {TransactionReason.CREDITS_GRANTED, TransactionReason.CREDITS_APPLICATION_INVOICE_VOIDED}
)


@dataclass(frozen=True, slots=True)
class GrantState:
    """One credit grant: its creation fact, what changed since, and its ledger."""

    grant: CreditGrantCreated
    expires_at_ms: int | None
    metadata: Mapping[str, str]
    transactions: tuple[CreditBalanceTransaction, ...]
    ledger_balance_minor: int
    voided_at_ms: int | None = None
    expired_at_ms: int | None = None  # when a credits_expired was written for expiry (explicit or at expires_at)

    @property
    def grant_id(self) -> str:
        return self.grant.grant_id

    @property
    def currency(self) -> str:
        return self.grant.currency

    def is_voided(self) -> bool:
        return self.voided_at_ms is not None

    def is_expired_at(self, instant_ms: int) -> bool:
        """Expired explicitly, or its expires_at has been reached at `instant_ms`."""
        if self.expired_at_ms is not None:
            return True
        return self.expires_at_ms is not None and self.expires_at_ms <= instant_ms

    def has_been_applied(self) -> bool:
        """Whether any of the grant was ever applied to an invoice (even if later reinstated)."""
        return any(txn.reason == TransactionReason.CREDITS_APPLIED for txn in self.transactions)

    def transactions_sum_minor(self) -> int:
        """Credits minus debits over the whole ledger."""
        return sum(signed_amount_minor(txn) for txn in self.transactions)


def signed_amount_minor(transaction: CreditBalanceTransaction) -> int:
    """A transaction's effect on the ledger: + for a credit, - for a debit."""
    return transaction.amount_minor if transaction.type == TransactionType.CREDIT else -transaction.amount_minor


def _transaction(
    grant: GrantState | CreditGrantCreated,
    reason: TransactionReason,
    amount_minor: int,
    effective_at_ms: int,
    invoice_id: str | None = None,
    invoice_line_id: str | None = None,
) -> CreditBalanceTransaction:
    created = grant.grant if isinstance(grant, GrantState) else grant
    return CreditBalanceTransaction(
        transaction_id=ids.credit_balance_transaction_id(reason, created.grant_id, invoice_id, invoice_line_id),
        customer_id=created.customer_id,
        grant_id=created.grant_id,
        currency=created.currency,
        amount_minor=amount_minor,
        type=TransactionType.CREDIT if reason in _CREDIT_REASONS else TransactionType.DEBIT,
        reason=reason,
        invoice_id=invoice_id,
        invoice_line_id=invoice_line_id,
        effective_at_ms=effective_at_ms,
    )


def _record(state: GrantState, transaction: CreditBalanceTransaction, **changes: object) -> GrantState:
    """Append one transaction (positive amount, unique id) and check the ledger invariants."""
    check(transaction.amount_minor > 0, f"transaction {transaction.transaction_id} amount is not positive")
    check(
        all(existing.transaction_id != transaction.transaction_id for existing in state.transactions),
        f"transaction {transaction.transaction_id} is already in grant {state.grant_id}'s ledger",
    )
    new_state = replace(
        state,
        transactions=state.transactions + (transaction,),
        ledger_balance_minor=state.ledger_balance_minor + signed_amount_minor(transaction),
        **changes,
    )
    check_ledger_balance(new_state.transactions_sum_minor(), new_state.ledger_balance_minor, state.grant_id)
    return new_state


def create_grant(created: CreditGrantCreated) -> tuple[GrantState, tuple[CreditBalanceTransaction, ...]]:
    """A new grant and its credits_granted transaction (effective at the grant's effective_at)."""
    check(created.amount_minor > 0, f"grant {created.grant_id} amount {created.amount_minor} is not positive")
    check(0 <= created.priority <= 100, f"grant {created.grant_id} priority {created.priority} is outside 0..100")
    empty = GrantState(
        grant=created,
        expires_at_ms=created.expires_at_ms,
        metadata=MappingProxyType(dict(created.metadata)),
        transactions=(),
        ledger_balance_minor=0,
    )
    granted = _transaction(created, TransactionReason.CREDITS_GRANTED, created.amount_minor, created.effective_at_ms)
    return _record(empty, granted), (granted,)


def update_grant(state: GrantState, updated: CreditGrantUpdated) -> GrantState:
    """Apply an update: only expires_at and metadata can change (Stripe)."""
    return replace(state, expires_at_ms=updated.expires_at_ms, metadata=MappingProxyType(dict(updated.metadata)))


def _ensure_open(state: GrantState) -> None:
    if state.is_voided():
        raise GrantAlreadyVoided(f"credit grant {state.grant_id} is voided")
    if state.expired_at_ms is not None:
        raise GrantAlreadyExpired(f"credit grant {state.grant_id} has expired")


def void_grant(state: GrantState, voided_at_ms: int) -> tuple[GrantState, tuple[CreditBalanceTransaction, ...]]:
    """Void a grant that was never applied: a credits_voided debit for its remaining balance.

    Raises GrantAlreadyApplied if any of it was ever applied, GrantAlreadyVoided / GrantAlreadyExpired
    if it is already closed.
    """
    _ensure_open(state)
    if state.has_been_applied():
        raise GrantAlreadyApplied(f"credit grant {state.grant_id} has been applied and cannot be voided")
    if state.ledger_balance_minor == 0:
        return replace(state, voided_at_ms=voided_at_ms), ()
    voided = _transaction(state, TransactionReason.CREDITS_VOIDED, state.ledger_balance_minor, voided_at_ms)
    return _record(state, voided, voided_at_ms=voided_at_ms), (voided,)


def expire_grant(state: GrantState, expired_at_ms: int) -> tuple[GrantState, tuple[CreditBalanceTransaction, ...]]:
    """Expire a grant (explicitly, or at its expires_at): a credits_expired debit for its remaining balance."""
    _ensure_open(state)
    if state.ledger_balance_minor == 0:
        return replace(state, expired_at_ms=expired_at_ms), ()
    expired = _transaction(state, TransactionReason.CREDITS_EXPIRED, state.ledger_balance_minor, expired_at_ms)
    return _record(state, expired, expired_at_ms=expired_at_ms), (expired,)


def apply_credits(
    state: GrantState, amount_minor: int, invoice_id: str, invoice_line_id: str, effective_at_ms: int
) -> tuple[GrantState, CreditBalanceTransaction]:
    """Debit `amount_minor` from the grant for one invoice line (credits_applied)."""
    check_credit_within_grant(amount_minor, state.ledger_balance_minor, state.grant_id)
    applied = _transaction(
        state, TransactionReason.CREDITS_APPLIED, amount_minor, effective_at_ms, invoice_id, invoice_line_id
    )
    return _record(state, applied), applied


def reinstate_invoice_credits(
    state: GrantState, amount_minor: int, invoice_id: str, invoice_line_id: str, invoice_voided_at_ms: int
) -> tuple[GrantState, tuple[CreditBalanceTransaction, ...]]:
    """Give back credits of a voided invoice's line (credits_application_invoice_voided).

    If the grant has expired by then, the reinstated credits expire at once: a credits_expired right
    after, with the same invoice and line in its id so it never collides with the grant's own expiry.
    """
    reinstated = _transaction(
        state,
        TransactionReason.CREDITS_APPLICATION_INVOICE_VOIDED,
        amount_minor,
        invoice_voided_at_ms,
        invoice_id,
        invoice_line_id,
    )
    state = _record(state, reinstated)
    if not state.is_expired_at(invoice_voided_at_ms):
        return state, (reinstated,)
    expired = _transaction(
        state, TransactionReason.CREDITS_EXPIRED, amount_minor, invoice_voided_at_ms, invoice_id, invoice_line_id
    )
    expired_at_ms = state.expired_at_ms if state.expired_at_ms is not None else invoice_voided_at_ms
    return _record(state, expired, expired_at_ms=expired_at_ms), (reinstated, expired)


# --- eligibility and order ------------------------------------------------------------------------


def price_in_scope(scope: GrantScope, price: PriceCreated) -> bool:
    """Whether a grant with `scope` may pay for `price`: never a licensed price; price_type metered
    covers every metered price, a price list covers the listed prices."""
    if price.usage_type != UsageType.METERED:
        return False
    if scope.price_type == GrantPriceType.METERED:
        return True
    return price.price_id in scope.price_ids


def grant_is_eligible(state: GrantState, period_end_ms: int, currency: str) -> bool:
    """Whether the grant may pay an invoice for a period ending at `period_end_ms` in `currency`:
    same currency, not voided, period_end >= effective_at, period_end < expires_at (if set), balance left."""
    if state.is_voided() or state.currency != currency or state.ledger_balance_minor <= 0:
        return False
    if period_end_ms < state.grant.effective_at_ms:
        return False
    return state.expires_at_ms is None or period_end_ms < state.expires_at_ms


def application_order_key(state: GrantState) -> tuple[int, int, int, int, int, int, str]:
    """Sort key for the order grants are applied in (Stripe): priority ascending, then earliest
    expires_at (never-expiring last), promotional before paid, earliest effective_at, earliest
    created, and the grant id so that the order is total."""
    created = state.grant
    never_expires = 1 if state.expires_at_ms is None else 0
    return (
        created.priority,
        never_expires,
        state.expires_at_ms or 0,
        0 if created.category == GrantCategory.PROMOTIONAL else 1,
        created.effective_at_ms,
        created.created_at_ms,
        created.grant_id,
    )


def in_application_order(grants: Iterable[GrantState]) -> list[GrantState]:
    """Grants sorted by `application_order_key`."""
    return sorted(grants, key=application_order_key)


# --- limits and balances ----------------------------------------------------------------------------


def is_unused(state: GrantState, now_ms: int) -> bool:
    """Unused (Stripe): not voided, not expired, and pending (not yet effective) or with a positive balance."""
    if state.is_voided() or state.is_expired_at(now_ms):
        return False
    return state.grant.effective_at_ms > now_ms or state.ledger_balance_minor > 0


def ensure_room_for_another_grant(grants: Iterable[GrantState], now_ms: int) -> None:
    """Raise TooManyUnusedGrants if the customer already has 100 unused grants."""
    unused_count = sum(1 for state in grants if is_unused(state, now_ms))
    if unused_count >= MAX_UNUSED_GRANTS_PER_CUSTOMER:
        raise TooManyUnusedGrants(
            f"a customer can have at most {MAX_UNUSED_GRANTS_PER_CUSTOMER} unused credit grants"
        )


@dataclass(frozen=True, slots=True)
class CreditBalance:
    """One currency's balances (Stripe's credit_balance_summary.balances[])."""

    currency: str
    available_balance_minor: int
    ledger_balance_minor: int


def available_balance_minor(state: GrantState, now_ms: int, held_by_drafts_minor: int = 0) -> int:
    """Ledger balance minus credits expired by `now_ms` (not yet written) and credits held by draft invoices."""
    if state.is_voided() or state.is_expired_at(now_ms):
        return 0
    return max(0, state.ledger_balance_minor - held_by_drafts_minor)


def credit_balance_summary(
    grants: Iterable[GrantState],
    now_ms: int,
    held_by_drafts_minor: Mapping[str, int] | None = None,
) -> tuple[CreditBalance, ...]:
    """Per-currency ledger and available balances of `grants` (already filtered by the caller, e.g. by
    scope or by grant), sorted by currency. `held_by_drafts_minor` maps grant id to credits that draft
    invoices hold."""
    held = held_by_drafts_minor or {}
    ledger: dict[str, int] = {}
    available: dict[str, int] = {}
    for state in grants:
        check_ledger_balance(state.transactions_sum_minor(), state.ledger_balance_minor, state.grant_id)
        ledger[state.currency] = ledger.get(state.currency, 0) + state.ledger_balance_minor
        available[state.currency] = available.get(state.currency, 0) + available_balance_minor(
            state, now_ms, held.get(state.grant_id, 0)
        )
    return tuple(
        CreditBalance(
            currency=currency, available_balance_minor=available[currency], ledger_balance_minor=ledger[currency]
        )
        for currency in sorted(ledger)
    )
