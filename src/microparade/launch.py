"""Slurm launchers: which stages are pending, submitit submission, job records, sacct, cancel.

Both launchers — ``slurm/pipeline.sh`` (sbatch) and ``microparade submit`` (submitit) — submit
only the stages that are not done, chained with ``--dependency=afterok``, and record the job ids
in ``{run_dir}/_slurm/jobs.json`` so that ``status``, ``cancel`` and the report can find them.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import shlex
import shutil
import signal
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


# ----------------------------------------------------------------------------------------------
# planning
# ----------------------------------------------------------------------------------------------
@dataclass
class PendingStage:
    spec: StageSpec
    status: StageStatus
    #: A job of this run already queued or running for the stage (not resubmitted; dependents wait on it).
    active_job: str | None = None


def pending_stages(cfg: Config, stages: list[str] | None = None) -> list[PendingStage]:
    """Stages that are not done (a stage downstream of a pending one is never done), in order.

    A stage whose latest recorded job is still in the queue (pending, running, requeued) keeps
    that job: launchers make dependents wait on it instead of submitting the stage twice.
    """
    store = Store(cfg.run_dir, cfg.storage_options)
    statuses = {s.name: s for s in compute_status(cfg, store, verify="size")}
    todo = [spec for spec in pipeline(cfg) if (not stages or spec.name in stages) and statuses[spec.name].state != "done"]
    recorded = latest_jobs(store)
    queued = queued_jobs() if any(s.name in recorded for s in todo) else {}
    out = []
    for spec in todo:
        job = recorded.get(spec.name)
        out.append(PendingStage(spec, statuses[spec.name], job if job in queued else None))
    return out


def _slurm_query(cmd: list[str]) -> str:
    """stdout of a read-only Slurm command; empty when Slurm is absent, times out or fails."""
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout if out.returncode == 0 else ""


def queued_jobs() -> dict[str, str]:
    """``{job_id: state}`` of this user's jobs that Slurm still holds (pending, running, requeued...).

    Read from ``squeue`` (the controller itself) rather than ``sacct``: accounting lags the
    scheduler, and a job submitted a moment ago must already count as queued. Empty without Slurm.
    """
    out = _slurm_query(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%T"])
    jobs = {}
    for line in out.splitlines():
        jid, sep, state = line.strip().partition("|")
        if sep:
            jobs[jid.split("_")[0]] = state
    return jobs


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
    if not ids:
        return {}
    out = _slurm_query(["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State,Elapsed,Start,End,ExitCode,NodeList"])
    info: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
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
    """Extra ``status`` columns (Slurm job id, sacct state, elapsed) for stages run under Slurm.

    A published stage shows the job that published it (none if it ran outside Slurm); any other
    stage its latest recorded job (queued, running, failed, cancelled), else the job named in its
    failure/incomplete marker.
    """
    store = Store(cfg.run_dir, cfg.storage_options)
    recorded = latest_jobs(store)
    jobs: dict[str, str] = {}
    for s in statuses:
        jid = s.slurm_job_id if s.manifest is not None else recorded.get(s.name) or s.slurm_job_id
        if jid:
            jobs[s.name] = str(jid)
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
    """A Slurm time limit → whole minutes, rounded up (submitit takes minutes).

    Accepts Slurm's formats: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``.
    """
    text = str(t).strip()
    try:
        days = 0
        rest = text
        if "-" in text:
            d, rest = text.split("-", 1)
            days = int(d)
            parts = [int(p) for p in rest.split(":")]
            if len(parts) > 3:
                raise ValueError
            h, m, s = parts + [0] * (3 - len(parts))
        else:
            parts = [int(p) for p in rest.split(":")]
            if len(parts) == 1:
                h, m, s = 0, parts[0], 0
            elif len(parts) == 2:
                h, m, s = 0, parts[0], parts[1]
            elif len(parts) == 3:
                h, m, s = parts
            else:
                raise ValueError
        if min(days, h, m, s) < 0:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"slurm time {t!r} is not a Slurm time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)"
        ) from None
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
    124). On that code, when the job is still RUNNING (the signal was the pre-timeout SIGUSR2 of
    ``--signal=USR2@90``), the job requeues itself with ``scontrol requeue`` and the rerun resumes
    from the checkpoint; after SIGTERM Slurm is already stopping the job and decides itself
    (:func:`requeue_self`). ``checkpoint()`` covers a SIGUSR2 that arrives before the stage's
    handler is installed (submitit's own handler then requeues the same call).
    """

    def __init__(self, stage: str, config: str, overrides: list[str]):
        self.stage, self.config, self.overrides = stage, config, list(overrides)

    def __call__(self) -> str:
        from .cli import EXIT_OK, EXIT_PREEMPTED, setup_logging
        from .jobs import run_one

        setup_logging()
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
            raise RuntimeError(f"stage {self.stage} exited with code {rc}; see the job log")
        return self.stage

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def job_state(job_id: str) -> str | None:
    """The controller's current state of a job (``RUNNING``, ``COMPLETING``...), None if unknown."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


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
            raise RuntimeError(
                f"checkpoint saved; job {job} is {state or 'gone'} (stopped by Slurm: scancel, preemption "
                f"or requeue), so it is not requeued from here"
            )
        log.warning("requeueing Slurm job %s to resume from the checkpoint", job)
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if proc.returncode != 0:
            answer = (proc.stderr or proc.stdout).strip()
            raise RuntimeError(f"scontrol requeue {job} refused: {answer} (does the job have --requeue?)")
    # Slurm now stops this run with SIGTERM; let it end the process at once (submitit's own
    # handler ignores SIGTERM, which would hold the requeue back until SIGKILL after KillWait).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    time.sleep(wait_s)
    raise RuntimeError(f"job {job} was requeued but not stopped by Slurm within {wait_s:.0f} s")


def _submitit_params(cfg: Config, stage: str) -> dict[str, Any]:
    """submitit ``update_parameters`` keywords for a stage's ``slurm.<stage>`` resources."""
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
    # As slurm/common.sh: the site's settings (module loads...), and math libraries that use the
    # allocation's CPUs, not every core of the node.
    setup = []
    site = site_script()
    if site is not None:
        setup.append(f"source {shlex.quote(str(site))}")
    setup.append('if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"; fi')
    params["slurm_setup"] = setup
    return params


def site_script() -> Path | None:
    """``slurm/site.sh`` of the checkout (``$MICROPARADE_HOME``, else the one this package is in), if any."""
    home = os.environ.get("MICROPARADE_HOME")
    root = Path(home) if home else Path(__file__).resolve().parents[2]
    path = root / "slurm" / "site.sh"
    return path if path.is_file() else None


def _check_submittable(cfg: Config) -> None:
    c = cfg.cluster
    if c.kind == "scheduler_file" and not (c.scheduler_file or os.environ.get("MICROPARADE_SCHEDULER_FILE")):
        raise RuntimeError(
            "cluster.kind=scheduler_file without cluster.scheduler_file: the Dask cluster inside each "
            "allocation is started by the sbatch scripts; use slurm/pipeline.sh, or point "
            "cluster.scheduler_file at a running scheduler, or use cluster.kind=local or jobqueue"
        )
    if shutil.which("sbatch") is None:
        raise RuntimeError("sbatch is not on PATH: microparade submit needs a Slurm cluster (run it on a login node)")


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
    import submitit

    cfg = load_config(config, overrides)
    config_abs = str(Path(config).resolve())
    store = Store(cfg.run_dir, cfg.storage_options)
    todo = pending_stages(cfg, stages)
    if not todo:
        return []
    _check_submittable(cfg)
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
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params = _submitit_params(cfg, spec.name)
        extra: dict[str, Any] = {}
        deps = [submitted[i] for i in spec.inputs if i in submitted]
        if deps:
            extra.update({"dependency": "afterok:" + ":".join(deps), "kill-on-invalid-dep": "yes"})
        if spec.name == "train":
            extra["requeue"] = True
        if extra:
            params["slurm_additional_parameters"] = extra
        executor.update_parameters(**params)
        job = executor.submit(StageJob(spec.name, config_abs, overrides))
        jid = str(job.job_id)
        submitted[spec.name] = jid
        record_job(store, spec.name, jid, "submitit", folder=str(folder).replace("%j", jid))
        out.append(Submission(spec.name, jid))
    return out


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


# ----------------------------------------------------------------------------------------------
# Dask inside an allocation (slurm/dask-cluster.sh)
# ----------------------------------------------------------------------------------------------
class ShellVar(str):
    """A command word that the shell must expand where the command runs (``$SLURMD_NODENAME``).

    :func:`shell_join` writes it double-quoted instead of single-quoted, so that a command rendered
    once in the batch script expands per task when each srun task runs it with ``bash -c``.
    """

    def __new__(cls, name: str) -> ShellVar:
        if not name.replace("_", "").isalnum() or name[0].isdigit():
            raise ValueError(f"not a shell variable name: {name!r}")
        return super().__new__(cls, name)


#: Dask worker name: the Slurm node the worker runs on (tells workers apart in the scheduler and
#: dashboard; ``dask cuda worker`` appends ``-<gpu index>`` when it starts several).
WORKER_NAME = ShellVar("SLURMD_NODENAME")


def shell_join(cmd: list[str]) -> str:
    """A command line for ``bash -c``: words quoted, :class:`ShellVar` words left to expand."""
    return " ".join(f'"${{{w}}}"' if isinstance(w, ShellVar) else shlex.quote(w) for w in cmd)


def dask_scheduler_command(cfg: Config, scheduler_file: str, python: str | None = None) -> list[str]:
    """The scheduler process started on the allocation's first node (random ports: several jobs may share a node)."""
    c = cfg.cluster
    cmd = [python or sys.executable, "-m", "dask", "scheduler", "--scheduler-file", scheduler_file]
    cmd += ["--port", "0", "--dashboard-address", ":0"]
    if c.protocol == "ucx":
        cmd += ["--protocol", "ucx"]
    if c.interface:
        cmd += ["--interface", c.interface]
    return cmd


def dask_worker_command(
    cfg: Config,
    scheduler_file: str,
    nthreads: int,
    local_directory: str,
    python: str | None = None,
    name: str | None = WORKER_NAME,
) -> list[str]:
    """The worker process started on every node of the allocation (one srun task per node).

    CPU nodes: ``dask worker`` with one process of ``nthreads`` threads. GPU nodes
    (``cluster.gpu``): ``dask cuda worker``, which starts one worker per visible GPU, with an RMM
    pool and, for ``cluster.protocol=ucx``, UCX over InfiniBand/NVLink (UCXX through
    distributed-ucxx). ``name`` defaults to the node name, expanded where the worker runs.
    """
    c = cfg.cluster
    py = python or sys.executable
    if c.gpu:
        cmd = [py, "-m", "dask", "cuda", "worker", "--scheduler-file", scheduler_file]
        cmd += ["--local-directory", local_directory]
        if c.protocol == "ucx":
            cmd += ["--protocol", "ucx", "--enable-tcp-over-ucx"]
            cmd += ["--enable-infiniband" if c.enable_infiniband else "--disable-infiniband"]
            cmd += ["--enable-nvlink" if c.enable_nvlink else "--disable-nvlink"]
        if c.interface:
            cmd += ["--interface", c.interface]
        if c.rmm_pool_size:
            cmd += ["--rmm-pool-size", c.rmm_pool_size]
    else:
        cmd = [py, "-m", "dask", "worker", "--scheduler-file", scheduler_file]
        cmd += ["--nworkers", "1", "--nthreads", str(nthreads), "--memory-limit", c.memory_limit]
        cmd += ["--local-directory", local_directory]
        if c.protocol == "ucx":
            cmd += ["--protocol", "ucx"]
        if c.interface:
            cmd += ["--interface", c.interface]
    if name:
        cmd += ["--name", name]
    return cmd


def dask_environment(cfg: Config) -> dict[str, str]:
    """Environment for scheduler, workers and client: cuDF backend and UCX settings on GPU nodes.

    UCX settings are given under distributed-ucxx's keys (``DASK_DISTRIBUTED_UCXX__*``) and under
    the legacy ``distributed.comm.ucx`` keys that older dask-cuda/distributed releases read.
    """
    env: dict[str, str] = {}
    c = cfg.cluster
    if c.gpu:
        env["DASK_DATAFRAME__BACKEND"] = "cudf"
    if c.protocol == "ucx" and c.gpu:
        settings = {
            "CREATE_CUDA_CONTEXT": "True",
            "CUDA_COPY": "True",
            "TCP": "True",
            "INFINIBAND": str(c.enable_infiniband),
            "NVLINK": str(c.enable_nvlink),
        }
        for key, value in settings.items():
            env[f"DASK_DISTRIBUTED_UCXX__{key}"] = value
            env[f"DASK_DISTRIBUTED__COMM__UCX__{key}"] = value
    return env


def _cmd_dask_commands(args) -> int:
    cfg = load_config(args.config, args.overrides)
    sched = dask_scheduler_command(cfg, args.scheduler_file, args.python)
    worker = dask_worker_command(cfg, args.scheduler_file, args.nthreads, args.local_directory, args.python)
    env = dask_environment(cfg)
    print("MP_DASK_SCHEDULER_CMD=" + shlex.quote(shell_join(sched)))
    print("MP_DASK_WORKER_CMD=" + shlex.quote(shell_join(worker)))
    print("MP_DASK_ENV=" + shlex.quote(" ".join(f"{k}={v}" for k, v in env.items())))
    return 0


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def add_cli_commands(sub, add_config_args) -> None:
    p = sub.add_parser(
        "plan",
        help="list the stages that are not done (what a launcher would submit)",
        description="One line per pending stage, tab-separated: stage, inputs (comma-separated), "
        "state, the job already queued for it, sbatch options of its slurm.<stage> resources; "
        '"-" stands for an empty field.',
    )
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
        print(
            json.dumps(
                [
                    {
                        "stage": p.spec.name,
                        "inputs": list(p.spec.inputs),
                        "state": p.status.state,
                        "active_job": p.active_job,
                        "sbatch_args": sbatch_args(cfg, p.spec.name),
                    }
                    for p in todo
                ]
            )
        )
    else:
        # Tab-separated, no empty field ("-" instead): `read` in slurm/pipeline.sh collapses runs
        # of tabs, so an empty field would shift the ones after it.
        for p in todo:
            fields = [
                p.spec.name,
                ",".join(p.spec.inputs) or "-",
                p.status.state,
                p.active_job or "-",
                " ".join(sbatch_args(cfg, p.spec.name)) or "-",
            ]
            print("\t".join(fields))
    return 0


def _cmd_submit(args) -> int:
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
    try:
        jobs = submit(args.config, args.overrides, stages)
    except RuntimeError as exc:
        print(f"microparade: {exc}", file=sys.stderr)
        return 1
    for j in jobs:
        print(f"{j.stage}\t{j.job_id}" + ("\t(already queued; not resubmitted)" if j.already_queued else ""))
    new = [j for j in jobs if not j.already_queued]
    if not jobs:
        print("microparade: every stage is done; nothing submitted")
    elif not new:
        print("microparade: every pending stage is already queued; nothing submitted")
    else:
        print(f"microparade: submitted {len(new)} job(s)")
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

