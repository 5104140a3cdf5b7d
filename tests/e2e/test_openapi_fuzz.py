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
CASES = 4400  # about 1.25 requests a case (a form case goes twice, as form and as JSON)
TIME_BUDGET_S = 180
SEED = int(os.environ.get("DRAWDOWN_FUZZ_SEED", random.randrange(2**32)))
# A parameter that names an object of a collection, e.g. `customer` or `items[0][price]`.
REFERENCES = {"customer": "/v1/customers", "product": "/v1/products", "price": "/v1/prices",
              "meter": "/v1/billing/meters", "test_clock": "/v1/test_helpers/test_clocks",
              "subscription": "/v1/subscriptions", "credit_grant": "/v1/billing/credit_grants",
              "id": None}


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
                if isinstance(item, dict) and isinstance(item.get("id"), str) and len(known[path_collection]) < 50:
                    known[path_collection].append(item["id"])

    @seed(SEED)
    @settings(max_examples=CASES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def check(case: Any) -> None:
        nonlocal path_collection
        if time.monotonic() - started > TIME_BUDGET_S:
            return
        path_collection = collection_of(case.path)
        if case.path_parameters and "id" in case.path_parameters and known[path_collection] and choices.random() < .6:
            case.path_parameters["id"] = choices.choice(known[path_collection])
        for container in (case.query, case.body):
            if isinstance(container, dict):
                for name in list(container):
                    collection = REFERENCES.get(re.split(r"\[", name)[-1].rstrip("]") if "[" in name else name)
                    if collection and known[collection] and choices.random() < .5:
                        container[name] = choices.choice(known[collection])
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
