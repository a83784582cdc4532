"""Which stages a launcher submits: those not done, with the job already queued for each, if any."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config
from ..engine.layout import is_read_only
from ..engine.registry import StageSpec, pipeline
from ..engine.status import StageStatus, compute_status
from ..storage import Store
from .query import queued_jobs
from .records import latest_jobs


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
    statuses = {s.name: s for s in compute_status(cfg, verify="size")}
    todo = [
        spec
        for spec in pipeline(cfg)
        if (not stages or spec.name in stages)
        and statuses[spec.name].state != "done"
        and not is_read_only(cfg, spec.name)  # published elsewhere, never by this run
    ]
    recorded = latest_jobs(store)
    queued = queued_jobs() if any(s.name in recorded for s in todo) else {}
    out = []
    for spec in todo:
        job = recorded.get(spec.name)
        out.append(PendingStage(spec, statuses[spec.name], job if job in queued else None))
    return out
