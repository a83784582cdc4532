"""Errors that cross package boundaries, and the process exit code each one means.

A leaf module: everything may import it, it imports nothing of microparade. The mapping from an
exception to an exit code lives in :func:`microparade.entry.exit_code_for`.
"""

from __future__ import annotations

#: Exit codes of every microparade process (CLI, ``jobs/<stage>.py``, submitit jobs).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PREEMPTED = 124


class StageError(RuntimeError):
    """A stage failed; the message says which and why."""


class PreemptedError(RuntimeError):
    """A stage stopped early on a signal after saving its state; rerun to resume."""

    exit_code = EXIT_PREEMPTED


class BackendError(RuntimeError):
    """The requested backend cannot run here (missing hardware, not in this version, bad env)."""


class ConfigError(ValueError):
    """A configuration problem; the message lists every problem found, one per line."""


class LaunchError(RuntimeError):
    """A launcher cannot submit here (no Slurm, or a config it cannot launch); exit code 1."""
