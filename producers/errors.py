"""Errors of the producer SDK: one root, names that say what is wrong, a stable snake_case code each."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from producers.producer import FlushResult


class ProducerError(Exception):
    """Root of every error raised by producers/. `code` is stable snake_case."""

    code = "producer_error"


class MeterEventInvalid(ProducerError):
    """A meter event the engine would reject; `code` is Stripe's error code (e.g.
    meter_event_no_customer_defined, timestamp_too_far_in_past). Nothing was sent."""

    def __init__(self, code: str, message: str, event: object) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.event = event


class NotAnInputFact(ProducerError):
    """Derived facts (invoices, balances, usage buckets, ...) are written by the engine only."""

    code = "not_an_input_fact"


class UnknownTopic(ProducerError):
    """A topic the fact must go to does not exist."""

    code = "unknown_topic"


class ProducerQueueFull(ProducerError):
    """The local queue stayed full for longer than the producer's queue_full_timeout_s: the broker
    does not take records as fast as they are produced (or does not answer)."""

    code = "producer_queue_full"


class DeliveryFailed(ProducerError):
    """Some records were not acknowledged by the broker; `result` lists them."""

    code = "delivery_failed"

    def __init__(self, result: FlushResult) -> None:
        first = result.failures[0].error if result.failures else "not delivered before the flush timeout"
        super().__init__(f"{result.failed_count} records failed and {result.undelivered_count} are still "
                         f"queued; first failure: {first}")
        self.result = result
