"""Small builders for API tests: each creates one object through the API and returns its JSON."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def meter(client: Any, **extra: str) -> dict[str, Any]:
    return ok(client.post("/v1/billing/meters", data={
        "display_name": "Input tokens", "event_name": unique("tokens"), "default_aggregation[formula]": "sum",
        "customer_mapping[event_payload_key]": "stripe_customer_id", "customer_mapping[type]": "by_id",
        "value_settings[event_payload_key]": "value", **extra}))


def product(client: Any) -> dict[str, Any]:
    return ok(client.post("/v1/products", data={"name": "LLM tokens"}))


def metered_price(client: Any, meter_id: str, unit_amount_decimal: str = "3") -> dict[str, Any]:
    return ok(client.post("/v1/prices", data={
        "product": product(client)["id"], "currency": "usd", "unit_amount_decimal": unit_amount_decimal,
        "recurring[interval]": "month", "recurring[usage_type]": "metered", "recurring[meter]": meter_id}))


def clock_at(client: Any, frozen_time: int = 1_767_225_600) -> dict[str, Any]:
    return ok(client.post("/v1/test_helpers/test_clocks", data={"frozen_time": frozen_time, "name": "t"}))


def customer(client: Any, **extra: str) -> dict[str, Any]:
    return ok(client.post("/v1/customers", data={"name": "Jenny Rosen", **extra}))


def grant(client: Any, customer_id: str, value: int = 1000, **extra: Any) -> dict[str, Any]:
    return ok(client.post("/v1/billing/credit_grants", data={
        "customer": customer_id, "amount[type]": "monetary", "amount[monetary][value]": value,
        "amount[monetary][currency]": "usd", "applicability_config[scope][price_type]": "metered",
        "category": "paid", **extra}))


def subscription(client: Any, customer_id: str, *price_ids: str) -> dict[str, Any]:
    data: dict[str, Any] = {"customer": customer_id}
    for index, price_id in enumerate(price_ids):
        data[f"items[{index}][price]"] = price_id
    return ok(client.post("/v1/subscriptions", data=data))


def wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll `check` until it returns something truthy (that is returned), failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return result
