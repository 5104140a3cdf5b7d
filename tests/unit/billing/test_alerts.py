"""Billing alerts (billing/alerts.py), with numbers worked out by hand from the rules its docstring
states (Stripe's one_time usage alert; drawdown's re-arming credit-balance alert)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.alerts import (
    AlertNotChangeable,
    AlertNotFound,
    TooManyAlerts,
    MAX_ALERTS_PER_CUSTOMER,
    change_status,
    count_reading,
    crossings,
    define_alert,
    uncount_reading,
)
from billing.facts import (
    AlertCrossing,
    AlertStatus,
    AlertType,
    BillingAlertCreated,
    BillingAlertStatusChanged,
    MeterAggregation,
)
from billing.meters import MeterAggregator, MeterReading

SUM = MeterAggregator(MeterAggregation.SUM)
LAST = MeterAggregator(MeterAggregation.LAST)


def usage_alert(alert_id: str = "alrt_u", gte: int = 10, meter_id: str = "mtr_1") -> BillingAlertCreated:
    return BillingAlertCreated(alert_id=alert_id, customer_id="cus_1", alert_type=AlertType.USAGE_THRESHOLD,
                               title="usage", meter_id=meter_id, gte=gte, created_at_ms=0)


def balance_alert(alert_id: str = "alrt_b", lte_minor: int = 500) -> BillingAlertCreated:
    return BillingAlertCreated(alert_id=alert_id, customer_id="cus_1", alert_type=AlertType.CREDIT_BALANCE_THRESHOLD,
                               title="low credits", currency="usd", lte_minor=lte_minor, created_at_ms=0)


def reading(value: str, identifier: str = "e") -> MeterReading:
    return MeterReading(event_time_ms=1_000, received_at_ms=1_000, identifier=identifier, value=Decimal(value))


def status(alert_id: str, new: AlertStatus) -> BillingAlertStatusChanged:
    return BillingAlertStatusChanged(alert_id=alert_id, customer_id="cus_1", status=new, changed_at_ms=5)


def judge(watches, balances=None, aggregators=None, at_ms: int = 7):
    return [(c.alert_id, c.crossing, c.value) for c in
            crossings("cus_1", watches, balances or {}, aggregators or {"mtr_1": SUM}, at_ms)]


def test_a_usage_alert_triggers_once_when_its_usage_reaches_gte_and_never_again():
    watches: dict = {}
    define_alert(watches, usage_alert(gte=10), since_offset=3)
    for value in ("4", "5.5"):  # 9.5: not yet 10
        count_reading(watches, "mtr_1", reading(value), SUM)
    assert judge(watches) == []
    count_reading(watches, "mtr_1", reading("0.5"), SUM)  # 10
    count_reading(watches, "mtr_2", reading("100"), SUM)  # another meter counts nothing here
    assert judge(watches) == [("alrt_u", AlertCrossing.TRIGGERED, 10)]
    count_reading(watches, "mtr_1", reading("50"), SUM)
    assert judge(watches) == []  # one_time


def test_a_crossing_has_a_deterministic_id_and_the_customers_time():
    first: dict = {}
    second: dict = {}
    for watches in (first, second):
        define_alert(watches, usage_alert(gte=1), since_offset=0)
        count_reading(watches, "mtr_1", reading("1"), SUM)
    (a,) = crossings("cus_1", first, {}, {"mtr_1": SUM}, 42)
    (b,) = crossings("cus_1", second, {}, {"mtr_1": SUM}, 43)
    assert a.crossing_id == b.crossing_id and a.crossing_id.startswith("altr_")
    assert (a.crossed_at_ms, a.customer_id) == (42, "cus_1")


def test_a_last_meter_alert_compares_the_latest_value():
    watches: dict = {}
    define_alert(watches, usage_alert(gte=10), since_offset=0)
    count_reading(watches, "mtr_1", MeterReading(1_000, 1_000, "a", Decimal(12)), LAST)
    count_reading(watches, "mtr_1", MeterReading(2_000, 2_000, "b", Decimal(3)), LAST)
    assert judge(watches, aggregators={"mtr_1": LAST}) == []  # the latest reading is 3
    count_reading(watches, "mtr_1", MeterReading(3_000, 3_000, "c", Decimal(11)), LAST)
    assert judge(watches, aggregators={"mtr_1": LAST}) == [("alrt_u", AlertCrossing.TRIGGERED, 11)]


def test_a_canceled_reading_counted_after_the_alert_is_taken_back_one_counted_before_it_is_not():
    watches: dict = {}
    define_alert(watches, usage_alert(gte=10), since_offset=100)
    count_reading(watches, "mtr_1", reading("6", "a"), SUM)
    count_reading(watches, "mtr_1", reading("3", "b"), SUM)
    uncount_reading(watches, "mtr_1", reading("6", "a"), counted_at_offset=101, aggregator=SUM)  # 3 left
    uncount_reading(watches, "mtr_1", reading("5", "old"), counted_at_offset=50, aggregator=SUM)  # before: ignored
    count_reading(watches, "mtr_1", reading("6", "c"), SUM)  # 9
    assert judge(watches) == []
    count_reading(watches, "mtr_1", reading("1", "d"), SUM)
    assert judge(watches) == [("alrt_u", AlertCrossing.TRIGGERED, 10)]


def test_a_balance_alert_triggers_at_or_below_lte_and_re_arms_above_it():
    watches: dict = {}
    define_alert(watches, balance_alert(lte_minor=500), since_offset=0)
    assert judge(watches, {"usd": 900}) == []
    assert judge(watches, {"usd": 500}) == [("alrt_b", AlertCrossing.TRIGGERED, 500)]  # at it counts
    assert judge(watches, {"usd": -20}) == []  # still below: no second alert
    assert judge(watches, {"eur": 10_000}) == []  # another currency says nothing about usd
    assert judge(watches, {"usd": 501}) == [("alrt_b", AlertCrossing.RECOVERED, 501)]
    (crossing,) = crossings("cus_1", watches, {"usd": 100}, {}, 9)
    assert (crossing.crossing, crossing.value) == (AlertCrossing.TRIGGERED, 100)
    assert watches["alrt_b"].crossing_count == 3


def test_an_inactive_alert_neither_triggers_nor_re_arms_its_usage_still_counts():
    watches: dict = {}
    define_alert(watches, usage_alert(gte=5), since_offset=0)
    change_status(watches, status("alrt_u", AlertStatus.INACTIVE))
    count_reading(watches, "mtr_1", reading("7"), SUM)
    assert judge(watches) == []
    change_status(watches, status("alrt_u", AlertStatus.ACTIVE))
    assert judge(watches) == [("alrt_u", AlertCrossing.TRIGGERED, 7)]


def test_archived_is_final_and_unknown_alerts_are_refused():
    watches: dict = {}
    define_alert(watches, balance_alert(), since_offset=0)
    change_status(watches, status("alrt_b", AlertStatus.ARCHIVED))
    assert judge(watches, {"usd": 0}) == []
    with pytest.raises(AlertNotChangeable):
        change_status(watches, status("alrt_b", AlertStatus.ACTIVE))
    with pytest.raises(AlertNotFound):
        change_status(watches, status("alrt_nope", AlertStatus.INACTIVE))


def test_a_retried_create_changes_nothing_and_the_count_is_bounded():
    watches: dict = {}
    define_alert(watches, usage_alert(gte=5), since_offset=0)
    count_reading(watches, "mtr_1", reading("2"), SUM)
    define_alert(watches, usage_alert(gte=5), since_offset=9)  # the same id again
    assert watches["alrt_u"].since_offset == 0 and watches["alrt_u"].usage.value_sum == 2
    for index in range(MAX_ALERTS_PER_CUSTOMER - 1):
        define_alert(watches, usage_alert(f"alrt_{index}"), since_offset=0)
    with pytest.raises(TooManyAlerts):
        define_alert(watches, usage_alert("alrt_one_more"), since_offset=0)
