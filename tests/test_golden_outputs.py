"""The data stages' published bytes are pinned: a small generated run (several ingest parts, user
partitions and chunks) must publish exactly the files, rows and sha256 recorded in
``tests/data/golden/preprocess.json``. A performance change that alters one byte fails here; a change
that means to alter them bumps the stage's format version, says why, and regenerates the record:

    MICROPARADE_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_outputs.py

The bytes depend on the versions of pyarrow, numpy and pandas, which env/requirements-cpu.txt pins;
the record names the versions it was made with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT

GOLDEN = ROOT / "tests" / "data" / "golden" / "preprocess.json"
STAGES = ("generate", "ingest", "text", "features", "chunks")


def _config(tmp_path: Path) -> Path:
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "data": {"generate": {"rows": 8000, "seed": 11, "rows_per_file": 2000}},
        "cluster": {"n_workers": 2, "threads_per_worker": 1, "processes": False, "dashboard": False},
        "ingest": {"blocksize": "256KiB"},
        "history": {"size": 4},
        "text": {"max_length": 48, "partition_rows": 3000},
        "chunks": {"target_mb": 0.3},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _versions() -> dict[str, str]:
    return {"pyarrow": pa.__version__, "numpy": np.__version__, "pandas": pd.__version__}


def _published(run_dir: Path) -> dict[str, list[list]]:
    out = {}
    for stage in STAGES:
        manifest = json.loads((run_dir / stage / "_MANIFEST.json").read_text())
        out[stage] = [[f["path"], f["rows"], f["sha256"]] for f in manifest["files"]]
    return out


def test_data_stages_publish_the_recorded_bytes(tmp_path):
    run_cli("run", _config(tmp_path), "--until", "chunks")
    found = {"versions": _versions(), "stages": _published(tmp_path / "run")}
    if os.environ.get("MICROPARADE_REGENERATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(found, indent=1) + "\n")
        pytest.fail(f"regenerated {GOLDEN}; rerun without MICROPARADE_REGENERATE_GOLDEN")
    golden = json.loads(GOLDEN.read_text())
    assert found["versions"] == golden["versions"], (
        "the data libraries differ from those the record was made with (env/requirements-cpu.txt pins them)"
    )
    for stage in STAGES:
        assert found["stages"][stage] == golden["stages"][stage], f"{stage}: published bytes changed"
    assert len(golden["stages"]["chunks"]) > 3 and len(golden["stages"]["ingest"]) > 4, "the run is multi-partition"
