"""``microparade sweep status``: one line per shared stage and per variant × seed, with the Slurm
job (array task) of what is not done and, once evaluated, the key metric."""

from __future__ import annotations

from typing import Any

from ..slurm.query import queued_jobs, sacct_info
from ..slurm.records import latest_jobs
from ..storage import Store
from .plan import SweepPlan
from .state import RunState, sweep_states


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _slurm_states(jobs: list[str]) -> dict[str, str]:
    """Each job's state: the queue's while Slurm holds it, else accounting's."""
    if not jobs:
        return {}
    queued = queued_jobs()
    done = sacct_info([j for j in jobs if j not in queued])
    return {j: queued.get(j) or done.get(j, {}).get("state", "?") for j in jobs}


def _job_of(root: str, storage_options: dict[str, Any], stage: str) -> str | None:
    return latest_jobs(Store(root, storage_options)).get(stage)


def sweep_status_json(plan: SweepPlan) -> dict[str, Any]:
    from .report import report_state

    units, runs = sweep_states(plan)
    so = plan.runs[0].cfg.storage_options
    unit_jobs = {u.key: _job_of(u.root, so, u.stage) for u, _ in units}
    run_jobs = {r.run.index: _job_of(r.run.run_dir, so, r.stage) for r in runs}
    states = _slurm_states([j for j in [*unit_jobs.values(), *run_jobs.values()] if j])
    return {
        "experiment": plan.experiment.name,
        "sweep_dir": plan.sweep_dir,
        "split": plan.experiment.spec.report.split,
        "shared": [
            {
                "unit": u.key,
                "stage": u.stage,
                "state": s.state,
                "runs": len(u.runs),
                "duration_s": s.duration_s,
                "slurm_job": unit_jobs[u.key],
                "slurm_state": states.get(unit_jobs[u.key] or ""),
            }
            for u, s in units
        ],
        "runs": [_run_json(r, run_jobs[r.run.index], states) for r in runs],
        "report": report_state(plan) or "done",
    }


def _run_json(r: RunState, job: str | None, states: dict[str, str]) -> dict[str, Any]:
    return {
        "index": r.run.index,
        "variant": r.run.variant,
        "seed": r.run.seed,
        "run_dir": r.run.run_dir,
        "state": r.state,
        "slurm_job": job,
        "slurm_state": states.get(job or ""),
        "avg_ap": r.avg_ap,
        "avg_rce": r.avg_rce,
    }


def _num(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_sweep_status(plan: SweepPlan) -> str:
    doc = sweep_status_json(plan)
    lines = [f"experiment {doc['experiment']}: {doc['sweep_dir']}", ""]
    rows = [["shared", "state", "runs", "duration", "slurm job", "slurm state"]]
    for u in doc["shared"]:
        dur = "-" if u["duration_s"] is None else f"{u['duration_s']:.1f}s"
        rows.append([u["unit"], u["state"], str(u["runs"]), dur, u["slurm_job"] or "-", u["slurm_state"] or "-"])
    lines += [_table(rows), ""]
    split = doc["split"]
    rows = [["#", "variant", "seed", "state", "slurm job", "slurm state", f"{split} avg AP", f"{split} avg RCE"]]
    for r in doc["runs"]:
        rows.append(
            [
                str(r["index"]),
                r["variant"],
                str(r["seed"]),
                r["state"],
                r["slurm_job"] or "-",
                r["slurm_state"] or "-",
                _num(r["avg_ap"], 4),
                _num(r["avg_rce"], 2),
            ]
        )
    done = sum(r["state"] == "done" for r in doc["runs"])
    lines += [_table(rows), "", f"{done}/{len(doc['runs'])} run(s) done; comparison report: {doc['report']}"]
    return "\n".join(lines)
