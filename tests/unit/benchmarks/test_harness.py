"""The benchmark harness with fake benchmark modules: discovery, both run() signatures, a crash,
the table and the JSON; and the rules that keep a row from flattering: info rows never pass, a
ratio above 1.05 is a broken ceiling, rounds are summarised by their median, and a miss fails
the run."""

from __future__ import annotations

import json
import sys
import textwrap
from datetime import UTC, datetime

import pytest

from benchmarks.harness import (
    build_parser,
    discover,
    exit_code,
    format_table,
    measurement,
    run_benchmarks,
    run_from_arguments,
    summary,
    verdict,
    write_results,
)
from drawdown.settings import Settings

FAKES = {
    "fast_bench.py": """
        def run(settings):
            return [{"name": "fast thing", "unit": "ops/s", "measured": 300000.0, "ceiling": 400000.0,
                     "ratio": 0.75, "rounds": 3, "target": ">= 0.6 of ceiling", "passed": True,
                     "extra": settings.topic_prefix}]
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
    assert lines[0].split()[-4:] == ["ratio", "rounds", "target", "result"]
    assert " 3 " in lines[2]  # the rounds behind the figure
    assert lines[2].endswith("pass") and lines[3].endswith("short")


def test_the_json_goes_to_a_timestamped_file_and_latest(fake_package, tmp_path):
    rows = run_benchmarks(["fast", "slow"], Settings(), package="fakebench", log=lambda line: None)
    stamped, latest = write_results(rows, tmp_path / ".bench", datetime(2026, 11, 23, 22, 0, tzinfo=UTC), "bench-x")
    assert stamped.name == "bench-20261123T220000Z.json"
    document = json.loads(latest.read_text())
    assert document == json.loads(stamped.read_text())
    assert document["passed"] is False
    assert [row["measured"] for row in document["results"]] == [300000.0, 10.0]


# --- the rules -------------------------------------------------------------------------------------

def test_an_info_row_shows_info_never_pass():
    row = measurement("recovery after kill -9", "s", 4.2, info="no target in the issue")
    assert row["passed"] is None and row["target"] == "info: no target in the issue"
    assert verdict(row) == "info"
    assert format_table([row]).splitlines()[2].endswith("info")
    # a row claiming a pass without a target is not believed either: passed must come from a target
    assert verdict({"name": "x", "measured": 1.0, "ratio": None, "target": "(reported)", "passed": None}) == "short"


def test_a_row_has_a_target_or_an_info_note_never_neither_nor_both():
    with pytest.raises(ValueError, match="neither"):
        measurement("max throughput", "req/s", 900.0)
    with pytest.raises(ValueError, match="both"):
        measurement("max throughput", "req/s", 900.0, at_least=1.0, info="reported")
    with pytest.raises(ValueError, match="ceiling"):
        measurement("throughput", "events/s", 900.0, min_ratio=0.8)


def test_targets_can_fail():
    # 150,000 events/s against a 200,000 ceiling: 0.75 of it
    assert measurement("producer", "events/s", 150_000, 200_000, at_least=150_000, min_ratio=0.6)["passed"] is True
    assert measurement("producer", "events/s", 149_999, 200_000, at_least=150_000, min_ratio=0.6)["passed"] is False
    assert measurement("producer", "events/s", 150_000, 200_000, at_least=100_000, min_ratio=0.8)["passed"] is False
    assert measurement("p99", "ms", 19.9, below=20.0)["passed"] is True
    assert measurement("p99", "ms", 20.0, below=20.0)["passed"] is False
    failed = measurement("ingest", "events/s", 30_000, at_least=20_000, also_ok=False, also="no errors (3 errors)")
    assert failed["passed"] is False and failed["target"] == ">= 20,000 events/s and no errors (3 errors)"


def test_a_ratio_above_1_05_is_a_broken_ceiling_and_a_failure():
    # 106 against a ceiling of 100: the "ceiling" did less work than the measured side
    broken = measurement("replay", "events/s", 106.0, 100.0, min_ratio=0.8)
    assert broken["ratio"] == pytest.approx(1.06) and broken["passed"] is True
    assert verdict(broken) == "broken ceiling"
    assert format_table([broken]).splitlines()[2].endswith("broken ceiling")
    assert verdict(measurement("replay", "events/s", 105.0, 100.0, min_ratio=0.8)) == "pass"  # noise allowed
    assert verdict(measurement("enqueue", "events/s", 110.0, 100.0, info="Python cost")) == "broken ceiling"
    # for a latency the ceiling is the lower bound: 2 ms against a bare 4 ms is broken too
    latency = measurement("p99", "ms", 2.0, 4.0, below=20.0, lower_is_better=True)
    assert latency["ratio"] == pytest.approx(2.0) and verdict(latency) == "broken ceiling"
    assert measurement("p99", "ms", 8.0, 4.0, below=20.0, lower_is_better=True)["ratio"] == pytest.approx(0.5)


def test_rounds_are_summarised_by_the_median_not_the_best():
    # rounds 80, 120, 100 (events/s), ceiling rounds 200, 190, 150: medians 100 and 190
    row = measurement("replay", "events/s", [80.0, 120.0, 100.0], [200.0, 190.0, 150.0], min_ratio=0.5)
    assert (row["measured"], row["ceiling"], row["rounds"]) == (100.0, 190.0, 3)
    assert row["ratio"] == pytest.approx(100 / 190)
    # a p99 per round: the median round, not the luckiest (lowest) one
    assert measurement("p99", "ms", [30.0, 4.0, 25.0], below=20.0)["measured"] == 25.0
    assert measurement("p99", "ms", [30.0, 4.0, 25.0], below=20.0)["passed"] is False
    assert measurement("one", "s", 3.5, info="one round")["rounds"] == 1


def test_the_summary_counts_each_verdict():
    rows = [measurement("a", "x", 10.0, at_least=5.0), measurement("b", "x", 1.0, at_least=5.0),
            measurement("c", "x", 1.0, info="reported"), measurement("d", "x", 2.0, 1.0, min_ratio=0.5)]
    assert summary(rows) == "4 rows: 1 pass, 1 short, 1 info, 1 broken"


def test_a_missed_target_or_a_broken_ceiling_fails_the_run_unless_told_not_to():
    passing = [measurement("a", "x", 10.0, at_least=5.0), measurement("c", "x", 1.0, info="reported")]
    assert exit_code(passing) == 0
    assert exit_code([*passing, measurement("b", "x", 1.0, at_least=5.0)]) == 1
    assert exit_code([*passing, measurement("d", "x", 2.0, 1.0, min_ratio=0.5)]) == 1
    assert exit_code([*passing, measurement("b", "x", 1.0, at_least=5.0)], fail_on_miss=False) == 0
    crashed = {"name": "broken", "measured": None, "ratio": None, "target": "error: boom", "passed": False}
    assert exit_code([*passing, crashed], fail_on_miss=False) == 1  # a crash always fails


def test_the_command_exits_non_zero_on_a_miss_and_zero_with_no_fail(fake_package, tmp_path, monkeypatch, capsys):
    from benchmarks import harness
    from deploy import local

    monkeypatch.setattr(harness, "discover", lambda only=(): discover(fake_package, only))
    real_run = harness.run_benchmarks
    monkeypatch.setattr(harness, "run_benchmarks",
                        lambda names, settings: real_run(names, settings, package="fakebench", log=lambda line: None))
    monkeypatch.setattr(local, "up", lambda settings, with_engine: {"kafka": "k:1", "postgres": "postgresql://x/y"})
    monkeypatch.setattr(harness, "delete_topics", lambda settings: None)
    arguments = ["--only", "fast", "--only", "slow", "--results-dir", str(tmp_path)]
    assert run_from_arguments(build_parser().parse_args(arguments)) == 1  # slow thing is short
    assert "2 rows: 1 pass, 1 short, 0 info, 0 broken" in capsys.readouterr().out
    assert run_from_arguments(build_parser().parse_args([*arguments, "--no-fail"])) == 0
    assert run_from_arguments(build_parser().parse_args(["--only", "fast", "--results-dir", str(tmp_path)])) == 0
