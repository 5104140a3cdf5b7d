"""The SDK's fast paths (cheap validation of the common event, the batch API) reject exactly what
billing.meter_events.validate_meter_event rejects, with the same code, and send nothing then.
No broker needed: records wait in the local queue."""

from __future__ import annotations

import itertools
from dataclasses import replace
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.facts import MeterAggregation, MeterDeactivated, MeterDefined, MeterEventRecorded
from billing.meter_events import (
    MAX_VALUE_INTEGER_DIGITS,
    MAX_EVENT_AGE_MS,
    MAX_EVENT_LEAD_MS,
    MeterEventRejected,
    is_surely_valid_value,
    validate_meter_event,
)
from drawdown.settings import Settings
from producers import FactProducer, MeterEventInvalid, fold_catalog
from producers.producer import all_surely_valid_values

NOW_MS = 1_763_900_000_000
QUIET = {"log_level": 0}  # no broker listens: keep librdkafka's connection errors off stderr
LONG_NAME = "n" * 101
METERS = [
    MeterDefined(meter_id="m_sum", display_name="Tokens", event_name="tokens", aggregation=MeterAggregation.SUM,
                 customer_payload_key="account", created_at_ms=1),
    MeterDefined(meter_id="m_count", display_name="Images", event_name="images", aggregation=MeterAggregation.COUNT,
                 created_at_ms=1),
    MeterDefined(meter_id="m_old", display_name="Old", event_name="old", aggregation=MeterAggregation.SUM,
                 created_at_ms=1),
    MeterDefined(meter_id="m_long", display_name="Long", event_name=LONG_NAME, aggregation=MeterAggregation.SUM,
                 created_at_ms=1),
]
CATALOG = fold_catalog([*METERS, MeterDeactivated(meter_id="m_old", deactivated_at_ms=2)])
KNOWN = frozenset({"cus_1", "cus_2"})


class _Everyone:
    def __contains__(self, customer_id: object) -> bool:
        return True


@cache
def producer(knows_customers: bool) -> FactProducer:
    return FactProducer(Settings(kafka_bootstrap_servers="127.0.0.1:1", topic_prefix="unit"), catalog=CATALOG,
                        known_customer_ids=KNOWN if knows_customers else None, now_ms=lambda: NOW_MS, config=QUIET)


def expected_code(event: MeterEventRecorded, knows_customers: bool) -> str | None:
    verdict = validate_meter_event(event, CATALOG.meters_by_event_name, CATALOG.meter_inactive_at,
                                   KNOWN if knows_customers else _Everyone(), NOW_MS)
    return str(verdict.code) if type(verdict) is MeterEventRejected else None


def customer_key(event_name: str) -> str:
    meter = CATALOG.meters_by_event_name.get(event_name)
    return meter.customer_payload_key if meter is not None else "stripe_customer_id"


VALUE_SAMPLES = ["1", "250", "007", "0", "-5", "1.5", "1e3", " 5", "5 ", "١٢", "²", "9" * 18, "9" * 19, "",
                 "NaN", "Infinity", "0.000000000001", "0.0000000000001", "+3", "1_000", "0" * 19]
CUSTOMER_SAMPLES = ["cus_1", "cus_2", "cus_3", "", " "]
EVENT_TIME_SAMPLES = [None, NOW_MS - MAX_EVENT_AGE_MS - 1, NOW_MS - MAX_EVENT_AGE_MS, NOW_MS,
                      NOW_MS + MAX_EVENT_LEAD_MS, NOW_MS + MAX_EVENT_LEAD_MS + 1]
EVENT_NAME_SAMPLES = ["tokens", "images", "old", "nope", LONG_NAME, "m" * 101]

VALUES = st.one_of(st.sampled_from(VALUE_SAMPLES), st.from_regex(r"[0-9]{1,20}", fullmatch=True), st.text(max_size=8))
CUSTOMERS = st.one_of(st.sampled_from(CUSTOMER_SAMPLES), st.text(max_size=5))
PAYLOADS = st.one_of(
    st.fixed_dictionaries({}, optional={"account": CUSTOMERS, "stripe_customer_id": CUSTOMERS, "value": VALUES,
                                        "other": st.text(max_size=3)}),
    st.dictionaries(st.sampled_from(["account", "stripe_customer_id", "value", "other"]),
                    st.one_of(VALUES, CUSTOMERS), max_size=4),
)
EVENT_NAMES = st.sampled_from(EVENT_NAME_SAMPLES)
IDENTIFIERS = st.one_of(st.none(), st.text(max_size=5), st.sampled_from(["i" * 100, "i" * 101]))
EVENT_TIMES = st.one_of(
    st.sampled_from(EVENT_TIME_SAMPLES),
    st.integers(min_value=NOW_MS - 2 * MAX_EVENT_AGE_MS, max_value=NOW_MS + 2 * MAX_EVENT_LEAD_MS),
)


def disagreement(event_name, payload, identifier, event_time_ms, knows_customers) -> str | None:
    """None when send_meter_event did what validate_meter_event says (same code, sent iff accepted)."""
    sdk = producer(knows_customers)
    sent_before = sdk.sent_since_flush
    try:
        event = sdk.send_meter_event(event_name, payload, identifier=identifier, event_time_ms=event_time_ms)
        code = None
    except MeterEventInvalid as error:
        event, code = error.event, error.code
    expected = expected_code(event, knows_customers)
    if event.customer_id != payload.get(customer_key(event_name), ""):
        return f"customer {event.customer_id!r}"
    if code != expected or sdk.sent_since_flush != sent_before + (code is None):
        return f"sdk {code}, rule {expected}"
    return None


def batch_disagreement(event_name, payload, knows_customers) -> str | None:
    """None when send_meter_events([a valid event, payload]) did what validate_meter_event says of payload."""
    sdk = producer(knows_customers)
    sent_before = sdk.sent_since_flush
    valid = {"account": "cus_1", "stripe_customer_id": "cus_1", "value": "1"}
    try:
        sdk.send_meter_events(event_name, [valid, payload])
        code = None
    except MeterEventInvalid as error:
        code = error.code
    event = MeterEventRecorded(customer_id=payload.get(customer_key(event_name), ""), event_name=event_name,
                               identifier="generated", payload=payload, event_time_ms=NOW_MS, received_at_ms=NOW_MS)
    expected = expected_code(event, knows_customers)
    if expected_code(replace(event, payload=valid), knows_customers) is None and (
            code != expected or sdk.sent_since_flush != sent_before + 2 * (code is None)):
        return f"sdk {code}, rule {expected}"
    return None


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_name=EVENT_NAMES, payload=PAYLOADS, identifier=IDENTIFIERS, event_time_ms=EVENT_TIMES,
       knows_customers=st.booleans())
def test_send_meter_event_rejects_exactly_what_the_engine_rule_rejects_with_its_code(
        event_name, payload, identifier, event_time_ms, knows_customers):
    assert disagreement(event_name, payload, identifier, event_time_ms, knows_customers) is None


def test_on_every_combination_of_edge_values_the_sdk_and_the_engine_rule_agree():
    disagreements = []
    for event_name, customer, value, event_time_ms, knows_customers, identifier in itertools.product(
            EVENT_NAME_SAMPLES, CUSTOMER_SAMPLES, [*VALUE_SAMPLES, None], EVENT_TIME_SAMPLES, [False, True],
            [None, "i" * 100, "i" * 101]):
        payload = {customer_key(event_name): customer} if value is None else \
            {customer_key(event_name): customer, "value": value}
        found = disagreement(event_name, payload, identifier, event_time_ms, knows_customers)
        if found is None and identifier is None and event_time_ms is None:
            found = batch_disagreement(event_name, payload, knows_customers)
        if found is not None:
            disagreements.append((event_name[:10], payload, identifier and len(identifier), event_time_ms, found))
    assert disagreements == []


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_name=EVENT_NAMES, data=st.data(), knows_customers=st.booleans(),
       with_identifiers=st.booleans(), with_event_times=st.booleans())
def test_send_meter_events_rejects_the_first_event_the_engine_rule_rejects_and_sends_none(
        event_name, data, knows_customers, with_identifiers, with_event_times):
    payloads = data.draw(st.lists(PAYLOADS, min_size=1, max_size=5))
    identifiers = data.draw(st.lists(st.text(max_size=5) | st.just("i" * 101), min_size=len(payloads),
                                     max_size=len(payloads))) if with_identifiers else None
    event_times_ms = data.draw(st.lists(EVENT_TIMES.filter(lambda time_ms: time_ms is not None),
                                        min_size=len(payloads), max_size=len(payloads))) if with_event_times else None
    sdk = producer(knows_customers)
    sent_before = sdk.sent_since_flush
    try:
        sent_identifiers = sdk.send_meter_events(event_name, payloads, identifiers=identifiers,
                                                 event_times_ms=event_times_ms)
        rejection = None
    except MeterEventInvalid as error:
        sent_identifiers, rejection = None, (error.event.identifier, error.code)

    events = [MeterEventRecorded(customer_id=payload.get(customer_key(event_name), ""), event_name=event_name,
                                 identifier=identifiers[index] if identifiers else "generated", payload=payload,
                                 event_time_ms=event_times_ms[index] if event_times_ms else NOW_MS,
                                 received_at_ms=NOW_MS) for index, payload in enumerate(payloads)]
    codes = [expected_code(event, knows_customers) for event in events]
    first_rejected = next((index for index, code in enumerate(codes) if code is not None), None)
    if first_rejected is None:
        assert rejection is None and len(sent_identifiers) == len(payloads)
        assert sdk.sent_since_flush == sent_before + len(payloads)
    else:
        assert rejection is not None and rejection[1] == codes[first_rejected]
        if identifiers:
            assert rejection[0] == identifiers[first_rejected]
        assert sdk.sent_since_flush == sent_before


@pytest.mark.parametrize(("text", "surely_valid"), [
    ("250", True), ("0", True), ("9" * MAX_VALUE_INTEGER_DIGITS, True), ("9" * (MAX_VALUE_INTEGER_DIGITS + 1), False),
    ("", False), ("1.5", False), ("١٢", False), ("²", False), (" 5", False), (None, False), (250, False),
])
def test_only_plain_ascii_digit_values_take_the_fast_path(text, surely_valid):
    assert is_surely_valid_value(text) is surely_valid


def test_a_batch_gets_fresh_unique_identifiers_or_keeps_the_given_ones():
    sdk = producer(False)
    generated = sdk.send_meter_events("tokens", [{"account": "cus_1", "value": "1"}] * 3)
    generated_again = sdk.send_meter_events("tokens", [{"account": "cus_1", "value": "1"}] * 3)
    given_ids = sdk.send_meter_events("tokens", [{"account": "cus_1", "value": "1"}] * 2, identifiers=("a", "b"))
    assert len(set(generated + generated_again)) == 6
    assert given_ids == ["a", "b"]


def test_a_batch_with_one_bad_event_names_it_and_sends_nothing():
    sdk = producer(False)
    sent_before = sdk.sent_since_flush
    payloads = [{"account": "cus_1", "value": "1"}, {"account": "cus_1", "value": "ten"}, {"value": "2"}]
    with pytest.raises(MeterEventInvalid) as raised:
        sdk.send_meter_events("tokens", payloads, identifiers=["e0", "e1", "e2"])
    assert (raised.value.code, raised.value.event.identifier) == ("meter_event_invalid_value", "e1")
    assert "event 1 of the batch" in str(raised.value)
    assert sdk.sent_since_flush == sent_before


def test_identifiers_and_event_times_must_match_the_payloads_one_for_one():
    sdk = producer(False)
    with pytest.raises(ValueError, match="identifiers"):
        sdk.send_meter_events("tokens", [{"account": "cus_1", "value": "1"}], identifiers=["a", "b"])
    with pytest.raises(ValueError, match="event times"):
        sdk.send_meter_events("tokens", [{"account": "cus_1", "value": "1"}], event_times_ms=[])


# --- the whole-batch value test ------------------------------------------------------------------

class _Text(str):
    """A str subclass: is_surely_valid_value wants exactly str, so the batch test must too."""


BATCH_VALUES = st.one_of(VALUES, st.sampled_from([None, 5, b"5", _Text("5"), "1" * 18, "1" * 19]))


@settings(max_examples=1000, deadline=None)
@given(values=st.lists(BATCH_VALUES, max_size=6) | st.lists(st.from_regex(r"[0-9]{1,19}", fullmatch=True), max_size=6))
def test_the_whole_batch_value_test_is_is_surely_valid_value_of_every_value(values):
    assert all_surely_valid_values(values) is all(map(is_surely_valid_value, values))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_name=st.sampled_from(["tokens", "images"]), knows_customers=st.booleans(), data=st.data())
def test_a_common_batch_is_sent_exactly_when_the_engine_rule_accepts_every_event(event_name, knows_customers, data):
    """The batch fast path (generated identifiers, arrival time): mostly plain events, sometimes one
    the rule rejects, so both of its outcomes are exercised."""
    key = customer_key(event_name)
    plain = st.fixed_dictionaries({key: st.sampled_from(["cus_1", "cus_2"]),
                                   "value": st.from_regex(r"[0-9]{1,18}", fullmatch=True)})
    odd = st.fixed_dictionaries({key: CUSTOMERS}, optional={"value": VALUES | st.just(_Text("5"))})
    payloads = data.draw(st.lists(st.one_of(plain, plain, plain, odd), min_size=1, max_size=8))
    sdk = producer(knows_customers)
    sent_before = sdk.sent_since_flush
    try:
        sdk.send_meter_events(event_name, payloads)
        code = None
    except MeterEventInvalid as error:
        code = error.code
    codes = [expected_code(MeterEventRecorded(customer_id=payload.get(key, ""), event_name=event_name,
                                              identifier="generated", payload=payload, event_time_ms=NOW_MS,
                                              received_at_ms=NOW_MS), knows_customers) for payload in payloads]
    first_code = next((code for code in codes if code is not None), None)
    assert code == first_code
    assert sdk.sent_since_flush == sent_before + (len(payloads) if code is None else 0)
