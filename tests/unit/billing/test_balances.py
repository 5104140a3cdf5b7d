from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from billing.balances import LowBalanceWatch, UninvoicedPeriod, detect_low_balance, detect_low_balances, live_balance
from billing.facts import BillingReason, GrantScope, UsageType
from billing.grants import void_grant
from billing.invoices import compute_invoice, rate_lines
from billing.periods import BillingPeriod

from .conftest import CUSTOMER_ID, item, make_grant, make_price, utc_ms

PERIOD = BillingPeriod(start_ms=utc_ms(2025, 1, 1), end_ms=utc_ms(2025, 2, 1))
AS_OF_MS = utc_ms(2025, 1, 15)
PRICES = {
    "price_input": make_price(),
    "price_seat": make_price(price_id="price_seat", unit_amount_decimal=Decimal("1000"), usage_type=UsageType.LICENSED),
    "price_fraction": make_price(
        price_id="price_fraction", unit_amount_decimal=Decimal("0.5"), meter_id="mtr_fraction"
    ),
}


def uninvoiced(usage, items=(item("si_input", "price_input"),)):
    lines = rate_lines(
        "in_preview", items, PRICES, {meter_id: Decimal(value) for meter_id, value in usage.items()}, "usd"
    )
    return UninvoicedPeriod(period_end_ms=PERIOD.end_ms, lines=lines)


def balance_of(grants, periods):
    return live_balance(CUSTOMER_ID, "usd", grants, periods, PRICES, AS_OF_MS)


def test_the_live_balance_is_available_credits_minus_accrued_eligible_usage():
    balance = balance_of([make_grant(amount_minor=1000)], [uninvoiced({"mtr_input": "100"})])
    assert (balance.available_credits_minor, balance.accrued_usage_minor, balance.live_balance_minor) == (1000, 300, 700)


def test_the_live_balance_goes_negative_when_usage_outruns_credits():
    balance = balance_of([make_grant(amount_minor=1000)], [uninvoiced({"mtr_input": "3000"})])
    assert balance.live_balance_minor == -8000


def test_accrued_usage_is_rounded_per_line_like_an_invoice():
    items = (item("si_a", "price_fraction"), item("si_b", "price_input"))
    balance = balance_of([make_grant()], [uninvoiced({"mtr_fraction": "1", "mtr_input": "0"}, items)])
    assert balance.accrued_usage_minor == 1  # 0.5 rounds half up to 1


def test_licensed_lines_other_currencies_and_out_of_scope_usage_do_not_count():
    grants = [
        make_grant(grant_id="scoped", scope=GrantScope(price_ids=("price_other",)), amount_minor=200),
        make_grant(grant_id="euro", currency="eur", amount_minor=900),
    ]
    items = (item("si_input", "price_input"), item("si_seat", "price_seat"))
    balance = balance_of(grants, [uninvoiced({"mtr_input": "10"}, items)])
    assert (balance.available_credits_minor, balance.accrued_usage_minor) == (200, 0)


def test_voided_expired_and_future_grants_are_not_available():
    voided, _ = void_grant(make_grant(grant_id="voided"), 1)
    expired = make_grant(grant_id="expired", expires_at_ms=AS_OF_MS)
    later = make_grant(grant_id="later", effective_at_ms=PERIOD.end_ms + 1)
    balance = balance_of([voided, expired, later], [uninvoiced({"mtr_input": "10"})])
    assert (balance.available_credits_minor, balance.accrued_usage_minor) == (0, 0)


def test_a_grant_effective_before_period_end_counts_for_the_open_period():
    grant = make_grant(effective_at_ms=AS_OF_MS + 1000)
    balance = balance_of([grant], [uninvoiced({"mtr_input": "10"})])
    assert (balance.available_credits_minor, balance.accrued_usage_minor) == (1000, 30)


@given(input_tokens=st.integers(0, 300))
def test_while_credits_cover_usage_the_live_balance_equals_what_the_invoice_leaves(input_tokens):
    grant = make_grant(amount_minor=1000)
    balance = balance_of([grant], [uninvoiced({"mtr_input": input_tokens})])
    invoice = compute_invoice(
        customer_id=CUSTOMER_ID,
        subscription_id="sub_1",
        currency="usd",
        period=PERIOD,
        billing_reason=BillingReason.SUBSCRIPTION_CYCLE,
        finalized_at_ms=PERIOD.end_ms,
        items=(item("si_input", "price_input"),),
        prices=PRICES,
        usage_by_meter_id={"mtr_input": Decimal(input_tokens)},
        grants={grant.grant_id: grant},
    )
    assert balance.live_balance_minor == invoice.grants[grant.grant_id].ledger_balance_minor


def watch(threshold_minor=500):
    return LowBalanceWatch(customer_id=CUSTOMER_ID, currency="usd", threshold_minor=threshold_minor)


def run(balances, threshold_minor=500):
    state, alerts = watch(threshold_minor), []
    for as_of_ms, balance_minor in enumerate(balances):
        state, alert = detect_low_balance(state, balance_minor, as_of_ms)
        if alert is not None:
            alerts.append(alert)
    return state, alerts


def test_a_downward_crossing_alerts_once():
    _, alerts = run([1000, 600, 400, 300, 100, -50])
    assert [(alert.live_balance_minor, alert.alerted_at_ms) for alert in alerts] == [(400, 2)]


def test_the_alert_re_arms_only_when_the_balance_goes_back_above_the_threshold():
    state, alerts = run([1000, 400, 500, 450, 501, 499])
    assert [alert.live_balance_minor for alert in alerts] == [400, 499]
    assert state.crossing_count == 2
    assert alerts[0].alert_id != alerts[1].alert_id


def test_a_balance_that_starts_below_the_threshold_alerts_at_once():
    _, alerts = run([100])
    assert len(alerts) == 1


def test_alert_ids_are_the_same_on_replay():
    _, first = run([1000, 400, 800, 100])
    _, second = run([1000, 400, 800, 100])
    assert [alert.alert_id for alert in first] == [alert.alert_id for alert in second]


def test_several_thresholds_alert_independently():
    watches = (watch(1000), watch(500))
    watches, alerts = detect_low_balances(watches, 700, 1)
    assert [alert.threshold_minor for alert in alerts] == [1000]
    watches, alerts = detect_low_balances(watches, 200, 2)
    assert [alert.threshold_minor for alert in alerts] == [500]


@given(balances=st.lists(st.integers(-2000, 2000), max_size=40))
def test_there_is_exactly_one_alert_per_downward_crossing(balances):
    _, alerts = run(balances)
    above = True
    crossings = 0
    for balance_minor in balances:
        if above and balance_minor <= 500:
            crossings += 1
        above = balance_minor > 500
    assert len(alerts) == crossings


def test_without_uninvoiced_usage_the_grants_usable_now_are_available():
    grants = [make_grant(grant_id="now", amount_minor=300), make_grant(grant_id="later", effective_at_ms=AS_OF_MS + 1)]
    assert balance_of(grants, []).live_balance_minor == 300


def test_a_grant_expiring_before_the_open_period_ends_does_not_count():
    grant = make_grant(expires_at_ms=PERIOD.end_ms - 1)
    balance = balance_of([grant], [uninvoiced({"mtr_input": "10"})])
    assert (balance.available_credits_minor, balance.accrued_usage_minor) == (0, 0)
