"""A hypothesis strategy for meter events that stress validation and dedupe: drawn event names,
customers, values, event times and lateness, with now and then another meter's payload keys.
Shared by the replay fold's and the stream processor's property tests."""

from __future__ import annotations

from hypothesis import strategies as st

from billing.catalog import Catalog
from billing.facts import MeterEventRecorded

OTHER_KEYS = st.sampled_from([("stripe_customer_id", "value"), ("account", "quantity")])


def meter_events(catalog: Catalog, *, event_names, customer_ids, values, event_times_ms, lateness_ms, identifiers,
                 unknown_meter_keys: tuple[str, str], other_keys_one_in: int):
    """Events of `event_names`; an unknown name gets `unknown_meter_keys` (customer key, value key);
    one event in `other_keys_one_in` takes another meter's keys. Receipt = event time + lateness (>= 0)."""

    @st.composite
    def draw_event(draw):
        event_name = draw(event_names)
        meter = catalog.meters_by_event_name.get(event_name)
        customer_key, value_key = (meter.customer_payload_key, meter.value_payload_key) if meter \
            else unknown_meter_keys
        if draw(st.integers(min_value=0, max_value=other_keys_one_in - 1)) == 0:
            customer_key, value_key = draw(OTHER_KEYS)
        customer_id = draw(customer_ids)
        payload = {customer_key: customer_id}
        value = draw(values)
        if value is not None:
            payload[value_key] = value
        event_time_ms = draw(event_times_ms)
        return MeterEventRecorded(customer_id=customer_id, event_name=event_name, identifier=draw(identifiers),
                                  payload=payload, event_time_ms=event_time_ms,
                                  received_at_ms=max(0, event_time_ms + draw(lateness_ms)))

    return draw_event()
