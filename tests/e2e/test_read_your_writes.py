"""Read-your-writes: a command is answered only once the projection has its fact, within a bound."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from tests.e2e.builders import customer, grant, ok


def test_a_create_followed_at_once_by_a_dependent_create_and_a_read_succeeds(client):
    for _ in range(3):
        buyer = customer(client)
        credit = grant(client, buyer["id"])  # validated against the projection: the customer must be there
        assert ok(client.get(f"/v1/billing/credit_grants/{credit['id']}"))["customer"] == buyer["id"]
        listed = ok(client.get("/v1/billing/credit_grants", params={"customer": buyer["id"]}))
        assert [g["id"] for g in listed["data"]] == [credit["id"]]


def test_a_command_whose_projection_lags_past_the_bound_is_answered_503_projection_lagging(
        engine_settings, secret_key):
    from api.app import build_context, create_app
    from api.auth import store_key

    # A projection schema that no projector feeds: the wait can only time out.
    schema = f"lagging_{uuid.uuid4().hex[:8]}"
    lagging = engine_settings.model_copy(update={"read_your_writes_timeout_ms": 300})
    context = build_context(lagging, schema)
    store_key(lagging.effective_database_url, secret_key, read_only=False, schema=schema)
    try:
        with TestClient(create_app(lagging, schema=schema, context=context),
                        headers={"Authorization": f"Bearer {secret_key}"}) as lagging_client:
            response = lagging_client.post("/v1/customers", data={"name": "Later"})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "projection_lagging"
    finally:
        context.publisher.close()
        context.pool.close()
