"""Property-based fuzzing over the OpenAPI document: no input makes the API answer 5xx.

For every operation, hypothesis draws path ids, the documented query and form parameters with
hostile values, and undocumented extra parameters; the answer must be a Stripe-shaped 2xx/4xx.
Bounded: a fixed number of examples per operation (about a minute in all).
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drawdown.settings import Settings
from api.app import create_app

HOSTILE = st.sampled_from(["", "true", "false", "0", "-1", "1e3", "NaN", "Infinity", "9" * 30, "metered", "sum",
                           "usd", "month", "hour", "day", "cus_x", "[", "]", "%00", "\u00e9\u20ac", "a" * 600,
                           "1767225600", "1767225630", "last", "credit_grant", "applicability_scope"])
VALUES = st.one_of(HOSTILE, st.text(max_size=20), st.integers(-10**20, 10**20).map(str))
EXTRA_KEYS = st.text(alphabet="abcz[]0_", min_size=1, max_size=12)
JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
                           lambda children: st.one_of(st.lists(children, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), children, max_size=4)),
                           max_leaves=12)
EXAMPLES_PER_OPERATION = 80


def operations() -> list[tuple[str, str, dict]]:
    document = create_app(Settings()).openapi()
    return [(path, method.upper(), operation) for path, methods in sorted(document["paths"].items())
            for method, operation in sorted(methods.items())]


@pytest.mark.parametrize("path, method, operation", operations(), ids=lambda value: value if isinstance(value, str)
                         else "")
def test_no_generated_request_makes_the_api_answer_5xx(client, path, method, operation):
    query_names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
    body = operation.get("requestBody", {}).get("content", {})
    form_names = list(body.get("application/x-www-form-urlencoded", {}).get("schema", {}).get("properties", {}))
    takes_json = "application/json" in body
    started = time.monotonic()

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(path_id=st.one_of(st.text(min_size=1, max_size=30).filter(lambda s: "/" not in s and s not in (".", "..")),
                             HOSTILE.filter(lambda s: s and "/" not in s)),
           query=st.fixed_dictionaries({}, optional={name: VALUES for name in query_names}),
           form=st.fixed_dictionaries({}, optional={name: VALUES for name in form_names}),
           extra=st.dictionaries(EXTRA_KEYS, VALUES, max_size=2),
           document=JSON_VALUES, events=st.lists(st.dictionaries(
               st.sampled_from(["event_name", "payload", "identifier", "timestamp", "x"]), JSON_VALUES, max_size=4),
               max_size=3))
    def check(path_id, query, form, extra, document, events):
        url = path.replace("{id}", quote(path_id, safe=""))
        if takes_json:
            response = client.request(method, url, content=json.dumps(
                {"events": events} if document is None else document), headers={"content-type": "application/json"})
        elif method == "GET":
            response = client.request(method, url, params={**query, **extra})
        else:
            response = client.request(method, url, params=query, data={**form, **extra})
        assert response.status_code < 500, f"{method} {url} -> {response.status_code}: {response.text[:300]}"
        if response.status_code >= 400 and path not in ("/metrics",):
            assert set(response.json()["error"]) >= {"type", "message"}

    check()
    assert time.monotonic() - started < 60, "keep the fuzz run bounded"
