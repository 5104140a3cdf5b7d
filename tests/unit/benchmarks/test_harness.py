"""The benchmark harness with fake benchmark modules: discovery, both run() signatures, a crash,
the table and the JSON."""

from __future__ import annotations

import json
import sys
import textwrap
from datetime import UTC, datetime

import pytest

from benchmarks.harness import discover, format_table, run_benchmarks, write_results
from drawdown.settings import Settings

FAKES = {
    "fast_bench.py": """
        def run(settings):
            return [{"name": "fast thing", "unit": "ops/s", "measured": 300000.0, "ceiling": 400000.0,
                     "ratio": 0.75, "target": ">= 0.6 of ceiling", "passed": True, "extra": settings.topic_prefix}]
    """,
    "slow_bench.py": """
        def run():
            return [{"name": "slow thing", "unit": "ops/s", "measured": 10.0, "ceiling": 100.0,
                     "ratio": 0.1, "target": ">= 0.8 of ceiling", "passed": False}]
    """,
    "broken_bench.py": """
        def run():
            raise RuntimeError("no broker")
    """,
    "helper.py": "",
}


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    package = tmp_path / "fakebench"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, source in FAKES.items():
        (package / name).write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    for module in [name for name in sys.modules if name.startswith("fakebench")]:
        del sys.modules[module]


def test_discovery_finds_only_bench_modules_and_honours_only(fake_package):
    assert discover(fake_package) == ["broken", "fast", "slow"]
    assert discover(fake_package, only=["slow_bench"]) == ["slow"]
    with pytest.raises(SystemExit, match="no benchmark named nope"):
        discover(fake_package, only=["nope"])


def test_each_benchmark_runs_with_or_without_settings_and_a_crash_becomes_a_short_row(fake_package):
    rows = run_benchmarks(["broken", "fast", "slow"], Settings(topic_prefix="bench-x"), package="fakebench",
                          log=lambda line: None)
    assert [row["name"] for row in rows] == ["broken", "fast thing", "slow thing"]
    assert rows[0]["passed"] is False and "RuntimeError: no broker" in rows[0]["target"]
    assert "extra" not in rows[1]  # only the documented keys are kept


def test_the_table_shows_measured_ceiling_ratio_target_and_verdict(fake_package):
    rows = run_benchmarks(["fast", "slow"], Settings(), package="fakebench", log=lambda line: None)
    lines = format_table(rows).splitlines()
    assert lines[0].split()[:2] == ["benchmark", "measured"]
    assert "300,000 ops/s" in lines[2] and "400,000 ops/s" in lines[2] and "0.75" in lines[2]
    assert lines[2].endswith("pass") and lines[3].endswith("short")


def test_the_json_goes_to_a_timestamped_file_and_latest(fake_package, tmp_path):
    rows = run_benchmarks(["fast", "slow"], Settings(), package="fakebench", log=lambda line: None)
    stamped, latest = write_results(rows, tmp_path / ".bench", datetime(2026, 11, 23, 22, 0, tzinfo=UTC), "bench-x")
    assert stamped.name == "bench-20261123T220000Z.json"
    document = json.loads(latest.read_text())
    assert document == json.loads(stamped.read_text())
    assert document["passed"] is False
    assert [row["measured"] for row in document["results"]] == [300000.0, 10.0]
