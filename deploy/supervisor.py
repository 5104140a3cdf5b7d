"""The supervisor `make up` starts: it runs the engine processes, restarts one that exits after a
growing delay, and writes what it sees to state_dir/supervisor.json for `make status` and /healthz.

Restarts: 1 s after the first exit, then 2, 4, 8 ... up to 30 s while the process keeps exiting
within a minute of its start; a process that stayed up a minute starts over at 1 s. Three such
quick exits in a row make it "crash-looping" until it stays up a minute again; it is still retried.

Home-made on purpose (about 200 lines) rather than supervisord or circus, which were tried
(supervisor 4.3.0 and circus 0.19.0 both install on Python 3.11):
- supervisord restarts a process that crashes after its start-up (a worker dying on a batch) at
  a fixed 1 s pace forever, with growing delays and a final give-up (FATAL) only for exits during
  start-up; a crash-loop count needs an extra event-listener process, and its state is reached over
  XML-RPC, which /healthz would have to speak.
- circus needs pyzmq and tornado plus three ZeroMQ endpoints per stack (TCP ports by default, which
  collide between stacks and tests), and its flapping plugin stops a watcher for good after
  max_retry.
- the stack already keeps pid files and logs per process and stops by recorded pid; this keeps
  that layout, so `make down`, `make status` and a supervisor-less process (docker-compose, tests)
  work the same way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drawdown.settings import Settings

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0
STABLE_AFTER_S = 60.0
CRASH_LOOP_EXITS = 3
POLL_S = 0.2
START_TIMEOUT_S = 60.0


def status_file(settings: Settings) -> Path:
    return settings.state_dir / "supervisor.json"


@dataclass
class Program:
    """A process to keep running: `argv`, ready (for the ordered first start) when `ready()`."""

    name: str
    argv: Sequence[str]
    ready: Callable[[], bool] = lambda: True


@dataclass
class _Child:
    program: Program
    process: subprocess.Popen | None = None
    pid: int | None = None  # of an adopted process (started before this supervisor) too
    started_at: float = 0.0  # monotonic
    next_start_at: float | None = None  # monotonic; set while waiting to restart
    restarts: int = 0
    quick_exits: list[float] = field(default_factory=list)  # wall times of the exits in a row
    last_exit: str | None = None

    def exit_status(self) -> str | None:
        """None while running; else how it ended ("exit 1", "killed by SIGKILL", "gone")."""
        from deploy.local import pid_alive

        if self.process is not None:
            code = self.process.poll()
            if code is None:
                return None
            return f"exit {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
        return None if pid_alive(self.pid) else "gone"  # not our child: no exit code to read


class Supervisor:
    """Runs `programs` in their order, each restarted after an exit; `run(stop)` until stop is set."""

    def __init__(self, settings: Settings, programs: Sequence[Program], *, first_delay_s: float = FIRST_DELAY_S,
                 max_delay_s: float = MAX_DELAY_S, stable_after_s: float = STABLE_AFTER_S) -> None:
        self.settings = settings
        self.children = [_Child(program) for program in programs]
        self.first_delay_s, self.max_delay_s, self.stable_after_s = first_delay_s, max_delay_s, stable_after_s

    def run(self, stop: threading.Event) -> None:
        from deploy.local import say

        try:
            for child in self.children:  # in order, each ready before the next (as `make up` did)
                if not stop.is_set():
                    self._first_start(child, stop)
            while not stop.wait(POLL_S):
                for child in self.children:
                    self._check(child)
                self._write_status()
        finally:
            for child in reversed(self.children):
                self._stop(child)
            status_file(self.settings).unlink(missing_ok=True)
            say("supervisor stopped")

    # --- one child ----------------------------------------------------------------------------

    def _first_start(self, child: _Child, stop: threading.Event) -> None:
        from deploy.local import pid_alive, pid_file, read_pid, say

        adopted = read_pid(pid_file(self.settings, child.program.name))
        if pid_alive(adopted):  # left running by an earlier supervisor or `make up`
            say(f"{child.program.name} runs already (pid {adopted}); supervising it")
            child.pid, child.started_at = adopted, time.monotonic()
            return
        self._start(child)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not stop.wait(POLL_S) and time.monotonic() < deadline:
            if child.exit_status() is not None or child.program.ready():
                break
        self._check(child)
        self._write_status()

    def _start(self, child: _Child) -> None:
        from deploy.local import say, start_process

        child.process = start_process(self.settings, child.program.name, child.program.argv)
        child.pid = child.process.pid
        child.started_at, child.next_start_at = time.monotonic(), None
        say(f"started {child.program.name} (pid {child.pid})")

    def _check(self, child: _Child) -> None:
        from deploy.local import pid_file, say

        now = time.monotonic()
        if child.next_start_at is not None:
            if now >= child.next_start_at:
                child.restarts += 1
                self._start(child)
            return
        ended = child.exit_status()
        if ended is None:
            if child.quick_exits and now - child.started_at >= self.stable_after_s:
                child.quick_exits.clear()  # it stayed up: the crash loop is over
            return
        uptime = now - child.started_at
        if uptime >= self.stable_after_s:
            child.quick_exits.clear()
        child.quick_exits.append(time.time())
        child.last_exit = ended
        delay = min(self.first_delay_s * 2 ** (len(child.quick_exits) - 1), self.max_delay_s)
        child.next_start_at = now + delay
        child.process, child.pid = None, None
        pid_file(self.settings, child.program.name).unlink(missing_ok=True)
        say(f"{child.program.name} ended ({ended}) after {uptime:.1f} s; restarting in {delay:.0f} s"
            + (f" ({len(child.quick_exits)} quick exits in a row)" if len(child.quick_exits) > 1 else ""))

    def _stop(self, child: _Child) -> None:
        from deploy.local import stop_recorded

        stop_recorded(self.settings, child.program.name)
        if child.process is not None:
            child.process.wait()

    # --- what status and /healthz read --------------------------------------------------------

    def _write_status(self) -> None:
        from deploy.local import log_file

        now_wall, now = time.time(), time.monotonic()
        processes = {}
        for child in self.children:
            name = child.program.name
            processes[name] = {
                "pid": child.pid if child.next_start_at is None else None,
                "restarts": child.restarts,
                "quick_exits": len(child.quick_exits),
                "first_quick_exit_at": child.quick_exits[0] if child.quick_exits else None,
                "last_exit": child.last_exit,
                "next_start_in_s": None if child.next_start_at is None else round(max(child.next_start_at - now, 0), 1),
                "log": str(log_file(self.settings, name)),
            }
        path = status_file(self.settings)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"supervisor_pid": os.getpid(), "written_at": now_wall,
                                         "processes": processes}, indent=1))
        os.replace(temporary, path)  # readers never see half a file


def read_status(settings: Settings) -> dict[str, Any] | None:
    """The running supervisor's last status, or None (no supervisor: tests, docker-compose)."""
    from deploy.local import pid_alive

    try:
        status = json.loads(status_file(settings).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return status if pid_alive(status.get("supervisor_pid")) else None


def describe(entry: dict[str, Any]) -> str | None:
    """What is wrong with a supervised process, for a human: None when nothing is."""
    if entry["quick_exits"] >= CRASH_LOOP_EXITS:
        span = time.time() - entry["first_quick_exit_at"]
        return (f"crash-looping: {entry['quick_exits']} restarts in {span:.0f} s, last {entry['last_exit']}, "
                f"see log {entry['log']}")
    if entry["next_start_in_s"] is not None:
        return f"restarting in {entry['next_start_in_s']:.0f} s after {entry['last_exit']}, see log {entry['log']}"
    return None


def crash_loops(settings: Settings) -> list[str]:
    """One reason per crash-looping process of the stack in settings.state_dir (for /healthz)."""
    status = read_status(settings)
    if status is None:
        return []
    return [f"{name} {describe(entry)}" for name, entry in status["processes"].items()
            if entry["quick_exits"] >= CRASH_LOOP_EXITS]


def engine_programs(settings: Settings) -> list[Program]:
    """The engine processes `make up` runs, as supervised programs."""
    import sys

    from deploy.local import engine_processes

    return [Program(process.name, [sys.executable, "-m", "drawdown", *process.command],
                    ready=lambda p=process: p.ready(settings)) for process in engine_processes()]


def run_supervisor(settings: Settings, only: Sequence[str] = ()) -> int:
    """`drawdown supervise`: the foreground supervisor of the engine (make up runs it in the background)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    programs = [program for program in engine_programs(settings) if not only or program.name in only]
    Supervisor(settings, programs).run(stop)
    return 0
