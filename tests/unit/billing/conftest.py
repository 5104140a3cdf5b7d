"""Factories for billing unit tests: facts with sensible defaults, overridable by keyword."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from billing.facts import (
    CreditGrantCreated,
    GrantCategory,
    GrantPriceType,
    GrantScope,
    MeterAggregation,
    MeterDefined,
    PriceCreated,
    RecurringInterval,
    SubscriptionItem,
    UsageType,
)
from billing.grants import GrantState, create_grant

CUSTOMER_ID = "cus_jenny"
SUBSCRIPTION_ID = "sub_1"


def utc_ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    """Epoch milliseconds of a UTC wall-clock time."""
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()) * 1000


def make_meter(**overrides) -> MeterDefined:
    fields = dict(
        meter_id="mtr_input",
        display_name="Input tokens",
        event_name="hypernian_input_tokens",
        aggregation=MeterAggregation.SUM,
        created_at_ms=0,
    )
    fields.update(overrides)
    return MeterDefined(**fields)


def make_price(**overrides) -> PriceCreated:
    fields = dict(
        price_id="price_input",
        product_id="prod_input",
        currency="usd",
        unit_amount_decimal=Decimal("3"),
        usage_type=UsageType.METERED,
        meter_id="mtr_input",
        recurring_interval=RecurringInterval.MONTH,
        created_at_ms=0,
    )
    fields.update(overrides)
    if fields["usage_type"] == UsageType.LICENSED and "meter_id" not in overrides:
        fields["meter_id"] = None
    return PriceCreated(**fields)


def make_grant_created(**overrides) -> CreditGrantCreated:
    fields = dict(
        grant_id="credgr_1",
        customer_id=CUSTOMER_ID,
        amount_minor=1000,
        currency="usd",
        scope=GrantScope(price_type=GrantPriceType.METERED),
        category=GrantCategory.PAID,
        effective_at_ms=0,
        created_at_ms=0,
    )
    fields.update(overrides)
    return CreditGrantCreated(**fields)


def make_grant(**overrides) -> GrantState:
    state, _ = create_grant(make_grant_created(**overrides))
    return state


def item(item_id: str, price_id: str, quantity: int = 1) -> SubscriptionItem:
    return SubscriptionItem(item_id=item_id, price_id=price_id, quantity=quantity)
