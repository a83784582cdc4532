"""The official RecSys 2021 metrics (microparade.metrics) against sklearn and hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, log_loss

import microparade.metrics as metrics_mod
from microparade.metrics import (
    FAIRNESS_EDGES,
    ap_of,
    compute_metrics,
    group_index,
    group_labels,
    paired_bootstrap,
    paired_bootstrap_many,
    prior_metrics,
    rce_of,
    weighted_ap,
    weighted_rce,
)
from microparade.recsys_format import TARGETS

# A fixed prediction set (one target): 4 positives among 12 rows.
GT = np.array([1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0])
PRED = np.array([0.9, 0.2, 0.4, 0.6, 0.1, 0.35, 0.5, 0.05, 0.3, 0.8, 0.45, 0.15])


def _fixed_set(n: int = 600, seed: int = 3):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 4)) < [0.45, 0.2, 0.1, 0.06]).astype(np.int8)
    rate = np.array([0.45, 0.2, 0.1, 0.06])
    logits = np.log(rate / (1 - rate)) + 1.5 * (labels - 0.5) + rng.normal(0, 1, (n, 4))
    preds = 1 / (1 + np.exp(-logits))
    afc = np.exp(rng.uniform(0, np.log(2e6), n)).astype(np.int64)
    return labels, preds, afc


def test_ap_and_rce_literal_values():
    # Ranked by prediction: 0.9+, 0.8+, 0.6+, 0.5-, 0.45-, 0.4-, 0.35+ -> AP = (1 + 1 + 1 + 4/7) / 4.
    assert ap_of(GT, PRED) == pytest.approx(25 / 28, abs=1e-12)
    assert ap_of(GT, PRED) == pytest.approx(0.8928571428571428, abs=1e-12)
    # RCE by hand: mean binary cross entropy against the one of the constant ctr = 1/3.
    ce = -np.mean(GT * np.log(PRED) + (1 - GT) * np.log(1 - PRED))
    ctr = 1 / 3
    ce0 = -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr))
    assert rce_of(GT, PRED) == pytest.approx((1 - ce / ce0) * 100, abs=1e-9)
    assert rce_of(GT, PRED) == pytest.approx(39.90768936311097, abs=1e-9)


def test_metrics_match_sklearn_directly():
    labels, preds, afc = _fixed_set()
    m = compute_metrics(labels, preds, afc)
    assert m["rows"] == len(labels)
    aps, rces = [], []
    for j, t in enumerate(TARGETS):
        ap = average_precision_score(labels[:, j], preds[:, j])
        ctr = labels[:, j].mean()
        rce = (1 - log_loss(labels[:, j], preds[:, j]) / log_loss(labels[:, j], [ctr] * len(labels))) * 100
        assert m["ap"][t] == pytest.approx(ap, abs=1e-12)
        assert m["rce"][t] == pytest.approx(rce, abs=1e-9)
        assert m["positive_rate"][t] == pytest.approx(ctr, abs=1e-15)
        aps.append(ap)
        rces.append(rce)
    assert m["ap"]["avg"] == pytest.approx(np.mean(aps), abs=1e-12)
    assert m["rce"]["avg"] == pytest.approx(np.mean(rces), abs=1e-9)
    # Informative predictions: positive RCE, AP above the positive rate.
    assert all(m["rce"][t] > 0 and m["ap"][t] > m["positive_rate"][t] for t in TARGETS)
    # Fair metrics: per-group sklearn values averaged over groups.
    g = group_index(afc)
    for j, t in enumerate(TARGETS):
        per_group = [
            average_precision_score(labels[g == k, j], preds[g == k, j]) for k in range(5) if labels[g == k, j].any()
        ]
        assert m["ap_fair"][t] == pytest.approx(np.mean(per_group), abs=1e-12)
    json.dumps(m, allow_nan=False)  # JSON-serialisable, no NaN


def test_rce_of_the_positive_rate_is_zero_and_perfect_ap_is_one():
    labels, preds, afc = _fixed_set()
    ctr = labels.mean(axis=0)
    m = compute_metrics(labels, np.broadcast_to(ctr, labels.shape), afc)
    for t in TARGETS:
        assert abs(m["rce"][t]) <= 1e-9
        assert m["ap"][t] == pytest.approx(m["positive_rate"][t], abs=1e-12)  # a constant ranks nothing
    assert abs(rce_of(GT, np.full(GT.size, GT.mean()))) <= 1e-9
    perfect = compute_metrics(labels, labels.astype(float), afc)
    for t in TARGETS:
        assert perfect["ap"][t] == 1.0
        assert perfect["ap_fair"][t] == 1.0
        assert perfect["rce"][t] > 99.9  # clipped at float64 eps: close to, not exactly, 100
    assert ap_of(GT, GT * 0.7 + 0.1) == 1.0


def test_fairness_average_on_hand_built_groups():
    # One row block per popularity group (edges 0, 100, 1k, 10k, 100k):
    #  g0 (followers 10):    gt 1 0,     pred .9 .1       -> AP 1,   RCE (1 - ln(1/.9) / ln 2) * 100
    #  g1 (500):             gt 1 0,     pred .1 .9       -> AP 1/2, RCE (1 - ln(10) / ln 2) * 100
    #  g2 (5,000):           gt 1 0 0,   pred .5 .6 .4    -> AP 1/2
    #  g3 (50,000):          gt 0 0,     pred .3 .2       -> no positives: AP and RCE undefined
    #  g4 (1,000,000):       gt 1 1 0 0, pred .8 .3 .6 .1 -> AP (1 + 2/3) / 2 = 5/6
    followers = np.array([10, 10, 500, 500, 5000, 5000, 5000, 50000, 50000, 10**6, 10**6, 10**6, 10**6])
    gt = np.array([1, 0, 1, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0])
    pred = np.array([0.9, 0.1, 0.1, 0.9, 0.5, 0.6, 0.4, 0.3, 0.2, 0.8, 0.3, 0.6, 0.1])
    labels = np.stack([gt, gt, gt, np.zeros_like(gt)], axis=1)  # quote: no positives at all
    preds = np.stack([pred, pred, pred, pred], axis=1)
    m = compute_metrics(labels, preds, followers)

    assert m["groups"]["edges"] == list(FAIRNESS_EDGES)
    assert m["groups"]["rows"] == [2, 2, 3, 2, 4]
    assert m["groups"]["positives"]["like"] == [1, 1, 1, 0, 2]
    assert m["groups"]["ap"]["like"] == pytest.approx([1.0, 0.5, 0.5, None, 5 / 6])
    assert m["groups"]["ap"]["like"][3] is None
    assert m["ap_fair"]["like"] == pytest.approx((1 + 0.5 + 0.5 + 5 / 6) / 4, abs=1e-12)  # = 17/24

    ln2 = math.log(2)
    rce_g0 = (1 - math.log(1 / 0.9) / ln2) * 100
    rce_g1 = (1 - math.log(10) / ln2) * 100
    ce_g2 = -(math.log(0.5) + math.log(0.4) + math.log(0.6)) / 3
    h_g2 = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    rce_g2 = (1 - ce_g2 / h_g2) * 100
    ce_g4 = -(math.log(0.8) + math.log(0.3) + math.log(0.4) + math.log(0.9)) / 4
    rce_g4 = (1 - ce_g4 / ln2) * 100
    assert m["groups"]["rce"]["like"] == pytest.approx([rce_g0, rce_g1, rce_g2, None, rce_g4], abs=1e-9)
    assert m["rce_fair"]["like"] == pytest.approx((rce_g0 + rce_g1 + rce_g2 + rce_g4) / 4, abs=1e-9)

    # quote has no positives: every quote value is undefined (None) and left out of the averages.
    assert m["ap"]["quote"] is None and m["rce"]["quote"] is None
    assert m["ap_fair"]["quote"] is None and m["rce_fair"]["quote"] is None
    assert m["groups"]["ap"]["quote"] == [None] * 5
    assert m["ap_fair"]["avg"] == pytest.approx(17 / 24, abs=1e-12)  # mean of like, retweet, reply only
    assert m["ap"]["avg"] == pytest.approx(m["ap"]["like"], abs=1e-12)
    json.dumps(m, allow_nan=False)


def test_groups_use_fixed_edges():
    assert group_index(np.array([0, 99, 100, 999, 1000, 99_999, 100_000, 10**9])).tolist() == [0, 0, 1, 1, 2, 3, 4, 4]
    assert group_labels() == ["0–<100", "100–<1k", "1k–<10k", "10k–<100k", "≥100k"]
    # The same row lands in the same group whatever else is scored with it.
    assert group_index(np.array([5000]))[0] == group_index(np.array([5000, 10**7, 1]))[0] == 2
    with pytest.raises(ValueError, match="below the first group edge"):
        group_index(np.array([5, -1]))


def test_prior_metrics_match_scoring_a_constant():
    labels, _, afc = _fixed_set(seed=11)
    m = compute_metrics(labels, labels * 0.5 + 0.2, afc)
    prior = prior_metrics(m)
    direct = compute_metrics(labels, np.broadcast_to(labels.mean(axis=0), labels.shape), afc)
    for key in ("ap", "rce", "ap_fair", "rce_fair"):
        for t in (*TARGETS, "avg"):
            assert prior[key][t] == pytest.approx(direct[key][t], abs=1e-9), (key, t)
    for t in TARGETS:
        assert prior["groups"]["rce"][t] == pytest.approx(direct["groups"]["rce"][t], abs=1e-9)


def test_undefined_and_invalid_inputs():
    assert math.isnan(ap_of(np.zeros(5), np.linspace(0, 1, 5)))
    assert math.isnan(rce_of(np.ones(5), np.full(5, 0.9)))
    assert math.isnan(rce_of(np.zeros(0), np.zeros(0)))
    assert ap_of(np.ones(4), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0  # all positives: precision is always 1
    labels, preds, afc = _fixed_set(n=20)
    with pytest.raises(ValueError, match=r"shape \[N, 4\]"):
        compute_metrics(labels[:, :3], preds[:, :3], afc)
    with pytest.raises(ValueError, match="0/1"):
        compute_metrics(np.where(labels == 1, 2, 0), preds, afc)
    with pytest.raises(ValueError, match="probabilities"):
        compute_metrics(labels, preds * 2, afc)
    with pytest.raises(ValueError, match="a_follower_count"):
        compute_metrics(labels, preds, afc[:-1])
    empty = compute_metrics(np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0, dtype=np.int64))
    assert empty["rows"] == 0 and empty["ap"]["avg"] is None and empty["groups"]["rows"] == [0] * 5


# ----------------------------------------------------------------------------------------------
# paired bootstrap
# ----------------------------------------------------------------------------------------------
def _intervals(result: dict) -> list[dict]:
    return [result[m][t] for m in ("ap", "rce") for t in (*TARGETS, "avg")]


def test_weighted_metrics_equal_the_official_ones_on_repeated_rows():
    labels, preds, _ = _fixed_set(n=300, seed=5)
    preds = np.round(preds, 2)  # ties: one threshold per distinct prediction, as sklearn
    rng = np.random.default_rng(2)
    draws = rng.integers(0, 300, size=(6, 300))
    counts = np.stack([np.bincount(d, minlength=300) for d in draws])
    counts[0] = 1  # the rows as given
    for j in range(4):
        ap = weighted_ap(labels[:, j], preds[:, j], counts)
        rce = weighted_rce(labels[:, j], preds[:, j], counts)
        for r, d in enumerate([np.arange(300), *draws[1:]]):
            assert ap[r] == pytest.approx(ap_of(labels[d, j], preds[d, j]), abs=1e-12)
            assert rce[r] == pytest.approx(rce_of(labels[d, j], preds[d, j]), abs=1e-9)
    # Undefined where the weighted rows hold no positive (AP) or one class only (RCE).
    only_negatives = (labels[:, 0] == 0).astype(float)[None, :]
    assert math.isnan(weighted_ap(labels[:, 0], preds[:, 0], only_negatives)[0])
    assert math.isnan(weighted_rce(labels[:, 0], preds[:, 0], only_negatives)[0])


def test_paired_bootstrap_of_identical_predictions_is_a_tie_at_zero():
    labels, preds, _ = _fixed_set()
    result = paired_bootstrap(labels, preds, preds.copy(), n=200, seed=0)
    assert set(result) == {"ap", "rce"} and set(result["ap"]) == {*TARGETS, "avg"}
    for iv in _intervals(result):
        assert iv == {"diff": 0.0, "low": 0.0, "high": 0.0}  # contains 0: a tie
    json.dumps(result, allow_nan=False)


def test_paired_bootstrap_separates_a_clearly_better_model():
    labels, good, _ = _fixed_set(n=2000, seed=4)
    noisy = 1 / (1 + np.exp(-(np.log(good / (1 - good)) + np.random.default_rng(9).normal(0, 2.5, good.shape))))
    result = paired_bootstrap(labels, good, noisy, n=300, seed=1)
    for iv in _intervals(result):
        assert 0 < iv["low"] <= iv["diff"] <= iv["high"]
    for m in ("ap", "rce"):
        direct = [
            f(labels[:, j], good[:, j]) - f(labels[:, j], noisy[:, j])
            for j in range(4)
            for f in [ap_of if m == "ap" else rce_of]
        ]
        assert [result[m][t]["diff"] for t in TARGETS] == pytest.approx(direct, abs=1e-12)
        assert result[m]["avg"]["diff"] == pytest.approx(np.mean(direct), abs=1e-12)
    # The other way round: the same interval, negated.
    reverse = paired_bootstrap(labels, noisy, good, n=300, seed=1)
    assert reverse["ap"]["avg"]["high"] == pytest.approx(-result["ap"]["avg"]["low"], abs=1e-12)


def test_paired_bootstrap_is_seeded_and_independent_of_its_block_size(monkeypatch):
    labels, preds, _ = _fixed_set(n=400, seed=8)
    other = np.clip(preds + np.random.default_rng(3).normal(0, 0.05, preds.shape), 0, 1)
    first = paired_bootstrap(labels, preds, other, n=150, seed=7)
    assert paired_bootstrap(labels, preds, other, n=150, seed=7) == first
    assert paired_bootstrap(labels, preds, other, n=150, seed=8) != first
    monkeypatch.setattr(metrics_mod, "BOOTSTRAP_BLOCK_CELLS", 1000)  # 2 resamples per block
    assert paired_bootstrap(labels, preds, other, n=150, seed=7) == first
    # Several baselines on the same resamples: each as if compared alone.
    many = paired_bootstrap_many(labels, preds, {"other": other, "same": preds}, n=150, seed=7)
    assert many["other"] == first and _intervals(many["same"])[0] == {"diff": 0.0, "low": 0.0, "high": 0.0}


def test_paired_bootstrap_undefined_values_and_invalid_inputs():
    labels, preds, _ = _fixed_set(n=100)
    labels[:, 3] = 0  # quote: no positives, AP and RCE undefined
    result = paired_bootstrap(labels, preds, preds * 0.5, n=50, seed=0)
    assert result["ap"]["quote"] == {"diff": None, "low": None, "high": None}
    assert result["rce"]["quote"]["low"] is None
    assert result["ap"]["avg"]["low"] is not None  # the mean of the defined engagements
    with pytest.raises(ValueError, match="at least 1 resample"):
        paired_bootstrap(labels, preds, preds, n=0, seed=0)
    with pytest.raises(ValueError, match="shape of labels"):
        paired_bootstrap(labels, preds, preds[:-1], n=10, seed=0)
    with pytest.raises(ValueError, match="probabilities"):
        paired_bootstrap(labels, preds, preds * 2, n=10, seed=0)
