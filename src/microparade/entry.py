"""Process entry points shared by the CLI, ``jobs/<stage>.py`` and submitit jobs: logging set-up,
the exception → exit code mapping (one place), and running one stage alone.

    python jobs/ingest.py CONFIG [key=value ...] [--force]

is equivalent to ``microparade run CONFIG --only ingest``; it exits 124 when the stage stopped on a
preemption signal after checkpointing (the sbatch scripts requeue on that code).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable
from datetime import datetime, timezone

from . import console
from .config import Config, load_config
from .errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PREEMPTED,
    EXIT_USAGE,
    BackendError,
    ConfigError,
    LaunchError,
    PreemptedError,
    StageError,
)
from .storage import protocol_of

#: The folder of a run's log files, under ``run_dir``.
LOGS_DIR = "_logs"

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_PREEMPTED",
    "EXIT_USAGE",
    "add_config_args",
    "exit_code_for",
    "guarded",
    "load_args_config",
    "run_log_path",
    "run_one",
    "setup_process",
    "stage_main",
    "start_run_log",
]


#: Environment defaults of every entry point's process, unless the environment sets them already.
#: ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads (torch's intra-op pool, scikit-learn's) sleep while
#: they wait instead of spinning, which on a shared node keeps most of the throughput instead of a
#: small fraction (docs/training.md, "CPU threads on shared nodes"). Read when torch loads, so set
#: before any stage imports it.
PROCESS_ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def setup_process(verbose: bool = False, log_file: str | None = None, progress: bool = True) -> None:
    """Set up an entry point's process (``microparade``, ``jobs/*.py``, submitit jobs): the
    environment defaults of :data:`PROCESS_ENV_DEFAULTS`, console logging (microparade INFO, library
    WARNING+; everything with ``verbose``), progress bars on a terminal unless ``progress`` is false,
    and ``log_file`` when given (README, "Console, log files, progress")."""
    for key, value in PROCESS_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    console.configure(verbose=verbose, bars=progress, log_file=log_file)
    if log_file is not None:
        _log_start(log_file)


def run_log_path(run_dir: str, now: datetime | None = None) -> str | None:
    """The default log file of a ``run``: ``{run_dir}/_logs/<UTC time>-<host>-<pid>.log`` for a
    local ``run_dir``; None for a URL (object stores get no log file unless ``--log-file`` asks)."""
    if protocol_of(run_dir) != "file":
        return None
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return os.path.join(run_dir.removeprefix("file://"), LOGS_DIR, f"{stamp}-{socket.gethostname()}-{os.getpid()}.log")


def start_run_log(cfg: Config, log_file: str | None) -> str | None:
    """Write this ``run`` to its default log file (:func:`run_log_path`) unless ``--log-file`` chose
    one; returns the run's log file, if any (``run`` names it in its last line)."""
    path = None if log_file is not None else run_log_path(cfg.run_dir)
    if path is None:
        return log_file
    console.add_log_file(path)
    _log_start(path)
    return path


def _log_start(path: str) -> None:
    # In the file only: the console's first line stays the run's own (an error is one line).
    with console.detail():
        logging.getLogger("microparade").info("log file: %s", path)
    logging.getLogger("microparade").debug("command: %s", " ".join(sys.argv))


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. history.size=10")


def load_args_config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def exit_code_for(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and one-line message for an expected error; None for a bug (let it raise)."""
    if isinstance(exc, PreemptedError):
        return EXIT_PREEMPTED, str(exc)
    if isinstance(exc, (StageError, LaunchError)):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, (ConfigError, BackendError)):  # bad config, or an extra this Python lacks
        return EXIT_USAGE, str(exc)
    if isinstance(exc, (KeyError, ValueError, FileNotFoundError)):
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        return EXIT_USAGE, f"error: {msg}"
    return None


def guarded(fn: Callable[[], int], prefix: str = "") -> int:
    """Run ``fn``; an expected error becomes its exit code and a one-line message on stderr."""
    try:
        return fn()
    except Exception as exc:
        mapped = exit_code_for(exc)
        if mapped is None:
            raise
        code, msg = mapped
        print(f"microparade: {prefix}{msg}", file=sys.stderr)
        return code


def run_one(stage: str, config: str, overrides: list[str], force: bool = False) -> int:
    """Run one stage alone (its inputs must be done); returns the process exit code."""
    from .engine.runner import run_pipeline

    def go() -> int:
        cfg = load_config(config, overrides)
        outcome = run_pipeline(cfg, only=stage, force=force)
        print(f"microparade: {stage} {outcome.get(stage, 'not run')}")
        return EXIT_OK

    return guarded(go)


def stage_main(stage: str, argv: list[str] | None = None) -> int:
    """``jobs/<stage>.py``: parse ``CONFIG [key=value ...] [--force]`` and run the stage."""
    ap = argparse.ArgumentParser(prog=f"jobs/{stage}.py", description=f"Run the {stage} stage alone.")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    ap.add_argument("--force", action="store_true", help="rerun even if the stage is done")
    args, rest = ap.parse_known_args(argv)
    bad = [r for r in rest if r.startswith("-") or "=" not in r]
    if bad:
        ap.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = list(args.overrides) + rest
    setup_process()
    return run_one(stage, args.config, args.overrides, args.force)
