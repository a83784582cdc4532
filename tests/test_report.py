"""The report stage, built by the real runner from hand-made upstream outputs.

Upstream stages are replaced by small test-only stage modules (registered by monkeypatching
``microparade.stages.STAGES``) that publish, through the runner, what the real stages publish:
chunks per docs/data-format.md §7 whose ``features`` carry signal about the labels, a
``train/metrics.jsonl``, an ``evaluate/metrics.json`` and the manifests' ``extra`` statistics.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.machinery
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import microparade.engine.registry as stages_mod
from microparade.config import build_config
from microparade.engine import read_manifest, run_pipeline
from microparade.metrics import compute_metrics
from microparade.recsys_format import TARGETS
from microparade.storage import Store

N_FEATURES = 6
H = 4
BASE_LOGIT = np.array([0.0, -1.2, -1.8, -2.2])  # like, retweet, reply, quote
SPLIT_ROWS = {"train": [1000, 1000, 1000], "valid": [800, 700], "test": [400]}


# ----------------------------------------------------------------------------------------------
# hand-made upstream data
# ----------------------------------------------------------------------------------------------
def _split_data(split: str, n: int, seed: int):
    """Features, true logits, labels and follower counts; labels depend on the features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    w = np.array(
        [
            [1.6, 0.0, 0.0, 0.0, 0.6, 0.0],
            [0.0, 1.6, 0.0, 0.0, 0.6, 0.0],
            [0.0, 0.0, 1.6, 0.0, 0.0, 0.6],
            [0.0, 0.0, 0.0, 1.6, 0.0, 0.6],
        ]
    )
    logits = BASE_LOGIT + x.astype(np.float64) @ w.T
    labels = (rng.random((n, 4)) < 1 / (1 + np.exp(-logits))).astype(np.int8)
    afc = np.exp(rng.uniform(0, np.log(3e6), n)).astype(np.int64)
    return x, logits, labels, afc


def _chunk_table(split: str, part: int, n: int) -> pa.Table:
    x, _, labels, afc = _split_data(split, n, _seed(split, part))
    hist_tokens = [[[11, 12]] * 2 + [[]] * (H - 2)] * n
    cols = {
        "row_id": pa.array(np.arange(n, dtype=np.int64) + (part << 40)),
        "tweet_id": pa.array([f"{i:032X}" for i in range(n)]),
        "b_user_id": pa.array([f"{i % 37:032X}" for i in range(n)]),
        "a_follower_count": pa.array(afc),
    }
    for j, t in enumerate(TARGETS):
        cols[t] = pa.nulls(n, pa.int8()) if split == "test" else pa.array(labels[:, j])
    cols.update(
        tokens=pa.array([[5, 6, 7]] * n, pa.list_(pa.int32())),
        hour=pa.array(np.full(n, 13, dtype=np.int8)),
        hist_tokens=pa.array(hist_tokens, pa.list_(pa.list_(pa.int32()))),
        hist_engagement=pa.array([[1, 2, 0, 0]] * n, pa.list_(pa.int8())),
        hist_hour=pa.array([[3, 4, 24, 24]] * n, pa.list_(pa.int8())),
        hist_mask=pa.array([[True, True, False, False]] * n, pa.list_(pa.bool_())),
        hist_len=pa.array(np.full(n, 2, dtype=np.int8)),
        features=pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), N_FEATURES),
    )
    return pa.table(cols)


def _seed(split: str, part: int) -> int:
    return {"train": 100, "valid": 200, "test": 300}[split] + part


def _valid_model_predictions():
    """The 'model' scored by the fake evaluate stage: the true logits plus noise."""
    labels, preds, afcs = [], [], []
    for part, n in enumerate(SPLIT_ROWS["valid"]):
        _, logits, y, afc = _split_data("valid", n, _seed("valid", part))
        rng = np.random.default_rng(7 + part)
        preds.append(1 / (1 + np.exp(-(logits + rng.normal(0, 0.3, logits.shape)))))
        labels.append(y)
        afcs.append(afc)
    return np.concatenate(labels), np.concatenate(preds), np.concatenate(afcs)


def _write(ctx, rel: str, data: bytes) -> None:
    with ctx.open_out(rel) as f:
        f.write(data)


def _fake_ingest(ctx) -> None:
    splits = {}
    for s, parts in SPLIT_ROWS.items():
        rows = sum(parts)
        bad = {"train": {"field_count": 3, "bad_int": 1}, "valid": {"field_count": 2}, "test": {}}[s]
        splits[s] = {
            "rows_in": rows + sum(bad.values()),
            "rows_out": rows,
            "rows_quarantined": sum(bad.values()),
            "quarantined_by_reason": bad,
            "files": [f"/raw/{s}/part-00000"],
        }
    _write(ctx, "quarantine/train.parquet", _table_bytes(pa.table({"line": pa.array([3, 9], pa.int64())})))
    ctx.extra.update(splits=splits)


def _table_bytes(t: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(t, sink)
    return sink.getvalue().to_pybytes()


def _fake_text(ctx) -> None:
    _write(ctx, "valid/part-00000.parquet", _table_bytes(pa.table({"row_id": pa.array([1, 2], pa.int64())})))
    ctx.extra.update(
        history={"size": H, "window": "past", "prefix": False, "sources": ["train", "valid"]},
        hist_len_hist={
            "train": [1500, 700, 500, 200, 100],
            "valid": [900, 300, 200, 80, 20],
            "test": [300, 60, 30, 10, 0],
        },
    )


def _fake_features(ctx) -> None:
    _write(ctx, "valid/part-00000.parquet", _table_bytes(pa.table({"row_id": pa.array([1, 2], pa.int64())})))
    ctx.extra.update(feature_names=[f"f{i}" for i in range(N_FEATURES)])


def _fake_chunks(ctx) -> None:
    splits = {}
    k = 0
    for s, parts in SPLIT_ROWS.items():
        rates = np.zeros(4)
        for part, n in enumerate(parts):
            t = _chunk_table(s, part, n)
            _write(ctx, f"{s}/chunk-{k:05d}.parquet", _table_bytes(t))
            ctx.file_meta[f"{s}/chunk-{k:05d}.parquet"] = {"split": s}
            k += 1
            if s != "test":
                rates += np.array([t.column(c).to_numpy().sum() for c in TARGETS])
        splits[s] = {
            "rows": sum(parts),
            "chunks": len(parts),
            "label_rates": None if s == "test" else {c: float(r / sum(parts)) for c, r in zip(TARGETS, rates)},
        }
    ctx.extra.update(
        schema_version=1,
        feature_names=[f"f{i}" for i in range(N_FEATURES)],
        normalization={"mean": [0.0] * N_FEATURES, "std": [1.0] * N_FEATURES},
        history_size=H,
        max_length=64,
        encoder_tokenizer="minilm",
        special_tokens={"cls": 101, "sep": 102, "pad": 0},
        splits=splits,
    )


def _fake_train(ctx) -> None:
    lines = []
    for step in range(0, 300, 5):
        lines.append(
            json.dumps(
                {
                    "step": step,
                    "loss": 0.7 * np.exp(-step / 120) + 0.25 + 0.02 * np.sin(step),
                    "lr": 1e-5 * min(1.0, (step + 5) / 50),
                    "examples_per_s": 410.0 + (step % 7),
                    "data_efficiency": 0.62 + step / 3000,
                }
            )
        )
    _write(ctx, "metrics.jsonl", ("\n".join(lines) + "\n").encode())
    _write(ctx, "model.pt", b"weights")
    ctx.extra.update(steps=295, best_step=290)


def _fake_evaluate(ctx) -> None:
    labels, preds, afc = _valid_model_predictions()
    _write(ctx, "metrics.json", json.dumps({"valid": compute_metrics(labels, preds, afc)}).encode())


FAKES = {
    "ingest": _fake_ingest,
    "text": _fake_text,
    "features": _fake_features,
    "chunks": _fake_chunks,
    "train": _fake_train,
    "evaluate": _fake_evaluate,
}


@pytest.fixture
def fake_pipeline(monkeypatch):
    """Replace the upstream stages by the fakes above; ``use(names)`` keeps only those + report."""

    def use(names: tuple[str, ...]) -> None:
        specs = []
        for spec in stages_mod.STAGES:
            if spec.name == "report":
                specs.append(spec)
            elif spec.name in names:
                mod_name = f"_microparade_test_fake_{spec.name}"
                mod = types.ModuleType(mod_name)
                mod.run = FAKES[spec.name]
                mod.__spec__ = importlib.machinery.ModuleSpec(mod_name, None)
                monkeypatch.setitem(sys.modules, mod_name, mod)
                specs.append(dataclasses.replace(spec, module=mod_name))
        monkeypatch.setattr(stages_mod, "STAGES", tuple(specs))

    return use


def _config(run_dir: str):
    # One OpenMP thread keeps the baseline fast on a busy shared machine.
    return build_config({"run_dir": run_dir, "report": {"baseline_max_rows": 2000, "seed": 1, "baseline_threads": 1}})


EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


# ----------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------
def test_report_from_all_upstream_stages(tmp_path, fake_pipeline, monkeypatch):
    fake_pipeline(tuple(FAKES))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # the runner records it in every manifest
    cfg = _config(str(tmp_path / "run"))
    assert run_pipeline(cfg)["report"] == "ran"
    rdir = tmp_path / "run" / "report"
    page = (rdir / "index.html").read_text()
    md = (rdir / "report.md").read_text()
    summary = json.loads((rdir / "summary.json").read_text())
    manifest = read_manifest(Store(cfg.run_dir), "report")
    published = {f["path"] for f in manifest.files}
    assert {"index.html", "report.md", "summary.json", "plots/train_curves.png"} <= published

    # Self-contained: no external resources, no scripts, every image embedded as a PNG data URI.
    assert not EXTERNAL.search(page)
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    imgs = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(imgs) >= 4
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("results_groups_valid", "train_curves", "data_history_lengths", "data_chunk_sizes"):
        assert f'id="fig-{name}"' in page
        assert f"](plots/{name}.png)" in md
        assert f"plots/{name}.png" in published
        assert (rdir / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"

    # The model's metrics (from evaluate/metrics.json) appear in both documents.
    labels, preds, afc = _valid_model_predictions()
    model = compute_metrics(labels, preds, afc)
    for t in (*TARGETS, "avg"):
        for text in (page, md):
            assert f"{model['ap'][t]:.4f}" in text
            assert f"{model['rce'][t]:.2f}" in text
    assert f"{model['ap_fair']['avg']:.4f}" in page
    assert summary["metrics"]["valid"]["model"]["ap"] == model["ap"]

    # The baseline row exists, matches summary.json, and beats the prior (features carry signal).
    base = summary["metrics"]["valid"]["baseline"]
    prior = summary["metrics"]["valid"]["prior"]
    assert summary["baseline"]["status"] == "done"
    assert summary["baseline"]["train_rows"] == 2000 and summary["baseline"]["train_rows_available"] == 3000
    assert base["rows"] == 1500
    for text in (page, md):
        assert "GBDT baseline (features only)" in text
        assert f"{base['ap']['avg']:.4f}" in text and f"{base['rce']['avg']:.2f}" in text
    assert base["ap"]["avg"] > prior["ap"]["avg"] + 0.1
    assert base["rce"]["avg"] > 10.0 and prior["rce"]["avg"] == 0.0
    for t in TARGETS:
        assert base["ap"][t] > prior["ap"][t] == pytest.approx(model["positive_rate"][t])
    # The model (true logits + noise) is better than trees on 2,000 rows; the report says so.
    assert summary["model_minus_baseline"]["valid"]["ap_avg"] > 0
    assert "the model beats the features-only baseline" in page

    # Paper reference, clearly labelled; prior row; stage table with the Slurm job id.
    assert "not comparable to synthetic data" in page and "0.1539" in page and "0.2287" in md
    assert "prior (positive rate)" in page
    assert "4242" in page and summary["stages"]["chunks"]["slurm_job_id"] == "4242"
    assert summary["stages"]["generate"] is None and "not used" in page
    # Data statistics: quarantine reasons, history histogram counts, chunk table, training stats.
    assert "field_count" in page and "bad_int" in md
    assert "1,500" in page  # train rows with 0 valid history slots
    assert summary["train"]["last_step"] == 295 and summary["train"]["records"] == 60
    assert "run_dir: " + cfg.run_dir in page and "baseline_max_rows: 2000" in page

    # Deterministic: rebuilding the report from the same inputs gives the same bytes.
    before = {p: (rdir / p).read_bytes() for p in ("index.html", "report.md", "summary.json", "plots/train_curves.png")}
    assert run_pipeline(cfg, only="report", force=True)["report"] == "ran"
    for p, data in before.items():
        assert (rdir / p).read_bytes() == data, p


def test_report_with_chunks_only(fake_pipeline):
    """Without train/evaluate the report still builds: baseline on valid, 'stage not run' notes."""
    fake_pipeline(("chunks",))
    cfg = _config("memory://microparade-test-report/chunks-only")
    cfg.storage_options = {"auth_secret": "hunter2"}  # ignored by memory://; must not be printed
    run_pipeline(cfg)
    store = Store(cfg.run_dir)
    page = store.read_bytes("report/index.html").decode()
    summary = json.loads(store.read_bytes("report/summary.json"))
    assert summary["stages"]["evaluate"] is None and summary["stages"]["train"] is None
    assert summary["metrics"]["valid"]["model"] is None
    assert summary["metrics"]["valid"]["baseline"]["ap"]["avg"] > summary["metrics"]["valid"]["prior"]["ap"]["avg"]
    assert "Model metrics: stage not run." in page and "Training curves: stage not run." in page
    assert "text: stage not run." in page
    assert not EXTERNAL.search(page)
    assert "hunter2" not in page and "auth_secret: &lt;redacted&gt;" in page
    # The test split has no labels: the baseline scores only valid.
    assert set(summary["metrics"]) == {"valid"}


def test_report_without_upstream_stages(tmp_path, fake_pipeline):
    fake_pipeline(())
    cfg = build_config({"run_dir": str(tmp_path / "run"), "report": {"baseline": False}})
    run_pipeline(cfg)
    rdir = Path(cfg.run_dir) / "report"
    page = (rdir / "index.html").read_text()
    summary = json.loads((rdir / "summary.json").read_text())
    assert summary["metrics"] == {} and summary["baseline"]["status"].startswith("disabled")
    assert all(v is None for v in summary["stages"].values())
    assert page.count("stage not run") >= 6
    assert "<img" not in page
    assert (rdir / "report.md").read_text().startswith("# MicroParade run report")
