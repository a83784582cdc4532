"""The user-level acceptance test: the demo config, shrunk, through every stage with the CLI.

Checks what a researcher relies on: all seven stages (plus generate) publish, `status` agrees, a
second run does nothing, and editing one stage's config reruns exactly that stage and everything
downstream of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT

STAGES = ["generate", "ingest", "text", "features", "chunks", "train", "evaluate", "report"]


def _overrides(run_dir: Path) -> list[str]:
    return [
        f"run_dir={run_dir}",
        "data.generate.rows=3000",
        "model.encoder=tiny",
        "train.max_steps=8",
        "train.checkpoint_every=4",
        "chunks.target_mb=0.3",
        "report.baseline_threads=1",
    ]


def _status(run_dir: Path, *extra: str) -> dict[str, dict]:
    out = run_cli("status", ROOT / "configs/demo.yaml", *_overrides(run_dir), *extra, "--json").stdout
    return {s["stage"]: s for s in json.loads(out)["stages"]}


@pytest.mark.slow
def test_demo_pipeline_end_to_end_and_resumable_reruns(tmp_path):
    run_dir = tmp_path / "demo"
    demo = ROOT / "configs/demo.yaml"
    out = run_cli("run", demo, *_overrides(run_dir)).stdout
    assert "ran " + ", ".join(STAGES) in out

    status = _status(run_dir)
    assert list(status) == STAGES
    assert all(s["state"] == "done" for s in status.values()), status
    assert status["ingest"]["rows"] == 3000
    assert (run_dir / "report" / "index.html").stat().st_size > 10_000
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert set(metrics["valid"]["ap"]) == {"like", "retweet", "reply", "quote", "avg"}
    chunks = json.loads((run_dir / "chunks" / "_MANIFEST.json").read_text())
    assert chunks["extra"]["splits"]["train"]["rows"] == 2400

    again = run_cli("run", demo, *_overrides(run_dir)).stdout
    assert "ran nothing" in again and "skipped " + ", ".join(STAGES) in again

    # a features-only change: features and everything downstream rerun, nothing upstream
    edit = "features.te_smoothing=10"
    status = _status(run_dir, edit)
    assert [s for s in STAGES if status[s]["state"] == "done"] == ["generate", "ingest", "text"]
    assert [s for s in STAGES if status[s]["state"] == "stale"] == ["features", "chunks", "train", "evaluate", "report"]
    out = run_cli("run", demo, *_overrides(run_dir), edit).stdout
    assert "ran features, chunks, train, evaluate, report" in out
    assert "skipped generate, ingest, text" in out
