"""Meter event validation with Stripe's error codes. Bad input is a typed rejection, never an exception.

Checks run in a fixed order, so an event with several faults always gets the same code:
name and identifier length, meter exists, meter active, customer key present, customer known,
value present, value valid, timestamp not too old, timestamp not in the future.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import NamedTuple

from billing.facts import MeterAggregation, MeterDefined, MeterEventRecorded
from billing.meters import MeterReading
from billing.money import MAX_METER_VALUE, MAX_METER_VALUE_DECIMAL_PLACES, decimal_places, integer_digits, \
    parse_decimal
from billing.periods import MILLISECONDS_PER_DAY, MILLISECONDS_PER_MINUTE

MAX_EVENT_NAME_LENGTH = 100
MAX_IDENTIFIER_LENGTH = 100
MAX_EVENT_AGE_MS = 35 * MILLISECONDS_PER_DAY  # Stripe: at most 35 days in the past
MAX_EVENT_LEAD_MS = 5 * MILLISECONDS_PER_MINUTE  # Stripe: at most 5 minutes in the future
# OURS: |value| < MAX_METER_VALUE with at most 12 decimal places (why: billing.money, "Bounds").
MAX_VALUE_DECIMAL_PLACES = MAX_METER_VALUE_DECIMAL_PLACES
MAX_VALUE_INTEGER_DIGITS = len(str(MAX_METER_VALUE - 1))  # 9: a plain digit string this long is in bounds
_ONE = Decimal(1)


class MeterEventRejectionCode(StrEnum):
    """Stable snake_case reasons, Stripe's codes where Stripe has one."""

    EVENT_NAME_TOO_LONG = "event_name_too_long"
    IDENTIFIER_TOO_LONG = "identifier_too_long"
    NO_METER = "no_meter"
    ARCHIVED_METER = "archived_meter"
    NO_CUSTOMER_DEFINED = "meter_event_no_customer_defined"
    CUSTOMER_NOT_FOUND = "meter_event_customer_not_found"
    VALUE_NOT_FOUND = "meter_event_value_not_found"
    INVALID_VALUE = "meter_event_invalid_value"
    TIMESTAMP_TOO_FAR_IN_PAST = "timestamp_too_far_in_past"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"


@dataclass(frozen=True, slots=True)
class MeterEventRejected:
    """Why a meter event is not counted; `code` goes to the dead letter's reason_code."""

    code: MeterEventRejectionCode
    message: str


class MeterEventAccepted(NamedTuple):
    """A valid event: which meter and customer it counts for, and its reading (a NamedTuple: one is
    built per meter event, see billing/meters.py)."""

    meter_id: str
    customer_id: str
    reading: MeterReading


def is_timely(event_time_ms: int, now_ms: int) -> bool:
    """THE lateness rule, the one place it lives: an event counts if its time is at most 35 days
    before `now_ms` (its receipt on the customer's clock) and at most 5 minutes after it, both
    inclusive. The validation below, both fast paths (billing/partition.py, billing/replay_fold.py)
    and the producer's pre-check (producers/producer.py) all call it."""
    return -MAX_EVENT_LEAD_MS <= now_ms - event_time_ms <= MAX_EVENT_AGE_MS


class ReceivedAtOutOfBound(Exception):
    """A meter event or cancel whose `received_at` is refused by the receipt rule (dead-lettered)."""

    reason_code = "received_at_out_of_bound"


def is_received_within_bound(received_at_ms: int, appended_at_ms: int, bound_ms: int) -> bool:
    """THE receipt rule, the one place it lives: a producer stamps `received_at` on its own clock,
    and every window keyed on it (lateness, dedupe, cancel) and every purge by those windows trusts
    it; so it may lie at most `bound_ms` from when the broker appended the record (the record's
    LogAppendTime), either way, both inclusive. 0 turns the rule off (the producers' clocks are
    trusted: loading history with its own times). The worker and the replay both ask it."""
    return bound_ms <= 0 or -bound_ms <= appended_at_ms - received_at_ms <= bound_ms


def receipt_refusal(received_at_ms: int, appended_at_ms: int, bound_ms: int) -> ReceivedAtOutOfBound | None:
    """is_received_within_bound, with the dead letter's reason when it is not."""
    if is_received_within_bound(received_at_ms, appended_at_ms, bound_ms):
        return None
    return ReceivedAtOutOfBound(
        f"received_at {received_at_ms} lies {(appended_at_ms - received_at_ms) / 1000:+.3f} s from the broker's "
        f"append time {appended_at_ms}; at most {bound_ms / 1000:.0f} s either way is accepted "
        "(check the producer's clock, or DRAWDOWN_RECEIPT_BOUND_SECONDS)")


def customer_now_ms(wall_clock_now_ms: int, test_clock_frozen_time_ms: int | None) -> int:
    """A customer's "now": its test clock's frozen time when it has one, else the wall clock."""
    return wall_clock_now_ms if test_clock_frozen_time_ms is None else test_clock_frozen_time_ms


def _parse_value(text: str) -> Decimal | None:
    value = parse_decimal(text)
    if value is None:
        return None
    if decimal_places(value) > MAX_VALUE_DECIMAL_PLACES or integer_digits(value) > MAX_VALUE_INTEGER_DIGITS:
        return None
    return value


def is_surely_valid_value(value_text: object) -> bool:
    """A cheap test for the common value, 1 to 18 ASCII digits ("250"): True means
    validate_meter_event accepts this value; False means only "ask validate_meter_event"."""
    return (type(value_text) is str and len(value_text) <= MAX_VALUE_INTEGER_DIGITS
            and value_text.isascii() and value_text.isdigit())


def validate_meter_event(
    event: MeterEventRecorded,
    meters_by_event_name: Mapping[str, MeterDefined],
    meter_inactive_at: Callable[[str, int], bool],
    known_customer_ids: Container[str],
    now_ms: int,
) -> MeterEventAccepted | MeterEventRejected:
    """Accept or reject one meter event against the catalog, the known customers and `now_ms`.

    `meter_inactive_at(meter_id, received_at_ms)` says whether the meter was inactive when the
    event was received (Catalog.meter_inactive_at).

    The customer comes from the payload under the meter's customer_payload_key, the value from its
    value_payload_key (a decimal string; negative values are corrections). Count meters need no value
    (OURS: each event counts 1; a value, if present, must still be valid). `now_ms` is the customer's
    now (see `customer_now_ms`): events are accepted from now - 35 days to now + 5 minutes inclusive.
    """

    reject = MeterEventRejected
    if len(event.event_name) > MAX_EVENT_NAME_LENGTH:
        return reject(MeterEventRejectionCode.EVENT_NAME_TOO_LONG, f"event_name is longer than {MAX_EVENT_NAME_LENGTH}")
    if len(event.identifier) > MAX_IDENTIFIER_LENGTH:
        return reject(MeterEventRejectionCode.IDENTIFIER_TOO_LONG, f"identifier is longer than {MAX_IDENTIFIER_LENGTH}")
    meter = meters_by_event_name.get(event.event_name)
    if meter is None:
        return reject(MeterEventRejectionCode.NO_METER, f"no meter has event_name {event.event_name!r}")
    if meter_inactive_at(meter.meter_id, event.received_at_ms):
        return reject(MeterEventRejectionCode.ARCHIVED_METER, f"meter {meter.meter_id} is inactive")
    customer_id = event.payload.get(meter.customer_payload_key, "")
    if not customer_id:
        return reject(
            MeterEventRejectionCode.NO_CUSTOMER_DEFINED, f"payload has no {meter.customer_payload_key!r}"
        )
    if customer_id not in known_customer_ids:
        return reject(MeterEventRejectionCode.CUSTOMER_NOT_FOUND, f"no customer {customer_id!r}")
    value_text = event.payload.get(meter.value_payload_key)
    if value_text is None and meter.aggregation != MeterAggregation.COUNT:
        return reject(MeterEventRejectionCode.VALUE_NOT_FOUND, f"payload has no {meter.value_payload_key!r}")
    if value_text is None:
        value = _ONE
    elif is_surely_valid_value(value_text):
        value = Decimal(value_text)  # the common "250": _parse_value's checks cannot fail on it
    else:
        value = _parse_value(value_text)
    if value is None:
        return reject(MeterEventRejectionCode.INVALID_VALUE,
                      f"{meter.value_payload_key!r} must be a decimal number between -{MAX_METER_VALUE} and "
                      f"{MAX_METER_VALUE} (both excluded) with at most {MAX_VALUE_DECIMAL_PLACES} decimal places")
    if not is_timely(event.event_time_ms, now_ms):
        if event.event_time_ms < now_ms:
            return reject(MeterEventRejectionCode.TIMESTAMP_TOO_FAR_IN_PAST,
                          "timestamp is more than 35 days in the past")
        return reject(MeterEventRejectionCode.TIMESTAMP_IN_FUTURE, "timestamp is more than 5 minutes in the future")
    reading = MeterReading(event.event_time_ms, event.received_at_ms, event.identifier, value)
    return MeterEventAccepted(meter.meter_id, customer_id, reading)
