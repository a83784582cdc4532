"""The features-only baseline: gradient-boosted trees on the chunks' ``features`` column, no text.

A ``HistGradientBoostingClassifier`` per target, trained on a seeded subsample of at most
``report.baseline_max_rows`` labelled training rows and scored with the same
:func:`microparade.metrics.compute_metrics` on the evaluated splits. It answers "does text earn its
compute?": the model should beat it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ...compute.backends import available_cpus
from ...engine.context import StageContext
from ...metrics import compute_metrics
from ...recsys_format import TARGETS
from ...storage import read_parquet
from ..chunks.contract import ChunkFile, ChunksManifest

if TYPE_CHECKING:
    from sklearn.ensemble import HistGradientBoostingClassifier

#: HistGradientBoostingClassifier settings of the baseline: sklearn defaults plus mild L2 and
#: early stopping on a 10% stratified hold-out, so small or easy data does not overfit.
BASELINE_PARAMS: dict[str, Any] = {
    "max_iter": 200,
    "learning_rate": 0.1,
    "max_leaf_nodes": 31,
    "min_samples_leaf": 20,
    "l2_regularization": 1.0,
    "early_stopping": True,
    "validation_fraction": 0.1,
    "n_iter_no_change": 10,
}
#: A target needs this many positives and negatives in the sample to train a classifier (the
#: stratified early-stopping split needs both classes); below it the baseline predicts the
#: sample's positive rate for that target.
BASELINE_MIN_CLASS_ROWS = 20


@dataclass
class Baseline:
    """The baseline's outcome: metrics per scored split and how it was trained."""

    #: ``done``, ``disabled``, or why it could not run.
    status: str
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_rows: int = 0
    train_rows_available: int = 0
    n_features: int = 0
    iterations: dict[str, int | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Predictor:
    """One fitted classifier per target, or the sample's positive rate where a class was too rare."""

    models: dict[str, HistGradientBoostingClassifier] = field(default_factory=dict)
    constants: dict[str, float] = field(default_factory=dict)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Positive probabilities ``[n, len(TARGETS)]``."""
        p = np.empty((x.shape[0], len(TARGETS)), dtype=np.float64)
        for j, target in enumerate(TARGETS):
            p[:, j] = self.models[target].predict_proba(x)[:, 1] if target in self.models else self.constants[target]
        return p


def run_baseline(
    ctx: StageContext, chunks: ChunksManifest | None, chunks_note: str, eval_splits: list[str]
) -> Baseline:
    """Train and score the baseline with OpenMP limited to ``report.baseline_threads``.

    The limit matters on shared nodes: OpenMP teams larger than the free cores spin-wait and run
    an order of magnitude slower than one thread.
    """
    from threadpoolctl import threadpool_limits

    threads = ctx.cfg.report.baseline_threads or available_cpus()
    with threadpool_limits(limits=threads, user_api="openmp"):
        return _fit_and_score(ctx, chunks, chunks_note, eval_splits)


def _fit_and_score(
    ctx: StageContext, chunks: ChunksManifest | None, chunks_note: str, eval_splits: list[str]
) -> Baseline:
    """The baseline trained on the training chunks and scored on ``eval_splits``, or why not."""
    if not ctx.cfg.report.baseline:
        return Baseline("disabled (report.baseline is false)")
    if chunks is None:
        return Baseline(f"chunks: {chunks_note}")
    if not chunks.files("train"):
        return Baseline("no training chunks")
    rng = np.random.default_rng(ctx.cfg.report.seed)
    available = sum(f.rows for f in chunks.files("train"))
    out = Baseline("done", n_features=chunks.n_features, train_rows_available=available)
    x, y = _training_sample(ctx, chunks, rng, out)
    if x.shape[0] == 0:
        return Baseline("the training chunks hold no labelled rows")
    out.train_rows = int(x.shape[0])
    predictor = _fit(ctx, x, y, out)
    for split in eval_splits:
        _score_split(ctx, chunks, split, predictor, out)
    if not out.metrics:
        out.status = "no labelled rows in the evaluated splits"
    return out


def _read_chunk(ctx: StageContext, f: ChunkFile, n_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features [n, F] float32, labels [n, 4] float (NaN = unknown), a_follower_count [n])``."""
    table = read_parquet(f.url, ctx.store.storage_options, columns=["features", *TARGETS, "a_follower_count"])
    col = table.column("features").combine_chunks()
    if not pa.types.is_fixed_size_list(col.type) or col.type.list_size != n_features:
        raise ValueError(
            f"{f.url}: column 'features' is {col.type}, expected fixed_size_list<float>[{n_features}] "
            "(docs/data-format.md §7)"
        )
    x = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, n_features)
    labels = (
        np.stack([table.column(t).cast(pa.float64()).to_numpy(zero_copy_only=False) for t in TARGETS], axis=1)
        if table.num_rows
        else np.zeros((0, len(TARGETS)))
    )
    afc = table.column("a_follower_count").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return x, labels, afc


def _training_sample(
    ctx: StageContext, chunks: ChunksManifest, rng: np.random.Generator, out: Baseline
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of at most ``report.baseline_max_rows`` labelled training rows.

    Whole chunks in a seeded order (chunks are already shuffled row-wise, so this reads only about
    ``max_rows`` rows), then an exact seeded subsample down to ``max_rows``.
    """
    max_rows = ctx.cfg.report.baseline_max_rows
    train_files = chunks.files("train")
    picked, rows = [], 0
    for i in rng.permutation(len(train_files)):
        if rows >= max_rows:
            break
        picked.append(train_files[i])
        rows += train_files[i].rows
    parts = [_read_chunk(ctx, f, chunks.n_features) for f in picked]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    known = ~np.isnan(y).any(axis=1)
    if not known.all():
        out.notes.append(f"{int((~known).sum()):,} training rows without labels left out")
        x, y = x[known], y[known]
    if x.shape[0] > max_rows:
        keep = np.sort(rng.choice(x.shape[0], max_rows, replace=False))
        x, y = x[keep], y[keep]
    return x, y


def _fit(ctx: StageContext, x: np.ndarray, y: np.ndarray, out: Baseline) -> _Predictor:
    """A classifier per target; a constant (the sample's positive rate) where a class is too rare."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    predictor = _Predictor()
    for j, target in enumerate(TARGETS):
        yt = y[:, j].astype(np.int8)
        pos = int(yt.sum())
        if min(pos, yt.size - pos) < BASELINE_MIN_CLASS_ROWS:
            predictor.constants[target] = pos / yt.size
            out.iterations[target] = None
            out.notes.append(
                f"{target}: {pos:,} positive(s) in {yt.size:,} sampled rows "
                f"(fewer than {BASELINE_MIN_CLASS_ROWS} of a class); the baseline predicts the sample's positive rate"
            )
            continue
        t0 = time.perf_counter()
        clf = HistGradientBoostingClassifier(random_state=ctx.cfg.report.seed, **BASELINE_PARAMS)
        clf.fit(x, yt)
        predictor.models[target] = clf
        out.iterations[target] = int(clf.n_iter_)
        ctx.log(
            f"baseline {target}: {clf.n_iter_} trees on {yt.size:,} rows x {x.shape[1]} features "
            f"in {time.perf_counter() - t0:.1f}s"
        )
    return predictor


def _score_split(ctx: StageContext, chunks: ChunksManifest, split: str, predictor: _Predictor, out: Baseline) -> None:
    """Score the baseline on the labelled rows of one split's chunks into ``out.metrics[split]``."""
    files = chunks.files(split)
    if not files:
        out.notes.append(f"{split}: no chunks")
        return
    labels, preds, afcs, unknown = [], [], [], 0
    for f in files:
        xs, ys, afc = _read_chunk(ctx, f, chunks.n_features)
        ok = ~np.isnan(ys).any(axis=1)
        unknown += int((~ok).sum())
        if not ok.any():
            continue
        labels.append(ys[ok].astype(np.int8))
        preds.append(predictor.predict(xs[ok]))
        afcs.append(afc[ok])
    if unknown:
        out.notes.append(f"{split}: {unknown:,} rows without labels are not scored")
    if not labels:
        return
    m = compute_metrics(np.concatenate(labels), np.concatenate(preds), np.concatenate(afcs))
    out.metrics[split] = m
    ctx.log(f"baseline on {split}: AP avg {_num(m['ap']['avg'])}, RCE avg {_num(m['rce']['avg'], 2)}")


def _num(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
