"""Job records of a run: ``{run_dir}/_slurm/jobs.json`` lists the Slurm jobs launched per stage,
so that ``status``, ``cancel`` and the report can find them."""

from __future__ import annotations

import json
from typing import Any

from ..config import Config
from ..engine.manifest import now_iso
from ..engine.status import StageStatus
from ..storage import Store
from .query import sacct_info

JOBS_FILE = "_slurm/jobs.json"


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
