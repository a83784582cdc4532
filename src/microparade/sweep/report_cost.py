"""What a sweep cost: the wall time of every run's model stages per variant (their manifests'
``duration_s``), the shared stages' once, and, for jobs that ran under Slurm, sacct's elapsed time
and CPU and GPU hours per variant (each job counted once, whatever the stages it ran)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engine.layout import stage_store
from ..engine.manifest import Manifest, read_manifest
from ..slurm.query import sacct_usage
from ..slurm.records import latest_jobs
from ..storage import Store
from .plan import SweepPlan
from .report_data import RunResult

#: The key of the shared stages in :attr:`Cost.slurm`.
SHARED = "shared stages"


@dataclass
class Cost:
    #: ``{variant: {stage: [duration_s of each seed's run]}}`` (None where a manifest has none).
    stage_seconds: dict[str, dict[str, list[float | None]]]
    #: One per shared unit: ``{key, stage, runs, duration_s}``.
    units: list[dict[str, Any]]
    #: ``{variant | SHARED: {jobs, jobs_known, elapsed_s, cpu_hours, gpu_hours}}``; empty without Slurm.
    slurm: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Why there is no Slurm accounting (or what it misses); empty when every job is known.
    slurm_note: str = ""

    def run_totals(self, variant: str) -> list[float]:
        """Each seed's total wall time over its model stages."""
        per_stage = self.stage_seconds[variant].values()
        return [sum(v or 0.0 for v in seed) for seed in zip(*per_stage)]


def manifest_job(m: Manifest) -> str | None:
    """The Slurm job that published a stage, as sacct names it (``ARRAY_TASK`` for an array task)."""
    slurm = m.data.get("slurm") or {}
    if slurm.get("array_job_id") and slurm.get("array_task_id") is not None:
        return f"{slurm['array_job_id']}_{slurm['array_task_id']}"
    return m.slurm_job_id


def _jobs(store: Store, manifests: dict[str, Manifest]) -> set[str]:
    """The Slurm jobs of published stages: each stage's latest recorded job, else its manifest's."""
    recorded = latest_jobs(store)
    return {str(j) for stage, m in manifests.items() if (j := recorded.get(stage) or manifest_job(m))}


def _usage(groups: dict[str, set[str]]) -> tuple[dict[str, dict[str, Any]], str]:
    """sacct's usage summed per group of jobs, and a note on what is missing."""
    ids = sorted(set().union(*groups.values())) if groups else []
    if not ids:
        return {}, "These runs did not run under Slurm: no sacct accounting (the wall times above are all there is)."
    usage = sacct_usage(ids)
    if not usage:
        return {}, f"sacct is not available or knows none of the {len(ids)} Slurm job(s) of this sweep."
    out: dict[str, dict[str, Any]] = {}
    for name, jobs in groups.items():
        known = [usage[j] for j in sorted(jobs) if j in usage]
        out[name] = {
            "jobs": len(jobs),
            "jobs_known": len(known),
            **{k: sum(float(u[k]) for u in known) for k in ("elapsed_s", "cpu_hours", "gpu_hours")},
        }
    unknown = sum(1 for j in ids if j not in usage)
    return (
        out,
        f"sacct knows {len(ids) - unknown} of the {len(ids)} job(s); the others are left out." if unknown else "",
    )


def collect_cost(plan: SweepPlan, results: list[RunResult]) -> Cost:
    """The cost of the plan's runs (``results``, with their manifests) and shared units."""
    seconds: dict[str, dict[str, list[float | None]]] = {}
    groups: dict[str, set[str]] = {}
    for r in results:
        per_stage = seconds.setdefault(r.run.variant, {s: [] for s in r.run.stages})
        for stage, values in per_stage.items():
            m = r.manifests.get(stage)
            values.append(m.data.get("duration_s") if m is not None else None)
        jobs = _jobs(Store(r.run.run_dir, r.run.cfg.storage_options), r.manifests)
        groups.setdefault(r.run.variant, set()).update(jobs)
    units = []
    for u in plan.units:
        m = read_manifest(stage_store(u.cfg, u.stage), u.stage)
        units.append(
            {"key": u.key, "stage": u.stage, "runs": len(u.runs), "duration_s": m.data.get("duration_s") if m else None}
        )
        if m is not None:
            groups.setdefault(SHARED, set()).update(_jobs(Store(u.root, u.cfg.storage_options), {u.stage: m}))
    slurm, note = _usage({k: v for k, v in groups.items() if v})
    return Cost(seconds, units, slurm, note)
