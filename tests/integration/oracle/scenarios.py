"""Randomized input logs for the differential tests: customers on a test clock and on the wall
clock, living through two and a half monthly periods on one timeline.

Each customer draws its own story from the seed: grants (priorities, expiries, categories, price
scopes, later effective dates, voids, explicit expiries, new expiry dates), a subscription (metered
prices incl. a count meter, an hour-windowed meter, a raw and a day-windowed `last` meter and a
licensed seat; an anchor now or later; a cancel now with or without invoice_now, a cancel at period
end, sometimes taken back), meter events
(corrections, decimals, retries of the same identifier, late events inside and outside the grace
period, events too old or in the future, cancellations inside and outside 24 hours, with and without
customer) and an invoice void; one-off invoices of invoice items (pending, deleted, added to a draft,
in another currency) finalized, paid, marked uncollectible or voided, and period invoices paid or
marked uncollectible (a second, independent random stream per customer, so the stories above stay
as they were). Time moves by ticks (wall clock) and by test clock advances, both
to the moment of each action.

Besides (drawn from a second generator, so the stories above stay as they were): the output-token
meter deactivated partway through the log and sometimes reactivated (see `in_phases`), and exact
time ties: grants taking effect or expiring at a period's end or at its finalization, events at a
period's end and at its finalization, two windowed events at the same instant, a cancel exactly 24
hours after its event, a cancel at a period's end, an event received at the deactivation's instant.
"""

from __future__ import annotations

import random
from decimal import ROUND_HALF_UP, Decimal

from billing.facts import (
    CreditGrantCreated,
    CreditGrantExpired,
    CreditGrantUpdated,
    CreditGrantVoided,
    CustomerCreated,
    EventTimeWindow,
    GrantCategory,
    GrantPriceType,
    GrantScope,
    InvoiceCreated,
    InvoiceFinalizeRequested,
    InvoiceItemCreated,
    InvoiceItemDeleted,
    InvoiceMarkUncollectibleRequested,
    InvoicePayRequested,
    InvoiceVoidRequested,
    MeterAggregation,
    MeterDeactivated,
    MeterDefined,
    MeterEventCanceled,
    MeterEventRecorded,
    MeterReactivated,
    PriceCreated,
    ProductCreated,
    RecurringInterval,
    SubscriptionCanceled,
    SubscriptionCancelScheduled,
    SubscriptionCreated,
    SubscriptionItem,
    SubscriptionItemsChanged,
    TestClockAdvanced,
    TestClockCreated,
    TimeTicked,
    UsageType,
)
from tests.oracle.model import DAY_MS, HOUR_MS, MINUTE_MS, add_months, invoice_id, period_containing

START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z
END_MS = START_MS + 75 * DAY_MS
GRACE_MS = HOUR_MS

# event name -> (meter id, price id, unit amount, aggregation, window)
METERS = {
    "in_tokens": ("mtr_in", "price_in", "3", MeterAggregation.SUM, None),
    "out_tokens": ("mtr_out", "price_out", "0.5", MeterAggregation.SUM, None),
    "api_calls": ("mtr_calls", "price_calls", "1.25", MeterAggregation.COUNT, None),
    "gpu_hours": ("mtr_gpu", "price_gpu", "7", MeterAggregation.SUM, EventTimeWindow.HOUR),
    "active_users": ("mtr_users", "price_users", "2", MeterAggregation.LAST, None),
    "storage_gb": ("mtr_storage", "price_storage", "0.25", MeterAggregation.LAST, EventTimeWindow.DAY),
}
SEAT_PRICE = "price_seat"  # licensed: billed per seat, never paid by credits
PRICE_ORDER = ["price_in", "price_out", "price_calls", "price_gpu", "price_users", "price_storage", SEAT_PRICE]


def catalog_facts() -> list:
    facts: list = []
    for event_name, (meter_id, price_id, unit, aggregation, window) in METERS.items():
        facts += [MeterDefined(meter_id=meter_id, display_name=event_name, event_name=event_name,
                               aggregation=aggregation, event_time_window=window, created_at_ms=START_MS),
                  ProductCreated(product_id=f"prod_{meter_id}", name=event_name, created_at_ms=START_MS),
                  PriceCreated(price_id=price_id, product_id=f"prod_{meter_id}", currency="usd",
                               unit_amount_decimal=Decimal(unit), usage_type=UsageType.METERED, meter_id=meter_id,
                               recurring_interval=RecurringInterval.MONTH, created_at_ms=START_MS)]
    facts += [ProductCreated(product_id="prod_seat", name="seat", created_at_ms=START_MS),
              PriceCreated(price_id=SEAT_PRICE, product_id="prod_seat", currency="usd",
                           unit_amount_decimal=Decimal("1000"), usage_type=UsageType.LICENSED,
                           recurring_interval=RecurringInterval.MONTH, created_at_ms=START_MS)]
    return facts


class Timeline:
    def __init__(self) -> None:
        self.actions: list[tuple[int, int, object]] = []

    def at(self, at_ms: int, fact: object) -> None:
        self.actions.append((at_ms, len(self.actions), fact))


def _minute(rng: random.Random, start_ms: int, end_ms: int) -> int:
    """A random instant in [start, end) off the minute grid, so nothing lands on a boundary by chance."""
    return start_ms + rng.randrange(max(1, (end_ms - start_ms) // MINUTE_MS)) * MINUTE_MS + rng.randrange(1, 59_000)


def _customer(rng: random.Random, timeline: Timeline, customer_id: str, clock_id: str | None,
              tie: random.Random, deactivated_ms: int) -> None:
    created_ms = _minute(rng, START_MS, START_MS + 2 * DAY_MS)
    subscribes = rng.random() >= 0.1
    timeline.at(created_ms, CustomerCreated(customer_id=customer_id, test_clock_id=clock_id, created_at_ms=created_ms))

    for n in range(rng.choice([0, 1, 1, 2, 2, 3])):
        grant_id = f"credgr_{customer_id}_{n}"
        made_ms = created_ms + (n + 1) * MINUTE_MS
        if rng.random() < 0.7:
            scope = GrantScope(price_type=GrantPriceType.METERED)
        else:
            scope = GrantScope(price_ids=tuple(rng.sample(PRICE_ORDER, rng.randrange(1, 4))))
        expires_ms = None if rng.random() < 0.5 else _minute(rng, made_ms + 3 * DAY_MS, made_ms + 70 * DAY_MS)
        timeline.at(made_ms, CreditGrantCreated(
            grant_id=grant_id, customer_id=customer_id, amount_minor=rng.randrange(1, 80) * 50, currency="usd",
            scope=scope, category=rng.choice(list(GrantCategory)), priority=rng.choice([0, 10, 50, 50, 90]),
            effective_at_ms=made_ms if rng.random() < 0.7 else _minute(rng, made_ms, made_ms + 40 * DAY_MS),
            expires_at_ms=expires_ms, created_at_ms=made_ms, test_clock_id=clock_id))
        roll = rng.random()
        when_ms = _minute(rng, made_ms + DAY_MS, END_MS)
        if roll < 0.15:  # rejected once any of it was applied
            timeline.at(when_ms, CreditGrantVoided(grant_id=grant_id, customer_id=customer_id, voided_at_ms=when_ms))
        elif roll < 0.25:
            timeline.at(when_ms, CreditGrantExpired(grant_id=grant_id, customer_id=customer_id, expired_at_ms=when_ms))
        elif roll < 0.35:
            new_expiry = None if rng.random() < 0.3 else _minute(rng, when_ms, END_MS + 10 * DAY_MS)
            timeline.at(when_ms, CreditGrantUpdated(grant_id=grant_id, customer_id=customer_id,
                                                    expires_at_ms=new_expiry, updated_at_ms=when_ms))

    lifecycle = random.Random(f"{customer_id}-lifecycle")
    if lifecycle.random() < 0.5:
        _one_off_invoice(lifecycle, timeline, customer_id, created_ms + 30 * MINUTE_MS)

    if not subscribes:
        return  # a customer with grants and no subscription
    sub_id = f"sub_{customer_id}"
    sub_ms = created_ms + 5 * MINUTE_MS
    prices = [p for p in PRICE_ORDER if rng.random() < 0.6] or ["price_in"]
    anchor_ms = sub_ms if rng.random() < 0.7 else _minute(rng, sub_ms + DAY_MS, sub_ms + 20 * DAY_MS)
    timeline.at(sub_ms, SubscriptionCreated(
        subscription_id=sub_id, customer_id=customer_id, currency="usd", billing_cycle_anchor_ms=anchor_ms,
        items=tuple(SubscriptionItem(item_id=f"si_{customer_id}_{p}", price_id=p, quantity=rng.randrange(1, 4))
                    for p in prices), created_at_ms=sub_ms, test_clock_id=clock_id))
    first_end_ms = anchor_ms if anchor_ms > sub_ms else add_months(anchor_ms, 1)
    _ties(tie, timeline, customer_id, clock_id, sub_ms, first_end_ms, prices, deactivated_ms)

    changes = random.Random(f"{customer_id}-items")  # its own stream: the other draws stay as they were
    for _ in range(changes.choice([0, 0, 0, 1, 2])):  # items changed from the next period
        when_ms = _minute(changes, sub_ms, END_MS - 10 * DAY_MS)
        effective_ms = period_containing(anchor_ms, 1, sub_ms, when_ms)[1]
        if effective_ms - when_ms < HOUR_MS:
            continue  # (an event may be dated 5 minutes ahead: none of the next period arrives before it)
        chosen = [p for p in PRICE_ORDER if changes.random() < 0.6] or ["price_in"]
        timeline.at(when_ms, SubscriptionItemsChanged(
            subscription_id=sub_id, customer_id=customer_id, changed_at_ms=when_ms, effective_from_ms=effective_ms,
            items=tuple(SubscriptionItem(item_id=f"si_{customer_id}_{p}", price_id=p, quantity=changes.randrange(1, 4))
                        for p in chosen)))

    roll = rng.random()
    if roll < 0.15:
        when_ms = _minute(rng, sub_ms + 35 * DAY_MS, END_MS)
        timeline.at(when_ms, SubscriptionCanceled(subscription_id=sub_id, customer_id=customer_id,
                                                  invoice_now=rng.random() < 0.5, canceled_at_ms=when_ms))
    elif roll < 0.3:
        when_ms = _minute(rng, sub_ms, END_MS - 10 * DAY_MS)
        timeline.at(when_ms, SubscriptionCancelScheduled(subscription_id=sub_id, customer_id=customer_id,
                                                         cancel_at_period_end=True, scheduled_at_ms=when_ms))
        if rng.random() < 0.3:
            later_ms = _minute(rng, when_ms, when_ms + 5 * DAY_MS)
            timeline.at(later_ms, SubscriptionCancelScheduled(subscription_id=sub_id, customer_id=customer_id,
                                                              cancel_at_period_end=False, scheduled_at_ms=later_ms))
    if rng.random() < 0.15:
        when_ms = _minute(rng, first_end_ms + GRACE_MS + HOUR_MS, first_end_ms + 10 * DAY_MS)
        timeline.at(when_ms, InvoiceVoidRequested(invoice_id=invoice_id(sub_id, sub_ms), customer_id=customer_id,
                                                  requested_at_ms=when_ms))

    settle_roll = lifecycle.random()
    if settle_roll < 0.4:  # the first period's invoice paid or marked uncollectible (then maybe voided)
        when_ms = _minute(lifecycle, first_end_ms + GRACE_MS + HOUR_MS, first_end_ms + 10 * DAY_MS)
        kind = InvoicePayRequested if settle_roll < 0.25 else InvoiceMarkUncollectibleRequested
        timeline.at(when_ms, kind(invoice_id=invoice_id(sub_id, sub_ms), customer_id=customer_id,
                                  requested_at_ms=when_ms))

    names = [name for name, spec in METERS.items() if spec[1] in prices] or list(METERS)
    for n in range(rng.randrange(5, 30)):
        name = rng.choice(names) if rng.random() < 0.9 else rng.choice(list(METERS))
        received_ms = _minute(rng, sub_ms + MINUTE_MS, END_MS)
        lag_roll = rng.random()
        if lag_roll < 0.03:
            event_ms = received_ms - 36 * DAY_MS  # too old
        elif lag_roll < 0.05:
            event_ms = received_ms + 10 * MINUTE_MS  # in the future
        elif lag_roll < 0.2:
            event_ms = received_ms - rng.randrange(1, 3 * HOUR_MS)  # late: maybe past a period end
        else:
            event_ms = received_ms - rng.randrange(0, 10 * MINUTE_MS)
        value_roll = rng.random()
        value = (str(-rng.randrange(1, 30)) if value_roll < 0.1 else f"{rng.randrange(0, 90)}.5" if value_roll < 0.3
                 else str(rng.randrange(0, 200)))
        identifier = f"ev_{customer_id}_{n}"
        event = MeterEventRecorded(customer_id=customer_id, event_name=name, identifier=identifier,
                                   payload={"stripe_customer_id": customer_id, "value": value},
                                   event_time_ms=event_ms, received_at_ms=received_ms)
        timeline.at(received_ms, event)
        if rng.random() < 0.1:  # a retry: the same event again, later
            retry_ms = received_ms + rng.randrange(1, 2 * DAY_MS)
            timeline.at(retry_ms, MeterEventRecorded(**{**event.__dict__, "received_at_ms": retry_ms}))
        if rng.random() < 0.1:
            cancel_ms = received_ms + rng.choice([rng.randrange(1, HOUR_MS), 30 * HOUR_MS])
            timeline.at(cancel_ms, MeterEventCanceled(event_name=name, identifier=identifier,
                                                      customer_id=customer_id if rng.random() < 0.5 else None,
                                                      received_at_ms=cancel_ms))


def _ties(tie: random.Random, timeline: Timeline, customer_id: str, clock_id: str | None, sub_ms: int,
          first_end_ms: int, prices: list[str], deactivated_ms: int) -> None:
    """Facts at exactly the instants where two rules meet (see the module docstring)."""
    finalized_ms = first_end_ms + GRACE_MS
    if tie.random() < 0.4:
        effective_ms, expires_ms = tie.choice([(first_end_ms, None), (sub_ms, first_end_ms), (sub_ms, finalized_ms),
                                               (first_end_ms, finalized_ms)])
        timeline.at(sub_ms, CreditGrantCreated(
            grant_id=f"credgr_{customer_id}_tie", customer_id=customer_id, amount_minor=tie.randrange(1, 40) * 50,
            currency="usd", scope=GrantScope(price_type=GrantPriceType.METERED), category=GrantCategory.PAID,
            priority=0, effective_at_ms=effective_ms, expires_at_ms=expires_ms, created_at_ms=sub_ms,
            test_clock_id=clock_id))
    names = [name for name, spec in METERS.items() if spec[1] in prices]
    if not names:
        return
    for n in range(tie.randrange(0, 4)):
        name = tie.choice(names)
        identifier = f"ev_{customer_id}_tie_{n}"
        event_ms, received_ms = tie.choice([
            (first_end_ms, first_end_ms),  # at the period's end: the next period's
            (first_end_ms - MINUTE_MS, finalized_ms),  # late, received at the finalization instant
            (deactivated_ms - HOUR_MS, deactivated_ms)])  # received as its meter is deactivated
        timeline.at(received_ms, _tie_event(customer_id, name, identifier, str(tie.randrange(1, 50)),
                                            event_ms, received_ms))
        if name == "gpu_hours" and tie.random() < 0.5:  # another event of its window at the same instant
            timeline.at(received_ms, _tie_event(customer_id, name, identifier + "_twin", str(tie.randrange(1, 50)),
                                                event_ms, received_ms))
        elif METERS[name][4] is None and tie.random() < 0.3:  # canceled exactly 24 hours after its receipt
            timeline.at(received_ms + DAY_MS, MeterEventCanceled(event_name=name, identifier=identifier,
                                                                 customer_id=customer_id,
                                                                 received_at_ms=received_ms + DAY_MS))
    if tie.random() < 0.1:
        timeline.at(first_end_ms, SubscriptionCanceled(subscription_id=f"sub_{customer_id}", customer_id=customer_id,
                                                       invoice_now=tie.random() < 0.5, canceled_at_ms=first_end_ms))


def _tie_event(customer_id: str, name: str, identifier: str, value: str, event_ms: int,
               received_ms: int) -> MeterEventRecorded:
    return MeterEventRecorded(customer_id=customer_id, event_name=name, identifier=identifier,
                              payload={"stripe_customer_id": customer_id, "value": value},
                              event_time_ms=event_ms, received_at_ms=received_ms)


DEACTIVATED_METER = "mtr_out"


def _one_off_invoice(rng: random.Random, timeline: Timeline, customer_id: str, start_ms: int) -> None:
    """Invoice items and a one-off invoice through its lifecycle, with the refusals Stripe makes."""
    def item(n: int, at_ms: int, currency: str = "usd", invoice: str | None = None) -> InvoiceItemCreated:
        quantity, unit = Decimal(rng.randrange(1, 5)), Decimal(rng.choice(["1000", "250.5", "0.3", "7"]))
        amount = int((quantity * unit).to_integral_value(rounding=ROUND_HALF_UP))
        return InvoiceItemCreated(invoice_item_id=f"ii_{customer_id}_{n}", customer_id=customer_id, currency=currency,
                                  quantity=quantity, unit_amount_decimal=unit, amount_minor=amount,
                                  description=f"item {n}", invoice_id=invoice, created_at_ms=at_ms)

    invoice = f"in_oneoff_{customer_id}"
    at_ms = start_ms
    items = [item(n, at_ms + n * MINUTE_MS, "eur" if rng.random() < 0.1 else "usd") for n in range(rng.randrange(0, 4))]
    for fact in items:
        timeline.at(fact.created_at_ms, fact)
    if items and rng.random() < 0.3:
        at_ms += 10 * MINUTE_MS
        timeline.at(at_ms, InvoiceItemDeleted(invoice_item_id=items[0].invoice_item_id, customer_id=customer_id,
                                              deleted_at_ms=at_ms))
    if rng.random() < 0.2:  # an item for a draft that does not exist yet: refused
        timeline.at(at_ms + 11 * MINUTE_MS, item(7, at_ms + 11 * MINUTE_MS, invoice=invoice))
    at_ms += 20 * MINUTE_MS
    timeline.at(at_ms, InvoiceCreated(invoice_id=invoice, customer_id=customer_id, currency="usd",
                                      invoice_item_ids=tuple(f.invoice_item_id for f in items), created_at_ms=at_ms))
    if rng.random() < 0.5:  # an item added to the draft
        timeline.at(at_ms + MINUTE_MS, item(8, at_ms + MINUTE_MS, invoice=invoice))
    steps = {"pay": InvoicePayRequested, "mark": InvoiceMarkUncollectibleRequested, "void": InvoiceVoidRequested,
             "finalize": InvoiceFinalizeRequested}
    story = rng.choice([["pay", "finalize", "pay", "void"], ["finalize", "mark", "pay", "mark"],
                        ["finalize", "mark", "void", "pay"], ["finalize", "void", "finalize"], ["finalize"], []])
    for step in story:
        at_ms += HOUR_MS + rng.randrange(1, 59_000)
        timeline.at(at_ms, steps[step](invoice_id=invoice, customer_id=customer_id, requested_at_ms=at_ms))


def scenario(seed: int, customers: int) -> list:
    """The whole input log (catalog first), in the order it is produced; catalog changes partway
    through it are in it too (see `in_phases`)."""
    rng, tie = random.Random(seed), random.Random(f"ties {seed}")
    clock_id = f"clock_{seed}"
    timeline = Timeline()
    # First on the timeline: a fact at the same instant comes after it.
    deactivated_ms = START_MS + tie.randrange(20, 50) * DAY_MS + tie.randrange(DAY_MS)
    timeline.at(deactivated_ms, MeterDeactivated(meter_id=DEACTIVATED_METER, deactivated_at_ms=deactivated_ms))
    if tie.random() < 0.5:
        reactivated_ms = deactivated_ms + tie.randrange(1, 10) * DAY_MS
        timeline.at(reactivated_ms, MeterReactivated(meter_id=DEACTIVATED_METER, reactivated_at_ms=reactivated_ms))
    for n in range(customers):
        _customer(rng, timeline, f"cus_{seed}_{n}", clock_id if n % 2 == 0 else None, tie, deactivated_ms)
    log: list = [TestClockCreated(test_clock_id=clock_id, frozen_time_ms=START_MS, created_at_ms=START_MS),
                 TimeTicked(now_ms=START_MS)]
    now_ms = START_MS
    for at_ms, _, fact in sorted(timeline.actions, key=lambda action: action[:2]) + [(END_MS, 0, None)]:
        if at_ms - now_ms > 4 * MINUTE_MS:  # time moves to the moment of the action, both ways
            now_ms = at_ms
            log += [TimeTicked(now_ms=now_ms),
                    TestClockAdvanced(test_clock_id=clock_id, frozen_time_ms=now_ms, advanced_at_ms=now_ms)]
        if fact is not None:
            log.append(fact)
    return log


CATALOG_PROBE = "catalog_probe"  # an event name no meter has


def in_phases(log: list) -> list[list]:
    """`log` cut where the catalog changes, so that the worker has read each change before the
    facts after it: both judge a meter's status at each event's receipt, but the worker learns of a
    change only when it reads the catalog (the gap the README's known limitations name). A change
    is produced alone; then an event naming no meter, which makes the worker read the catalog to
    its end (streams/catalog_follower.py; dead-lettered `no_meter`, by the oracle too)."""
    phases: list[list] = [[]]
    for fact in log:
        if isinstance(fact, (MeterDeactivated, MeterReactivated)):
            probe = MeterEventRecorded(customer_id="", event_name=CATALOG_PROBE, identifier=f"probe_{len(phases)}",
                                       payload={}, event_time_ms=START_MS, received_at_ms=START_MS)
            phases += [[fact], [probe], []]
        else:
            phases[-1].append(fact)
    return phases
