"""The ``microparade`` subcommands for Slurm: plan, submit, cancel, record-job, dask-commands,
sbatch-args. :func:`add_commands` registers them; :mod:`microparade.cli` calls it."""

from __future__ import annotations

import argparse
import json
import shlex

from ..entry import add_config_args, load_args_config
from ..storage import Store
from .dask_allocation import dask_environment, dask_scheduler_command, dask_worker_command, shell_join
from .plan import pending_stages
from .records import record_job
from .resources import sbatch_args
from .submit import cancel, submit


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the Slurm subcommands on the ``microparade`` parser."""
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


def _cmd_plan(args: argparse.Namespace) -> int:
    cfg = load_args_config(args)
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


def _cmd_submit(args: argparse.Namespace) -> int:
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
    jobs = submit(args.config, args.overrides, stages)
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


def _cmd_cancel(args: argparse.Namespace) -> int:
    cfg = load_args_config(args)
    ids = cancel(cfg)
    print(f"microparade: cancelled {', '.join(ids) if ids else 'nothing'}")
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    cfg = load_args_config(args)
    record_job(Store(cfg.run_dir, cfg.storage_options), args.stage, args.job_id, args.launcher)
    return 0


def _cmd_sbatch_args(args: argparse.Namespace) -> int:
    cfg = load_args_config(args)
    print(" ".join(sbatch_args(cfg, args.stage)))
    return 0


def _cmd_dask_commands(args: argparse.Namespace) -> int:
    cfg = load_args_config(args)
    sched = dask_scheduler_command(cfg, args.scheduler_file, args.python)
    worker = dask_worker_command(cfg, args.scheduler_file, args.nthreads, args.local_directory, args.python)
    env = dask_environment(cfg)
    print("MP_DASK_SCHEDULER_CMD=" + shlex.quote(shell_join(sched)))
    print("MP_DASK_WORKER_CMD=" + shlex.quote(shell_join(worker)))
    print("MP_DASK_ENV=" + shlex.quote(" ".join(f"{k}={v}" for k, v in env.items())))
    return 0
