import subprocess
import sys

import pytest

from billing.errors import BillingError, InvariantViolation
from billing.grants import apply_credits
from billing.invariants import check, check_amount_due, check_credit_within_line, check_ledger_balance

from .conftest import make_grant


def test_a_failed_check_raises_invariant_violation_with_a_stable_code():
    with pytest.raises(InvariantViolation) as raised:
        check(False, "broken")
    assert raised.value.code == "invariant_violation"
    assert isinstance(raised.value, BillingError)


def test_checks_survive_python_optimize_mode():
    code = (
        "from billing.invariants import check\n"
        "try:\n    check(False, 'x')\n"
        "except Exception as exc:\n    print(type(exc).__name__)"
    )
    output = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "InvariantViolation"


@pytest.mark.parametrize(
    "broken",
    [
        lambda: check_credit_within_line(101, 100, "il_1"),
        lambda: check_credit_within_line(0, 100, "il_1"),
        lambda: check_ledger_balance(10, 11, "g"),
        lambda: check_ledger_balance(-1, -1, "g"),
        lambda: check_amount_due(-1, "in_1"),
    ],
)
def test_money_invariants_reject_impossible_amounts(broken):
    with pytest.raises(InvariantViolation):
        broken()


def test_applying_more_than_a_grants_balance_is_an_invariant_violation():
    with pytest.raises(InvariantViolation):
        apply_credits(make_grant(amount_minor=100), 101, "in_1", "il_1", 0)
