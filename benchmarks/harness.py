"""The benchmark harness: discover benchmarks/*_bench.py, run them, print one table, keep JSON.

A benchmark module exposes `run(settings) -> list[dict]` (or `run()` when it needs no services);
each row has name, unit, measured, ceiling, ratio, target (text) and passed (bool). The ceiling is
measured in the same run, side by side with the measurement (the machine is shared and noisy, so
a remembered number would mean nothing). The harness brings up Kafka and PostgreSQL (not the
engine), gives the run its own topic prefix, and deletes that run's topics at the end.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import platform
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
ROW_KEYS = ("name", "unit", "measured", "ceiling", "ratio", "target", "passed")
SUFFIX = "_bench"


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
    return {"name": name, "unit": "", "measured": None, "ceiling": None, "ratio": None,
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
    """One plain-text table: name, measured, ceiling, ratio, target, pass/short."""
    header = ("benchmark", "measured", "ceiling (same run)", "ratio", "target", "result")
    lines = [header]
    for row in rows:
        unit = row.get("unit") or ""
        ratio = row.get("ratio")
        lines.append((
            str(row.get("name")),
            _number(row.get("measured"), unit),
            _number(row.get("ceiling"), unit),
            "-" if ratio is None else f"{ratio:.2f}",
            str(row.get("target") or ""),
            "pass" if row.get("passed") else "short",
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
        "passed": all(row.get("passed") for row in rows),
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


def run_from_arguments(args: argparse.Namespace) -> int:
    """Bring up services, run the benchmarks, print the table, write the JSON. Exit code 1 when a
    benchmark crashed (a benchmark that runs but falls short of its target still exits 0)."""
    from deploy import local

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
    print(f"\nresults: {stamped} (and {latest.name})")
    crashed = any(row.get("measured") is None for row in rows)
    return 1 if crashed else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_from_arguments(build_parser().parse_args(argv))
