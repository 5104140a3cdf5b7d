"""Replay results as table, CSV, JSON and PNG; window arguments as ISO 8601 or epoch ms."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import pytest

from replay.commands import parse_instant_ms
from billing.replay_fold import UsageRow
from replay.usage import ReplayResult, ReplayWindowError, check_window
from replay.output import plot_usage, to_csv, to_json, to_table

T0_MS = 1_763_856_000_000  # 2025-11-23T00:00:00Z

RESULT = ReplayResult(
    start_ms=T0_MS, end_ms=T0_MS + 3_600_000, group_by="minute",
    rows=(UsageRow("cus_a", "mtr_tokens", T0_MS, Decimal("1250.25"), 3),
          UsageRow("cus_b", "mtr_tokens", T0_MS + 60_000, Decimal("0.000000000001"), 1)),
    records_read=10, meter_events=5, rejected={"meter_event_customer_not_found": 1}, seconds=0.1)


def test_values_stay_exact_decimal_strings_in_csv_and_json():
    rows = list(csv.DictReader(io.StringIO(to_csv(RESULT.rows))))
    assert rows[1] == {"customer_id": "cus_b", "meter_id": "mtr_tokens", "period_start": "2025-11-23T00:01:00Z",
                       "value": "0.000000000001", "event_count": "1"}
    document = json.loads(to_json(RESULT))
    assert document["rows"][0]["value"] == "1250.25" and document["rows"][0]["event_count"] == 3
    assert document["rejected"] == {"meter_event_customer_not_found": 1}


def test_the_table_has_a_header_and_one_line_per_row():
    lines = to_table(RESULT.rows).splitlines()
    assert lines[0].split() == ["customer_id", "meter_id", "period_start", "value", "event_count"]
    assert lines[1].split() == ["cus_a", "mtr_tokens", "2025-11-23T00:00:00Z", "1250.25", "3"]
    assert len(lines) == 3


def test_the_plot_is_a_png_file(tmp_path):
    path = plot_usage(RESULT, tmp_path / "usage.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("text", "expected_ms"), [
    ("2025-11-23T00:00:00Z", T0_MS), ("2025-11-23T01:00:00+01:00", T0_MS), ("2025-11-23T00:00", T0_MS),
    (str(T0_MS), T0_MS),
])
def test_window_bounds_are_iso_8601_in_utc_or_epoch_ms(text, expected_ms):
    assert parse_instant_ms(text) == expected_ms


def test_windows_must_be_whole_minutes_and_not_empty():
    check_window(T0_MS, T0_MS + 60_000)
    for start_ms, end_ms in ((T0_MS, T0_MS), (T0_MS + 1, T0_MS + 60_000)):
        with pytest.raises(ReplayWindowError):
            check_window(start_ms, end_ms)
