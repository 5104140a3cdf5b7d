"""The projector writes every fact's rows, stores offsets with them, and is exactly once."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from billing import facts as f
from drawdown.settings import Settings
from projections.projector import OffsetFenced, Projector, connect, rebuild

NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:14]}"


def query(settings: Settings, schema: str, statement: str, *params: object) -> list[tuple]:
    with connect(settings.effective_database_url, schema) as conn:
        return conn.execute(statement, params).fetchall()


def catalog_and_customer(publish, customer_id: str, meter_id: str, price_id: str, grant_id: str) -> None:
    publish("catalog", f.MeterDefined(meter_id=meter_id, display_name="Input tokens", event_name=unique("tokens"),
                                      aggregation=f.MeterAggregation.SUM, created_at_ms=NOW_MS), key=meter_id)
    publish("catalog", f.ProductCreated(product_id=unique("prod"), name="Tokens", created_at_ms=NOW_MS))
    publish("catalog", f.PriceCreated(price_id=price_id, product_id="prod_x", currency="usd",
                                      unit_amount_decimal=Decimal("3"), usage_type=f.UsageType.METERED,
                                      meter_id=meter_id, recurring_interval=f.RecurringInterval.MONTH,
                                      created_at_ms=NOW_MS), key=price_id)
    publish("customer-facts", f.CustomerCreated(customer_id=customer_id, name="Jenny Rosen", created_at_ms=NOW_MS),
            key=customer_id)
    publish("customer-facts", f.CreditGrantCreated(
        grant_id=grant_id, customer_id=customer_id, amount_minor=1000, currency="usd",
        scope=f.GrantScope(price_type=f.GrantPriceType.METERED), category=f.GrantCategory.PAID,
        effective_at_ms=NOW_MS, created_at_ms=NOW_MS), key=customer_id)


def test_every_fact_kind_becomes_rows_and_offsets_reach_the_log_end(topics, publish, schema):
    settings = topics
    customer_id, meter_id, price_id, grant_id = unique("cus"), unique("mtr"), unique("price"), unique("credgr")
    catalog_and_customer(publish, customer_id, meter_id, price_id, grant_id)
    publish("customer-facts", f.MeterEventRecorded(customer_id=customer_id, event_name="x", identifier="i1",
                                                   payload={"value": "3"}, event_time_ms=NOW_MS,
                                                   received_at_ms=NOW_MS), key=customer_id)
    publish("customer-facts", f.SubscriptionCreated(
        subscription_id=unique("sub"), customer_id=customer_id, currency="usd", billing_cycle_anchor_ms=NOW_MS,
        created_at_ms=NOW_MS, items=(f.SubscriptionItem(item_id=unique("si"), price_id=price_id),)), key=customer_id)
    publish("usage-buckets", f.UsageBucketUpdated(customer_id=customer_id, meter_id=meter_id, bucket_start_ms=NOW_MS,
                                                  value=Decimal("3000"), event_count=1, updated_at_ms=NOW_MS),
            key=customer_id)
    transaction_id = unique("cbtxn")
    publish("credit-balance-transactions", f.CreditBalanceTransaction(
        transaction_id=transaction_id, customer_id=customer_id, grant_id=grant_id, currency="usd", amount_minor=1000,
        type=f.TransactionType.CREDIT, reason=f.TransactionReason.CREDITS_GRANTED, effective_at_ms=NOW_MS),
        key=customer_id)
    publish("live-balances", f.LiveBalanceChanged(customer_id=customer_id, currency="usd", available_credits_minor=1000,
                                                  accrued_usage_minor=9000, live_balance_minor=-8000, as_of_ms=NOW_MS),
            key=customer_id)

    Projector(settings, schema=schema).catch_up(timeout_s=60)

    assert query(settings, schema, "select name from customers where id = %s", customer_id) == [("Jenny Rosen",)]
    assert query(settings, schema, "select status from meters where id = %s", meter_id) == [("active",)]
    assert query(settings, schema, "select unit_amount_decimal from prices where id = %s", price_id) == [(Decimal("3"),)]
    assert query(settings, schema, "select amount_minor from credit_grants where id = %s", grant_id) == [(1000,)]
    assert query(settings, schema, "select count(*) from subscriptions s join subscription_items i"
                                   " on i.subscription_id = s.id where s.customer_id = %s", customer_id) == [(1,)]
    assert query(settings, schema, "select value from usage_buckets where customer_id = %s", customer_id) == [
        (Decimal("3000"),)]
    assert query(settings, schema, "select reason from credit_balance_transactions where id = %s", transaction_id) == [
        ("credits_granted",)]
    assert query(settings, schema, "select live_balance_minor from live_balances where customer_id = %s",
                 customer_id) == [(-8000,)]
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**settings.kafka_client_config(), "group.id": "watermarks"})
    stored = dict(((topic, partition), offset) for topic, partition, offset in query(
        settings, schema, "select topic, partition, next_offset from projection_offset"))
    for (topic, partition), next_offset in stored.items():
        assert next_offset == consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
    consumer.close()


def test_usage_bucket_updates_keep_the_aggregate_of_the_latest_offset(topics, publish, schema):
    settings = topics
    customer_id, meter_id = unique("cus"), unique("mtr")
    for value in ("1", "5", "4"):  # the current aggregate, not an increment: the last one wins
        publish("usage-buckets", f.UsageBucketUpdated(customer_id=customer_id, meter_id=meter_id,
                                                      bucket_start_ms=NOW_MS, value=Decimal(value), event_count=1,
                                                      updated_at_ms=NOW_MS), key=customer_id)
    Projector(settings, schema=schema).catch_up(timeout_s=60)
    assert query(settings, schema, "select value from usage_buckets where customer_id = %s", customer_id) == [
        (Decimal("4"),)]


def test_period_usage_is_kept_from_the_bucket_records_that_carry_it_and_from_its_own_fact(topics, publish, schema):
    # The period's current usage, not an increment: the latest offset wins, whichever record carried it.
    settings = topics
    customer_id, meter_id, sub_a, sub_b = unique("cus"), unique("mtr"), unique("sub"), unique("sub")

    def bucket(value: str, *period_usage: f.PeriodUsage) -> f.UsageBucketUpdated:
        return f.UsageBucketUpdated(customer_id=customer_id, meter_id=meter_id, bucket_start_ms=NOW_MS,
                                    value=Decimal(value), event_count=1, updated_at_ms=NOW_MS,
                                    period_usage=period_usage)

    publish("usage-buckets", bucket("3", f.PeriodUsage(subscription_id=sub_a, period_start_ms=NOW_MS,
                                                       value=Decimal("3"), event_count=1)), key=customer_id)
    publish("usage-buckets", bucket("8"), key=customer_id)  # a bucket that carries none leaves it as it is
    publish("usage-buckets", f.PeriodUsageUpdated(customer_id=customer_id, subscription_id=sub_b,
                                                  period_start_ms=NOW_MS, meter_id=meter_id, value=Decimal("2"),
                                                  event_count=2, updated_at_ms=NOW_MS), key=customer_id)
    publish("usage-buckets", bucket("9", f.PeriodUsage(subscription_id=sub_b, period_start_ms=NOW_MS,
                                                       value=Decimal("6"), event_count=3)), key=customer_id)
    Projector(settings, schema=schema).catch_up(timeout_s=60)
    assert sorted(query(settings, schema, "select subscription_id, value, event_count from period_usage"
                                          " where customer_id = %s", customer_id)) == sorted([
        (sub_a, Decimal("3"), 1), (sub_b, Decimal("6"), 3)])


def test_a_batch_that_fails_before_commit_writes_neither_rows_nor_offsets_and_is_projected_once_later(
        topics, publish, schema):
    settings = topics
    customer_id, grant_id = unique("cus"), unique("credgr")
    catalog_and_customer(publish, customer_id, unique("mtr"), unique("price"), grant_id)
    crashing = Projector(settings, schema=schema)

    def crash(*args: object) -> None:
        raise RuntimeError("killed between the rows and the offsets")

    crashing._store_offsets = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="killed"):
        crashing.catch_up(timeout_s=60)
    assert query(settings, schema, "select count(*) from customers where id = %s", customer_id) == [(0,)]
    assert query(settings, schema, "select count(*) from projection_offset") == [(0,)]

    Projector(settings, schema=schema).catch_up(timeout_s=60)
    Projector(settings, schema=schema).catch_up(timeout_s=60)  # nothing new: applies nothing
    assert query(settings, schema, "select count(*) from customers where id = %s", customer_id) == [(1,)]
    assert query(settings, schema, "select count(*) from credit_grants where id = %s", grant_id) == [(1,)]


def test_a_second_catch_up_applies_no_fact_again(topics, publish, schema):
    settings = topics
    catalog_and_customer(publish, unique("cus"), unique("mtr"), unique("price"), unique("credgr"))
    assert Projector(settings, schema=schema).catch_up(timeout_s=60) > 0
    assert Projector(settings, schema=schema).catch_up(timeout_s=60) == 0


def test_a_projector_whose_partition_moved_on_is_fenced_and_writes_nothing(topics, publish, schema):
    settings = topics
    customer_id = unique("cus")
    Projector(settings, schema=schema).catch_up(timeout_s=60)
    zombie = Projector(settings, schema=schema)
    before = zombie.stored_offsets()
    topic = settings.topic("customer-facts")
    partition, offset = publish("customer-facts", f.CustomerCreated(customer_id=customer_id, created_at_ms=NOW_MS),
                                key=customer_id)
    zombie._positions = {(topic, partition): before.get((topic, partition), -1)}  # what it saw before
    Projector(settings, schema=schema).catch_up(timeout_s=60)  # the live owner moves the offset on

    class Message:
        def error(self): return None
        def topic(self): return topic
        def partition(self): return partition
        def offset(self): return offset
        def timestamp(self): return (1, NOW_MS)  # (CREATE_TIME, ms), as confluent-kafka answers
        def headers(self): return None  # (no API request: confluent-kafka answers None)
        def value(self):
            from schemas.codec import encode
            return encode(f.CustomerCreated(customer_id=customer_id + "_zombie", created_at_ms=NOW_MS))

    with pytest.raises(OffsetFenced):
        zombie.project([Message()])
    assert query(settings, schema, "select count(*) from customers where id = %s", customer_id + "_zombie") == [(0,)]


def test_undecodable_records_become_dead_letter_rows_instead_of_stopping_the_projector(topics, schema):
    settings = topics
    from confluent_kafka import Producer

    producer = Producer(settings.kafka_client_config())
    producer.produce(settings.topic("invoices"), b"\xc3\x01garbage", b"cus_bad")
    producer.flush(10)
    Projector(settings, schema=schema).catch_up(timeout_s=60)
    rows = query(settings, schema, "select reason_code from dead_letters where topic = %s and original_bytes = %s",
                 settings.topic("invoices"), b"\xc3\x01garbage")
    assert rows and rows[0][0] in {"truncated_fact", "unknown_schema_fingerprint"}


def test_rebuild_replays_the_topics_into_tables_identical_to_the_live_projection(topics, publish, schema):
    settings = topics
    import threading

    from projections.projector import PROJECTION_TABLES

    customer_id, grant_id = unique("cus"), unique("credgr")
    catalog_and_customer(publish, customer_id, unique("mtr"), unique("price"), grant_id)
    for value in ("10", "25"):
        publish("usage-buckets", f.UsageBucketUpdated(customer_id=customer_id, meter_id="mtr_r", bucket_start_ms=NOW_MS,
                                                      value=Decimal(value), event_count=2, updated_at_ms=NOW_MS),
                key=customer_id)
    # The live projector, as a group member in a thread, until it has reached the log end.
    from projections.migrate import migrate

    migrate(settings.effective_database_url, schema)
    live = Projector(settings, schema=schema)
    stop = threading.Event()
    thread = threading.Thread(target=live.run, args=(stop,), daemon=True)
    thread.start()
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**settings.kafka_client_config(), "group.id": "watermarks"})
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stored = dict(((t, p), o) for t, p, o in query(settings, schema,
                                                       "select topic, partition, next_offset from projection_offset"))
        ends = {(t, p): consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
                for t in live.topics for p in range(settings.partitions if "catalog" not in t else 1)}
        if all(stored.get(key, 0) >= end for key, end in ends.items()):
            break
        time.sleep(0.2)
    stop.set()
    thread.join(30)
    consumer.close()
    rebuilt_schema = schema + "_rebuilt"
    rebuild(settings, schema=rebuilt_schema)
    for table in PROJECTION_TABLES:
        for left, right in ((schema, rebuilt_schema), (rebuilt_schema, schema)):
            difference = query(settings, "public", f"select * from {left}.{table} except all "
                                                   f"select * from {right}.{table}")
            assert difference == [], f"{table}: rows in {left} but not in {right}: {difference[:3]}"
    assert query(settings, rebuilt_schema, "select value from usage_buckets where customer_id = %s", customer_id) == [
        (Decimal("25"),)]


@pytest.mark.parametrize("invoice_first", [False, True])
def test_an_invoice_keeps_the_subscription_metadata_its_fact_carries_whichever_topic_comes_first(
        topics, publish, schema, invoice_first):
    # The workers snapshot the metadata at finalization (InvoiceFinalized v3): a later update of the
    # subscription, read before or after the invoice (a rebuild may read either first), changes
    # nothing on the invoice.
    settings = topics
    customer_id, subscription_id = unique("cus"), unique("sub")
    publish("customer-facts", f.SubscriptionCreated(
        subscription_id=subscription_id, customer_id=customer_id, currency="usd", billing_cycle_anchor_ms=NOW_MS,
        created_at_ms=NOW_MS, items=(f.SubscriptionItem(item_id=unique("si"), price_id="price_x"),),
        metadata={"plan": "pro"}), key=customer_id)
    Projector(settings, schema=schema).catch_up(timeout_s=60)
    invoice = f.InvoiceFinalized(
        invoice_id=unique("in"), customer_id=customer_id, subscription_id=subscription_id, currency="usd",
        period_start_ms=NOW_MS, period_end_ms=NOW_MS + 1000, billing_reason=f.BillingReason.SUBSCRIPTION_CYCLE,
        finalized_at_ms=NOW_MS + 2000, lines=(), subtotal_minor=0, total_credits_minor=0, amount_due_minor=0,
        subscription_metadata={"plan": "pro"})
    later = f.SubscriptionUpdated(subscription_id=subscription_id, customer_id=customer_id,
                                  metadata={"plan": "max"}, updated_at_ms=NOW_MS + 3000)
    for topic, fact in ([("customer-facts", later), ("invoices", invoice)] if invoice_first is False
                        else [("invoices", invoice), ("customer-facts", later)]):
        publish(topic, fact, key=customer_id)
    Projector(settings, schema=schema).catch_up(timeout_s=60)
    assert query(settings, schema, "select subscription_metadata from invoices where id = %s", invoice.invoice_id) == [
        ({"plan": "pro"},)]


@pytest.mark.parametrize("invoice_first", [False, True])
def test_a_subscription_canceled_at_period_end_ends_with_its_final_invoice(topics, publish, schema, invoice_first):
    settings = topics
    customer_id, subscription_id = unique("cus"), unique("sub")
    period_end_ms = NOW_MS + 31 * 86_400_000
    publish("customer-facts", f.SubscriptionCreated(
        subscription_id=subscription_id, customer_id=customer_id, currency="usd", billing_cycle_anchor_ms=NOW_MS,
        created_at_ms=NOW_MS, items=(f.SubscriptionItem(item_id=unique("si"), price_id="price_x"),)), key=customer_id)
    final_invoice = f.InvoiceFinalized(
        invoice_id=unique("in"), customer_id=customer_id, subscription_id=subscription_id, currency="usd",
        period_start_ms=NOW_MS, period_end_ms=period_end_ms, billing_reason=f.BillingReason.SUBSCRIPTION_CANCEL,
        finalized_at_ms=period_end_ms + 3_600_000, lines=(), subtotal_minor=0, total_credits_minor=0,
        amount_due_minor=0)
    scheduled = f.SubscriptionCancelScheduled(subscription_id=subscription_id, customer_id=customer_id,
                                              cancel_at_period_end=True, scheduled_at_ms=NOW_MS + 1000)
    # The projector reads invoices and customer-facts as separate topics: either may come first.
    if invoice_first:
        publish("invoices", final_invoice, key=customer_id)
        Projector(settings, schema=schema).catch_up(timeout_s=60)
    publish("customer-facts", scheduled, key=customer_id)
    Projector(settings, schema=schema).catch_up(timeout_s=60)
    row = "select status, cancel_at_period_end, canceled_ms, ended_ms from subscriptions where id = %s"
    if not invoice_first:
        assert query(settings, schema, row, subscription_id) == [("active", True, NOW_MS + 1000, None)]
        publish("invoices", final_invoice, key=customer_id)
        Projector(settings, schema=schema).catch_up(timeout_s=60)
    assert query(settings, schema, row, subscription_id) == [("canceled", True, NOW_MS + 1000, period_end_ms)]


def test_a_subscription_canceled_now_keeps_its_own_end_whatever_its_final_invoice_says(topics, publish, schema):
    settings = topics
    customer_id, subscription_id = unique("cus"), unique("sub")
    publish("customer-facts", f.SubscriptionCreated(
        subscription_id=subscription_id, customer_id=customer_id, currency="usd", billing_cycle_anchor_ms=NOW_MS,
        created_at_ms=NOW_MS, items=(f.SubscriptionItem(item_id=unique("si"), price_id="price_x"),)), key=customer_id)
    publish("invoices", f.InvoiceFinalized(
        invoice_id=unique("in"), customer_id=customer_id, subscription_id=subscription_id, currency="usd",
        period_start_ms=NOW_MS, period_end_ms=NOW_MS + 86_400_000, billing_reason=f.BillingReason.SUBSCRIPTION_CANCEL,
        finalized_at_ms=NOW_MS + 5000, lines=(), subtotal_minor=0, total_credits_minor=0, amount_due_minor=0),
        key=customer_id)
    Projector(settings, schema=schema).catch_up(timeout_s=60)
    publish("customer-facts", f.SubscriptionCanceled(subscription_id=subscription_id, customer_id=customer_id,
                                                     invoice_now=True, canceled_at_ms=NOW_MS + 5000), key=customer_id)
    publish("customer-facts", f.SubscriptionCancelScheduled(subscription_id=subscription_id, customer_id=customer_id,
                                                            cancel_at_period_end=True, scheduled_at_ms=NOW_MS + 6000),
            key=customer_id)
    Projector(settings, schema=schema).catch_up(timeout_s=60)
    assert query(settings, schema, "select status, cancel_at_period_end, canceled_ms, ended_ms from subscriptions"
                                   " where id = %s", subscription_id) == [("canceled", False, NOW_MS + 5000,
                                                                            NOW_MS + 5000)]


def test_a_record_the_database_refuses_is_dead_lettered_and_the_projector_goes_on(topics, publish, schema):
    """Any producer may write facts whose values a column cannot hold (issue 12: no poison pill)."""
    settings = topics
    refused, later, customer_id = unique("cus"), unique("cus"), unique("cus")
    _, nul_offset = publish("customer-facts", f.CustomerCreated(customer_id=refused, name="Jenny\x00Rosen",
                                                                created_at_ms=NOW_MS), key=refused)
    huge = Decimal("1E+200000")  # numeric holds at most 131072 digits before the point
    _, huge_offset = publish("usage-buckets", f.UsageBucketUpdated(
        customer_id=customer_id, meter_id="mtr_huge", bucket_start_ms=NOW_MS, value=huge, event_count=1,
        updated_at_ms=NOW_MS), key=customer_id)
    publish("usage-buckets", f.UsageBucketUpdated(customer_id=customer_id, meter_id="mtr_ok", bucket_start_ms=NOW_MS,
                                                  value=Decimal("7"), event_count=1, updated_at_ms=NOW_MS),
            key=customer_id)
    publish("customer-facts", f.CustomerCreated(customer_id=later, name="Jenny Rosen", created_at_ms=NOW_MS), key=later)

    Projector(settings, schema=schema).catch_up(timeout_s=60)  # raised on 3b449cd: the projector stopped

    assert query(settings, schema, "select name from customers where id = %s", later) == [("Jenny Rosen",)]
    assert query(settings, schema, "select count(*) from customers where id = %s", refused) == [(0,)]
    assert query(settings, schema, "select meter_id, value from usage_buckets where customer_id = %s",
                 customer_id) == [("mtr_ok", Decimal("7"))]
    rows = query(settings, schema, "select topic, \"offset\", reason_code from dead_letters where topic in (%s, %s)"
                                   " order by topic", settings.topic("customer-facts"), settings.topic("usage-buckets"))
    assert rows == [(settings.topic("customer-facts"), nul_offset, "unwritable_record"),
                    (settings.topic("usage-buckets"), huge_offset, "unwritable_record")]


def test_a_bucket_time_no_month_partition_can_hold_is_dead_lettered_and_the_projector_goes_on(topics, publish, schema):
    """Usage buckets are partitioned by month (migration 0019): a bucket time outside the years
    1-9999 has no month, and must not stop the projector (it raised OverflowError before)."""
    settings = topics
    customer_id = unique("cus")
    _, far_offset = publish("usage-buckets", f.UsageBucketUpdated(
        customer_id=customer_id, meter_id="mtr_far", bucket_start_ms=2**62, value=Decimal("1"), event_count=1,
        updated_at_ms=NOW_MS), key=customer_id)
    publish("usage-buckets", f.UsageBucketUpdated(customer_id=customer_id, meter_id="mtr_ok", bucket_start_ms=NOW_MS,
                                                  value=Decimal("7"), event_count=1, updated_at_ms=NOW_MS),
            key=customer_id)

    Projector(settings, schema=schema).catch_up(timeout_s=60)

    assert query(settings, schema, "select meter_id, value from usage_buckets where customer_id = %s",
                 customer_id) == [("mtr_ok", Decimal("7"))]
    rows = query(settings, schema, "select \"offset\", reason_code from dead_letters where topic = %s"
                                   " and message like %s", settings.topic("usage-buckets"), f"%bucket_start_ms {2**62} %")
    assert rows == [(far_offset, "unwritable_record")]
