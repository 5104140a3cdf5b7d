"""Stripe's `expand[]`: an id in an answer replaced by the object it names, as its retrieve renders it.

`expand[]=customer` on an invoice, `expand[]=data.customer` on a list of them, `expand[]=invoice.customer`
(a dotted path, up to 4 levels as Stripe allows). A field that holds an object already (an invoice's
`lines`, a subscription's `items`) stays as it is; a field that names no expandable object is a 400, as
at Stripe. Objects come from the same retrieve handlers the API answers with, so an expanded object is
exactly what GET would answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from api.errors import invalid
from api.params import Params

MAX_DEPTH = 4
MAX_PATHS = 20

# field name -> the retrieve handler of what its id names (imported when first needed: the route
# modules import this one's caller)
_RETRIEVERS: dict[str, Callable[..., dict[str, Any]]] = {}


def _retrievers() -> dict[str, Callable[..., dict[str, Any]]]:
    if not _RETRIEVERS:
        from api.routes import (alerts, balances, catalog, clocks, credit_grants, customers, invoices, meters,
                                subscriptions)

        _RETRIEVERS.update({
            "customer": customers.retrieve_customer, "subscription": subscriptions.retrieve_subscription,
            "invoice": invoices.retrieve_invoice, "price": catalog.retrieve_price, "product": catalog.retrieve_product,
            "meter": meters.retrieve_meter, "credit_grant": credit_grants.retrieve_credit_grant,
            "test_clock": clocks.retrieve_test_clock, "alert": alerts.retrieve_alert,
            "credit_balance_transaction": balances.retrieve_transaction,
        })
    return _RETRIEVERS


def expand_paths(params: Params) -> list[list[str]]:
    """The request's `expand[]` as paths of field names (read here; Params.done() leaves `expand` alone)."""
    raw = params.raw("expand")
    if raw is None or raw == "":
        return []
    items = raw if isinstance(raw, list) else list(raw.values()) if isinstance(raw, dict) else [raw]
    if len(items) > MAX_PATHS:
        raise invalid("expand", f"You may expand at most {MAX_PATHS} fields.")
    paths = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise invalid("expand", "expand[] takes field names, like customer or data.customer.")
        path = item.split(".")
        if len(path) > MAX_DEPTH:
            raise invalid("expand", f"You cannot expand more than {MAX_DEPTH} levels of a property ({item}).")
        paths.append(path)
    return paths


def expand(ctx: Any, answer: Any, paths: list[list[str]]) -> Any:
    for path in paths:
        _expand_path(ctx, answer, path, ".".join(path))
    return answer


def _expand_path(ctx: Any, node: Any, path: list[str], full: str) -> None:
    if not isinstance(node, dict):
        return
    head, rest = path[0], path[1:]
    if head == "data" and node.get("object") == "list":
        for item in node.get("data", []):
            if rest:
                _expand_path(ctx, item, rest, full)
        return
    if head not in node:
        raise invalid("expand", f"This property cannot be expanded ({full}).")
    value = node[head]
    if isinstance(value, str):
        retrieve = _retrievers().get(head)
        if retrieve is None:
            raise invalid("expand", f"This property cannot be expanded ({full}).")
        value = node[head] = retrieve(ctx, Params({}), id=value)
    if rest:
        _expand_path(ctx, value, rest, full)
