"""plan_ranges seeks and stops by record timestamp, widened by the receipt bound: with the broker's
append time as the timestamp, a counted event's record lies up to the bound from its arrival."""

from __future__ import annotations

from confluent_kafka import TopicPartition

from replay.usage import LATENESS_LIMIT_MS, SEEK_BACK_MS, PartitionRange, plan_ranges

START_MS, END_MS = 1_767_225_600_000, 1_767_229_200_000
HOUR_MS = 3_600_000


class Planner:
    """A consumer that answers offsets_for_times with the asked timestamp's offset in a log of one
    record per second from START_MS - 2 hours, and records what was asked."""

    first_ms = START_MS - 2 * HOUR_MS

    def __init__(self) -> None:
        self.asked: list[int] = []

    def offsets_for_times(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.asked.extend(p.offset for p in partitions)
        return [TopicPartition(p.topic, p.partition, max(0, (p.offset - self.first_ms + 999) // 1000))
                for p in partitions]

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float) -> tuple[int, int]:
        return 0, 10 ** 9


def test_the_seek_and_the_stop_are_widened_by_the_receipt_bound():
    planner = Planner()
    (unbound,) = plan_ranges(planner, "t", [0], START_MS, END_MS)
    assert planner.asked == [START_MS - SEEK_BACK_MS, END_MS + LATENESS_LIMIT_MS + 1]
    planner.asked.clear()
    (bound,) = plan_ranges(planner, "t", [0], START_MS, END_MS, receipt_bound_ms=HOUR_MS)
    assert planner.asked == [START_MS - SEEK_BACK_MS - HOUR_MS, END_MS + LATENESS_LIMIT_MS + HOUR_MS + 1]
    assert bound == PartitionRange(0, 0, unbound.fold_offset - 3600, unbound.stop_offset + 3600)
