"""Stripe's conventions: auth, error shape, parameters, lists, idempotency, health, metrics."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from tests.e2e.builders import customer, ok


def test_a_request_without_a_key_is_refused_with_401(app):
    response = TestClient(app).get("/v1/customers")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_request_with_an_unknown_key_is_refused_with_401(app):
    response = TestClient(app, headers={"Authorization": "Bearer sk_test_nope"}).get("/v1/customers")
    assert response.status_code == 401
    assert "Invalid API Key" in response.json()["error"]["message"]


def test_a_read_only_key_can_read_but_not_write(app, read_only_key):
    restricted = TestClient(app, headers={"Authorization": f"Bearer {read_only_key}"})
    assert restricted.get("/v1/customers").status_code == 200
    refused = restricted.post("/v1/customers", data={"name": "x"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "secret_key_required"


def test_an_unknown_parameter_is_a_400_naming_it(client):
    response = client.post("/v1/customers", data={"name": "x", "nickname": "y"})
    assert response.status_code == 400
    assert response.json()["error"] == {"type": "invalid_request_error", "code": "parameter_unknown",
                                        "param": "nickname", "message": "Received unknown parameter: nickname"}


def test_an_unknown_nested_parameter_is_named_with_its_brackets(client):
    response = client.post("/v1/billing/meters", data={
        "display_name": "d", "event_name": "e", "default_aggregation[formula]": "sum",
        "default_aggregation[extra]": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "default_aggregation[extra]"


def test_a_malformed_integer_is_a_400_naming_the_parameter(client):
    response = client.get("/v1/customers", params={"limit": "ten"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "limit"


def test_a_limit_outside_1_to_100_is_refused(client):
    for limit in ("0", "101"):
        response = client.get("/v1/customers", params={"limit": limit})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "limit"


def test_a_missing_object_is_a_404_resource_missing(client):
    response = client.get("/v1/customers/cus_missing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "resource_missing"
    assert "cus_missing" in response.json()["error"]["message"]


def test_an_unknown_url_is_a_404_in_stripe_shape(client):
    response = client.get("/v1/nothing_here")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_json_bodies_are_accepted_like_form_bodies(client):
    created = ok(client.post("/v1/customers", json={"name": "Json Rosen", "metadata": {"plan": "pro"}}))
    assert created["metadata"] == {"plan": "pro"}


def test_lists_page_newest_first_with_starting_after_and_ending_before(client):
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    ids = [customer(client, email=email)["id"] for _ in range(3)]
    first = ok(client.get("/v1/customers", params={"email": email, "limit": 2}))
    assert first["object"] == "list" and first["url"] == "/v1/customers"
    assert [c["id"] for c in first["data"]] == [ids[2], ids[1]]
    assert first["has_more"] is True
    second = ok(client.get("/v1/customers", params={"email": email, "limit": 2, "starting_after": ids[1]}))
    assert [c["id"] for c in second["data"]] == [ids[0]]
    assert second["has_more"] is False
    before = ok(client.get("/v1/customers", params={"email": email, "limit": 2, "ending_before": ids[0]}))
    assert [c["id"] for c in before["data"]] == [ids[2], ids[1]]


def test_an_idempotency_key_replays_the_first_response(client):
    key = uuid.uuid4().hex
    first = client.post("/v1/customers", data={"name": "Once"}, headers={"Idempotency-Key": key})
    again = client.post("/v1/customers", data={"name": "Once"}, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"


def test_an_idempotency_key_reused_with_other_parameters_is_an_idempotency_error(client):
    key = uuid.uuid4().hex
    ok(client.post("/v1/customers", data={"name": "First"}, headers={"Idempotency-Key": key}))
    response = client.post("/v1/customers", data={"name": "Second"}, headers={"Idempotency-Key": key})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "idempotency_error"


def test_every_response_carries_its_own_request_id_as_stripe_does(app, client, api_base, secret_key):
    import re

    import stripe

    key = uuid.uuid4().hex
    responses = [client.get("/v1/customers"), client.post("/v1/customers", data={"name": "x", "nickname": "y"}),
                 client.get("/v1/customers/cus_missing"), TestClient(app).get("/v1/customers"),
                 client.post("/v1/customers", data={"name": "Once"}, headers={"Idempotency-Key": key}),
                 client.post("/v1/customers", data={"name": "Once"}, headers={"Idempotency-Key": key}),
                 client.get("/v1/nowhere")]
    assert [r.status_code for r in responses] == [200, 400, 404, 401, 200, 200, 404]
    request_ids = [r.headers.get("Request-Id") for r in responses]
    assert all(re.fullmatch(r"req_[A-Za-z0-9]{14,}", str(request_id)) for request_id in request_ids), request_ids
    assert len(set(request_ids)) == len(request_ids)  # a replayed response is a new request too
    # The official SDK reads it as Stripe's: on objects (last_response) and on errors.
    sdk = stripe.StripeClient(secret_key, base_addresses={"api": api_base})
    created = sdk.customers.create(params={"name": "Has a request id"})
    assert created.last_response.request_id.startswith("req_")
    try:
        sdk.customers.retrieve("cus_missing")
    except stripe.InvalidRequestError as error:
        assert error.request_id.startswith("req_")
    else:
        raise AssertionError("a missing customer was found")


def test_healthz_and_prometheus_metrics_answer_without_a_key(app, client):
    anonymous = TestClient(app)
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    client.get("/v1/customers")
    metrics = anonymous.get("/metrics")
    assert metrics.status_code == 200
    assert 'drawdown_api_requests_total{method="GET",route="/v1/customers",status="200"}' in metrics.text


def test_the_openapi_document_lists_the_stripe_paths(app):
    document = TestClient(app).get("/openapi.json").json()
    for path in ("/v1/billing/meters", "/v1/billing/credit_grants", "/v1/invoices/create_preview",
                 "/v1/test_helpers/test_clocks/{id}/advance", "/v2/billing/meter_event_stream",
                 "/v1/subscription_items", "/v1/subscription_items/{id}"):
        assert path in document["paths"]
