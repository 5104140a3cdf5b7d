"""Events and webhooks through the official Stripe SDK: a receiver on 127.0.0.1 gets the
walkthrough's events signed as Stripe signs them (checked by stripe.Webhook.construct_event), a
dispatcher killed with SIGKILL while the receiver fails loses no event, and an endpoint that keeps
failing is disabled with an event that says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from drawdown.settings import PROJECT_ROOT, Settings
from tests.e2e.builders import wait_for

FAST_RETRIES = {"webhook_retry_first_seconds": 0.1, "webhook_retry_max_seconds": 0.5,
                "webhook_retry_window_seconds": 120.0, "webhook_timeout_seconds": 2.0, "webhook_lease_seconds": 3.0}


class Receiver:
    """A webhook receiver: records every request; answers `failing_status` while `failing` is set."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.failing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers["Content-Length"])
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request (a kill -9): nothing was delivered
                    return
                with receiver.lock:
                    receiver.requests.append((dict(self.headers), body))
                self.send_response(500 if receiver.failing.is_set() else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.request_queue_size = 128  # (5 by default: 16 POSTs at once would wait on SYN retries)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, secret: str) -> dict[str, Any]:
        """Every event received (by id), each verified with the SDK's own signature check."""
        import stripe

        with self.lock:
            requests = list(self.requests)
        return {event.id: event for event in (
            stripe.Webhook.construct_event(body.decode(), headers["Stripe-Signature"], secret)
            for headers, body in requests)}

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    instance = Receiver()
    yield instance
    instance.close()


@pytest.fixture()
def stripe_sdk(api_base: str, secret_key: str) -> Any:
    import stripe

    from api import walkthrough

    walkthrough.configure(stripe, api_base, secret_key)
    return stripe


@pytest.fixture()
def dispatcher(engine_settings: Settings) -> Iterator[Any]:
    """The dispatcher in a thread, with short retries."""
    from projections.webhooks import Dispatcher

    instance = Dispatcher(engine_settings.model_copy(update=FAST_RETRIES))
    stop = threading.Event()
    thread = threading.Thread(target=instance.run, args=(stop,), daemon=True)
    thread.start()
    yield instance
    stop.set()
    thread.join(30)


@pytest.fixture()
def endpoints(stripe_sdk: Any) -> Iterator[list[Any]]:
    """Endpoints a test registers, deleted after it (so that no later test's events go to them)."""
    created: list[Any] = []
    yield created
    for endpoint in created:
        stripe_sdk.WebhookEndpoint.delete(endpoint.id)


def test_the_walkthrough_reaches_a_webhook_receiver_signed_as_stripe_signs(stripe_sdk, worker, dispatcher, receiver,
                                                                            endpoints, app):
    stripe = stripe_sdk
    from api import walkthrough
    from billing.facts import MeterEventRecorded

    endpoint = stripe.WebhookEndpoint.create(url=receiver.url, enabled_events=["*"], description="walkthrough")
    endpoints.append(endpoint)
    assert endpoint.secret.startswith("whsec_") and endpoint.status == "enabled"
    assert "secret" not in stripe.WebhookEndpoint.retrieve(endpoint.id)  # shown on create only

    result = walkthrough.run(stripe, say=lambda line: None, invoice_timeout_s=90)
    invoice, customer_id = result["invoice"], result["invoice"].customer

    def received(event_type: str) -> list[Any]:
        return [event for event in receiver.events(endpoint.secret).values() if event.type == event_type]

    finalized = wait_for(lambda: [e for e in received("invoice.finalized") if e.data.object.id == invoice.id], 60,
                         "invoice.finalized")
    assert (finalized[0].data.object.amount_due, finalized[0].data.object.status) == (8000, "open")  # 9000 - 1000
    assert finalized[0].request.id is None  # the engine finalized it, no API request (as Stripe's automatic events)
    transactions = wait_for(lambda: [e for e in received("billing.credit_balance_transaction.created")
                                     if e.data.object.credit_grant == result["transactions"][0].credit_grant
                                     and e.data.object.type == "debit"], 60, "the credits_applied transaction")
    assert transactions[0].data.object.debit.type == "credits_applied"
    assert transactions[0].data.object.debit.amount.monetary.value == 1000
    # The walkthrough's credit-balance alert: 3000 tokens at 3 cents against 1000 cents of credits.
    (triggered,) = wait_for(lambda: [e for e in received("billing.alert.triggered")
                                     if e.data.object.alert.id == result["alert"].id], 60, "billing.alert.triggered")
    assert triggered.data.object.object == "billing.alert_triggered"
    assert triggered.data.object.customer == customer_id
    # -8000 (1000 - 9000) when the live balance is published before the invoice, 0 if only after it
    # (credits applied, nothing accrued): either way at or below the threshold of 500, and once.
    assert triggered.data.object.value in (-8000, 0)
    assert triggered.data.object.alert.credit_balance_threshold.lte.monetary.value == 500
    for event_type in ("customer.created", "customer.subscription.created", "billing.credit_grant.created",
                       "billing.meter.created", "invoice.created"):
        assert received(event_type), f"no {event_type}"

    # The same events through the API, and their ids are the ones delivered.
    listed = stripe.Event.list(type="invoice.finalized", limit=100)
    assert finalized[0].id in [event.id for event in listed.auto_paging_iter()]
    assert stripe.Event.retrieve(finalized[0].id).data.object.amount_due == 8000
    both = stripe.Event.list(types=["invoice.created", "invoice.finalized"], created={"gte": finalized[0].created},
                             limit=100)
    assert {event.type for event in both.auto_paging_iter()} <= {"invoice.created", "invoice.finalized"}

    # A meter event for an unknown customer (sent as the producer SDK sends it: the API would refuse it at
    # once) is dead-lettered by the workers and reported as Stripe reports meter errors.
    unknown = f"cus_unknown_{uuid.uuid4().hex[:8]}"
    ctx = app.state.ctx
    meter = stripe.billing.Meter.retrieve(stripe.Price.retrieve(invoice.lines.data[0].price).recurring.meter)
    ctx.publisher.publish("customer-facts", unknown, MeterEventRecorded(
        customer_id=unknown, event_name=meter.event_name, identifier=f"{unknown}-1",
        payload={"stripe_customer_id": unknown, "value": "7"}, event_time_ms=int(time.time() * 1000),
        received_at_ms=int(time.time() * 1000)))
    reports = wait_for(lambda: [e for e in received("v1.billing.meter.error_report_triggered")
                                if e.data.object.customer == unknown], 60, "the meter error report")
    report = reports[0].data.object
    assert report.reason.error_types[0].code == "meter_event_customer_not_found"
    assert report.reason.error_types[0].sample_errors[0].request.identifier == f"{unknown}-1"
    assert report.meter == meter.id

    # Every attempt is recorded: the finalized invoice's delivery succeeded at its first attempt.
    import urllib.request

    request = urllib.request.Request(f"{stripe.api_base}/v1/webhook_endpoints/{endpoint.id}/deliveries"
                                     f"?event={finalized[0].id}", headers={"Authorization": f"Bearer {stripe.api_key}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        (delivery,) = json.load(response)["data"]
    assert (delivery["status"], delivery["attempt_count"]) == ("succeeded", 1)
    assert delivery["attempts"][0]["response_status_code"] == 200


def test_the_guides_funding_step_an_invoice_paid_webhook_funds_the_credit_grant(stripe_sdk, worker, dispatcher,
                                                                                  receiver, endpoints):
    """The seed guide's optional step: bill $10 as a one-off invoice; when the integrator's receiver
    gets `invoice.paid`, it grants the amount paid as credits (deduped by event id, as Stripe asks)."""
    stripe = stripe_sdk
    endpoint = stripe.WebhookEndpoint.create(url=receiver.url, enabled_events=["invoice.paid", "invoice.finalized"])
    endpoints.append(endpoint)
    customer = stripe.Customer.create(name="Funded by invoice")
    stripe.InvoiceItem.create(customer=customer.id, amount=1000, currency="usd", description="Prepaid credits")
    draft = stripe.Invoice.create(customer=customer.id, pending_invoice_items_behavior="include")
    invoice = stripe.Invoice.finalize_invoice(draft.id)
    stripe.Invoice.pay(invoice.id, paid_out_of_band=True)

    def paid_events() -> list[Any]:
        return [event for event in receiver.events(endpoint.secret).values()
                if event.type == "invoice.paid" and event.data.object.id == invoice.id]

    (paid,) = wait_for(paid_events, 60, "invoice.paid")
    assert (paid.data.object.amount_paid, paid.data.object.status) == (1000, "paid")
    assert paid.data.previous_attributes.status == "open"
    # The integrator's handler; a redelivery of the same event creates nothing more (idempotency key).
    for _ in range(2):
        stripe.billing.CreditGrant.create(
            customer=paid.data.object.customer, category="paid", name=f"Paid by {paid.data.object.id}",
            amount={"type": "monetary", "monetary": {"value": paid.data.object.amount_paid,
                                                     "currency": paid.data.object.currency}},
            applicability_config={"scope": {"price_type": "metered"}}, idempotency_key=f"grant-for-{paid.id}")
    grants = stripe.billing.CreditGrant.list(customer=customer.id).data
    assert [(grant.amount.monetary.value, grant.name) for grant in grants] == [(1000, f"Paid by {invoice.id}")]

    def available() -> int:
        summary = stripe.billing.CreditBalanceSummary.retrieve(customer=customer.id,
                                                               filter={"type": "applicability_scope",
                                                                       "applicability_scope": {"price_type": "metered"}})
        return summary.balances[0].available_balance.monetary.value if summary.balances else 0

    assert wait_for(lambda: available() == 1000, 60, "the funded grant in the balance summary")


def test_webhook_endpoints_create_list_update_delete(stripe_sdk, endpoints):
    stripe = stripe_sdk
    endpoint = stripe.WebhookEndpoint.create(url="https://example.com/hooks", enabled_events=["invoice.finalized"],
                                             metadata={"team": "billing"})
    assert endpoint.id.startswith("we_") and endpoint.metadata.to_dict() == {"team": "billing"}
    assert endpoint.id in [item.id for item in stripe.WebhookEndpoint.list(limit=100).auto_paging_iter()]
    updated = stripe.WebhookEndpoint.modify(endpoint.id, url="https://example.com/v2",
                                            enabled_events=["invoice.paid", "invoice.voided"], disabled=True)
    assert (updated.url, updated.enabled_events, updated.status) == (
        "https://example.com/v2", ["invoice.paid", "invoice.voided"], "disabled")
    assert stripe.WebhookEndpoint.modify(endpoint.id, disabled=False).status == "enabled"
    deleted = stripe.WebhookEndpoint.delete(endpoint.id)
    assert deleted.deleted is True
    with pytest.raises(stripe.InvalidRequestError):
        stripe.WebhookEndpoint.retrieve(endpoint.id)
    with pytest.raises(stripe.InvalidRequestError):
        stripe.WebhookEndpoint.create(url="ftp://example.com", enabled_events=["*"])


def publish_customers(app: Any, count: int, tag: str) -> list[str]:
    from billing.facts import CustomerCreated

    ctx = app.state.ctx
    ids = [f"cus_{tag}_{index:05d}" for index in range(count)]
    positions = [ctx.publisher.publish("customer-facts", customer_id, CustomerCreated(
        customer_id=customer_id, name=f"Webhook {index}", created_at_ms=int(time.time() * 1000)))
        for index, customer_id in enumerate(ids)]
    ctx.wait(positions)
    return ids


def test_an_endpoint_failing_too_long_is_disabled_with_an_event_saying_so(stripe_sdk, engine_settings, app,
                                                                          receiver, endpoints):
    from projections.webhooks import Dispatcher

    stripe = stripe_sdk
    receiver.failing.set()
    endpoint = stripe.WebhookEndpoint.create(url=receiver.url, enabled_events=["customer.created"])
    endpoints.append(endpoint)
    publish_customers(app, 1, uuid.uuid4().hex[:8])
    stop = threading.Event()
    dispatcher = Dispatcher(engine_settings.model_copy(update={**FAST_RETRIES, "webhook_disable_after_seconds": 1.0}))
    thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: stripe.WebhookEndpoint.retrieve(endpoint.id).status == "disabled", 30, "the endpoint disabled")
    finally:
        stop.set()
        thread.join(30)
    assert len(receiver.requests) >= 2  # retried before giving up on it
    notices = [event for event in stripe.Event.list(type="webhook_endpoint.disabled", limit=100).auto_paging_iter()
               if event.data.object.id == endpoint.id]
    assert len(notices) == 1 and notices[0].data.object.status == "disabled"


def test_a_dispatcher_killed_during_1000_deliveries_to_a_failing_receiver_loses_none(
        stripe_sdk, engine_settings, app, receiver, endpoints, tmp_path):
    from projections.events import event_id

    stripe = stripe_sdk
    receiver.failing.set()  # answers 500 until well into the run
    endpoint = stripe.WebhookEndpoint.create(url=receiver.url, enabled_events=["customer.created"])
    endpoints.append(endpoint)
    env = dict(os.environ, DATABASE_URL=engine_settings.effective_database_url, DRAWDOWN_STATE_DIR=str(tmp_path),
               PYTHONPATH=str(PROJECT_ROOT), PYTHONUNBUFFERED="1",
               **{f"DRAWDOWN_{name.upper()}": str(value) for name, value in FAST_RETRIES.items()})
    log_path = tmp_path / "webhooks.log"

    def start() -> subprocess.Popen:
        with open(log_path, "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "drawdown", "webhooks"], cwd=PROJECT_ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT)

    customers = publish_customers(app, 1000, uuid.uuid4().hex[:8])
    expected = {event_id("customer.created", customer_id) for customer_id in customers}  # ids known in advance
    process = start()
    try:
        wait_for(lambda: len(receiver.requests) >= 300, 60, "300 failed attempts")
        process.send_signal(signal.SIGKILL)  # mid-retries
        process.wait(10)
        receiver.failing.clear()
        process = start()
        wait_for(lambda: len({e for e in receiver.events(endpoint.secret)} & expected) >= 400, 60, "400 delivered")
        process.send_signal(signal.SIGKILL)  # mid-deliveries
        process.wait(10)
        process = start()
        wait_for(lambda: expected <= set(receiver.events(endpoint.secret)), 120,
                 f"all 1000 events (log: {log_path})")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    received = receiver.events(endpoint.secret)
    assert {event.data.object.id for event_id_, event in received.items() if event_id_ in expected} == set(customers)
    succeeded = stripe.WebhookEndpoint.retrieve(endpoint.id)
    assert succeeded.status == "enabled"
