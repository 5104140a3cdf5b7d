"""The API's routers, one module per Stripe resource family."""

from __future__ import annotations

from fastapi import APIRouter


def all_routers() -> list[APIRouter]:
    from api.routes import (alerts, balances, catalog, clocks, credit_grants, customers, dead_letters, events, invoice_items,
                            invoices, meter_events, meters, subscriptions, webhook_endpoints)

    return [module.router for module in (meters, meter_events, catalog, customers, subscriptions, credit_grants,
                                         balances, invoice_items, invoices, clocks, dead_letters, events,
                                         webhook_endpoints, alerts)]
