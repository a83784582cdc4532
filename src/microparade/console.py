"""What a person sees on stderr, and what the log file keeps.

- Console: microparade's INFO lines and WARNING+ from libraries (Dask, fsspec, torch, ...); library
  INFO chatter (``Start Nanny at``, ``Register worker``, ...) and routine library warnings are left
  out. ``-v`` shows everything: library INFO and microparade DEBUG.
- Log file (``--log-file PATH``; by default ``{run_dir}/_logs/…`` for ``run``): microparade DEBUG and
  library INFO, whatever ``-v`` says.
- Details: microparade INFO lines logged inside :func:`detail` (a quick loop's progress line, a
  routine checkpoint) go to the log file, and to the console only with ``-v``.
- Progress: a tqdm bar on a terminal, periodic log lines otherwise (Slurm logs, pipes);
  :func:`progress_bars` is the one decision, :func:`progress_bar` the one way to draw a bar.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm

#: Console line format (the log file's adds the date, the level name and the logger).
CONSOLE_FORMAT = "%(asctime)s %(levelname).1s %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

#: Library warnings that report routine work, not problems: shown like library INFO (``-v``, log file).
ROUTINE_WARNINGS: dict[str, tuple[str, ...]] = {
    "distributed.shuffle._scheduler_plugin": ("Shuffle %s initialized by task", "Shuffle %s deactivated due to"),
}


@dataclass
class ConsoleSettings:
    """``verbose``: ``-v`` (everything on the console, no bars); ``bars``: not ``--no-progress``."""

    verbose: bool = False
    bars: bool = True


#: This process's settings (set by :func:`configure`).
SETTINGS = ConsoleSettings()


#: True while the lines being logged are details (:func:`detail`).
_DETAIL: ContextVar[bool] = ContextVar("microparade_console_detail", default=False)


@contextmanager
def detail() -> Iterator[None]:
    """microparade INFO lines logged in this block are details: in the log file, on the console
    only with ``-v`` (warnings and errors show as usual)."""
    token = _DETAIL.set(True)
    try:
        yield
    finally:
        _DETAIL.reset(token)


def _ours(name: str) -> bool:
    return name == "microparade" or name.startswith("microparade.")


class ConsoleFilter(logging.Filter):
    """Lets through what the console shows (everything when verbose)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if SETTINGS.verbose:
            return True
        if _ours(record.name):
            return record.levelno >= (logging.WARNING if _DETAIL.get() else logging.INFO)
        if record.levelno < logging.WARNING:
            return False
        routine = ROUTINE_WARNINGS.get(record.name, ())
        return record.levelno > logging.WARNING or not str(record.msg).startswith(routine)


class ConsoleHandler(logging.StreamHandler[IO[str]]):
    """The stderr handler :func:`configure` installs (at most one per process)."""


def configure(verbose: bool = False, bars: bool = True, log_file: str | None = None) -> None:
    """Set the console up (once: a process whose root logger already has handlers keeps them) and
    add ``log_file`` when given; callable again, e.g. to add a file later."""
    SETTINGS.verbose, SETTINGS.bars = verbose, bars
    root = logging.getLogger()
    if not root.handlers:
        handler = ConsoleHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(CONSOLE_FORMAT, "%H:%M:%S"))
        handler.addFilter(ConsoleFilter())
        root.addHandler(handler)
    if log_file is not None:
        add_log_file(log_file)
    _set_levels()


def add_log_file(path: str) -> None:
    """Also write microparade DEBUG and library INFO lines to ``path`` (appended to; its folder is made)."""
    root = logging.getLogger()
    full = os.path.abspath(path)
    if any(isinstance(h, logging.FileHandler) and h.baseFilename == full for h in root.handlers):
        return
    os.makedirs(os.path.dirname(full), exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    root.addHandler(handler)
    _set_levels()


def _set_levels() -> None:
    """Loggers as verbose as the most verbose handler needs (records nobody shows are not made)."""
    root = logging.getLogger()
    keep_all = SETTINGS.verbose or any(isinstance(h, logging.FileHandler) for h in root.handlers)
    root.setLevel(logging.INFO if keep_all else logging.WARNING)
    logging.getLogger("microparade").setLevel(logging.DEBUG if keep_all else logging.INFO)


def progress_bars(stream: IO[str] | None = None) -> bool:
    """Whether progress shows as a bar (``stream``, default stderr, is a terminal and neither ``-v``
    nor ``--no-progress`` was given) rather than as periodic log lines."""
    stream = sys.stderr if stream is None else stream
    return SETTINGS.bars and not SETTINGS.verbose and stream.isatty()


@contextmanager
def progress_bar(total: int, desc: str, unit: str = "it", initial: int = 0) -> Iterator[tqdm | None]:
    """A tqdm bar on stderr while the block runs, console log lines printed above it; None when
    :func:`progress_bars` says no (the caller logs lines instead)."""
    if not progress_bars():
        yield None
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
    try:
        with logging_redirect_tqdm():
            yield bar
    finally:
        bar.close()
