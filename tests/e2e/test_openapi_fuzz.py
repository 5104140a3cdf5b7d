"""Schemathesis over the app's /openapi.json: no generated request makes the API answer 5xx.

For every operation schemathesis draws the path, query and body from the OpenAPI document, both
conforming to it (positive) and violating it (negative). Each case is sent as generated (form or
JSON) and a form case once more as the JSON tree of the same parameters; some POSTs carry an
Idempotency-Key. The ids that 2xx answers hand out feed later cases' path ids and `customer`,
`price`, ... parameters, so retrieve, update, void, expire, advance and create-with-references run
on real objects (schemathesis's own state machine needs OpenAPI links, which this document does
not declare). In-process, against the real Kafka and PostgreSQL with the projector running.
At least MIN_REQUESTS requests; every 5xx is collected and the test fails listing them.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter, defaultdict
from typing import Any
from urllib.parse import urlencode

import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.e2e.builders import clock_at, customer, grant, meter, metered_price, subscription

MIN_REQUESTS = 5000
CASES = 6000  # about 1.25 requests a case (a form case goes twice); the run stops at MIN_REQUESTS
TIME_BUDGET_S = 900  # a guard, not the stop: the run stops at MIN_REQUESTS (a loaded machine is slower)
SEED = int(os.environ.get("DRAWDOWN_FUZZ_SEED", random.randrange(2**32)))
# A parameter that names an object of a collection, e.g. `customer` or `items[0][price]`.
REFERENCES = {"customer": "/v1/customers", "product": "/v1/products", "price": "/v1/prices",
              "meter": "/v1/billing/meters", "test_clock": "/v1/test_helpers/test_clocks",
              "subscription": "/v1/subscriptions", "credit_grant": "/v1/billing/credit_grants",
              "id": None}


# Values that mean something to this API, and numbers at and past its bounds: schemathesis draws
# strings and integers from their JSON-schema types alone, and rarely hits "usd" or "1e5000".
MEANINGFUL = ["usd", "eur", "jpy", "month", "year", "metered", "licensed", "sum", "count", "last", "by_id", "value",
              "monetary", "paid", "promotional", "cancel", "true", "false", "", "0", "1", "-1", "12", "100", "101",
              "1767225600", "1767225630", "253402300799", "253402300800"]
HOSTILE = ["1e5000", "1E-5000", "-0", "0E+5000", "NaN", "Infinity", "-Infinity", "9" * 40, "999999999999999999",
           "99999999", "100000000", "99999999.999999999999", "999999999", "1000000000", "0.0000000000001",
           "9223372036854775807", "9223372036854775808", "-9223372036854775809", "1" * 5000, "\u0000", "%00",
           "\u00e9\u20ac", "a" * 600, "[", "]", "[]", "{}"]


HOSTILE_NUMBERS = [value for value in HOSTILE if value[:1].isdigit() or value[:2] in ("-0", "-1", "-9", "-I")
                   or value in ("NaN", "Infinity")]


def templates(known: dict[str, list[str]], event_name: str, pick: random.Random) -> dict[str, dict[str, Any]]:
    """A valid body per create (with real references): the fuzz swaps one or two of its values for a
    meaningful or hostile one, so a bad number reaches the code behind the validation it must pass."""
    def some(collection: str) -> str:
        return pick.choice(known[collection])

    return {
        "/v1/prices": {"product": some("/v1/products"), "currency": "usd", "unit_amount_decimal": "3",
                       "recurring[interval]": "month", "recurring[usage_type]": "licensed"},
        "/v1/billing/meter_events": {"event_name": event_name, "payload[stripe_customer_id]": some("/v1/customers"),
                                     "payload[value]": "1"},
        "/v1/billing/credit_grants": {"customer": some("/v1/customers"), "amount[type]": "monetary",
                                      "amount[monetary][value]": "100", "amount[monetary][currency]": "usd",
                                      "applicability_config[scope][price_type]": "metered"},
        "/v1/subscriptions": {"customer": some("/v1/customers"), "items[0][price]": some("/v1/prices"),
                              "items[0][quantity]": "1"},
        "/v1/subscription_items": {"subscription": some("/v1/subscriptions"), "price": some("/v1/prices"),
                                   "quantity": "1"},
        "/v1/customers": {"name": "Jenny", "test_clock": some("/v1/test_helpers/test_clocks")},
        "/v1/test_helpers/test_clocks": {"frozen_time": "1767225600", "name": "fuzz"},
        "/v1/billing/meters": {"display_name": "d", "event_name": f"fuzz_{pick.getrandbits(48):x}",
                               "default_aggregation[formula]": "sum",
                               "customer_mapping[event_payload_key]": "stripe_customer_id",
                               "customer_mapping[type]": "by_id", "value_settings[event_payload_key]": "value"},
    }


def collection_of(path: str) -> str:
    """`/v1/billing/meters/{id}/deactivate` -> `/v1/billing/meters`."""
    return path.split("/{", 1)[0]


def nested(form: dict[str, Any]) -> dict[str, Any]:
    """The JSON tree of bracketed form names: {"a[b]": 1} -> {"a": {"b": 1}}."""
    tree: dict[str, Any] = {}
    for name, value in form.items():
        parts = [part for part in re.split(r"[\[\]]+", name) if part] or [name]
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[parts[-1]] = value
    return tree


def form_body(data: Any) -> str:
    if isinstance(data, dict):
        try:
            return urlencode(data, doseq=True)
        except TypeError:
            pass
    return str(data)


def test_no_schemathesis_generated_request_makes_the_api_answer_5xx(client):
    document = client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    cases = st.one_of([operation.as_strategy(generation_mode=mode) for operation in operations
                       for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)])
    known: dict[str, list[str]] = defaultdict(list)  # collection path -> ids it has answered with
    clock = clock_at(client)
    buyer = customer(client, test_clock=clock["id"])
    usage = meter(client)
    price = metered_price(client, usage["id"])
    for collection, object_id in (("/v1/test_helpers/test_clocks", clock["id"]), ("/v1/customers", buyer["id"]),
                                  ("/v1/billing/meters", usage["id"]), ("/v1/prices", price["id"]),
                                  ("/v1/products", price["product"]),
                                  ("/v1/subscriptions", subscription(client, buyer["id"], price["id"])["id"]),
                                  ("/v1/billing/credit_grants", grant(client, buyer["id"])["id"])):
        known[collection].append(object_id)
    choices = random.Random(SEED)  # not drawn by hypothesis: what it picks from (known ids) grows as the run goes
    sent: list[int] = []
    server_errors: list[str] = []
    started = time.monotonic()

    def send(method: str, url: str, **kwargs: Any) -> None:
        response = client.request(method, url, **kwargs)
        sent.append(response.status_code)
        if response.status_code >= 500:
            server_errors.append(f"{method} {url} {str(kwargs)[:300]} -> {response.status_code} {response.text[:300]}")
            return
        if response.status_code >= 400 and url.split("?")[0].endswith("/metrics") is False:
            assert set(response.json()["error"]) >= {"type", "message"}, response.text[:300]
        if response.status_code == 200 and response.headers.get("content-type", "").startswith("application/json"):
            body = response.json()
            for item in body.get("data", []) if body.get("object") == "list" else [body]:
                if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"] not in known[path_collection]:
                    known[path_collection][:] = known[path_collection][-49:] + [item["id"]]  # the latest 50

    @seed(SEED)
    @settings(max_examples=CASES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def check(case: Any) -> None:
        nonlocal path_collection
        if len(sent) >= MIN_REQUESTS or time.monotonic() - started > TIME_BUDGET_S:
            return
        path_collection = collection_of(case.path)
        if case.path_parameters and "id" in case.path_parameters and known[path_collection] and choices.random() < .6:
            case.path_parameters["id"] = choices.choice(known[path_collection])
        template = templates(known, usage["event_name"], choices).get(case.path)
        if case.method.upper() == "POST" and template is not None and choices.random() < .5:
            for name in choices.sample(sorted(template), choices.choice([1, 1, 2])):
                numeric = template[name].replace(".", "", 1).isdigit()  # a number: try it at and past the bounds
                template[name] = choices.choice(HOSTILE_NUMBERS if numeric else MEANINGFUL + HOSTILE)
            case.body = template
        for container in (case.query, case.body):
            if isinstance(container, dict):
                for name in list(container):
                    collection = REFERENCES.get(re.split(r"\[", name)[-1].rstrip("]") if "[" in name else name)
                    if collection and known[collection] and choices.random() < .5:
                        container[name] = choices.choice(known[collection])
                    elif choices.random() < .3:
                        container[name] = choices.choice(MEANINGFUL if choices.random() < .6 else HOSTILE)
        request = case.as_transport_kwargs(base_url="http://testserver")
        headers = {name: value for name, value in request.get("headers", {}).items()
                   if name.lower() in ("content-type", "accept")}
        if case.method.upper() in ("POST", "DELETE") and choices.random() < .2:
            headers["Idempotency-Key"] = f"fuzz-{choices.getrandbits(64):x}"
        method, url, params = request["method"], request["url"], request.get("params")
        if "json" in request:
            send(method, url, params=params, content=json.dumps(request["json"]),
                 headers={**headers, "content-type": "application/json"})
        elif "data" in request:
            send(method, url, params=params, content=form_body(request["data"]),
                 headers={**headers, "content-type": headers.get("content-type", "application/x-www-form-urlencoded")})
            if isinstance(request["data"], dict) and request["data"]:
                send(method, url, params=params, content=json.dumps(nested(request["data"]), default=str),
                     headers={"content-type": "application/json"})
        else:
            send(method, url, params=params, headers=headers)

    path_collection = ""
    check()
    elapsed = time.monotonic() - started
    by_class = dict(sorted(Counter(f"{status // 100}xx" for status in sent).items()))
    print(f"\nschemathesis fuzz (seed {SEED}): {len(sent)} requests in {elapsed:.0f} s over {len(operations)} "
          f"operations, {by_class}; objects touched: { {c: len(ids) for c, ids in known.items() if ids} }")
    assert not server_errors, f"{len(server_errors)} answers 5xx (seed {SEED}):\n" + "\n".join(server_errors[:20])
    assert len(sent) >= MIN_REQUESTS, f"only {len(sent)} requests in the time budget (seed {SEED})"
