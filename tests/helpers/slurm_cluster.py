"""Helpers for tests that run against the real single-host Slurm of ``tests/slurm/start.sh``.

This is a plain module, not a conftest: ``tests/conftest.py`` decides how to expose it (for
example a session fixture that calls :func:`ensure_slurm`). Tests that use it carry
``@pytest.mark.slurm``.

- :func:`ensure_slurm` starts (or reuses) the cluster once per process and points ``SLURM_CONF``
  at it. When it cannot, the test is skipped -- unless ``CI`` is set or
  ``MICROPARADE_REQUIRE_SLURM=1``, where it raises :class:`SlurmUnavailable` so that the run fails.
- :func:`sbatch` submits, :func:`sacct_states` reads accounting, :func:`wait_jobs` waits for
  terminal states (accounting lags the scheduler by up to about a second).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from tests.helpers.paths import TESTS_DIR

START_SCRIPT = TESTS_DIR / "slurm" / "start.sh"
PARTITION = "debug"
NODES = ("node1", "node2")

#: Job states after which Slurm will not run the job again (REQUEUED, PENDING, RUNNING,
#: SUSPENDED, ... are not terminal).
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    }
)

# A cold start installs the Debian packages (about 20 s; longer when apt must update its lists).
_START_TIMEOUT_S = 900
_COMMAND_TIMEOUT_S = 60

_cluster: dict | None = None
_failure: str | None = None


class SlurmUnavailable(RuntimeError):
    """The local Slurm could not be started where it is required (CI, MICROPARADE_REQUIRE_SLURM=1)."""


def _required() -> bool:
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get("MICROPARADE_REQUIRE_SLURM") == "1"


def _start() -> tuple[dict | None, str | None]:
    """Run start.sh; return (cluster info, None) or (None, failure text)."""
    try:
        proc = subprocess.run(
            ["bash", str(START_SCRIPT)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        output = "".join(
            part.decode(errors="replace") if isinstance(part, bytes) else part
            for part in (exc.stdout or "", exc.stderr or "")
        )
        return None, f"{START_SCRIPT} did not finish within {_START_TIMEOUT_S} s:\n{output}"
    except OSError as exc:
        return None, f"cannot run {START_SCRIPT}: {exc}"
    output = (proc.stdout + proc.stderr).strip()
    conf = next(
        (
            line.removeprefix("export SLURM_CONF=").strip()
            for line in proc.stdout.splitlines()
            if line.startswith("export SLURM_CONF=")
        ),
        None,
    )
    if proc.returncode != 0 or not conf:
        return None, f"{START_SCRIPT} failed (exit {proc.returncode}):\n{output}"
    return {
        "slurm_conf": conf,
        "dir": str(Path(conf).parent.parent),
        "partition": PARTITION,
        "nodes": list(NODES),
    }, None


def ensure_slurm() -> dict:
    """Start or reuse the local Slurm (once per process) and set ``os.environ["SLURM_CONF"]``.

    Returns ``{"slurm_conf": path, "dir": path, "partition": "debug", "nodes": ["node1",
    "node2"]}``. If the cluster cannot be started, skips the calling test with the reason, or
    raises :class:`SlurmUnavailable` with start.sh's whole output when ``CI`` is set or
    ``MICROPARADE_REQUIRE_SLURM=1``.
    """
    global _cluster, _failure
    if _cluster is None and _failure is None:
        _cluster, _failure = _start()
    if _failure is not None:
        if _required():
            raise SlurmUnavailable(_failure)
        lines = [line for line in _failure.splitlines() if line.strip()]
        errors = [line for line in lines if "ERROR" in line]
        pytest.skip(f"local Slurm unavailable: {(errors or lines or ['no output'])[-1].strip()}")
    assert _cluster is not None
    os.environ["SLURM_CONF"] = _cluster["slurm_conf"]
    return dict(_cluster, nodes=list(_cluster["nodes"]))


def _run(cmd: list[str], env: Mapping[str, str] | None = None) -> str:
    proc = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=_COMMAND_TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def sbatch(args: list[str], env: dict | None = None) -> str:
    """Run ``sbatch --parsable *args`` and return the job id.

    ``env`` adds to (overrides) ``os.environ`` for sbatch; with sbatch's default ``--export=ALL``
    the job sees the same variables. Raises RuntimeError with sbatch's stderr on failure.
    """
    full_env = {**os.environ, **(env or {})}
    out = _run(["sbatch", "--parsable", *args], env=full_env).strip()
    job_id = out.split(";", 1)[0]  # "<id>" or "<id>;<cluster>"
    if not job_id.isdigit():
        raise RuntimeError(f"sbatch {args}: unexpected output {out!r}")
    return job_id


def sacct_states(job_ids: Iterable[str | int]) -> dict[str, str]:
    """Accounting state of each job (main job lines only, no steps): ``{job id: state}``.

    States are normalised to their first word ("CANCELLED by 0" -> "CANCELLED"). Jobs not yet in
    accounting are absent. For an array or heterogeneous job the keys are as sacct prints them
    ("123_4", "123+0"). Raises RuntimeError when sacct fails.
    """
    ids = [str(job_id) for job_id in job_ids]
    if not ids:
        return {}
    out = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State"])
    states: dict[str, str] = {}
    for line in out.splitlines():
        job_id, sep, state = line.partition("|")
        if sep and state.strip():
            states[job_id.strip()] = state.split()[0]
    return states


def _squeue() -> str:
    try:
        return _run(["squeue", "-o", "%.10i %.12j %.9T %.10M %.20R"])
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"(squeue failed: {exc})"


def wait_jobs(job_ids: Iterable[str | int], timeout: float = 120.0, poll: float = 1.0) -> dict[str, str]:
    """Wait until every job has a terminal state in accounting; return ``{job id: state}``.

    A job missing from sacct counts as pending (accounting lags), and so do REQUEUED, PENDING,
    RUNNING, ... On timeout raises TimeoutError naming the unfinished jobs, with squeue's output.
    """
    ids = [str(job_id) for job_id in job_ids]
    deadline = time.monotonic() + timeout
    while True:
        try:
            states, sacct_error = sacct_states(ids), ""
        except (RuntimeError, subprocess.TimeoutExpired) as exc:  # slurmdbd busy: retry
            states, sacct_error = {}, f"\nlast sacct error: {exc}"
        unfinished = [job_id for job_id in ids if states.get(job_id) not in TERMINAL_STATES]
        if not unfinished:
            return {job_id: states[job_id] for job_id in ids}
        if time.monotonic() >= deadline:
            detail = ", ".join(f"{job_id}: {states.get(job_id, 'not in sacct yet')}" for job_id in unfinished)
            raise TimeoutError(
                f"Slurm jobs not finished after {timeout:.0f} s ({detail}){sacct_error}\nsqueue:\n{_squeue()}"
            )
        time.sleep(poll)


def jobqueue_overrides(log_dir: Path | str) -> list[str]:
    """``cluster.kind=jobqueue`` sized for the emulated nodes: two one-core worker jobs of this
    interpreter, reaching the scheduler on loopback, logs in ``log_dir``."""
    return [
        "cluster.kind=jobqueue",
        "cluster.jobqueue.jobs=2",
        "cluster.jobqueue.cores=1",
        "cluster.jobqueue.memory=1GiB",
        "cluster.jobqueue.walltime=00:15:00",
        "cluster.jobqueue.scheduler_host=127.0.0.1",
        f"cluster.jobqueue.python={sys.executable}",
        f"cluster.jobqueue.log_directory={log_dir}",
        "cluster.min_workers=2",
    ]
