"""The high-volume producer SDK for meter events and the other input facts, the load generator, and
exact replay of the meter-event log for analysts."""

from producers.catalog_reader import fold_catalog, read_catalog
from producers.errors import DeliveryFailed, MeterEventInvalid, NotAnInputFact, ProducerError, ProducerQueueFull
from producers.producer import DeliveryReport, FactProducer, FlushResult

__all__ = [
    "DeliveryFailed",
    "DeliveryReport",
    "FactProducer",
    "FlushResult",
    "fold_catalog",
    "MeterEventInvalid",
    "NotAnInputFact",
    "ProducerError",
    "ProducerQueueFull",
    "read_catalog",
]
