"""``microparade sweep run``: a sweep on this machine.

First the shared units that are not done, one after another in pipeline order (each is the data
stage of one identity, computed once into its own root); then the runs whose model stages are not
done, one at a time in this process, or ``local.parallel`` at a time as child processes, each
pinned to its own share of the CPUs; then the comparison report. A failed run does not stop the
others: it is named at the end (rerun ``sweep run`` to retry only what is not done).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..compute.backends import available_cpus
from ..engine.runner import run_pipeline
from ..errors import StageError
from .plan import SweepPlan, SweepRun, write_configs
from .state import run_pending, unit_done

log = logging.getLogger("microparade")


@dataclass
class LocalOutcome:
    units_ran: list[str] = field(default_factory=list)
    runs_ran: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    report: str | None = None


def run_sweep(plan: SweepPlan, parallel: int | None = None) -> LocalOutcome:
    """Compute what is not done; raise :class:`StageError` naming the runs that failed."""
    out = LocalOutcome()
    write_configs(plan)
    for unit in plan.units:
        if unit_done(unit):
            continue
        log.info("[sweep] shared %s (read by %d run(s))", unit.key, len(unit.runs))
        run_pipeline(unit.cfg, only=unit.stage)
        out.units_ran.append(unit.key)
    todo = [r for r in plan.runs if run_pending(r)]
    n = min(parallel or plan.experiment.spec.local.parallel, max(1, len(todo)))
    log.info("[sweep] %d of %d run(s) to compute, %d at a time", len(todo), len(plan.runs), n)
    if n <= 1:
        _serial(todo, out)
    else:
        _parallel(plan, todo, n, out)
    if out.failed:
        raise StageError(
            f"sweep {plan.experiment.name}: {len(out.failed)} run(s) failed: {', '.join(out.failed)}; "
            f"the others are done (rerun `microparade sweep run` to retry only what is not done)"
        )
    from .report import write_sweep_report

    out.report = write_sweep_report(plan)
    return out


def _progress(done: int, total: int, started: float) -> str:
    elapsed = time.time() - started
    eta = elapsed / done * (total - done) if done else 0.0
    return f"{done}/{total} done, {elapsed:.0f} s elapsed" + (f", ~{eta:.0f} s left" if done < total else "")


def _serial(todo: list[SweepRun], out: LocalOutcome) -> None:
    started = time.time()
    for i, run in enumerate(todo):
        log.info("[sweep] run %s (%d/%d)", run.label, i + 1, len(todo))
        try:
            run_pipeline(run.cfg)
            out.runs_ran.append(run.label)
        except StageError as exc:
            log.error("[sweep] %s failed: %s", run.label, exc)
            out.failed.append(run.label)
        log.info("[sweep] %s", _progress(i + 1, len(todo), started))


def _cpu_groups(n: int) -> list[set[int]]:
    """``n`` disjoint shares of the CPUs this process may use (one per child process)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(available_cpus()))
    return [set(cpus[i::n]) or set(cpus) for i in range(n)]


def _pinned(cpus: set[int]) -> Callable[[], None]:
    def pin() -> None:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cpus)

    return pin


def _parallel(plan: SweepPlan, todo: list[SweepRun], n: int, out: LocalOutcome) -> None:
    logs = Path(plan.experiment.local_dir, "logs")
    logs.mkdir(parents=True, exist_ok=True)
    free = _cpu_groups(n)
    queue = list(todo)
    running: dict[subprocess.Popen[bytes], tuple[SweepRun, set[int], Path]] = {}
    started, finished = time.time(), 0
    try:
        while queue or running:
            while queue and free:
                run, cpus = queue.pop(0), free.pop(0)
                path = logs / f"{run.variant}-seed-{run.seed}.log"
                cmd = [sys.executable, "-m", "microparade.cli", "run", plan.config_path(run)]
                with open(path, "ab") as f:
                    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, preexec_fn=_pinned(cpus))
                log.info("[sweep] run %s started on CPUs %s (log %s)", run.label, sorted(cpus), path)
                running[proc] = (run, cpus, path)
            time.sleep(0.5)
            for proc in [p for p in running if p.poll() is not None]:
                run, cpus, path = running.pop(proc)
                free.append(cpus)
                finished += 1
                if proc.returncode == 0:
                    out.runs_ran.append(run.label)
                    log.info("[sweep] %s done (%s)", run.label, _progress(finished, len(todo), started))
                else:
                    out.failed.append(run.label)
                    log.error("[sweep] %s failed (exit %d); see %s", run.label, proc.returncode, path)
    finally:
        for proc in running:  # interrupted: stop the children (a rerun resumes from their checkpoints)
            proc.terminate()
        for proc in running:
            proc.wait()
