"""Probability calibration (microparade.calibration) and the evaluate stage's use of it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

import tests.helpers.train as h
from microparade.calibration import (
    CLIP,
    Calibrator,
    Identity,
    Isotonic,
    Platt,
    fit_calibrator,
    holdout_mask,
    reliability_bins,
)
from microparade.engine import run_pipeline
from microparade.errors import StageError
from microparade.metrics import ap_of, compute_metrics, rce_of
from microparade.recsys_format import TARGETS
from microparade.stages.evaluate import stage as evaluate_stage
from microparade.storage import Store

RAW = [f"{t}_raw" for t in TARGETS]
COLUMNS = ["row_id", "tweet_id", "b_user_id", *TARGETS, *RAW, "calibration_holdout"]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _planted(n: int = 100_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from a true probability, a miscalibrated prediction of it (over-confident and
    shifted: ``sigmoid(2 * logit(p) + 1)``), the true probability, and the hold-out of row ids 0..n-1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-2.0, 1.5, n)
    true = _sigmoid(z)
    labels = (rng.random(n) < true).astype(np.int8)
    return labels, _sigmoid(2.0 * z + 1.0), true, holdout_mask(np.arange(n), 0.5)


# ----------------------------------------------------------------------------------------------
# the hold-out
# ----------------------------------------------------------------------------------------------
def test_holdout_mask_is_deterministic_order_independent_and_about_the_fraction():
    rng = np.random.default_rng(1)
    row_id = rng.choice(10**12, size=50_000, replace=False)
    mask = holdout_mask(row_id, 0.3)
    assert mask.dtype == bool and np.array_equal(mask, holdout_mask(row_id.copy(), 0.3))
    perm = rng.permutation(len(row_id))
    assert np.array_equal(holdout_mask(row_id[perm], 0.3), mask[perm])
    assert abs(mask.mean() - 0.3) < 0.01
    # consecutive ids (how ingest numbers rows) are spread too, and a larger fraction holds out more
    seq = holdout_mask(np.arange(20_000), 0.5)
    assert abs(seq[:10_000].mean() - 0.5) < 0.02 and abs(seq[10_000:].mean() - 0.5) < 0.02
    assert not (mask & ~holdout_mask(row_id, 0.6)).any()
    with pytest.raises(ValueError, match="fraction"):
        holdout_mask(row_id, 1.0)


# ----------------------------------------------------------------------------------------------
# calibrators
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["platt", "isotonic"])
def test_a_planted_miscalibration_is_fixed_on_the_other_rows(kind):
    labels, pred, true, held = _planted()
    cal = fit_calibrator(kind, pred[held], labels[held])
    y, p, fixed = labels[~held], pred[~held], cal.apply(pred[~held])
    before, after, best = rce_of(y, p), rce_of(y, fixed), rce_of(y, true[~held])
    print(f"{kind}: RCE {before:.2f} -> {after:.2f} (true probabilities {best:.2f})")
    assert before < best - 5 and after > best - 0.2
    if kind == "platt":
        # the inverse of the planted map: sigmoid(0.5 * logit(q) - 0.5)
        assert isinstance(cal, Platt) and abs(cal.a - 0.5) < 0.02 and abs(cal.b + 0.5) < 0.05
        assert ap_of(y, fixed) == ap_of(y, p)  # monotone: the ranking, hence AP, is kept
    else:
        # flat steps tie rows the model ranked apart: AP may drop a little (0.011 here)
        assert isinstance(cal, Isotonic) and ap_of(y, p) - 0.02 < ap_of(y, fixed) <= ap_of(y, p)
        assert fixed.min() >= CLIP and fixed.max() <= 1 - CLIP and np.all(np.diff(cal.y) >= 0)


@pytest.mark.parametrize("kind", ["platt", "isotonic"])
def test_calibrators_round_trip_through_json(kind):
    labels, pred, _, held = _planted(5000, seed=3)
    cal = fit_calibrator(kind, pred[held], labels[held])
    back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal and back.to_dict()["kind"] == kind
    assert np.array_equal(back.apply(pred), cal.apply(pred))
    assert Calibrator.from_dict(Identity().to_dict()) == Identity()
    with pytest.raises(ValueError, match="unknown calibrator kind"):
        Calibrator.from_dict({"kind": "beta"})


def test_a_target_without_both_classes_is_left_uncalibrated():
    p = np.linspace(0.1, 0.9, 50)
    for labels, which in ((np.zeros(50), "no positives"), (np.ones(50), "no negatives")):
        cal = fit_calibrator("platt", p, labels)
        assert isinstance(cal, Identity) and cal.note == f"{which} among the 50 fit rows: left uncalibrated"
        assert np.array_equal(cal.apply(p), p)
    assert fit_calibrator("none", p, np.arange(50) % 2) == Identity()
    with pytest.raises(ValueError, match="unknown calibration"):
        fit_calibrator("beta", p, np.arange(50) % 2)


def test_platt_is_finite_on_separable_and_saturated_rows():
    p = np.array([0.0, 1e-9, 0.2, 0.4, 0.6, 0.8, 1.0 - 1e-9, 1.0])
    cal = fit_calibrator("platt", p, (p > 0.5).astype(int))
    assert isinstance(cal, Platt) and np.isfinite([cal.a, cal.b]).all() and cal.a > 0
    out = cal.apply(p)
    assert np.all(np.diff(out) >= 0) and out[3] < 0.5 < out[4]


def test_reliability_bins():
    labels = np.array([0, 1, 0, 1, 1, 0])
    probs = np.array([0.05, 0.15, 0.12, 0.95, 1.0, 0.5])
    bins = reliability_bins(labels, probs, n_bins=4)
    assert bins["edges"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert bins["count"] == [3, 0, 1, 2]  # 0.5 opens bin 2; 1.0 closes the last bin
    assert bins["mean_predicted"] == pytest.approx([0.32 / 3, None, 0.5, 0.975]) and bins["mean_predicted"][1] is None
    assert bins["observed_rate"] == pytest.approx([1 / 3, None, 0.0, 1.0]) and bins["observed_rate"][1] is None


# ----------------------------------------------------------------------------------------------
# the evaluate stage
# ----------------------------------------------------------------------------------------------
def _valid_predictions(n: int = 4000, poison: bool = False) -> dict[str, np.ndarray]:
    """What the stage's predictor returns for a labelled valid split of ``n`` rows (ids from 1000)."""
    cols = [_planted(n, seed=10 + i) for i in range(len(TARGETS))]
    labels = np.stack([c[0] for c in cols], 1).astype(np.float32)
    row_id = np.arange(1000, 1000 + n)
    if poison:  # flip the labels of every row the calibrators must not see
        out = ~holdout_mask(row_id, 0.5)
        labels[out] = 1 - labels[out]
    return {"row_id": row_id, "labels": labels, "probs": np.stack([c[1] for c in cols], 1).astype(np.float32)}


@pytest.mark.parametrize("kind", ["platt", "isotonic"])
def test_the_stage_fits_calibrators_on_the_holdout_only(tmp_path, kind):
    cfg = h.make_config(str(tmp_path), {"evaluate.calibration": kind, "evaluate.splits": ["valid"]})
    ctx = SimpleNamespace(cfg=cfg, log=lambda *args: None)
    fits = []
    for poison in (False, True):
        predictor = SimpleNamespace(predict=lambda split, poison=poison: _valid_predictions(poison=poison))
        cal, res = evaluate_stage._fit_calibration(ctx, predictor, {"valid", "test"})  # type: ignore[arg-type]
        assert res is not None and np.array_equal(res["holdout"], holdout_mask(res["row_id"], 0.5))
        fits.append(cal.summary())
    assert fits[0] == fits[1] and fits[0]["kind"] == kind
    assert fits[0]["fit_rows"] == int(holdout_mask(np.arange(1000, 5000), 0.5).sum())


@pytest.fixture
def stages(monkeypatch):
    """The pipeline = the test chunks stage + the real train and evaluate stages."""
    import microparade.engine.registry as st

    keep = [s for s in st.STAGES if s.name in ("train", "evaluate")]
    monkeypatch.setattr(st, "STAGES", (h.chunks_spec(), *keep))


def _stage_run(run: Path, overrides: dict, only: str | None = None) -> None:
    run_pipeline(h.make_config(str(run), {**h.TRAIN, "train.max_steps": 3, **overrides}), only=only)


def _read(path: Path) -> dict[str, np.ndarray]:
    t = pq.read_table(path)
    assert t.column_names == COLUMNS
    return {c: t.column(c).to_numpy() for c in t.column_names}


def _check_platt_outputs(run: Path) -> None:
    ev = run / "evaluate"
    metrics = json.loads((ev / "metrics.json").read_text())
    calib = json.loads((ev / "calibration.json").read_text())
    assert set(metrics) == {"valid"} and set(calib["splits"]) == {"valid"}
    assert calib["kind"] == "platt" and calib["fraction"] == 0.5
    v = _read(ev / "predictions" / "valid.parquet")
    held = v["calibration_holdout"]
    assert np.array_equal(held, holdout_mask(v["row_id"], 0.5)) and 0 < held.sum() < len(held)
    chunks = pq.read_table(sorted((run / "chunks" / "valid").glob("*.parquet"))).sort_by("row_id")
    labels = np.stack([chunks.column(t).to_numpy() for t in TARGETS], 1)
    followers = chunks.column("a_follower_count").to_numpy()
    raw, final = np.stack([v[c] for c in RAW], 1), np.stack([v[t] for t in TARGETS], 1)
    assert calib["fit_rows"] == held.sum()
    for i, t in enumerate(TARGETS):
        fit = calib["fit"][t]
        assert fit["rows"] == held.sum() and fit["positives"] == labels[held, i].sum()
        refit = fit_calibrator("platt", raw[held, i], labels[held, i])  # fit on the hold-out alone
        assert refit.to_dict() == fit["params"] and ("note" in fit) == isinstance(refit, Identity)
        assert np.array_equal(final[:, i], refit.apply(raw[:, i]).astype(np.float32))
    scored = ~held
    expected = compute_metrics(labels[scored], final[scored].astype(np.float64), followers[scored])
    assert metrics["valid"] == json.loads(json.dumps(expected)) and metrics["valid"]["rows"] == scored.sum()
    entry = calib["splits"]["valid"]
    assert entry["rows_scored"] == scored.sum() and entry["calibrated"] == metrics["valid"]
    before = compute_metrics(labels[scored], raw[scored].astype(np.float64), followers[scored])
    assert entry["uncalibrated"] == json.loads(json.dumps(before))
    assert set(entry["reliability"]) == {"uncalibrated", "calibrated"}
    assert sum(entry["reliability"]["calibrated"]["like"]["count"]) == scored.sum()
    test = _read(ev / "predictions" / "test.parquet")
    assert not test["calibration_holdout"].any()
    for t in TARGETS:
        params = Calibrator.from_dict(calib["fit"][t]["params"])
        assert np.array_equal(test[t], params.apply(test[f"{t}_raw"]).astype(np.float32))


def test_evaluate_calibrates_and_scores_the_other_valid_rows(tmp_path, monkeypatch, stages):
    run = tmp_path / "run"
    h.publish_chunks(str(run), {"train": [30, 20], "valid": [90, 70], "test": [12]}, history_size=4, n_features=5)
    _stage_run(run, {"evaluate.calibration": "platt"})
    _check_platt_outputs(run)
    manifest = json.loads((run / "evaluate" / "_MANIFEST.json").read_text())
    assert manifest["extra"]["model"] == "best" and manifest["extra"]["calibration"]["kind"] == "platt"
    first = (run / "evaluate" / "predictions" / "valid.parquet").read_bytes()

    # evaluate.model=last reads model_last.pt (the train stage publishes it next to model.pt)
    train_files = {f["path"] for f in json.loads((run / "train" / "_MANIFEST.json").read_text())["files"]}
    assert "model_last.pt" in train_files, "the train stage does not publish model_last.pt"
    read: list[str] = []
    read_bytes = Store.read_bytes
    monkeypatch.setattr(Store, "read_bytes", lambda self, rel: read.append(rel) or read_bytes(self, rel))
    _stage_run(run, {"evaluate.calibration": "platt", "evaluate.model": "last"}, only="evaluate")
    assert "train/model_last.pt" in read and "train/model.pt" not in read
    assert json.loads((run / "evaluate" / "_MANIFEST.json").read_text())["extra"]["model"] == "last"
    _check_platt_outputs(run)
    # the same model and rows: the same bytes (model.pt is model_last.pt without train.eval_every)
    assert (run / "evaluate" / "predictions" / "valid.parquet").read_bytes() == first

    # valid not among evaluate.splits: predicted to fit the calibrators, not published
    _stage_run(run, {"evaluate.splits": ["test"]}, only="evaluate")
    files = json.loads((run / "evaluate" / "_MANIFEST.json").read_text())["files"]
    assert sorted(f["path"] for f in files) == ["calibration.json", "metrics.json", "predictions/test.parquet"]
    calib = json.loads((run / "evaluate" / "calibration.json").read_text())
    assert calib["splits"] == {} and calib["fit_rows"] > 0 and calib["kind"] == "platt"
    test = _read(run / "evaluate" / "predictions" / "test.parquet")
    assert not np.array_equal(test["like"], test["like_raw"])


def test_evaluate_model_last_without_model_last_pt_says_rerun_train(tmp_path, stages):
    run = tmp_path / "run"
    h.publish_chunks(str(run), {"train": [30], "valid": [20]}, history_size=4, n_features=5)
    _stage_run(run, {}, only="train")
    # a train output from before model_last.pt: its manifest lists no such file
    path = run / "train" / "_MANIFEST.json"
    manifest = json.loads(path.read_text())
    manifest["files"] = [f for f in manifest["files"] if f["path"] != "model_last.pt"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(StageError, match=r"evaluate.model=last reads .*model_last\.pt.*rerun train"):
        _stage_run(run, {"evaluate.model": "last"}, only="evaluate")


def test_platt_keeps_the_ranking_on_a_few_anticorrelated_positives():
    """Eight positives that the model ranks lowest: the fit would reverse the ranking; it must not."""
    from microparade.calibration import PLATT_MIN_SLOPE, Platt, fit_calibrator
    from microparade.metrics import ap_of

    rng = np.random.default_rng(0)
    probs = rng.uniform(0.01, 0.2, 500)
    labels = np.zeros(500)
    labels[np.argsort(probs)[:8]] = 1.0
    cal = fit_calibrator("platt", probs, labels)
    assert isinstance(cal, Platt) and cal.a >= PLATT_MIN_SLOPE
    calibrated = cal.apply(probs)
    assert np.all(np.diff(calibrated[np.argsort(probs)]) > 0)
    assert ap_of(labels, calibrated) == pytest.approx(ap_of(labels, probs))
