"""Hostile input at the API edge (issue 12, findings 2, 4 and 5): every case answers a Stripe-shaped
4xx, never 500, and nothing out of bounds reaches Kafka. Real Kafka and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.e2e.builders import customer, meter, metered_price, ok, product

ONE_MIB = 1024 * 1024


def stripe_error(response: Any, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == code and error["message"], error
    if param is not None:
        assert error["param"] == param, error
    return error


# --- body size, field count, nesting, list length (finding 4) -------------------------------------


def test_a_body_longer_than_the_limit_answers_413_from_its_content_length(client):
    response = client.post("/v1/customers", content=b"name=" + b"a" * ONE_MIB,
                           headers={"content-type": "application/x-www-form-urlencoded"})
    stripe_error(response, 413, "request_too_large")


@pytest.mark.parametrize("idempotency_key", [None, "big-streamed-body"])
def test_a_streamed_body_longer_than_the_limit_answers_413_by_counting_its_bytes(client, idempotency_key):
    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        yield b"name="
        for _ in range(17):
            yield b"a" * 65536

    headers = {"content-type": "application/x-www-form-urlencoded"}
    if idempotency_key:
        headers["idempotency-key"] = f"{idempotency_key}-{uuid.uuid4().hex}"
    response = client.post("/v1/customers", content=chunks(), headers=headers)
    stripe_error(response, 413, "request_too_large")


def test_a_body_just_under_the_limit_is_read(client):
    response = client.post("/v1/customers", content=b"name=Jenny&email=" + b"a" * (ONE_MIB - 100),
                           headers={"content-type": "application/x-www-form-urlencoded"})
    # Read and refused for its content (email is at most 512 characters), not for its size.
    stripe_error(response, 400, "parameter_invalid", "email")


def test_more_form_fields_than_the_limit_answer_400(client):
    body = "&".join(f"metadata[k{index}]=v" for index in range(10_001))
    response = client.post("/v1/customers", content=body, headers={"content-type": "application/x-www-form-urlencoded"})
    stripe_error(response, 400, "parameter_invalid")


def test_more_query_fields_than_the_limit_answer_400(client):
    query = "&".join(["a=1"] * 10_001)
    stripe_error(client.get(f"/v1/customers?{query}"), 400, "parameter_invalid")


@pytest.mark.parametrize("path", ["/v1/customers", "/v2/billing/meter_event_stream"])
def test_json_nested_a_thousand_deep_answers_400(client, path):
    body = '{"metadata": ' + "[" * 1000 + "]" * 1000 + "}"
    stripe_error(client.post(path, content=body, headers={"content-type": "application/json"}), 400,
                 "parameter_invalid")


def test_json_nested_deeper_than_parameters_go_answers_400_naming_no_500(client):
    body = json.dumps({"name": "n", "metadata": {"a": {"b": {"c": {"d": {"e": {"f": {"g": "x"}}}}}}}})
    stripe_error(client.post("/v1/customers", content=body, headers={"content-type": "application/json"}), 400,
                 "parameter_invalid")


def test_a_list_index_beyond_its_length_limit_answers_400(client):
    response = client.post("/v1/subscriptions", data={"customer": customer(client)["id"], "items[5000][price]": "p"})
    stripe_error(response, 400, "parameter_invalid", "items")


def test_a_list_index_of_thousands_of_digits_answers_400(client):
    response = client.post("/v1/subscriptions", data={"customer": "cus_x", f"items[{'9' * 5000}][price]": "p"})
    stripe_error(response, 400, "parameter_invalid", "items")


# --- numbers bounded at the edge (findings 2 and 4) -------------------------------------------------


@pytest.mark.parametrize("text", ["1e5000", "1E-5000", "NaN", "Infinity", "-Infinity", "9" * 40, "100000000",
                                  "1e8", "0.0000000000001", "-1"])
def test_a_unit_amount_decimal_out_of_bounds_answers_400_and_price_lists_stay_readable(client, text):
    response = client.post("/v1/prices", data={
        "product": product(client)["id"], "currency": "usd", "unit_amount_decimal": text,
        "recurring[interval]": "month", "recurring[usage_type]": "licensed"})
    stripe_error(response, 400, "parameter_invalid_decimal", "unit_amount_decimal")
    assert client.get("/v1/prices", params={"limit": 100}).status_code == 200


def test_the_largest_unit_price_is_accepted(client):
    price = ok(client.post("/v1/prices", data={
        "product": product(client)["id"], "currency": "usd", "unit_amount_decimal": "99999999.999999999999",
        "recurring[interval]": "month", "recurring[usage_type]": "licensed"}))
    assert price["unit_amount_decimal"] == "99999999.999999999999"


def test_a_unit_amount_over_eight_digits_answers_400(client):
    response = client.post("/v1/prices", data={
        "product": product(client)["id"], "currency": "usd", "unit_amount": 100_000_000,
        "recurring[interval]": "month", "recurring[usage_type]": "licensed"})
    stripe_error(response, 400, "parameter_invalid_integer", "unit_amount")


@pytest.mark.parametrize("value", ["999999999999999999", "1000000000", "-1000000000", "1e9", "1e5000", "NaN"])
def test_a_meter_event_value_out_of_bounds_answers_400_naming_the_value(client, value):
    usage = meter(client)
    buyer = customer(client)
    response = client.post("/v1/billing/meter_events", data={
        "event_name": usage["event_name"], "payload[stripe_customer_id]": buyer["id"], "payload[value]": value})
    stripe_error(response, 400, "meter_event_invalid_value", "payload[value]")
    stream = client.post("/v2/billing/meter_event_stream", json={"events": [
        {"event_name": usage["event_name"], "payload": {"stripe_customer_id": buyer["id"], "value": "1"}},
        {"event_name": usage["event_name"], "payload": {"stripe_customer_id": buyer["id"], "value": value}}]})
    stripe_error(stream, 400, "meter_event_invalid_value", "events[1].payload.value")


def test_the_largest_meter_event_value_is_accepted(client):
    usage = meter(client)
    buyer = customer(client)
    ok(client.post("/v1/billing/meter_events", data={
        "event_name": usage["event_name"], "payload[stripe_customer_id]": buyer["id"],
        "payload[value]": "999999999.999999999999"}))


def test_a_grant_over_the_amount_bound_answers_400(client):
    response = client.post("/v1/billing/credit_grants", data={
        "customer": customer(client)["id"], "amount[type]": "monetary", "amount[monetary][value]": 10**15 + 1,
        "amount[monetary][currency]": "usd", "applicability_config[scope][price_type]": "metered"})
    stripe_error(response, 400, "parameter_invalid_integer", "amount[monetary][value]")


def test_a_subscription_quantity_over_its_bound_answers_400(client):
    price = metered_price(client, meter(client)["id"])["id"]
    response = client.post("/v1/subscriptions", data={"customer": customer(client)["id"], "items[0][price]": price,
                                                      "items[0][quantity]": 10**9 + 1})
    stripe_error(response, 400, "parameter_invalid_integer", "items[0][quantity]")


# --- the unused-grants limit (finding 5) -------------------------------------------------------------


def seed_hundred_grants(database_url: str, buyer: str, used_up: bool) -> None:
    """100 grants of 1.00 USD straight into the projection, each granted and, when `used_up`, applied
    in full (ledger 0): only the API's check is tested."""
    transactions = (("credits_granted", "credit"), ("credits_applied", "debit"))[:2 if used_up else 1]
    with psycopg.connect(database_url, autocommit=True) as conn:
        for _ in range(100):
            grant_id = f"credgr_seeded_{uuid.uuid4().hex[:12]}"
            conn.execute(
                "insert into credit_grants (id, customer_id, name, amount_minor, currency, scope_price_type,"
                " scope_price_ids, category, priority, effective_at_ms, expires_at_ms, metadata, test_clock_id,"
                " voided_ms, expired_ms, created_ms, updated_ms) values (%s, %s, null, 100, 'usd', 'metered', '{}',"
                " 'paid', 50, 1000, null, '{}', null, null, null, 1000, 1000)", (grant_id, buyer))
            for reason, kind in transactions:
                conn.execute(
                    "insert into credit_balance_transactions (id, customer_id, grant_id, currency, amount_minor,"
                    " type, reason, invoice_id, invoice_line_id, effective_at_ms) values"
                    " (%s, %s, %s, 'usd', 100, %s, %s, null, null, 1000)",
                    (f"cbtxn_{kind}_{grant_id}", buyer, grant_id, kind, reason))


def create_a_grant(client, buyer: str):
    return client.post("/v1/billing/credit_grants", data={
        "customer": buyer, "amount[type]": "monetary", "amount[monetary][value]": 500,
        "amount[monetary][currency]": "usd", "applicability_config[scope][price_type]": "metered"})


def test_used_up_grants_do_not_count_toward_the_hundred_unused_grants(client, engine_settings):
    """100 grants whose credits were all applied (ledger 0) are used, not unused (Stripe): a
    101st grant is accepted."""
    buyer = customer(client)["id"]
    seed_hundred_grants(engine_settings.effective_database_url, buyer, used_up=True)
    response = create_a_grant(client, buyer)
    assert response.status_code == 200, response.text


def test_the_hundred_and_first_unused_grant_is_refused(client, engine_settings):
    buyer = customer(client)["id"]
    seed_hundred_grants(engine_settings.effective_database_url, buyer, used_up=False)
    stripe_error(create_a_grant(client, buyer), 400, "too_many_unused_credit_grants", "customer")


# --- per-key rate limit -------------------------------------------------------------------------------


def test_a_key_over_its_rate_answers_429_rate_limit_and_other_keys_go_on(app, engine_settings, secret_key):
    from api.app import create_app
    from api.auth import create_key

    # One process serves this app: it holds the key's whole rate and burst.
    limited = create_app(engine_settings.model_copy(update={"rate_limit_per_second": 0.01, "rate_limit_burst": 3,
                                                            "api_processes": 1}), context=app.state.ctx)
    other_key = create_key(engine_settings.effective_database_url)
    with TestClient(limited) as http:
        answers = [http.get("/v1/customers", headers={"Authorization": f"Bearer {secret_key}"}) for _ in range(5)]
        assert [answer.status_code for answer in answers] == [200, 200, 200, 429, 429]
        error = stripe_error(answers[3], 429, "rate_limit")
        assert "too many requests" in error["message"].lower()
        assert int(answers[3].headers["retry-after"]) >= 1
        assert http.get("/v1/customers", headers={"Authorization": f"Bearer {other_key}"}).status_code == 200
