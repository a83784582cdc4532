"""Dask over UCX on CPU workers under the real local Slurm (tests/slurm/start.sh): the
preprocessing stages (generate → ingest → text → features → chunks) give the bytes of a local TCP
cluster with

- ``cluster.kind=scheduler_file``: scheduler and one worker per node started over UCX by
  ``slurm/dask-cluster.sh`` inside a two-node allocation (its wrapper form, one allocation for
  the five stages);
- ``cluster.kind=jobqueue``: dask-jobqueue worker jobs that configure UCX from the config.

The two emulated nodes share this host: UCX runs over TCP on loopback (docs/slurm.md says what
only a real InfiniBand fabric can show).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT
from tests.helpers.slurm_cluster import jobqueue_overrides, sbatch, wait_jobs
from tests.test_ucx import published

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1800)]

CONFIG = ROOT / "configs" / "demo.yaml"


def overrides(run: Path, *extra: str) -> list[str]:
    return [
        f"run_dir={run / 'run'}",
        f"slurm.log_dir={run / 'logs'}",
        "data.generate.rows=3000",
        "chunks.target_mb=0.3",
        "cluster.memory_limit=1GiB",
        *extra,
    ]


def test_scheduler_file_and_jobqueue_clusters_over_ucx_give_the_tcp_bytes(slurm, tmp_path):
    ref, sf, jq = tmp_path / "tcp", tmp_path / "scheduler_file", tmp_path / "jobqueue"
    for p in (ref, sf, jq):
        (p / "logs").mkdir(parents=True)
    ucx_sf = overrides(sf, "cluster.kind=scheduler_file", "cluster.protocol=ucx")
    job = sbatch(
        [
            "--nodes=2",
            "--cpus-per-task=1",
            "--mem=1500M",
            "--time=15",
            f"--output={sf / 'logs' / 'job-%j.out'}",
            f"--export=ALL,MICROPARADE_HOME={ROOT}",
            str(ROOT / "slurm" / "dask-cluster.sh"),
            str(CONFIG),
            *ucx_sf,
            "--",
            sys.executable,
            "-m",
            "microparade.cli",
            "run",
            str(CONFIG),
            *ucx_sf,
            "--until",
            "chunks",
        ],
        env={"MICROPARADE_PYTHON": sys.executable},
    )
    run_cli("run", CONFIG, *overrides(ref, "cluster.n_workers=2"), "--until", "chunks")
    out = run_cli(
        "run",
        CONFIG,
        *overrides(
            jq,
            *jobqueue_overrides(jq / "logs"),
            "cluster.protocol=ucx",
        ),
        "--until",
        "chunks",
    )
    assert "scheduler ucx://" in out.stderr, out.stderr[-3000:]
    assert "export DASK_DISTRIBUTED_UCXX__TCP=True" in out.stderr  # the worker jobs' script
    state = wait_jobs([job], timeout=900)[job]
    log = (sf / "logs" / f"job-{job}.out").read_text()
    assert state == "COMPLETED", log[-3000:]
    scheduler = json.loads((sf / "logs" / f"dask-{job}" / "scheduler.json").read_text())
    assert scheduler["address"].startswith("ucx://"), scheduler
    assert "2 worker(s): node1, node2" in log, log[-3000:]

    expected = published(ref / "run")
    assert published(sf / "run") == expected
    assert published(jq / "run") == expected
