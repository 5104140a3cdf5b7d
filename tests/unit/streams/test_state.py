"""State records survive an upgrade that appends a field (the worker reads what an older one left)."""

import pickle

import pytest

from streams import state as records
from streams.processor import PartitionState


class _OlderPartitionState:
    """Pickles the way an older worker wrote PartitionState: the same class, fewer leading fields."""

    def __init__(self, *values: object) -> None:
        self.values = values

    def __reduce__(self):
        return records._rebuild, (PartitionState, self.values)  # noqa: SLF001


def _pickled_as_older_version(values: tuple) -> bytes:
    return pickle.dumps(_OlderPartitionState(*values), protocol=5)


def test_a_record_round_trips():
    state = PartitionState(applied_offset=7, now_ms=1_000, clocks={"clock_1": 5}, durable_offset=6)
    assert records.loads(records.dumps(state)) == state


def test_a_record_written_before_a_field_was_appended_gets_its_default():
    older = pickle.loads(_pickled_as_older_version((41, 1_000, {"clock_1": 5})))
    assert older == PartitionState(applied_offset=41, now_ms=1_000, clocks={"clock_1": 5}, durable_offset=-1)


def test_a_missing_field_without_default_is_a_clear_error():
    from billing.customer import Rejected

    with pytest.raises(ValueError, match="message"):
        records._rebuild(Rejected, ("a_code",))  # noqa: SLF001
