"""Slurm launchers: which stages are pending, submitit submission, job records, sacct, cancel.

Both launchers — ``slurm/pipeline.sh`` (sbatch) and ``microparade submit`` (submitit) — submit
only the stages that are not done, chained with ``--dependency=afterok``, and record the job ids
in ``{run_dir}/_slurm/jobs.json`` so that ``status``, ``cancel`` and the report can find them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config, SlurmStageConfig, load_config
from .runner import StageStatus, compute_status, now_iso
from .stages import StageSpec, pipeline
from .storage import Store

log = logging.getLogger("microparade")

JOBS_FILE = "_slurm/jobs.json"
TERMINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED",
}
#: Stages whose sbatch script starts a Dask cluster inside the allocation when asked to.
DASK_STAGES = ("ingest", "text", "features", "chunks")


# ----------------------------------------------------------------------------------------------
# planning
# ----------------------------------------------------------------------------------------------
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "SUSPENDED", "COMPLETING", "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED"}


@dataclass
class PendingStage:
    spec: StageSpec
    status: StageStatus
    #: A job of this run already queued or running for the stage (not resubmitted; dependents wait on it).
    active_job: str | None = None


def pending_stages(cfg: Config, stages: list[str] | None = None) -> list[PendingStage]:
    """Stages that are not done (a stage downstream of a pending one is never done), in order."""
    store = Store(cfg.run_dir, cfg.storage_options)
    statuses = {s.name: s for s in compute_status(cfg, store, verify="size")}
    todo = [spec for spec in pipeline(cfg) if (not stages or spec.name in stages) and statuses[spec.name].state != "done"]
    recorded = latest_jobs(store)
    ids = [recorded[s.name] for s in todo if s.name in recorded]
    info = sacct_info(ids) if ids else {}
    out = []
    for spec in todo:
        jid = recorded.get(spec.name)
        active = jid if jid and info.get(jid, {}).get("state") in ACTIVE_STATES else None
        out.append(PendingStage(spec, statuses[spec.name], active))
    return out


# ----------------------------------------------------------------------------------------------
# job records
# ----------------------------------------------------------------------------------------------
def read_jobs(store: Store) -> dict[str, list[dict[str, Any]]]:
    if not store.exists(JOBS_FILE):
        return {}
    try:
        return store.read_json(JOBS_FILE)
    except (json.JSONDecodeError, OSError):
        return {}


def record_job(store: Store, stage: str, job_id: str, launcher: str, **info: Any) -> None:
    jobs = read_jobs(store)
    jobs.setdefault(stage, []).append({"job_id": str(job_id), "launcher": launcher, "submitted": now_iso(), **info})
    store.write_json_atomic(JOBS_FILE, jobs)


def latest_jobs(store: Store) -> dict[str, str]:
    return {stage: entries[-1]["job_id"] for stage, entries in read_jobs(store).items() if entries}


# ----------------------------------------------------------------------------------------------
# sacct
# ----------------------------------------------------------------------------------------------
def sacct_info(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """``{job_id: {state, elapsed, start, end, exit_code, nodelist}}`` from sacct (main job lines)."""
    ids = [str(j) for j in job_ids if j]
    if not ids or shutil.which("sacct") is None:
        return {}
    cmd = ["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State,Elapsed,Start,End,ExitCode,NodeList"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode != 0:
        return {}
    info: dict[str, dict[str, str]] = {}
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 7:
            continue
        jid = parts[0].split("_")[0]
        info[jid] = {
            "state": parts[1].split()[0] if parts[1] else "",
            "elapsed": parts[2],
            "start": parts[3],
            "end": parts[4],
            "exit_code": parts[5],
            "nodelist": parts[6],
        }
    return info


def slurm_status_columns(cfg: Config, statuses: list[StageStatus]) -> dict[str, dict[str, str]] | None:
    """Extra ``status`` columns (Slurm job id, sacct state, elapsed) for stages run under Slurm."""
    store = Store(cfg.run_dir, cfg.storage_options)
    jobs = latest_jobs(store)
    for s in statuses:
        if s.name not in jobs and s.slurm_job_id:
            jobs[s.name] = s.slurm_job_id
    if not jobs:
        return None
    info = sacct_info(list(jobs.values()))
    return {
        stage: {
            "slurm_job": jid,
            "slurm_state": info.get(jid, {}).get("state", "?"),
            "elapsed": info.get(jid, {}).get("elapsed", "-"),
        }
        for stage, jid in jobs.items()
    }


# ----------------------------------------------------------------------------------------------
# resources
# ----------------------------------------------------------------------------------------------
def stage_resources(cfg: Config, stage: str) -> SlurmStageConfig:
    """``slurm.<stage>`` over ``slurm.default``: a stage's value wins where it is set."""
    base = cfg.slurm.default.model_dump()
    own = getattr(cfg.slurm, stage).model_dump()
    base.update({k: v for k, v in own.items() if v is not None})
    return SlurmStageConfig(**base)


def parse_time_minutes(t: str) -> int:
    """Slurm time formats (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) → minutes."""
    days = 0
    if "-" in t:
        d, t = t.split("-", 1)
        days = int(d)
        parts = [int(p) for p in t.split(":")]
        parts += [0] * (3 - len(parts))
        h, m, s = parts
    else:
        parts = [int(p) for p in t.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        else:
            h, m, s = parts
    return max(1, days * 1440 + h * 60 + m + (1 if s else 0))


def sbatch_args(cfg: Config, stage: str) -> list[str]:
    """Command-line sbatch options for a stage's resources (override the scripts' #SBATCH lines)."""
    r = stage_resources(cfg, stage)
    args = []
    for flag, val in (
        ("--partition", r.partition),
        ("--time", r.time),
        ("--nodes", r.nodes),
        ("--cpus-per-task", r.cpus_per_task),
        ("--mem", r.mem),
        ("--account", r.account),
        ("--qos", r.qos),
    ):
        if val is not None:
            args.append(f"{flag}={val}")
    if r.gpus_per_node:
        args.append(f"--gpus-per-node={r.gpus_per_node}")
        if stage == "train":
            args.append(f"--ntasks-per-node={r.gpus_per_node}")
    return args


# ----------------------------------------------------------------------------------------------
# submitit
# ----------------------------------------------------------------------------------------------
class StageJob:
    """A submitit job running one stage; the train stage requeues itself after a preemption.

    The train stage installs its own SIGUSR2/SIGTERM handler (checkpoint at the next step, exit
    124); on that code the job requeues itself with ``scontrol requeue`` and the rerun resumes
    from the checkpoint. ``checkpoint()`` covers a signal that arrives before the stage's handler
    is installed (submitit's own handler then requeues the same call).
    """

    def __init__(self, stage: str, config: str, overrides: list[str]):
        self.stage, self.config, self.overrides = stage, config, list(overrides)

    def __call__(self) -> str:
        from .cli import EXIT_OK, EXIT_PREEMPTED, setup_logging
        from .jobs import run_one

        setup_logging()
        rc = run_one(self.stage, self.config, self.overrides)
        if rc == EXIT_PREEMPTED and "SLURM_JOB_ID" in os.environ:
            requeue_self()
        if rc != EXIT_OK:
            raise RuntimeError(f"stage {self.stage} exited with code {rc}; see the job log")
        return self.stage

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def requeue_self() -> None:
    """Requeue the current Slurm job and wait to be stopped by Slurm (which requeue does)."""
    job = os.environ["SLURM_JOB_ID"]
    log.warning("requeueing Slurm job %s to resume from the checkpoint", job)
    subprocess.run(["scontrol", "requeue", job], check=True)
    time.sleep(600)
    raise RuntimeError(f"job {job} was requeued but not stopped by Slurm within 600 s")


def _submitit_params(cfg: Config, stage: str) -> dict[str, Any]:
    r = stage_resources(cfg, stage)
    params: dict[str, Any] = {"slurm_job_name": f"mp-{stage}"}
    if r.partition:
        params["slurm_partition"] = r.partition
    if r.time:
        params["slurm_time"] = parse_time_minutes(r.time)
    if r.nodes:
        params["nodes"] = r.nodes
    if r.cpus_per_task:
        params["slurm_cpus_per_task"] = r.cpus_per_task
    if r.mem:
        params["slurm_mem"] = r.mem
    if r.account:
        params["slurm_account"] = r.account
    if r.qos:
        params["slurm_qos"] = r.qos
    if r.gpus_per_node:
        params["slurm_gpus_per_node"] = r.gpus_per_node
        if stage == "train":
            params["slurm_ntasks_per_node"] = r.gpus_per_node
    if stage == "train":
        params["slurm_signal_delay_s"] = 90
    return params


def submit(config: str, overrides: list[str], stages: list[str] | None = None) -> list[tuple[str, str]]:
    """Submit one submitit job per pending stage with afterok dependencies; returns (stage, job id)."""
    import submitit

    cfg = load_config(config, overrides)
    config_abs = str(Path(config).resolve())
    store = Store(cfg.run_dir, cfg.storage_options)
    todo = pending_stages(cfg, stages)
    if not todo:
        return []
    if shutil.which("sbatch") is None:
        raise RuntimeError("sbatch is not on PATH: microparade submit needs a Slurm cluster")
    folder = Path(cfg.slurm.log_dir).resolve() / "submitit" / "%j"
    submitted: dict[str, str] = {}
    out = []
    for item in todo:
        spec = item.spec
        if item.active_job:
            log.info("%s: already queued as job %s; not resubmitted", spec.name, item.active_job)
            submitted[spec.name] = item.active_job
            continue
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params = _submitit_params(cfg, spec.name)
        deps = [submitted[i] for i in spec.inputs if i in submitted]
        if deps:
            params["slurm_additional_parameters"] = {"dependency": "afterok:" + ":".join(deps), "kill-on-invalid-dep": "yes"}
        if spec.name == "train":
            params.setdefault("slurm_additional_parameters", {})["requeue"] = True
        executor.update_parameters(**params)
        job = executor.submit(StageJob(spec.name, config_abs, overrides))
        submitted[spec.name] = str(job.job_id)
        record_job(store, spec.name, job.job_id, "submitit", folder=str(folder).replace("%j", str(job.job_id)))
        out.append((spec.name, str(job.job_id)))
    return out


def cancel(cfg: Config) -> list[str]:
    """scancel every recorded job of this run that has not finished; returns the cancelled ids."""
    store = Store(cfg.run_dir, cfg.storage_options)
    ids = [e["job_id"] for entries in read_jobs(store).values() for e in entries]
    if not ids:
        return []
    info = sacct_info(ids)
    live = [j for j in ids if info.get(j, {}).get("state", "PENDING") not in TERMINAL_STATES]
    if live:
        subprocess.run(["scancel", *live], check=True)
    return live


# ----------------------------------------------------------------------------------------------
# Dask inside an allocation (slurm/dask-cluster.sh)
# ----------------------------------------------------------------------------------------------
def dask_scheduler_command(cfg: Config, scheduler_file: str, python: str | None = None) -> list[str]:
    """The scheduler process started on the allocation's first node."""
    c = cfg.cluster
    cmd = [python or sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", scheduler_file]
    cmd += ["--port", "0", "--dashboard-address", ":0"]
    if c.protocol == "ucx":
        cmd += ["--protocol", "ucx"]
    if c.interface:
        cmd += ["--interface", c.interface]
    return cmd


def dask_worker_command(
    cfg: Config, scheduler_file: str, nthreads: int, local_directory: str, python: str | None = None
) -> list[str]:
    """One worker process per node: ``dask worker`` on CPU nodes, ``dask cuda worker`` with UCX on GPU nodes."""
    c = cfg.cluster
    py = python or sys.executable
    if c.gpu:
        dask_cli = str(Path(py).with_name("dask"))
        cmd = [dask_cli, "cuda", "worker", "--scheduler-file", scheduler_file]
        cmd += ["--local-directory", local_directory]
        if c.protocol == "ucx":
            cmd += ["--protocol", "ucx", "--enable-tcp-over-ucx"]
            cmd += ["--enable-infiniband" if c.enable_infiniband else "--disable-infiniband"]
            cmd += ["--enable-nvlink" if c.enable_nvlink else "--disable-nvlink"]
        if c.interface:
            cmd += ["--interface", c.interface]
        if c.rmm_pool_size:
            cmd += ["--rmm-pool-size", c.rmm_pool_size]
        return cmd
    cmd = [py, "-m", "distributed.cli.dask_worker", "--scheduler-file", scheduler_file]
    cmd += ["--nworkers", "1", "--nthreads", str(nthreads), "--memory-limit", c.memory_limit]
    cmd += ["--local-directory", local_directory]
    if c.protocol == "ucx":
        cmd += ["--protocol", "ucx"]
    if c.interface:
        cmd += ["--interface", c.interface]
    return cmd


def dask_environment(cfg: Config) -> dict[str, str]:
    """Environment for scheduler, workers and client: cuDF backend and UCX settings on GPU nodes."""
    env: dict[str, str] = {}
    if cfg.cluster.gpu:
        env["DASK_DATAFRAME__BACKEND"] = "cudf"
    if cfg.cluster.protocol == "ucx":
        env["DASK_DISTRIBUTED__COMM__UCX__CREATE_CUDA_CONTEXT"] = "True"
        if cfg.cluster.gpu:
            env["DASK_DISTRIBUTED__COMM__UCX__INFINIBAND"] = str(cfg.cluster.enable_infiniband)
            env["DASK_DISTRIBUTED__COMM__UCX__NVLINK"] = str(cfg.cluster.enable_nvlink)
    return env


def _cmd_dask_commands(args) -> int:
    import shlex

    cfg = load_config(args.config, args.overrides)
    sched = dask_scheduler_command(cfg, args.scheduler_file, args.python)
    worker = dask_worker_command(cfg, args.scheduler_file, args.nthreads, args.local_directory, args.python)
    env = dask_environment(cfg)
    print("MP_DASK_SCHEDULER_CMD=" + shlex.quote(shlex.join(sched)))
    print("MP_DASK_WORKER_CMD=" + shlex.quote(shlex.join(worker)))
    print("MP_DASK_ENV=" + shlex.quote(" ".join(f"{k}={v}" for k, v in env.items())))
    return 0


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def add_cli_commands(sub, add_config_args) -> None:
    p = sub.add_parser("plan", help="list the stages that are not done (what a launcher would submit)")
    add_config_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_plan)

    p = sub.add_parser("submit", help="submit pending stages to Slurm with submitit")
    add_config_args(p)
    p.add_argument("--stages", help="comma-separated subset of stages")
    p.set_defaults(handler=_cmd_submit)

    p = sub.add_parser("cancel", help="cancel this run's Slurm jobs that have not finished")
    add_config_args(p)
    p.set_defaults(handler=_cmd_cancel)

    p = sub.add_parser("record-job", help="record a Slurm job id for a stage (used by slurm/pipeline.sh)")
    add_config_args(p)
    p.add_argument("--stage", required=True)
    p.add_argument("--job-id", required=True)
    p.add_argument("--launcher", default="sbatch")
    p.set_defaults(handler=_cmd_record)

    p = sub.add_parser("dask-commands", help="print the Dask scheduler/worker commands for slurm/dask-cluster.sh")
    add_config_args(p)
    p.add_argument("--scheduler-file", required=True)
    p.add_argument("--nthreads", type=int, default=1)
    p.add_argument("--local-directory", default="/tmp")
    p.add_argument("--python", help="Python on the compute nodes (default: this one)")
    p.set_defaults(handler=_cmd_dask_commands)

    p = sub.add_parser("sbatch-args", help="print sbatch options for a stage's slurm.<stage> resources")
    add_config_args(p)
    p.add_argument("--stage", required=True)
    p.set_defaults(handler=_cmd_sbatch_args)


def _cmd_plan(args) -> int:
    cfg = load_config(args.config, args.overrides)
    todo = pending_stages(cfg)
    if args.json:
        print(json.dumps([{"stage": p.spec.name, "inputs": list(p.spec.inputs), "state": p.status.state, "active_job": p.active_job} for p in todo]))
    else:
        for p in todo:
            print(f"{p.spec.name}\t{','.join(p.spec.inputs)}\t{p.status.state}\t{p.active_job or ''}")
    return 0


def _cmd_submit(args) -> int:
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
    try:
        jobs = submit(args.config, args.overrides, stages)
    except RuntimeError as exc:
        print(f"microparade: {exc}", file=sys.stderr)
        return 1
    if not jobs:
        print("microparade: every stage is done; nothing submitted")
    for stage, jid in jobs:
        print(f"{stage}\t{jid}")
    return 0


def _cmd_cancel(args) -> int:
    cfg = load_config(args.config, args.overrides)
    ids = cancel(cfg)
    print(f"microparade: cancelled {', '.join(ids) if ids else 'nothing'}")
    return 0


def _cmd_record(args) -> int:
    cfg = load_config(args.config, args.overrides)
    record_job(Store(cfg.run_dir, cfg.storage_options), args.stage, args.job_id, args.launcher)
    return 0


def _cmd_sbatch_args(args) -> int:
    cfg = load_config(args.config, args.overrides)
    print(" ".join(sbatch_args(cfg, args.stage)))
    return 0

