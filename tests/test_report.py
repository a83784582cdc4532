"""The report stage, built by the real runner from hand-made upstream outputs.

Upstream stages are replaced by small test-only stage modules (registered by monkeypatching
``microparade.stages.STAGES``) that publish, through the runner, what the real stages publish:
chunks per docs/data-format.md §7 whose ``features`` carry signal about the labels, a
``train/metrics.jsonl``, the evaluate stage's ``metrics.json``, ``predictions/{split}.parquet`` and
``calibration.json`` (or, like runs from before calibration, predictions without the calibration
columns and no ``calibration.json``), and the manifests' ``extra`` statistics.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import importlib.machinery
import json
import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import microparade.engine.registry as stages_mod
from microparade.calibration import fit_calibrator, holdout_mask, reliability_bins
from microparade.config import build_config
from microparade.engine import read_manifest, run_pipeline
from microparade.metrics import compute_metrics
from microparade.recsys_format import TARGETS
from microparade.stages.report.common import SplitScores, verdict
from microparade.stages.report.history import HISTORY_FEATURES, history_statistics
from microparade.stages.report.sections_results import headline
from microparade.storage import Store

N_FEATURES = 6
H = 4
BASE_LOGIT = np.array([0.0, -1.2, -1.8, -2.2])  # like, retweet, reply, quote
SPLIT_ROWS = {"train": [1000, 1000, 1000], "valid": [800, 700], "test": [400]}


# ----------------------------------------------------------------------------------------------
# hand-made upstream data
# ----------------------------------------------------------------------------------------------
def _history(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Random histories (docs/data-format.md §5): 0..H valid slots, engagement bits, hours; and the
    candidate tweet's hour."""
    hist_len = rng.integers(0, H + 1, n)
    mask = np.arange(H) < hist_len[:, None]
    return {
        "hist_len": hist_len.astype(np.int8),
        "hist_mask": mask,
        "hist_engagement": np.where(mask, rng.integers(1, 16, (n, H)), 0).astype(np.int8),
        "hist_hour": np.where(mask, rng.integers(0, 24, (n, H)), 24).astype(np.int8),
        "hour": rng.integers(0, 24, n).astype(np.int8),
    }


def _split_data(split: str, n: int, seed: int):
    """Features, true logits, labels, follower counts and histories; labels depend on the features
    and on how often the user engaged the same way before."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    hist = _history(rng, n)
    same_before = np.stack([((hist["hist_engagement"] & bit) != 0).sum(axis=1) for bit in (1, 2, 4, 8)], axis=1)
    w = np.array(
        [
            [1.6, 0.0, 0.0, 0.0, 0.6, 0.0],
            [0.0, 1.6, 0.0, 0.0, 0.6, 0.0],
            [0.0, 0.0, 1.6, 0.0, 0.0, 0.6],
            [0.0, 0.0, 0.0, 1.6, 0.0, 0.6],
        ]
    )
    logits = BASE_LOGIT + x.astype(np.float64) @ w.T + 0.9 * (same_before - 1)
    labels = (rng.random((n, 4)) < 1 / (1 + np.exp(-logits))).astype(np.int8)
    afc = np.exp(rng.uniform(0, np.log(3e6), n)).astype(np.int64)
    return x, logits, labels, afc, hist


def _row_ids(part: int, n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) + (part << 40)


def _chunk_table(split: str, part: int, n: int) -> pa.Table:
    x, _, labels, afc, hist = _split_data(split, n, _seed(split, part))
    hist_tokens = [[[11, 12]] * k + [[]] * (H - k) for k in hist["hist_len"].tolist()]
    cols = {
        "row_id": pa.array(_row_ids(part, n)),
        "tweet_id": pa.array([f"{i:032X}" for i in range(n)]),
        "b_user_id": pa.array([f"{i % 37:032X}" for i in range(n)]),
        "a_follower_count": pa.array(afc),
    }
    for j, t in enumerate(TARGETS):
        cols[t] = pa.nulls(n, pa.int8()) if split == "test" else pa.array(labels[:, j])
    cols.update(
        tokens=pa.array([[5, 6, 7]] * n, pa.list_(pa.int32())),
        hour=pa.array(hist["hour"]),
        hist_tokens=pa.array(hist_tokens, pa.list_(pa.list_(pa.int32()))),
        hist_engagement=pa.array(list(hist["hist_engagement"]), pa.list_(pa.int8())),
        hist_hour=pa.array(list(hist["hist_hour"]), pa.list_(pa.int8())),
        hist_mask=pa.array(list(hist["hist_mask"]), pa.list_(pa.bool_())),
        hist_len=pa.array(hist["hist_len"]),
        features=pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), N_FEATURES),
    )
    return pa.table(cols)


def _seed(split: str, part: int) -> int:
    return {"train": 100, "valid": 200, "test": 300}[split] + part


def _valid_model_predictions():
    """The 'model' scored by the fake evaluate stage: the true logits plus noise, as
    ``(labels, probabilities, a_follower_count, row_id)`` of every valid row."""
    labels, preds, afcs, ids = [], [], [], []
    for part, n in enumerate(SPLIT_ROWS["valid"]):
        _, logits, y, afc, _ = _split_data("valid", n, _seed("valid", part))
        rng = np.random.default_rng(7 + part)
        preds.append(1 / (1 + np.exp(-(logits + rng.normal(0, 0.3, logits.shape)))))
        labels.append(y)
        afcs.append(afc)
        ids.append(_row_ids(part, n))
    return np.concatenate(labels), np.concatenate(preds), np.concatenate(afcs), np.concatenate(ids)


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


def _predictions_table(row_id: np.ndarray, final: np.ndarray, extra: dict[str, pa.Array]) -> pa.Table:
    n = row_id.size
    cols = {
        "row_id": pa.array(row_id),
        "tweet_id": pa.array([f"{i:032X}" for i in range(n)]),
        "b_user_id": pa.array([f"{i % 37:032X}" for i in range(n)]),
        **{t: pa.array(final[:, j].astype(np.float32)) for j, t in enumerate(TARGETS)},
        **extra,
    }
    return pa.table(cols).sort_by("row_id")


def _fake_evaluate_uncalibrated(ctx) -> None:
    """Like the evaluate stage before calibration: predictions without the calibration columns,
    every row scored, no calibration.json."""
    labels, preds, afc, row_id = _valid_model_predictions()
    preds = preds.astype(np.float32)
    _write(ctx, "predictions/valid.parquet", _table_bytes(_predictions_table(row_id, preds, {})))
    _write(ctx, "metrics.json", json.dumps({"valid": compute_metrics(labels, preds, afc)}).encode())


def _fake_evaluate(ctx, fraction: float = 0.3) -> None:
    """Like the evaluate stage: an over-confident model, Platt-calibrated on a hold-out of valid."""
    labels, preds, afc, row_id = _valid_model_predictions()
    raw = (1 / (1 + np.exp(-(2.0 * np.log(preds / (1 - preds)) + 0.5)))).astype(np.float32)
    held = holdout_mask(row_id, fraction)
    calibrators = {t: fit_calibrator("platt", raw[held, j], labels[held, j]) for j, t in enumerate(TARGETS)}
    final = np.stack([calibrators[t].apply(raw[:, j]) for j, t in enumerate(TARGETS)], 1).astype(np.float32)
    extra = {f"{t}_raw": pa.array(raw[:, j]) for j, t in enumerate(TARGETS)}
    extra["calibration_holdout"] = pa.array(held)
    _write(ctx, "predictions/valid.parquet", _table_bytes(_predictions_table(row_id, final, extra)))
    s = ~held
    y = labels[s]

    def bins(p: np.ndarray) -> dict:
        return {t: reliability_bins(y[:, j], p[s][:, j]) for j, t in enumerate(TARGETS)}

    metrics = compute_metrics(y, final[s], afc[s])
    calibration = {
        "kind": "platt",
        "fraction": fraction,
        "fit_rows": int(held.sum()),
        "fit": {
            t: {"positives": int(labels[held, j].sum()), "rows": int(held.sum()), "params": calibrators[t].to_dict()}
            for j, t in enumerate(TARGETS)
        },
        "splits": {
            "valid": {
                "rows_scored": int(s.sum()),
                "uncalibrated": compute_metrics(y, raw[s], afc[s]),
                "calibrated": metrics,
                "reliability": {"uncalibrated": bins(raw), "calibrated": bins(final)},
            }
        },
    }
    _write(ctx, "metrics.json", json.dumps({"valid": metrics}).encode())
    _write(ctx, "calibration.json", json.dumps(calibration).encode())


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


def _config(run_dir: str, **report):
    # One OpenMP thread keeps the baselines fast on a busy shared machine.
    settings = {"baseline_max_rows": 2000, "seed": 1, "baseline_threads": 1, **report}
    return build_config({"run_dir": run_dir, "report": settings})


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
    for name in (
        "results_groups_valid",
        "calibration_reliability_valid",
        "train_curves",
        "data_history_lengths",
        "data_chunk_sizes",
    ):
        assert f'id="fig-{name}"' in page
        assert f"](plots/{name}.png)" in md
        assert f"plots/{name}.png" in published
        assert (rdir / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"

    # The model's metrics (from evaluate/metrics.json: the rows that did not fit the calibrators).
    model = json.loads((tmp_path / "run" / "evaluate" / "metrics.json").read_text())["valid"]
    scored = model["rows"]
    assert 900 < scored < 1200  # about 70% of the 1,500 valid rows
    for t in (*TARGETS, "avg"):
        for text in (page, md):
            assert f"{model['ap'][t]:.4f}" in text
            assert f"{model['rce'][t]:.2f}" in text
    assert f"{model['ap_fair']['avg']:.4f}" in page
    assert summary["metrics"]["valid"]["model"]["ap"] == model["ap"]
    # Positives beside each AP: in the AP table's headers and the comparison tables.
    for t in TARGETS:
        pos = sum(model["groups"]["positives"][t])
        assert f"AP {t} ({pos:,} pos)" in page and f"AP {t} ({pos:,} pos)" in md

    # Both baselines, scored on the model's rows, matching summary.json; both beat the prior.
    prior = summary["metrics"]["valid"]["prior"]
    assert summary["baseline"]["status"] == "done"
    assert summary["baseline"]["train_rows"] == 2000 and summary["baseline"]["train_rows_available"] == 3000
    assert summary["baseline"]["history_features"][0] == "hist_valid"
    assert set(summary["baseline"]["iterations_history"]) == set(TARGETS)
    for name, label in (("baseline", "GBDT, features only"), ("baseline_history", "GBDT, features + history")):
        base = summary["metrics"]["valid"][name]
        assert base["rows"] == scored
        for text in (page, md):
            assert label in text
            assert f"{base['ap']['avg']:.4f}" in text and f"{base['rce']['avg']:.2f}" in text
        assert base["ap"]["avg"] > prior["ap"]["avg"] + 0.05
        assert base["rce"]["avg"] > 10.0 and prior["rce"]["avg"] == 0.0
        for t in TARGETS:
            assert base["ap"][t] > prior["ap"][t] == pytest.approx(model["positive_rate"][t])

    # Paired bootstrap intervals of every difference, on the same rows; the verdicts follow them.
    comp = summary["comparisons"]["valid"]
    assert comp["rows"] == scored and comp["resamples"] == 1000
    assert any("fit the calibrators" in n for n in comp["notes"])
    for key, name in (("features", "baseline"), ("history", "baseline_history")):
        base = summary["metrics"]["valid"][name]
        for metric in ("ap", "rce"):
            for t in (*TARGETS, "avg"):
                d = comp["vs"][key][metric][t]
                assert d["diff"] == pytest.approx(model[metric][t] - base[metric][t], abs=1e-9)
                assert d["low"] <= d["diff"] <= d["high"]
                expected = "beats" if d["low"] > 0 else "loses to" if d["high"] < 0 else "ties"
                assert d["verdict"] == expected
        # The model (true logits + noise) is better than trees on 2,000 rows; the report says so.
        assert comp["vs"][key]["ap"]["avg"]["verdict"] == "beats"
    # The history carries signal here: the second baseline is closer to the model than the first.
    gap = {key: comp["vs"][key]["ap"]["avg"]["diff"] for key in ("features", "history")}
    assert 0 < gap["history"] < gap["features"]
    assert summary["model_minus_baseline"]["valid"]["ap_avg"] == pytest.approx(gap["features"], abs=1e-12)
    assert summary["model_minus_baseline_history"]["valid"]["ap_avg"] == pytest.approx(gap["history"], abs=1e-12)
    ap_h = comp["vs"]["history"]["ap"]["avg"]
    for text in (page, md):
        assert "Does text earn its compute?" in text
        assert "by AP avg the model beats GBDT, features + history" in text
        assert f"95% interval [{ap_h['low']:+.4f}, {ap_h['high']:+.4f}]" in text
        assert "model − GBDT, features only" in text

    # Calibration: the calibrators, the metrics before and after, the valid reliability diagrams.
    cal = json.loads((tmp_path / "run" / "evaluate" / "calibration.json").read_text())
    assert summary["calibration"]["kind"] == "platt" and summary["calibration"]["fit_rows"] == cal["fit_rows"]
    before = cal["splits"]["valid"]["uncalibrated"]
    assert summary["calibration"]["splits"]["valid"]["uncalibrated"]["rce_avg"] == before["rce"]["avg"]
    assert 'id="calibration"' in page and "AP uncalibrated" in md and "sigmoid(" in page
    assert f"{before['rce']['avg']:.2f}" in page
    assert before["rce"]["avg"] < model["rce"]["avg"]  # the fake model is over-confident

    # Paper reference, clearly labelled; prior row; stage table with the Slurm job id.
    assert "not comparable to synthetic data" in page and "0.1539" in page and "0.2287" in md
    assert "prior (positive rate)" in page
    assert "4242" in page and summary["stages"]["chunks"]["slurm_job_id"] == "4242"
    assert summary["stages"]["generate"] is None and "not used" in page
    # Data statistics: quarantine reasons, history histogram counts, chunk table, training stats.
    assert "field_count" in page and "bad_int" in md
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


def _summary_and_page(cfg) -> tuple[dict, str]:
    store = Store(cfg.run_dir)
    return json.loads(store.read_bytes("report/summary.json")), store.read_bytes("report/index.html").decode()


def test_report_with_predictions_from_before_calibration(tmp_path, fake_pipeline, monkeypatch):
    """Predictions without the calibration columns and no calibration.json: every row is compared."""
    monkeypatch.setitem(FAKES, "evaluate", _fake_evaluate_uncalibrated)
    fake_pipeline(("chunks", "evaluate"))
    cfg = _config(str(tmp_path / "run"), bootstrap=200)
    assert run_pipeline(cfg)["report"] == "ran"
    summary, page = _summary_and_page(cfg)
    comp = summary["comparisons"]["valid"]
    assert comp["rows"] == 1500 and comp["resamples"] == 200 and comp["notes"] == []
    for name in ("model", "baseline", "baseline_history"):
        assert summary["metrics"]["valid"][name]["rows"] == 1500
    d = comp["vs"]["history"]["rce"]["avg"]
    assert d["low"] < d["diff"] < d["high"]
    assert summary["calibration"] is None
    assert "Calibration: the evaluate stage published no calibration.json (a run from before calibration)." in page
    assert "calibration_reliability" not in page


def test_report_ties_on_few_rows_and_without_bootstrap(tmp_path, fake_pipeline, monkeypatch):
    """On ~50 scored rows the intervals are wide: differences inside them are ties, never wins.
    With report.bootstrap 0 there are no intervals and no verdicts."""
    monkeypatch.setitem(FAKES, "evaluate", functools.partial(_fake_evaluate, fraction=0.97))
    fake_pipeline(("chunks", "evaluate"))
    cfg = _config(str(tmp_path / "run"), bootstrap=300)
    run_pipeline(cfg)
    summary, page = _summary_and_page(cfg)
    comp = summary["comparisons"]["valid"]
    assert comp["rows"] < 80
    cells = [d for vs in comp["vs"].values() for m in ("ap", "rce") for d in vs[m].values()]
    ties = [d for d in cells if d["verdict"] == "ties"]
    assert ties and all(d["low"] <= 0 <= d["high"] for d in ties)
    assert all(d["verdict"] != "beats" or d["low"] > 0 for d in cells)
    md = Store(cfg.run_dir).read_bytes("report/report.md").decode()
    assert "| ties |" in md or "| ties (few positives) |" in md
    # quote has fewer than 10 positives among these rows: its verdicts are marked.
    assert round(summary["metrics"]["valid"]["model"]["positive_rate"]["quote"] * comp["rows"]) < 10
    assert re.search(r"\| quote \| \d \| .* (beats|loses to|ties) \(few positives\) \|", md)

    cfg0 = _config(str(tmp_path / "run"), bootstrap=0)
    assert run_pipeline(cfg0, only="report", force=True)["report"] == "ran"
    summary, page = _summary_and_page(cfg0)
    comp = summary["comparisons"]["valid"]
    assert comp["resamples"] == 0 and "no intervals: report.bootstrap is 0" in comp["notes"]
    assert {d["verdict"] for vs in comp["vs"].values() for d in vs["ap"].values()} == {"no interval"}
    assert "by AP avg the model differs from GBDT, features + history by " in page
    assert " beats " not in page and " ties " not in page


def _scores_with(intervals: dict) -> SplitScores:
    labels = (np.random.default_rng(0).random((200, 4)) < 0.3).astype(np.int8)
    afc = np.full(200, 500)
    model = compute_metrics(labels, np.clip(labels * 0.6 + 0.2, 0, 1), afc)
    base = compute_metrics(labels, np.full((200, 4), 0.3), afc)
    return SplitScores("valid", model, {"history": base, "features": base}, model, base, intervals, resamples=100)


def test_verdicts_and_headline_follow_the_intervals():
    assert verdict({"diff": 0.02, "low": 0.01, "high": 0.03}) == "beats"
    assert verdict({"diff": -0.02, "low": -0.03, "high": -0.01}) == "loses to"
    assert verdict({"diff": 0.02, "low": -0.01, "high": 0.05}) == "ties"
    assert verdict({"diff": 0.0, "low": 0.0, "high": 0.0}) == "ties"  # identical predictions
    assert verdict({"diff": 0.02, "low": None, "high": None}) == "no interval"
    assert verdict({"diff": None, "low": None, "high": None}) == verdict(None) == "n/a"

    def iv(diff: float, low: float, high: float) -> dict:
        per = {"diff": diff, "low": low, "high": high}
        return {m: {t: per for t in (*TARGETS, "avg")} for m in ("ap", "rce")}

    text = headline(_scores_with({"history": iv(0.02, -0.01, 0.05), "features": iv(-0.1, -0.2, -0.05)}))
    assert text is not None and text.startswith("On valid (200 rows, 100 paired bootstrap resamples): ")
    assert "by AP avg the model ties GBDT, features + history (+0.0200, 95% interval [-0.0100, +0.0500])" in text
    assert "and loses to GBDT, features only (-0.1000, 95% interval [-0.2000, -0.0500])" in text
    assert "by RCE avg the model ties GBDT, features + history (+0.02, 95% interval [-0.01, +0.05])" in text
    # Without intervals: the point difference, and no verdict.
    text = headline(_scores_with({}))
    assert text is not None and "by AP avg the model differs from GBDT, features + history by +" in text
    assert "(no interval)" in text and "beats" not in text


def test_history_statistics_by_hand():
    table = pa.table(
        {
            "hour": pa.array([0, 5, 5], pa.int8()),
            "hist_engagement": pa.array([[1, 3, 8, 0], [0, 0, 0, 0], [4, 0, 0, 0]], pa.list_(pa.int8())),
            "hist_hour": pa.array([[22, 2, 24, 24], [24] * 4, [9, 24, 24, 24]], pa.list_(pa.int8())),
            "hist_mask": pa.array([[True, True, True, False], [False] * 4, [True, False, False, False]]),
        }
    )
    stats = history_statistics(table)
    assert stats.shape == (3, len(HISTORY_FEATURES)) and stats.dtype == np.float32
    r = math.sqrt(0.5)
    # valid slots, like, retweet, reply, quote, mean hour sin, cos (hour 24 = unknown, left out),
    # engagements within 3 h of the tweet's hour (22 h and 2 h are 2 h from 0 h; 9 h is 4 h from 5 h).
    assert stats[0] == pytest.approx([3, 2, 1, 0, 1, 0, math.cos(math.pi / 6), 2], abs=1e-6)
    assert stats[1] == pytest.approx([0] * 8)
    assert stats[2] == pytest.approx([1, 0, 0, 1, 0, r, -r, 0], abs=1e-6)
