"""Starting from chunks made elsewhere (``data.chunks``): train, evaluate and report run from a copy of
another run's chunks with the metrics of that run; a copy that does not verify or validate is
refused with the reason; chunks copied into a run dir without ``data.chunks`` are refused as
"missing upstream", not as stale."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT

pytestmark = pytest.mark.slow


def _config(path: Path) -> Path:
    cfg = {
        "run_dir": str(path.parent / "original"),
        "data": {"generate": {"rows": 3000, "seed": 5}},
        "cluster": {"n_workers": 1, "threads_per_worker": 2, "processes": False, "dashboard": False},
        "history": {"size": 4},
        "text": {"max_length": 48},
        "chunks": {"target_mb": 0.2},
        "model": {"encoder": "tiny"},
        "train": {"batch_size": 16, "max_steps": 6, "checkpoint_every": 3, "log_every": 2, "eval_every": 0},
        "report": {"baseline": False},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """A frozen copy of the package (fingerprints stay fixed while the tree changes), one torch thread
    (CPU training is bit-reproducible at a fixed thread count)."""
    dst = tmp_path_factory.mktemp("frozen-src")
    shutil.copytree(ROOT / "src" / "microparade", dst / "microparade", ignore=shutil.ignore_patterns("__pycache__"))
    return {"PYTHONPATH": str(dst), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def original(tmp_path_factory, env) -> Path:
    """A complete run: its chunks are what the tests copy elsewhere."""
    cfg = _config(tmp_path_factory.mktemp("import") / "config.yaml")
    run_cli("run", cfg, env=env)
    return cfg


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "evaluate" / "metrics.json").read_text())


def _model_sha(run_dir: Path) -> str:
    files = json.loads((run_dir / "train" / "_MANIFEST.json").read_text())["files"]
    return next(f["sha256"] for f in files if f["path"] == "model.pt")


def test_train_and_evaluate_from_chunks_copied_to_another_path(original, env, tmp_path):
    source = original.parent / "original"
    shutil.copytree(source / "chunks", tmp_path / "elsewhere" / "chunks")
    fresh = tmp_path / "fresh"
    args = ["run", original, f"run_dir={fresh}", f"data.chunks={tmp_path / 'elsewhere'}"]
    out = run_cli(*args, env=env)
    assert out.stdout.startswith("microparade: ran train, evaluate, report; skipped nothing"), out.stdout
    assert f"[chunks] imported: {tmp_path / 'elsewhere' / 'chunks'} (3,000 rows, verified)" in out.stderr
    assert _metrics(fresh) == _metrics(source)
    assert _model_sha(fresh) == _model_sha(source)
    assert sorted(p.name for p in fresh.iterdir() if not p.name.startswith("_")) == [
        "config.yaml",
        "evaluate",
        "report",
        "train",
    ], "nothing upstream of the chunks is computed"
    status = json.loads(run_cli("status", *args[1:], "--json", env=env).stdout)
    rows = {s["stage"]: s for s in status["stages"]}
    assert list(rows) == ["chunks", "train", "evaluate", "report"]
    assert rows["chunks"]["state"] == "done" and rows["chunks"]["reason"].startswith("imported from ")
    assert all(rows[s]["state"] == "done" for s in ("train", "evaluate", "report"))
    again = run_cli(*args, env=env)
    assert again.stdout.startswith("microparade: ran nothing; skipped train, evaluate, report")
    refused = run_cli(*args, "--only", "chunks", env=env, check=False)
    assert refused.returncode == 1
    assert f"stage chunks is imported (data.chunks) from {tmp_path / 'elsewhere'}: this run only reads it" in (
        refused.stderr
    )


def test_chunks_copied_into_a_run_dir_are_missing_upstream_not_stale(original, env, tmp_path):
    fresh = tmp_path / "fresh"
    shutil.copytree(original.parent / "original" / "chunks", fresh / "chunks")
    proc = run_cli("run", original, f"run_dir={fresh}", "--only", "train", env=env, check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "stale" not in last, last
    assert (
        f"input chunks at {fresh / 'chunks'} cannot be trusted here: input ingest, text, features never run here"
        in (last)
    )
    assert "(missing upstream); to start from chunks made elsewhere, set data.chunks=ROOT" in last
    # Pointing data.chunks at the run dir itself trusts them for their manifest and files.
    out = run_cli("run", original, f"run_dir={fresh}", f"data.chunks={fresh}", "--until", "train", env=env)
    assert out.stdout.startswith("microparade: ran train;")
    assert _model_sha(fresh) == _model_sha(original.parent / "original")


def test_a_copy_that_does_not_verify_or_validate_is_refused(original, env, tmp_path):
    copy = tmp_path / "copy" / "chunks"
    shutil.copytree(original.parent / "original" / "chunks", copy)
    args = ["run", original, f"run_dir={tmp_path / 'fresh'}", f"data.chunks={copy.parent}"]
    manifest_path = copy / "_MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())
    # The first train chunk: the schema check reads the first chunk of each split.
    entry = min((f for f in manifest["files"] if f["split"] == "train"), key=lambda f: f["path"])
    chunk = copy / entry["path"]
    good = chunk.read_bytes()

    chunk.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size: only sha256 tells
    proc = run_cli(*args, "runner.verify=sha256", env=env, check=False)
    assert proc.returncode == 1
    assert (
        f"data.chunks: the chunks at {copy} cannot be used: 1 file(s) fail verification: chunks/{entry['path']}: "
        in (proc.stderr)
    )

    # A chunk without the hour column, with a manifest that describes it: the schema check catches it.
    table = pq.read_table(_bytes_file(tmp_path, good)).drop_columns(["hour"])
    pq.write_table(table, chunk)
    entry.update(bytes=chunk.stat().st_size, sha256=hashlib.sha256(chunk.read_bytes()).hexdigest())
    manifest_path.write_text(json.dumps(manifest))
    proc = run_cli(*args, env=env, check=False)
    assert proc.returncode == 1
    assert "does not have the chunk schema of docs/data-format.md §7: column hour is missing" in proc.stderr

    manifest_path.unlink()
    proc = run_cli(*args, env=env, check=False)
    assert proc.returncode == 1
    assert f"nothing is published at {copy} (no _MANIFEST.json)" in proc.stderr


def _bytes_file(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "chunk.parquet"
    p.write_bytes(data)
    return p
