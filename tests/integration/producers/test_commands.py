"""`drawdown produce` and `drawdown replay` as a user runs them (subprocesses, own topics)."""

from __future__ import annotations

from collections.abc import Iterator
import json
import os
import re
import subprocess
import sys
import time

import pytest

from drawdown.settings import PROJECT_ROOT, Settings
from tests.integration.producers.kafka_reading import own_topics

MINUTE_MS = 60_000


@pytest.fixture(scope="module")
def cli_settings(settings: Settings) -> Iterator[Settings]:
    """This module's own topics (3 partitions), deleted afterwards."""
    yield from own_topics(settings, "c")


def drawdown(settings: Settings, *arguments: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=settings.effective_kafka_bootstrap_servers,
               DRAWDOWN_TOPIC_PREFIX=settings.topic_prefix, DRAWDOWN_PARTITIONS=str(settings.partitions),
               PYTHONPATH=str(PROJECT_ROOT))
    completed = subprocess.run([sys.executable, "-m", "drawdown", *arguments], cwd=PROJECT_ROOT, env=env,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return completed


def replayed_event_count(settings: Settings) -> int:
    now_ms = int(time.time() * 1000) // MINUTE_MS * MINUTE_MS
    completed = drawdown(settings, "replay", "--start", str(now_ms - 3 * 60 * MINUTE_MS),
                         "--end", str(now_ms + 10 * MINUTE_MS), "--format", "json", "--quiet")
    return sum(row["event_count"] for row in json.loads(completed.stdout)["rows"])


def test_the_load_generator_sends_what_it_reports_and_a_rerun_with_the_same_seed_counts_once(cli_settings):
    first = drawdown(cli_settings, "produce", "--count", "3000", "--customers", "7", "--duplicates", "0.1",
                     "--late", "0.2", "--seed", "9", "--quiet")
    summary = re.search(r"events: ([\d,]+) .*failures: (\d+) +\(duplicates ([\d,]+), late ([\d,]+)", first.stdout)
    assert summary, first.stdout
    events, failures, duplicates, late = (int(group.replace(",", "")) for group in summary.groups())
    assert (events, failures) == (3000, 0)
    assert 150 < duplicates < 450 and 400 < late < 800
    assert replayed_event_count(cli_settings) == events - duplicates
    drawdown(cli_settings, "produce", "--count", "3000", "--customers", "7", "--duplicates", "0.1",
             "--late", "0.2", "--seed", "9", "--quiet", "--no-setup")
    assert replayed_event_count(cli_settings) == events - duplicates


def test_replay_prints_a_table_and_draws_a_plot(cli_settings, tmp_path):
    drawdown(cli_settings, "produce", "--count", "200", "--customers", "2", "--seed", "11", "--quiet")
    now_ms = int(time.time() * 1000) // MINUTE_MS * MINUTE_MS
    plot = tmp_path / "usage.png"
    completed = drawdown(cli_settings, "replay", "--start", str(now_ms - 60 * MINUTE_MS), "--end",
                         str(now_ms + 10 * MINUTE_MS), "--group-by", "hour", "--customer", "cus_load11_000000",
                         "--plot", str(plot))
    lines = completed.stdout.splitlines()
    assert lines[0].split() == ["customer_id", "meter_id", "period_start", "value", "event_count"]
    assert all(line.startswith("cus_load11_000000") for line in lines[1:]) and len(lines) > 1
    assert "records" in completed.stderr  # the progress bar
    assert plot.read_bytes()[:4] == b"\x89PNG"
