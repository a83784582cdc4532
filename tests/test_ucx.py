"""Dask over UCX (UCXX through distributed-ucxx) on CPU workers: the preprocessing stages on a
local UCX cluster produce the bytes the TCP cluster produces. The local Slurm's scheduler_file and
jobqueue clusters over UCX are in tests/test_slurm_pipeline.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from microparade.compute.ucx import ucx_settings
from microparade.config import build_config
from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT

DATA_STAGES = ("generate", "ingest", "text", "features", "chunks")


def published(run_dir: Path) -> dict[str, dict[str, str]]:
    """``{stage: {path: sha256}}`` of the data stages' published files."""
    out = {}
    for stage in DATA_STAGES:
        manifest = json.loads((run_dir / stage / "_MANIFEST.json").read_text())
        out[stage] = {f["path"]: f["sha256"] for f in manifest["files"]}
    return out


@pytest.mark.slow
def test_local_ucx_cluster_gives_the_tcp_cluster_bytes(tmp_path):
    common = [
        "data.generate.rows=3000",
        "chunks.target_mb=0.3",
        "cluster.n_workers=2",
        "--until",
        "chunks",
    ]
    tcp = run_cli("run", ROOT / "configs" / "demo.yaml", f"run_dir={tmp_path / 'tcp'}", *common)
    ucx = run_cli("run", ROOT / "configs" / "demo.yaml", f"run_dir={tmp_path / 'ucx'}", "cluster.protocol=ucx", *common)
    assert "scheduler tcp://" in tcp.stderr
    assert "scheduler ucx://" in ucx.stderr, ucx.stderr[-3000:]
    assert published(tmp_path / "ucx") == published(tmp_path / "tcp")
    assert len(published(tmp_path / "ucx")["chunks"]) >= 3


def test_ucx_without_distributed_ucxx_is_one_clear_error(tmp_path):
    # A Python that cannot import distributed_ucxx: the package is hidden by a shadowing module.
    shadow = tmp_path / "shadow"
    (shadow / "distributed_ucxx").mkdir(parents=True)
    (shadow / "distributed_ucxx" / "__init__.py").write_text("raise ImportError('hidden for the test')\n")
    proc = run_cli(
        "run",
        ROOT / "configs" / "demo.yaml",
        f"run_dir={tmp_path / 'r'}",
        "data.generate.rows=300",
        "cluster.protocol=ucx",
        "--until",
        "ingest",
        env={"PYTHONPATH": str(shadow)},
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cluster.protocol=ucx needs distributed-ucxx" in proc.stderr and "Traceback" not in proc.stderr


def test_ucx_settings_follow_the_config_and_keep_the_sites(monkeypatch):
    import dask

    monkeypatch.delenv("DASK_DISTRIBUTED_UCXX__TCP", raising=False)
    monkeypatch.setenv("DASK_DISTRIBUTED_UCXX__INFINIBAND", "True")  # a site's choice (slurm/site.sh)
    cfg = build_config({"cluster": {"protocol": "ucx"}})
    with ucx_settings(cfg):
        assert dask.config.get("distributed-ucxx.tcp") is True
        assert dask.config.get("distributed-ucxx.cuda-copy") is False
        assert dask.config.get("distributed-ucxx.nvlink") is False
        assert os.environ["DASK_DISTRIBUTED_UCXX__TCP"] == "True"  # for the worker processes
        assert os.environ["DASK_DISTRIBUTED_UCXX__INFINIBAND"] == "True"  # kept
    assert "DASK_DISTRIBUTED_UCXX__TCP" not in os.environ
    assert os.environ["DASK_DISTRIBUTED_UCXX__INFINIBAND"] == "True"
    with ucx_settings(build_config({})):  # tcp: nothing changes
        assert "DASK_DISTRIBUTED_UCXX__TCP" not in os.environ
