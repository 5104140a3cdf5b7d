"""The seed walkthrough (STRIPE.md "credit-based pricing model") as facts: shared by tests and demos."""

from __future__ import annotations

from decimal import Decimal

from billing.facts import (
    CreditGrantCreated,
    CustomerCreated,
    GrantCategory,
    GrantPriceType,
    GrantScope,
    MeterAggregation,
    MeterDefined,
    MeterEventRecorded,
    PriceCreated,
    ProductCreated,
    RecurringInterval,
    SubscriptionCreated,
    SubscriptionItem,
    TestClockAdvanced,
    TestClockCreated,
    UsageType,
)
from billing.periods import MILLISECONDS_PER_HOUR, add_months_clamped_ms

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def catalog_facts(suffix: str = "") -> list:
    return [
        MeterDefined(meter_id=f"mtr_in{suffix}", display_name="Input tokens", event_name=f"hypernian_input_tokens{suffix}",
                     aggregation=MeterAggregation.SUM, created_at_ms=START_MS),
        MeterDefined(meter_id=f"mtr_out{suffix}", display_name="Output tokens",
                     event_name=f"hypernian_output_tokens{suffix}", aggregation=MeterAggregation.SUM,
                     created_at_ms=START_MS),
        ProductCreated(product_id=f"prod_in{suffix}", name="Input tokens", created_at_ms=START_MS),
        ProductCreated(product_id=f"prod_out{suffix}", name="Output tokens", created_at_ms=START_MS),
        PriceCreated(price_id=f"price_in{suffix}", product_id=f"prod_in{suffix}", currency="usd",
                     unit_amount_decimal=Decimal("3"), usage_type=UsageType.METERED, meter_id=f"mtr_in{suffix}",
                     recurring_interval=RecurringInterval.MONTH, created_at_ms=START_MS),
        PriceCreated(price_id=f"price_out{suffix}", product_id=f"prod_out{suffix}", currency="usd",
                     unit_amount_decimal=Decimal("5"), usage_type=UsageType.METERED, meter_id=f"mtr_out{suffix}",
                     recurring_interval=RecurringInterval.MONTH, created_at_ms=START_MS),
    ]


def customer_setup(customer_id: str, clock_id: str | None, suffix: str = "", start_ms: int = START_MS,
                   grant_minor: int = 1000) -> list:
    """CustomerCreated, a 10 USD metered grant, a monthly subscription to both prices."""
    return [
        CustomerCreated(customer_id=customer_id, name="Jenny Rosen", test_clock_id=clock_id, created_at_ms=start_ms),
        CreditGrantCreated(grant_id=f"credgr_{customer_id}", customer_id=customer_id, amount_minor=grant_minor,
                           currency="usd", scope=GrantScope(price_type=GrantPriceType.METERED),
                           category=GrantCategory.PAID, effective_at_ms=start_ms, created_at_ms=start_ms,
                           test_clock_id=clock_id),
        SubscriptionCreated(subscription_id=f"sub_{customer_id}", customer_id=customer_id,
                            items=(SubscriptionItem(item_id=f"si_in_{customer_id}", price_id=f"price_in{suffix}"),
                                   SubscriptionItem(item_id=f"si_out_{customer_id}", price_id=f"price_out{suffix}")),
                            currency="usd", billing_cycle_anchor_ms=start_ms, created_at_ms=start_ms,
                            test_clock_id=clock_id),
    ]


def meter_event(customer_id: str, value: str, identifier: str, event_time_ms: int, suffix: str = "",
                output: bool = False, received_at_ms: int | None = None) -> MeterEventRecorded:
    name = f"hypernian_output_tokens{suffix}" if output else f"hypernian_input_tokens{suffix}"
    return MeterEventRecorded(customer_id=customer_id, event_name=name, identifier=identifier,
                              payload={"stripe_customer_id": customer_id, "value": value},
                              event_time_ms=event_time_ms,
                              received_at_ms=event_time_ms if received_at_ms is None else received_at_ms)


def clock_created(clock_id: str, frozen_ms: int = START_MS) -> TestClockCreated:
    return TestClockCreated(test_clock_id=clock_id, frozen_time_ms=frozen_ms, created_at_ms=frozen_ms)


def clock_advanced(clock_id: str, frozen_ms: int) -> TestClockAdvanced:
    return TestClockAdvanced(test_clock_id=clock_id, frozen_time_ms=frozen_ms, advanced_at_ms=frozen_ms)


def first_period_end_ms(start_ms: int = START_MS) -> int:
    return add_months_clamped_ms(start_ms, 1)


HOUR_MS = MILLISECONDS_PER_HOUR
