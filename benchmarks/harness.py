"""The benchmark harness: discover benchmarks/*_bench.py, run them, print one table, keep JSON.

A benchmark module exposes `run(settings) -> list[dict]` (or `run()` when it needs no services)
and builds each row with `measurement()`: name, unit, measured, ceiling, ratio, rounds, target
(text) and passed. The ceiling is measured in the same run, side by side with the measurement
(the machine is shared and noisy, so a remembered number would mean nothing). The harness brings
up Kafka and PostgreSQL (not the engine; KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL name running
ones), gives the run its own topic prefix, and deletes that run's topics at the end.

The rules, so that no row can flatter:
- a row either has a target that can fail (passed is True or False) or is informational
  (passed is None; the table says "info", never "pass");
- the ratio is the fraction of the ceiling reached (measured / ceiling; ceiling / measured for
  latencies): above BROKEN_CEILING_RATIO the ceiling is not one, and the row is a failure
  ("broken ceiling") whatever its target says;
- several rounds are summarised by their median (the best round is the luckiest, not the truth);
- the run exits non-zero when any row is short or broken (--no-fail turns that off).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drawdown.settings import PROJECT_ROOT, Settings, get_settings
from streams.topics import delete_topics

BENCHMARKS_DIR = Path(__file__).resolve().parent
BENCH_RESULTS_DIR = PROJECT_ROOT / ".bench"
ROW_KEYS = ("name", "unit", "measured", "ceiling", "ratio", "rounds", "target", "passed")
SUFFIX = "_bench"
# A measurement more than 5% above its ceiling means the ceiling did less (or other) work: the
# comparison is broken, not passed. (5%: the noise two equal loops show on a shared machine.)
BROKEN_CEILING_RATIO = 1.05
PASS, SHORT, INFO, BROKEN = "pass", "short", "info", "broken ceiling"
# `--quick`: benchmarks run with less data and fewer rounds (to prove they run, not to measure).
QUICK_ENVIRONMENT_VARIABLE = "DRAWDOWN_BENCH_QUICK"


def quick() -> bool:
    """True when the run was asked to be short (`--quick`)."""
    return os.environ.get(QUICK_ENVIRONMENT_VARIABLE, "") not in ("", "0")


def median_of_rounds(values: float | Sequence[float]) -> tuple[float, int]:
    """The median of the rounds' values and how many rounds there were (one number: one round)."""
    if isinstance(values, (int, float)):
        return float(values), 1
    if not values:
        raise ValueError("no rounds measured")
    return float(statistics.median(values)), len(values)


def measurement(name: str, unit: str, measured: float | Sequence[float], ceiling: float | Sequence[float] | None = None,
                *, at_least: float | None = None, below: float | None = None, min_ratio: float | None = None,
                lower_is_better: bool = False, also_ok: bool = True, also: str = "",
                info: str | None = None) -> dict[str, Any]:
    """One row. `measured` and `ceiling` are a number or one number per round (the median is kept).

    A target row names at least one of `at_least` / `below` (the measured median) and `min_ratio`
    (of the ceiling); `also_ok` is any further condition, described by `also` (e.g. no errors).
    An informational row names none and says why in `info`.
    """
    measured_median, rounds = median_of_rounds(measured)
    ceiling_median = None if ceiling is None else median_of_rounds(ceiling)[0]
    ratio = None
    if ceiling_median and measured_median:
        ratio = ceiling_median / measured_median if lower_is_better else measured_median / ceiling_median
    has_target = at_least is not None or below is not None or min_ratio is not None
    if has_target == (info is not None):
        raise ValueError(f"{name}: a row has either a target or an info note, not {'both' if has_target else 'neither'}")
    if min_ratio is not None and ceiling is None:
        raise ValueError(f"{name}: a ratio target needs a ceiling")
    if not has_target:
        return {"name": name, "unit": unit, "measured": measured_median, "ceiling": ceiling_median, "ratio": ratio,
                "rounds": rounds, "target": f"info: {info}", "passed": None}
    conditions, passed = [], also_ok
    if at_least is not None:
        conditions.append(f">= {_number(at_least, unit)}")
        passed = passed and measured_median >= at_least
    if below is not None:
        conditions.append(f"< {_number(below, unit)}")
        passed = passed and measured_median < below
    if min_ratio is not None:
        conditions.append(f">= {min_ratio:g} of ceiling")
        passed = passed and ratio is not None and ratio >= min_ratio
    if also:
        conditions.append(also)
    return {"name": name, "unit": unit, "measured": measured_median, "ceiling": ceiling_median, "ratio": ratio,
            "rounds": rounds, "target": " and ".join(conditions), "passed": bool(passed)}


def verdict(row: dict) -> str:
    """pass, short, info or broken ceiling: a ratio above BROKEN_CEILING_RATIO breaks any row, an
    info row never passes, and a target row passes only when its `passed` is exactly True."""
    ratio = row.get("ratio")
    if ratio is not None and ratio > BROKEN_CEILING_RATIO:
        return BROKEN
    if row.get("passed") is None and str(row.get("target") or "").startswith("info"):
        return INFO
    return PASS if row.get("passed") is True else SHORT


def summary(rows: Sequence[dict]) -> str:
    """One line: N rows: X pass, Y short, Z info, W broken."""
    verdicts = [verdict(row) for row in rows]
    return (f"{len(rows)} rows: {verdicts.count(PASS)} pass, {verdicts.count(SHORT)} short, "
            f"{verdicts.count(INFO)} info, {verdicts.count(BROKEN)} broken")


def exit_code(rows: Sequence[dict], fail_on_miss: bool = True) -> int:
    """1 when a benchmark crashed, or (unless fail_on_miss is off) a row is short or broken; else 0."""
    crashed = any(row.get("measured") is None for row in rows)
    missed = any(verdict(row) in (SHORT, BROKEN) for row in rows)
    return 1 if crashed or (fail_on_miss and missed) else 0


def discover(directory: Path = BENCHMARKS_DIR, only: Iterable[str] = ()) -> list[str]:
    """Short names of the benchmark modules in `directory` (`codec` for codec_bench.py), sorted;
    restricted to `only` when given (either form of the name is accepted)."""
    names = sorted(path.stem[: -len(SUFFIX)] for path in directory.glob(f"*{SUFFIX}.py"))
    wanted = {name.removesuffix(SUFFIX) for name in only}
    unknown = wanted - set(names)
    if unknown:
        raise SystemExit(f"no benchmark named {', '.join(sorted(unknown))}; there are: {', '.join(names)}")
    return [name for name in names if not wanted or name in wanted]


def run_module(run: Callable[..., list[dict]], settings: Settings) -> list[dict]:
    """Call a benchmark's run(), with the settings when it takes an argument."""
    takes_settings = bool(inspect.signature(run).parameters)
    return run(settings) if takes_settings else run()


def failed_row(name: str, error: BaseException) -> dict:
    """The row of a benchmark that crashed: it counts as short, with the error as its target."""
    return {"name": name, "unit": "", "measured": None, "ceiling": None, "ratio": None, "rounds": 0,
            "target": f"error: {type(error).__name__}: {error}"[:200], "passed": False}


def run_benchmarks(names: Sequence[str], settings: Settings, package: str = "benchmarks",
                   log: Callable[[str], None] = print) -> list[dict]:
    """Run each named benchmark in turn and collect its rows (a crash becomes a failed row)."""
    rows: list[dict] = []
    for name in names:
        log(f"[bench] {name} ...")
        started_s = time.monotonic()
        try:
            module = importlib.import_module(f"{package}.{name}{SUFFIX}")
            module_rows = run_module(module.run, settings)
            rows.extend({key: row.get(key) for key in ROW_KEYS} for row in module_rows)
        except Exception as error:  # one broken benchmark must not hide the others' results
            traceback.print_exc(file=sys.stderr)
            rows.append(failed_row(name, error))
        log(f"[bench] {name} done in {time.monotonic() - started_s:.1f} s")
    return rows


def _number(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) < 10:
        text = f"{value:.3g}"
    elif isinstance(value, (int, float)):
        text = f"{value:,.0f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def format_table(rows: Sequence[dict]) -> str:
    """One plain-text table: name, measured, ceiling, ratio, rounds, target, verdict."""
    header = ("benchmark", "measured", "ceiling (same run)", "ratio", "rounds", "target", "result")
    lines = [header]
    for row in rows:
        unit = row.get("unit") or ""
        ratio = row.get("ratio")
        lines.append((
            str(row.get("name")),
            _number(row.get("measured"), unit),
            _number(row.get("ceiling"), unit),
            "-" if ratio is None else f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}",  # 0.003, not 0.00
            str(row.get("rounds") or "-"),
            str(row.get("target") or ""),
            verdict(row),
        ))
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    rendered = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                for line in lines]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(rendered)


def write_results(rows: Sequence[dict], directory: Path, started_at: datetime,
                  topic_prefix: str) -> tuple[Path, Path]:
    """Write the rows as JSON to a timestamped file and to latest.json in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    document = {
        "started_at": started_at.isoformat(),
        "host": platform.node(),
        "python": platform.python_version(),
        "topic_prefix": topic_prefix,
        "passed": exit_code(rows) == 0,
        "summary": summary(rows),
        "results": [dict(row) for row in rows],
    }
    text = json.dumps(document, indent=2, default=str) + "\n"
    stamped = directory / f"bench-{started_at.strftime('%Y%m%dT%H%M%SZ')}.json"
    latest = directory / "latest.json"
    stamped.write_text(text)
    latest.write_text(text)
    return stamped, latest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this benchmark (e.g. producer); repeat for several")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete this run's topics")
    parser.add_argument("--results-dir", type=Path, default=BENCH_RESULTS_DIR, help="where the JSON goes")
    parser.add_argument("--no-fail", action="store_true",
                        help="exit 0 even when a target is missed or a ceiling is broken (a crash still exits 1)")
    parser.add_argument("--quick", action="store_true",
                        help="less data and fewer rounds: proves the benchmarks run, measures little")


def run_from_arguments(args: argparse.Namespace) -> int:
    """Bring up services, run the benchmarks, print the table and summary, write the JSON. Exit
    code 1 when a benchmark crashed, a target was missed or a ceiling broken (see exit_code)."""
    from deploy import local

    if args.quick:
        os.environ[QUICK_ENVIRONMENT_VARIABLE] = "1"
    names = discover(only=args.only)
    started_at = datetime.now(UTC)
    base = get_settings()
    settings = base.model_copy(update={"topic_prefix": f"bench-{started_at.strftime('%Y%m%d%H%M%S')}"})
    services = local.up(settings, with_engine=False)
    settings = settings.model_copy(update={"kafka_bootstrap_servers": services["kafka"],
                                           "database_url": services["postgres"]})
    try:
        rows = run_benchmarks(names, settings)
    finally:
        if not args.keep_topics:
            delete_topics(settings)
    print()
    print(format_table(rows))
    stamped, latest = write_results(rows, args.results_dir, started_at, settings.topic_prefix)
    print(f"\n{summary(rows)}{' (--quick: less data, fewer rounds)' if args.quick else ''}")
    print(f"results: {stamped} (and {latest.name})")
    return exit_code(rows, fail_on_miss=not args.no_fail)


def main(argv: Sequence[str] | None = None) -> int:
    return run_from_arguments(build_parser().parse_args(argv))
