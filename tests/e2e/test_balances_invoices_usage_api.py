"""Balances, transactions, invoices, the preview, usage summaries and meter events through the API.

The stream workers are stood in for by `worker_fact`, which publishes the derived facts they would."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

from billing import facts as f
from billing import ids
from tests.e2e.builders import clock_at, customer, grant, meter, metered_price, ok, subscription, unique

T0_S = 1_767_225_600  # 2026-01-01T00:00:00Z
T0_MS = T0_S * 1000


def granted(worker_fact, customer_id: str, grant_id: str, amount_minor: int = 1000) -> str:
    transaction_id = ids.credit_balance_transaction_id(f.TransactionReason.CREDITS_GRANTED, grant_id)
    worker_fact("credit-balance-transactions", f.CreditBalanceTransaction(
        transaction_id=transaction_id, customer_id=customer_id, grant_id=grant_id, currency="usd",
        amount_minor=amount_minor, type=f.TransactionType.CREDIT, reason=f.TransactionReason.CREDITS_GRANTED,
        effective_at_ms=T0_MS))
    return transaction_id


def hypernian(client, worker_fact):
    """The walkthrough's setup on a test clock at T0: meters, prices, customer, 10 USD grant, subscription."""
    clock = clock_at(client, T0_S)
    input_meter, output_meter = meter(client), meter(client)
    prices = [metered_price(client, input_meter["id"], "3")["id"], metered_price(client, output_meter["id"], "5")["id"]]
    buyer = customer(client, test_clock=clock["id"])
    credit = grant(client, buyer["id"], 1000)
    granted(worker_fact, buyer["id"], credit["id"])
    sub = subscription(client, buyer["id"], *prices)
    return clock, input_meter, output_meter, prices, buyer, credit, sub


def test_the_balance_summary_shows_ledger_and_available_balance_per_currency(client, worker_fact):
    buyer = customer(client)["id"]
    credit = grant(client, buyer, 1000)
    granted(worker_fact, buyer, credit["id"])
    summary = ok(client.get("/v1/billing/credit_balance_summary", params={"customer": buyer}))
    assert summary["object"] == "billing.credit_balance_summary"
    assert summary["balances"] == [{
        "available_balance": {"type": "monetary", "monetary": {"currency": "usd", "value": 1000}},
        "ledger_balance": {"type": "monetary", "monetary": {"currency": "usd", "value": 1000}}}]
    by_grant = ok(client.get("/v1/billing/credit_balance_summary", params={
        "customer": buyer, "filter[type]": "credit_grant", "filter[credit_grant]": credit["id"]}))
    assert by_grant["balances"][0]["ledger_balance"]["monetary"]["value"] == 1000
    by_scope = ok(client.get("/v1/billing/credit_balance_summary", params={
        "customer": buyer, "filter[type]": "applicability_scope",
        "filter[applicability_scope][price_type]": "metered"}))
    assert by_scope["balances"][0]["available_balance"]["monetary"]["value"] == 1000


def test_the_balance_summary_needs_a_known_customer_and_a_valid_filter(client):
    missing = client.get("/v1/billing/credit_balance_summary", params={"customer": "cus_missing"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "customer"
    bad_filter = client.get("/v1/billing/credit_balance_summary", params={
        "customer": customer(client)["id"], "filter[type]": "everything"})
    assert bad_filter.status_code == 400 and bad_filter.json()["error"]["param"] == "filter[type]"


def test_an_expired_grant_has_ledger_but_no_available_balance(client, worker_fact):
    buyer = customer(client)["id"]
    credit = grant(client, buyer, 700)
    granted(worker_fact, buyer, credit["id"], 700)
    ok(client.post(f"/v1/billing/credit_grants/{credit['id']}/expire"))
    balance = ok(client.get("/v1/billing/credit_balance_summary", params={"customer": buyer}))["balances"][0]
    assert balance["ledger_balance"]["monetary"]["value"] == 700  # until the workers write credits_expired
    assert balance["available_balance"]["monetary"]["value"] == 0


def test_credit_balance_transactions_are_listed_by_grant_and_retrieved(client, worker_fact):
    buyer = customer(client)["id"]
    credit = grant(client, buyer, 1000)
    transaction_id = granted(worker_fact, buyer, credit["id"])
    listed = ok(client.get("/v1/billing/credit_balance_transactions",
                           params={"customer": buyer, "credit_grant": credit["id"]}))
    assert [t["id"] for t in listed["data"]] == [transaction_id]
    transaction = ok(client.get(f"/v1/billing/credit_balance_transactions/{transaction_id}"))
    assert transaction["type"] == "credit" and transaction["credit"]["type"] == "credits_granted"
    assert transaction["credit"]["amount"]["monetary"] == {"currency": "usd", "value": 1000}
    assert transaction["credit_grant"] == credit["id"]
    assert client.get("/v1/billing/credit_balance_transactions").status_code == 400  # customer is required


def test_the_preview_rates_usage_to_date_and_applies_provisional_credits(client, worker_fact):
    _, input_meter, _, _, buyer, credit, sub = hypernian(client, worker_fact)
    worker_fact("usage-buckets", f.UsageBucketUpdated(customer_id=buyer["id"], meter_id=input_meter["id"],
                                                      bucket_start_ms=T0_MS + 60_000, value=Decimal("3000"),
                                                      event_count=1, updated_at_ms=T0_MS))
    preview = ok(client.post("/v1/invoices/create_preview", data={"subscription": sub["id"]}))
    assert preview["id"] is None and preview["status"] == "draft"
    assert [(line["quantity"], line["amount"]) for line in preview["lines"]["data"]] == [(3000, 9000), (0, 0)]
    assert preview["subtotal"] == 9000 and preview["amount_due"] == 8000
    assert [c["amount"] for c in preview["total_pretax_credit_amounts"]] == [1000]
    assert preview["lines"]["data"][0]["pretax_credit_amounts"][0]["amount"] == 1000
    assert ok(client.get("/v1/invoices", params={"customer": buyer["id"]}))["data"] == []  # not persisted


def test_the_preview_needs_a_subscription_or_customer(client):
    response = client.post("/v1/invoices/create_preview")
    assert response.status_code == 400 and response.json()["error"]["param"] == "subscription"
    missing = client.post("/v1/invoices/create_preview", data={"subscription": "sub_missing"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "subscription"


def finalized_invoice(buyer_id: str, sub: dict, credit_id: str) -> f.InvoiceFinalized:
    invoice_id = ids.invoice_id(sub["id"], T0_MS)
    item = sub["items"]["data"][0]
    line_id = ids.invoice_line_id(invoice_id, item["id"])
    applied = ids.credit_balance_transaction_id(f.TransactionReason.CREDITS_APPLIED, credit_id, invoice_id, line_id)
    return f.InvoiceFinalized(
        invoice_id=invoice_id, customer_id=buyer_id, subscription_id=sub["id"], currency="usd",
        period_start_ms=T0_MS, period_end_ms=T0_MS + 31 * 86_400_000,
        billing_reason=f.BillingReason.SUBSCRIPTION_CYCLE, finalized_at_ms=T0_MS + 31 * 86_400_000 + 3_600_000,
        lines=(f.InvoiceLine(line_id=line_id, subscription_item_id=item["id"], price_id=item["price"]["id"],
                             meter_id=item["price"]["recurring"]["meter"], quantity=Decimal("3000"),
                             unit_amount_decimal=Decimal("3"), amount_minor=9000,
                             credits=(f.AppliedCredit(credit_balance_transaction_id=applied, grant_id=credit_id,
                                                      amount_minor=1000),)),),
        subtotal_minor=9000, total_credits_minor=1000, amount_due_minor=8000)


def test_a_finalized_invoice_is_listed_and_retrieved_with_its_credits(client, worker_fact):
    _, _, _, _, buyer, credit, sub = hypernian(client, worker_fact)
    invoice = finalized_invoice(buyer["id"], sub, credit["id"])
    worker_fact("invoices", invoice)
    listed = ok(client.get("/v1/invoices", params={"customer": buyer["id"]}))
    assert [i["id"] for i in listed["data"]] == [invoice.invoice_id]
    read = ok(client.get(f"/v1/invoices/{invoice.invoice_id}"))
    assert read["status"] == "open" and read["subtotal"] == 9000 and read["amount_due"] == 8000
    assert read["total_pretax_credit_amounts"] == [{
        "amount": 1000, "credit_balance_transaction": invoice.lines[0].credits[0].credit_balance_transaction_id,
        "type": "credit_balance_transaction"}]
    assert read["lines"]["data"][0]["quantity"] == 3000


def test_voiding_an_invoice_waits_until_the_workers_have_voided_it(client, worker_fact):
    _, _, _, _, buyer, credit, sub = hypernian(client, worker_fact)
    invoice = finalized_invoice(buyer["id"], sub, credit["id"])
    worker_fact("invoices", invoice)

    def worker_voids() -> None:
        time.sleep(0.3)
        worker_fact("invoices", f.InvoiceVoided(invoice_id=invoice.invoice_id, customer_id=buyer["id"],
                                                voided_at_ms=T0_MS))

    thread = threading.Thread(target=worker_voids)
    thread.start()
    voided = ok(client.post(f"/v1/invoices/{invoice.invoice_id}/void"))
    thread.join()
    assert voided["status"] == "void"
    again = client.post(f"/v1/invoices/{invoice.invoice_id}/void")
    assert again.status_code == 400 and again.json()["error"]["code"] == "invoice_already_voided"


def test_event_summaries_group_usage_buckets_by_hour_within_minute_aligned_bounds(client, worker_fact):
    _, input_meter, _, _, buyer, _, _ = hypernian(client, worker_fact)
    for minute, value in ((1, "100"), (2, "50"), (61, "7")):
        worker_fact("usage-buckets", f.UsageBucketUpdated(
            customer_id=buyer["id"], meter_id=input_meter["id"], bucket_start_ms=T0_MS + minute * 60_000,
            value=Decimal(value), event_count=1, updated_at_ms=T0_MS))
    url = f"/v1/billing/meters/{input_meter['id']}/event_summaries"
    whole = ok(client.get(url, params={"customer": buyer["id"], "start_time": T0_S, "end_time": T0_S + 7200}))
    assert [s["aggregated_value"] for s in whole["data"]] == [157]
    hourly = ok(client.get(url, params={"customer": buyer["id"], "start_time": T0_S, "end_time": T0_S + 7200,
                                        "value_grouping_window": "hour"}))
    assert [(s["start_time"], s["aggregated_value"]) for s in hourly["data"]] == [(T0_S + 3600, 7), (T0_S, 150)]
    assert hourly["data"][0]["object"] == "billing.meter_event_summary"
    misaligned = client.get(url, params={"customer": buyer["id"], "start_time": T0_S + 30, "end_time": T0_S + 7200})
    assert misaligned.status_code == 400 and misaligned.json()["error"]["param"] == "start_time"


def test_event_summaries_refuse_a_window_before_the_usage_buckets_kept(client, worker_fact, app, monkeypatch):
    _, input_meter, _, _, buyer, _, _ = hypernian(client, worker_fact)
    ctx = app.state.ctx
    monkeypatch.setattr(ctx, "settings", ctx.settings.model_copy(update={"usage_bucket_retention_days": 45}))
    url = f"/v1/billing/meters/{input_meter['id']}/event_summaries"
    now_s = int(time.time()) // 60 * 60
    # By hand: with 45 days kept, by whole months, everything from the 1st of the month 45 days ago
    # on is there; 100 days ago is always before that, 10 days ago always after.
    old = client.get(url, params={"customer": buyer["id"], "start_time": now_s - 100 * 86_400, "end_time": now_s})
    assert old.status_code == 400 and old.json()["error"]["param"] == "start_time"
    assert "DRAWDOWN_USAGE_BUCKET_RETENTION_DAYS=45" in old.json()["error"]["message"]
    recent = ok(client.get(url, params={"customer": buyer["id"], "start_time": now_s - 10 * 86_400, "end_time": now_s}))
    assert [s["aggregated_value"] for s in recent["data"]] == [0]


def test_a_meter_event_defaults_to_the_customers_test_clock_time(client, worker_fact):
    _, input_meter, _, _, buyer, _, _ = hypernian(client, worker_fact)
    event = ok(client.post("/v1/billing/meter_events", data={
        "event_name": input_meter["event_name"], "payload[stripe_customer_id]": buyer["id"],
        "payload[value]": "3000", "identifier": unique("ev")}))
    assert event["object"] == "billing.meter_event" and event["timestamp"] == T0_S
    assert event["payload"] == {"stripe_customer_id": buyer["id"], "value": "3000"}


def test_meter_events_with_bad_input_are_refused_with_stripes_codes(client, worker_fact):
    _, input_meter, _, _, buyer, _, _ = hypernian(client, worker_fact)
    name = input_meter["event_name"]
    cases = [
        ({"event_name": "no_such_meter", "payload[stripe_customer_id]": buyer["id"], "payload[value]": "1"},
         "no_meter", "event_name"),
        ({"event_name": name, "payload[value]": "1"}, "meter_event_no_customer_defined", "payload"),
        ({"event_name": name, "payload[stripe_customer_id]": "cus_missing", "payload[value]": "1"},
         "meter_event_customer_not_found", "payload"),
        ({"event_name": name, "payload[stripe_customer_id]": buyer["id"], "payload[value]": "lots"},
         "meter_event_invalid_value", "payload[value]"),
        ({"event_name": name, "payload[stripe_customer_id]": buyer["id"]}, "meter_event_value_not_found",
         "payload[value]"),
        ({"event_name": name, "payload[stripe_customer_id]": buyer["id"], "payload[value]": "1",
          "timestamp": T0_S - 36 * 86_400}, "timestamp_too_far_in_past", "timestamp"),
        ({"event_name": name, "payload[stripe_customer_id]": buyer["id"], "payload[value]": "1",
          "timestamp": T0_S + 600}, "timestamp_in_future", "timestamp"),
    ]
    for data, code, param in cases:
        response = client.post("/v1/billing/meter_events", data=data)
        assert response.status_code == 400, (code, response.text)
        assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (code, param)


def test_a_meter_event_adjustment_cancels_by_identifier(client):
    created = meter(client)
    adjustment = ok(client.post("/v1/billing/meter_event_adjustments", data={
        "event_name": created["event_name"], "type": "cancel", "cancel[identifier]": "ev_1"}))
    assert adjustment["object"] == "billing.meter_event_adjustment" and adjustment["cancel"] == {"identifier": "ev_1"}
    missing = client.post("/v1/billing/meter_event_adjustments", data={"event_name": created["event_name"]})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "cancel"


def test_the_batch_endpoint_accepts_up_to_100_events_all_or_none(client, worker_fact):
    _, input_meter, _, _, buyer, _, _ = hypernian(client, worker_fact)
    event = {"event_name": input_meter["event_name"], "payload": {"stripe_customer_id": buyer["id"], "value": "1"},
             "timestamp": "2026-01-01T00:00:00Z"}
    accepted = ok(client.post("/v2/billing/meter_event_stream",
                              json={"events": [dict(event, identifier=unique("b")) for _ in range(100)]}))
    assert accepted["accepted"] == 100
    too_many = client.post("/v2/billing/meter_event_stream", json={"events": [event] * 101})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "events"
    one_bad = client.post("/v2/billing/meter_event_stream", json={"events": [
        event, dict(event, payload={"stripe_customer_id": buyer["id"], "value": "x"})]})
    assert one_bad.status_code == 400 and one_bad.json()["error"]["param"] == "events[1].payload.value"


def test_the_live_balance_read_returns_the_latest_projected_balance(client, worker_fact):
    buyer = customer(client)["id"]
    for accrued in (100, 400):
        worker_fact("live-balances", f.LiveBalanceChanged(customer_id=buyer, currency="usd",
                                                          available_credits_minor=1000, accrued_usage_minor=accrued,
                                                          live_balance_minor=1000 - accrued, as_of_ms=T0_MS + accrued))
    balance = ok(client.get("/v1/billing/live_balance", params={"customer": buyer}))
    assert [(b["currency"], b["live_balance"], b["accrued_usage"]) for b in balance["balances"]] == [("usd", 600, 400)]


def test_the_hot_balance_reads_answer_the_same_bytes_as_before_their_direct_path(client, worker_fact):
    # Byte for byte as the router answered them before the direct path (compact JSON, this key order).
    buyer = customer(client)["id"]
    credit = grant(client, buyer, 1000)
    granted(worker_fact, buyer, credit["id"])
    summary = client.get("/v1/billing/credit_balance_summary", params={"customer": buyer})
    assert summary.headers["content-type"] == "application/json"
    assert summary.content == (
        b'{"object":"billing.credit_balance_summary","customer":"' + buyer.encode() + b'","livemode":false,'
        b'"balances":[{"available_balance":{"type":"monetary","monetary":{"currency":"usd","value":1000}},'
        b'"ledger_balance":{"type":"monetary","monetary":{"currency":"usd","value":1000}}}]}')
    none_yet = client.get("/v1/billing/live_balance", params={"customer": buyer})
    assert none_yet.content == (b'{"object":"billing.live_balance","customer":"' + buyer.encode()
                                + b'","livemode":false,"balances":[]}')
    worker_fact("live-balances", f.LiveBalanceChanged(customer_id=buyer, currency="usd", available_credits_minor=1000,
                                                      accrued_usage_minor=250, live_balance_minor=750,
                                                      as_of_ms=T0_MS + 1500))
    live = client.get("/v1/billing/live_balance", params={"customer": buyer})
    assert live.content == (
        b'{"object":"billing.live_balance","customer":"' + buyer.encode() + b'","livemode":false,"balances":['
        b'{"currency":"usd","available_credits":1000,"accrued_usage":250,"live_balance":750,'
        b'"as_of":1767225601,"as_of_ms":1767225601500}]}')
    missing = client.get("/v1/billing/live_balance", params={"customer": "cus_missing"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "resource_missing"
