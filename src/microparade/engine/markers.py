"""Stage markers: ``_INCOMPLETE.json`` (a stage is running, or was killed) and ``_FAILED.json``
(it raised), with the owner that wrote them: host, pid and Slurm job."""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

from ..storage import Store
from .manifest import now_iso


def read_marker(store: Store, stage: str, name: str) -> dict[str, Any] | None:
    if not store.exists(stage, name):
        return None
    try:
        return store.read_json(f"{stage}/{name}")
    except (json.JSONDecodeError, OSError):
        return {"error": "unreadable marker"}


def owner_marker(stage: str, fingerprint: str, lease_epoch: int) -> dict[str, Any]:
    """The ``_INCOMPLETE.json`` content for this process starting ``stage`` under lease ``lease_epoch``."""
    return {
        "stage": stage,
        "fingerprint": fingerprint,
        "lease_epoch": lease_epoch,
        "started": now_iso(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm": slurm_info(),
        "argv": sys.argv,
    }


def slurm_info() -> dict[str, Any] | None:
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return None
    keys = {
        "job_id": "SLURM_JOB_ID",
        "array_job_id": "SLURM_ARRAY_JOB_ID",
        "array_task_id": "SLURM_ARRAY_TASK_ID",
        "job_name": "SLURM_JOB_NAME",
        "nodelist": "SLURM_JOB_NODELIST",
        "partition": "SLURM_JOB_PARTITION",
        "restart_count": "SLURM_RESTART_COUNT",
        "cluster": "SLURM_CLUSTER_NAME",
    }
    return {k: env[v] for k, v in keys.items() if v in env}
