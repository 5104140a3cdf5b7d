"""Meters, products, prices, customers and test clocks through the API, read back at once."""

from __future__ import annotations

from tests.e2e.builders import clock_at, customer, meter, metered_price, ok, product, unique


def test_a_meter_is_created_read_listed_and_renamed(client):
    created = meter(client)
    assert created["id"].startswith("mtr_") and created["object"] == "billing.meter"
    assert created["default_aggregation"] == {"formula": "sum"} and created["status"] == "active"
    assert ok(client.get(f"/v1/billing/meters/{created['id']}"))["event_name"] == created["event_name"]
    assert created["id"] in [m["id"] for m in ok(client.get("/v1/billing/meters", params={"limit": 100}))["data"]]
    renamed = ok(client.post(f"/v1/billing/meters/{created['id']}", data={"display_name": "Tokens in"}))
    assert renamed["display_name"] == "Tokens in"


def test_a_meter_cannot_change_its_event_name(client):
    created = meter(client)
    response = client.post(f"/v1/billing/meters/{created['id']}", data={"event_name": "other"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "event_name"


def test_a_second_meter_with_the_same_event_name_is_refused(client):
    created = meter(client)
    response = client.post("/v1/billing/meters", data={"display_name": "x", "event_name": created["event_name"],
                                                       "default_aggregation[formula]": "sum"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "event_name"


def test_an_unknown_aggregation_formula_is_refused(client):
    response = client.post("/v1/billing/meters", data={"display_name": "x", "event_name": unique("e"),
                                                       "default_aggregation[formula]": "median"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "default_aggregation[formula]"


def test_a_deactivated_meter_takes_no_new_price_until_reactivated(client):
    created = meter(client)
    assert ok(client.post(f"/v1/billing/meters/{created['id']}/deactivate"))["status"] == "inactive"
    assert client.post(f"/v1/billing/meters/{created['id']}/deactivate").status_code == 400
    refused = client.post("/v1/prices", data={
        "product": product(client)["id"], "currency": "usd", "unit_amount_decimal": "3",
        "recurring[interval]": "month", "recurring[usage_type]": "metered", "recurring[meter]": created["id"]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "recurring[meter]"
    assert ok(client.post(f"/v1/billing/meters/{created['id']}/reactivate"))["status"] == "active"
    assert metered_price(client, created["id"])["recurring"]["meter"] == created["id"]


def test_a_metered_price_keeps_its_exact_decimal_unit_amount(client):
    price = metered_price(client, meter(client)["id"], unit_amount_decimal="0.000125")
    assert price["id"].startswith("price_")
    assert price["unit_amount_decimal"] == "0.000125" and price["unit_amount"] is None
    assert price["recurring"]["usage_type"] == "metered" and price["recurring"]["interval"] == "month"
    assert ok(client.get(f"/v1/prices/{price['id']}"))["unit_amount_decimal"] == "0.000125"


def test_a_price_with_more_than_12_decimal_places_is_refused(client):
    response = client.post("/v1/prices", data={
        "product": product(client)["id"], "currency": "usd", "unit_amount_decimal": "0.0000000000001",
        "recurring[interval]": "month", "recurring[usage_type]": "metered", "recurring[meter]": meter(client)["id"]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "unit_amount_decimal"


def test_a_metered_price_without_a_meter_is_refused(client):
    response = client.post("/v1/prices", data={
        "product": product(client)["id"], "currency": "usd", "unit_amount_decimal": "3",
        "recurring[interval]": "month", "recurring[usage_type]": "metered"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "recurring[meter]"


def test_a_price_for_a_missing_product_names_the_product_parameter(client):
    response = client.post("/v1/prices", data={"product": "prod_missing", "currency": "usd", "unit_amount": 5,
                                               "recurring[interval]": "month"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "product"


def test_products_are_created_read_and_listed(client):
    created = product(client)
    assert created["id"].startswith("prod_")
    assert ok(client.get(f"/v1/products/{created['id']}"))["name"] == "LLM tokens"
    assert ok(client.get("/v1/products", params={"limit": 1}))["data"][0]["id"] == created["id"]


def test_a_customer_on_a_test_clock_is_created_at_the_clock_time(client):
    clock = clock_at(client, frozen_time=1_767_225_600)
    created = customer(client, test_clock=clock["id"])
    assert created["test_clock"] == clock["id"] and created["created"] == 1_767_225_600
    listed = ok(client.get("/v1/customers", params={"test_clock": clock["id"]}))
    assert [c["id"] for c in listed["data"]] == [created["id"]]


def test_a_customer_on_a_missing_test_clock_is_refused(client):
    response = client.post("/v1/customers", data={"name": "x", "test_clock": "clock_missing"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "test_clock"


def test_a_test_clock_advances_only_forward_and_can_be_deleted(client):
    clock = clock_at(client, frozen_time=1_767_225_600)
    assert clock["id"].startswith("clock_") and clock["status"] == "ready"
    advanced = ok(client.post(f"/v1/test_helpers/test_clocks/{clock['id']}/advance",
                              data={"frozen_time": 1_767_225_600 + 86_400}))
    assert advanced["frozen_time"] == 1_767_225_600 + 86_400
    backwards = client.post(f"/v1/test_helpers/test_clocks/{clock['id']}/advance", data={"frozen_time": 1_767_225_600})
    assert backwards.status_code == 400 and backwards.json()["error"]["param"] == "frozen_time"
    assert clock["id"] in [c["id"] for c in ok(client.get("/v1/test_helpers/test_clocks", params={"limit": 100}))["data"]]
    assert ok(client.delete(f"/v1/test_helpers/test_clocks/{clock['id']}"))["deleted"] is True
    assert client.get(f"/v1/test_helpers/test_clocks/{clock['id']}").status_code == 404


def test_a_test_clock_needs_a_frozen_time(client):
    response = client.post("/v1/test_helpers/test_clocks", data={"name": "x"})
    assert response.status_code == 400 and response.json()["error"] == {
        "type": "invalid_request_error", "code": "parameter_missing", "param": "frozen_time",
        "message": "Missing required param: frozen_time."}
