from decimal import Decimal

import pytest

from billing.facts import MeterAggregation, MeterEventRecorded
from billing.meter_events import (
    MeterEventAccepted,
    MeterEventRejected,
    MeterEventRejectionCode,
    customer_now_ms,
    validate_meter_event,
)

from .conftest import make_meter, utc_ms

NOW_MS = utc_ms(2025, 3, 1)
DAY_MS = 86_400_000
METERS = {
    "hypernian_input_tokens": make_meter(),
    "archived_tokens": make_meter(meter_id="mtr_archived", event_name="archived_tokens"),
    "api_calls": make_meter(meter_id="mtr_calls", event_name="api_calls", aggregation=MeterAggregation.COUNT),
    "custom_keys": make_meter(
        meter_id="mtr_custom", event_name="custom_keys", customer_payload_key="account", value_payload_key="tokens"
    ),
}
INACTIVE_IDS = {"mtr_archived"}


def inactive_at(meter_id: str, received_at_ms: int) -> bool:
    """Stands for Catalog.meter_inactive_at: mtr_archived was deactivated before every event here."""
    return meter_id in INACTIVE_IDS
CUSTOMERS = {"cus_jenny"}


def event(**overrides) -> MeterEventRecorded:
    fields = dict(
        customer_id="cus_jenny",
        event_name="hypernian_input_tokens",
        identifier="evt_1",
        payload={"stripe_customer_id": "cus_jenny", "value": "3000"},
        event_time_ms=NOW_MS,
        received_at_ms=NOW_MS,
    )
    fields.update(overrides)
    return MeterEventRecorded(**fields)


def validate(one: MeterEventRecorded, now_ms: int = NOW_MS):
    return validate_meter_event(one, METERS, inactive_at, CUSTOMERS, now_ms)


def test_a_valid_event_is_accepted_with_its_meter_customer_and_value():
    result = validate(event())
    assert isinstance(result, MeterEventAccepted)
    assert (result.meter_id, result.customer_id, result.reading.value) == ("mtr_input", "cus_jenny", Decimal(3000))


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"event_name": "x" * 101}, MeterEventRejectionCode.EVENT_NAME_TOO_LONG),
        ({"identifier": "i" * 101}, MeterEventRejectionCode.IDENTIFIER_TOO_LONG),
        ({"event_name": "unknown_event"}, MeterEventRejectionCode.NO_METER),
        ({"event_name": "archived_tokens"}, MeterEventRejectionCode.ARCHIVED_METER),
        ({"payload": {"value": "1"}}, MeterEventRejectionCode.NO_CUSTOMER_DEFINED),
        ({"payload": {"stripe_customer_id": "", "value": "1"}}, MeterEventRejectionCode.NO_CUSTOMER_DEFINED),
        ({"payload": {"stripe_customer_id": "cus_nobody", "value": "1"}}, MeterEventRejectionCode.CUSTOMER_NOT_FOUND),
        ({"payload": {"stripe_customer_id": "cus_jenny"}}, MeterEventRejectionCode.VALUE_NOT_FOUND),
        ({"payload": {"stripe_customer_id": "cus_jenny", "value": "lots"}}, MeterEventRejectionCode.INVALID_VALUE),
        ({"payload": {"stripe_customer_id": "cus_jenny", "value": "NaN"}}, MeterEventRejectionCode.INVALID_VALUE),
        ({"payload": {"stripe_customer_id": "cus_jenny", "value": "1e40"}}, MeterEventRejectionCode.INVALID_VALUE),
        ({"event_time_ms": NOW_MS - 35 * DAY_MS - 1}, MeterEventRejectionCode.TIMESTAMP_TOO_FAR_IN_PAST),
        ({"event_time_ms": NOW_MS + 5 * 60_000 + 1}, MeterEventRejectionCode.TIMESTAMP_IN_FUTURE),
        ({"event_name": "custom_keys"}, MeterEventRejectionCode.NO_CUSTOMER_DEFINED),
    ],
)
def test_a_bad_event_is_rejected_with_a_stable_code_instead_of_raising(overrides, code):
    result = validate(event(**overrides))
    assert isinstance(result, MeterEventRejected)
    assert result.code == code
    assert result.code.value == str(code) and result.code.value.islower()


@pytest.mark.parametrize(
    "overrides",
    [
        {"event_name": "x" * 100, "identifier": "i" * 100},
        {"event_time_ms": NOW_MS - 35 * DAY_MS},
        {"event_time_ms": NOW_MS + 5 * 60_000},
        {"payload": {"stripe_customer_id": "cus_jenny", "value": "-12.5"}},
        {"event_name": "custom_keys", "payload": {"account": "cus_jenny", "tokens": "7"}},
        {"event_name": "api_calls", "payload": {"stripe_customer_id": "cus_jenny"}},
    ],
)
def test_events_at_the_limits_are_accepted(overrides):
    meters = dict(METERS)
    meters["x" * 100] = make_meter(event_name="x" * 100)
    assert isinstance(validate_meter_event(event(**overrides), meters, inactive_at, CUSTOMERS, NOW_MS), MeterEventAccepted)


def test_the_window_of_accepted_timestamps_follows_the_customers_test_clock():
    frozen_ms = utc_ms(2024, 1, 1)
    now_ms = customer_now_ms(wall_clock_now_ms=NOW_MS, test_clock_frozen_time_ms=frozen_ms)
    assert now_ms == frozen_ms
    assert isinstance(validate(event(event_time_ms=frozen_ms), now_ms), MeterEventAccepted)
    assert validate(event(event_time_ms=NOW_MS), now_ms).code == MeterEventRejectionCode.TIMESTAMP_IN_FUTURE
    assert customer_now_ms(wall_clock_now_ms=NOW_MS, test_clock_frozen_time_ms=None) == NOW_MS


@pytest.mark.parametrize("value", ["999999999999999999", "1000000000", "-1000000000", "1e9", "1E+5000", "0E+5000",
                                   "1e-13", "0.0000000000001", "NaN", "Infinity"])
def test_a_value_beyond_the_bounds_is_rejected_as_invalid(value):
    verdict = validate(event(payload={"stripe_customer_id": "cus_jenny", "value": value}))
    assert isinstance(verdict, MeterEventRejected) and verdict.code == MeterEventRejectionCode.INVALID_VALUE


@pytest.mark.parametrize("value", ["999999999", "-999999999", "999999999.999999999999", "0.000000000001", "9e8"])
def test_a_value_at_the_bounds_is_accepted(value):
    verdict = validate(event(payload={"stripe_customer_id": "cus_jenny", "value": value}))
    assert isinstance(verdict, MeterEventAccepted) and verdict.reading.value == Decimal(value)
