"""The load generator behind `drawdown produce`: repeatable meter-event traffic through the SDK.

Customers and meters are named from the seed, so two runs with the same seed define the same
catalog and send the same events (identifiers included); duplicates re-send an earlier event
(same identifier, so the engine must count it once) and late events carry an event time up to
`max_lateness_s` before their arrival.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from billing.facts import CustomerCreated, MeterAggregation, MeterDefined, MeterEventRecorded
from drawdown.settings import Settings
from producers.catalog_reader import fold_catalog
from producers.producer import FactProducer, wall_clock_ms

RECENT_EVENTS_KEPT = 10_000  # duplicates are drawn from the most recent events
PACE_EVERY_EVENTS = 100  # how often a rate-limited run checks the clock
MAX_LATENESS_S = 35 * 86_400  # the engine accepts events up to 35 days old


@dataclass(frozen=True, slots=True)
class LoadPlan:
    customers: int = 100
    meters: int = 2
    rate_per_s: float = 0.0  # 0: as fast as possible
    duration_s: float | None = None
    count: int | None = None  # stop after this many events (or the duration, whichever first)
    seed: int = 1
    duplicate_share: float = 0.0
    late_share: float = 0.0
    max_lateness_s: int = 3_600
    define_catalog: bool = True  # write the meters and customers first

    def __post_init__(self) -> None:
        if self.customers < 1 or self.meters < 1:
            raise ValueError("customers and meters must be at least 1")
        if self.count is None and self.duration_s is None:
            raise ValueError("give a count or a duration")
        if not (0 <= self.duplicate_share <= 1 and 0 <= self.late_share <= 1):
            raise ValueError("shares are between 0 and 1")
        if not 60 <= self.max_lateness_s <= MAX_LATENESS_S - 3_600:
            raise ValueError("max lateness is between 60 s and 35 days less an hour")

    def customer_ids(self) -> list[str]:
        return [f"cus_load{self.seed}_{index:06d}" for index in range(self.customers)]

    def meter_definitions(self) -> list[MeterDefined]:
        return [MeterDefined(meter_id=f"mtr_load{self.seed}_{index}", display_name=f"Load tokens {index}",
                             event_name=f"load{self.seed}_tokens_{index}", aggregation=MeterAggregation.SUM,
                             created_at_ms=0)
                for index in range(self.meters)]


@dataclass(frozen=True, slots=True)
class LoadSummary:
    events: int
    duplicates: int
    late: int
    failures: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def generate(settings: Settings, plan: LoadPlan, progress: Callable[[int, float], None] | None = None,
             now_ms: Callable[[], int] = wall_clock_ms) -> LoadSummary:
    """Send the plan's events; `progress(events_sent, seconds)` is called about twice a second."""
    rng = random.Random(plan.seed)
    customers = plan.customer_ids()
    meters = plan.meter_definitions()
    event_names = [meter.event_name for meter in meters]
    recent: list[MeterEventRecorded] = []
    sent = duplicates = late = 0
    with FactProducer(settings, catalog=fold_catalog(meters), now_ms=now_ms) as producer:
        if plan.define_catalog:
            producer.send_all(meters)
            producer.send_all(CustomerCreated(customer_id=customer_id, created_at_ms=now_ms()) for customer_id in customers)
            setup = producer.flush()
            failures = setup.failed_count + setup.undelivered_count
        else:
            failures = 0
        send = producer.send_meter_event
        started_s = time.monotonic()
        deadline_s = None if plan.duration_s is None else started_s + plan.duration_s
        next_report_s = started_s + 0.5
        while plan.count is None or sent < plan.count:
            if sent % PACE_EVERY_EVENTS == 0:
                now_s = time.monotonic()
                if deadline_s is not None and now_s >= deadline_s:
                    break
                if plan.rate_per_s > 0:  # pace: sleep while ahead of schedule
                    ahead_s = started_s + sent / plan.rate_per_s - now_s
                    if ahead_s > 0:
                        producer.poll(min(ahead_s, 0.5))
                        continue
                if progress is not None and now_s >= next_report_s:
                    progress(sent, now_s - started_s)
                    next_report_s = now_s + 0.5
            if recent and rng.random() < plan.duplicate_share:
                original = rng.choice(recent)
                send(original.event_name, original.payload, identifier=original.identifier,
                     event_time_ms=original.event_time_ms)
                duplicates += 1
            else:
                event_time_ms = None
                if rng.random() < plan.late_share:
                    event_time_ms = now_ms() - rng.randint(60, plan.max_lateness_s) * 1000
                    late += 1
                event = send(rng.choice(event_names),
                             {"stripe_customer_id": rng.choice(customers), "value": str(rng.randint(1, 2_000))},
                             identifier=f"load{plan.seed}_{sent}", event_time_ms=event_time_ms)
                if len(recent) < RECENT_EVENTS_KEPT:
                    recent.append(event)
                else:
                    recent[sent % RECENT_EVENTS_KEPT] = event
            sent += 1
        result = producer.flush()
        seconds = time.monotonic() - started_s
    failures += result.failed_count + result.undelivered_count
    if progress is not None:
        progress(sent, seconds)
    return LoadSummary(events=sent, duplicates=duplicates, late=late, failures=failures, seconds=seconds)
