"""What a person sees: library INFO chatter off the console (on with -v), everything in the log
file, and progress as a tqdm bar on a terminal, as log lines otherwise."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import select
import struct
import sys
import termios
from datetime import datetime, timezone
from pathlib import Path

import pytest

from microparade import console
from microparade.compute.progress import Progress
from microparade.entry import run_log_path
from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT

#: INFO lines of the Dask scheduler and nannies a local cluster prints when it starts.
DASK_CHATTER = ("Start Nanny at", "Register worker", "Scheduler at")


def _tiny_run(run_dir: Path, *options: str) -> str:
    """stderr + stdout of ``microparade [options] run`` of generate + ingest (a local Dask cluster) on 3,000 rows."""
    overrides = [f"run_dir={run_dir}", "data.generate.rows=3000"]
    proc = run_cli(*options, "run", ROOT / "configs/demo.yaml", *overrides, "--until", "ingest")
    return proc.stderr + proc.stdout


def test_dask_info_is_quiet_on_the_console_shown_with_v_and_kept_in_the_log_file(tmp_path):
    err = _tiny_run(tmp_path / "quiet")
    assert "[ingest] done in" in err and "cluster: local, 2 worker(s)" in err
    assert not [c for c in DASK_CHATTER if c in err], err
    logs = list((tmp_path / "quiet" / "_logs").glob("*.log"))
    assert len(logs) == 1, logs
    kept = logs[0].read_text()
    assert all(c in kept for c in DASK_CHATTER), kept
    assert f"log file: {logs[0]}" in kept and "DEBUG   microparade: command: " in kept
    assert err.strip().splitlines()[-1].endswith(f"; log {logs[0]})"), "the run's last line names its log file"

    log_file = tmp_path / "elsewhere" / "run.log"
    err = _tiny_run(tmp_path / "verbose", "-v", "--log-file", str(log_file))
    assert all(c in err for c in DASK_CHATTER), err
    assert "Start worker at" in err  # the worker processes' own INFO lines
    assert all(c in log_file.read_text() for c in DASK_CHATTER)
    assert not (tmp_path / "verbose" / "_logs").exists()


def test_run_log_path_is_under_the_local_run_dir_only():
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    path = run_log_path("/data/runs/r1", now)
    assert path is not None and path.startswith("/data/runs/r1/_logs/20260102T030405Z-")
    assert path.endswith(f"-{os.getpid()}.log")
    assert run_log_path("file:///data/r1", now).startswith("/data/r1/_logs/")  # type: ignore[union-attr]
    assert run_log_path("gs://bucket/r1", now) is None


def _record(name: str, level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_console_filter(monkeypatch):
    monkeypatch.setattr(console.SETTINGS, "verbose", False)
    shown = console.ConsoleFilter().filter
    assert shown(_record("microparade", logging.INFO, "[ingest] done"))
    assert not shown(_record("microparade", logging.DEBUG, "detail"))
    assert not shown(_record("distributed.nanny", logging.INFO, "        Start Nanny at: %r"))
    assert shown(_record("distributed.worker", logging.WARNING, "Worker is at 85% memory usage"))
    routine = _record("distributed.shuffle._scheduler_plugin", logging.WARNING, "Shuffle %s initialized by task %r")
    assert not shown(routine)
    with console.detail():  # a detail line: log file only, unless it is a warning
        assert not shown(_record("microparade", logging.INFO, "[train] checkpoint"))
        assert shown(_record("microparade", logging.WARNING, "[train] disk almost full"))
    monkeypatch.setattr(console.SETTINGS, "verbose", True)
    assert shown(routine) and shown(_record("microparade", logging.DEBUG, "detail"))
    with console.detail():
        assert shown(_record("microparade", logging.INFO, "[train] checkpoint"))


def _count(progress: Progress, n: int) -> None:
    with progress:
        for _ in range(n):
            progress.add(amount=10)
            logging.getLogger("microparade.test").warning("a line between updates")


def test_progress_draws_a_bar_on_a_terminal(monkeypatch):
    monkeypatch.setattr(console.SETTINGS, "verbose", False)
    monkeypatch.setattr(console.SETTINGS, "bars", True)
    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    with os.fdopen(sub, "w") as tty:
        monkeypatch.setattr(sys, "stderr", tty)
        lines: list[str] = []
        _count(Progress("demo", 4, lines.append, every_s=0.0, unit="points"), 4)
        tty.flush()
        drawn = b""
        while select.select([main], [], [], 0.2)[0]:
            drawn += os.read(main, 65536)
    os.close(main)
    text = drawn.decode()
    assert "demo:" in text and "4/4" in text and "\r" in text, text  # tqdm's bar
    # log lines are printed above the bar, each on its own line
    assert any(row.split("\r")[-1].endswith("a line between updates") for row in text.splitlines()), text
    assert len(lines) == 1 and lines[0].startswith("demo: 4/4, 40 points, "), lines


@pytest.mark.parametrize("tty, verbose, bars", [(False, False, True), (True, True, True), (True, False, False)])
def test_progress_logs_lines_without_a_terminal_or_with_v_or_no_progress(monkeypatch, tty, verbose, bars):
    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    monkeypatch.setattr(console.SETTINGS, "verbose", verbose)
    monkeypatch.setattr(console.SETTINGS, "bars", bars)
    stream = Stream()
    monkeypatch.setattr(sys, "stderr", stream)
    lines: list[str] = []
    _count(Progress("demo", 3, lines.append, every_s=0.0), 3)
    assert "|" not in stream.getvalue()  # no bar drawn
    assert [line.split(", ")[0] for line in lines] == ["demo: 1/3", "demo: 2/3", "demo: 3/3"]
