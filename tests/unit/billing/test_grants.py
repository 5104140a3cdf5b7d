import pytest

from billing.errors import GrantAlreadyApplied, GrantAlreadyExpired, GrantAlreadyVoided, TooManyUnusedGrants
from billing.facts import (
    CreditGrantUpdated,
    GrantCategory,
    GrantScope,
    TransactionReason,
    TransactionType,
    UsageType,
)
from billing.grants import (
    apply_credits,
    credit_balance_summary,
    create_grant,
    ensure_room_for_another_grant,
    expire_grant,
    grant_is_eligible,
    in_application_order,
    is_unused,
    price_in_scope,
    reinstate_invoice_credits,
    update_grant,
    void_grant,
)

from .conftest import make_grant, make_grant_created, make_price


def reasons(state):
    return [(txn.reason, txn.amount_minor) for txn in state.transactions]


def test_creating_a_grant_writes_credits_granted_for_its_amount():
    state, written = create_grant(make_grant_created(amount_minor=1000, effective_at_ms=42))
    assert reasons(state) == [(TransactionReason.CREDITS_GRANTED, 1000)]
    assert written == state.transactions
    assert written[0].type == TransactionType.CREDIT and written[0].effective_at_ms == 42
    assert state.ledger_balance_minor == 1000


@pytest.mark.parametrize(
    ("effective_at_ms", "expires_at_ms", "currency", "period_end_ms", "eligible"),
    [
        (100, None, "usd", 100, True),  # period_end >= effective_at, inclusive
        (101, None, "usd", 100, False),
        (0, 200, "usd", 199, True),
        (0, 200, "usd", 200, False),  # period_end < expires_at, exclusive
        (0, None, "eur", 100, False),
    ],
)
def test_a_grant_is_eligible_for_an_invoice_by_effective_expiry_and_currency(
    effective_at_ms, expires_at_ms, currency, period_end_ms, eligible
):
    state = make_grant(effective_at_ms=effective_at_ms, expires_at_ms=expires_at_ms)
    assert grant_is_eligible(state, period_end_ms, currency) is eligible


def test_a_grant_without_balance_or_voided_is_not_eligible():
    state = make_grant()
    spent, _ = apply_credits(state, 1000, "in_1", "il_1", 5)
    voided, _ = void_grant(make_grant(), 5)
    assert not grant_is_eligible(spent, 10, "usd")
    assert not grant_is_eligible(voided, 10, "usd")


@pytest.mark.parametrize(
    ("scope", "price", "in_scope"),
    [
        (GrantScope(price_type="metered"), make_price(), True),
        (GrantScope(price_type="metered"), make_price(usage_type=UsageType.LICENSED), False),
        (GrantScope(price_ids=("price_input",)), make_price(), True),
        (GrantScope(price_ids=("price_output",)), make_price(), False),
        (GrantScope(price_ids=("price_seat",)), make_price(price_id="price_seat", usage_type=UsageType.LICENSED), False),
    ],
)
def test_a_grant_pays_only_metered_prices_in_its_scope(scope, price, in_scope):
    assert price_in_scope(scope, price) is in_scope


def test_grants_apply_by_priority_then_expiry_then_promotional_then_effective_then_created():
    grants = [
        make_grant(grant_id="never_expires", priority=10),
        make_grant(grant_id="low_priority", priority=90, expires_at_ms=10),
        make_grant(grant_id="expires_late", priority=10, expires_at_ms=500),
        make_grant(grant_id="paid_early", priority=10, expires_at_ms=100, category=GrantCategory.PAID),
        make_grant(grant_id="promotional", priority=10, expires_at_ms=100, category=GrantCategory.PROMOTIONAL),
        make_grant(grant_id="paid_late_effective", priority=10, expires_at_ms=100, effective_at_ms=5),
        make_grant(grant_id="paid_late_created", priority=10, expires_at_ms=100, created_at_ms=5),
        make_grant(grant_id="top_priority", priority=0),
    ]
    assert [state.grant_id for state in in_application_order(reversed(grants))] == [
        "top_priority",
        "promotional",
        "paid_early",
        "paid_late_created",
        "paid_late_effective",
        "expires_late",
        "never_expires",
        "low_priority",
    ]


def test_voiding_an_unapplied_grant_writes_credits_voided_for_the_remaining_balance():
    state, written = void_grant(make_grant(amount_minor=700), voided_at_ms=9)
    assert reasons(state) == [(TransactionReason.CREDITS_GRANTED, 700), (TransactionReason.CREDITS_VOIDED, 700)]
    assert written[0].type == TransactionType.DEBIT and written[0].effective_at_ms == 9
    assert state.ledger_balance_minor == 0 and state.is_voided()


def test_a_grant_that_was_ever_applied_cannot_be_voided_even_after_reinstatement():
    state, _ = apply_credits(make_grant(), 300, "in_1", "il_1", 5)
    state, _ = reinstate_invoice_credits(state, 300, "in_1", "il_1", 6)
    with pytest.raises(GrantAlreadyApplied) as raised:
        void_grant(state, 7)
    assert raised.value.code == "credit_grant_already_applied"


def test_expiring_a_grant_writes_credits_expired_for_the_remaining_balance():
    state, _ = apply_credits(make_grant(amount_minor=1000), 400, "in_1", "il_1", 5)
    state, written = expire_grant(state, 8)
    assert [(txn.reason, txn.amount_minor) for txn in written] == [(TransactionReason.CREDITS_EXPIRED, 600)]
    assert state.ledger_balance_minor == 0


def test_a_fully_spent_grant_expires_without_a_zero_transaction():
    state, _ = apply_credits(make_grant(amount_minor=100), 100, "in_1", "il_1", 5)
    state, written = expire_grant(state, 8)
    assert written == () and state.expired_at_ms == 8


def test_a_closed_grant_cannot_be_voided_or_expired_again():
    voided, _ = void_grant(make_grant(), 1)
    expired, _ = expire_grant(make_grant(), 1)
    with pytest.raises(GrantAlreadyVoided):
        expire_grant(voided, 2)
    with pytest.raises(GrantAlreadyExpired):
        void_grant(expired, 2)
    with pytest.raises(GrantAlreadyExpired):
        expire_grant(expired, 2)


def test_voiding_an_invoice_reinstates_its_credits():
    state, _ = apply_credits(make_grant(), 300, "in_1", "il_1", 5)
    state, written = reinstate_invoice_credits(state, 300, "in_1", "il_1", 6)
    assert [(txn.reason, txn.type) for txn in written] == [
        (TransactionReason.CREDITS_APPLICATION_INVOICE_VOIDED, TransactionType.CREDIT)
    ]
    assert state.ledger_balance_minor == 1000


def test_credits_reinstated_to_an_expired_grant_expire_at_once():
    state, _ = apply_credits(make_grant(expires_at_ms=100), 300, "in_1", "il_1", 5)
    state, _ = expire_grant(state, 100)
    state, written = reinstate_invoice_credits(state, 300, "in_1", "il_1", 150)
    assert [(txn.reason, txn.amount_minor) for txn in written] == [
        (TransactionReason.CREDITS_APPLICATION_INVOICE_VOIDED, 300),
        (TransactionReason.CREDITS_EXPIRED, 300),
    ]
    assert state.ledger_balance_minor == 0
    assert len({txn.transaction_id for txn in state.transactions}) == len(state.transactions)


def test_credits_reinstated_after_expires_at_passed_expire_at_once_even_before_the_expiry_is_written():
    state, _ = apply_credits(make_grant(expires_at_ms=100), 300, "in_1", "il_1", 5)
    state, written = reinstate_invoice_credits(state, 300, "in_1", "il_1", 150)
    assert [txn.reason for txn in written][-1] == TransactionReason.CREDITS_EXPIRED
    assert state.ledger_balance_minor == 700


def test_an_update_changes_only_expiry_and_metadata():
    state = make_grant(expires_at_ms=100)
    updated = update_grant(
        state, CreditGrantUpdated(grant_id="credgr_1", customer_id="cus_jenny", metadata={"k": "v"}, updated_at_ms=1)
    )
    assert updated.expires_at_ms is None and dict(updated.metadata) == {"k": "v"}
    assert updated.grant == state.grant and updated.transactions == state.transactions


def test_unused_grants_are_those_pending_or_with_balance_and_neither_voided_nor_expired():
    spent, _ = apply_credits(make_grant(), 1000, "in_1", "il_1", 5)
    voided, _ = void_grant(make_grant(), 5)
    assert is_unused(make_grant(), now_ms=10)
    assert is_unused(make_grant(effective_at_ms=50), now_ms=10)
    assert not is_unused(spent, now_ms=10)
    assert not is_unused(voided, now_ms=10)
    assert not is_unused(make_grant(expires_at_ms=10), now_ms=10)


def test_a_customer_can_hold_at_most_100_unused_grants():
    grants = [make_grant(grant_id=f"credgr_{index}") for index in range(99)]
    ensure_room_for_another_grant(grants, now_ms=0)
    grants.append(make_grant(grant_id="credgr_99"))
    with pytest.raises(TooManyUnusedGrants):
        ensure_room_for_another_grant(grants, now_ms=0)
    spent, _ = apply_credits(grants[0], 1000, "in_1", "il_1", 0)
    ensure_room_for_another_grant([spent, *grants[1:]], now_ms=0)


def test_available_balance_excludes_expired_credits_and_credits_held_by_drafts():
    usd = make_grant(grant_id="usd_1", amount_minor=1000)
    usd_expiring = make_grant(grant_id="usd_2", amount_minor=500, expires_at_ms=50)
    eur = make_grant(grant_id="eur_1", amount_minor=300, currency="eur")
    summary = credit_balance_summary([usd, usd_expiring, eur], now_ms=60, held_by_drafts_minor={"usd_1": 200})
    assert [(b.currency, b.ledger_balance_minor, b.available_balance_minor) for b in summary] == [
        ("eur", 300, 300),
        ("usd", 1500, 800),
    ]
