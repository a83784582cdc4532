"""The report's two baselines: gradient-boosted trees on everything the model sees except text.

- **GBDT, features only** — the chunks' ``features`` column;
- **GBDT, features + history** — the same plus statistics of the user's history
  (:mod:`.history`: slot and engagement-type counts, hours), i.e. everything but the text.

A ``HistGradientBoostingClassifier`` per target and baseline, both trained on the same seeded
subsample of at most ``report.baseline_max_rows`` labelled training rows with the same settings and
seed. Each predicts every labelled row of the evaluated splits' chunks (:class:`SplitRows`); the
comparison with the model (same rows, metrics, bootstrap intervals) is :mod:`.compare`'s. They
answer "does text earn its compute?": the model should beat both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ...compute.backends import available_cpus
from ...engine.context import StageContext
from ...recsys_format import TARGETS
from ...storage import read_parquet
from ..chunks.contract import ChunkFile, ChunksManifest
from .history import HISTORY_COLUMNS, history_statistics

if TYPE_CHECKING:
    from sklearn.ensemble import HistGradientBoostingClassifier

#: HistGradientBoostingClassifier settings of the baselines: sklearn defaults plus mild L2 and
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
#: stratified early-stopping split needs both classes); below it the baselines predict the
#: sample's positive rate for that target.
BASELINE_MIN_CLASS_ROWS = 20
#: ``(key, label)`` of the baselines, in table order: the stronger (everything but text) first.
BASELINES: tuple[tuple[str, str], ...] = (
    ("history", "GBDT, features + history"),
    ("features", "GBDT, features only"),
)
BASELINE_LABELS: dict[str, str] = dict(BASELINES)


@dataclass
class BaselineSettings:
    """How the baselines are fit (the report stage's ``report.*`` settings)."""

    #: Labelled training rows sampled (``report.baseline_max_rows``).
    max_rows: int
    #: Seed of the sample and of the trees.
    seed: int
    #: OpenMP threads of the trees, 0 = the CPUs this process may run on (``report.baseline_threads``).
    threads: int
    storage_options: dict[str, Any]
    #: ``log(message)``: progress of the fits.
    log: Callable[..., None]
    #: The baselines fit (keys of :data:`BASELINES`).
    keys: tuple[str, ...] = tuple(key for key, _ in BASELINES)


@dataclass
class SplitRows:
    """The labelled chunk rows of one split and every baseline's predictions for them."""

    row_id: np.ndarray
    #: ``[n, 4]`` int8, columns in ``TARGETS`` order.
    labels: np.ndarray
    a_follower_count: np.ndarray
    #: ``{baseline key: [n, 4] probabilities}``.
    preds: dict[str, np.ndarray]


@dataclass
class Baseline:
    """The baselines' outcome: their predictions per scored split and how they were trained."""

    #: ``done``, ``disabled``, or why they could not run.
    status: str
    splits: dict[str, SplitRows] = field(default_factory=dict)
    train_rows: int = 0
    train_rows_available: int = 0
    n_features: int = 0
    #: ``{baseline key: {target: trees or None (a constant)}}``.
    iterations: dict[str, dict[str, int | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Rows:
    """Rows read from chunks: features, history statistics, labels (NaN = unknown), ids."""

    x: np.ndarray
    hist: np.ndarray
    labels: np.ndarray
    a_follower_count: np.ndarray
    row_id: np.ndarray

    def take(self, keep: np.ndarray) -> _Rows:
        return _Rows(self.x[keep], self.hist[keep], self.labels[keep], self.a_follower_count[keep], self.row_id[keep])

    def inputs(self, key: str) -> np.ndarray:
        """The columns baseline ``key`` sees."""
        return self.x if key == "features" else np.concatenate([self.x, self.hist], axis=1)

    @staticmethod
    def concat(parts: list[_Rows]) -> _Rows:
        return _Rows(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("x", "hist", "labels", "a_follower_count", "row_id")
            )
        )


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
    """The report stage's baselines (``report.baseline`` and ``report.baseline_*``), or why they did not run."""
    if not ctx.cfg.report.baseline:
        return Baseline("disabled (report.baseline is false)")
    if chunks is None:
        return Baseline(f"chunks: {chunks_note}")
    rc = ctx.cfg.report
    settings = BaselineSettings(rc.baseline_max_rows, rc.seed, rc.baseline_threads, ctx.store.storage_options, ctx.log)
    return fit_baselines(chunks, eval_splits, settings)


def fit_baselines(chunks: ChunksManifest, eval_splits: list[str], settings: BaselineSettings) -> Baseline:
    """Train the baselines and predict ``eval_splits`` with OpenMP limited to ``settings.threads``.

    The limit matters on shared nodes: OpenMP teams larger than the free cores spin-wait and run
    an order of magnitude slower than one thread.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=settings.threads or available_cpus(), user_api="openmp"):
        return _fit_and_predict(chunks, eval_splits, settings)


def _fit_and_predict(chunks: ChunksManifest, eval_splits: list[str], settings: BaselineSettings) -> Baseline:
    """The baselines trained on the training chunks, with their predictions on ``eval_splits``, or why not."""
    if not chunks.files("train"):
        return Baseline("no training chunks")
    rng = np.random.default_rng(settings.seed)
    available = sum(f.rows for f in chunks.files("train"))
    out = Baseline("done", n_features=chunks.n_features, train_rows_available=available)
    sample = _training_sample(chunks, rng, out, settings)
    if sample.x.shape[0] == 0:
        return Baseline("the training chunks hold no labelled rows")
    out.train_rows = int(sample.x.shape[0])
    y = sample.labels.astype(np.int8)
    rare = _rare_targets(y, out)
    predictors = {key: _fit(key, sample.inputs(key), y, rare, out, settings) for key in settings.keys}
    for split in eval_splits:
        rows = _labelled_rows(chunks, split, settings.storage_options, out.notes)
        if rows is not None:
            preds = {key: p.predict(rows.inputs(key)) for key, p in predictors.items()}
            out.splits[split] = SplitRows(rows.row_id, rows.labels.astype(np.int8), rows.a_follower_count, preds)
    if not out.splits:
        out.status = "no labelled rows in the evaluated splits"
    return out


def split_labels(chunks: ChunksManifest, split: str, storage_options: dict[str, Any]) -> SplitRows | None:
    """The labelled rows of one split's chunks (ids, labels, follower counts; no predictions), None without any."""
    rows = _labelled_rows(chunks, split, storage_options, [])
    return None if rows is None else SplitRows(rows.row_id, rows.labels.astype(np.int8), rows.a_follower_count, {})


def _read_chunk(f: ChunkFile, n_features: int, storage_options: dict[str, Any]) -> _Rows:
    """One chunk's rows: features ``[n, F]`` float32, history statistics, labels, follower counts, row ids."""
    columns = ["row_id", "features", *TARGETS, "a_follower_count", *HISTORY_COLUMNS]
    table = read_parquet(f.url, storage_options, columns=columns)
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
    try:
        hist = history_statistics(table)
    except ValueError as exc:
        raise ValueError(f"{f.url}: {exc}") from exc
    afc = table.column("a_follower_count").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    row_id = table.column("row_id").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return _Rows(x, hist, labels, afc, row_id)


def _training_sample(
    chunks: ChunksManifest, rng: np.random.Generator, out: Baseline, settings: BaselineSettings
) -> _Rows:
    """A seeded sample of at most ``settings.max_rows`` labelled training rows.

    Whole chunks in a seeded order (chunks are already shuffled row-wise, so this reads only about
    ``max_rows`` rows), then an exact seeded subsample down to ``max_rows``.
    """
    max_rows = settings.max_rows
    train_files = chunks.files("train")
    picked, rows = [], 0
    for i in rng.permutation(len(train_files)):
        if rows >= max_rows:
            break
        picked.append(train_files[i])
        rows += train_files[i].rows
    sample = _Rows.concat([_read_chunk(f, chunks.n_features, settings.storage_options) for f in picked])
    known = ~np.isnan(sample.labels).any(axis=1)
    if not known.all():
        out.notes.append(f"{int((~known).sum()):,} training rows without labels left out")
        sample = sample.take(known)
    if sample.x.shape[0] > max_rows:
        sample = sample.take(np.sort(rng.choice(sample.x.shape[0], max_rows, replace=False)))
    return sample


def _rare_targets(y: np.ndarray, out: Baseline) -> set[str]:
    """The targets with too few positives or negatives in the sample to train on (with a note each)."""
    rare = set()
    for j, target in enumerate(TARGETS):
        pos = int(y[:, j].sum())
        if min(pos, y.shape[0] - pos) < BASELINE_MIN_CLASS_ROWS:
            rare.add(target)
            out.notes.append(
                f"{target}: {pos:,} positive(s) in {y.shape[0]:,} sampled rows (fewer than "
                f"{BASELINE_MIN_CLASS_ROWS} of a class); the baselines predict the sample's positive rate"
            )
    return rare


def _fit(
    key: str, x: np.ndarray, y: np.ndarray, rare: set[str], out: Baseline, settings: BaselineSettings
) -> _Predictor:
    """Baseline ``key``: a classifier per target; a constant (the sample's positive rate) for the ``rare`` ones."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    predictor = _Predictor()
    iterations = out.iterations.setdefault(key, {})
    for j, target in enumerate(TARGETS):
        if target in rare:
            predictor.constants[target] = float(y[:, j].mean())
            iterations[target] = None
            continue
        t0 = time.perf_counter()
        clf = HistGradientBoostingClassifier(random_state=settings.seed, **BASELINE_PARAMS)
        clf.fit(x, y[:, j])
        predictor.models[target] = clf
        iterations[target] = int(clf.n_iter_)
        settings.log(
            f"baseline {BASELINE_LABELS[key]}, {target}: {clf.n_iter_} trees on {x.shape[0]:,} rows "
            f"x {x.shape[1]} columns in {time.perf_counter() - t0:.1f}s"
        )
    return predictor


def _labelled_rows(
    chunks: ChunksManifest, split: str, storage_options: dict[str, Any], notes: list[str]
) -> _Rows | None:
    """The labelled rows of one split's chunks (None without any); ``notes`` get the rows left out."""
    files = chunks.files(split)
    if not files:
        notes.append(f"{split}: no chunks")
        return None
    parts, unknown = [], 0
    for f in files:
        rows = _read_chunk(f, chunks.n_features, storage_options)
        ok = ~np.isnan(rows.labels).any(axis=1)
        unknown += int((~ok).sum())
        if ok.any():
            parts.append(rows.take(ok))
    if unknown:
        notes.append(f"{split}: {unknown:,} rows without labels are not scored")
    return _Rows.concat(parts) if parts else None
