"""The official RecSys Challenge 2021 metrics: AP, RCE, and their popularity-fair averages.

Definitions (REFERENCE §2, the challenge's evaluation code):

- **AP** = ``sklearn.metrics.average_precision_score(gt, pred)``.
- **RCE** = ``(1 - log_loss(gt, pred) / log_loss(gt, [ctr] * len(gt))) * 100``, with ``ctr`` the
  positive rate of the ground truth being scored. Both cross entropies come from
  ``sklearn.metrics.log_loss(..., labels=[0, 1])``, which clips probabilities to
  ``[eps, 1 - eps]`` (``eps`` of float64), so a confident wrong prediction costs a large but
  finite loss. Predicting the positive rate everywhere scores exactly 0; better than that is
  positive; worse is negative (unbounded).
- **Fairness** (new in 2021): tweet authors are split into 5 popularity groups by their follower
  count (``a_follower_count``), AP and RCE are computed inside every group, and the *fair* score of
  a target is the mean over groups.

Group boundaries. The 2021 challenge paper (Belli et al., "The 2021 RecSys Challenge Dataset:
Fairness is not optional", arXiv:2109.08245) describes the 5 follower-count groups, but the exact
numeric boundaries used by the organisers' evaluation could not be established from the public
sources available to us. We therefore use **fixed decade edges** — ``[0, 100)``, ``[100, 1k)``,
``[1k, 10k)``, ``[10k, 100k)``, ``[100k, ∞)`` (:data:`FAIRNESS_EDGES`, lower bounds) — which do not
depend on the data being scored, so the same row always lands in the same group and fair scores are
comparable across splits, runs and models. Pass ``edges=`` to use other boundaries.

Undefined values. AP is undefined without positives; RCE is undefined when the ground truth is
constant (all negatives or all positives: the reference cross entropy is 0) or empty. The
``*_of`` helpers return NaN for those; :func:`compute_metrics` reports them as ``None`` (JSON
``null``) and leaves them out of every average — an average over nothing is ``None`` too. The
per-group values, row and positive counts in ``groups`` show which groups were left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, log_loss

from .recsys_format import TARGETS

#: Lower bounds of the 5 author-popularity groups (``a_follower_count``); the last is unbounded.
FAIRNESS_EDGES: tuple[int, ...] = (0, 100, 1_000, 10_000, 100_000)

_EPS = float(np.finfo(np.float64).eps)


# ----------------------------------------------------------------------------------------------
# single metrics
# ----------------------------------------------------------------------------------------------
def ap_of(gt: np.ndarray, pred: np.ndarray) -> float:
    """Average precision of one target; NaN when ``gt`` has no positives (AP is undefined)."""
    gt = np.asarray(gt)
    if gt.size == 0 or not gt.any():
        return math.nan
    return float(average_precision_score(gt, np.asarray(pred, dtype=np.float64)))


def rce_of(gt: np.ndarray, pred: np.ndarray) -> float:
    """Relative cross entropy (percent) of one target; NaN when ``gt`` is empty or constant."""
    gt = np.asarray(gt)
    if gt.size == 0:
        return math.nan
    ctr = float(gt.mean())
    if ctr == 0.0 or ctr == 1.0:
        return math.nan
    pred = np.asarray(pred, dtype=np.float64)
    cross = log_loss(gt, pred, labels=[0, 1])
    reference = log_loss(gt, np.full(gt.shape[0], ctr, dtype=np.float64), labels=[0, 1])
    return float((1.0 - cross / reference) * 100.0)


# ----------------------------------------------------------------------------------------------
# groups
# ----------------------------------------------------------------------------------------------
def group_index(a_follower_count: np.ndarray, edges: Sequence[int] = FAIRNESS_EDGES) -> np.ndarray:
    """The popularity group (0-based) of every row: ``edges[g] <= followers < edges[g + 1]``."""
    counts = np.asarray(a_follower_count)
    if counts.size and counts.min() < edges[0]:
        raise ValueError(f"a_follower_count has values below the first group edge {edges[0]}: min {counts.min()}")
    return np.searchsorted(np.asarray(edges), counts, side="right") - 1


def group_labels(edges: Sequence[int] = FAIRNESS_EDGES) -> list[str]:
    """Human-readable half-open ranges of the groups: ``["0–<100", "100–<1k", …, "≥100k"]``."""

    def short(n: int) -> str:
        for div, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
            if n >= div and n % div == 0:
                return f"{n // div}{suffix}"
        return f"{n:,}"

    return [
        f"{short(lo)}–<{short(edges[i + 1])}" if i + 1 < len(edges) else f"≥{short(lo)}" for i, lo in enumerate(edges)
    ]


# ----------------------------------------------------------------------------------------------
# all metrics
# ----------------------------------------------------------------------------------------------
def _json_float(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(defined)) if defined else None


def _check_inputs(
    labels: np.ndarray, preds: np.ndarray, a_follower_count: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    preds = np.asarray(preds, dtype=np.float64)
    afc = np.asarray(a_follower_count)
    k = len(TARGETS)
    if labels.ndim != 2 or labels.shape[1] != k:
        raise ValueError(f"labels must have shape [N, {k}] (columns {', '.join(TARGETS)}); got {labels.shape}")
    if preds.shape != labels.shape:
        raise ValueError(f"preds must have the shape of labels {labels.shape}; got {preds.shape}")
    if afc.shape != (labels.shape[0],):
        raise ValueError(f"a_follower_count must have shape [{labels.shape[0]}]; got {afc.shape}")
    if labels.size and not np.isin(labels, (0, 1)).all():
        bad = np.unique(labels[~np.isin(labels, (0, 1))])[:5]
        raise ValueError(f"labels must be 0/1 (unknown labels cannot be scored); found {bad.tolist()}")
    if preds.size and not (np.isfinite(preds).all() and preds.min() >= 0.0 and preds.max() <= 1.0):
        raise ValueError("preds must be finite probabilities in [0, 1]")
    return labels.astype(np.int8, copy=False), preds, afc


def compute_metrics(
    labels: np.ndarray,
    preds: np.ndarray,
    a_follower_count: np.ndarray,
    *,
    edges: Sequence[int] = FAIRNESS_EDGES,
) -> dict[str, Any]:
    """Every official metric of one prediction set, as a JSON-serialisable dict.

    ``labels`` and ``preds`` are ``[N, 4]`` with columns in :data:`microparade.recsys_format.TARGETS`
    order (like, retweet, reply, quote); ``a_follower_count`` is ``[N]``. Returns::

        {"ap": {"like", "retweet", "reply", "quote", "avg"}, "rce": {…}, "ap_fair": {…},
         "rce_fair": {…}, "positive_rate": {"like", …}, "rows": N,
         "groups": {"edges": [...], "labels": [...], "rows": [...], "positives": {target: [...]},
                    "ap": {target: [...]}, "rce": {target: [...]}}}

    ``avg`` is the mean of the four per-target values (the paper's "avg of 4 APs"); ``*_fair[t]``
    is the mean over groups of the per-group values; ``groups.edges`` are the groups' lower bounds.
    Undefined values are ``None`` and are left out of averages (see the module docstring).
    """
    labels, preds, afc = _check_inputs(labels, preds, a_follower_count)
    n = labels.shape[0]
    group = group_index(afc, edges)
    members = [np.flatnonzero(group == g) for g in range(len(edges))]

    out: dict[str, Any] = {k: {} for k in ("ap", "rce", "ap_fair", "rce_fair", "positive_rate")}
    groups: dict[str, Any] = {
        "edges": [int(e) for e in edges],
        "labels": group_labels(edges),
        "rows": [int(m.size) for m in members],
        "positives": {},
        "ap": {},
        "rce": {},
    }
    for j, target in enumerate(TARGETS):
        gt, pr = labels[:, j], preds[:, j]
        out["ap"][target] = _json_float(ap_of(gt, pr))
        out["rce"][target] = _json_float(rce_of(gt, pr))
        out["positive_rate"][target] = _json_float(float(gt.mean()) if n else math.nan)
        groups["positives"][target] = [int(gt[m].sum()) for m in members]
        groups["ap"][target] = [_json_float(ap_of(gt[m], pr[m])) for m in members]
        groups["rce"][target] = [_json_float(rce_of(gt[m], pr[m])) for m in members]
        out["ap_fair"][target] = _mean_defined(groups["ap"][target])
        out["rce_fair"][target] = _mean_defined(groups["rce"][target])
    for key in ("ap", "rce", "ap_fair", "rce_fair"):
        out[key]["avg"] = _mean_defined([out[key][t] for t in TARGETS])
    out["rows"] = int(n)
    out["groups"] = groups
    return out


def prior_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics the *prior* would score on the same rows: a model predicting the positive rate.

    Derived in closed form from a :func:`compute_metrics` result (no labels needed): the prior
    predicts, for every row, the split's positive rate ``c`` of each target. A constant prediction
    ranks nothing, so its AP is the positive rate of the rows scored (overall and per group); its
    RCE is exactly 0 overall and, in a group with positive rate ``p``,
    ``(1 - CE(p, c) / H(p)) * 100`` with ``CE(p, c) = -(p log c + (1 - p) log(1 - c))`` (``c``
    clipped like ``log_loss`` does) and ``H(p) = CE(p, p)``. Same keys as :func:`compute_metrics`.
    """
    groups = metrics["groups"]
    rows = groups["rows"]
    out: dict[str, Any] = {k: {} for k in ("ap", "rce", "ap_fair", "rce_fair")}
    g_out: dict[str, Any] = {k: groups[k] for k in ("edges", "labels", "rows", "positives")}
    g_out["ap"], g_out["rce"] = {}, {}

    def ce(p: float, c: float) -> float:
        c = min(max(c, _EPS), 1.0 - _EPS)
        return -(p * math.log(c) + (1.0 - p) * math.log(1.0 - c))

    for target in TARGETS:
        c = metrics["positive_rate"][target]
        defined = c is not None and 0.0 < c < 1.0
        out["ap"][target] = c if c else None
        out["rce"][target] = 0.0 if defined else None
        aps, rces = [], []
        for n_g, pos in zip(rows, groups["positives"][target]):
            p = pos / n_g if n_g else None
            aps.append(p if p else None)
            rces.append((1.0 - ce(p, c) / ce(p, p)) * 100.0 if defined and p is not None and 0.0 < p < 1.0 else None)
        g_out["ap"][target], g_out["rce"][target] = aps, rces
        out["ap_fair"][target] = _mean_defined(aps)
        out["rce_fair"][target] = _mean_defined(rces)
    for key in ("ap", "rce", "ap_fair", "rce_fair"):
        out[key]["avg"] = _mean_defined([out[key][t] for t in TARGETS])
    out["positive_rate"] = dict(metrics["positive_rate"])
    out["rows"] = metrics["rows"]
    out["groups"] = g_out
    return out
