"""Money invariants, checked where money is written (and again where it is read, by callers).

`check` raises `InvariantViolation` instead of using `assert`, so the checks survive `python -O`.
"""

from __future__ import annotations

from billing.errors import InvariantViolation


def check(condition: bool, message: str) -> None:
    """Raise InvariantViolation(message) unless `condition` holds. Survives `python -O`."""
    if not condition:
        raise InvariantViolation(message)


def check_credit_within_line(credit_minor: int, line_remaining_minor: int, line_id: str) -> None:
    """Credits applied to a line never exceed what is left of the line's amount, and are positive."""
    check(credit_minor > 0, f"credit on line {line_id} is {credit_minor}, not positive")
    check(
        credit_minor <= line_remaining_minor,
        f"credit {credit_minor} exceeds the remaining {line_remaining_minor} of line {line_id}",
    )


def check_credit_within_grant(credit_minor: int, grant_balance_minor: int, grant_id: str) -> None:
    """Credits applied from a grant never exceed its balance."""
    check(
        credit_minor <= grant_balance_minor,
        f"credit {credit_minor} exceeds the balance {grant_balance_minor} of grant {grant_id}",
    )


def check_ledger_balance(transactions_sum_minor: int, ledger_balance_minor: int, grant_id: str) -> None:
    """A grant's transactions sum to its ledger balance, which is never negative."""
    check(
        transactions_sum_minor == ledger_balance_minor,
        f"grant {grant_id}: transactions sum to {transactions_sum_minor}, ledger says {ledger_balance_minor}",
    )
    check(ledger_balance_minor >= 0, f"grant {grant_id}: negative ledger balance {ledger_balance_minor}")


def check_amount_due(amount_due_minor: int, invoice_id: str) -> None:
    """An invoice's amount due is never negative."""
    check(amount_due_minor >= 0, f"invoice {invoice_id}: negative amount due {amount_due_minor}")
