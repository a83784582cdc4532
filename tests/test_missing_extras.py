"""What this Python lacks for a config is one line naming the extra, exit code 2, before anything
runs: a URL scheme without its fsspec backend, torch-xla for the xla backend, dask-cuda for GPU
workers (distributed-ucxx for UCX: tests/test_ucx.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT

DEMO = ROOT / "configs" / "demo.yaml"


def hidden(tmp_path: Path, *packages: str) -> dict[str, str]:
    """An environment whose Python cannot import ``packages`` (shadowed by failing modules)."""
    shadow = tmp_path / "shadow"
    for name in packages:
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(f"raise ImportError('{name} hidden for the test')\n")
    return {"PYTHONPATH": str(shadow)}


def one_line_error(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("microparade: ") and "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize(("url", "package"), [("s3://bucket/run", "s3fs"), ("gs://bucket/run", "gcsfs")])
def test_a_cloud_url_without_its_backend(tmp_path, url, package):
    env = hidden(tmp_path, package)
    for command in ("run", "status"):
        proc = run_cli(command, DEMO, f"run_dir={url}", env=env, check=False)
        line = one_line_error(proc)
        assert f"{url}: {url.split(':')[0]}:// URLs need {package}, which is not installed" in line
        assert "pip install -e '.[cloud]' (or bash env/install.sh cloud)" in line


def test_raw_data_on_a_cloud_url_is_checked_before_anything_runs(tmp_path):
    proc = run_cli(
        "run",
        DEMO,
        f"run_dir={tmp_path / 'run'}",
        "data.generate=null",
        "data.raw.train=s3://bucket/train/*",
        env=hidden(tmp_path, "s3fs"),
        check=False,
    )
    assert "s3://bucket/train/*: s3:// URLs need s3fs" in one_line_error(proc)
    assert not (tmp_path / "run").exists()


def test_xla_backend_without_torch_xla(tmp_path):
    proc = run_cli("run", DEMO, f"run_dir={tmp_path / 'run'}", "train.backend=xla", check=False)
    assert "train.backend=xla needs torch-xla" in one_line_error(proc)


def test_gpu_workers_without_dask_cuda(tmp_path):
    proc = run_cli("run", DEMO, f"run_dir={tmp_path / 'run'}", "cluster.gpu=true", check=False)
    line = one_line_error(proc)
    assert "cluster.gpu=true needs dask_cuda" in line and "'.[gpu]'" in line
