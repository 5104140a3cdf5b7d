"""The live regime: the highest rate one real `drawdown worker` sustains, events arriving as they happen.

Not a backlog (streams_bench's catch-up row): a paced producer process sends meter events at a
fixed rate, stamped when sent, while a probe event goes out every PROBE_INTERVAL_S on a fixed
schedule (to a few probe customers in turn, so the live-balance throttle never holds one back).
A probe's freshness is the time from its produce to the LiveBalanceChanged that reflects it, as a
reader of live-balances sees it (the streams_bench freshness row's measure); a probe not seen by
the end of the step (the worker durable to the end, plus PROBE_GRACE_S) is lost and counts as a
miss (infinite latency: it is in the p99). A step at rate R passes when
- the producer really offered R (a producer that falls behind makes the step fail, not pass),
- lag (end offsets minus the progress group's durable offsets, sampled) did not grow over the step
  (see lag_bounded) and never passed ABORT_LAG_S of traffic (then the step stops early),
- the worker is durable to the end within DRAIN_LIMIT_S of the last event (the clock stops when
  the progress group says every partition is durable to the end),
- p99 freshness, lost probes included, is under 1 s.
The rates are searched (RateSearch: up by a factor while steps pass, then bisection) with 5,000
and with 100,000 customers, each on its own topics and worker. Ceiling: the bare confluent-kafka
consume + decode + dict-sum loop (streams_bench) over every record the search produced.

Then CPU-seconds per million events (the worker processes' user + system time, from /proc, from
the step's start until durable to the end) at one fixed rate, with one worker and with two
workers on the same topic (scale-out must not add cost per event: two within 1.1x of one).

    python -m benchmarks --only live [--quick]
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import measurement, quick

SEND_CHUNK_EVENTS = 2_000
PROBE_INTERVAL_S = 0.1
# Probe customers in turn: each is probed every PROBE_CUSTOMERS x 100 ms = 800 ms, above the
# live-balance throttle (250 ms), so a probe never waits for the throttle of the previous one.
PROBE_CUSTOMERS = 8
PROBE_GRACE_S = 2.0
TARGET_P99_S = 1.0
TARGET_EVENTS_PER_SECOND = 50_000
TARGET_RATIO = 0.5
LAG_SAMPLE_S = 0.25
LAG_GROWTH_S = 0.5  # lag may not grow by more than this much traffic from the step's first third to its last
ABORT_LAG_S = 3.0  # lag above this much traffic: the step has failed, stop producing
DRAIN_LIMIT_S = 2.0  # durable to the end at most this long after the last event
PRODUCER_SHORTFALL = 0.97  # the producer must offer at least this share of the rate
TWO_WORKERS_MAX_COST = 1.1  # two workers: CPU per event at most 1.1x one worker's


# --- the pure parts (tests/unit/benchmarks/test_live.py) --------------------------------------

class RateSearch:
    """Which rate to try next: multiply by `growth` while steps pass (divide while they fail), then
    bisect (geometric mean) between the highest pass and the lowest fail until they are within
    `precision` of each other, at most `max_steps` steps. Rates are rounded to `granularity`."""

    def __init__(self, start: float, *, growth: float = 1.6, precision: float = 0.1, max_steps: int = 6,
                 granularity: int = 500) -> None:
        self.start, self.growth, self.precision = start, growth, precision
        self.max_steps, self.granularity = max_steps, granularity
        self.steps: list[tuple[int, bool]] = []

    def _round(self, rate: float) -> int:
        return max(self.granularity, int(round(rate / self.granularity)) * self.granularity)

    @property
    def best(self) -> int:
        """The highest rate that passed (0: none)."""
        return max((rate for rate, passed in self.steps if passed), default=0)

    @property
    def lowest_failure(self) -> int | None:
        return min((rate for rate, passed in self.steps if not passed), default=None)

    def record(self, rate: int, passed: bool) -> None:
        self.steps.append((rate, passed))

    def next_rate(self) -> int | None:
        """The next rate to try, or None when the search is done."""
        if len(self.steps) >= self.max_steps:
            return None
        if not self.steps:
            return self._round(self.start)
        best, failure = self.best, self.lowest_failure
        if failure is None:
            return self._round(best * self.growth)
        if not best:
            candidate = self._round(failure / self.growth)
            return None if candidate >= failure else candidate
        if failure / best - 1 <= self.precision:
            return None
        candidate = self._round(math.sqrt(best * failure))
        return None if candidate in (best, failure) else candidate


@dataclass
class ProbeBook:
    """Probes sent and what the reader saw. Each probe raises its customer's accrued usage to a
    known total; a live balance at or above that total reflects it (and every earlier probe of
    that customer). A probe never reflected is lost: infinite latency."""

    sent: list[tuple[str, int, float]] = field(default_factory=list)  # (customer, accrued it needs, sent at)
    seen_at: dict[int, float] = field(default_factory=dict)  # index in `sent` -> first seen reflected at
    _open: dict[str, list[int]] = field(default_factory=dict)  # customer -> indexes not seen yet, in order

    def sent_probe(self, customer: str, accrued_needed: int, sent_at: float) -> None:
        self._open.setdefault(customer, []).append(len(self.sent))
        self.sent.append((customer, accrued_needed, sent_at))

    def observed(self, customer: str, accrued: int, at: float) -> None:
        """A live balance of `customer` with accrued usage `accrued`, read at `at`."""
        waiting = self._open.get(customer)
        if not waiting:
            return
        still = []
        for index in waiting:
            if self.sent[index][1] <= accrued:
                self.seen_at[index] = at
            else:
                still.append(index)
        self._open[customer] = still

    def latencies_s(self) -> list[float]:
        """One latency per probe sent, in the order sent; math.inf for a lost one."""
        return [self.seen_at[index] - sent_at if index in self.seen_at else math.inf
                for index, (_, _, sent_at) in enumerate(self.sent)]

    def lost(self) -> int:
        return len(self.sent) - len(self.seen_at)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (inf when there are no values: nothing measured is no pass)."""
    if not values:
        return math.inf
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def lag_bounded(lags: Sequence[float], rate: float, growth_s: float = LAG_GROWTH_S) -> bool:
    """Whether lag (events behind, sampled at even intervals over a step) did not grow: the median
    of the last third exceeds the median of the first third by at most `growth_s` of traffic.
    Medians, because the durable offsets move a batch at a time."""
    if len(lags) < 3:
        return False  # too few samples to tell: no pass
    third = len(lags) // 3
    return statistics.median(lags[-third:]) - statistics.median(lags[:third]) <= growth_s * rate


@dataclass
class StepResult:
    rate: int
    events: int
    offered_rate: float
    seconds_to_durable: float
    drain_s: float
    p50_s: float
    p99_s: float
    probes: int
    lost: int
    lag_ok: bool
    aborted: bool
    cpu_s: float
    starts: dict[int, int]

    @property
    def passed(self) -> bool:
        return (not self.aborted and self.lag_ok and self.offered_rate >= PRODUCER_SHORTFALL * self.rate
                and self.drain_s <= DRAIN_LIMIT_S and self.p99_s < TARGET_P99_S)

    def describe(self) -> str:
        return (f"{self.rate:,}/s: {'pass' if self.passed else 'fail'}; offered {self.offered_rate:,.0f}/s, "
                f"{self.events:,} events durable in {self.seconds_to_durable:.1f} s (drain {self.drain_s:.2f} s), "
                f"freshness p50 {self.p50_s * 1000:.0f} ms p99 {self.p99_s * 1000:.0f} ms, {self.probes} probes "
                f"({self.lost} lost), lag {'bounded' if self.lag_ok else 'GROWING'}"
                f"{', aborted' if self.aborted else ''}, worker CPU {self.cpu_s:.1f} s")


# --- the paced producer (a process of its own: it must not share the GIL with the probes) ----------

def _paced_producer(settings: Any, customer_prefix: str, customer_count: int, connection: Any) -> None:
    """Serve ("run", rate, seconds) commands: send meter events at `rate` for `seconds` (or until
    "stop" arrives), then answer (events sent, started at, ended at) in time.monotonic()."""
    from producers.producer import FactProducer

    rng = random.Random(7)
    customers = [f"{customer_prefix}{n}" for n in range(customer_count)]
    names = ("hypernian_input_tokens", "hypernian_output_tokens")
    with FactProducer(settings, validate=False, config={"linger.ms": 1}) as producer:
        connection.send("ready")
        while True:
            command = connection.recv()
            if command[0] == "exit":
                return
            _, rate, seconds = command
            sent, chunks = 0, 0
            started = time.monotonic()
            while True:
                elapsed = time.monotonic() - started
                if elapsed >= seconds or connection.poll():
                    break
                due = int(elapsed * rate)
                while sent < due:
                    count = min(due - sent, SEND_CHUNK_EVENTS)
                    payloads = [{"stripe_customer_id": customers[rng.randrange(customer_count)], "value": "1"}
                                for _ in range(count)]
                    producer.send_meter_events(names[chunks % 2], payloads)
                    sent += count
                    chunks += 1
                producer.poll(0)
                time.sleep(0.002)
            ended = time.monotonic()
            producer.flush()
            if connection.poll():
                connection.recv()  # the "stop" that ended it
            connection.send((sent, started, ended))


class PacedProducer:
    def __init__(self, settings: Any, customer_prefix: str, customer_count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_paced_producer, args=(settings, customer_prefix, customer_count, child),
                                       daemon=True)
        self.process.start()
        if not self.connection.poll(60) or self.connection.recv() != "ready":
            raise RuntimeError("the paced producer did not start")

    def start(self, rate: int, seconds: float) -> None:
        self.connection.send(("run", rate, seconds))

    def stop(self) -> None:
        self.connection.send(("stop",))

    def result(self, timeout_s: float = 60) -> tuple[int, float, float]:
        if not self.connection.poll(timeout_s):
            raise TimeoutError("the paced producer did not answer")
        return self.connection.recv()

    def close(self) -> None:
        try:
            self.connection.send(("exit",))
        except OSError:
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


# --- measuring a step --------------------------------------------------------------------------

def _cpu_seconds(pid: int) -> float:
    """User + system time of a process (every thread), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _LagSampler(threading.Thread):
    """Events behind (end offsets minus the progress group's durable offsets), every LAG_SAMPLE_S."""

    def __init__(self, settings: Any) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
        from confluent_kafka.admin import AdminClient

        from streams.source import progress_group

        self.topic = settings.topic("customer-facts")
        self.partitions = [TopicPartition(self.topic, p) for p in range(settings.partitions)]
        self.admin = AdminClient(settings.kafka_client_config())
        self.request = ConsumerGroupTopicPartitions(progress_group(settings), self.partitions)
        self.watermarks = Consumer({**settings.kafka_client_config(),
                                    "group.id": f"{settings.topic_prefix}.live-lag"})
        self.samples: list[float] = []
        self.stopping = threading.Event()

    def lag(self) -> float:
        answer = self.admin.list_consumer_group_offsets([self.request], request_timeout=5)
        durable = {tp.partition: tp.offset for tp in next(iter(answer.values())).result().topic_partitions}
        ends = {tp.partition: self.watermarks.get_watermark_offsets(tp, timeout=5)[1] for tp in self.partitions}
        return float(sum(max(0, end - max(durable.get(p, 0), 0)) for p, end in ends.items()))

    def run(self) -> None:
        while not self.stopping.wait(LAG_SAMPLE_S):
            try:
                self.samples.append(self.lag())
            except Exception:  # noqa: BLE001 - a slow answer: skip this sample
                continue

    def close(self) -> None:
        self.stopping.set()
        self.join(10)
        self.watermarks.close()


class LiveRig:
    """The topics, customers, worker(s), paced producer, probe producer and live-balance reader of one run."""

    def __init__(self, settings: Any, customer_count: int, work_dir: Path) -> None:
        from benchmarks.streams_bench import _free_port

        self.settings = settings.model_copy(update={"worker_data_dir": work_dir / "worker-1",
                                                    "worker_web_port": _free_port()})
        self.work_dir = work_dir
        self.customer_count = customer_count
        self.workers: list = []
        self.producer = self.reader = self.probe_producer = None
        self.probes = [f"cus_probe_{n}" for n in range(PROBE_CUSTOMERS)]
        self.accrued = {probe: 0 for probe in self.probes}

    def setup(self) -> None:
        """Outside every clock: topics, customers (and probe customers) folded, the worker durable."""
        from benchmarks.streams_bench import _produce_setup, _Worker
        from producers.producer import FactProducer
        from streams import walkthrough as w
        from streams.topics import ensure_topics

        customer_count, work_dir = self.customer_count, self.work_dir
        ensure_topics(self.settings)
        _produce_setup(self.settings, [f"cus_live_{n}" for n in range(customer_count)])
        self.probe_producer = FactProducer(self.settings, validate=False, config={"linger.ms": 0})
        now_ms = time.time_ns() // 1_000_000
        for probe in self.probes:
            self.probe_producer.send_all(w.customer_setup(probe, None, start_ms=now_ms - 3_600_000,
                                                          grant_minor=10_000_000))
        self.probe_producer.flush()
        self.workers = [_Worker(self.settings, work_dir / "worker-1.log")]
        self.workers[0].start()
        self.producer = PacedProducer(self.settings, "cus_live_", customer_count)
        self._start_reader()
        self.workers[0].wait(lambda status: status.get("ready"), timeout_s=300)
        self.wait_durable(timeout_s=600)

    def _start_reader(self) -> None:
        from confluent_kafka import OFFSET_END, Consumer, TopicPartition

        from schemas.codec import FactCodec

        self.codec = FactCodec(self.settings.schema_registry_url or None)
        self.reader = Consumer({**self.settings.kafka_client_config(),
                                "group.id": f"{self.settings.topic_prefix}.live-freshness",
                                "enable.auto.commit": False})
        self.reader.assign([TopicPartition(self.settings.topic("live-balances"), p, OFFSET_END)
                            for p in range(self.settings.partitions)])
        self.probe_keys = {probe.encode() for probe in self.probes}

    def read(self, book: ProbeBook, timeout_s: float) -> None:
        from billing.facts import LiveBalanceChanged

        for message in self.reader.consume(1000, timeout=timeout_s):
            if message.error() or message.key() not in self.probe_keys:
                continue
            fact = self.codec.decode(message.value())
            if isinstance(fact, LiveBalanceChanged):
                book.observed(fact.customer_id, fact.accrued_usage_minor, time.monotonic())

    def wait_durable(self, timeout_s: float = 120) -> float:
        from benchmarks.streams_bench import _end_offsets, _wait_durable_to

        return _wait_durable_to(self.settings, self.workers[0], _end_offsets(self.settings), timeout_s=timeout_s)

    def add_worker(self) -> None:
        """A second worker in the same group (its own store and web port); back when the group has
        settled (both ready) and is durable to the end."""
        from benchmarks.streams_bench import _free_port, _Worker

        settings = self.settings.model_copy(update={"worker_data_dir": self.work_dir / "worker-2",
                                                    "worker_web_port": _free_port()})
        worker = _Worker(settings, self.work_dir / "worker-2.log")
        worker.start()
        self.workers.append(worker)
        time.sleep(2.0)  # the rebalance starts: the first worker reports not ready meanwhile
        for each in self.workers:
            each.wait(lambda status: status.get("ready"), timeout_s=300)
        self.wait_durable(timeout_s=300)

    def step(self, rate: int, seconds: float) -> StepResult:
        """Produce at `rate` for `seconds` with probes on schedule; measure until durable to the end."""
        from benchmarks.streams_bench import _end_offsets

        self.read(ProbeBook(), 0.2)  # what came before this step
        starts = _end_offsets(self.settings)
        book = ProbeBook()
        sampler = _LagSampler(self.settings)
        cpu_before = sum(_cpu_seconds(worker.process.pid) for worker in self.workers)
        self.producer.start(rate, seconds)
        started = time.monotonic()
        sampler.start()
        next_probe, probe_index, aborted = started, 0, False
        while time.monotonic() - started < seconds:
            now = time.monotonic()
            if now >= next_probe:  # on the schedule, whatever the previous probes did
                probe = self.probes[probe_index % PROBE_CUSTOMERS]
                probe_index += 1
                self.accrued[probe] += 3  # value 1 at the input price's 3 minor units
                self.probe_producer.send_meter_event("hypernian_input_tokens",
                                                     {"stripe_customer_id": probe, "value": "1"})
                book.sent_probe(probe, self.accrued[probe], now)
                next_probe += PROBE_INTERVAL_S
            self.probe_producer.poll(0)
            self.read(book, min(0.01, max(0.0, next_probe - time.monotonic())))
            if (not aborted and now - started > 2.0 and sampler.samples
                    and sampler.samples[-1] > ABORT_LAG_S * rate):
                aborted = True
                self.producer.stop()
                break
        self.probe_producer.flush()
        events, producing_started, producing_ended = self.producer.result()
        sampler.close()
        ends = _end_offsets(self.settings)
        from benchmarks.streams_bench import _wait_durable_to

        durable_at = _wait_durable_to(self.settings, self.workers[0], ends, timeout_s=300)
        cpu_s = sum(_cpu_seconds(worker.process.pid) for worker in self.workers) - cpu_before
        grace_until = time.monotonic() + PROBE_GRACE_S
        while time.monotonic() < grace_until and book.lost():
            self.read(book, 0.05)
        latencies = book.latencies_s()
        elapsed = max(producing_ended - producing_started, 1e-9)
        result = StepResult(rate=rate, events=events, offered_rate=events / elapsed,
                            seconds_to_durable=durable_at - producing_started,
                            drain_s=max(0.0, durable_at - producing_ended), p50_s=percentile(latencies, 0.5),
                            p99_s=percentile(latencies, 0.99), probes=len(latencies), lost=book.lost(),
                            lag_ok=lag_bounded(sampler.samples, rate), aborted=aborted, cpu_s=cpu_s, starts=starts)
        print(f"  {self.customer_count:,} customers, {len(self.workers)} worker(s): {result.describe()}",
              file=sys.stderr)
        return result

    def close(self) -> None:
        for closing in (*(worker.stop for worker in self.workers), getattr(self.producer, "close", None),
                        getattr(self.reader, "close", None), getattr(self.probe_producer, "close", None)):
            try:
                if closing is not None:
                    closing()
            except Exception:  # noqa: BLE001 - tear down the rest all the same
                pass


# --- the run -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    customer_counts: tuple[int, ...]
    step_s: float
    start_rate: int
    max_steps: int
    cpu_rate: int
    cpu_step_s: float


FULL = Plan(customer_counts=(5_000, 100_000), step_s=10.0, start_rate=8_000, max_steps=5, cpu_rate=5_000,
            cpu_step_s=10.0)
QUICK = Plan(customer_counts=(5_000, 100_000), step_s=4.0, start_rate=8_000, max_steps=2, cpu_rate=5_000,
             cpu_step_s=4.0)


def _search(rig: LiveRig, plan: Plan) -> tuple[RateSearch, dict[int, StepResult]]:
    search = RateSearch(plan.start_rate, max_steps=plan.max_steps)
    results: dict[int, StepResult] = {}
    while (rate := search.next_rate()) is not None:
        result = results[rate] = rig.step(rate, plan.step_s)
        search.record(rate, result.passed)
        rig.wait_durable(timeout_s=300)  # the next step starts from no backlog
    return search, results


def _short_count(count: int) -> str:
    return f"{count // 1000}k" if count % 1000 == 0 else f"{count:,}"


def run(settings: Any) -> list[dict[str, Any]]:
    from benchmarks.streams_bench import _ceiling_events_per_second

    plan = QUICK if quick() else FULL
    rows: list[dict[str, Any]] = []
    for count in plan.customer_counts:
        work_dir = Path(tempfile.mkdtemp(prefix="live-bench-"))
        rig_settings = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}.live{_short_count(count)}"})
        rig = LiveRig(rig_settings, count, work_dir)
        try:
            rig.setup()
            search, results = _search(rig, plan)
            best = search.best
            # Over every record the search produced (one step's few are dominated by the loop's start-up).
            first_step = results[search.steps[0][0]]
            ceiling = _ceiling_events_per_second(rig.settings, first_step.starts,
                                                 sum(result.events for result in results.values()))
            steps = ", ".join(f"{rate:,} {'ok' if passed else 'no'}" for rate, passed in search.steps)
            rows.append(measurement(
                f"live sustained rate, {_short_count(count)} customers, 1 worker: p99 freshness < 1 s (lost probes "
                f"count), lag bounded, clock to durable (steps {steps})",
                "events/s", float(best), ceiling, at_least=TARGET_EVENTS_PER_SECOND,
                min_ratio=TARGET_RATIO))
            if best:
                rows.append(measurement(f"live freshness p99 at {best:,} events/s, {_short_count(count)} customers "
                                        f"({results[best].probes} probes, {results[best].lost} lost)",
                                        "ms", results[best].p99_s * 1000, info="the sustained-rate row carries the target"))
            if count == plan.customer_counts[0]:
                one = rig.step(plan.cpu_rate, plan.cpu_step_s)
                one_cost = one.cpu_s / one.events * 1e6
                rows.append(measurement(f"worker CPU-seconds per million events at {plan.cpu_rate:,}/s, 1 worker",
                                        "CPU-s", one_cost, info="the 2-worker row compares with it"))
                rig.add_worker()
                two = rig.step(plan.cpu_rate, plan.cpu_step_s)
                two_cost = two.cpu_s / two.events * 1e6
                rows.append(measurement(f"worker CPU-seconds per million events at {plan.cpu_rate:,}/s, "
                                        "2 workers on one topic (both processes)",
                                        "CPU-s", two_cost, below=TWO_WORKERS_MAX_COST * one_cost,
                                        also=f"(1.1x of 1 worker's {one_cost:.1f})"))
        finally:
            rig.close()
            shutil.rmtree(work_dir, ignore_errors=True)
    return rows
