"""The projector derives Stripe events from the facts: the API's objects, previous_attributes on
updates, and ids that a rebuild derives again unchanged."""

from __future__ import annotations

from billing import facts as f
from projections.events import event_id
from projections.projector import Projector, rebuild
from tests.integration.projections.test_projector import NOW_MS, catalog_and_customer, query, unique


def test_events_carry_the_objects_and_a_rebuild_derives_the_same_ids_and_bodies(topics, publish, schema):
    settings = topics
    customer_id, meter_id, price_id, grant_id = unique("cus"), unique("mtr"), unique("price"), unique("credgr")
    catalog_and_customer(publish, customer_id, meter_id, price_id, grant_id)
    publish("customer-facts", f.CreditGrantUpdated(grant_id=grant_id, customer_id=customer_id,
                                                   expires_at_ms=NOW_MS + 86_400_000, metadata={"k": "v"},
                                                   updated_at_ms=NOW_MS + 1000), key=customer_id)
    publish("catalog", f.MeterDisplayNameChanged(meter_id=meter_id, display_name="Renamed",
                                                 changed_at_ms=NOW_MS + 2000), key=meter_id)
    transaction_id = unique("cbtxn")
    publish("credit-balance-transactions", f.CreditBalanceTransaction(
        transaction_id=transaction_id, customer_id=customer_id, grant_id=grant_id, currency="usd", amount_minor=1000,
        type=f.TransactionType.CREDIT, reason=f.TransactionReason.CREDITS_GRANTED, effective_at_ms=NOW_MS),
        key=customer_id)
    Projector(settings, schema=schema).catch_up(timeout_s=60)

    def events(in_schema: str) -> dict[str, tuple]:
        rows = query(settings, in_schema, "select id, type, created_ms, body::text, body from events"
                                          " where body::text like any(%s)",
                     [f"%{customer_id}%", f"%{meter_id}%", f"%{grant_id}%"])
        return {row[0]: row[1:] for row in rows}

    live = events(schema)
    by_type = {row[0]: row[3] for row in live.values()}
    assert set(by_type) == {"billing.meter.created", "customer.created", "billing.credit_grant.created",
                            "billing.credit_grant.updated", "billing.meter.updated",
                            "billing.credit_balance_transaction.created"}
    # Ids from the objects for what happens once to them, so the reader can know them in advance.
    assert event_id("customer.created", customer_id) in live
    assert event_id("billing.credit_balance_transaction.created", transaction_id) in live
    assert by_type["customer.created"]["data"]["object"]["name"] == "Jenny Rosen"
    assert by_type["billing.credit_grant.created"]["data"]["object"]["expires_at"] is None  # as it was created
    updated = by_type["billing.credit_grant.updated"]["data"]
    assert updated["object"]["expires_at"] == NOW_MS // 1000 + 86_400
    assert updated["previous_attributes"]["expires_at"] is None and updated["previous_attributes"]["metadata"] == {}
    renamed = by_type["billing.meter.updated"]["data"]
    assert (renamed["object"]["display_name"], renamed["previous_attributes"]["display_name"]) == (
        "Renamed", "Input tokens")
    assert by_type["billing.credit_balance_transaction.created"]["data"]["object"]["credit"]["amount"] == {
        "type": "monetary", "monetary": {"currency": "usd", "value": 1000}}

    rebuilt_schema = schema + "_rebuilt"
    rebuild(settings, schema=rebuilt_schema)
    assert {key: value[:3] for key, value in events(rebuilt_schema).items()} == {
        key: value[:3] for key, value in live.items()}
    rebuild(settings, schema=schema)  # the same schema again: the events are kept, none is added twice
    assert query(settings, schema, "select count(*) from events where id = any(%s)", list(live)) == [(len(live),)]
    assert events(schema).keys() == live.keys()
