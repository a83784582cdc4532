"""``microparade sweep run|status|submit|cancel|report EXPERIMENT [key=value ...]``.

``key=value`` overrides apply to the base config of every variant; ``experiment.<key>=<value>``
to the experiment file itself (``experiment.seeds=[0]``, ``experiment.sweep_dir=/scratch/x``).
"""

from __future__ import annotations

import argparse
import json

from .experiment import load_experiment
from .plan import SweepPlan, build_plan


def _add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment file (YAML), e.g. experiments/paper.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="base-config or experiment.<key> overrides")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``microparade sweep ...`` on the ``microparade`` parser."""
    sweep = sub.add_parser("sweep", help="run, submit and compare the variants of an experiment")
    actions = sweep.add_subparsers(dest="sweep_action", required=True)

    p = actions.add_parser("run", help="compute what is not done on this machine, then the comparison report")
    _add_experiment_args(p)
    p.add_argument("--parallel", type=int, help="runs at once (default: the experiment's local.parallel)")
    p.set_defaults(handler=_cmd_run)

    p = actions.add_parser("status", help="one line per shared stage and per variant x seed")
    _add_experiment_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_status)

    p = actions.add_parser(
        "submit", help="submit what is not done to Slurm: shared stages once, then job arrays of the runs"
    )
    _add_experiment_args(p)
    p.add_argument("--launcher", choices=["submitit", "sbatch"], default="submitit")
    p.set_defaults(handler=_cmd_submit)

    p = actions.add_parser("cancel", help="cancel the sweep's Slurm jobs that have not finished")
    _add_experiment_args(p)
    p.set_defaults(handler=_cmd_cancel)

    p = actions.add_parser("report", help="write the comparison report from the finished runs")
    _add_experiment_args(p)
    p.set_defaults(handler=_cmd_report)


def _plan(args: argparse.Namespace) -> SweepPlan:
    return build_plan(load_experiment(args.experiment, args.overrides))


def _cmd_run(args: argparse.Namespace) -> int:
    from .local import run_sweep

    plan = _plan(args)
    out = run_sweep(plan, parallel=args.parallel)
    print(
        f"microparade: sweep {plan.experiment.name}: computed {len(out.units_ran)} shared stage(s) and "
        f"{len(out.runs_ran)} run(s); report {out.report}"
    )
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .status import format_sweep_status, sweep_status_json

    plan = _plan(args)
    if args.json:
        print(json.dumps(sweep_status_json(plan), indent=2))
    else:
        print(format_sweep_status(plan))
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from .submit import submit_sweep

    plan = _plan(args)
    jobs = submit_sweep(plan, args.launcher, args.experiment, args.overrides)
    for j in jobs:
        print(j.describe())
    new = [j for j in jobs if not j.already_queued]
    if not jobs:
        print(f"microparade: sweep {plan.experiment.name} is done; nothing submitted")
    elif not new:
        print("microparade: everything pending is already queued; nothing submitted")
    else:
        print(f"microparade: submitted {len(new)} job(s)")
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    from .submit import cancel_sweep

    ids = cancel_sweep(_plan(args))
    print(f"microparade: cancelled {', '.join(ids) if ids else 'nothing'}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_sweep_report

    url = write_sweep_report(_plan(args))
    print(f"microparade: comparison report {url}")
    return 0
