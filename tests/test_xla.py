"""The ``xla`` backend on XLA's real CPU runtime with 4 virtual devices (SPMD data parallel).

Run with the ``.venv-tpu`` Python (tests/helpers/xla.py): training, compilation bound, replicas,
evaluate, preemption and exact resume (also on another device count), and XLA vs eager CPU.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

import tests.helpers.train as h
from tests.helpers.xla import require_xla_env, xla_cli, xla_env

pytestmark = pytest.mark.xla

#: Tiny model, 2 epochs of 12 steps; at most 2 x 2 shape buckets to keep compilation short.
SETTINGS = {
    **h.TRAIN,
    "train.backend": "xla",
    "train.epochs": 2,
    "train.shape_buckets.rows": 2,
    "train.shape_buckets.lengths": 2,
    "evaluate.backend": "xla",
    "evaluate.batch_size": 16,
    "runner.keep_work": True,
}
SPLITS = {"train": [40, 33, 25], "valid": [30], "test": [12]}


def _config(tmp_path: Path, name: str, **extra) -> tuple[Path, Path]:
    run = tmp_path / name
    h.publish_chunks(str(run), SPLITS, history_size=4, n_features=5)
    data: dict = {"run_dir": str(run)}
    for key, value in {**SETTINGS, **extra}.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, run


def _run(cfg: Path, *args: str, devices: int = 4) -> subprocess.CompletedProcess:
    proc = subprocess.run(xla_cli(str(cfg), *args), capture_output=True, text=True, env=xla_env(devices), timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc


def _extra(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "_MANIFEST.json").read_text())["extra"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "train" / "model.pt", weights_only=True)["state_dict"]


def _preempt(cfg: Path, at: str, devices: int = 4) -> int:
    """Run train, send SIGUSR2 when the log shows ``at``; the step it checkpointed at."""
    proc = subprocess.Popen(
        xla_cli(str(cfg), "--only", "train"),
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=xla_env(devices),
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if at in line:
            proc.send_signal(signal.SIGUSR2)
            break
    _, rest = proc.communicate(timeout=600)
    log = "".join(lines) + rest
    assert proc.returncode == 124, log[-5000:]
    ckpts = sorted((cfg.parent / cfg.stem / "train" / "_work" / "checkpoints").iterdir())
    return int(torch.load(ckpts[-1], weights_only=True)["step"])


def test_xla_data_parallel_train_evaluate_and_resume(tmp_path):
    """4 XLA:CPU devices: the loss falls, compilations = shapes met <= buckets and stop growing,
    replicas are identical, evaluate predicts every row; a run preempted by SIGUSR2 and resumed
    ends with the uninterrupted run's exact weights, and resuming on 2 devices stays within float
    noise of them (same batches, another reduction order)."""
    require_xla_env()
    cfg, ref = _config(tmp_path, "ref")
    proc = _run(cfg)
    assert "xla (4 CPU device(s), SPMD data parallel" in proc.stderr
    extra = _extra(ref, "train")
    assert extra["backend"] == "xla" and extra["devices"] == 4 and extra["steps"] == 24
    assert extra["replicas_identical"] is True
    buckets = extra["shape_buckets"]
    assert len(buckets["rows"]) * len(buckets["lengths"]) <= 4
    assert all(r % 4 == 0 for r in buckets["rows"])
    assert 1 <= extra["compilations"] == len(extra["shapes_used"]) <= 4
    records = [json.loads(line) for line in (ref / "train" / "metrics.jsonl").read_text().splitlines()]
    counts = [r["compilations"] for r in records]
    assert counts == sorted(counts) and counts[-1] == extra["compilations"]
    # after the warm-up (the first half), no new graph: every later step reused a compiled one
    assert counts[len(counts) // 2] == counts[-1], counts
    losses = [r["loss"] for r in records]
    assert np.mean(losses[-3:]) < np.mean(losses[:2]), losses
    assert 0 < extra["data_efficiency"] < 1

    ev = _extra(ref, "evaluate")
    assert ev["backend"] == "xla" and 1 <= ev["compilations"] <= 4
    for split, n in (("valid", 30), ("test", 12)):
        table = pq.read_table(ref / "evaluate" / "predictions" / f"{split}.parquet")
        assert table.num_rows == n and table.column("row_id").to_pylist() == sorted(table.column("row_id").to_pylist())
        probs = np.stack([table.column(t).to_numpy() for t in ("like", "retweet", "reply", "quote")])
        assert np.isfinite(probs).all() and ((probs > 0) & (probs < 1)).all()

    # preempted mid-epoch, then resumed on the same 4 devices: bit-exact
    cfg_b, run_b = _config(tmp_path, "run")
    stopped = _preempt(cfg_b, "step 4/24")
    assert 4 <= stopped < 24
    resumed = _run(cfg_b, "--only", "train")
    assert f"resumed from checkpoint ckpt-{stopped:09d}.pt" in resumed.stderr
    want, got = _weights(ref), _weights(run_b)
    assert all(torch.equal(want[k], got[k]) for k in want)

    # preempted on 4 devices, resumed on 2: same batches and state, float-noise differences only
    cfg_c, run_c = _config(tmp_path, "two", **{"model.dropout": 0.0})
    cfg_d, run_d = _config(tmp_path, "two_ref", **{"model.dropout": 0.0})
    _run(cfg_d, "--only", "train")
    _preempt(cfg_c, "step 4/24")
    _run(cfg_c, "--only", "train", devices=2)
    assert _extra(run_c, "train")["devices"] == 2
    want, got = _weights(run_d), _weights(run_c)
    worst = max(float((want[k].double() - got[k].double()).abs().max()) for k in want)  # bool buffers too
    assert worst < 1e-4, worst


def test_xla_matches_eager_cpu():
    """Same weights and batch: logits and loss on 4 XLA:CPU devices equal eager CPU's, both
    encodings and both head types (measured ~6e-7 on the logits, ~1e-7 on the loss)."""
    py = require_xla_env()
    proc = subprocess.run(
        [py, "-m", "tests.xla.equivalence"], capture_output=True, text=True, env=xla_env(4), timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    cases = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {(c["encoding"], c["heads"]) for c in cases} == {
        (e, k) for e in ("efficient", "naive") for k in ("single", "multi")
    }
    for c in cases:
        assert c["devices"] == 4 and c["logit_scale"] > 0.1, c
        assert c["max_abs_logit_diff"] < 1e-5, c
        assert c["max_abs_prob_diff"] < 1e-6, c
        assert c["loss_xla"] == pytest.approx(c["loss_cpu"], rel=1e-6, abs=1e-7), c
