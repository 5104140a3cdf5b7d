"""The guide done by an operator in the dashboard with a real browser (Debian's chromium), against
the real stack: API + projector in process, the stream worker as a subprocess, Kafka, PostgreSQL.

Hand-worked numbers (STRIPE.md's walkthrough): 3000 input tokens at 3 cents = $90.00 subtotal, the
$10.00 grant applies -$10.00, $80.00 is due; the grant's ledger ends at $0.00 after one credit of
$10.00 and one debit of $10.00.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import time
import uuid

from playwright.sync_api import expect

from tests.e2e.dashboard.conftest import PHONE, log_in

CLOCK_START = "2026-01-01T00:00"  # the test clock's frozen time (UTC); the monthly period ends 2026-02-01


def shot(page, artifacts, name: str) -> None:
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def test_an_operator_runs_the_whole_guide_in_the_browser_and_reads_9000_minus_1000_credits_due_8000(
        page, api_base, secret_key, worker, engine_settings, artifacts):
    import stripe

    suffix = uuid.uuid4().hex[:8]
    dashboard = f"{api_base}/dashboard"
    log_in(page, api_base, secret_key)

    # 1. Meters
    meters = {}
    for label, event_name in (("Hypernian input tokens", f"hypernian_input_tokens_{suffix}"),
                              ("Hypernian output tokens", f"hypernian_output_tokens_{suffix}")):
        page.goto(f"{dashboard}/meters")
        page.get_by_label("Display name").fill(label)
        page.get_by_label("Event name").fill(event_name)
        page.get_by_role("button", name="Create meter").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text(label)
        meters[label] = page.url.rsplit("/", 1)[-1]
    assert all(meter_id.startswith("mtr_") for meter_id in meters.values())

    # 2. Products and metered prices: 3 and 5 cents a token
    for product_name, meter_label, cents in (("Hypernian Input tokens", "Hypernian input tokens", "3"),
                                             ("Hypernian Output tokens", "Hypernian output tokens", "5")):
        page.goto(f"{dashboard}/products")
        page.get_by_label("Product name").fill(f"{product_name} {suffix}")
        page.get_by_role("button", name="Create product").click()
        expect(page.get_by_role("combobox", name="Product", exact=True)).to_have_value(page.url.split("product=")[1].split("#")[0])
        page.get_by_label("Unit price in minor units").fill(cents)
        page.get_by_label("Usage type").select_option("metered")
        page.get_by_label("Meter").select_option(label=meter_label)
        page.get_by_role("button", name="Create price").click()
        expect(page.get_by_role("cell", name=f"{product_name} {suffix}")).to_have_count(2)  # products and prices
    shot(page, artifacts, "products-and-prices")

    # 3. A test clock, and the customer on it
    page.goto(f"{dashboard}/test_clocks")
    page.get_by_label("Name", exact=True).fill(f"guide {suffix}")
    page.get_by_label("Frozen time (UTC)").fill(CLOCK_START)
    page.get_by_role("button", name="Create test clock").click()
    expect(page.locator("[data-clock=frozen-time]")).to_have_text("2026-01-01 00:00 UTC")
    clock_url = page.url
    clock_id = clock_url.rsplit("/", 1)[-1]

    page.goto(f"{dashboard}/customers")
    page.get_by_label("Name", exact=True).fill(f"Jenny Rosen {suffix}")
    page.get_by_label("Email", exact=True).fill(f"jenny.{suffix}@example.com")
    page.get_by_label("Test clock").select_option(clock_id)
    page.get_by_role("button", name="Create customer").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Jenny Rosen {suffix}")
    customer_url = page.url
    customer_id = customer_url.rsplit("/", 1)[-1]

    # 4. A $10.00 grant for metered prices
    page.get_by_text("New credit grant").click()
    page.get_by_label("Name", exact=True).fill("Welcome credits")
    page.get_by_label("Amount in minor units").fill("1000")
    page.get_by_role("button", name="Create credit grant").click()
    expect(page.locator("#grants tbody tr")).to_have_count(1)
    expect(page.locator("#balances [data-balance=available]")).to_have_text("$10.00")

    # 4b. A billing alert for when the credits run low ($5.00 or less, usage not yet invoiced counted)
    page.get_by_text("New credit balance alert").click()
    page.get_by_label("At or below, in minor units").fill("500")
    page.get_by_role("button", name="Create alert").click()
    alert_row = page.locator("#alerts tbody tr")
    expect(alert_row).to_have_count(1)
    expect(alert_row.locator("td").nth(1)).to_have_text("live balance at or below $5.00")

    # 5. The subscription to both prices
    page.get_by_text("New subscription").click()
    page.get_by_label(f"Hypernian Input tokens {suffix}: $0.03 per unit").check()
    page.get_by_label(f"Hypernian Output tokens {suffix}: $0.05 per unit").check()
    page.get_by_role("button", name="Create subscription").click()
    expect(page.locator("#subscriptions tbody tr")).to_have_count(1)
    burn_down = page.locator("[data-chart=burn-down] [data-chart-summary]")
    expect(burn_down).to_have_text("Credits left $10.00, usage this period $0.00")

    # 6. Usage through the Stripe SDK; the burn-down and the live balance follow without a reload
    stripe.api_base, stripe.api_key, stripe.max_network_retries = api_base, secret_key, 2
    stripe.billing.MeterEvent.create(event_name=f"hypernian_input_tokens_{suffix}",
                                     payload={"stripe_customer_id": customer_id, "value": "3000"},
                                     identifier=f"dashboard-guide-{suffix}")
    expect(burn_down).to_have_text("Credits left $0.00, usage this period $90.00", timeout=60_000)
    expect(page.locator("#balances .live strong")).to_have_text("-$80.00", timeout=60_000)
    assert page.url.split("#")[0] == customer_url  # no navigation happened
    # The alert triggered with the live balance of -$80.00 (1000 - 9000 cents): shown once projected
    deadline = time.monotonic() + 60
    while "triggered" not in (alert_row.locator("td").nth(3).text_content() or "") and time.monotonic() < deadline:
        page.wait_for_timeout(500)
        page.reload()
    expect(alert_row.locator("td").nth(3)).to_contain_text("triggered")
    expect(alert_row.locator("td").nth(3)).to_contain_text("-$80.00")
    shot(page, artifacts, "customer-before-period-end")

    page.goto(f"{dashboard}/meters/{meters['Hypernian input tokens']}")
    expect(page.locator("[data-chart=usage] [data-chart-summary]")).to_have_text("Total in this window: 3000")
    shot(page, artifacts, "meter-usage")

    # 7. Past the period's end and its grace period
    period_end = datetime.datetime(2026, 2, 1, tzinfo=datetime.timezone.utc)
    target = period_end + datetime.timedelta(seconds=engine_settings.grace_period_seconds + 60)
    page.goto(clock_url)
    page.get_by_label("Advance to (UTC)").fill(target.strftime("%Y-%m-%dT%H:%M"))
    page.get_by_role("button", name="Advance clock").click()
    expect(page.locator("[data-clock=status]")).to_have_text("ready", timeout=120_000)
    shot(page, artifacts, "test-clock")

    # 8. The invoice: lines, subtotal, Applied credits per grant, amount due
    page.goto(customer_url)
    page.locator("#invoices tbody a").first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("open")
    rows = page.locator("table.invoice tbody tr")
    expect(rows).to_have_count(2)
    input_line = rows.filter(has_text=f"Hypernian Input tokens {suffix}").locator("td")
    expect(input_line).to_have_text([re.compile(f"Hypernian Input tokens {suffix}"), "3000", "$0.03", "$90.00"])
    output_line = rows.filter(has_text=f"Hypernian Output tokens {suffix}").locator("td")
    expect(output_line).to_have_text([re.compile(f"Hypernian Output tokens {suffix}"), "0", "$0.05", "$0.00"])
    expect(page.locator("[data-total=subtotal] td")).to_have_text("$90.00")
    expect(page.locator("[data-total=applied-credits]")).to_have_count(1)
    expect(page.locator("[data-total=applied-credits] th")).to_contain_text("Applied credits")
    expect(page.locator("[data-total=applied-credits] th")).to_contain_text("Welcome credits")
    expect(page.locator("[data-total=applied-credits] td")).to_have_text("-$10.00")
    expect(page.locator("[data-total=amount-due] td")).to_have_text("$80.00")
    shot(page, artifacts, "invoice")

    # 9. The customer's balance and the grant's transactions
    page.goto(customer_url)
    expect(page.locator("#balances [data-balance=available]")).to_have_text("$0.00")
    expect(page.locator("#balances [data-balance=ledger]")).to_have_text("$0.00")
    shot(page, artifacts, "customer")
    page.locator("#grants tbody a").first.click()
    expect(page.locator("[data-transaction]")).to_have_count(2)
    expect(page.locator("[data-transaction=credit-credits_granted] td.num")).to_have_text("$10.00")
    expect(page.locator("[data-transaction=debit-credits_applied] td.num")).to_have_text("-$10.00")
    expect(page.locator("dd[data-balance=ledger]")).to_have_text("$0.00")
    shot(page, artifacts, "grant-transactions")

    # The customer page at phone width: nothing wider than the screen but the scrolling tables
    page.set_viewport_size(PHONE)
    page.goto(customer_url)
    shot(page, artifacts, "customer-phone")
    widest = page.evaluate("() => document.documentElement.scrollWidth")
    culprits = page.evaluate("""() => [...document.querySelectorAll('main *')]
        .filter(e => e.getBoundingClientRect().right > window.innerWidth && !e.closest('.table-wrap'))
        .slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))""")
    assert widest <= PHONE["width"], f"the page is {widest}px wide on a {PHONE['width']}px screen: {culprits}"
    page.goto(f"{dashboard}/customers?q={suffix}")
    expect(page.locator("#customer-rows tr")).to_have_count(1)
    shot(page, artifacts, "customers-phone")


def test_a_form_error_shows_the_apis_own_message_next_to_its_field(page, api_base, secret_key):
    log_in(page, api_base, secret_key)
    page.goto(f"{api_base}/dashboard/meters")
    page.get_by_label("Event name").fill(f"unnamed_{uuid.uuid4().hex[:8]}")
    page.get_by_role("button", name="Create meter").click()
    display_name = page.get_by_label("Display name")
    expect(display_name).to_have_attribute("aria-invalid", "true")
    error = page.locator(f"#{display_name.get_attribute('aria-describedby')}")
    expect(error).to_have_text("Missing required param: display_name.")  # api.errors.missing
    expect(page.get_by_label("Event name")).to_have_value(page.get_by_label("Event name").input_value())


def test_the_customer_search_finds_by_name_email_and_id_as_you_type(page, api_base, secret_key, client):
    suffix = uuid.uuid4().hex[:8]
    created = client.post("/v1/customers", data={"name": f"Searchable {suffix}", "email": f"s-{suffix}@example.com"})
    assert created.status_code == 200, created.text
    customer_id = created.json()["id"]
    log_in(page, api_base, secret_key)
    search = page.get_by_label("Search by name, email or id")
    for query in (f"Searchable {suffix}", f"s-{suffix}@EXAMPLE.com", customer_id):
        search.fill(query)
        expect(page.locator("#customer-rows tr")).to_have_count(1)
        expect(page.locator("#customer-rows")).to_contain_text(customer_id)
    search.fill(f"nobody-{suffix}")
    expect(page.locator("#customer-rows")).to_have_text("No customers match.")


def _session_csrf_token(page) -> str:
    cookie = next(c for c in page.context.cookies() if c["name"] == "drawdown_session")
    payload = cookie["value"].split(".")[0]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["csrf"]


def test_a_read_only_key_sees_the_dashboard_but_cannot_change_anything(page, api_base, read_only_key, client):
    suffix = uuid.uuid4().hex[:8]
    created = client.post("/v1/customers", data={"name": f"Read Only Rita {suffix}"})
    customer_id = created.json()["id"]
    log_in(page, api_base, read_only_key)
    expect(page.get_by_role("status").first).to_contain_text("read-only")
    expect(page.get_by_role("button", name="Create customer")).to_have_count(0)
    page.goto(f"{api_base}/dashboard/customers/{customer_id}")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Read Only Rita {suffix}")
    expect(page.get_by_text("New credit grant")).to_have_count(0)
    expect(page.get_by_text("New subscription")).to_have_count(0)
    for path in ("/meters", "/products", "/test_clocks", "/dead_letters", "/webhooks"):
        page.goto(f"{api_base}/dashboard{path}")
        expect(page.locator("main form[method=post]")).to_have_count(0)

    # A forged form with the session's own CSRF token: refused, and nothing is created.
    token = _session_csrf_token(page)
    attempts = {"/customers": {"name": f"Mallory {suffix}"},
                f"/customers/{customer_id}/credit_grants": {"amount[type]": "monetary",
                                                             "amount[monetary][value]": "1000",
                                                             "amount[monetary][currency]": "usd",
                                                             "applicability_config[scope][price_type]": "metered"},
                "/meters": {"display_name": "m", "event_name": f"mallory_{suffix}",
                            "default_aggregation[formula]": "sum"},
                "/webhooks": {"url": "https://mallory.example/hooks", "enabled_events[0]": "*"}}
    for path, form in attempts.items():
        answer = page.request.post(f"{api_base}/dashboard{path}", form={"csrf_token": token, **form},
                                   max_redirects=0)
        assert answer.status == 403, (path, answer.status)
        assert "read-only" in answer.text()
    customers = client.get("/v1/customers", params={"limit": 100}).json()["data"]
    assert not [c for c in customers if c["name"] == f"Mallory {suffix}"]
    assert client.get("/v1/billing/credit_grants", params={"customer": customer_id}).json()["data"] == []
    assert not [m for m in client.get("/v1/billing/meters", params={"limit": 100}).json()["data"]
                if m["event_name"] == f"mallory_{suffix}"]


def test_a_form_without_the_sessions_csrf_token_is_refused(page, api_base, secret_key, client):
    suffix = uuid.uuid4().hex[:8]
    log_in(page, api_base, secret_key)
    answer = page.request.post(f"{api_base}/dashboard/customers", form={"name": f"Forged {suffix}"},
                               max_redirects=0)
    assert answer.status == 403
    customers = client.get("/v1/customers", params={"limit": 100}).json()["data"]
    assert not [c for c in customers if c["name"] == f"Forged {suffix}"]


def test_the_dashboard_asks_for_a_login_and_refuses_a_wrong_key(page, api_base):
    page.goto(f"{api_base}/dashboard/customers")
    page.wait_for_url("**/dashboard/login?next=/dashboard/customers")
    page.get_by_label("API key").fill("sk_test_wrongwrongwrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Invalid API Key provided: sk_test_********")


def test_revoking_the_key_ends_its_dashboard_sessions_at_once(page, api_base, engine_settings):
    from api.auth import create_key, revoke_key

    key = create_key(engine_settings.effective_database_url)
    log_in(page, api_base, key)
    expect(page.get_by_role("heading", level=1)).to_have_text("Customers")
    revoke_key(engine_settings.effective_database_url, key)
    page.goto(f"{api_base}/dashboard/meters")
    page.wait_for_url("**/dashboard/login?next=/dashboard/meters")


def test_the_webhook_pages_create_an_endpoint_show_its_secret_once_and_its_deliveries(
        page, api_base, secret_key, client, engine_settings, artifacts):
    import threading

    from projections.webhooks import Dispatcher
    from tests.e2e.test_webhooks import FAST_RETRIES, Receiver

    receiver = Receiver()
    dispatcher = Dispatcher(engine_settings.model_copy(update=FAST_RETRIES))
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    thread.start()
    endpoint_id = None
    try:
        log_in(page, api_base, secret_key)
        page.get_by_role("link", name="Webhooks").click()
        page.get_by_label("URL").fill(receiver.url)
        page.get_by_label("Events").fill("customer.created")
        page.get_by_role("button", name="Create endpoint").click()
        secret = page.locator("#webhook-secret").inner_text()
        assert secret.startswith("whsec_")
        page.get_by_role("link", name=receiver.url).first.click()
        endpoint_id = page.url.rsplit("/", 1)[-1]
        expect(page.get_by_text(secret)).to_have_count(0)  # shown once, on create
        expect(page.get_by_text("No deliveries")).to_be_visible()

        suffix = uuid.uuid4().hex[:8]
        customer_id = client.post("/v1/customers", data={"name": f"Hooked {suffix}"}).json()["id"]
        deadline = time.monotonic() + 60
        while not page.get_by_role("cell", name="succeeded").count():
            assert time.monotonic() < deadline, "no succeeded delivery shown in 60 s"
            time.sleep(0.5)
            page.reload()
        expect(page.get_by_text("HTTP 200").first).to_be_visible()
        delivered = receiver.events(secret)  # what the page lists is what the receiver verified
        assert [event.data.object.id for event in delivered.values() if event.type == "customer.created"] \
            == [customer_id]
        page.screenshot(path=str(artifacts / "webhook.png"), full_page=True)

        page.get_by_role("button", name="Disable").click()
        expect(page.locator("dd .badge")).to_have_text("disabled")
        assert client.get(f"/v1/webhook_endpoints/{endpoint_id}").json()["status"] == "disabled"
    finally:
        stop.set()
        thread.join(30)
        receiver.close()
        if endpoint_id and endpoint_id.startswith("we_"):
            client.delete(f"/v1/webhook_endpoints/{endpoint_id}")


def test_too_many_failed_logins_from_one_address_are_refused_for_a_while(app, secret_key):
    """10 wrong keys a minute per address (dashboard/app.py): the 11th attempt is a 429, the right
    key too, until a token is back."""
    from fastapi.testclient import TestClient

    from dashboard.app import FAILED_LOGINS_PER_MINUTE, LOGIN_CSRF_COOKIE

    failed_logins = app.state.dashboard.failed_logins
    browser = TestClient(app, client=("203.0.113.7", 50000))  # (no `with`: the session's client runs the lifespan)

    def attempt(key: str) -> int:
        browser.get("/dashboard/login")
        token = browser.cookies.get(LOGIN_CSRF_COOKIE)
        return browser.post("/dashboard/login", data={"csrf_token": token, "api_key": key},
                            follow_redirects=False).status_code

    try:
        assert [attempt(f"sk_wrong_{n}") for n in range(FAILED_LOGINS_PER_MINUTE)] == [401] * FAILED_LOGINS_PER_MINUTE
        assert attempt("sk_wrong_again") == 429
        assert attempt(secret_key) == 429
    finally:
        failed_logins.forget("203.0.113.7")
    assert attempt(secret_key) == 303
