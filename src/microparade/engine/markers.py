"""Stage markers: ``_INCOMPLETE.json`` (a stage is running, or was killed) and ``_FAILED.json``
(it raised), with the owner that wrote them: host, pid and Slurm job."""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

from ..errors import StageError
from ..storage import Store
from .manifest import INCOMPLETE, now_iso


def read_marker(store: Store, stage: str, name: str) -> dict[str, Any] | None:
    if not store.exists(stage, name):
        return None
    try:
        return store.read_json(f"{stage}/{name}")
    except (json.JSONDecodeError, OSError):
        return {"error": "unreadable marker"}


def owner_marker(stage: str, fingerprint: str) -> dict[str, Any]:
    """The ``_INCOMPLETE.json`` content for this process starting ``stage``."""
    return {
        "stage": stage,
        "fingerprint": fingerprint,
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


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def check_not_running(store: Store, stage: str) -> None:
    marker = read_marker(store, stage, INCOMPLETE)
    if not marker:
        return
    if marker.get("host") == socket.gethostname() and isinstance(marker.get("pid"), int):
        if marker["pid"] != os.getpid() and pid_alive(marker["pid"]):
            raise StageError(
                f"stage {stage} is already running in process {marker['pid']} on this host "
                f"(started {marker.get('started')}); wait for it or kill it first"
            )
