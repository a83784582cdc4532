"""Process entry points shared by the CLI, ``jobs/<stage>.py`` and submitit jobs: logging set-up,
the exception → exit code mapping (one place), and running one stage alone.

    python jobs/ingest.py CONFIG [key=value ...] [--force]

is equivalent to ``microparade run CONFIG --only ingest``; it exits 124 when the stage stopped on a
preemption signal after checkpointing (the sbatch scripts requeue on that code).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

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

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_PREEMPTED",
    "EXIT_USAGE",
    "add_config_args",
    "exit_code_for",
    "guarded",
    "load_args_config",
    "run_one",
    "setup_logging",
    "stage_main",
]


def setup_logging(verbose: bool = False) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("microparade").setLevel(logging.DEBUG if verbose else logging.INFO)


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
    setup_logging()
    return run_one(stage, args.config, args.overrides, args.force)
