"""Replay results as a table, CSV, JSON or a PNG plot. Values stay exact decimal strings in every
text format; only the plot turns them into floats (pixels need no exactness)."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from billing.replay_fold import UsageRow
from replay.usage import ReplayResult

COLUMNS = ("customer_id", "meter_id", "period_start", "value", "event_count")


def iso_utc(instant_ms: int) -> str:
    """ISO 8601 UTC with a Z, to the second (periods are whole minutes)."""
    return datetime.fromtimestamp(instant_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cells(row: UsageRow) -> tuple[str, ...]:
    return (row.customer_id, row.meter_id, iso_utc(row.period_start_ms), format(row.value, "f"), str(row.event_count))


def to_table(rows: Sequence[UsageRow]) -> str:
    """Aligned plain text, numbers right-aligned."""
    lines = [COLUMNS, *(_cells(row) for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(COLUMNS))]
    right = {3, 4}
    return "\n".join(
        "  ".join(cell.rjust(width) if column in right else cell.ljust(width)
                  for column, (cell, width) in enumerate(zip(line, widths, strict=True))).rstrip()
        for line in lines)


def to_csv(rows: Sequence[UsageRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(_cells(row) for row in rows)
    return out.getvalue()


def to_json(result: ReplayResult) -> str:
    """The window, the rows (value as a decimal string) and what the scan saw."""
    document = {
        "start": iso_utc(result.start_ms),
        "end": iso_utc(result.end_ms),
        "group_by": result.group_by,
        "rows": [dict(zip(COLUMNS, _cells(row), strict=True)) | {"event_count": row.event_count}
                 for row in result.rows],
        "records_read": result.records_read,
        "meter_events": result.meter_events,
        "rejected": dict(result.rejected),
    }
    return json.dumps(document, indent=2)


def plot_usage(result: ReplayResult, path: Path) -> Path:
    """A PNG of usage over time: one line per meter (all selected customers summed)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    series: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for row in result.rows:
        series[row.meter_id][row.period_start_ms] += float(row.value)
    figure, axes = plt.subplots(figsize=(10, 4.5), dpi=100)
    try:
        for meter_id in sorted(series):
            points = sorted(series[meter_id].items())
            times = [datetime.fromtimestamp(start_ms / 1000, UTC) for start_ms, _ in points]
            # Steps: a value holds for its whole minute/hour/day, it does not slope to the next one.
            axes.step(times, [value for _, value in points], where="post", linewidth=1.2, label=meter_id)
        axes.set_title(f"usage per {result.group_by}, {iso_utc(result.start_ms)} to {iso_utc(result.end_ms)}")
        axes.set_xlim(datetime.fromtimestamp(result.start_ms / 1000, UTC), datetime.fromtimestamp(result.end_ms / 1000, UTC))
        axes.set_xlabel("event time (UTC)")
        axes.set_ylabel("usage")
        axes.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
        axes.grid(True, alpha=0.3)
        if series:
            axes.legend(loc="upper left")
        else:
            axes.text(0.5, 0.5, "no usage in this window", transform=axes.transAxes, ha="center")
        figure.autofmt_xdate()
        figure.tight_layout()
        path = Path(path)
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
    return path
