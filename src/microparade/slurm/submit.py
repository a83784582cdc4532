"""Submitting a run's pending stages with submitit; requeue after a checkpoint; cancel.

Both launchers — ``slurm/pipeline.sh`` (sbatch) and ``microparade submit`` (submitit) — submit
only the stages that are not done, chained with ``--dependency=afterok``, and record the job ids
in ``{run_dir}/_slurm/jobs.json`` so that ``status``, ``cancel`` and the report can find them.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..engine.registry import StageSpec
from ..entry import run_one, setup_process
from ..errors import EXIT_OK, EXIT_PREEMPTED, LaunchError
from ..storage import Store
from .plan import pending_stages
from .query import job_state, queued_jobs
from .records import read_jobs, record_job
from .resources import stage_python, submitit_params

log = logging.getLogger("microparade")


class StageJob:
    """A submitit job running one stage; the train stage requeues itself after a preemption.

    The train stage installs its own SIGUSR2/SIGTERM handler (checkpoint at the next step, exit
    124). On that code, when the job is still RUNNING (the signal was the pre-timeout SIGUSR2 of
    ``--signal=USR2@90``), the job requeues itself with ``scontrol requeue`` and the rerun resumes
    from the checkpoint; after SIGTERM Slurm is already stopping the job and decides itself
    (:func:`requeue_self`). ``checkpoint()`` covers a SIGUSR2 that arrives before the stage's
    handler is installed (submitit's own handler then requeues the same call).
    """

    def __init__(self, stage: str, config: str, overrides: list[str]):
        self.stage, self.config, self.overrides = stage, config, list(overrides)

    def __call__(self) -> str:
        setup_process()
        log.info(
            "stage %s in Slurm job %s on %s (restart %s)",
            self.stage,
            os.environ.get("SLURM_JOB_ID", "-"),
            os.environ.get("SLURMD_NODENAME", "-"),
            os.environ.get("SLURM_RESTART_COUNT", "0"),
        )
        rc = run_one(self.stage, self.config, self.overrides)
        if rc == EXIT_PREEMPTED and "SLURM_JOB_ID" in os.environ:
            requeue_self()
        if rc != EXIT_OK:
            raise LaunchError(f"stage {self.stage} exited with code {rc}; see the job log")
        return self.stage

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def requeue_self(wait_s: float = 600) -> None:
    """Requeue the current Slurm job after a checkpoint, then wait for Slurm to stop this run.

    Only while the job is still RUNNING: after SIGTERM from ``scancel``, a preemption or an
    administrator's ``scontrol requeue`` the job is already stopping (COMPLETING), Slurm decides
    whether it comes back, and requeueing it here would undo a cancel. Then, and when
    ``scontrol requeue`` is refused, raises RuntimeError saying why. Only task 0 asks; the other
    tasks of a multi-task job wait to be stopped with it.
    """
    job = os.environ["SLURM_JOB_ID"]
    if os.environ.get("SLURM_PROCID", "0") == "0":
        state = job_state(job)
        if state != "RUNNING":
            raise LaunchError(
                f"checkpoint saved; job {job} is {state or 'gone'} (stopped by Slurm: scancel, preemption "
                f"or requeue), so it is not requeued from here"
            )
        log.warning("requeueing Slurm job %s to resume from the checkpoint", job)
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if proc.returncode != 0:
            answer = (proc.stderr or proc.stdout).strip()
            raise LaunchError(f"scontrol requeue {job} refused: {answer} (does the job have --requeue?)")
    # Slurm now stops this run with SIGTERM; let it end the process at once (submitit's own
    # handler ignores SIGTERM, which would hold the requeue back until SIGKILL after KillWait).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    time.sleep(wait_s)
    raise LaunchError(f"job {job} was requeued but not stopped by Slurm within {wait_s:.0f} s")


def check_submittable(cfg: Config) -> None:
    c = cfg.cluster
    if c.kind == "scheduler_file" and not (c.scheduler_file or os.environ.get("MICROPARADE_SCHEDULER_FILE")):
        raise LaunchError(
            "cluster.kind=scheduler_file without cluster.scheduler_file: the Dask cluster inside each "
            "allocation is started by the sbatch scripts; use slurm/pipeline.sh, or point "
            "cluster.scheduler_file at a running scheduler, or use cluster.kind=local or jobqueue"
        )
    if shutil.which("sbatch") is None:
        raise LaunchError("sbatch is not on PATH: microparade submit needs a Slurm cluster (run it on a login node)")


@dataclass
class Submission:
    stage: str
    job_id: str
    #: True when the stage's job was already queued and was not submitted again.
    already_queued: bool = False


def submit(config: str, overrides: list[str], stages: list[str] | None = None) -> list[Submission]:
    """Submit one submitit job per pending stage with afterok dependencies.

    Returns one :class:`Submission` per pending stage (empty when every stage is done); stages
    whose job is still queued are not resubmitted, their dependents wait on that job.
    """
    cfg = load_config(config, overrides)
    config_abs = str(Path(config).resolve())
    store = Store(cfg.run_dir, cfg.storage_options)
    todo = pending_stages(cfg, stages)
    if not todo:
        return []
    check_submittable(cfg)
    folder = Path(cfg.slurm.log_dir).resolve() / "submitit" / "%j"
    submitted: dict[str, str] = {}
    out = []
    for item in todo:
        spec = item.spec
        if item.active_job:
            log.info("%s: already queued as job %s; not resubmitted", spec.name, item.active_job)
            submitted[spec.name] = item.active_job
            out.append(Submission(spec.name, item.active_job, already_queued=True))
            continue
        deps = [submitted[i] for i in spec.inputs if i in submitted]
        executor = stage_executor(cfg, spec, folder, "afterok:" + ":".join(deps) if deps else None)
        job = executor.submit(StageJob(spec.name, config_abs, overrides))
        jid = str(job.job_id)
        submitted[spec.name] = jid
        record_job(store, spec.name, jid, "submitit", folder=str(folder).replace("%j", jid))
        out.append(Submission(spec.name, jid))
    return out


def stage_executor(cfg: Config, spec: StageSpec, folder: Path, dependency: str | None) -> Any:
    """A submitit executor for one job of ``spec``: its resources and Python, ``--requeue`` for a
    requeueing stage, and ``dependency`` (e.g. ``afterok:12:13``; a failed one cancels the job)."""
    import submitit

    python = stage_python(cfg, spec)  # e.g. the XLA environment for train on a TPU partition
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_python=python)
    params = submitit_params(cfg, spec)
    extra: dict[str, Any] = {}
    if dependency:
        extra.update({"dependency": dependency, "kill-on-invalid-dep": "yes"})
    if spec.requeue:
        extra["requeue"] = True
    if extra:
        params["slurm_additional_parameters"] = extra
    executor.update_parameters(**params)
    return executor


def cancel(cfg: Config) -> list[str]:
    """scancel every recorded job of this run that Slurm still holds; returns the cancelled ids."""
    store = Store(cfg.run_dir, cfg.storage_options)
    ids = list(dict.fromkeys(e["job_id"] for entries in read_jobs(store).values() for e in entries))
    if not ids:
        return []
    queued = queued_jobs()
    live = [j for j in ids if j in queued]
    if live:
        subprocess.run(["scancel", *live], check=True)
    return live
