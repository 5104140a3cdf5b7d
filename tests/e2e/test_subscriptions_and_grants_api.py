"""Subscriptions and credit grants through the API, validated against the projection."""

from __future__ import annotations

from billing import facts as f
from tests.e2e.builders import clock_at, customer, grant, meter, metered_price, ok, subscription


def test_a_subscription_with_two_metered_prices_is_created_and_read_back(client):
    buyer = customer(client)
    prices = [metered_price(client, meter(client)["id"], amount)["id"] for amount in ("3", "5")]
    created = subscription(client, buyer["id"], *prices)
    assert created["id"].startswith("sub_") and created["status"] == "active"
    assert [item["price"]["id"] for item in created["items"]["data"]] == prices
    assert all(item["id"].startswith("si_") for item in created["items"]["data"])
    assert created["current_period_end"] > created["current_period_start"]
    listed = ok(client.get("/v1/subscriptions", params={"customer": buyer["id"]}))
    assert [s["id"] for s in listed["data"]] == [created["id"]]


def test_a_subscription_for_a_missing_customer_or_price_names_the_parameter(client):
    price = metered_price(client, meter(client)["id"])["id"]
    missing_customer = client.post("/v1/subscriptions", data={"customer": "cus_missing", "items[0][price]": price})
    assert missing_customer.status_code == 400 and missing_customer.json()["error"]["param"] == "customer"
    missing_price = client.post("/v1/subscriptions", data={"customer": customer(client)["id"],
                                                           "items[0][price]": "price_missing"})
    assert missing_price.status_code == 400 and missing_price.json()["error"]["param"] == "items[0][price]"


def test_a_subscription_without_items_is_refused(client):
    response = client.post("/v1/subscriptions", data={"customer": customer(client)["id"]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "items"


def test_a_subscription_on_a_test_clock_starts_its_month_at_the_clock_time(client):
    clock = clock_at(client, frozen_time=1_767_225_600)  # 2026-01-01
    buyer = customer(client, test_clock=clock["id"])
    created = subscription(client, buyer["id"], metered_price(client, meter(client)["id"])["id"])
    assert created["current_period_start"] == 1_767_225_600
    assert created["current_period_end"] == 1_769_904_000  # 2026-02-01
    assert created["test_clock"] == clock["id"]


def test_cancel_at_period_end_is_scheduled_and_delete_cancels(client):
    created = subscription(client, customer(client)["id"], metered_price(client, meter(client)["id"])["id"])
    scheduled = ok(client.post(f"/v1/subscriptions/{created['id']}", data={"cancel_at_period_end": "true"}))
    assert scheduled["cancel_at_period_end"] is True
    canceled = ok(client.delete(f"/v1/subscriptions/{created['id']}", params={"invoice_now": "true"}))
    assert canceled["status"] == "canceled" and canceled["canceled_at"] is not None
    again = client.delete(f"/v1/subscriptions/{created['id']}")
    assert again.status_code == 400


def test_a_credit_grant_is_created_in_stripes_shape(client):
    buyer = customer(client)
    created = grant(client, buyer["id"], 1000, name="Welcome credits", priority=10, **{"metadata[campaign]": "w"})
    assert created["id"].startswith("credgr_") and created["object"] == "billing.credit_grant"
    assert created["amount"] == {"type": "monetary", "monetary": {"currency": "usd", "value": 1000}}
    assert created["applicability_config"] == {"scope": {"price_type": "metered"}}
    assert created["category"] == "paid" and created["priority"] == 10 and created["metadata"] == {"campaign": "w"}
    assert ok(client.get(f"/v1/billing/credit_grants/{created['id']}"))["name"] == "Welcome credits"
    listed = ok(client.get("/v1/billing/credit_grants", params={"customer": buyer["id"]}))
    assert [g["id"] for g in listed["data"]] == [created["id"]]


def test_a_credit_grant_needs_a_positive_amount_and_one_scope(client):
    buyer = customer(client)["id"]
    zero = client.post("/v1/billing/credit_grants", data={
        "customer": buyer, "amount[type]": "monetary", "amount[monetary][value]": 0,
        "amount[monetary][currency]": "usd", "applicability_config[scope][price_type]": "metered"})
    assert zero.status_code == 400 and zero.json()["error"]["param"] == "amount[monetary][value]"
    no_scope = client.post("/v1/billing/credit_grants", data={
        "customer": buyer, "amount[type]": "monetary", "amount[monetary][value]": 5,
        "amount[monetary][currency]": "usd"})
    assert no_scope.status_code == 400 and no_scope.json()["error"]["param"] == "applicability_config"


def test_a_credit_grant_updates_only_expiry_and_metadata(client):
    created = grant(client, customer(client)["id"])
    updated = ok(client.post(f"/v1/billing/credit_grants/{created['id']}",
                             data={"expires_at": created["effective_at"] + 3600, "metadata[tier]": "gold"}))
    assert updated["expires_at"] == created["effective_at"] + 3600 and updated["metadata"] == {"tier": "gold"}
    refused = client.post(f"/v1/billing/credit_grants/{created['id']}", data={"priority": 1})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "priority"


def test_a_credit_grant_can_be_expired_once(client):
    created = grant(client, customer(client)["id"])
    ok(client.post(f"/v1/billing/credit_grants/{created['id']}/expire"))
    again = client.post(f"/v1/billing/credit_grants/{created['id']}/expire")
    assert again.status_code == 400 and again.json()["error"]["code"] == "credit_grant_already_expired"


def test_an_unapplied_grant_can_be_voided(client):
    created = grant(client, customer(client)["id"])
    voided = ok(client.post(f"/v1/billing/credit_grants/{created['id']}/void"))
    assert voided["voided_at"] is not None


def test_a_grant_that_was_applied_cannot_be_voided(client, worker_fact):
    buyer = customer(client)["id"]
    created = grant(client, buyer)
    worker_fact("credit-balance-transactions", f.CreditBalanceTransaction(
        transaction_id="cbtxn_applied_" + created["id"], customer_id=buyer, grant_id=created["id"], currency="usd",
        amount_minor=300, type=f.TransactionType.DEBIT, reason=f.TransactionReason.CREDITS_APPLIED,
        invoice_id="in_x", invoice_line_id="il_x", effective_at_ms=1_767_225_600_000))
    response = client.post(f"/v1/billing/credit_grants/{created['id']}/void")
    assert response.status_code == 400 and response.json()["error"]["code"] == "credit_grant_already_applied"
