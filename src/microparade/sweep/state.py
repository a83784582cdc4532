"""Where a sweep stands: the state of each shared unit and of each run's model stages, read from
the stage directories (the one test of "done" is :mod:`microparade.engine.status`'s)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..engine.layout import stage_store
from ..engine.status import StageStatus, compute_status
from .plan import SharedUnit, SweepPlan, SweepRun


def unit_status(unit: SharedUnit, verify: str | None = "size") -> StageStatus:
    return next(s for s in compute_status(unit.cfg, verify=verify) if s.name == unit.stage)


def unit_done(unit: SharedUnit) -> bool:
    return unit_status(unit).state == "done"


def run_statuses(run: SweepRun, verify: str | None = "size") -> list[StageStatus]:
    """The statuses of the run's model stages (its shared stages are the units')."""
    return [s for s in compute_status(run.cfg, verify=verify) if s.name in run.stages]


def run_pending(run: SweepRun) -> bool:
    return any(s.state != "done" for s in run_statuses(run))


def run_metrics(run: SweepRun, split: str) -> dict[str, Any] | None:
    """``metrics.json[split]`` of the run's evaluate stage, None until it is published."""
    store = stage_store(run.cfg, "evaluate")
    if not store.exists("evaluate", "_MANIFEST.json") or not store.exists("evaluate", "metrics.json"):
        return None
    data = json.loads(store.read_bytes("evaluate/metrics.json"))
    return data.get(split)


@dataclass
class RunState:
    run: SweepRun
    #: ``done``, or the first model stage not done and its state (``train: failed``).
    state: str
    #: The stage to look at (first not done, else the last).
    stage: str
    statuses: list[StageStatus]
    avg_ap: float | None
    avg_rce: float | None


def run_state(run: SweepRun, split: str) -> RunState:
    statuses = run_statuses(run)
    pending = [s for s in statuses if s.state != "done"]
    first = pending[0] if pending else statuses[-1]
    state = "done" if not pending else f"{first.name}: {first.state}"
    metrics = run_metrics(run, split) if not pending or first.name not in ("train", "evaluate") else None
    ap = (metrics or {}).get("ap", {}).get("avg")
    rce = (metrics or {}).get("rce", {}).get("avg")
    return RunState(run, state, first.name, statuses, ap, rce)


def sweep_states(plan: SweepPlan) -> tuple[list[tuple[SharedUnit, StageStatus]], list[RunState]]:
    split = plan.experiment.spec.report.split
    return [(u, unit_status(u)) for u in plan.units], [run_state(r, split) for r in plan.runs]
