"""The high-volume producer SDK for meter events and the other input facts, the load generator, and
exact replay of the meter-event log for analysts."""

from producers.catalog import MeterCatalog, read_catalog
from producers.errors import DeliveryFailed, MeterEventInvalid, NotAnInputFact, ProducerError, ProducerQueueFull
from producers.producer import DeliveryReport, FactProducer, FlushResult

__all__ = [
    "DeliveryFailed",
    "DeliveryReport",
    "FactProducer",
    "FlushResult",
    "MeterCatalog",
    "MeterEventInvalid",
    "NotAnInputFact",
    "ProducerError",
    "ProducerQueueFull",
    "read_catalog",
]
