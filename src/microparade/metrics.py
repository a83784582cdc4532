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

Comparing two models on the same rows: :func:`paired_bootstrap` gives the 95% interval of every
difference (AP and RCE, per target and for their mean) from resamples of the rows, each scored by
the vectorised kernels :func:`weighted_ap` and :func:`weighted_rce`.

Undefined values. AP is undefined without positives; RCE is undefined when the ground truth is
constant (all negatives or all positives: the reference cross entropy is 0) or empty. The
``*_of`` helpers return NaN for those; :func:`compute_metrics` reports them as ``None`` (JSON
``null``) and leaves them out of every average — an average over nothing is ``None`` too. The
per-group values, row and positive counts in ``groups`` show which groups were left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
    afc = np.asarray(a_follower_count)
    k = len(TARGETS)
    if labels.ndim != 2 or labels.shape[1] != k:
        raise ValueError(f"labels must have shape [N, {k}] (columns {', '.join(TARGETS)}); got {labels.shape}")
    if afc.shape != (labels.shape[0],):
        raise ValueError(f"a_follower_count must have shape [{labels.shape[0]}]; got {afc.shape}")
    labels, preds = _check_predictions(labels, preds)
    return labels, preds, afc


def _check_predictions(labels: np.ndarray, preds: np.ndarray, name: str = "preds") -> tuple[np.ndarray, np.ndarray]:
    """0/1 ``labels`` and finite probabilities ``preds`` of the same shape, as int8 and float64."""
    labels = np.asarray(labels)
    preds = np.asarray(preds, dtype=np.float64)
    if preds.shape != labels.shape:
        raise ValueError(f"{name} must have the shape of labels {labels.shape}; got {preds.shape}")
    if labels.size and not np.isin(labels, (0, 1)).all():
        bad = np.unique(labels[~np.isin(labels, (0, 1))])[:5]
        raise ValueError(f"labels must be 0/1 (unknown labels cannot be scored); found {bad.tolist()}")
    if preds.size and not (np.isfinite(preds).all() and preds.min() >= 0.0 and preds.max() <= 1.0):
        raise ValueError(f"{name} must be finite probabilities in [0, 1]")
    return labels.astype(np.int8, copy=False), preds


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


# ----------------------------------------------------------------------------------------------
# paired bootstrap
# ----------------------------------------------------------------------------------------------
#: Resamples × rows of one block of the bootstrap: bounds its memory (a few float64 arrays of this
#: size) whatever the number of rows.
BOOTSTRAP_BLOCK_CELLS = 4_000_000
#: The percentiles of the bootstrap distribution that bound the 95% interval.
BOOTSTRAP_PERCENTILES = (2.5, 97.5)

#: ``{metric: {target | "avg": {"diff", "low", "high"}}}``, see :func:`paired_bootstrap`.
Intervals = dict[str, dict[str, dict[str, float | None]]]


def weighted_ap(gt: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision of one target under row weights, one value per row of ``weights``.

    ``weights`` is ``[R, N]``: integer weights (a bootstrap resample's row counts) give exactly
    :func:`ap_of` of the rows repeated that often (tied predictions form one threshold, as in
    sklearn). NaN where the weighted rows hold no positive. A vectorised kernel: one sort per call,
    then cumulative sums over ``[R, N]``.
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    order = np.argsort(-pred, kind="stable")
    sorted_pred = pred[order]
    # The last row of every group of tied predictions: the thresholds of the precision-recall curve.
    ends = np.flatnonzero(np.append(sorted_pred[1:] != sorted_pred[:-1], True))
    w = np.asarray(weights, dtype=np.float64)[:, order]
    predicted = np.cumsum(w, axis=1)[:, ends]
    hits = np.cumsum(w * gt[order], axis=1)[:, ends]
    positives = hits[:, -1] if hits.shape[1] else np.zeros(w.shape[0])
    gain = np.diff(hits, axis=1, prepend=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        ap = (gain * precision).sum(axis=1) / positives
    return np.where(positives > 0, ap, math.nan)


def weighted_rce(gt: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Relative cross entropy (percent) of one target under row weights, one value per row of
    ``weights`` (``[R, N]``; integer weights give :func:`rce_of` of the repeated rows). NaN where
    the weighted ground truth is constant or empty."""
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum(axis=1)
    loss = -(gt * np.log(np.clip(pred, _EPS, 1 - _EPS)) + (1 - gt) * np.log(np.clip(1 - pred, _EPS, 1 - _EPS)))
    with np.errstate(divide="ignore", invalid="ignore"):
        # einsum, not BLAS: each row's sum is then the same whatever the other rows (bit-reproducible).
        cross = np.einsum("rn,n->r", w, loss) / total
        ctr = np.einsum("rn,n->r", w, gt) / total
        reference = -(ctr * np.log(np.clip(ctr, _EPS, 1 - _EPS)) + (1 - ctr) * np.log(np.clip(1 - ctr, _EPS, 1 - _EPS)))
        rce = (1.0 - cross / reference) * 100.0
    return np.where((ctr > 0) & (ctr < 1), rce, math.nan)


def _resample_counts(rng: np.random.Generator, rows: int, resamples: int) -> np.ndarray:
    """``[resamples, rows]``: how often each row is drawn in each resample (rows drawn with replacement)."""
    draws = rng.integers(0, rows, size=(resamples, rows)) + (np.arange(resamples) * rows)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * rows).reshape(resamples, rows).astype(np.float64)


def _bootstrap_draws(
    labels: np.ndarray, sets: list[np.ndarray], n: int, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """AP and RCE ``[n, 4]`` of every prediction set on the same ``n`` seeded resamples of the rows."""
    rows, k = labels.shape
    aps = [np.full((n, k), math.nan) for _ in sets]
    rces = [np.full((n, k), math.nan) for _ in sets]
    if rows == 0:
        return aps, rces
    rng = np.random.default_rng(seed)
    block = max(1, BOOTSTRAP_BLOCK_CELLS // rows)
    for start in range(0, n, block):
        stop = min(n, start + block)
        w = _resample_counts(rng, rows, stop - start)
        for s, preds in enumerate(sets):
            for j in range(k):
                aps[s][start:stop, j] = weighted_ap(labels[:, j], preds[:, j], w)
                rces[s][start:stop, j] = weighted_rce(labels[:, j], preds[:, j], w)
    return aps, rces


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Row means over the defined (finite) values; NaN for a row without any."""
    defined = np.isfinite(values)
    count = defined.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, np.where(defined, values, 0.0).sum(axis=1) / count, math.nan)


def _interval(diff: float | None, draws: np.ndarray) -> dict[str, float | None]:
    """The point difference and the percentile interval of its defined bootstrap draws."""
    defined = draws[np.isfinite(draws)]
    if diff is None or defined.size == 0:
        return {"diff": diff, "low": None, "high": None}
    low, high = np.percentile(defined, BOOTSTRAP_PERCENTILES)
    return {"diff": diff, "low": float(low), "high": float(high)}


def _metric_intervals(
    point_a: list[float | None], point_b: list[float | None], draws_a: np.ndarray, draws_b: np.ndarray
) -> dict[str, dict[str, float | None]]:
    """``{target | "avg": interval}`` of one metric: A minus B per target and for the mean of the targets."""
    out = {}
    for j, target in enumerate(TARGETS):
        a, b = point_a[j], point_b[j]
        out[target] = _interval(None if a is None or b is None else a - b, draws_a[:, j] - draws_b[:, j])
    avg_a, avg_b = _mean_defined(point_a), _mean_defined(point_b)
    avg_diff = None if avg_a is None or avg_b is None else avg_a - avg_b
    out["avg"] = _interval(avg_diff, _nanmean_rows(draws_a) - _nanmean_rows(draws_b))
    return out


def bootstrap_averages(labels: np.ndarray, sets: Sequence[np.ndarray], n: int, seed: int) -> dict[str, np.ndarray]:
    """``{"ap" | "rce": [len(sets), n]}``: the mean over the targets of AP and of RCE (defined targets
    only, like ``avg`` of :func:`compute_metrics`; NaN where none is) of every prediction set on the
    same ``n`` seeded resamples of the rows, those of :func:`paired_bootstrap_many` with that seed."""
    checked = [_check_predictions(labels, p, f"prediction set {i}") for i, p in enumerate(sets)]
    if n < 1 or not checked or np.ndim(labels) != 2 or np.shape(labels)[1] != len(TARGETS):
        raise ValueError(f"need n >= 1 (got {n}), [N, {len(TARGETS)}] labels and at least one prediction set")
    aps, rces = _bootstrap_draws(checked[0][0], [p for _, p in checked], n, seed)
    return {"ap": np.stack([_nanmean_rows(a) for a in aps]), "rce": np.stack([_nanmean_rows(r) for r in rces])}


def paired_bootstrap_many(
    labels: np.ndarray, pred_a: np.ndarray, others: Mapping[str, np.ndarray], n: int, seed: int
) -> dict[str, Intervals]:
    """:func:`paired_bootstrap` of ``pred_a`` against every prediction set of ``others``, all on the
    same resamples (so A's draws are computed once): ``{name: intervals}``."""
    if n < 1:
        raise ValueError(f"the bootstrap needs at least 1 resample; got n={n}")
    labels, pred_a = _check_predictions(labels, pred_a, "pred_a")
    k = len(TARGETS)
    if labels.ndim != 2 or labels.shape[1] != k:
        raise ValueError(f"labels must have shape [N, {k}] (columns {', '.join(TARGETS)}); got {labels.shape}")
    sets = [pred_a] + [_check_predictions(labels, p, f"predictions {name!r}")[1] for name, p in others.items()]
    aps, rces = _bootstrap_draws(labels, sets, n, seed)
    points = {
        "ap": [[_json_float(ap_of(labels[:, j], p[:, j])) for j in range(k)] for p in sets],
        "rce": [[_json_float(rce_of(labels[:, j], p[:, j])) for j in range(k)] for p in sets],
    }
    draws = {"ap": aps, "rce": rces}
    return {
        name: {m: _metric_intervals(points[m][0], points[m][s], draws[m][0], draws[m][s]) for m in ("ap", "rce")}
        for s, name in enumerate(others, start=1)
    }


def paired_bootstrap(labels: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n: int, seed: int) -> Intervals:
    """Paired bootstrap 95% intervals of ``metric(A) - metric(B)`` for AP and RCE.

    ``labels``, ``pred_a`` and ``pred_b`` are ``[N, 4]`` (columns in ``TARGETS`` order) on the same
    rows. ``n`` resamples of the N rows are drawn with replacement (seeded by ``seed``: the same
    seed and rows give the same intervals); on each, both prediction sets are scored on the same
    rows and their difference taken, per target and for the mean over the targets (``avg``, defined
    targets only, as in :func:`compute_metrics`). Returns
    ``{"ap" | "rce": {target | "avg": {"diff", "low", "high"}}}``: ``diff`` is the difference on
    the rows as given (the official :func:`ap_of` / :func:`rce_of`), ``low`` and ``high`` the 2.5th
    and 97.5th percentiles of the resampled differences (resamples where the metric is undefined
    are left out); ``None`` where undefined. Cost: ``O(n × N)`` time, memory bounded by
    :data:`BOOTSTRAP_BLOCK_CELLS`.
    """
    return paired_bootstrap_many(labels, pred_a, {"b": pred_b}, n, seed)["b"]
