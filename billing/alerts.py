"""Billing alerts (Stripe's /v1/billing/alerts) on one customer: what each watches and when it crosses.

- usage_threshold (recurrence one_time): the customer's usage of one meter, aggregated by the
  meter's formula over the events folded after the alert was created (Stripe: "only usage reported
  after the alert is created"); triggers once, when it reaches `gte`, and never again.
- credit_balance_threshold: the customer's live balance in one currency (available credits minus the
  usage accrued and not yet invoiced, billing/balances.py); triggers when it falls to `lte` or
  below, once per crossing, and re-arms when it is back above (drawdown's own `recovered` crossing).
- An inactive alert neither triggers nor re-arms (its usage still counts); archived is final.
- A usage alert without a customer filter watches every customer of its meter (Stripe: it triggers
  for each customer whose usage reaches it). Its facts go to every partition (customer_id ""), each
  partition keeps it as a template watch, and a customer adopts a copy at its first usage of the
  meter folded after the alert (`adopt_meter_alerts`), whose status follows the template's.

Pure: the per-customer fold (billing/customer.py) keeps the watches in the customer's state, counts
readings into them as it counts usage, and asks `crossings` whenever it publishes the live balance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_FLOOR

from billing import ids
from billing.errors import BillingError
from billing.facts import (
    AlertCrossing,
    AlertStatus,
    AlertType,
    BillingAlertCreated,
    BillingAlertCrossed,
    BillingAlertStatusChanged,
)
from billing.meters import MeterAggregator, MeterReading, MeterUsage
from billing.usage import can_subtract, subtract_reading

MAX_ALERTS_PER_CUSTOMER = 100  # (Stripe allows 25 per meter and customer)


class AlertNotChangeable(BillingError):
    """An archived alert cannot be activated or deactivated again."""

    code = "alert_archived"


class AlertNotFound(BillingError):
    code = "resource_missing"


class TooManyAlerts(BillingError):
    code = "too_many_alerts"


@dataclass(frozen=True, slots=True)
class AlertWatch:
    """One billing alert as the customer's fold keeps it.

    `since_offset`: readings folded after this log offset count toward a usage alert. `crossed`: the
    usage alert has triggered, or the balance stood at or below the threshold when last published.
    `crossing_count` numbers the crossings (it goes into their ids).
    """

    alert_id: str
    alert_type: AlertType
    status: AlertStatus
    meter_id: str | None
    gte: int | None
    currency: str | None
    lte_minor: int | None
    since_offset: int
    usage: MeterUsage | None = None
    crossed: bool = False
    crossing_count: int = 0


def define_alert(watches: dict[str, AlertWatch], fact: BillingAlertCreated, since_offset: int) -> None:
    """Add the alert (a retried create, same id, changes nothing)."""
    if fact.alert_id in watches:
        return
    if len(watches) >= MAX_ALERTS_PER_CUSTOMER:
        raise TooManyAlerts(f"customer {fact.customer_id} has {MAX_ALERTS_PER_CUSTOMER} alerts already")
    watches[fact.alert_id] = AlertWatch(alert_id=fact.alert_id, alert_type=fact.alert_type, status=AlertStatus.ACTIVE,
                      meter_id=fact.meter_id, gte=fact.gte, currency=fact.currency, lte_minor=fact.lte_minor,
                      since_offset=since_offset)


def adopt_meter_alerts(watches: dict[str, AlertWatch], templates: Mapping[str, AlertWatch], meter_id: str | None,
                       offset: int) -> None:
    """Give a customer's `watches` the alerts without a customer filter (`templates`, kept by its
    partition): a copy of each one on `meter_id` created before the fact at `offset` (a re-read after
    a restart may fold an older fact with a newer template: it adopts none it should not count), and
    every template's current status on the copies it has. (No limit: the API caps these per meter.)"""
    for alert_id, template in templates.items():
        watch = watches.get(alert_id)
        if watch is None:
            if (template.meter_id == meter_id and template.since_offset < offset
                    and template.status != AlertStatus.ARCHIVED):  # (archived is final: nothing to watch)
                watches[alert_id] = template
        elif watch.status != template.status:
            watches[alert_id] = replace(watch, status=template.status)


def change_status(watches: dict[str, AlertWatch], fact: BillingAlertStatusChanged) -> None:
    watch = watches.get(fact.alert_id)
    if watch is None:
        raise AlertNotFound(f"no alert {fact.alert_id} on customer {fact.customer_id}")
    if watch.status == AlertStatus.ARCHIVED and fact.status != AlertStatus.ARCHIVED:
        raise AlertNotChangeable(f"alert {watch.alert_id} is archived")
    watches[fact.alert_id] = replace(watch, status=fact.status)


def count_reading(watches: dict[str, AlertWatch], meter_id: str, reading: MeterReading,
                  aggregator: MeterAggregator) -> None:
    """Count one reading of `meter_id` (folded now, so after every watch's creation) toward the
    usage alerts on that meter that have not triggered."""
    for alert_id, watch in watches.items():
        if watch.meter_id == meter_id and not watch.crossed and watch.alert_type == AlertType.USAGE_THRESHOLD:
            usage = aggregator.initialize() if watch.usage is None else watch.usage
            watches[alert_id] = replace(watch, usage=aggregator.add(usage, reading))


def uncount_reading(watches: dict[str, AlertWatch], meter_id: str, reading: MeterReading, counted_at_offset: int,
                    aggregator: MeterAggregator) -> None:
    """Take a canceled reading (folded at `counted_at_offset`) back out of the usage alerts that
    counted it and have not triggered. Only meters whose aggregate can subtract (sum and count
    without a window) take it back: for `last` and windowed meters the alert keeps what it saw."""
    if not can_subtract(aggregator):
        return
    for alert_id, watch in watches.items():
        if (watch.meter_id == meter_id and not watch.crossed and watch.usage is not None
                and counted_at_offset > watch.since_offset):
            watches[alert_id] = replace(watch, usage=subtract_reading(watch.usage, reading))


def _usage_value(watch: AlertWatch, aggregators: Mapping[str, MeterAggregator]) -> int:
    """The usage as a whole number (Stripe's alert value is an integer): rounded toward minus infinity,
    so that 9.5 of a gte 10 has not reached it."""
    aggregator = aggregators.get(watch.meter_id or "")
    if watch.usage is None or aggregator is None:
        return 0
    return int(aggregator.result(watch.usage).to_integral_value(rounding=ROUND_FLOOR))


def crossings(customer_id: str, watches: dict[str, AlertWatch], live_balances_minor: Mapping[str, int],
              aggregators: Mapping[str, MeterAggregator], as_of_ms: int) -> list[BillingAlertCrossed]:
    """The crossings since the last call, updating `watches` in place: a usage alert that reached
    its gte, a balance alert whose currency's live balance (`live_balances_minor`) fell to its lte
    or below, or went back above it."""
    crossed = []
    for alert_id, watch in sorted(watches.items()):
        if watch.status != AlertStatus.ACTIVE:
            continue
        if watch.alert_type == AlertType.USAGE_THRESHOLD:
            if watch.crossed or watch.gte is None:
                continue
            value = _usage_value(watch, aggregators)
            if value < watch.gte:
                continue
            direction, now_crossed = AlertCrossing.TRIGGERED, True
        else:
            value = live_balances_minor.get(watch.currency or "")
            if value is None or watch.lte_minor is None:
                continue
            now_crossed = value <= watch.lte_minor
            if now_crossed == watch.crossed:
                continue
            direction = AlertCrossing.TRIGGERED if now_crossed else AlertCrossing.RECOVERED
        count = watch.crossing_count + 1
        watches[alert_id] = replace(watch, crossed=now_crossed, crossing_count=count)
        crossed.append(BillingAlertCrossed(
            crossing_id=ids.billing_alert_crossing_id(alert_id, customer_id, direction, count), alert_id=alert_id,
            customer_id=customer_id, crossing=direction, value=value, crossed_at_ms=as_of_ms))
    return crossed

