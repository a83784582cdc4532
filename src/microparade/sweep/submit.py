"""``microparade sweep submit`` / ``slurm/sweep.sh``: a sweep on Slurm, through sbatch or submitit.

One plan, two launchers. What is not done is submitted, what Slurm still holds is not:

1. each shared unit that is not done: one job of its stage (``slurm/<stage>.sbatch``, or a
   submitit job), ``afterok`` on the jobs of the units it reads;
2. the runs with a model stage not done and no job still queued: one **job array** per model
   stage (train, evaluate, report), one task per run, ``--array=<run indices>%K`` with
   ``K = slurm.array_parallelism``. The train array waits (``afterok``) on the units' jobs; each
   later array waits task by task on the one before (``aftercorr``): a failed or cancelled task
   stops only its own run, and the next submit resubmits only that run;
3. the comparison report (``microparade sweep report``), ``afterok`` on the last array and on
   any run still queued from an earlier submit.

Job ids are recorded like a run's (``_slurm/jobs.json``): in each unit's root, in each run's
directory (array tasks as ``ARRAY_TASK``) and in the sweep directory for the report.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..engine.registry import StageSpec, by_name
from ..errors import LaunchError
from ..slurm.query import queued_jobs
from ..slurm.records import latest_jobs, read_jobs, record_job
from ..slurm.resources import checkout, sbatch_args
from ..storage import Store
from .plan import SharedUnit, SweepPlan, SweepRun, write_configs
from .state import run_pending, unit_done

log = logging.getLogger("microparade")

#: The sweep directory's job record key of the comparison report's job.
REPORT_JOB = "comparison-report"


@dataclass
class SweepJob:
    """One submitted (or still queued) job of the sweep."""

    what: str
    job_id: str
    #: Run indices of an array job's tasks, in task order.
    runs: list[int] = field(default_factory=list)
    already_queued: bool = False

    def describe(self) -> str:
        tasks = f" ({len(self.runs)} task(s): runs {','.join(map(str, self.runs))})" if self.runs else ""
        queued = " (already queued; not resubmitted)" if self.already_queued else ""
        return f"{self.what}\t{self.job_id}{tasks}{queued}"


class Launcher(Protocol):
    name: str

    def stage_job(self, spec: StageSpec, unit: SharedUnit, dependency: str | None) -> str: ...

    def array_job(self, spec: StageSpec, runs: list[SweepRun], dependency: str | None) -> list[str]: ...

    def report_job(self, dependency: str | None) -> str: ...


def _dependency(kind: str, jobs: list[str]) -> str | None:
    return f"{kind}:" + ":".join(jobs) if jobs else None


def _log_dir(plan: SweepPlan) -> Path:
    path = Path(plan.runs[0].cfg.slurm.log_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


class SbatchLauncher:
    """Jobs of the checkout's ``slurm/<stage>.sbatch`` scripts, as ``slurm/pipeline.sh`` submits them."""

    name = "sbatch"

    def __init__(self, plan: SweepPlan, experiment: str, overrides: list[str]):
        self.plan, self.experiment, self.overrides = plan, experiment, overrides
        self.home = checkout()
        self.logs = _log_dir(plan)
        self.site = shlex.split(os.environ.get("MICROPARADE_SBATCH_ARGS", ""))

    def _sbatch(self, args: list[str], dependency: str | None) -> str:
        python = os.environ.get("MICROPARADE_PYTHON", sys.executable)
        cmd = ["sbatch", "--parsable", f"--export=ALL,MICROPARADE_HOME={self.home},MICROPARADE_PYTHON={python}"]
        if dependency:
            cmd += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
        proc = subprocess.run([*cmd, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise LaunchError(f"sbatch refused {' '.join(args[:3])}...: {(proc.stderr or proc.stdout).strip()}")
        return proc.stdout.strip().split(";")[0]

    def _script(self, spec: StageSpec) -> str:
        return str(self.home / "slurm" / f"{spec.name}.sbatch")

    def stage_job(self, spec: StageSpec, unit: SharedUnit, dependency: str | None) -> str:
        args = [f"--job-name=mp-{spec.name}", f"--output={self.logs}/%x-%j.out", *sbatch_args(unit.cfg, spec.name)]
        return self._sbatch([*args, *self.site, self._script(spec), self.plan.config_path(unit)], dependency)

    def array_job(self, spec: StageSpec, runs: list[SweepRun], dependency: str | None) -> list[str]:
        k = self.plan.experiment.spec.slurm.array_parallelism
        indices = ",".join(str(r.index) for r in runs)
        args = [
            f"--job-name=mp-{spec.name}",
            f"--array={indices}%{k}",
            f"--output={self.logs}/%x-%A_%a.out",
            *sbatch_args(runs[0].cfg, spec.name),
        ]
        array = self._sbatch([*args, *self.site, self._script(spec), self.plan.array_config_path()], dependency)
        return [f"{array}_{r.index}" for r in runs]

    def report_job(self, dependency: str | None) -> str:
        python = os.environ.get("MICROPARADE_PYTHON", sys.executable)
        command = shlex.join([python, "-m", "microparade.cli", "sweep", "report", self.experiment, *self.overrides])
        args = [
            "--job-name=mp-sweep-report",
            f"--output={self.logs}/%x-%j.out",
            f"--chdir={os.getcwd()}",
            *sbatch_args(self.plan.runs[0].cfg, "report"),
            *self.site,
            f"--wrap={command}",
        ]
        return self._sbatch(args, dependency)


class SweepReportJob:
    """The submitit job that writes the comparison report."""

    def __init__(self, experiment: str, overrides: list[str], cwd: str):
        self.experiment, self.overrides, self.cwd = experiment, list(overrides), cwd

    def __call__(self) -> str:
        from ..entry import setup_process
        from .experiment import load_experiment
        from .plan import build_plan
        from .report import write_sweep_report

        setup_process()
        os.chdir(self.cwd)
        return write_sweep_report(build_plan(load_experiment(self.experiment, self.overrides)))


class SubmititLauncher:
    """submitit jobs: the stage's own executor; arrays through ``executor.batch()``."""

    name = "submitit"

    def __init__(self, plan: SweepPlan, experiment: str, overrides: list[str]):
        self.plan, self.experiment, self.overrides = plan, experiment, overrides
        self.folder = _log_dir(plan) / "submitit" / "%j"

    def stage_job(self, spec: StageSpec, unit: SharedUnit, dependency: str | None) -> str:
        from ..slurm.submit import StageJob, stage_executor

        executor = stage_executor(unit.cfg, spec, self.folder, dependency)
        return str(executor.submit(StageJob(spec.name, self.plan.config_path(unit), [])).job_id)

    def array_job(self, spec: StageSpec, runs: list[SweepRun], dependency: str | None) -> list[str]:
        from ..slurm.submit import StageJob, stage_executor

        executor = stage_executor(runs[0].cfg, spec, self.folder, dependency)
        executor.update_parameters(slurm_array_parallelism=self.plan.experiment.spec.slurm.array_parallelism)
        with executor.batch():
            jobs = [executor.submit(StageJob(spec.name, self.plan.config_path(r), [])) for r in runs]
        return [str(j.job_id) for j in jobs]

    def report_job(self, dependency: str | None) -> str:
        from ..slurm.submit import stage_executor

        executor = stage_executor(self.plan.runs[0].cfg, by_name("report"), self.folder, dependency)
        executor.update_parameters(name="mp-sweep-report")
        return str(executor.submit(SweepReportJob(self.experiment, self.overrides, os.getcwd())).job_id)


def _queued(store: Store, key: str, queued: dict[str, str]) -> str | None:
    job = latest_jobs(store).get(key)
    return job if job and job in queued else None


def submit_sweep(plan: SweepPlan, launcher: str, experiment: str, overrides: list[str]) -> list[SweepJob]:
    """Submit what is not done and not queued (see the module docstring); returns every job that
    the sweep now waits for, new or still queued. Empty when the whole sweep is done."""
    from ..slurm.submit import check_submittable
    from .report import report_state

    pending_units = [u for u in plan.units if not unit_done(u)]
    pending_runs = [r for r in plan.runs if run_pending(r)]
    report_reason = report_state(plan)
    if not pending_units and not pending_runs and report_reason is None:
        return []
    if shutil.which("sbatch") is None:
        raise LaunchError("sbatch is not on PATH: `sweep submit` needs a Slurm cluster (run it on a login node)")
    if launcher == "submitit":
        check_submittable(plan.runs[0].cfg)
    write_configs(plan)
    experiment = str(Path(experiment).resolve())
    impl: Launcher = (SubmititLauncher if launcher == "submitit" else SbatchLauncher)(plan, experiment, overrides)
    queued = queued_jobs()
    jobs: list[SweepJob] = []
    unit_jobs = _submit_units(plan, pending_units, impl, queued, jobs)
    last = _submit_arrays(plan, pending_runs, impl, queued, unit_jobs, jobs)
    sweep_store = plan.store()
    active = _queued(sweep_store, REPORT_JOB, queued)
    if active:
        jobs.append(SweepJob("comparison report", active, already_queued=True))
    elif pending_runs or report_reason is not None:
        jid = impl.report_job(_dependency("afterok", last))
        record_job(sweep_store, REPORT_JOB, jid, impl.name)
        jobs.append(SweepJob("comparison report", jid))
    return jobs


def _submit_units(
    plan: SweepPlan, pending: list[SharedUnit], impl: Launcher, queued: dict[str, str], jobs: list[SweepJob]
) -> dict[str, str]:
    """Submit the pending units in pipeline order; returns ``{unit key: job id}`` (new or queued)."""
    unit_jobs: dict[str, str] = {}
    key_of = {u.root: u.key for u in plan.units}
    for unit in pending:
        store = Store(unit.root, unit.cfg.storage_options)
        active = _queued(store, unit.stage, queued)
        if active:
            unit_jobs[unit.key] = active
            jobs.append(SweepJob(f"shared {unit.key}", active, already_queued=True))
            continue
        upstream = [unit_jobs[key_of[root]] for root in unit.cfg.shared_stages.values() if key_of[root] in unit_jobs]
        jid = impl.stage_job(by_name(unit.stage), unit, _dependency("afterok", sorted(set(upstream))))
        record_job(store, unit.stage, jid, impl.name)
        unit_jobs[unit.key] = jid
        jobs.append(SweepJob(f"shared {unit.key}", jid))
    return unit_jobs


def _run_queued_jobs(run: SweepRun, queued: dict[str, str]) -> list[str]:
    store = Store(run.run_dir, run.cfg.storage_options)
    return [j for stage, j in latest_jobs(store).items() if stage in run.stages and j in queued]


def _submit_arrays(
    plan: SweepPlan,
    pending: list[SweepRun],
    impl: Launcher,
    queued: dict[str, str],
    unit_jobs: dict[str, str],
    jobs: list[SweepJob],
) -> list[str]:
    """One array per model stage over the pending runs that Slurm does not hold; returns the jobs
    the comparison report must wait for."""
    waiting: list[str] = []
    todo: list[SweepRun] = []
    for run in pending:
        in_queue = _run_queued_jobs(run, queued)
        if in_queue:
            waiting += in_queue
            jobs.append(SweepJob(f"run {run.label}", in_queue[-1], already_queued=True))
        else:
            todo.append(run)
    if not todo:
        return waiting
    upstream = sorted({unit_jobs[key] for run in todo for key in run.units.values() if key in unit_jobs})
    dependency = _dependency("afterok", upstream)
    tasks: list[str] = []
    for stage in todo[0].stages:
        tasks = impl.array_job(by_name(stage), todo, dependency)
        for run, task in zip(todo, tasks):
            record_job(Store(run.run_dir, run.cfg.storage_options), stage, task, impl.name)
        jobs.append(SweepJob(f"array {stage}", tasks[0].split("_")[0], [r.index for r in todo]))
        dependency = _dependency("aftercorr", [tasks[0].split("_")[0]])
    return [*waiting, tasks[0].split("_")[0]]


def cancel_sweep(plan: SweepPlan) -> list[str]:
    """scancel every recorded job of the sweep that Slurm still holds; returns the cancelled ids."""
    stores = [Store(u.root, u.cfg.storage_options) for u in plan.units]
    stores += [Store(r.run_dir, r.cfg.storage_options) for r in plan.runs]
    stores.append(plan.store())
    recorded: list[str] = []
    for store in stores:
        recorded += [e["job_id"] for entries in read_jobs(store).values() for e in entries]
    queued = queued_jobs()
    live = sorted({j for j in recorded if j in queued})
    if live:
        subprocess.run(["scancel", *live], check=True)
    return live
