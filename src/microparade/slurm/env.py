"""The Slurm job this process runs in, from Slurm's environment variables (a leaf module)."""

from __future__ import annotations

import os
from typing import Any


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

