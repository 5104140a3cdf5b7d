"""v2 meter events as the official Stripe SDK sends them (StripeClient with base_addresses pointed at
drawdown): a meter event session's token for the stream, v2 meter_events and adjustments, counted
on the invoice exactly like v1 events."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.e2e.builders import unique, wait_for

START_S = 1_767_225_600  # 2026-01-01T00:00:00Z


def _client(stripe: Any, key: str, api_base: str) -> Any:
    return stripe.StripeClient(key, base_addresses={"api": api_base, "meter_events": api_base}, max_network_retries=0)


def test_v2_session_stream_meter_events_and_adjustments_bill_like_v1(api_base, secret_key, worker, app):
    import stripe

    client = _client(stripe, secret_key, api_base)
    name = unique("tokens")
    meter = client.v1.billing.meters.create({"display_name": "Tokens", "event_name": name,
                                             "default_aggregation": {"formula": "sum"}})
    product = client.v1.products.create({"name": "Tokens"})
    price = client.v1.prices.create({"product": product.id, "currency": "usd", "unit_amount_decimal": "3",
                                     "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}})
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": START_S})
    customer = client.v1.customers.create({"name": "Streamer", "test_clock": clock.id})
    subscription = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}]})

    def payload(value: str) -> dict[str, str]:
        return {"stripe_customer_id": customer.id, "value": value}

    client.v1.billing.meter_events.create({"event_name": name, "payload": payload("100"), "identifier": f"{name}-v1"})
    session = client.v2.billing.meter_event_session.create()
    assert session.object == "v2.billing.meter_event_session" and session.authentication_token.startswith("ek_test_")
    streamer = _client(stripe, session.authentication_token, api_base)
    streamer.v2.billing.meter_event_stream.create({"events": [
        {"event_name": name, "payload": payload("200"), "identifier": f"{name}-s1"},
        {"event_name": name, "payload": payload("300"), "identifier": f"{name}-s2", "timestamp": "2026-01-01T00:00:00Z"},
    ]})
    # The token is stored, not held by one process: another API process accepts it too.
    from api.app import create_app

    with TestClient(create_app(app.state.ctx.settings)) as other_api:
        answer = other_api.post("/v2/billing/meter_event_stream", json={"events": [
            {"event_name": name, "payload": payload("50"), "identifier": f"{name}-other"}]},
            headers={"Authorization": f"Bearer {session.authentication_token}"})
        assert answer.status_code == 200, answer.text
    event = client.v2.billing.meter_events.create({"event_name": name, "payload": payload("400"),
                                                   "identifier": f"{name}-v2"})
    assert (event.object, event.identifier, event.timestamp) == ("v2.billing.meter_event", f"{name}-v2",
                                                                "2026-01-01T00:00:00.000Z")
    adjustment = client.v2.billing.meter_event_adjustments.create(
        {"event_name": name, "type": "cancel", "cancel": {"identifier": f"{name}-s2"}})
    assert (adjustment.status, adjustment.cancel.identifier) == ("pending", f"{name}-s2")

    # 100 (v1) + 200 (stream) + 50 (stream, other API) + 400 (v2) = 750 tokens; the 300 is canceled.
    def preview_subtotal() -> int:
        return client.v1.invoices.create_preview({"subscription": subscription.id}).subtotal

    wait_for(lambda: preview_subtotal() == 2250, 90, "the events and the cancel in the preview")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": subscription.current_period_end + 3660})
    invoice = wait_for(lambda: next(iter(client.v1.invoices.list({"subscription": subscription.id}).data), None), 90,
                       "the period invoice")
    assert [(line.quantity, line.amount) for line in invoice.lines.data] == [(750, 2250)]  # 750 x 3 cents


def test_a_session_token_is_refused_when_expired_elsewhere_or_unknown_and_v2_errors_are_typed(
        api_base, secret_key, app, engine_settings):
    import psycopg
    import stripe

    from api.auth import SESSION_PREFIX, key_sha256

    client = _client(stripe, secret_key, api_base)
    session = client.v2.billing.meter_event_session.create()
    token_client = _client(stripe, session.authentication_token, api_base)
    with pytest.raises(stripe.AuthenticationError):  # a session token is not a key
        token_client.v1.customers.list()
    with pytest.raises(stripe.AuthenticationError):
        _client(stripe, SESSION_PREFIX + "unknown", api_base).v2.billing.meter_event_stream.create({"events": [
            {"event_name": "x", "payload": {"value": "1"}}]})

    expired = SESSION_PREFIX + unique("expired")
    with psycopg.connect(engine_settings.effective_database_url) as conn:
        creator = conn.execute("select key_sha256 from api_keys where key_sha256 = %s", (key_sha256(secret_key),))
        conn.execute("insert into meter_event_sessions (token_sha256, id, key_sha256, created_ms, expires_ms)"
                     " values (%s, %s, %s, 0, 1000)", (key_sha256(expired), unique("mes"), creator.fetchone()[0]))
    with pytest.raises(stripe.TemporarySessionExpiredError):
        _client(stripe, expired, api_base).v2.billing.meter_event_stream.create({"events": [
            {"event_name": "x", "payload": {"value": "1"}}]})

    # Hostile or wrong input: v2's error shape, bounded as v1 (one validation for every path).
    customer = client.v1.customers.create({"name": "v2 errors"})
    name = unique("tokens")
    client.v1.billing.meters.create({"display_name": "T", "event_name": name, "default_aggregation": {"formula": "sum"}})
    good = {"event_name": name, "payload": {"stripe_customer_id": customer.id, "value": "1"}}
    for bad, param in (({**good, "payload": {"stripe_customer_id": customer.id, "value": "1e400"}}, "payload.value"),
                       ({**good, "identifier": "i" * 101}, "identifier"),
                       ({**good, "timestamp": "2020-01-01T00:00:00Z"}, "timestamp"),
                       ({**good, "timestamp": "yesterday"}, "timestamp"),
                       ({**good, "event_name": "no_such_meter"}, "event_name"),
                       ({**good, "extra": 1}, "extra")):
        with pytest.raises(stripe.InvalidRequestError) as refused:
            client.v2.billing.meter_events.create(bad)
        assert refused.value.http_status == 400 and refused.value.json_body["error"]["param"] == param
        assert refused.value.json_body["error"]["type"] == "invalid_request_error"
    with pytest.raises(stripe.InvalidRequestError) as too_many:
        _client(stripe, session.authentication_token, api_base).v2.billing.meter_event_stream.create(
            {"events": [good] * 101})
    assert too_many.value.json_body["error"]["param"] == "events"
    with pytest.raises(stripe.InvalidRequestError):
        client.v2.billing.meter_event_adjustments.create({"event_name": name, "type": "cancel", "cancel": {}})
    with pytest.raises(stripe.InvalidRequestError):
        client.v2.billing.meter_event_session.create({"ttl": 99999})

